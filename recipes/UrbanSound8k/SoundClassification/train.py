#!/usr/bin/env python3
"""Recipe for training a sound classifier on UrbanSound8K (or your own sounds).

Each clip is loaded, resampled, rechannelled and padded or truncated to a fixed
length; training clips are also placed at a random position and shifted in
time. A batch of clips goes through a feature extractor (a mel spectrogram in
dB for the tutorial's CNN), SpecAugment in training, a normaliser, an
embedding model and a classifier. The best checkpoint by validation error is
tested, and a model folder that SpeechBrain's ``EncoderClassifier`` loads is
exported to ``<output_folder>/model``.

To run this recipe, do the following:
> python train.py hparams/cnn.yaml --data_folder=/path/to/UrbanSound8K

Other YAML files train SpeechBrain's ECAPA-TDNN (``train_ecapa_tdnn.yaml``),
x-vector and CNN14 models, or read labels from class folders
(``folders.yaml``) or file names (``fsdd.yaml``). Every key can be overridden
on the command line (``--number_of_epochs=5``). An interrupted run resumes
when the same command is run again.

``cnn14_finetune.yaml`` and ``beats_finetune.yaml`` fine-tune pretrained
encoders (loaded by the YAML's ``pretrainer``). In any YAML,
``freeze_encoder``, ``unfreeze_after_epochs`` and ``encoder_lr_scale`` freeze
the encoder (``embedding_model``) or give it its own learning rate.

Authors
 * sb-urbansound contributors 2026
"""

import functools
import inspect
import os
import signal
import sys
import time

import torch
from hyperpyyaml import load_hyperpyyaml
from sb_urbansound.atomic import atomic_write_json
from sb_urbansound.audio import ClipConditioner, load_audio, time_shift
from sb_urbansound.augment import Mixup, average_views, circular_views
from sb_urbansound.bank import ClipBank, FeatureBank, place_clips
from sb_urbansound.distributed import ShardSampler, gather, world
from sb_urbansound.errors import DataPrepError, UserError, report
from sb_urbansound.experiment import (
    RunFolder,
    build_partial,
    check_outside,
    check_values,
    override_keys,
    read_yaml_values,
    set_override,
)
from sb_urbansound.finetune import check_finetune_options
from sb_urbansound.hardware import check_device, stop_loader_workers
from sb_urbansound.inference import export_inference_folder
from sb_urbansound.manifests import read_labels, recorded_split
from sb_urbansound.processes import (
    Stopped,
    WorkerInit,
    exit_now,
    signal_name,
    stop_on_signals,
)
from sb_urbansound.report import append_history, classification_results
from sb_urbansound.shards import Shards, ShardStream

import speechbrain as sb
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.dataio.sampler import ReproducibleWeightedRandomSampler
from speechbrain.utils.distributed import if_main_process, run_on_main
from speechbrain.utils.fetching import FetchConfig
from speechbrain.utils.logger import get_logger
from speechbrain.utils.metric_stats import ClassificationStats

logger = get_logger(__name__)
SPLITS = ("train", "valid", "test")
#: The folders a run writes (never inside ``data_folder``).
WRITTEN_FOLDERS = (
    "output_folder",
    "save_folder",
    "manifest_folder",
    "bank_folder",
    "shards_folder",
)


class SoundClassifierBrain(sb.Brain):
    """Trains a sound classifier; validates, keeps the best checkpoint, tests it.

    The modules are those SpeechBrain's ``EncoderClassifier`` uses
    (``compute_features``, ``mean_var_norm``, ``embedding_model``,
    ``classifier``), so a trained model loads for inference without this file.
    """

    bank = None
    feature_bank = None
    encoder_is_frozen = False

    def __init__(self, *args, **kwargs):
        self.loaders = []  # the DataLoaders made, to stop their workers
        super().__init__(*args, **kwargs)
        self.test_keys = self.tested_checkpoint_keys()
        # An average of the weights (optional): saved with the checkpoints
        self.average = getattr(self.hparams, "weight_average", None)
        if self.average is not None and self.checkpointer is not None:
            self.checkpointer.add_recoverable("weight_average", self.average)

    def tested_checkpoint_keys(self):
        """How the checkpoint that is tested and exported is found.

        ``test_checkpoint: best`` (the default): the lowest validation error.
        ``last``: the last epoch's. With a fixed schedule that anneals the
        learning rate to nearly zero, the last epoch is the finished model;
        the best validation epoch is a noisy choice where the validation
        set is small or unlike the test set (another fold of other sources).

        Returns
        -------
        dict
            ``{"min_key": "error"}`` or ``{"max_key": "epoch"}``, for
            ``evaluate`` and ``export_inference_folder``.
        """
        which = getattr(self.hparams, "test_checkpoint", "best")
        if which == "best":
            return {"min_key": "error"}
        if which == "last":
            return {"max_key": "epoch"}
        raise UserError(f"test_checkpoint must be best or last, got {which!r}")

    def use_bank(self, bank, feature_bank=False):
        """Draws the batches from a clip bank (and its features, if asked).

        Arguments
        ---------
        bank : sb_urbansound.bank.ClipBank
            The clips of the run, opened.
        feature_bank : bool
            Also compute the features of every clip once (the feature
            extractor must have no trainable parameters).
        """
        self.bank = bank
        where = bank.to_device(self.device)
        logger.info("Clip bank: %d clips in %s", len(bank.index), where)
        if feature_bank:
            self.feature_bank = FeatureBank(
                bank,
                self.modules.compute_features,
                device=self.device,
                progress=not self.noprogressbar,
            )
            logger.info(
                "Feature bank: %.1f MB on %s",
                self.feature_bank.nbytes / 1e6,
                self.device,
            )

    def compute_forward(self, batch, stage):
        """Computes the class log-probabilities of a batch of clips.

        Arguments
        ---------
        batch : PaddedBatch
            With ``sig``: ``[batch, time]`` (mono) or ``[batch, time,
            channels]`` waveforms, all of the training length; or, with a
            clip bank, ``bank_row``: the clips' rows in the bank.
        stage : sb.Stage
            One of sb.Stage.TRAIN, sb.Stage.VALID, or sb.Stage.TEST.

        Returns
        -------
        predictions : torch.Tensor
            ``[batch, 1, n_classes]`` log-probabilities (or scores).
        lens : torch.Tensor
            The relative lengths of the clips.
        """
        batch = batch.to(self.device)
        train = stage == sb.Stage.TRAIN
        # Test-time averaging (optional): evaluate several circularly shifted
        # views of each clip and average their probabilities
        views = 1 if train else getattr(self.hparams, "tta_views", 1)

        # Features, then (training only) the YAML's feature augmentation
        # and SpecAugment: evaluation is deterministic
        feats, lens = self.batch_features(batch, train, views)
        feature_augment = getattr(self.hparams, "feature_augment", None)
        if train and feature_augment is not None:
            feats = feature_augment(feats)
        if train and self.hparams.spec_augment is not None:
            feats = self.hparams.spec_augment(feats)
        feats = self.modules.mean_var_norm(feats, lens)

        # Mixup (optional, training only): pairs of clips and their losses
        self.mixed = None
        mixup = getattr(self.hparams, "mixup", None)
        if train and mixup is not None:
            feats, perm, lam = mixup(feats)
            self.mixed = (perm, lam)

        embeddings = self.network("embedding_model", train)(feats, lens)
        predictions = self.network("classifier", train)(embeddings)
        if predictions.dim() == 2:
            predictions = predictions.unsqueeze(1)
        if views > 1:
            predictions = average_views(predictions, views)
            lens = lens[: len(lens) // views]
        return predictions, lens

    def network(self, name, train):
        """A module of the network; outside training, without its DDP wrapper.

        Evaluation is split between the processes (see ``make_dataloader``),
        so a process may evaluate fewer batches than another, or none: a DDP
        wrapper would then wait for the others at its first forward (it
        synchronises buffers there). Evaluation needs no synchronisation.

        Arguments
        ---------
        name : str
            A key of ``self.modules``.
        train : bool
            Whether the batch is for training.

        Returns
        -------
        torch.nn.Module
        """
        module = self.modules[name]
        wrapped = isinstance(module, torch.nn.parallel.DistributedDataParallel)
        return module.module if wrapped and not train else module

    def batch_features(self, batch, train, views=1):
        """The features of a batch, from the clip bank or from ``sig``.

        With a clip bank the waveforms (or, with a feature bank, the
        features) of the batch come from memory, randomly placed in training.

        Arguments
        ---------
        batch : PaddedBatch
            The batch, on the device.
        train : bool
            Whether the batch is for training (random placement).
        views : int
            Circularly shifted views of each clip, over ``tta_max_shift`` of
            its length (1: the clip itself).

        Returns
        -------
        feats : torch.Tensor
            The features, ``views * batch`` of them, view by view.
        lens : torch.Tensor
            Their relative lengths.
        """
        max_shift = getattr(self.hparams, "tta_max_shift", 0.0)
        if self.feature_bank is not None:
            rows = batch.bank_row.data.view(-1)
            feats = self.feature_bank.features(
                rows, train, self.hparams.shift_pct
            )
            lens = torch.ones(len(rows), device=self.device)
            if views > 1:
                time_dim = self.feature_bank.time_dim
                frames = round(max_shift * feats.shape[time_dim])
                feats = circular_views(feats, views, frames, dim=time_dim)
            return feats, lens.repeat(views)

        if self.bank is not None:
            rows = batch.bank_row.data.view(-1)
            wavs = self.bank.waveforms(
                rows, train, self.hparams.shift_pct, device=self.device
            )
            lens = torch.ones(len(rows), device=self.device)
        elif hasattr(
            batch, "pcm"
        ):  # from shards: stored as the clip bank stores
            wavs = place_clips(
                batch.pcm.data,
                batch.length.data.view(-1),
                train,
                self.hparams.shift_pct,
            )
            lens = torch.ones(len(wavs), device=self.device)
        else:
            wavs, lens = batch.sig
        if views > 1:
            samples = round(max_shift * wavs.shape[1])
            wavs = circular_views(wavs, views, samples, dim=1)
        return self.modules.compute_features(wavs), lens.repeat(views)

    def compute_objectives(self, predictions, batch, stage):
        """Computes the loss and records the predictions for the accuracy.

        Arguments
        ---------
        predictions : tuple
            The output of ``compute_forward``.
        batch : PaddedBatch
            With ``id``, ``wav`` and ``label_encoded``.
        stage : sb.Stage
            One of sb.Stage.TRAIN, sb.Stage.VALID, or sb.Stage.TEST.

        Returns
        -------
        loss : torch.Tensor
            A one-element tensor used for backpropagating the gradient.
        """
        predictions, lens = predictions
        targets, _ = batch.label_encoded
        if stage == sb.Stage.TRAIN and self.mixed is not None:
            perm, lam = self.mixed
            loss = Mixup.mix_loss(
                self.hparams.compute_cost, predictions, targets, perm, lam, lens
            )
        else:
            loss = self.hparams.compute_cost(predictions, targets, lens)
        if not torch.isfinite(loss):
            raise UserError(
                f"the loss of a {stage.name.lower()} batch is {loss.item()}: "
                "training would go on with NaN weights. Either a clip of "
                "this batch holds bad samples, or training diverged (lower "
                "lr/max_lr). The batch's files:\n  " + "\n  ".join(batch.wav)
            )

        if stage != sb.Stage.TRAIN:  # the mean loss per clip, over processes
            self.eval_loss[0] += float(loss) * len(batch.id)
            self.eval_loss[1] += len(batch.id)

        decode = self.hparams.label_encoder.ind2lab
        if stage == sb.Stage.TRAIN and self.mixed is not None:
            # A mixed clip counts as its dominant part's class
            perm, lam = self.mixed
            targets = targets if lam >= 0.5 else targets[perm]
        predicted = predictions.detach().argmax(dim=-1).view(-1).tolist()
        self.stats.append(
            batch.id,
            [decode[i] for i in predicted],
            [decode[i] for i in targets.view(-1).tolist()],
        )
        return loss

    def on_stage_start(self, stage, epoch=None):
        """Resets the accuracy statistics; freezes the encoder if planned.

        Arguments
        ---------
        stage : sb.Stage
            One of sb.Stage.TRAIN, sb.Stage.VALID, or sb.Stage.TEST.
        epoch : int
            The currently-starting epoch.
        """
        self.stats = ClassificationStats()
        self.eval_loss = [0.0, 0]  # loss summed over clips, clips
        self.stage_started = time.perf_counter()
        # Validation and test use the averaged weights, which the
        # checkpoints (and so the exported model) then hold
        if stage != sb.Stage.TRAIN and self.average is not None:
            if not self.average.swapped:
                self.average.swap()
        if stage == sb.Stage.TRAIN and self.plans_freezing():
            frozen = self.encoder_frozen_in(epoch)
            if frozen != self.encoder_is_frozen or epoch == 1:
                logger.info(
                    "Epoch %s: encoder %s",
                    epoch,
                    "frozen" if frozen else "trained",
                )
            self.set_encoder_trainable(not frozen)

    def plans_freezing(self):
        """Whether the YAML freezes the encoder for some epochs.

        ``freeze_encoder: True`` freezes the encoder (``embedding_model``) for
        the whole run; ``unfreeze_after_epochs: N`` for the first N epochs.
        Without either, the encoder's ``requires_grad`` flags are left alone.

        Returns
        -------
        bool
        """
        return bool(
            getattr(self.hparams, "freeze_encoder", False)
            or getattr(self.hparams, "unfreeze_after_epochs", 0)
        )

    def encoder_frozen_in(self, epoch):
        """Whether the encoder is frozen in an epoch (counted from 1).

        Arguments
        ---------
        epoch : int
            The epoch.

        Returns
        -------
        bool
        """
        if getattr(self.hparams, "freeze_encoder", False):
            return True
        return epoch <= getattr(self.hparams, "unfreeze_after_epochs", 0)

    def set_encoder_trainable(self, trainable):
        """Freezes or unfreezes the parameters of ``embedding_model``.

        A frozen encoder also runs in evaluation mode in training (see
        ``on_fit_batch_start``): its batch-norm statistics stay those it was
        loaded with, and dropout is off, as for a fixed feature extractor.

        Arguments
        ---------
        trainable : bool
            Whether the encoder's parameters get gradients.
        """
        for param in self.modules.embedding_model.parameters():
            param.requires_grad_(trainable)
        self.encoder_is_frozen = not trainable

    def on_fit_batch_start(self, batch, should_step):
        """Keeps a frozen encoder in evaluation mode.

        SpeechBrain puts every module in training mode after
        ``on_stage_start``; a frozen encoder goes back to evaluation mode.

        Arguments
        ---------
        batch : PaddedBatch
            The batch.
        should_step : bool
            Whether the optimizer steps after this batch.
        """
        if self.encoder_is_frozen:
            self.modules.embedding_model.eval()

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs the stage; checkpoints after validation; writes test results.

        Arguments
        ---------
        stage : sb.Stage
            One of sb.Stage.TRAIN, sb.Stage.VALID, or sb.Stage.TEST.
        stage_loss : float
            The average loss of the stage.
        epoch : int
            The currently-ending epoch.
        """
        if stage != sb.Stage.TRAIN:  # every process's clips, pooled
            stage_loss = self.pool_evaluation()
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
            # between the two repeats the epoch and replaces its entry (the
            # other order would lose the epoch from history.json)
            if if_main_process():
                append_history(
                    self.hparams.history_file,
                    epoch,
                    lr,
                    self.train_stats,
                    stats,
                )
            self.checkpointer.save_and_keep_only(
                meta={"error": stats["error"], "epoch": epoch},
                min_keys=["error"],
            )
            if self.average is not None:
                self.average.swap()  # back to the trained weights

        if stage == sb.Stage.TEST:
            self.hparams.train_logger.log_stats(
                stats_meta={"Epoch loaded": self.hparams.epoch_counter.current},
                test_stats=stats,
            )
            if if_main_process():
                encoder = self.hparams.label_encoder
                labels = [encoder.ind2lab[i] for i in range(len(encoder))]
                results = classification_results(
                    self.stats.targets, self.stats.predictions, labels
                )
                atomic_write_json(self.hparams.test_results_file, results)
                logger.info(
                    "Test accuracy %.4f on %d clips; results in %s",
                    results["accuracy"],
                    results["n_clips"],
                    self.hparams.test_results_file,
                )

    def pool_evaluation(self):
        """Pools the evaluation of every process: statistics of all clips.

        Each process evaluated its share of the clips (``make_dataloader``);
        afterwards every process holds the predictions of all of them, so
        the accuracy, the confusion matrix, the best-checkpoint choice and
        the test results are those of a single process.

        Returns
        -------
        float
            The mean loss per clip.
        """
        local = (
            self.stats.ids,
            self.stats.predictions,
            self.stats.targets,
            *self.eval_loss,
        )
        parts = gather(local)
        if len(parts) > 1:
            self.stats = ClassificationStats()
            for ids, predictions, targets, _, _ in parts:
                self.stats.append(ids, predictions, targets)
        total, clips = sum(p[3] for p in parts), sum(p[4] for p in parts)
        return total / clips if clips else 0.0

    def on_fit_start(self):
        """Recovers the last checkpoint; refuses a schedule planned otherwise.

        A one-cycle schedule is planned for ``number_of_epochs``: resuming it
        with another number (or batch size) would train the extra epochs at
        the schedule's final rate, nearly zero.
        """
        # A frozen encoder is frozen before DDP wraps the modules: DDP then
        # leaves it out. An encoder that is unfrozen later must be wrapped
        # with its gradients, and DDP must accept batches without them.
        if getattr(self.hparams, "freeze_encoder", False):
            self.set_encoder_trainable(False)
        elif self.plans_freezing() and self.distributed_launch:
            if not self.find_unused_parameters:
                raise UserError(
                    "unfreeze_after_epochs with several processes needs "
                    "--find_unused_parameters (the frozen encoder gets no "
                    "gradients in the first epochs)"
                )
        super().on_fit_start()
        # A checkpoint taken at validation holds the averaged weights in the
        # modules: training goes on from the trained ones
        if self.average is not None and self.average.swapped:
            self.average.swap()
        current = self.hparams.epoch_counter.current
        total = getattr(self.lr_scheduler, "total_steps", None)
        planned = self.train_steps_per_epoch * self.hparams.number_of_epochs
        # (a finished run trains nothing more: it may be tested with other
        # processes or batch sizes)
        more = current < self.hparams.number_of_epochs
        if current > 0 and more and total is not None and total != planned:
            raise UserError(
                f"this run's learning-rate schedule was planned for {total} "
                f"steps ({total // self.train_steps_per_epoch} epochs of "
                f"{self.train_steps_per_epoch} batches); resuming it for "
                f"{self.hparams.number_of_epochs} epochs ({planned} steps) "
                "would train at its final rate, nearly zero. Rerun with the "
                "original --number_of_epochs and batch size, or train the new "
                "schedule in a new --output_folder."
            )
        if current > 0 and if_main_process():
            with open(
                self.hparams.train_logger.save_file, "a", encoding="utf-8"
            ) as log:
                log.write(
                    f"resumed from the checkpoint after epoch {current}\n"
                )

    def make_dataloader(
        self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs
    ):
        """Makes a DataLoader; remembers the training batches per epoch.

        The learning-rate schedule needs the number of optimizer steps per
        epoch, which depends on the batch size and, under DDP, on the number
        of processes. Under DDP, validation and test are split between the
        processes too (each clip once), and pooled in ``on_stage_end``.

        Arguments
        ---------
        dataset : Dataset
            The data.
        stage : sb.Stage
            One of sb.Stage.TRAIN, sb.Stage.VALID, or sb.Stage.TEST.
        ckpt_prefix : str
            Prefix of the loader's checkpoint name.
        **loader_kwargs : dict
            Passed to SpeechBrain's ``make_dataloader``.

        Returns
        -------
        DataLoader
        """
        rank, size = world()
        streamed = isinstance(dataset, ShardStream)  # split by rank already
        if stage != sb.Stage.TRAIN and size > 1 and not streamed:
            # Validation and test are split between the processes, each
            # clip once (SpeechBrain evaluates everything in every process)
            loader_kwargs["sampler"] = ShardSampler(len(dataset), rank, size)
            loader_kwargs.pop("shuffle", None)
        if loader_kwargs.get("num_workers", 0) > 0:
            # A worker dies with this process, even when it is killed
            loader_kwargs["worker_init_fn"] = WorkerInit(
                loader_kwargs.get("worker_init_fn")
            )
        balanced = getattr(self.hparams, "class_balanced", False)
        if stage == sb.Stage.TRAIN and balanced and not streamed:
            loader_kwargs = self.balanced_loader_kwargs(dataset, loader_kwargs)
        loader = super().make_dataloader(
            dataset, stage, ckpt_prefix, **loader_kwargs
        )
        if stage == sb.Stage.TRAIN:
            self.train_steps_per_epoch = len(loader)
            if streamed:  # SpeechBrain gives it the epoch (its shards)
                self.train_sampler = dataset
        self.loaders.append(loader)
        return loader

    def balanced_loader_kwargs(self, dataset, loader_kwargs):
        """Loader options that draw every class equally often.

        ``class_balanced: True``: an epoch draws as many clips as the
        training set has, with replacement, each with a probability inverse
        to its class's size, so that rare classes are seen as often as the
        others (SpeechBrain's ``ReproducibleWeightedRandomSampler``, seeded
        with the run's seed, a new draw every epoch).

        Arguments
        ---------
        dataset : DynamicItemDataset
            The training data, with a ``label`` per clip.
        loader_kwargs : dict
            The loader options (``shuffle`` is replaced by the sampler).

        Returns
        -------
        dict
            The options with the ``sampler``.
        """
        labels = [dataset.data[clip]["label"] for clip in dataset.data_ids]
        counts = {label: labels.count(label) for label in set(labels)}
        weights = [1.0 / counts[label] for label in labels]
        sampler = ReproducibleWeightedRandomSampler(
            weights,
            num_samples=len(labels),
            replacement=True,
            seed=self.hparams.seed,
        )
        self.train_sampler = sampler  # SpeechBrain sets its epoch
        kwargs = {k: v for k, v in loader_kwargs.items() if k != "shuffle"}
        kwargs["sampler"] = sampler
        return kwargs

    def fit(self, *args, **kwargs):
        """Trains (see ``sb.Brain.fit``), then stops the loaders' workers.

        Arguments
        ---------
        *args, **kwargs
            Passed to ``sb.Brain.fit``.
        """
        try:
            super().fit(*args, **kwargs)
        finally:
            # Persistent workers would live until the process exits
            stop_loader_workers(self.loaders)

    def evaluate(self, *args, **kwargs):
        """Tests (see ``sb.Brain.evaluate``), then stops the loaders' workers.

        Arguments
        ---------
        *args, **kwargs
            Passed to ``sb.Brain.evaluate``.

        Returns
        -------
        float
            The average test loss.
        """
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            stop_loader_workers(self.loaders)

    def init_optimizers(self):
        """Creates the optimizer, then the per-batch learning-rate schedule.

        With ``encoder_lr_scale`` (e.g. 0.1), the encoder (``embedding_model``)
        is a second parameter group whose learning rate is the others' times
        the scale; a schedule with a peak (``max_lr``, as OneCycleLR) peaks
        at ``max_lr`` times the scale for it. The schedule is registered with
        the checkpointer before SpeechBrain recovers the last checkpoint, so a
        resumed run continues it.
        """
        scale = getattr(self.hparams, "encoder_lr_scale", None)
        if scale is None or self.opt_class is None:
            super().init_optimizers()
        else:
            if self.remove_vector_weight_decay:
                raise UserError(
                    "encoder_lr_scale makes its own parameter groups; it "
                    "cannot be combined with --remove_vector_weight_decay"
                )
            encoder = list(self.modules.embedding_model.parameters())
            in_encoder = {id(p) for p in encoder}
            others = [
                p for p in self.modules.parameters() if id(p) not in in_encoder
            ]
            # Group 0 (the head) is the one whose rate the logs report
            self.optimizer = self.opt_class(
                [{"params": others}, {"params": encoder}]
            )
            self.optimizer.param_groups[1]["lr"] *= scale
            self.optimizers_dict = {"opt_class": self.optimizer}
            if self.checkpointer is not None:
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
            steps_per_epoch=self.train_steps_per_epoch,
            epochs=self.hparams.number_of_epochs,
            **schedule,
        )
        self.checkpointer.add_recoverable("lr_scheduler", self.lr_scheduler)

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        """Steps the learning-rate schedule after each optimizer step.

        Arguments
        ---------
        batch : PaddedBatch
            The batch.
        outputs : tuple
            The output of ``compute_forward``.
        loss : torch.Tensor
            The loss.
        should_step : bool
            Whether the optimizer stepped.
        """
        sched = self.lr_scheduler
        # Batch k trains with the rate of step k, so a run of N batches needs
        # N - 1 steps: OneCycleLR extrapolates below its final rate at step N
        # and raises after it. Hold the final rate instead.
        if should_step and sched is not None:
            total = getattr(sched, "total_steps", None)
            if total is None or sched.last_epoch + 1 < total:
                sched.step()
        if should_step and self.average is not None:
            self.average.update()

    def _wrap_distributed(self):
        """Wraps modules for DDP without SyncBatchNorm on CPU.

        SpeechBrain converts every BatchNorm to SyncBatchNorm under DDP, which
        only runs on CUDA; on CPU (gloo) the modules are wrapped as they are.
        """
        if not (self.distributed_launch and self.device.startswith("cpu")):
            return super()._wrap_distributed()
        for name, module in self.modules.items():
            if any(p.requires_grad for p in module.parameters()):
                self.modules[name] = torch.nn.parallel.DistributedDataParallel(
                    module, find_unused_parameters=self.find_unused_parameters
                )


def load_label_encoder(hparams):
    """The label encoder: each class to an index, the same in every split
    and every run of this output folder.

    Arguments
    ---------
    hparams : dict
        The loaded hyperparameters.

    Returns
    -------
    speechbrain.dataio.encoder.CategoricalEncoder
    """
    manifests = [hparams[f"{split}_annotation"] for split in SPLITS]
    labels = read_labels(hparams["labels_file"], manifests)
    label_encoder = hparams["label_encoder"]
    label_encoder.load_or_create(
        path=hparams["label_encoder_file"], from_iterables=[labels]
    )
    label_encoder.expect_len(len(labels))
    encoded = [label_encoder.ind2lab[i] for i in range(len(label_encoder))]
    if encoded != labels:
        raise DataPrepError(
            f"the label encoder in {hparams['label_encoder_file']} holds "
            f"{encoded}, but the data has {labels}: it was made for other "
            "data. Use a new output_folder."
        )
    return label_encoder


def dataio_prep(hparams, bank=None):
    """Creates the datasets and their data processing pipelines.

    With a clip bank, an item is the clip's row in the bank: the waveforms of
    a batch are drawn from the bank in ``compute_forward``. Without one, each
    clip is read (only the part that is kept), resampled, rechannelled and
    padded or truncated by the same ``ClipConditioner`` that the exported
    model uses at inference, in the DataLoader workers; training clips get a
    random pad position and a random circular time shift.

    Arguments
    ---------
    hparams : dict
        The loaded hyperparameters.
    bank : sb_urbansound.bank.ClipBank, optional
        The clip bank (None: the per-clip pipeline).

    Returns
    -------
    datasets : dict
        ``{"train": DynamicItemDataset, "valid": ..., "test": ...}``, whose
        items have ``id``, ``wav``, ``label``, ``label_encoded`` and
        ``bank_row`` (with a bank) or ``sig`` (without).
    """
    label_encoder = load_label_encoder(hparams)

    @sb.utils.data_pipeline.takes("label")
    @sb.utils.data_pipeline.provides("label", "label_encoded")
    def label_pipeline(label):
        """Maps a label to its index."""
        yield label
        yield torch.LongTensor([label_encoder.encode_label(label)])

    @sb.utils.data_pipeline.takes("id")
    @sb.utils.data_pipeline.provides("bank_row")
    def bank_pipeline(clip_id):
        """The clip's row in the clip bank."""
        return torch.LongTensor([bank.index[clip_id]])

    conditioner = make_conditioner(hparams)

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

    datasets = {}
    for split in SPLITS:
        if bank is not None:
            items, key = [bank_pipeline, label_pipeline], "bank_row"
        else:
            items, key = (
                [audio_pipeline(split == "train"), label_pipeline],
                "sig",
            )
        datasets[split] = DynamicItemDataset.from_json(
            json_path=hparams[f"{split}_annotation"],
            replacements={"data_root": hparams["data_folder"]},
            dynamic_items=items,
            output_keys=["id", "wav", key, "label", "label_encoded"],
        )
    return datasets


def make_conditioner(hparams):
    """The clip conditioning of this run (training, bank and inference)."""
    return ClipConditioner(
        sample_rate=hparams["sample_rate"],
        channels=hparams["channels"],
        duration_ms=hparams["duration_ms"],
        remove_dc=hparams.get("remove_dc", False),
    )


def read_splits(hparams):
    """The clips of each split, from the manifests.

    Arguments
    ---------
    hparams : dict
        The loaded hyperparameters.

    Returns
    -------
    dict
        ``{split: {clip_id: manifest entry}}`` (``wav`` resolved).
    """
    replacements = {"data_root": hparams["data_folder"]}
    return {
        split: sb.dataio.dataio.load_data_json(
            hparams[f"{split}_annotation"], replacements
        )
        for split in SPLITS
    }


def shard_datasets(hparams):
    """Writes (main process) the shards of this run's clips; opens them.

    Each split's clips are conditioned once into WebDataset shards in
    ``shards_folder``; each process then reads its own shards (see
    ``sb_urbansound.shards``).

    Arguments
    ---------
    hparams : dict
        The loaded hyperparameters.

    Returns
    -------
    datasets : dict
        ``{"train": ShardStream, "valid": ..., "test": ...}``, whose items
        have ``id``, ``wav``, ``label``, ``label_encoded``, ``pcm`` (int16)
        and ``length``.
    """
    label_encoder = load_label_encoder(hparams)
    splits = {
        split: {k: (e["wav"], e["label"]) for k, e in clips.items()}
        for split, clips in read_splits(hparams).items()
    }
    shards = Shards(
        hparams["shards_folder"],
        make_conditioner(hparams),
        hparams["shard_size"],
        hparams["shard_format"],
    )
    run_on_main(shards.write, args=[splits])
    index = shards.read_index()
    rank, size = world()
    return {
        split: ShardStream(
            shards.folder,
            index["splits"][split],
            train=split == "train",
            rank=rank,
            size=size,
            seed=hparams["seed"],
            buffer=hparams["shuffle_buffer"],
            label_encoder=label_encoder,
            epochs=hparams["number_of_epochs"],
            num_samples=index["settings"]["num_samples"],
        )
        for split in SPLITS
    }


def build_clip_bank(hparams):
    """Builds (main process) and opens the clip bank of this run's clips.

    Arguments
    ---------
    hparams : dict
        The loaded hyperparameters.

    Returns
    -------
    bank : sb_urbansound.bank.ClipBank
    """
    paths = {}
    for clips in read_splits(hparams).values():
        paths.update(
            {clip_id: entry["wav"] for clip_id, entry in clips.items()}
        )
    bank = ClipBank(hparams["bank_folder"], make_conditioner(hparams))
    run_on_main(bank.build, args=[paths])
    return bank.open(paths)


def check_bank_options(values, overrides):
    """Refuses a feature bank without a clip bank, when both are asked for.

    The feature bank is computed from the clip bank. ``--clip_bank=False``
    alone (the YAML's ``feature_bank: True`` then has nothing to work on)
    turns it off with a warning; asking for both on the command line is an
    error, as one of them would be ignored.

    Arguments
    ---------
    values : dict
        The YAML's values, resolved but not built (``read_yaml_values``).
    overrides : str
        YAML overrides from the command line.
    """
    if not values.get("feature_bank") or values.get("clip_bank", True):
        return
    if "feature_bank" in override_keys(overrides):
        raise UserError(
            "--feature_bank=True needs the clip bank, but --clip_bank=False "
            "was given: drop one of them"
        )
    logger.warning(
        "clip_bank=False: the feature bank (feature_bank=True in the YAML) "
        "is off too; every clip is decoded and its features computed at "
        "every epoch"
    )


def prepare_data(values, overrides):
    """Prepares the data and sizes the model to it, before anything is built.

    Data preparation writes the manifests (main process only); with
    ``skip_prep`` the manifests are ready-made (``train/valid/test_annotation``).
    ``n_classes: 0`` means "as many classes as the data has": the number found
    is then added to the overrides; another number is checked against the
    data.

    Arguments
    ---------
    values : dict
        The YAML's values, resolved but not built (``read_yaml_values``).
    overrides : str
        YAML overrides from the command line.

    Returns
    -------
    overrides : str
        The overrides, with ``n_classes`` added when it came from the data.
    """
    if not values["skip_prep"]:
        prepare = build_partial(values["prepare"])
        # One decode pass: when the clip bank or the shards decode every
        # file (and name those that fail), preparation reads the headers
        # only. With skip_missing, it decodes them, to leave the bad out.
        decoded_later = values.get("data_source") == "shards" or values.get(
            "clip_bank"
        )
        takes = inspect.signature(prepare.func).parameters
        if decoded_later and not values.get("skip_missing"):
            if "full_check" in takes:
                prepare = functools.partial(prepare, full_check=False)
        run_on_main(prepare)
    manifests = [values[f"{split}_annotation"] for split in SPLITS]
    n_data = len(read_labels(values["labels_file"], manifests))

    n_classes = values["n_classes"]
    if not n_classes:
        logger.info("n_classes from the data: %d", n_data)
        return set_override(overrides, "n_classes", n_data)
    if n_classes != n_data:
        raise DataPrepError(
            f"the data has {n_data} classes but the model is built for "
            f"n_classes={n_classes}: pass --n_classes={n_data}, or "
            "--n_classes=0 to take the number from the data."
        )
    return overrides


def load_pretrained_encoder(hparams):
    """Loads the pretrained encoder weights of the YAML's ``pretrainer``.

    Only with ``use_pretrained: True``, and only on a fresh run: a resumed
    run's checkpoint holds the fine-tuned weights, and SpeechBrain recovers it
    later. ``pretrained_encoder`` is a local file or ``<hub repo>/<file>``
    (fetched by SpeechBrain from the Hugging Face hub). The YAML's loading
    hook (``strict_parameter_transfer``) stops on any key that does not fit.

    Arguments
    ---------
    hparams : dict
        The loaded hyperparameters.
    """
    if "pretrainer" not in hparams or not hparams.get("use_pretrained", True):
        return
    if hparams["checkpointer"].find_checkpoint() is not None:
        logger.info("Resuming: the checkpoint replaces the pretrained encoder")
        return
    source = hparams.get("pretrained_encoder")
    if not source:
        what = getattr(
            hparams.get("embedding_model"), "PRETRAINED_HINT", "checkpoint file"
        )
        raise UserError(
            "use_pretrained is True but no pretrained_encoder is given: pass "
            f"--pretrained_encoder=<{what}> (see the recipe README), "
            "or --use_pretrained=False to train the encoder from random "
            "weights"
        )
    source = str(source)
    if not os.path.exists(source) and source.startswith(("/", ".", "~")):
        raise UserError(f"pretrained_encoder: {source} does not exist")
    pretrainer = hparams["pretrainer"]
    if pretrainer.collect_in is not None and if_main_process():
        os.makedirs(pretrainer.collect_in, exist_ok=True)
    try:
        # overwrite: replace the link an earlier start may have left
        run_on_main(
            pretrainer.collect_files,
            kwargs={"fetch_config": FetchConfig(overwrite=True)},
        )
    except (OSError, ValueError) as e:
        raise UserError(
            f"cannot fetch pretrained_encoder={source}: it is not a local "
            "file, and fetching it from the Hugging Face hub failed "
            f"({type(e).__name__}: {e}). Without internet, download it "
            "elsewhere and pass the local file."
        ) from None
    pretrainer.load_collected()
    logger.info("Pretrained encoder loaded from %s", source)


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
    check_device(run_opts.get("device"))

    # Initialize ddp (useful only for multi-GPU DDP training)
    sb.utils.distributed.ddp_init_group(run_opts)

    # Bad options (unknown, repeated, unset or invalid) stop here, named.
    # The output folder: one run at a time, cleaned after kills, and never
    # resumed with settings other than those it was started with.
    values = read_yaml_values(hparams_file, overrides)
    check_values(values, hparams_file)
    check_finetune_options(values, hparams_file)
    check_bank_options(values, overrides)
    check_outside(
        values["data_folder"], {k: values.get(k) for k in WRITTEN_FOLDERS}
    )
    run = RunFolder(values["output_folder"], values["save_folder"])
    if if_main_process():
        run.lock()
        run.check_settings(values)

    overrides = prepare_data(values, overrides)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    if if_main_process():
        run.check_data({s: hparams[f"{s}_annotation"] for s in SPLITS})

    # Create experiment directory
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    # How the data was split (data preparation ran before the log was set up)
    if not hparams["skip_prep"]:
        split = recorded_split(hparams["manifest_folder"])
        logger.info("Data split %s", split or "not recorded")

    # Pretrained encoder weights, if the YAML has some (before the long steps)
    load_pretrained_encoder(hparams)

    # Decode every clip once (clip bank or shards), or at every epoch
    bank = None
    if hparams["data_source"] == "shards":
        datasets = shard_datasets(hparams)
    else:
        bank = build_clip_bank(hparams) if hparams["clip_bank"] else None
        datasets = dataio_prep(hparams, bank)

    brain = SoundClassifierBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    if bank is not None:
        brain.use_bank(bank, feature_bank=hparams["feature_bank"])
    if hparams["data_source"] == "shards":
        # A stream has no position to save: a resumed run starts its
        # interrupted epoch again, so a mid-epoch checkpoint would only
        # repeat the epoch's first steps
        brain.ckpt_interval_minutes = brain.ckpt_interval_steps = 0
    train_options = hparams["dataloader_options"]
    test_options = hparams["test_dataloader_options"]
    if hparams["data_source"] == "shards":  # streams: read in this process
        train_options = test_options = {
            "batch_size": hparams["batch_size"],
            "collate_fn": PaddedBatch,
        }
    brain.fit(
        hparams["epoch_counter"],
        datasets["train"],
        datasets["valid"],
        train_loader_kwargs=train_options,
        valid_loader_kwargs=test_options,
    )

    # Test the best checkpoint (lowest validation error), or the last one
    # (test_checkpoint)
    brain.evaluate(
        datasets["test"],
        **brain.test_keys,
        test_loader_kwargs=test_options,
    )

    # The tested model, for EncoderClassifier: <output_folder>/model
    run_on_main(export_inference_folder, args=[hparams], kwargs=brain.test_keys)

    # Under DDP, leave the process group (gloo's threads live on: see
    # sb_urbansound.processes.exit_now, which ends a torchrun process)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    run.unlock()  # (a run stopped by an error: when its process ends)
    return hparams


if __name__ == "__main__":
    # SIGTERM (a scheduler's preemption) and SIGHUP stop the run as Ctrl-C
    # does: temporary files are removed and workers stopped on the way out
    status = 0
    with stop_on_signals():
        try:
            main()
        except UserError as e:
            # A problem with the data or options: one message, no traceback
            status = report(e)
        except KeyboardInterrupt as e:
            stop = e if isinstance(e, Stopped) else Stopped(signal.SIGINT)
            print(
                f"\nstopped by {signal_name(stop.signum)}: run the same "
                "command again to resume from the last checkpoint",
                file=sys.stderr,
            )
            status = stop.exit_status
    if os.environ.get("RANK") is not None:  # torchrun (as SpeechBrain tells)
        exit_now(status)  # gloo's threads would abort the teardown
    sys.exit(status)
