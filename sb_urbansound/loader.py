"""Where a run's clips come from: the data source, wired by one call.

One YAML key, ``data_source``, says where the batches of a run come from:

* ``files``: every clip is read, resampled, rechannelled and padded or cut
  at every epoch, in DataLoader workers (:func:`dataio_prep`);
* ``bank``: every clip is decoded once into a clip bank
  (:class:`sb_urbansound.bank.ClipBank`); batches come from memory (the
  training device's when it fits), randomly placed per batch;
* ``feature_bank``: the bank, and the features of every clip computed once
  (:class:`sb_urbansound.bank.FeatureBank`), shifted by whole frames;
* ``shards``: the conditioned clips are written once into WebDataset shards
  (:mod:`sb_urbansound.shards`), which each process reads through a
  shuffle buffer.

:class:`DataSource` builds the datasets and their loaders for a Brain. Under
``torchrun``, validation and test are split between the processes, each clip
once (SpeechBrain evaluates every clip in every process): see
:mod:`sb_urbansound.distributed`. Loader workers die with the run and are
stopped when it ends.

Authors
-------
 * sb-urbansound contributors
"""

import functools
import inspect
import logging

import torch
from sb_urbansound.audio import ClipConditioner, load_audio, time_shift
from sb_urbansound.augment import circular_views
from sb_urbansound.bank import ClipBank, FeatureBank, place_clips
from sb_urbansound.distributed import ShardSampler, world
from sb_urbansound.errors import DataPrepError
from sb_urbansound.experiment import build_partial, set_override
from sb_urbansound.hardware import stop_loader_workers
from sb_urbansound.manifests import read_labels
from sb_urbansound.processes import WorkerInit
from sb_urbansound.shards import Shards, ShardStream

import speechbrain as sb
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.utils.distributed import run_on_main

logger = logging.getLogger(__name__)
SPLITS = ("train", "valid", "test")
#: The values of ``data_source``.
SOURCES = ("files", "bank", "feature_bank", "shards")


def prepare_data(values, overrides):
    """Prepares the data and sizes the model to it, before anything is built.

    Data preparation writes the manifests (main process only); with
    ``skip_prep`` the manifests are ready-made. ``n_classes: 0`` means "as
    many classes as the data has": the number found is added to the
    overrides; another number is checked against the data.

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
        # One decode pass: when the bank or the shards decode every file
        # (and name those that fail), preparation reads the headers only.
        # With skip_missing, it decodes them, to leave the bad out.
        decoded_later = values.get("data_source", "files") != "files"
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


def make_conditioner(hparams):
    """The clip conditioning of a run (training, bank, shards, inference).

    Arguments
    ---------
    hparams : dict
        The loaded hyperparameters.

    Returns
    -------
    sb_urbansound.audio.ClipConditioner
    """
    return ClipConditioner(
        sample_rate=hparams["sample_rate"],
        channels=hparams["channels"],
        duration_ms=hparams["duration_ms"],
        remove_dc=hparams.get("remove_dc", False),
    )


def read_splits(hparams):
    """The clips of each split: ``{split: {clip_id: (wav, label)}}``.

    Arguments
    ---------
    hparams : dict
        The loaded hyperparameters.

    Returns
    -------
    dict
    """
    replacements = {"data_root": hparams["data_folder"]}
    return {
        split: {
            clip_id: (entry["wav"], entry["label"])
            for clip_id, entry in sb.dataio.dataio.load_data_json(
                hparams[f"{split}_annotation"], replacements
            ).items()
        }
        for split in SPLITS
    }


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

    With a clip bank, an item is the clip's row in the bank. Without one,
    each clip is read (only the part that is kept), resampled, rechannelled
    and padded or cut by the ``ClipConditioner`` that the exported model
    uses at inference; training clips get a random pad position and a random
    circular time shift.

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
    conditioner = make_conditioner(hparams)

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
        key = "sig" if bank is None else "bank_row"
        item = audio_pipeline(split == "train") if bank is None else None
        datasets[split] = DynamicItemDataset.from_json(
            json_path=hparams[f"{split}_annotation"],
            replacements={"data_root": hparams["data_folder"]},
            dynamic_items=[item or bank_pipeline, label_pipeline],
            output_keys=["id", "wav", key, "label", "label_encoded"],
        )
    return datasets


def build_clip_bank(hparams):
    """Builds (main process) and opens the clip bank of a run's clips.

    Arguments
    ---------
    hparams : dict
        The loaded hyperparameters.

    Returns
    -------
    sb_urbansound.bank.ClipBank
    """
    paths = {
        clip_id: wav
        for clips in read_splits(hparams).values()
        for clip_id, (wav, _) in clips.items()
    }
    bank = ClipBank(hparams["bank_folder"], make_conditioner(hparams))
    run_on_main(bank.build, args=[paths])
    return bank.open(paths)


def shard_datasets(hparams):
    """Writes (main process) the shards of a run's clips; opens them.

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
    shards = Shards(
        hparams["shards_folder"],
        make_conditioner(hparams),
        hparams["shard_size"],
        hparams["shard_format"],
    )
    run_on_main(shards.write, args=[read_splits(hparams)])
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


class DataSource:
    """The datasets, loaders and batch features of a run's ``data_source``.

    Made after the Brain (it needs its device and, for a feature bank, its
    feature extractor): the training loader is the Brain's own
    (``make_dataloader``: SpeechBrain's sampler under DDP, and a position
    saved in the checkpoints); the validation and test loaders give each
    process its share of the clips (``ShardSampler``). Use it as a context:
    the loaders' workers are stopped at its end.

    Arguments
    ---------
    hparams : dict
        The loaded hyperparameters (``data_source``, the manifests, the
        conditioning and loader options).
    brain : speechbrain.core.Brain
        The Brain that trains on it.

    Example
    -------
    See ``recipes/UrbanSound8k/SoundClassification/train.py``.
    """

    def __init__(self, hparams, brain):
        self.source = hparams["data_source"]
        self.shift_pct = hparams["shift_pct"]
        self.bank = self.feature_bank = None
        self.loaders = []
        train_options = hparams["dataloader_options"]
        self.test_options = hparams["test_dataloader_options"]
        if self.source == "shards":
            datasets = shard_datasets(hparams)
            # Streams are read in this process; SpeechBrain gives the
            # training stream its epoch (its shards). A stream has no
            # position to save: a resumed run starts its epoch again, so a
            # mid-epoch checkpoint would only repeat the epoch's first steps
            train_options = self.test_options = {
                "batch_size": hparams["batch_size"],
                "collate_fn": PaddedBatch,
            }
            brain.train_sampler = datasets["train"]
            brain.ckpt_interval_minutes = brain.ckpt_interval_steps = 0
        elif self.source == "files":
            datasets = dataio_prep(hparams)
        else:
            bank = build_clip_bank(hparams)
            datasets = dataio_prep(hparams, bank)
            self.use_bank(bank, brain, self.source == "feature_bank")
        self.datasets = datasets
        self.train = brain.make_dataloader(
            datasets["train"], sb.Stage.TRAIN, **self._workers(train_options)
        )
        self.valid = self.loader("valid")
        self.loaders += [self.train, self.valid]

    def use_bank(self, bank, brain, feature_bank=False):
        """Draws the batches from a clip bank (and its features, if asked).

        Arguments
        ---------
        bank : sb_urbansound.bank.ClipBank
            The clips of the run, opened.
        brain : speechbrain.core.Brain
            For its device and feature extractor (``compute_features``).
        feature_bank : bool
            Also compute the features of every clip once (the feature
            extractor must have no trainable parameters).
        """
        self.bank = bank
        where = bank.to_device(brain.device)
        logger.info("Clip bank: %d clips in %s", len(bank.index), where)
        if feature_bank:
            self.feature_bank = FeatureBank(
                bank,
                brain.modules.compute_features,
                device=brain.device,
                progress=not brain.noprogressbar,
            )
            logger.info(
                "Feature bank: %.1f MB on %s",
                self.feature_bank.nbytes / 1e6,
                brain.device,
            )

    @staticmethod
    def _workers(options):
        """Loader options whose workers die with this process."""
        if options.get("num_workers", 0) > 0:
            then = options.get("worker_init_fn")
            options = {**options, "worker_init_fn": WorkerInit(then)}
        return options

    def loader(self, split):
        """An evaluation loader: this process's share of the split's clips.

        Arguments
        ---------
        split : str
            ``valid`` or ``test``.

        Returns
        -------
        DataLoader
        """
        dataset = self.datasets[split]
        options = dict(self._workers(self.test_options))
        rank, size = world()
        if size > 1 and not isinstance(dataset, ShardStream):
            # (a stream is split by rank already)
            options.pop("shuffle", None)
            options["sampler"] = ShardSampler(len(dataset), rank, size)
        return sb.dataio.dataloader.make_dataloader(dataset, **options)

    def test_loader(self):
        """The test loader; the training and validation workers stop first.

        Returns
        -------
        DataLoader
        """
        stop_loader_workers(self.loaders)
        self.loaders.append(self.loader("test"))
        return self.loaders[-1]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        # Persistent workers would live until the process exits
        stop_loader_workers(self.loaders)

    def features(self, batch, compute_features, train, views=1, shift=0.0):
        """The features of a batch, from the bank, the shards or ``sig``.

        Arguments
        ---------
        batch : PaddedBatch
            The batch, on the device.
        compute_features : callable
            The feature extractor (waveforms to features).
        train : bool
            Whether the batch is for training (random placement).
        views : int
            Circularly shifted views of each clip, over ``shift`` of its
            length (test-time averaging; 1: the clip itself).
        shift : float
            The largest shift of the views, as a fraction of the clip.

        Returns
        -------
        feats : torch.Tensor
            The features, ``views * batch`` of them, view by view.
        lens : torch.Tensor
            Their relative lengths.
        """
        if self.feature_bank is not None:
            rows = batch.bank_row.data.view(-1)
            feats = self.feature_bank.features(rows, train, self.shift_pct)
            if views > 1:
                dim = self.feature_bank.time_dim
                frames = round(shift * feats.shape[dim])
                feats = circular_views(feats, views, frames, dim=dim)
            return feats, torch.ones(len(feats), device=feats.device)
        if self.bank is not None:
            rows = batch.bank_row.data.view(-1)
            wavs = self.bank.waveforms(
                rows, train, self.shift_pct, device=rows.device
            )
            lens = torch.ones(len(rows), device=rows.device)
        elif self.source == "shards":  # stored as the clip bank stores
            lengths = batch.length.data.view(-1)
            wavs = place_clips(batch.pcm.data, lengths, train, self.shift_pct)
            lens = torch.ones(len(wavs), device=wavs.device)
        else:
            wavs, lens = batch.sig
        if views > 1:
            samples = round(shift * wavs.shape[1])
            wavs = circular_views(wavs, views, samples, dim=1)
        return compute_features(wavs), lens.repeat(views)
