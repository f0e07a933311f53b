"""Export a model folder to ONNX and TorchScript, checked against PyTorch.

``python -m sb_urbansound.serving.export MODEL_FOLDER`` writes ``model.onnx``
and ``model.ts``: ``[windows, samples, channels]`` waveforms in, ``[windows,
n_classes]`` probabilities out, labels and audio spec in the metadata. An
export is written only if it matches eager PyTorch on the check clips
(``docs/inference.md``, "Export").

Authors
-------
 * sb-urbansound contributors
"""

import argparse
import io
import json
import logging
import math
import re
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import soundfile
import torch
from hyperpyyaml import load_hyperpyyaml, resolve_references
from sb_urbansound import __version__
from sb_urbansound.atomic import (
    FolderLock,
    atomic_write_bytes,
    is_read_only_error,
)
from sb_urbansound.errors import AudioLoadError, UserError, report
from sb_urbansound.serving.classify import add_model_options, quiet_speechbrain
from sb_urbansound.serving.inference import (
    TorchScorer,
    export_inference_folder,
    load_model,
    model_audio_spec,
)
from sb_urbansound.serving.runtime import (
    CHUNK_WINDOWS,
    OnnxModel,
    Scorer,
    check_regular_file,
    find_audio_files,
    parse_metadata,
)
from sb_urbansound.serving.timeline import sliding_windows
from sb_urbansound.training.features import BatchStandardize, MelSpectrogramDB

logger = logging.getLogger(__name__)

#: Export formats and the file each writes in the model folder.
FILES = {"onnx": "model.onnx", "torchscript": "model.ts"}
#: Largest difference in any probability between export and eager PyTorch.
PROB_TOLERANCE = 1e-4
#: Lengths (in windows) of the generated check clips.
CHECK_LENGTHS = (0.3, 1.0, 1.7, 3.2, 10.5)
#: ONNX opset of the export.
DEFAULT_OPSET = 18


class ExportError(UserError):
    """A model that cannot be exported, or whose export fails its check."""


class MatmulMelPower(torch.nn.Module):
    """Mel power spectrogram of padded signals by two matrix-product stages
    (one Cooley-Tukey step: complex tensors do not export, FFT is slow in
    onnxruntime).

    Arguments
    ---------
    window : torch.Tensor
        The analysis window, ``[n_fft]``.
    fb : torch.Tensor
        The mel matrix, ``[n_fft // 2 + 1, n_mels]``.
    hop : int
        The frame hop.
    length : int
        The padded signal's (fixed) length.

    Example
    -------
    >>> mel = torch.rand(33, 4)
    >>> op = MatmulMelPower(torch.hann_window(64), mel, 16, 200)
    >>> x, w = torch.randn(3, 200), torch.hann_window(64)
    >>> s = torch.stft(x, 64, 16, window=w, center=False, return_complex=True)
    >>> ref = s.abs().square().transpose(1, 2) @ mel
    >>> bool(torch.allclose(op(x), ref, rtol=1e-4, atol=1e-3))
    True
    """

    def __init__(self, window, fb, hop, length):
        super().__init__()
        n = window.numel()
        n_bins = n // 2 + 1
        # n = n1 * n2, n1 <= n2 as close as possible
        n1 = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
        n2 = n // n1
        self.n1, self.n2, self.hop = n1, n2, int(hop)
        self.n_frames = 1 + (int(length) - n) // self.hop
        k2n = -(-n_bins // n1)  # second-stage bins needed
        r = torch.arange(n1, dtype=torch.float64)
        c = torch.arange(n2, dtype=torch.float64)
        k2 = torch.arange(k2n, dtype=torch.float64)
        # stage 1, along the rows:
        # Y[k1, c] = sum_r exp(-2i pi r k1 / n1) x[r, c]
        ang1 = -2 * math.pi * torch.outer(r, r) / n1
        # stage 2, along the columns, twiddles folded in:
        # X[k1 + n1 k2] = sum_c Y[k1, c] exp(-2i pi c (k1 / n + k2 / n2))
        ang2 = torch.outer(r, c).unsqueeze(-1) / n
        ang2 = -2 * math.pi * (ang2 + torch.outer(c, k2).unsqueeze(0) / n2)
        bins = (r.view(-1, 1) + n1 * k2.view(1, -1)).long()  # [k1, k2]
        fb_perm = torch.zeros(n1, k2n, fb.shape[1], dtype=torch.float64)
        inside = bins < n_bins
        fb_perm[inside] = fb.double()[bins[inside]]
        fb_perm = fb_perm.reshape(n1 * k2n, -1)  # rows in (k1, k2) order
        self.register_buffer("window", window.double().reshape(n1, 1, n2))
        self.register_buffer("w1_cos", torch.cos(ang1))
        self.register_buffer("w1_sin", torch.sin(ang1))
        self.register_buffer("w2_cos", torch.cos(ang2))
        self.register_buffer("w2_sin", torch.sin(ang2))
        self.register_buffer("fb", fb_perm)
        self.blocks = self.hop % n2 == 0  # frames as rows of n2-sample blocks
        rows, frames = torch.arange(n1), torch.arange(self.n_frames)
        if self.blocks:
            index = rows.view(-1, 1) + self.hop // n2 * frames.view(1, -1)
        else:  # frames sample by sample
            index = n2 * rows.view(-1, 1, 1) + self.hop * frames.view(1, -1, 1)
            index = index + torch.arange(n2).view(1, 1, -1)
        self.register_buffer("index", index.reshape(-1))
        self.float()  # buffers computed in float64, used in float32

    def forward(self, signals):
        """Mel power ``[batch, frames, n_mels]`` of padded
        ``[batch, length]``."""
        batch = signals.shape[0]
        shape = (batch, self.n1, self.n_frames, self.n2)
        if self.blocks:  # gather rows of n2 samples
            usable = signals.shape[1] // self.n2 * self.n2
            blocks = signals[:, :usable].reshape(batch, -1, self.n2)
            frames = torch.index_select(blocks, 1, self.index)
        else:
            frames = torch.index_select(signals, 1, self.index)
        frames = frames.reshape(shape) * self.window
        frames = frames.reshape(batch, self.n1, -1)
        y_re = torch.matmul(self.w1_cos, frames).reshape(shape)
        y_im = torch.matmul(self.w1_sin, frames).reshape(shape)
        x_re = torch.matmul(y_re, self.w2_cos) - torch.matmul(y_im, self.w2_sin)
        x_im = torch.matmul(y_re, self.w2_sin) + torch.matmul(y_im, self.w2_cos)
        power = x_re * x_re + x_im * x_im  # [batch, k1, frames, k2]
        power = power.transpose(1, 2).reshape(batch, self.n_frames, -1)
        return torch.matmul(power, self.fb)


class MelSpectrogramGraph(torch.nn.Module):
    """``MelSpectrogramDB`` for export: fixed length, no chunks, no complex.

    Arguments
    ---------
    mel : MelSpectrogramDB
        The model's feature extractor.
    num_samples : int
        The clip length.
    method : str
        ``"matmul"`` (:class:`MatmulMelPower`, for ONNX) or ``"stft"`` (one
        ``torch.stft`` over the batch: a trace would freeze eager chunks).

    Example
    -------
    >>> mel = MelSpectrogramDB(8000, n_fft=256, hop_length=64, n_mels=20)
    >>> graph = MelSpectrogramGraph(mel, 4000)
    >>> x = torch.randn(3, 4000)
    >>> float((graph(x) - mel(x)).abs().max()) < 1e-3
    True
    """

    def __init__(self, mel, num_samples, method="matmul"):
        super().__init__()
        spec = mel.melspec.spectrogram
        checks = {
            f"power={spec.power}": spec.power != 2.0,
            "normalized=True": bool(spec.normalized),
            f"pad={spec.pad}": bool(spec.pad),
            "onesided=False": not spec.onesided,
            f"pad_mode={spec.pad_mode}": spec.pad_mode
            not in ("reflect", "constant"),
        }
        unsupported = [name for name, bad in checks.items() if bad]
        if unsupported:
            raise ExportError(
                "MelSpectrogramDB with " + ", ".join(unsupported) + " is not "
                "supported by the export (power 2, no normalisation, no "
                "padding, one-sided, reflect or constant padding)"
            )
        self.method, self.to_db = method, mel.to_db
        self.n_fft, self.hop = spec.n_fft, spec.hop_length
        self.win_length = spec.win_length
        self.center, self.pad_mode = spec.center, spec.pad_mode
        window = spec.window.detach().float()
        self.register_buffer("window", window.clone())
        self.register_buffer("fb", mel.melspec.mel_scale.fb.detach().clone())
        self.pad = self.n_fft // 2 if self.center else 0
        if method == "matmul":
            left = (self.n_fft - window.numel()) // 2  # torch.stft's centring
            full = torch.zeros(self.n_fft)
            full[left : left + window.numel()] = window
            length = int(num_samples) + 2 * self.pad
            self.power = MatmulMelPower(full, self.fb, self.hop, length)

    def forward(self, wavs):
        """``[batch, time(, channels)]`` → dB
        ``[batch, channels, mels, frames]``."""
        if wavs.dim() == 2:
            wavs = wavs.unsqueeze(-1)
        batch, length, channels = wavs.shape
        signals = wavs.transpose(1, 2).reshape(batch * channels, length)
        if self.method == "stft":
            args = (self.hop, self.win_length, self.window, self.center)
            stft = torch.stft(
                signals, self.n_fft, *args, self.pad_mode, return_complex=True
            )
            bins = torch.view_as_real(stft)
            power = bins[..., 0].square() + bins[..., 1].square()
            mel = torch.matmul(power.transpose(-1, -2), self.fb)
        else:
            if self.pad:
                signals = torch.nn.functional.pad(
                    signals.unsqueeze(1), (self.pad, self.pad), self.pad_mode
                ).squeeze(1)
            mel = self.power(signals)  # [batch * channels, frames, n_mels]
        mel = mel.transpose(-1, -2)
        mel = mel.reshape(batch, channels, mel.shape[-2], mel.shape[-1])
        return self.to_db(mel)


class _FixedStandardize(torch.nn.Module):
    """A trained ``BatchStandardize`` as constants (its branch would not
    export).

    Example
    -------
    >>> norm = _FixedStandardize(torch.tensor(1.0), torch.tensor(2.0), 0.0)
    >>> norm(torch.tensor([3.0]))
    tensor([1.])
    """

    def __init__(self, mean, std, eps=1e-8):
        super().__init__()
        self.register_buffer("mean", mean.detach().clone().float())
        self.register_buffer("std", std.detach().clone().float())
        self.eps = eps

    def forward(self, x, lengths=None):
        """Standardise ``x`` (``lengths``: SpeechBrain's interface, unused)."""
        return (x - self.mean) / (self.std + self.eps)


class WindowClassifier(torch.nn.Module):
    """The windows of one clip → class probabilities: what gets exported.

    Arguments
    ---------
    model : speechbrain.inference.classifiers.EncoderClassifier
        A model loaded from a model folder.
    method : str
        How ``MelSpectrogramDB`` features are computed (``"matmul"``,
        ``"stft"``); other feature modules are used as they are.
    """

    def __init__(self, model, method="matmul"):
        super().__init__()
        mods = model.mods
        _, self.channels, self.num_samples = model_audio_spec(model)
        self.views = int(getattr(model.hparams, "tta_views", 1) or 1)
        max_shift = float(getattr(model.hparams, "tta_max_shift", 0.0))
        top = round(max_shift * self.num_samples)
        self.shifts = torch.linspace(0, top, self.views).round().long().tolist()
        features = mods.compute_features
        if isinstance(features, MelSpectrogramDB):
            features = MelSpectrogramGraph(features, self.num_samples, method)
        self.compute_features = features
        self.mean_var_norm = norm = mods.mean_var_norm
        if isinstance(norm, BatchStandardize):
            if int(norm.batches) == 0:
                raise ExportError(
                    "its BatchStandardize normaliser has no training "
                    "statistics (the model was never trained): export a "
                    "trained model folder"
                )
            self.mean_var_norm = _FixedStandardize(
                norm.running_mean, norm.running_std, norm.eps
            )
        self.embedding_model = mods.embedding_model
        self.classifier = mods.classifier
        self.eval()

    def forward(self, waveforms):
        """``[windows, samples, channels]`` → ``[windows, n_classes]`` probs."""
        n = waveforms.shape[0]
        if self.views > 1:  # as sb_urbansound.training.augment.circular_views
            waveforms = torch.cat(
                [torch.roll(waveforms, s, dims=1) for s in self.shifts]
            )
        wavs = waveforms.flatten(1) if self.channels == 1 else waveforms
        feats = self.compute_features(wavs)
        feats = self.mean_var_norm(feats, torch.ones_like(wavs[:, 0]))
        # full windows: no lengths (pooling then needs no per-window loop)
        scores = self.classifier(self.embedding_model(feats))
        probs = torch.softmax(scores.reshape(wavs.shape[0], -1).float(), -1)
        if self.views > 1:
            probs = probs.reshape(self.views, n, -1).mean(dim=0)
        return probs


def _describe_model(model):
    """The classes of a model's four modules, for messages."""
    names = "compute_features mean_var_norm embedding_model classifier".split()
    return " + ".join(type(getattr(model.mods, n)).__name__ for n in names)


def model_metadata(model, wrapper):
    """The metadata written into the exported files.

    Arguments
    ---------
    model : speechbrain.inference.classifiers.EncoderClassifier
    wrapper : WindowClassifier

    Returns
    -------
    dict
    """
    scorer = TorchScorer(model)
    return {
        "labels": json.dumps(scorer.labels),
        "sample_rate": str(scorer.sample_rate),
        "channels": str(scorer.channels),
        "num_samples": str(scorer.num_samples),
        "remove_dc": str(scorer.remove_dc).lower(),
        "tta_views": str(wrapper.views),
        "input_layout": "waveforms: [windows, samples, channels] float32, "
        "the windows of one clip at sample_rate",
        "normalization": "per window: each window is scored on its own",
        "modules": _describe_model(model),
        "producer": f"sb_urbansound.serving.export {__version__}",
    }


def _reason(error, limit=400):
    """Return an exporter's error in short: its root cause, no stack frames.

    Example
    -------
    >>> try:
    ...     try:
    ...         raise ValueError("Sizes must match\\nfile.py(12): forward")
    ...     except ValueError as e:
    ...         raise RuntimeError("Failed to export") from e
    ... except RuntimeError as e:
    ...     print(_reason(e))
    ValueError: Sizes must match
    """
    root = error
    while root.__cause__ is not None:
        root = root.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(root))  # no colours
    lines = [
        line
        for line in map(str.strip, text.splitlines())
        if line and not re.match(r"^(File \"|\S+\(\d+\): )", line)
    ]
    text = " ".join(
        lines[:2] + (["...", lines[-1]] if len(lines) > 3 else lines[2:])
    )
    text = f"{type(root).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: Windows in the example input the exports are traced with.
EXAMPLE_WINDOWS = 2


def _example(wrapper):
    """Return example input for tracing: :data:`EXAMPLE_WINDOWS` windows."""
    shape = (EXAMPLE_WINDOWS, wrapper.num_samples, wrapper.channels)
    gen = torch.Generator().manual_seed(0)
    return (0.1 * torch.randn(shape, generator=gen),)


def _to_onnx(wrapper, metadata, opset):
    """Return a :class:`WindowClassifier` as ONNX bytes (dynamo exporter)."""
    dynamic = {"waveforms": {0: torch.export.Dim("windows", min=1)}}
    quiet = [logging.getLogger(n) for n in ("torch.onnx", "torch.export")]
    levels = [log.level for log in quiet]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for log in quiet:  # "torchvision is not installed", per operator
            log.setLevel(logging.ERROR)
        try:
            program = torch.onnx.export(
                wrapper,
                _example(wrapper),
                dynamo=True,
                input_names=["waveforms"],
                output_names=["probs"],
                dynamic_shapes=dynamic,
                opset_version=opset,
                verbose=False,
                report=False,
            )
        finally:
            for log, level in zip(quiet, levels):
                log.setLevel(level)
    proto = program.model_proto
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = (
        "sb-urbansound sound classifier: waveforms [windows, samples, "
        "channels] -> probs [windows, n_classes]"
    )
    return proto.SerializeToString()


def _to_torchscript(wrapper, metadata):
    """Return a :class:`WindowClassifier` traced into TorchScript bytes."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit is deprecated, still there
        traced = torch.jit.trace(wrapper, _example(wrapper), check_trace=False)
        files = {"metadata.json": json.dumps(metadata)}
        torch.jit.save(traced, buffer, _extra_files=files)
    return buffer.getvalue()


class TorchScriptScorer(Scorer):
    """A TorchScript export (``model.ts``) as a scorer (chunks too).

    Arguments
    ---------
    data : bytes or str or Path
        The archive, or its file.
    chunk : int
    """

    def __init__(self, data, chunk=CHUNK_WINDOWS):
        source = io.BytesIO(data) if isinstance(data, bytes) else str(data)
        files = {"metadata.json": ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            self.module = torch.jit.load(source, _extra_files=files)
        self.metadata = json.loads(files["metadata.json"])
        vars(self).update(parse_metadata(self.metadata, "(TorchScript model)"))
        self.chunk = max(int(chunk), 1)

    @torch.no_grad()
    def _run(self, windows):
        """One call of the module (see :meth:`Scorer._run`)."""
        x = torch.from_numpy(np.ascontiguousarray(windows, np.float32))
        return self.module(x).numpy()


def generated_clips(sample_rate, channels, num_samples):
    """Clips to check an export with (tones, noise, silence).

    Arguments
    ---------
    sample_rate : int
        The clips' sample rate.
    channels : int
        The clips' channel count.
    num_samples : int
        The window length (samples); the clips last :data:`CHECK_LENGTHS`
        windows.

    Returns
    -------
    list of (str, torch.Tensor)

    Example
    -------
    >>> clips = generated_clips(8000, 2, 800)
    >>> [(n, c.shape) for n, c in clips][:2]  # doctest: +NORMALIZE_WHITESPACE
    [('generated-0', torch.Size([240, 2])),
    ('generated-1', torch.Size([800, 2]))]
    """
    rng = np.random.default_rng(0)
    clips = []
    for i, windows in enumerate(CHECK_LENGTHS):
        n = max(int(windows * num_samples), 1)
        t = np.arange(n) / sample_rate
        sig = np.zeros(n)
        for _ in range(3):  # a few tones, each in part of the clip
            f = rng.uniform(100, 0.45 * sample_rate)
            a, b = sorted(rng.integers(0, n, 2))
            sig[a : b + 1] += rng.uniform(0.05, 0.4) * np.sin(
                2 * np.pi * f * t[a : b + 1]
            )
        sig += rng.uniform(0.001, 0.05) * rng.standard_normal(n)
        sig[: n // 10] = 0.0  # some silence
        wav = sig[:, None] * (1 - 0.3 * np.arange(channels))
        wav = torch.from_numpy(wav.astype(np.float32))
        clips.append((f"generated-{i}", wav[:, 0] if channels == 1 else wav))
    return clips


#: What reading a JSON file that is not a manifest raises.
_NOT_A_MANIFEST = (OSError, ValueError, LookupError, TypeError, AttributeError)


def _data_files(paths, max_clips=None):
    """Return the audio files of ``--data`` (files, folders, manifests),
    each checked to be audio before anything is exported.

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> _ = (tmp / "m.json").write_text('{"a": {"wav": "no/such.wav"}}')
    >>> _data_files([tmp / "m.json"])
    Traceback (most recent call last):
     ...
    sb_urbansound.serving.export.ExportError: --data: no/such.wav: no such file
    """
    files = []
    for item in paths:
        item = Path(item)
        if item.is_dir():
            files += [item / rel for rel in find_audio_files(item)]
        elif item.suffix.lower() == ".json":
            try:
                manifest = json.loads(item.read_text(encoding="utf-8"))
                files += [Path(e["wav"]) for e in manifest.values()]
            except _NOT_A_MANIFEST as e:
                raise ExportError(
                    f"{item}: not a SpeechBrain manifest with 'wav' entries "
                    f"({type(e).__name__}: {e})"
                ) from None
        else:
            files.append(item)
    if not files:
        raise ExportError("--data names no audio file")
    for path in files[:max_clips]:
        try:
            check_regular_file(path)
            soundfile.info(str(path))
        except AudioLoadError as e:
            raise ExportError(f"--data: {e}") from None
        except Exception as e:  # soundfile: not audio
            raise ExportError(
                f"--data: {path}: cannot be read as audio ({e})"
            ) from None
    return files[:max_clips]


def _compare(model, scorer, clips):
    """Return stats of an export against eager PyTorch on ``clips``."""
    reference = TorchScorer(model)
    stats = dict(clips=0, windows=0, top1_agree=0, max_abs_diff=0.0, worst=None)
    for name, wav in clips:
        if isinstance(wav, Path):
            try:
                wav = reference.read(wav)
            except AudioLoadError as e:  # the clip's fault, not the export's
                raise AudioLoadError(f"--data: {e}") from None
        windows = sliding_windows(wav, reference.num_samples)
        eager = reference.window_probs(windows).astype(np.float64)
        try:
            exported = np.asarray(scorer.window_probs(windows.numpy()), float)
        except Exception as e:
            raise ExportError(
                f"the exported model fails on {name} ({windows.shape[0]} "
                f"window(s); it was exported with {EXAMPLE_WINDOWS}, so the "
                f"exporter may have fixed the number of windows): {_reason(e)}"
            ) from e
        if exported.shape != eager.shape:
            raise ExportError(
                f"the export returns {exported.shape} probabilities for "
                f"{name}, eager PyTorch {eager.shape}"
            )
        diff = float(np.abs(exported - eager).max())
        if not math.isfinite(diff):
            diff = math.inf
        stats["clips"] += 1
        stats["windows"] += eager.shape[0]
        agree = int(exported.mean(0).argmax() == eager.mean(0).argmax())
        stats["top1_agree"] += agree
        if diff > stats["max_abs_diff"] or not agree:
            stats["max_abs_diff"] = max(diff, stats["max_abs_diff"])
            stats["worst"] = name
    return stats


def _check_summary(fmt, stats):
    """Return one line on an export's check, and whether it passed.

    Example
    -------
    >>> s = dict(clips=5, windows=21, top1_agree=5, max_abs_diff=2e-7)
    >>> _check_summary("onnx", s)  # doctest: +NORMALIZE_WHITESPACE
    ('onnx: 5 clips (21 windows) against eager PyTorch: same top-1 label on
    5/5 clips, max |Δprob| 2.0e-07 (limit 1e-04)', True)
    """
    line = (
        f"{fmt}: {stats['clips']} clips ({stats['windows']} windows) against "
        f"eager PyTorch: same top-1 label on {stats['top1_agree']}/"
        f"{stats['clips']} clips, max |Δprob| {stats['max_abs_diff']:.1e} "
        f"(limit {PROB_TOLERANCE:.0e})"
    )
    ok = stats["top1_agree"] == stats["clips"]
    return line, ok and stats["max_abs_diff"] <= PROB_TOLERANCE


def export_model(
    folder,
    formats=("onnx", "torchscript"),
    data=None,
    max_clips=None,
    opset=DEFAULT_OPSET,
    log=print,
    trust=False,
):
    """Export a model folder, check each export, write the ones that pass.

    Arguments
    ---------
    folder : str or Path
    formats : tuple of str
        ``"onnx"`` and/or ``"torchscript"``.
    data : list of str or Path, optional
        Check clips: audio files, folders, manifests (default: generated).
    max_clips : int, optional
        Check at most this many clips (default: all).
    opset : int
        The ONNX opset of the export.
    log : callable
        Where the summary lines go.
    trust : bool
        Load a folder whose YAML builds anything (:mod:`.trust`).

    Returns
    -------
    dict
        Per format: ``{"path": Path, **check stats}`` or ``{"error": str}``.
    """
    folder = Path(folder)
    # Loaded (the folder and its YAML checked) before the lock, so that
    # nothing is written into a folder that is refused
    model = load_model(folder, trust=trust)
    # One writer at a time in the model folder (docs/stores.md)
    lock = FolderLock(folder, "exporting the model in")
    try:
        lock.acquire()
    except OSError as e:
        if not is_read_only_error(e):
            raise
        raise UserError(
            f"the model folder {folder} cannot be written ({e.strerror}): the "
            "export writes its files into it. Copy the folder to a writable "
            "place and export the copy."
        ) from None
    with lock:
        rate, channels, num_samples = model_audio_spec(model)
        if num_samples is None:
            raise ExportError(
                f"{folder}: hyperparams.yaml has no duration_ms: the export "
                "needs the training clip length"
            )
        if data:
            clips = [(str(p), p) for p in _data_files(data, max_clips)]
        else:
            clips = generated_clips(rate, channels, num_samples)[:max_clips]
        results = {}
        for fmt in formats:
            try:
                results[fmt] = _export_one(
                    model, fmt, folder, clips, opset, log
                )
            except ExportError as e:
                log(f"{fmt}: refused: {e}")
                results[fmt] = {"error": str(e)}
        return results


def _export_one(model, fmt, folder, clips, opset, log):
    """Build, check and write one format (see :func:`export_model`)."""
    method = "matmul" if fmt == "onnx" else "stft"
    try:
        wrapper = WindowClassifier(model, method)
        metadata = model_metadata(model, wrapper)
        if fmt == "onnx":
            data = _to_onnx(wrapper, metadata, opset)
            scorer = OnnxModel(data)
        else:
            data = _to_torchscript(wrapper, metadata)
            scorer = TorchScriptScorer(data)
        stats = _compare(model, scorer, clips)
    except ExportError as e:
        raise ExportError(
            f"{_describe_model(model)} cannot be exported to {fmt}: {e}"
        ) from e
    except UserError:  # a --data clip that cannot be read
        raise
    except ImportError as e:  # onnx, onnxscript or onnxruntime missing
        raise ExportError(
            f"the {fmt} export needs {e.name or 'a missing package'}: pip "
            "install onnx onnxscript onnxruntime (or, in the sb-urbansound "
            'clone, pip install -e ".[export]")'
        ) from e
    except Exception as e:  # the exporters' own errors, in many types
        raise ExportError(
            f"{_describe_model(model)} cannot be exported to {fmt}: "
            f"{_reason(e)}"
        ) from e
    line, ok = _check_summary(fmt, stats)
    if not ok:
        raise ExportError(
            f"{line}: the export does not compute what the model computes "
            f"(worst clip: {stats['worst']}); nothing written"
        )
    path = atomic_write_bytes(folder / FILES[fmt], data)
    log(f"{line}: OK, wrote {path}")
    return {"path": path, **stats}


def untrained_model_folder(yaml_file, folder, labels, overrides=None):
    """Write a model folder from a training YAML's random weights (for
    benchmarks and tests); its normaliser sees generated clips.

    Arguments
    ---------
    yaml_file : str or Path
        A recipe YAML.
    folder : str or Path
        The model folder to write.
    labels : list of str
    overrides : dict, optional
        More YAML overrides (sizes, rates).

    Returns
    -------
    Path
    """
    yaml_file = Path(yaml_file)
    recipe = str(yaml_file.resolve().parent.parent)  # !name:<prepare module>
    if recipe not in sys.path:
        sys.path.insert(0, recipe)
    text = yaml_file.read_text(encoding="utf-8")
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        values = {
            "data_folder": str(Path(tmp) / "no-data"),
            "output_folder": tmp,
            "n_classes": len(labels),
            **(overrides or {}),
        }
        hparams = load_hyperpyyaml(text, values)
        resolved = resolve_references(text, values).getvalue()
        (Path(tmp) / "hyperparams.yaml").write_text(resolved, encoding="utf-8")
        hparams["label_encoder"].update_from_iterable(labels)
        mods = hparams["modules"]
        norm = mods.get("mean_var_norm")
        if norm is not None:  # statistics (BatchStandardize, SpeechBrain's
            # InputNormalization) from generated clips
            rate, channels = hparams["sample_rate"], hparams["channels"]
            num = round(rate * hparams["duration_ms"] / 1000)
            clips = generated_clips(rate, channels, num)
            batch = torch.stack(
                [sliding_windows(clip, num)[0] for _, clip in clips]
            )
            with torch.no_grad():
                feats = mods["compute_features"](batch)
                norm.train()(feats, torch.ones(len(feats)))
        for module in mods.values():
            module.eval()
        folder = export_inference_folder(hparams, folder=folder)
    torch.set_num_threads(threads)  # the YAML sets the recipe's threads
    return folder


def parse_args(argv=None):
    """Parse the command line (see the module docstring).

    Arguments
    ---------
    argv : list of str, optional

    Returns
    -------
    argparse.Namespace

    Example
    -------
    >>> a = parse_args(["model", "--format", "onnx"])
    >>> a.model_folder, a.format, a.data
    ('model', 'onnx', None)
    """
    parser = argparse.ArgumentParser(
        prog="python -m sb_urbansound.serving.export",
        description=(
            "Export a trained model folder to ONNX (model.onnx) and "
            "TorchScript (model.ts), from the conditioned waveform to class "
            "probabilities, after checking each against eager PyTorch. Exit "
            "status: 0 if every format was written, 1 if one was refused or "
            "failed its check, 2 for a usage or model folder error."
        ),
    )
    add_model_options(parser, "show tracebacks")
    parser.add_argument(
        "--format",
        choices=["onnx", "torchscript", "all"],
        default="all",
        help="what to write (default: all)",
    )
    parser.add_argument(
        "--data",
        nargs="+",
        metavar="PATH",
        help="check clips: audio files, folders, or manifests such as "
        "<output_folder>/manifests/test.json (default: generated clips)",
    )
    parser.add_argument(
        "--max-clips",
        type=int,
        metavar="N",
        help="check at most N --data clips",
    )
    parser.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        help=f"ONNX opset (default: {DEFAULT_OPSET})",
    )
    args = parser.parse_args(argv)
    if args.max_clips is not None and args.max_clips < 1:
        parser.error("--max-clips must be at least 1")
    return args


def main(argv=None):
    """Run the command line; return the exit status.

    Arguments
    ---------
    argv : list of str, optional

    Returns
    -------
    int

    Example
    -------
    >>> main(["no/such/model"])
    2
    """
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    formats = list(FILES) if args.format == "all" else [args.format]
    try:
        with quiet_speechbrain(enabled=not args.verbose):
            results = export_model(
                args.model_folder,
                formats,
                data=args.data,
                max_clips=args.max_clips,
                opset=args.opset,
                trust=args.trust_model,
            )
    except UserError as e:
        if args.verbose:
            raise
        return report(e)  # 75: another export is running
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
