"""The clip bank and the feature bank: decode once, train from memory.

:class:`ClipBank` stores every clip, conditioned once, in a memory-mapped
int16 array; :class:`FeatureBank` stores the deterministic features of every
clip. In training, the random placement is a circular roll per clip.

Authors
-------
 * sb-urbansound contributors
"""

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from sb_urbansound import atomic
from sb_urbansound.data.manifests import file_stamp, listing
from sb_urbansound.errors import (
    AudioLoadError,
    BusyError,
    DataPrepError,
    UserError,
)
from sb_urbansound.serving.runtime import RESAMPLER, read_audio
from sb_urbansound.training.hardware import core_pool, ordered_map, progress_bar

logger = logging.getLogger(__name__)

#: Bump when what is stored changes, so that older banks are never reused.
BANK_FORMAT_VERSION = 2
#: The store kinds of a bank (one settings) and of the folder of banks.
BANK_KIND = "bank"
BANKS_KIND = "banks"
INDEX_FILE = "index.json"
#: The only names a bank's array may have: never a path out of the bank.
_DATA_NAME = re.compile(r"^clips-[0-9a-f]{12}\.npy$")
_INT16_SCALE = 32767.0
#: Share of the free GPU memory a bank may take.
DEVICE_MEMORY_SHARE = 0.25
#: Clips per feature computation on the CPU (they stay near the caches).
CPU_FEATURE_BATCH = 16


def _digest(obj):
    """A short stable hash of a JSON-serialisable object."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def is_bank_folder(folder):
    """Whether ``folder`` is a bank made by this module (its marker says so).

    Arguments
    ---------
    folder : str or Path
        A folder.

    Returns
    -------
    bool

    Example
    -------
    >>> is_bank_folder(getfixture("tmp_path"))
    False
    """
    folder = Path(folder)
    return not folder.is_symlink() and atomic.store_kind(folder) == BANK_KIND


def _checksum(row):
    """The CRC-32 of one stored clip's bytes."""
    return zlib.crc32(memoryview(np.ascontiguousarray(row)).cast("B"))


def decode_clip(conditioner, path):
    """Decode and condition one clip for the bank.

    Arguments
    ---------
    conditioner : sb_urbansound.data.audio.ClipConditioner
        The bank's conditioning (rate, channels, length).
    path : str
        The audio file.

    Returns
    -------
    pcm : numpy.ndarray or None
        int16 ``[time(, channels)]``, at most the clip length.
    error : str or None
        Why the file cannot be decoded (then ``pcm`` is None).

    Example
    -------
    >>> from sb_urbansound.data.audio import ClipConditioner
    >>> decode_clip(ClipConditioner(8000, 1, 100), "no/such.wav")[1]
    'no/such.wav: no such file'
    """
    try:
        wav, rate = read_audio(path, conditioner.max_seconds())
        # quantised before the up-mix (a broadcast view): the same numbers
        clip = conditioner.converter.convert(wav, rate, upmix=False)
    except AudioLoadError as e:
        return None, str(e)
    clip = clip[: conditioner.num_samples]
    np.clip(clip, -1.0, 1.0, out=clip)
    np.rint(np.multiply(clip, _INT16_SCALE, out=clip), out=clip)
    pcm = clip.astype(np.int16)
    if conditioner.channels == 1:
        return pcm[:, 0], None
    return np.broadcast_to(pcm, (len(pcm), conditioner.channels)), None


def _undecodable(failed, into):
    """The error naming the files that cannot be decoded ``into`` a store."""
    return DataPrepError(
        f"{len(failed)} audio file(s) cannot be decoded into {into} "
        "(corrupt, empty, or holding NaN or infinite samples):\n  "
        + listing(failed, sep="\n  ")
        + "\nFix or remove these files, or pass --skip_missing=True "
        "to leave them out."
    )


class BankDamaged(Exception):
    """A bank's index or array fails its checks; the bank is rebuilt."""


class ClipBank:
    """The clips of a data set, conditioned once, as an int16 array store.

    Arguments
    ---------
    folder : str or Path
        The bank folder; each settings get a sub-folder of their own.
    conditioner : sb_urbansound.data.audio.ClipConditioner
        The target rate, channels, length (``duration_ms`` must be set).

    Example
    -------
    >>> import soundfile as sf, numpy as np
    >>> from sb_urbansound.data.audio import ClipConditioner
    >>> tmp = getfixture("tmp_path")
    >>> sf.write(tmp / "a.wav", np.full(800, 0.5), 8000)
    >>> bank = ClipBank(tmp / "bank", ClipConditioner(8000, 1, 200))
    >>> _ = bank.build({"a": str(tmp / "a.wav")}, progress=False)
    >>> bank.waveforms(bank.rows(["a"]), train=False).shape
    torch.Size([1, 1600])
    """

    def __init__(self, folder, conditioner):
        if conditioner.num_samples is None:
            raise ValueError("a clip bank needs the clip length (duration_ms)")
        self.root = Path(folder)
        self.conditioner = c = conditioner
        self.settings = {
            "format_version": BANK_FORMAT_VERSION,
            "resampler": RESAMPLER,
            "sample_rate": c.sample_rate,
            "channels": c.channels,
            "num_samples": c.num_samples,
            "remove_dc": c.remove_dc,
        }
        self.folder = self.root / (
            f"{c.sample_rate}hz-{c.channels}ch-{c.num_samples}-"
            + _digest(self.settings)
        )
        self.index = {}
        self.clips = None  # np.memmap [rows, time(, channels)] int16
        self.lengths = None  # torch.LongTensor [rows]
        self._built = None  # the index this object built or checked
        self._device_clips = self._device_lengths = None

    @property
    def shape(self):
        """The shape of one stored clip: ``(time,)`` or ``(time, channels)``."""
        c = self.conditioner
        return (c.num_samples,) + ((c.channels,) if c.channels > 1 else ())

    def build(self, paths, threads=None, progress=True):
        """Bring the bank up to date with ``paths`` and open it.

        Unchanged clips that pass their checksum are reused, the others
        decoded; a run finding another one building the bank waits.

        Arguments
        ---------
        paths : dict
            ``{clip_id: audio file}``.
        threads : int, optional
            Decoding threads (default: the CPU cores, at most 8).
        progress : bool
            Show a progress bar.

        Returns
        -------
        dict
            ``clips``, ``decoded``, ``reused``, ``bytes`` and ``seconds``.

        Raises
        ------
        DataPrepError
            Naming every file that cannot be decoded.
        UserError
            ``bank_folder`` not ours, a full disk, an incomplete read-only bank.
        """
        start = time.perf_counter()
        atomic.claim_folder(self.root, BANKS_KIND, "bank_folder")
        atomic.claim_folder(self.folder, BANK_KIND, "bank_folder")
        lock = atomic.FolderLock(self.folder, "building the clip bank in")
        msg = "Clip bank: waiting for %s, which is building %s"
        try:
            lock.acquire(
                wait=True,
                on_wait=lambda who: logger.info(msg, who, self.folder),
            )
        except OSError as e:
            if not atomic.is_read_only_error(e):
                raise
            return self._use_read_only(paths, start, e)
        with lock:
            return self._build_locked(paths, threads, progress, start)

    def _build_locked(self, paths, threads, progress, start):
        """:meth:`build`, with the bank's lock held."""
        atomic.mark_store(self.folder, BANK_KIND, settings=self.settings)
        atomic.remove_stale_temps(self.folder)
        self._remove_other_banks()
        old, old_clips, damaged = self._check(self._read_index())
        old_entries = old["clips"] if old else {}
        ids = sorted(paths)
        entries, todo = {}, []
        for row, clip_id in enumerate(ids):
            path = str(paths[clip_id])
            stamp = file_stamp(path)
            entries[clip_id] = entry = dict(row=row, path=path, stamp=stamp)
            prev = old_entries.get(clip_id)
            if (
                prev is None
                or clip_id in damaged
                or (prev["path"], prev["stamp"]) != (path, stamp)
                or stamp is None
            ):
                todo.append(row)
            else:
                entry.update(length=prev["length"], crc=prev["crc"])
                entry["from"] = prev["row"]
        if (
            old is not None
            and not todo
            and len(ids) == len(old["clips"])
            and all(e["from"] == e["row"] for e in entries.values())
        ):
            self._open(old)
            msg = "Clip bank up to date: %d clips, %.1f MB in %s"
            logger.info(msg, len(ids), self.nbytes / 1e6, self.folder)
            return self._summary(len(ids), 0, start)

        data_name = f"clips-{_digest([time.time(), os.getpid()])}.npy"
        shape = (len(ids), *self.shape)
        nbytes = int(np.prod(shape)) * 2
        with contextlib.suppress(OSError):  # (no free space known: go on)
            if shutil.disk_usage(self.folder).free < nbytes:
                raise atomic.no_space_error(self.folder, nbytes)
        f = tempfile.NamedTemporaryFile(
            dir=self.folder,
            prefix=f".{data_name}.",
            suffix=atomic.TMP_SUFFIX,
            delete=False,
        )
        tmp_path = Path(f.name)
        try:
            with f:
                header = np.lib.format.header_data_from_array_1_0(np.int16([]))
                header["shape"] = shape
                np.lib.format.write_array_header_1_0(f, header)
                f.flush()
                self._offset = f.tell()
                # a memory map dies of SIGBUS over blocks a full disk lacks
                end = self._offset + nbytes
                atomic.reserve_space(f.fileno(), end, self.folder)
                for entry in entries.values():  # reused rows: a copy
                    if "from" in entry:
                        clip = old_clips[entry.pop("from")]
                        self._write_row(f, entry["row"], clip)
                self._decode(f, ids, entries, todo, threads, progress)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_path, self.folder / data_name)
        except BaseException:
            tmp_path.unlink(missing_ok=True)
            raise
        index = {"settings": self.settings, "data": data_name, "clips": entries}
        atomic.atomic_write_json(self.folder / INDEX_FILE, index)
        old_clips = None
        for stale in self.folder.iterdir():
            if _DATA_NAME.match(stale.name) and stale.name != data_name:
                stale.unlink(missing_ok=True)
        self._open(index)
        msg = "Clip bank ready: %d clips (%d decoded), %.1f MB in %s"
        logger.info(msg, len(ids), len(todo), self.nbytes / 1e6, self.folder)
        return self._summary(len(ids), len(todo), start)

    def _write_row(self, f, row, clip):
        """Write one clip into a new bank's file."""
        # a write, not a memory map: its page faults hold Python's lock
        data = np.ascontiguousarray(clip)
        f.seek(self._offset + row * data.nbytes)
        f.write(data)

    def _decode(self, f, ids, entries, rows, threads, progress):
        """Decode ``rows`` into the bank's file (DataPrepError if any fail)."""
        if not rows:
            return
        msg = "Clip bank: decoding %d of %d clips into %s"
        logger.info(msg, len(rows), len(ids), self.folder)

        def decode_row(row):
            pcm, error = decode_clip(
                self.conditioner, entries[ids[row]]["path"]
            )
            if error is not None:
                return None, None, error
            clip = np.zeros(self.shape, dtype=np.int16)
            clip[: pcm.shape[0]] = pcm  # the rest: zeros
            entry = {"length": int(pcm.shape[0]), "crc": _checksum(clip)}
            return clip, entry, None

        failed = []
        # threads, not processes: no child outlives the run or holds its files
        with core_pool(threads) as pool:
            bar = progress_bar(
                zip(rows, ordered_map(pool, decode_row, rows)),
                total=len(rows),
                desc="Clip bank",
                unit="clip",
                enabled=progress,
            )
            for row, (clip, entry, error) in bar:
                if error is not None:
                    failed.append(error)
                    continue
                self._write_row(f, row, clip)
                entries[ids[row]].update(entry)
        if failed:
            raise _undecodable(failed, "the clip bank")

    def _summary(self, clips, decoded, start):
        took = time.perf_counter() - start
        out = dict(clips=clips, decoded=decoded, reused=clips - decoded)
        return dict(out, bytes=self.nbytes, seconds=took)

    def _remove_other_banks(self):
        """Delete our banks of other settings that no run is using."""
        for child in sorted(self.root.iterdir()):
            if child == self.folder or not is_bank_folder(child):
                continue  # not ours: never touched
            other = atomic.FolderLock(child, "building the clip bank in")
            try:
                other.acquire()
            except (BusyError, OSError):
                continue  # in use by another run: left alone
            with other:
                files = [p for p in child.iterdir() if p.is_file()]
                mb = sum(p.stat().st_size for p in files) / 1e6
                msg = "Clip bank: removing %s (%.1f MB), "
                msg += "made for other settings"
                logger.info(msg, child, mb)
                atomic.remove_store(child, BANK_KIND)

    def _use_read_only(self, paths, start, error):
        """Use a complete bank that cannot be written (read-only folder)."""
        old, _, damaged = self._check(self._read_index())
        missing = self._not_covered(old, paths) if old else ["(no bank)"]
        if old is None or missing or damaged:
            why = f"{len(missing)} clip(s) missing or changed"
            if damaged:
                why = f"{len(damaged)} damaged clip(s)"
            raise UserError(
                f"the clip bank in {self.folder} cannot be written ({error}) "
                f"and is not complete for this run ({why}): point "
                "--bank_folder at a writable folder"
            ) from None
        self._open(old)
        logger.info("Clip bank: using the read-only bank in %s", self.folder)
        return self._summary(len(paths), 0, start)

    def _read_index(self):
        """The index, or None (absent, unreadable, a link, other settings)."""
        index = atomic.read_store_json(self.folder / INDEX_FILE)
        ok = isinstance(index, dict) and index.get("settings") == self.settings
        return index if ok else None

    def _check(self, index):
        """(index, array, damaged ids); (None, None, set()) for a bad bank."""
        if index is None:
            return None, None, set()
        try:
            clips = self._validate(index)
        except BankDamaged as e:
            msg = "Clip bank in %s is damaged (%s): rebuilding it"
            logger.warning(msg, self.folder, e)
            return None, None, set()
        damaged = {
            clip_id
            for clip_id, entry in index["clips"].items()
            if _checksum(clips[entry["row"]]) != entry["crc"]
        }
        if damaged:
            msg = "Clip bank in %s: %d clip(s) do not match their checksums "
            msg += "(damaged on disk): %s; decoding them again"
            ids = listing(sorted(damaged), 10)
            logger.warning(msg, self.folder, len(damaged), ids)
        return index, clips, damaged

    def _validate(self, index):
        """The memory-mapped array of a well-formed index (else BankDamaged)."""
        if index is None:
            raise BankDamaged("no index")
        data = index.get("data")
        entries = index.get("clips")
        if not isinstance(data, str) or not _DATA_NAME.match(data):
            raise BankDamaged(f"the index names the array {data!r}")
        if not isinstance(entries, dict):
            raise BankDamaged("the index has no clip table")
        types = {"row": int, "path": str, "crc": int, "length": int}
        for clip_id, e in entries.items():
            ok = isinstance(e, dict) and all(
                isinstance(e.get(k), t) for k, t in types.items()
            )
            if not ok or not 1 <= e["length"] <= self.conditioner.num_samples:
                raise BankDamaged(f"the index entry of {clip_id} is malformed")
        rows = [e["row"] for e in entries.values()]
        if sorted(rows) != list(range(len(rows))):
            raise BankDamaged("the index's rows are not 0 .. n-1, once each")
        try:
            clips = np.load(self.folder / data, mmap_mode="r")
        except Exception as e:  # a damaged header raises many things
            raise BankDamaged(f"{data} does not load ({e!r})") from None
        if clips.dtype != np.int16 or clips.shape != (len(rows), *self.shape):
            raise BankDamaged(
                f"{data} holds {clips.dtype} {clips.shape}, not int16 "
                f"{(len(rows), *self.shape)}"
            )
        return clips

    @staticmethod
    def _not_covered(index, paths):
        """The ids of ``paths`` that ``index`` does not hold as they are."""
        want = {c: (str(p), file_stamp(p)) for c, p in paths.items()}
        have = {
            c: (e["path"], e.get("stamp")) for c, e in index["clips"].items()
        }
        return [c for c in want.keys() | have if want.get(c) != have.get(c)]

    def _open(self, index):
        """Open a checked bank: exactly the array its index names."""
        self._built = index
        self.index = {k: v["row"] for k, v in index["clips"].items()}
        self.clips = np.load(self.folder / index["data"], mmap_mode="r")
        rows = sorted(index["clips"].values(), key=lambda e: e["row"])
        lengths = [e["length"] for e in rows]
        self.lengths = torch.tensor(lengths, dtype=torch.long)
        self._device_clips = self._device_lengths = None

    def open(self, paths=None):
        """Open the bank this object built or, on the other processes of a
        DDP run, the bank on disk, checked to hold exactly ``paths``.

        Arguments
        ---------
        paths : dict, optional
            ``{clip_id: audio file}`` the bank must hold.

        Returns
        -------
        ClipBank
            ``self``.

        Raises
        ------
        DataPrepError
            When the bank on disk is not usable or holds other clips.
        """
        if self._built is not None:
            return self
        index = self._read_index()
        try:
            self._validate(index)
        except BankDamaged as e:
            raise DataPrepError(
                f"no usable clip bank in {self.folder} ({e})"
            ) from None
        if paths is not None and self._not_covered(index, paths):
            raise DataPrepError(
                f"the clip bank in {self.folder} holds other clips than this "
                "run's (another run rebuilt it meanwhile?): run again"
            )
        self._open(index)
        return self

    @property
    def nbytes(self):
        """The size of the array in bytes."""
        return 0 if self.clips is None else int(self.clips.nbytes)

    def rows(self, clip_ids):
        """The bank rows of clips.

        Arguments
        ---------
        clip_ids : list of str
            Clip ids.

        Returns
        -------
        torch.LongTensor
            Their rows.
        """
        try:
            return torch.tensor([self.index[c] for c in clip_ids])
        except KeyError as e:
            raise DataPrepError(
                f"clip {e.args[0]} is not in the clip bank {self.folder}"
            ) from None

    def to_device(self, device):
        """Copy the bank to ``device`` when it fits; say where it lives.

        Arguments
        ---------
        device : str or torch.device
            The training device.

        Returns
        -------
        str
            Where batches are drawn from: the device, or host memory.
        """
        device = torch.device(device)
        if device.type != "cuda":
            return "host memory (memory-mapped)"
        free, _ = torch.cuda.mem_get_info(device)
        if self.nbytes > DEVICE_MEMORY_SHARE * free:
            msg = "Clip bank (%.1f GB) stays in host memory: more than %d%% of "
            msg += "the %.1f GB free on %s"
            args = self.nbytes / 1e9, 100 * DEVICE_MEMORY_SHARE, free / 1e9
            logger.info(msg, *args, device)
            return "host memory (memory-mapped)"
        # np.array: a writable copy of the (read-only) memory map
        self._device_clips = torch.from_numpy(np.array(self.clips)).to(device)
        self._device_lengths = self.lengths.to(device)
        return f"{device} memory ({self.nbytes / 1e9:.2f} GB)"

    def waveforms(
        self, rows, train, shift_pct=0.0, device=None, generator=None
    ):
        """A batch of float waveforms, randomly placed and shifted in training.

        Arguments
        ---------
        rows : torch.LongTensor
            Bank rows of the batch.
        train : bool
            Draw the random placement; otherwise the clips as stored.
        shift_pct : float
            Largest time shift, as a fraction of the clip length.
        device : str or torch.device, optional
            Where the batch goes (default: where the bank lives).
        generator : torch.Generator, optional
            Source of randomness (on the batch's device).

        Returns
        -------
        torch.Tensor
            float32 ``[batch, time(, channels)]``.
        """
        if self._device_clips is not None:  # (lengths on the same device)
            on = rows.to(self._device_clips.device)
            clips, lengths = self._device_clips[on], self._device_lengths[on]
        else:
            order = rows.cpu().numpy()
            clips = torch.from_numpy(np.take(self.clips, order, axis=0))
            lengths = self.lengths[rows.cpu()]
        if device is not None:
            clips = clips.to(device, non_blocking=True)
            lengths = lengths.to(device)
        return place_clips(clips, lengths, train, shift_pct, generator)


def place_clips(clips, lengths, train, shift_pct=0.0, generator=None):
    """Stored int16 clips as float waveforms, randomly placed in training.

    Arguments
    ---------
    clips : torch.Tensor
        int16 ``[batch, time(, channels)]``, start-aligned, zero-padded.
    lengths : torch.LongTensor
        ``[batch]`` true lengths, on the device of ``clips``.
    train : bool
        Draw the placement (:func:`random_placement`); otherwise as stored.
    shift_pct : float
        Largest time shift, as a fraction of the clip length.
    generator : torch.Generator, optional
        Source of randomness (on the device of ``clips``).

    Returns
    -------
    torch.Tensor
        float32 ``[batch, time(, channels)]`` in [-1, 1].

    Example
    -------
    >>> pcm = torch.tensor([[32767, 0, 0, 0]], dtype=torch.int16)
    >>> place_clips(pcm, torch.tensor([1]), train=False).tolist()
    [[1.0, 0.0, 0.0, 0.0]]
    """
    wavs = clips.float().mul_(1.0 / _INT16_SCALE)
    if train:
        shifts = random_placement(lengths, wavs.shape[1], shift_pct, generator)
        wavs = roll_rows(wavs, shifts)
    return wavs


def random_placement(lengths, num_samples, shift_pct, generator=None):
    """Random pad positions plus circular shifts, as one roll per clip.

    The tutorial's random padding (a position uniform in ``[0, num_samples
    - length]``) and circular time shift (up to ``shift_pct * num_samples``).

    Arguments
    ---------
    lengths : torch.LongTensor
        ``[batch]`` clip lengths (at most ``num_samples``).
    num_samples : int
        The clip length.
    shift_pct : float
        Largest shift as a fraction of the clip length.
    generator : torch.Generator, optional
        Source of randomness (on the device of ``lengths``).

    Returns
    -------
    torch.LongTensor
        ``[batch]`` rolls in ``[0, num_samples)``.

    Example
    -------
    >>> r = random_placement(torch.tensor([10, 4]), 10, 0.0)
    >>> int(r[0]), 0 <= int(r[1]) <= 6
    (0, True)
    """
    device = lengths.device
    room = (num_samples - lengths).clamp(min=0)
    uniform = torch.rand(lengths.shape, device=device, generator=generator)
    pad = (uniform * (room + 1)).long().clamp(max=room)
    limit = int(shift_pct * num_samples)
    if limit > 0:
        pad += torch.randint(
            0, limit, lengths.shape, device=device, generator=generator
        )
    return pad % num_samples


def roll_rows(x, shifts):
    """Roll each row of ``x`` along dimension 1 by its own amount.

    Arguments
    ---------
    x : torch.Tensor
        ``[batch, time, ...]``.
    shifts : torch.LongTensor
        ``[batch]`` amounts (``torch.roll`` convention: positive moves later).

    Returns
    -------
    torch.Tensor
        Same shape as ``x``.

    Example
    -------
    >>> roll_rows(torch.arange(8).view(2, 4), torch.tensor([1, 2])).tolist()
    [[3, 0, 1, 2], [6, 7, 4, 5]]
    """
    time = x.shape[1]
    index = torch.arange(time, device=x.device).unsqueeze(0)
    index = (index - shifts.to(x.device).unsqueeze(1)) % time
    index = index.view(index.shape + (1,) * (x.dim() - 2)).expand_as(x)
    return x.gather(1, index)


class FeatureBank:
    """Deterministic features of every clip of a bank, computed once.

    Kept as float16 on ``device``; in training the random placement is a
    circular roll of whole frames (rolling the waveform, up to one hop).

    Arguments
    ---------
    bank : ClipBank
        The clips.
    compute_features : torch.nn.Module
        The feature extractor, without trainable parameters.
    device : str
        Where to compute and keep the features.
    batch_size : int, optional
        Clips per computation (default: 16 on the CPU, 64 on a GPU).
    progress : bool
        Show a progress bar.

    Example
    -------
    >>> import soundfile as sf, numpy as np
    >>> from sb_urbansound.data.audio import ClipConditioner
    >>> from sb_urbansound.training.features import MelSpectrogramDB
    >>> tmp = getfixture("tmp_path")
    >>> sf.write(tmp / "a.wav", np.random.randn(800) * 0.1, 8000)
    >>> bank = ClipBank(tmp / "bank", ClipConditioner(8000, 1, 200))
    >>> _ = bank.build({"a": str(tmp / "a.wav")}, progress=False)
    >>> mel = MelSpectrogramDB(8000, n_fft=256, hop_length=64, n_mels=16)
    >>> feats = FeatureBank(bank, mel)
    >>> feats.features(bank.rows(["a"]), train=True).shape
    torch.Size([1, 1, 16, 26])
    """

    def __init__(
        self,
        bank,
        compute_features,
        device="cpu",
        batch_size=None,
        progress=True,
    ):
        if any(p.requires_grad for p in compute_features.parameters()):
            raise ValueError(
                "a feature bank needs features without trainable parameters"
            )
        self.bank = bank
        self.num_samples = n = bank.conditioner.num_samples
        device = torch.device(device)
        on_cpu = device.type == "cpu"
        if batch_size is None:
            batch_size = CPU_FEATURE_BATCH if on_cpu else 64
        total = len(bank.lengths)
        chunks = torch.arange(total).split(batch_size)

        def compute(rows):
            with torch.no_grad():  # (per thread)
                wavs = bank.waveforms(rows, train=False, device=device)
                return compute_features(wavs).to(torch.float16)

        bar = progress_bar(
            total=total, desc="Feature bank", unit="clip", enabled=progress
        )
        # On the CPU, each core computes its own batches (see core_pool)
        with core_pool() if on_cpu else contextlib.nullcontext() as pool:
            parts = pool.map(compute, chunks) if pool else map(compute, chunks)
            self.feats = None
            for rows, part in zip(chunks, parts):
                if self.feats is None:
                    self.feats = part.new_empty((total, *part.shape[1:]))
                self.feats[rows[0] : rows[-1] + 1] = part
                bar.update(len(rows))
            bar.close()
            # The frame axis shrinks with a shorter input (or, for a front
            # end that pads short clips, as YAMNet's, grows with a longer one)
            full = (1, *self.feats.shape[1:])
            with torch.no_grad():
                wav = bank.waveforms(chunks[0][:1], train=False, device=device)
                for probe in (wav[:, : n // 2], wav.repeat_interleave(2, 1)):
                    other = compute_features(probe).shape
                    dims = [d for d in range(len(full)) if other[d] != full[d]]
                    if dims:
                        break
        if len(dims) != 1:
            raise ValueError(
                f"cannot tell the frame axis of features of shape {tuple(full)}"
            )
        self.time_dim = dims[0]
        self.hop = n / full[self.time_dim]
        self.lengths = bank.lengths.to(self.feats.device)

    @property
    def nbytes(self):
        """The size of the features in bytes."""
        return self.feats.numel() * self.feats.element_size()

    def features(self, rows, train, shift_pct=0.0, generator=None):
        """A batch of float32 features, rolled in training.

        Arguments
        ---------
        rows : torch.LongTensor
            Bank rows of the batch.
        train : bool
            Apply the random placement (as a roll of frames).
        shift_pct : float
            Largest time shift, as a fraction of the clip length.
        generator : torch.Generator, optional
            Source of randomness (on the features' device).

        Returns
        -------
        torch.Tensor
            The batch's features, float32.
        """
        rows = rows.to(self.feats.device)
        feats = self.feats[rows].float()
        if train:
            shifts = random_placement(
                self.lengths[rows], self.num_samples, shift_pct, generator
            )
            frames = torch.round(shifts / self.hop).long()
            moved = feats.movedim(self.time_dim, 1)
            feats = roll_rows(moved, frames).movedim(1, self.time_dim)
        return feats
