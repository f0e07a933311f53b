"""Where a run's clips come from: the data source, wired by one call.

The YAML key ``data_source`` says where batches come from: ``files`` (each
clip decoded at every epoch), ``bank``, ``feature_bank`` (see
:mod:`sb_urbansound.data.bank`) or ``shards``. :class:`DataSource` makes a
Brain's loaders and the features of a batch.

Authors
-------
 * sb-urbansound contributors
"""

import functools
import inspect
import logging

import torch
from sb_urbansound.data.bank import ClipBank, FeatureBank, place_clips
from sb_urbansound.data.manifests import read_labels
from sb_urbansound.data.shards import Shards, ShardStream
from sb_urbansound.errors import DataPrepError
from sb_urbansound.training.augment import circular_views
from sb_urbansound.training.distributed import ShardSampler, world
from sb_urbansound.training.experiment import (
    DATA_SOURCES as SOURCES,
    set_override,
)
from sb_urbansound.training.hardware import stop_loader_workers
from sb_urbansound.training.processes import WorkerInit

import speechbrain as sb
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.utils.distributed import run_on_main

logger = logging.getLogger(__name__)
SPLITS = ("train", "valid", "test")


def prepare_data(prepare, values, overrides):
    """Prepares the data and sizes the model to it, before anything is built:
    ``n_classes: 0`` takes the number of classes from the data; another
    number is checked against it.

    Arguments
    ---------
    prepare : functools.partial
        The YAML's ``prepare`` function with its arguments.
    values : dict
        The YAML's values, resolved but not built (``read_yaml_values``).
    overrides : str
        The command line's YAML overrides.

    Returns
    -------
    overrides : str
        The overrides, with ``n_classes`` added when it came from the data.
    """
    if not values["skip_prep"]:
        # The bank and the shards decode (and name) every file: preparation
        # reads the headers only, unless skip_missing must leave the bad out
        decoded_later = values.get("data_source", "files") != "files"
        takes = "full_check" in inspect.signature(prepare.func).parameters
        if takes and decoded_later and not values.get("skip_missing"):
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


def load_label_encoder(label_encoder, path, labels):
    """Loads (or creates) the label encoder, checked against the data.

    Arguments
    ---------
    label_encoder : speechbrain.dataio.encoder.CategoricalEncoder
        The YAML's encoder.
    path : str
        Its file in the run's ``save_folder``.
    labels : list of str
        The data's classes, sorted (``manifests.read_labels``).

    Returns
    -------
    speechbrain.dataio.encoder.CategoricalEncoder
    """
    label_encoder.load_or_create(path=path, from_iterables=[labels])
    label_encoder.expect_len(len(labels))
    encoded = [label_encoder.ind2lab[i] for i in range(len(label_encoder))]
    if encoded != labels:
        raise DataPrepError(
            f"the label encoder in {path} holds {encoded}, but the data has "
            f"{labels}: it was made for other data. Use a new output_folder."
        )
    return label_encoder


def build_clip_bank(folder, conditioner, datasets):
    """Builds (main process) and opens the clip bank; the items of
    ``datasets`` get their row in it (``bank_row``).

    Arguments
    ---------
    folder : str
        The YAML's ``bank_folder``.
    conditioner : sb_urbansound.data.audio.ClipConditioner
        The run's clip conditioning.
    datasets : dict
        ``{split: DynamicItemDataset}``, changed in place.

    Returns
    -------
    sb_urbansound.data.bank.ClipBank
    """
    paths = {i: d.data[i]["wav"] for d in datasets.values() for i in d.data_ids}
    bank = ClipBank(folder, conditioner)
    run_on_main(bank.build, args=[paths])
    bank = bank.open(paths)

    @sb.utils.data_pipeline.takes("id")
    @sb.utils.data_pipeline.provides("bank_row")
    def bank_pipeline(clip_id):
        """The clip's row in the clip bank."""
        return torch.LongTensor([bank.index[clip_id]])

    keys = ["id", "wav", "bank_row", "label", "label_encoded"]
    for dataset in datasets.values():
        dataset.add_dynamic_item(bank_pipeline)
        dataset.set_output_keys(keys)
    return bank


def _shard_datasets(options, conditioner, datasets, hparams):
    """Writes (main process) the shards of a run's clips: ``{split:
    ShardStream}``, whose items have ``pcm`` (int16) and ``length``."""
    folder, shard_size, fmt, buffer = options
    shards = Shards(folder, conditioner, shard_size, fmt)
    clips = {
        split: {i: (d.data[i]["wav"], d.data[i]["label"]) for i in d.data_ids}
        for split, d in datasets.items()
    }
    run_on_main(shards.write, args=[clips])
    index = shards.read_index()
    rank, size = world()
    return {
        split: ShardStream(
            shards.folder,
            index["splits"][split],
            train=split == "train",
            rank=rank,
            size=size,
            seed=hparams.seed,
            buffer=buffer,
            label_encoder=hparams.label_encoder,
            epochs=hparams.number_of_epochs,
            num_samples=index["settings"]["num_samples"],
        )
        for split in SPLITS
    }


class DataSource:
    """The loaders and batch features of a run's ``data_source``.

    Made after the Brain (its device and feature extractor); the training
    loader is the Brain's own, the evaluation loaders give each process its
    share of the clips. As a context, it stops the loaders' workers at its end.

    Arguments
    ---------
    brain : speechbrain.core.Brain
        The Brain that trains on it.
    datasets : dict
        ``{split: DynamicItemDataset}``, the clips (``files``: with ``sig``).
    source : str
        ``data_source`` (one of :data:`SOURCES`).
    conditioner : sb_urbansound.data.audio.ClipConditioner
        The run's clip conditioning (for the bank or the shards).
    bank_folder : str
        Where the clip bank is kept.
    shards : tuple
        ``(shards_folder, shard_size, shard_format, shuffle_buffer)``.
    options : tuple of dict
        The training and evaluation loader options.

    Example
    -------
    See ``recipes/UrbanSound8k/SoundClassification/train.py``.
    """

    def __init__(
        self, brain, datasets, source, conditioner, bank_folder, shards, options
    ):
        if source not in SOURCES:  # (check_values names the key first)
            raise ValueError(f"data_source must be one of {SOURCES}")
        self.source = source
        self.shift_pct = brain.hparams.shift_pct
        self.bank = self.feature_bank = None
        train_options, self.test_options = options
        if source == "shards":
            hparams = brain.hparams
            datasets = _shard_datasets(shards, conditioner, datasets, hparams)
            # Streams are read in this process and have no position to save:
            # a resumed run starts its epoch again (no mid-epoch checkpoints)
            train_options = self.test_options = {
                "batch_size": brain.hparams.batch_size,
                "collate_fn": PaddedBatch,
            }
            brain.train_sampler = datasets["train"]
            brain.ckpt_interval_minutes = brain.ckpt_interval_steps = 0
        elif source != "files":
            bank = build_clip_bank(bank_folder, conditioner, datasets)
            self.use_bank(bank, brain, source == "feature_bank")
        self.datasets = datasets
        self.train = brain.make_dataloader(
            datasets["train"], sb.Stage.TRAIN, **self._workers(train_options)
        )
        self.valid = self.loader("valid")
        self.loaders = [self.train, self.valid]

    def use_bank(self, bank, brain, feature_bank=False):
        """Draws the batches from a clip bank (and its features, if asked).

        Arguments
        ---------
        bank : sb_urbansound.data.bank.ClipBank
            The clips of the run, opened.
        brain : speechbrain.core.Brain
            The Brain (its device and ``compute_features``).
        feature_bank : bool
            Also compute every clip's features once.
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
            mb = self.feature_bank.nbytes / 1e6
            logger.info("Feature bank: %.1f MB on %s", mb, brain.device)

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
        batch : speechbrain.dataio.batch.PaddedBatch
            The batch, on the device.
        compute_features : callable
            The feature extractor (waveforms to features).
        train : bool
            Whether the batch is for training (random placement).
        views : int
            Circularly shifted views of each clip (test-time averaging).
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
