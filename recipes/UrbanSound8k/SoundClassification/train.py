#!/usr/bin/env python3
"""Recipe for training a sound classifier on UrbanSound8K (or your own sounds).

Each clip is resampled, rechannelled and padded or cut to a fixed length
(training clips at a random position and shift). A batch goes through a
feature extractor, SpecAugment in training, a normaliser, an embedding model
and a classifier. The tested checkpoint is exported to
``<output_folder>/model``, a folder SpeechBrain's ``EncoderClassifier`` loads.

To run this recipe, do the following:
> python train.py hparams/cnn.yaml --data_folder=/path/to/UrbanSound8K

Other YAML files train ECAPA-TDNN, x-vector and CNN14 models, or read labels
from class folders (``folders.yaml``) or file names (``fsdd.yaml``). An
interrupted run resumes when the same command is run again.

``cnn14_finetune.yaml`` and ``beats_finetune.yaml`` fine-tune pretrained
encoders (loaded by the YAML's ``pretrainer``). In any YAML,
``freeze_encoder``, ``unfreeze_after_epochs`` and ``encoder_lr_scale`` freeze
the encoder (``embedding_model``) or give it its own learning rate.

``data_source``: ``files`` (decoded at every epoch), ``bank`` or
``feature_bank`` (decoded once) or ``shards`` (see
``sb_urbansound.data.loader``).

Authors
 * sb-urbansound contributors 2026
"""

import sys
import time

import torch
from hyperpyyaml import load_hyperpyyaml
from sb_urbansound.data.audio import ClipConditioner, load_audio, time_shift
from sb_urbansound.data.loader import (
    SPLITS,
    DataSource,
    load_label_encoder,
    prepare_data,
)
from sb_urbansound.data.manifests import read_labels, recorded_split
from sb_urbansound.errors import UserError
from sb_urbansound.serving.inference import export_inference_folder
from sb_urbansound.training.augment import Mixup, average_views
from sb_urbansound.training.checkpoints import check_resumed_schedule
from sb_urbansound.training.distributed import (
    no_sync_batchnorm_on_cpu,
    pool_stats,
    unwrapped,
)
from sb_urbansound.training.experiment import (
    RunFolder,
    build_partial,
    check_outside,
    check_values,
    read_yaml_values,
    write_environment,
)
from sb_urbansound.training.finetune import (
    check_finetune_options,
    encoder_optimizer,
    load_pretrained_encoder,
    set_trainable,
)
from sb_urbansound.training.hardware import check_device
from sb_urbansound.training.processes import run_recipe
from sb_urbansound.training.report import append_history, write_test_results

import speechbrain as sb
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.utils.distributed import if_main_process, run_on_main
from speechbrain.utils.logger import get_logger
from speechbrain.utils.metric_stats import ClassificationStats

logger = get_logger(__name__)
#: The folders a run writes (never inside ``data_folder``).
WRITTEN_FOLDERS = ("output_folder", "save_folder", "manifest_folder")
WRITTEN_FOLDERS += ("bank_folder", "shards_folder")


class SoundClassifierBrain(sb.Brain):
    """Trains a sound classifier, keeps the best checkpoint and tests it.

    The modules are those SpeechBrain's ``EncoderClassifier`` uses
    (``compute_features``, ``mean_var_norm``, ``embedding_model``,
    ``classifier``), so a trained model loads for inference without this file.
    The batches come from ``self.data``
    (``sb_urbansound.data.loader.DataSource``).
    """

    frozen = False  # whether the encoder is frozen in this epoch

    def compute_forward(self, batch, stage):
        """Computes the class log-probabilities of a batch: ``(predictions,
        lens)``, ``[batch, 1, n_classes]`` and the relative lengths."""
        batch = batch.to(self.device)
        train = stage == sb.Stage.TRAIN
        # Test-time averaging (optional): several circularly shifted views
        # of each clip are evaluated and their probabilities averaged
        views = 1 if train else getattr(self.hparams, "tta_views", 1)
        shift = getattr(self.hparams, "tta_max_shift", 0.0)
        feats, lens = self.data.features(
            batch, self.modules.compute_features, train, views, shift
        )
        # SpecAugment, in training only
        if train and self.hparams.spec_augment is not None:
            feats = self.hparams.spec_augment(feats)
        feats = self.modules.mean_var_norm(feats, lens)

        # Mixup (optional, training only): pairs of clips and their losses;
        # of the features, or of the embeddings (mixup_embeddings: True)
        self.mixed = None
        mixup = getattr(self.hparams, "mixup", None) if train else None
        late = getattr(self.hparams, "mixup_embeddings", False)
        if mixup is not None and not late:
            feats, *self.mixed = mixup(feats)

        # Each process evaluates its share of the clips, without the DDP
        # wrappers (sb_urbansound.training.distributed); a frozen encoder
        # stays in evaluation mode (with the batch-norm statistics it loaded)
        modules = self.modules if train else unwrapped(self.modules)
        if train and self.frozen:
            self.modules.embedding_model.eval()
        embeddings = modules.embedding_model(feats, lens)
        if mixup is not None and late:
            embeddings, *self.mixed = mixup(embeddings)
        predictions = modules.classifier(embeddings)
        if predictions.dim() == 2:
            predictions = predictions.unsqueeze(1)
        if views > 1:
            predictions = average_views(predictions, views)
            lens = lens[: len(lens) // views]
        return predictions, lens

    def compute_objectives(self, predictions, batch, stage):
        """Computes the loss and records the predictions for the accuracy."""
        predictions, lens = predictions
        targets, _ = batch.label_encoded
        if stage == sb.Stage.TRAIN and self.mixed is not None:
            perm, lam = self.mixed
            loss = Mixup.mix_loss(
                self.hparams.compute_cost, predictions, targets, perm, lam, lens
            )
            # A mixed clip counts as its dominant part's class
            targets = targets if lam >= 0.5 else targets[perm]
        else:
            loss = self.hparams.compute_cost(predictions, targets, lens)
        if not torch.isfinite(loss):
            raise UserError(
                f"the loss of a {stage.name.lower()} batch is {loss.item()}: "
                "training would go on with NaN weights. Either a clip of "
                "this batch holds bad samples, or training diverged (lower "
                "lr/max_lr). The batch's files:\n  " + "\n  ".join(batch.wav)
            )
        if stage != sb.Stage.TRAIN:  # the mean loss per clip, pooled
            self.loss_sum += float(loss) * len(batch.id)
        decode = self.hparams.label_encoder.ind2lab
        predicted = predictions.detach().argmax(dim=-1).view(-1).tolist()
        self.stats.append(
            batch.id,
            [decode[i] for i in predicted],
            [decode[i] for i in targets.view(-1).tolist()],
        )
        return loss

    def on_stage_start(self, stage, epoch=None):
        """Resets the statistics; freezes the encoder in the planned epochs."""
        self.stats = ClassificationStats()
        self.loss_sum = 0.0
        self.stage_started = time.perf_counter()
        freeze = getattr(self.hparams, "freeze_encoder", False)
        unfreeze_after = getattr(self.hparams, "unfreeze_after_epochs", 0)
        if stage == sb.Stage.TRAIN and (freeze or unfreeze_after):
            frozen = freeze or epoch <= unfreeze_after
            if frozen != self.frozen or epoch == 1:
                state = "frozen" if frozen else "trained"
                logger.info("Epoch %s: encoder %s", epoch, state)
            set_trainable(self.modules.embedding_model, not frozen)
            self.frozen = frozen

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs the stage; checkpoints after validation; writes test results."""
        if stage != sb.Stage.TRAIN:  # every process's clips, pooled
            self.stats, stage_loss = pool_stats(self.stats, self.loss_sum)
        accuracy = self.stats.summarize("accuracy") if self.stats.ids else 0.0
        stats = {"loss": stage_loss, "accuracy": accuracy}
        if stage == sb.Stage.TRAIN:
            stats["seconds"] = time.perf_counter() - self.stage_started
            self.train_stats = stats
            return
        stats["error"] = 1.0 - accuracy

        if stage == sb.Stage.VALID:
            lr = self.optimizer.param_groups[0]["lr"]
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": lr},
                train_stats=self.train_stats,
                valid_stats=stats,
            )
            # The learning curve first, then the checkpoint: a run killed
            # between the two repeats the epoch and replaces its entry
            if if_main_process():
                history = self.hparams.history_file
                append_history(history, epoch, lr, self.train_stats, stats)
            self.checkpointer.save_and_keep_only(
                meta={"error": stats["error"], "epoch": epoch},
                min_keys=["error"],
            )

        if stage == sb.Stage.TEST:
            self.hparams.train_logger.log_stats(
                stats_meta={"Epoch loaded": self.hparams.epoch_counter.current},
                test_stats=stats,
            )
            if if_main_process():
                write_test_results(
                    self.hparams.test_results_file,
                    self.stats,
                    self.hparams.label_encoder,
                )

    def on_fit_start(self):
        """Recovers the last checkpoint; refuses to resume a learning-rate
        schedule planned for another number of epochs or batches."""
        # A frozen encoder is frozen before DDP wraps the modules: DDP then
        # leaves it out (one unfrozen later is wrapped with its gradients)
        if getattr(self.hparams, "freeze_encoder", False):
            set_trainable(self.modules.embedding_model, False)
        with no_sync_batchnorm_on_cpu(self.device):
            super().on_fit_start()
        current = self.hparams.epoch_counter.current
        check_resumed_schedule(
            self.lr_scheduler,
            len(self.data.train),
            self.hparams.number_of_epochs,
            current,
        )
        if current > 0 and if_main_process():
            log = self.hparams.train_logger.save_file
            with open(log, "a", encoding="utf-8") as f:
                f.write(f"resumed from the checkpoint after epoch {current}\n")

    def init_optimizers(self):
        """Creates the optimizer (with ``encoder_lr_scale``, the encoder's own
        group: scaled learning rate and ``max_lr``) and the per-batch schedule,
        registered before SpeechBrain recovers the last checkpoint."""
        scale = getattr(self.hparams, "encoder_lr_scale", None)
        if scale is None or self.opt_class is None:
            super().init_optimizers()
        else:  # (check_finetune_options refused remove_vector_weight_decay)
            self.optimizer = encoder_optimizer(
                self.opt_class, self.modules, scale
            )
            self.optimizers_dict = {"opt_class": self.optimizer}
            self.checkpointer.add_recoverable("optimizer", self.optimizer)

        self.lr_scheduler = None
        if self.opt_class is None or self.hparams.lr_scheduler is None:
            return
        schedule = {}
        peak = getattr(self.hparams.lr_scheduler, "keywords", {}).get("max_lr")
        if scale is not None and peak is not None:
            schedule["max_lr"] = [peak, peak * scale]  # one per group
        self.lr_scheduler = self.hparams.lr_scheduler(
            self.optimizer,
            steps_per_epoch=len(self.data.train),
            epochs=self.hparams.number_of_epochs,
            **schedule,
        )
        self.checkpointer.add_recoverable("lr_scheduler", self.lr_scheduler)

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        """Steps the learning-rate schedule after each optimizer step."""
        sched = self.lr_scheduler
        # Batch k trains with the rate of step k, so a run of N batches needs
        # N - 1 steps: OneCycleLR extrapolates below its final rate at step N
        # and raises after it. Hold the final rate instead.
        if should_step and sched is not None:
            total = getattr(sched, "total_steps", None)
            if total is None or sched.last_epoch + 1 < total:
                sched.step()


def make_conditioner(hparams):
    """The clip conditioning of this run (training, bank, shards, export)."""
    return ClipConditioner(
        sample_rate=hparams["sample_rate"],
        channels=hparams["channels"],
        duration_ms=hparams["duration_ms"],
        remove_dc=hparams.get("remove_dc", False),
    )


def dataio_prep(hparams):
    """Creates the datasets and their data processing pipelines: each clip
    read, resampled, rechannelled and padded or cut by the conditioner the
    exported model uses; training clips at a random position and shift.
    (From a bank or shards, ``DataSource`` reads the clips there instead.)
    """
    manifests = [hparams[f"{split}_annotation"] for split in SPLITS]
    label_encoder = load_label_encoder(
        hparams["label_encoder"],
        hparams["label_encoder_file"],
        read_labels(hparams["labels_file"], manifests),
    )
    conditioner = make_conditioner(hparams)

    @sb.utils.data_pipeline.takes("label")
    @sb.utils.data_pipeline.provides("label", "label_encoded")
    def label_pipeline(label):
        """Maps a label to its index."""
        yield label
        yield torch.LongTensor([label_encoder.encode_label(label)])

    def audio_pipeline(train):
        """The waveform steps of one split (random ones in training only)."""

        @sb.utils.data_pipeline.takes("wav")
        @sb.utils.data_pipeline.provides("sig")
        def pipeline(wav):
            """Loads and conditions one clip."""
            sig, rate = load_audio(wav, max_seconds=conditioner.max_seconds())
            sig = conditioner.clip(sig, rate, random_pad=train)
            if train:
                sig = time_shift(sig, hparams["shift_pct"])
            return sig

        return pipeline

    return {
        split: DynamicItemDataset.from_json(
            json_path=hparams[f"{split}_annotation"],
            replacements={"data_root": hparams["data_folder"]},
            dynamic_items=[audio_pipeline(split == "train"), label_pipeline],
            output_keys=["id", "wav", "sig", "label", "label_encoded"],
        )
        for split in SPLITS
    }


def data_source(hparams, brain):
    """The clips of ``data_source`` (files, bank, feature_bank or shards):
    loaders, and the features of a batch (``sb_urbansound.data.loader``)."""
    return DataSource(
        brain,
        dataio_prep(hparams),
        hparams["data_source"],
        make_conditioner(hparams),
        hparams["bank_folder"],
        (
            hparams["shards_folder"],
            hparams["shard_size"],
            hparams["shard_format"],
            hparams["shuffle_buffer"],
        ),
        (hparams["dataloader_options"], hparams["test_dataloader_options"]),
    )


def main(argv=None):
    """Runs one experiment: prepare the data, train, test, export the model.

    Arguments
    ---------
    argv : list of str, optional
        ``[hparams_file, "--key=value", ...]`` (default: ``sys.argv[1:]``).

    Returns
    -------
    hparams : dict
        The loaded hyperparameters.
    """
    argv = sys.argv[1:] if argv is None else argv
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    # A device torch cannot use stops here, before the data is prepared
    check_device(run_opts.get("device"), run_opts.get("distributed_backend"))

    sb.utils.distributed.ddp_init_group(run_opts)  # DDP, under torchrun

    # Bad options (unknown, repeated, unset or invalid) stop here, named.
    # The output folder: one run at a time, cleaned after kills, and never
    # resumed with settings other than those it was started with.
    values = read_yaml_values(hparams_file, overrides)
    check_values(values, hparams_file)
    check_finetune_options(values, hparams_file, run_opts)
    check_outside(
        values["data_folder"], {k: values.get(k) for k in WRITTEN_FOLDERS}
    )
    run = RunFolder(values["output_folder"], values["save_folder"])
    if if_main_process():
        run.lock()
        run.check_settings(values)

    # Data preparation (main process): the manifests, and n_classes
    prepare = build_partial(values["prepare"])
    overrides = prepare_data(prepare, values, overrides)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    if if_main_process():
        run.check_data({s: hparams[f"{s}_annotation"] for s in SPLITS})

    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
        save_env_desc=False,  # its pip freeze is PATH's pip: write_environment
    )
    run_on_main(write_environment, args=[hparams["output_folder"]])
    # How the data was split (data preparation ran before the log was set up)
    if not hparams["skip_prep"]:
        split = recorded_split(hparams["manifest_folder"])
        logger.info("Data split %s", split or "not recorded")

    # Pretrained encoder weights, if the YAML has some (before the long steps)
    if "pretrainer" in hparams and hparams.get("use_pretrained", True):
        load_pretrained_encoder(hparams)

    brain = SoundClassifierBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    # Where the clips come from: loaders, and the features of a batch
    brain.data = data_source(hparams, brain)
    # Test the best checkpoint (lowest validation error) or the last one
    test_keys = {"best": {"min_key": "error"}, "last": {"max_key": "epoch"}}[
        hparams.get("test_checkpoint", "best")
    ]
    with brain.data as data:
        brain.fit(hparams["epoch_counter"], data.train, data.valid)
        brain.evaluate(data.test_loader(), **test_keys)

    # The tested model, for EncoderClassifier: <output_folder>/model
    run_on_main(export_inference_folder, args=[hparams], kwargs=test_keys)

    # Under DDP, leave the process group (gloo's threads live on: see
    # sb_urbansound.training.processes.exit_now, which ends a torchrun process)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    run.unlock()  # (a run stopped by an error: when its process ends)
    return hparams


if __name__ == "__main__":
    # Bad data or options: one line; SIGTERM and SIGHUP stop as Ctrl-C does
    run_recipe(main)
