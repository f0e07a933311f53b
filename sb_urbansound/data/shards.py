"""Shards: the conditioned clips as WebDataset tar files, read by rank.

For data larger than a node's disk: the clips, conditioned once as in the clip
bank, in the WebDataset layout (``<key>.npy`` or ``.flac``, ``<key>.json``).
:class:`ShardStream` reads a rank's shards through a shuffle buffer; each
shard's SHA-256, in the index (written last), is checked when read.

Authors
-------
 * sb-urbansound contributors
"""

import contextlib
import hashlib
import io
import itertools
import json
import logging
import queue
import random
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from sb_urbansound import atomic
from sb_urbansound.data.bank import _undecodable, decode_clip
from sb_urbansound.data.manifests import file_stamp
from sb_urbansound.errors import DataPrepError, UserError
from sb_urbansound.serving.runtime import RESAMPLER
from sb_urbansound.training.hardware import core_pool, progress_bar

logger = logging.getLogger(__name__)

#: Bump when what a shard holds changes.
SHARDS_FORMAT_VERSION = 1
#: The store kind of a shards folder, and its index.
SHARDS_KIND = "shards"
INDEX_FILE = "shards.json"
#: How the clips are stored in a shard.
FORMATS = ("int16", "flac")


def _encode(pcm, fmt, sample_rate):
    """The bytes of one clip in a shard: ``(extension, bytes)``."""
    pcm = np.ascontiguousarray(pcm)  # (an up-mix is a broadcast view)
    buffer = io.BytesIO()
    if fmt == "int16":
        np.save(buffer, pcm, allow_pickle=False)
        return "npy", buffer.getvalue()
    sf.write(buffer, pcm, sample_rate, format="FLAC", subtype="PCM_16")
    return "flac", buffer.getvalue()


def _decode_member(ext, data):
    """int16 samples from a shard member's bytes (a copy, not a view)."""
    if ext != "npy":
        return sf.read(io.BytesIO(data), dtype="int16")[0]
    pcm = np.load(io.BytesIO(data), allow_pickle=False)
    if pcm.dtype != np.int16:
        raise ValueError(f"a clip of {pcm.dtype}, not int16")
    return pcm


def _add(tar, name, data):
    """Add one member with fixed metadata (the same clips, the same bytes)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


class Shards:
    """The shards of a data set's splits, conditioned once.

    Arguments
    ---------
    folder : str or Path
        The shards folder.
    conditioner : sb_urbansound.data.audio.ClipConditioner
        The target rate, channels, length (``duration_ms`` must be set).
    shard_size : int
        Clips per shard.
    fmt : str
        ``"int16"`` (``.npy``, no decoding) or ``"flac"`` (lossless, about
        half the size, decoded when read).

    Example
    -------
    >>> import soundfile as sf
    >>> from sb_urbansound.data.audio import ClipConditioner
    >>> tmp = getfixture("tmp_path")
    >>> sf.write(tmp / "a.wav", np.full(800, 0.5), 8000)
    >>> shards = Shards(tmp / "shards", ClipConditioner(8000, 1, 200))
    >>> index = shards.write({"train": {"a": (str(tmp / "a.wav"), "x")}})
    >>> [s["clips"] for s in index["splits"]["train"]]
    [1]
    >>> [c["id"] for c in read_shard(shards.folder / "train-000000.tar")]
    ['a']
    """

    def __init__(self, folder, conditioner, shard_size=500, fmt="int16"):
        if conditioner.num_samples is None:
            raise ValueError("shards need the clip length (duration_ms)")
        if fmt not in FORMATS:
            raise ValueError(f"shard format must be one of {FORMATS}: {fmt!r}")
        if int(shard_size) < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.folder = Path(folder)
        self.conditioner = c = conditioner
        self.shard_size = int(shard_size)
        self.fmt = fmt
        self.settings = {
            "format_version": SHARDS_FORMAT_VERSION,
            "resampler": RESAMPLER,
            "sample_rate": c.sample_rate,
            "channels": c.channels,
            "num_samples": c.num_samples,
            "remove_dc": c.remove_dc,
            "shard_size": self.shard_size,
            "format": fmt,
        }

    def _inputs(self, splits):
        """A digest of the clips of every split: ids, files, stamps, labels."""
        digest = hashlib.sha256()
        for split in sorted(splits):
            for clip_id in sorted(splits[split]):
                path, label = splits[split][clip_id]
                stamp = file_stamp(path)
                digest.update(f"{split}\0{clip_id}\0{path}\0{label}\0".encode())
                digest.update(f"{stamp}\n".encode())
        return digest.hexdigest()

    def read_index(self):
        """The index, or None when absent, unreadable or a link."""
        index = atomic.read_store_json(self.folder / INDEX_FILE)
        return index if isinstance(index, dict) else None

    def _complete(self, index, inputs):
        """Whether ``index`` describes these clips and its shards exist."""
        if index is None or index.get("settings") != self.settings:
            return False
        shards = [s for ss in index.get("splits", {}).values() for s in ss]
        # only the plain file names we write: no path out, no link
        names = [s.get("name") for s in shards]
        if index.get("inputs") != inputs or not all(
            isinstance(n, str) and Path(n).name == n for n in names
        ):
            return False
        return all(
            not p.is_symlink()
            and p.is_file()
            and p.stat().st_size == s["bytes"]
            for p, s in zip([self.folder / n for n in names], shards)
        )

    def write(self, splits, progress=True):
        """Write the shards of every split, or reuse them when up to date
        (complete shards in a read-only folder are used without the lock).

        Arguments
        ---------
        splits : dict
            ``{split: {clip_id: (audio file, label)}}``.
        progress : bool
            Show a progress bar.

        Returns
        -------
        dict
            The index: ``settings``, ``inputs`` and ``splits`` (``{split:
            [{"name", "clips", "bytes", "sha256"}]}``).
        """
        inputs = self._inputs(splits)
        lock = atomic.FolderLock(self.folder, "writing the shards in")
        msg = "Shards: waiting for %s, which is writing %s"
        try:
            atomic.claim_folder(self.folder, SHARDS_KIND, "shards_folder")
            lock.acquire(
                wait=True,
                on_wait=lambda who: logger.info(msg, who, self.folder),
            )
        except OSError as e:
            if not atomic.is_read_only_error(e):
                raise
            index = self.read_index()
            if not self._complete(index, inputs):
                raise UserError(
                    f"the shards in {self.folder} cannot be written ({e}) and "
                    "are not complete for this run: point --shards_folder at "
                    "a writable folder"
                ) from None
            logger.info("Shards: using the read-only shards in %s", self.folder)
            return index
        with lock:
            index = self.read_index()
            if self._complete(index, inputs):
                logger.info("Shards up to date in %s", self.folder)
                return index
            atomic.remove_stale_temps(self.folder)
            (self.folder / INDEX_FILE).unlink(missing_ok=True)
            start = time.perf_counter()
            index = {"settings": self.settings, "inputs": inputs, "splits": {}}
            total = sum(len(clips) for clips in splits.values())
            bar = progress_bar(
                total=total, desc="Shards", unit="clip", enabled=progress
            )
            with core_pool() as pool:
                for split in sorted(splits):
                    index["splits"][split] = self._write_split(
                        split, splits[split], pool, bar
                    )
            bar.close()
            atomic.atomic_write_json(self.folder / INDEX_FILE, index)
            shards = [s for ss in index["splits"].values() for s in ss]
            mb = sum(s["bytes"] for s in shards) / 1e6
            took = time.perf_counter() - start
            msg = "Shards ready: %d clips, %d shards, %.1f MB in %s (%.1f s)"
            logger.info(msg, total, len(shards), mb, self.folder, took)
            return index

    def _write_split(self, split, clips, pool, bar):
        """Write one split's shards; return their index entries."""
        ids = sorted(clips)
        entries, failed = [], []
        for first in range(0, len(ids), self.shard_size):
            chunk = ids[first : first + self.shard_size]
            decoded = pool.map(
                lambda i: decode_clip(self.conditioner, clips[i][0]), chunk
            )
            buffer = io.BytesIO()
            with tarfile.open(
                fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT
            ) as tar:
                for k, clip_id in enumerate(chunk, first):
                    pcm, error = next(decoded)
                    bar.update(1)
                    if error is not None:
                        failed.append(error)
                        continue
                    key = f"{k:09d}"
                    wav, label = clips[clip_id]
                    ext, data = _encode(
                        pcm, self.fmt, self.conditioner.sample_rate
                    )
                    meta = {"id": clip_id, "label": label}
                    meta.update(length=int(pcm.shape[0]), wav=str(wav))
                    _add(tar, f"{key}.{ext}", data)
                    _add(tar, f"{key}.json", json.dumps(meta).encode())
            data = buffer.getvalue()
            name = f"{split}-{len(entries):06d}.tar"
            atomic.atomic_write_bytes(self.folder / name, data)
            sha = hashlib.sha256(data).hexdigest()
            entry = dict(name=name, clips=len(chunk), bytes=len(data))
            entries.append(dict(entry, sha256=sha))
        if failed:
            raise _undecodable(failed, "the shards")
        return entries


def read_shard(path, sha256=None):
    """The clips of one shard, read whole and its checksum checked; a
    damaged shard raises :class:`DataPrepError`.

    Arguments
    ---------
    path : str or Path
        The shard.
    sha256 : str, optional
        Its SHA-256, from the index.

    Yields
    ------
    dict
        ``id``, ``label``, ``wav`` (the source file), ``length`` and ``pcm``
        (int16 ``[time(, channels)]``).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataPrepError(f"cannot read shard {path} ({e})") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise DataPrepError(
            f"shard {path} does not match its checksum (damaged on disk?): "
            "delete the shards folder and run again to write it anew"
        )
    view = memoryview(data)
    pending = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            members = tar.getmembers()
        for member in members:
            key, _, ext = member.name.partition(".")
            start = member.offset_data
            item = pending.setdefault(key, {})
            item[ext] = view[start : start + member.size]
            if "json" in item and len(item) == 2:
                del pending[key]
                (ext,) = [e for e in item if e != "json"]
                meta = json.loads(bytes(item["json"]))
                meta["pcm"] = _decode_member(ext, item[ext])
                yield meta
    except (tarfile.TarError, ValueError, KeyError) as e:
        raise DataPrepError(
            f"shard {path} is damaged ({e}): delete the shards folder and run "
            "again to write it anew"
        ) from None
    if pending:
        raise DataPrepError(f"shard {path} is damaged: incomplete clips")


def deal_shards(shards, rank, size, seed, epoch):
    """One rank's training shards of an epoch: shuffled with ``(seed,
    epoch)``, dealt round-robin to the ranks.

    Arguments
    ---------
    shards : list of dict
        The split's index entries.
    rank, size : int
        This process's rank, and the number of processes.
    seed, epoch : int
        The run's seed, and the epoch.

    Returns
    -------
    list of dict
        This rank's shards, in reading order.

    Example
    -------
    >>> shards = [{"name": str(i), "clips": 10} for i in range(5)]
    >>> [s["name"] for s in deal_shards(shards, 1, 2, seed=0, epoch=1)]
    ['0', '4']
    """
    order = list(shards)
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return order[rank::size]


class ShardStream(torch.utils.data.IterableDataset):
    """The clips of a split's shards, as one process reads them.

    Arguments
    ---------
    folder : str or Path
        The shards folder.
    shards : list of dict
        The split's index entries (``name``, ``clips``, ``sha256``).
    train : bool
        Training: this rank's shards of the epoch (:func:`deal_shards`),
        shuffled; evaluation: every ``size``-th shard, in order.
    rank, size : int
        This process's rank, and the number of processes.
    seed : int
        The run's seed.
    buffer : int
        Clips in the shuffle buffer (training).
    label_encoder : speechbrain.dataio.encoder.CategoricalEncoder
        Labels to indices.
    epochs : int
        The run's epochs: training reads as many clips in each of them.
    num_samples : int, optional
        Pad every clip with zeros to this length, as the clip bank stores it.

    Example
    -------
    See ``tests/test_shards.py``.
    """

    def __init__(
        self,
        folder,
        shards,
        train,
        rank=0,
        size=1,
        seed=0,
        buffer=512,
        label_encoder=None,
        epochs=1,
        num_samples=None,
    ):
        super().__init__()
        self.folder = Path(folder)
        self.shards = list(shards)
        self.train = train
        self.rank, self.size, self.seed = rank, size, seed
        self.buffer = max(1, int(buffer))
        self.label_encoder = label_encoder
        self.num_samples = num_samples
        self.epoch = 1
        self.quota = None
        if train:  # as many clips as the rank with the fewest, every epoch
            self.quota = min(
                sum(s["clips"] for s in deal_shards(shards, r, size, seed, e))
                for r in range(size)
                for e in range(1, max(1, int(epochs)) + 1)
            )

    def set_epoch(self, epoch):
        """Choose the epoch, from 1 (its shards and order)."""
        self.epoch = int(epoch)

    def __len__(self):
        if self.train:
            return self.quota
        return sum(s["clips"] for s in self.shards[self.rank :: self.size])

    def _clips(self, shards):
        """The clips of ``shards``, read ahead by a thread."""
        clips = (
            clip
            for s in shards
            for clip in read_shard(self.folder / s["name"], s["sha256"])
        )
        return _read_ahead(clips, depth=self.buffer)

    def __iter__(self):
        if self.train:
            mine = deal_shards(
                self.shards, self.rank, self.size, self.seed, self.epoch
            )
            rng = random.Random(f"{self.seed}:{self.epoch}:{self.rank}")
            clips = _shuffled(self._clips(mine), self.buffer, rng)
        else:
            clips = self._clips(self.shards[self.rank :: self.size])
        for clip in itertools.islice(clips, self.quota):  # None: all
            yield self._item(clip)

    def _item(self, clip):
        """One clip as the recipe's batches hold it."""
        pcm = clip["pcm"]
        missing = (self.num_samples or 0) - len(pcm)
        if missing > 0:
            pcm = np.pad(pcm, [(0, missing)] + [(0, 0)] * (pcm.ndim - 1))
        item = {
            "id": clip["id"],
            "wav": clip.get("wav", clip["id"]),
            "label": clip["label"],
            "pcm": torch.from_numpy(np.ascontiguousarray(pcm)),
            "length": torch.LongTensor([clip["length"]]),
        }
        if self.label_encoder is not None:
            label = self.label_encoder.encode_label(clip["label"])
            item["label_encoded"] = torch.LongTensor([label])
        return item


def _read_ahead(items, depth):
    """``items``, made by a thread up to ``depth`` ahead; the thread stops
    when the consumer does, and its error is raised in the consumer."""
    slots = queue.Queue(maxsize=max(1, int(depth)))
    stop = threading.Event()
    end = object()

    def put(item, error=None):  # False once the consumer has stopped
        while not stop.is_set():
            with contextlib.suppress(queue.Full):
                slots.put((item, error), timeout=0.1)
                break
        return not stop.is_set()

    def produce():
        try:
            for item in items:
                if not put(item):
                    return
            put(end)
        except BaseException as e:  # passed on to the consumer
            put(end, e)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            item, error = slots.get()
            if error is not None:
                raise error
            if item is end:
                return
            yield item
    finally:
        stop.set()
        thread.join()


def _shuffled(items, size, rng):
    """Items through a shuffle buffer of ``size`` (memory: ``size`` items)."""
    items = iter(items)
    buffer = list(itertools.islice(items, size))
    for item in items:
        k = rng.randrange(size)
        yield buffer[k]
        buffer[k] = item
    rng.shuffle(buffer)
    yield from buffer
