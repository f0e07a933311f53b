"""Decode once, train from memory: the clip bank and the feature bank.

The per-clip pipeline decodes, resamples and re-mixes every clip at every
epoch, which caps the speed of training on a CPU and leaves a GPU waiting.
The :class:`ClipBank` does that work once:

* every clip is decoded, resampled, rechannelled and truncated by the same
  :class:`~sb_urbansound.audio.ClipConditioner` as the per-clip pipeline, and
  stored as int16 at the target rate, start-aligned and zero-padded to the
  clip length, with its true length;
* the store is one memory-mappable ``.npy`` array per settings and an index
  (``index.json``), built with a progress bar and written atomically; it is
  reused when the files and settings are unchanged, and only the clips whose
  files changed (size, modification or status-change time) are decoded again;
* :meth:`ClipBank.waveforms` draws a batch on the training device: the
  tutorial's random pad position and circular time shift become one circular
  roll per clip (a start-aligned clip padded with zeros, rolled by ``o``, is
  the clip padded at position ``o``); evaluation takes the clips as stored
  (padded at the end), as the per-clip pipeline does;
* when it fits (a quarter of the free GPU memory), the bank is copied to the
  device, so a training step reads no host memory; on the CPU it stays
  memory-mapped, so a data set may be larger than the RAM.

:class:`FeatureBank` goes one step further for models whose input is a
spectrogram: the deterministic features of every clip are computed once
(float16 on the device), and the training shift is a circular roll of frames,
the same as rolling the waveform up to one hop.

A bank folder holds only what this module writes. Other banks in the same
parent folder (other settings) are removed only when they carry this module's
marker file, never anything else.

Authors
-------
 * sb-urbansound contributors
"""

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from sb_urbansound.atomic import (
    TMP_SUFFIX,
    atomic_write_json,
    remove_stale_temps,
)
from sb_urbansound.audio import load_audio
from sb_urbansound.errors import AudioLoadError, DataPrepError
from sb_urbansound.manifests import file_stamp, listing
from tqdm import tqdm

logger = logging.getLogger(__name__)

#: Bump when what is stored changes, so that older banks are never reused.
BANK_FORMAT_VERSION = 1
#: The marker of a folder made by this module (its content is checked too).
MARKER_FILE = "BANK.json"
MARKER = "sb_urbansound clip bank"
INDEX_FILE = "index.json"
_INT16_SCALE = 32767.0
#: Share of the free GPU memory a bank may take.
DEVICE_MEMORY_SHARE = 0.25


def _digest(obj):
    """A short stable hash of a JSON-serialisable object."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def is_bank_folder(folder):
    """Whether ``folder`` was made by this module (its marker file says so).

    Arguments
    ---------
    folder : str or Path
        A folder.

    Returns
    -------
    bool

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> _ = (tmp / "BANK.json").write_text('{"settings": 1}')
    >>> is_bank_folder(tmp)
    False
    """
    try:
        marker = json.loads((Path(folder) / MARKER_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("made_by") == MARKER


class _DecodeDataset(torch.utils.data.Dataset):
    """Decode and condition one clip per item (a DataLoader decodes in parallel)."""

    def __init__(self, conditioner, paths):
        self.conditioner = conditioner
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        path = self.paths[index]
        try:
            wav, rate = load_audio(path, self.conditioner.max_seconds())
            clip = self.conditioner.convert(wav, rate)
            clip = clip[: self.conditioner.num_samples]
        except AudioLoadError as e:
            return index, None, str(e)
        pcm = torch.round(clip.clamp(-1.0, 1.0) * _INT16_SCALE).to(torch.int16)
        return index, pcm.numpy(), None


def _as_is(item):
    """A DataLoader collate function that leaves an item as it is."""
    return item


class ClipBank:
    """The clips of a data set, conditioned once, as an int16 array.

    Arguments
    ---------
    folder : str or Path
        The bank folder; each settings get a sub-folder of their own.
    conditioner : sb_urbansound.audio.ClipConditioner
        The target rate, channels, length and DC removal (``duration_ms``
        must be set).

    Example
    -------
    >>> import soundfile as sf, numpy as np
    >>> from sb_urbansound.audio import ClipConditioner
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
        self.conditioner = conditioner
        self.settings = {
            "format_version": BANK_FORMAT_VERSION,
            "sample_rate": conditioner.sample_rate,
            "channels": conditioner.channels,
            "num_samples": conditioner.num_samples,
            "remove_dc": conditioner.remove_dc,
        }
        self.folder = self.root / (
            f"{conditioner.sample_rate}hz-{conditioner.channels}ch-"
            f"{conditioner.num_samples}-{_digest(self.settings)}"
        )
        self.index = {}
        self.clips = None  # np.memmap [rows, time(, channels)] int16
        self.lengths = None  # torch.LongTensor [rows]
        self._device_clips = None
        self._device_lengths = None

    # ------------------------------------------------------------- building
    def build(self, paths, num_workers=0, progress=True):
        """Bring the bank up to date with ``paths`` and open it.

        Clips whose file is unchanged are reused; new or changed ones are
        decoded (by ``num_workers`` processes), and a new array replaces the
        old one atomically. Clips not in ``paths`` are dropped.

        Arguments
        ---------
        paths : dict
            ``{clip_id: audio file}``.
        num_workers : int
            Processes decoding in parallel (0: this process).
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
        """
        start = time.perf_counter()
        self._remove_other_banks()
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            self.folder / MARKER_FILE,
            {"made_by": MARKER, "settings": self.settings},
        )
        remove_stale_temps(self.folder)
        old = self._read_index()
        old_clips = self._open_array(old) if old else None

        ids = sorted(paths)
        entries, todo = {}, []
        for row, clip_id in enumerate(ids):
            path = str(paths[clip_id])
            stamp = file_stamp(path)
            entry = {"row": row, "path": path, "stamp": stamp}
            previous = (old or {}).get("clips", {}).get(clip_id)
            if (
                old_clips is not None
                and previous is not None
                and previous["path"] == path
                and previous["stamp"] == stamp
                and stamp is not None
            ):
                entry["length"] = previous["length"]
                entry["from"] = previous["row"]
            else:
                todo.append(row)
            entries[clip_id] = entry

        unchanged = (
            old is not None and not todo and len(ids) == len(old["clips"])
        )
        if unchanged and all(e["from"] == e["row"] for e in entries.values()):
            self._open(old)
            logger.info(
                "Clip bank up to date: %d clips, %.1f MB in %s",
                len(ids),
                self.nbytes / 1e6,
                self.folder,
            )
            return self._summary(len(ids), 0, start)

        shape = (len(ids), self.conditioner.num_samples)
        if self.conditioner.channels > 1:
            shape += (self.conditioner.channels,)
        generation = _digest([time.time(), os.getpid()])
        data_name = f"clips-{generation}.npy"
        tmp_path = self.folder / f".{data_name}.{generation}{TMP_SUFFIX}"
        array = np.lib.format.open_memmap(
            tmp_path, mode="w+", dtype=np.int16, shape=shape
        )
        try:
            for entry in entries.values():  # reused rows: a copy
                if "from" in entry:
                    array[entry["row"]] = old_clips[entry.pop("from")]
            if todo:
                logger.info(
                    "Clip bank: decoding %d of %d clips into %s",
                    len(todo),
                    len(ids),
                    self.folder,
                )
            failed = self._decode(
                array, ids, entries, todo, num_workers, progress
            )
            if failed:
                raise DataPrepError(
                    f"{len(failed)} audio file(s) cannot be decoded into the "
                    "clip bank (they changed since data preparation?):\n  "
                    + listing(failed, sep="\n  ")
                    + "\nFix or remove these files and prepare the data again."
                )
            array.flush()
            del array
            os.replace(tmp_path, self.folder / data_name)
        except BaseException:
            tmp_path.unlink(missing_ok=True)
            raise
        index = {
            "settings": self.settings,
            "data": data_name,
            "clips": entries,
        }
        atomic_write_json(self.folder / INDEX_FILE, index)
        old_clips = None
        for stale in self.folder.glob("clips-*.npy"):
            if stale.name != data_name:
                stale.unlink(missing_ok=True)
        self._open(index)
        logger.info(
            "Clip bank ready: %d clips (%d decoded), %.1f MB in %s",
            len(ids),
            len(todo),
            self.nbytes / 1e6,
            self.folder,
        )
        return self._summary(len(ids), len(todo), start)

    def _decode(self, array, ids, entries, rows, num_workers, progress):
        """Decode ``rows`` into ``array``; return the failures' messages."""
        if not rows:
            return []
        paths = [entries[ids[row]]["path"] for row in rows]
        # collate_fn: numpy arrays travel pickled through the workers' pipes
        # (torch tensors would be shared through file descriptors sent over
        # a socket, which sandboxes without sockets refuse)
        loader = torch.utils.data.DataLoader(
            _DecodeDataset(self.conditioner, paths),
            batch_size=None,
            num_workers=num_workers,
            collate_fn=_as_is,
        )
        failed = []
        bar = tqdm(
            loader,
            total=len(rows),
            desc="Clip bank",
            unit="clip",
            disable=not progress,
        )
        for index, pcm, error in bar:
            entry = entries[ids[rows[index]]]
            if error is not None:
                failed.append(error)
                continue
            array[entry["row"], : pcm.shape[0]] = pcm
            entry["length"] = int(pcm.shape[0])
        return failed

    def _summary(self, clips, decoded, start):
        return {
            "clips": clips,
            "decoded": decoded,
            "reused": clips - decoded,
            "bytes": self.nbytes,
            "seconds": time.perf_counter() - start,
        }

    def _remove_other_banks(self):
        """Delete this module's banks of other settings (marked ones only)."""
        if not self.root.is_dir():
            return
        for child in self.root.iterdir():
            if child == self.folder or child.is_symlink() or not child.is_dir():
                continue
            if not is_bank_folder(child):
                continue  # not ours: never touched
            size = sum(p.stat().st_size for p in child.iterdir() if p.is_file())
            logger.info(
                "Clip bank: removing %s (%.1f MB), made for other settings",
                child,
                size / 1e6,
            )
            shutil.rmtree(child, ignore_errors=True)

    # -------------------------------------------------------------- reading
    def _read_index(self):
        """The index, or None when absent, unreadable or of other settings."""
        try:
            index = json.loads((self.folder / INDEX_FILE).read_text("utf-8"))
        except (OSError, ValueError):
            return None
        if index.get("settings") != self.settings:
            return None
        return index

    def _open_array(self, index):
        """Memory-map the array an index names (None when it is unusable)."""
        try:
            clips = np.load(self.folder / index["data"], mmap_mode="r")
        except (OSError, ValueError, KeyError):
            return None
        if clips.dtype != np.int16 or len(clips) != len(index["clips"]):
            return None
        return clips

    def _open(self, index):
        """Open a built bank."""
        self.index = {k: v["row"] for k, v in index["clips"].items()}
        self.clips = self._open_array(index)
        lengths = [0] * len(self.index)
        for entry in index["clips"].values():
            lengths[entry["row"]] = entry["length"]
        self.lengths = torch.tensor(lengths, dtype=torch.long)
        self._device_clips = None
        self._device_lengths = None

    def open(self):
        """Open the bank as it was built (e.g. by the main process under DDP).

        Returns
        -------
        ClipBank
            ``self``.
        """
        index = self._read_index()
        if index is None or self._open_array(index) is None:
            raise DataPrepError(f"no usable clip bank in {self.folder}")
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
        """Copy the bank to ``device`` when it fits; report where it lives.

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
            logger.info(
                "Clip bank (%.1f GB) stays in host memory: more than %d%% of "
                "the %.1f GB free on %s",
                self.nbytes / 1e9,
                100 * DEVICE_MEMORY_SHARE,
                free / 1e9,
                device,
            )
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
            Draw the random pad position and circular time shift (training);
            otherwise take the clips as stored (padded at the end).
        shift_pct : float
            Largest time shift, as a fraction of the clip length.
        device : str or torch.device, optional
            Where the batch goes (default: where the bank lives).
        generator : torch.Generator, optional
            Source of randomness (on the batch's device).

        Returns
        -------
        torch.Tensor
            float32 ``[batch, time]`` (mono) or ``[batch, time, channels]``.
        """
        if self._device_clips is not None:
            clips = self._device_clips[rows.to(self._device_clips.device)]
            lengths = self._device_lengths[rows.to(self._device_lengths.device)]
        else:
            order = rows.cpu().numpy()
            clips = torch.from_numpy(np.take(self.clips, order, axis=0))
            lengths = self.lengths[rows.cpu()]
        if device is not None:
            clips = clips.to(device, non_blocking=True)
            lengths = lengths.to(device)
        wavs = clips.float().mul_(1.0 / _INT16_SCALE)
        if train:
            shifts = random_placement(
                lengths, wavs.shape[1], shift_pct, generator
            )
            wavs = roll_rows(wavs, shifts)
        return wavs


def random_placement(lengths, num_samples, shift_pct, generator=None):
    """Random pad positions plus circular shifts, as one roll per clip.

    A clip of ``length`` samples, start-aligned in ``num_samples`` and padded
    with zeros, goes to a position uniform in ``[0, num_samples - length]``
    (the tutorial's random padding), then is shifted circularly by an amount
    uniform in ``[0, shift_pct * num_samples)`` (the tutorial's time shift).

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
    shift = torch.zeros_like(pad)
    if limit > 0:
        shift = torch.randint(
            0, limit, lengths.shape, device=device, generator=generator
        )
    return (pad + shift) % num_samples


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

    For a feature extractor without trainable parameters (a mel spectrogram,
    SpeechBrain's ``Fbank``), the features of every clip are computed once,
    on the device, from the clips as stored (start-aligned, padded at the
    end), and kept as float16. In training the tutorial's random placement
    becomes a circular roll of whole frames, which equals rolling the
    waveform up to one hop (frames near the wrap point differ slightly).

    Arguments
    ---------
    bank : ClipBank
        The clips.
    compute_features : torch.nn.Module
        The feature extractor (``[batch, time(, channels)]`` in); its frame
        axis and hop are found by feeding it a shorter clip.
    device : str
        Where to compute and keep the features.
    batch_size : int
        Clips per feature computation.

    Example
    -------
    >>> import soundfile as sf, numpy as np
    >>> from sb_urbansound.audio import ClipConditioner
    >>> from sb_urbansound.features import MelSpectrogramDB
    >>> tmp = getfixture("tmp_path")
    >>> sf.write(tmp / "a.wav", np.random.randn(800) * 0.1, 8000)
    >>> bank = ClipBank(tmp / "bank", ClipConditioner(8000, 1, 200))
    >>> _ = bank.build({"a": str(tmp / "a.wav")}, progress=False)
    >>> mel = MelSpectrogramDB(8000, n_fft=256, hop_length=64, n_mels=16)
    >>> feats = FeatureBank(bank, mel)
    >>> feats.features(bank.rows(["a"]), train=True).shape
    torch.Size([1, 1, 16, 26])
    """

    def __init__(self, bank, compute_features, device="cpu", batch_size=64):
        if any(p.requires_grad for p in compute_features.parameters()):
            raise ValueError(
                "a feature bank needs features without trainable parameters"
            )
        self.bank = bank
        self.num_samples = bank.conditioner.num_samples
        parts = []
        rows = torch.arange(len(bank.lengths))
        with torch.no_grad():
            for chunk in rows.split(batch_size):
                wavs = bank.waveforms(chunk, train=False, device=device)
                parts.append(compute_features(wavs).to(torch.float16))
            # The frame axis is the one that shrinks with a shorter input
            full = compute_features(wavs[:1]).shape
            half = compute_features(wavs[:1, : self.num_samples // 2])
        dims = [d for d in range(len(full)) if half.shape[d] != full[d]]
        if len(dims) != 1:
            raise ValueError(
                f"cannot tell the frame axis of features of shape {tuple(full)}"
            )
        self.time_dim = dims[0]
        self.hop = self.num_samples / full[self.time_dim]
        self.feats = torch.cat(parts)
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
            frames = frames % moved.shape[1]
            feats = roll_rows(moved, frames).movedim(1, self.time_dim)
        return feats
