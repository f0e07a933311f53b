"""YAMNet, Google's AudioSet encoder, rebuilt in PyTorch (docs/models.md).

Front end, encoder, zero-shot head, and readers of the released weights;
``python -m sb_urbansound.training.yamnet convert SRC OUT.ckpt``.

Authors
-------
 * sb-urbansound contributors
"""

import argparse
import csv
import io
import math
import os
import re
import struct
import sys
from pathlib import Path

import numpy as np
import torch
from sb_urbansound.errors import UserError
from sb_urbansound.serving.runtime import Scorer
from sb_urbansound.serving.timeline import sliding_windows

SAMPLE_RATE = 16000
WINDOW = 400  # 25 ms
HOP = 160  # 10 ms
N_FFT = 512
N_MELS = 64
F_MIN, F_MAX = 125.0, 7500.0
LOG_OFFSET = 0.001
PATCH, PATCH_HOP = 96, 48  # frames: 0.96 s, hop 0.48 s
EMBEDDING_DIM = 1024
AUDIOSET_CLASSES = 521
BN_EPSILON = 1e-4
#: Patch embeddings a frozen encoder remembers (4 KB each).
CACHE_PATCHES = 32768
#: Log-mel values at or below this are digital silence (``log(0.001)``).
SILENCE = math.log(LOG_OFFSET) + 0.01
#: (stride, output channels) of the first convolution, then of the 13
#: depthwise-separable blocks; every kernel is 3x3.
LAYERS = ((2, 32), (1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512))
LAYERS += (*[(1, 512)] * 5, (2, 1024), (1, 1024))


def htk_mel_matrix(
    n_mels=N_MELS, n_fft=N_FFT, rate=SAMPLE_RATE, f_min=F_MIN, f_max=F_MAX
):
    """The HTK mel weights of ``tf.signal.linear_to_mel_weight_matrix``.

    Arguments
    ---------
    n_mels : int
        Number of mel bands.
    n_fft : int
        FFT size.
    rate : int
        Sample rate (Hz).
    f_min : float
        Lower edge of the lowest band (Hz).
    f_max : float
        Upper edge of the highest band (Hz).

    Returns
    -------
    numpy.ndarray
        float64 ``[n_fft // 2 + 1, n_mels]``; the DC bin gets no weight.

    Example
    -------
    >>> m = htk_mel_matrix()
    >>> m.shape, float(m[0].max()), bool((m.sum(axis=0) > 0).all())
    ((257, 64), 0.0, True)
    """

    def mel(f):
        return 1127.0 * np.log1p(np.asarray(f, dtype=np.float64) / 700.0)

    bins = mel(np.linspace(0.0, rate / 2, n_fft // 2 + 1))[1:, None]
    edges = np.linspace(mel(f_min), mel(f_max), n_mels + 2)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    return np.concatenate([np.zeros((1, n_mels)), weights])


def padded_length(num_samples):
    """Samples after YAMNet's padding: one patch at least, whole hops after.

    Arguments
    ---------
    num_samples : int
        The waveform's length.

    Returns
    -------
    int

    Example
    -------
    >>> padded_length(100), padded_length(15600), padded_length(64000)
    (15600, 15600, 69360)
    """
    first = WINDOW - HOP + HOP * PATCH
    hop = HOP * PATCH_HOP
    return first + hop * max(0, math.ceil((num_samples - first) / hop))


class YAMNetFrontEnd(torch.nn.Module):
    """YAMNet's log-mel front end: ``[batch, time]`` → ``[batch, frames, 64]``.

    The STFT is a strided convolution with the windowed DFT basis, so that
    ONNX and TorchScript export it as it is.

    Arguments
    ---------
    sample_rate : int
        Must be 16000 (YAMNet's).

    Example
    -------
    >>> YAMNetFrontEnd()(torch.zeros(2, 15600)).shape
    torch.Size([2, 96, 64])
    """

    def __init__(self, sample_rate=SAMPLE_RATE):
        super().__init__()
        if sample_rate != SAMPLE_RATE:
            raise UserError(
                f"YAMNet takes {SAMPLE_RATE} Hz audio (its front end and "
                f"weights assume it), but sample_rate is {sample_rate}: set "
                f"--sample_rate={SAMPLE_RATE}"
            )
        n = np.arange(WINDOW)
        window = 0.5 - 0.5 * np.cos(2 * np.pi * n / WINDOW)  # periodic
        freqs = np.arange(N_FFT // 2 + 1)
        angle = 2 * np.pi * np.outer(freqs, n) / N_FFT
        basis = np.concatenate([np.cos(angle), -np.sin(angle)]) * window
        dft = torch.tensor(basis, dtype=torch.float32).unsqueeze(1)
        self.register_buffer("dft", dft)
        self.register_buffer("mel", torch.tensor(htk_mel_matrix()).float())

    def forward(self, wavs):
        """``[batch, time(, 1)]`` at 16 kHz → ``[batch, 96 + 48 k, 64]``."""
        if wavs.dim() == 3:
            wavs = wavs.mean(dim=-1)
        pad = padded_length(wavs.shape[1]) - wavs.shape[1]
        wavs = torch.nn.functional.pad(wavs.float(), (0, pad))
        with torch.autocast(device_type=wavs.device.type, enabled=False):
            bins = torch.nn.functional.conv1d(
                wavs.unsqueeze(1), self.dft, stride=HOP
            )
            re, im = bins.chunk(2, dim=1)
            magnitude = torch.sqrt(re.square() + im.square())
            mel = torch.matmul(magnitude.transpose(1, 2), self.mel)
            return torch.log(mel + LOG_OFFSET)


def same_padding(size, kernel, stride):
    """TensorFlow's 'SAME' padding of one axis: (before, after), smaller first.

    Example
    -------
    >>> same_padding(96, 3, 2), same_padding(95, 3, 2), same_padding(6, 3, 1)
    ((0, 1), (1, 1), (1, 1))
    """
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class CentredBatchNorm(torch.nn.BatchNorm2d):
    """Keras ``BatchNormalization(center=True, scale=False, epsilon=1e-4)``.

    Uses the loaded running statistics in training too: small fine-tuning
    batches would otherwise replace AudioSet's.

    Arguments
    ---------
    channels : int
        Feature maps.

    Example
    -------
    >>> bn = CentredBatchNorm(4)
    >>> bn(torch.ones(1, 4, 2, 2)).shape
    torch.Size([1, 4, 2, 2])
    """

    def __init__(self, channels):
        super().__init__(channels, eps=BN_EPSILON, affine=False)
        self.beta = torch.nn.Parameter(torch.zeros(channels))

    def scale_shift(self):
        """The normalisation as ``x * scale + shift`` (per channel)."""
        scale = torch.rsqrt(self.running_var + self.eps)
        return scale, self.beta - self.running_mean * scale

    def forward(self, x):
        """Normalise ``[batch, channels, height, width]``, add ``beta``."""
        scale, shift = self.scale_shift()
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)


class ConvUnit(torch.nn.Module):
    """Convolution with 'SAME' padding, no bias → centred batch norm → ReLU.

    Arguments
    ---------
    in_channels : int
        Feature maps in.
    out_channels : int
        Feature maps out.
    kernel : int
        Square kernel size.
    stride : int
        Stride of the convolution.
    depthwise : bool
        One filter per input map (``out_channels == in_channels``).

    Example
    -------
    >>> ConvUnit(1, 8, 3, 2)(torch.zeros(1, 1, 96, 64)).shape
    torch.Size([1, 8, 48, 32])
    """

    def __init__(self, in_channels, out_channels, kernel, stride, depthwise=0):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        groups = in_channels if depthwise else 1
        self.conv = torch.nn.Conv2d(
            in_channels, out_channels, kernel, stride, groups=groups, bias=False
        )
        self.bn = CentredBatchNorm(out_channels)

    def forward(self, x):
        """Apply the unit to ``[batch, channels, height, width]``."""
        top, bottom = same_padding(x.shape[2], self.kernel, self.stride)
        left, right = same_padding(x.shape[3], self.kernel, self.stride)
        padding = (top, left)
        if (top, left) != (bottom, right):  # TensorFlow's uneven 'SAME'
            x = torch.nn.functional.pad(x, (left, right, top, bottom))
            padding = 0
        scale, shift = self.bn.scale_shift()
        weight = self.conv.weight * scale.view(-1, 1, 1, 1)
        x = torch.nn.functional.conv2d(
            x, weight, shift, self.stride, padding, 1, self.conv.groups
        )
        return torch.relu(x)


class YAMNetEncoder(torch.nn.Module):
    """YAMNet on log-mel frames: ``[batch, frames, 64]`` → ``[batch, 1, dim]``.

    Pools the embeddings of the clip's patches of sound: patches all at the
    floor ``log(0.001)`` (padding) count only in a clip that has no other.

    Arguments
    ---------
    pooling : str
        ``"mean"`` (1024-d) or ``"mean+std"`` (2048-d).

    Example
    -------
    >>> enc = YAMNetEncoder().eval()
    >>> feats = YAMNetFrontEnd()(torch.randn(2, 32000) * 0.1)
    >>> enc(feats).shape, enc.audioset_logits(feats).shape
    (torch.Size([2, 1, 1024]), torch.Size([2, 4, 521]))
    >>> YAMNetEncoder(pooling="mean+std").eval()(feats).shape
    torch.Size([2, 1, 2048])
    """

    #: The model card's note on where the encoder comes from.
    CARD_NOTE = (
        "The encoder is YAMNet (Google; MobileNetV1 trained on AudioSet's 521 "
        "sound event classes), from its release in tensorflow/models "
        "(research/audioset/yamnet; TF Hub google/yamnet/1) under the Apache "
        "License 2.0, rebuilt in PyTorch by sb_urbansound.training.yamnet; the "
        "settings below say whether it was frozen or fine-tuned here. Its "
        "licence applies to the encoder's weights; the training data's "
        "licence is above."
    )
    #: What ``pretrained_encoder`` may be, for the message when it is unset.
    PRETRAINED_HINT = (
        "YAMNet's SavedModel folder (e.g. ../shared/data/yamnet, TF Hub's "
        "google/yamnet/1), its yamnet.h5, or a checkpoint written by "
        "python -m sb_urbansound.training.yamnet convert"
    )

    def __init__(self, pooling="mean"):
        super().__init__()
        if pooling not in ("mean", "mean+std"):
            raise UserError(f"pooling: {pooling!r} is not mean or mean+std")
        self.pooling = pooling
        units = [ConvUnit(1, LAYERS[0][1], 3, LAYERS[0][0])]
        for (_, cin), (stride, out) in zip(LAYERS, LAYERS[1:]):
            units.append(ConvUnit(cin, cin, 3, stride, True))
            units.append(ConvUnit(cin, out, 1, 1))
        self.net = torch.nn.Sequential(*units)
        self.logits = torch.nn.Linear(EMBEDDING_DIM, AUDIOSET_CLASSES)
        self._cache, self._cache_version = {}, None

    @staticmethod
    def patches(feats):
        """``[batch, frames, 64]`` → ``[batch, patches, 96, 64]``."""
        if feats.dim() != 3 or feats.shape[-1] != N_MELS:
            raise UserError(
                f"YAMNet takes log-mel frames [batch, frames, {N_MELS}] "
                f"(YAMNetFrontEnd's), got shape {tuple(feats.shape)}"
            )
        if feats.shape[1] < PATCH:
            feats = torch.nn.functional.pad(
                feats,
                (0, 0, 0, PATCH - feats.shape[1]),
                value=math.log(LOG_OFFSET),
            )
        return feats.unfold(1, PATCH, PATCH_HOP).transpose(2, 3)

    @staticmethod
    def sound(patches):
        """``[batch, patches, 96, 64]`` → ``[batch, patches]``: sound or not."""
        sound = (patches > SILENCE).flatten(2).any(dim=2)
        return sound | ~sound.any(dim=1, keepdim=True)

    def patch_embeddings(self, patches):
        """``[n, 96, 64]`` log-mel patches → ``[n, 1024]`` embeddings."""
        return self.net(patches.unsqueeze(1)).mean(dim=(2, 3))

    def frozen_embeddings(self, patches):
        """:meth:`patch_embeddings`, remembered while the encoder is frozen
        (up to :data:`CACHE_PATCHES`; new weights empty the cache)."""
        tensors = [*self.parameters(), *self.buffers()]
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            self._cache.clear()
            return self.patch_embeddings(patches)
        version = [t._version for t in tensors]
        if version != self._cache_version:
            self._cache, self._cache_version = {}, version
        keys = [hash(p.numpy().tobytes()) for p in patches.detach().cpu()]
        todo = [i for i, key in enumerate(keys) if key not in self._cache]
        if todo:
            with torch.no_grad():
                new = self.patch_embeddings(patches[todo])
            for i, emb in zip(todo, new):
                if len(self._cache) >= CACHE_PATCHES:  # the oldest goes
                    del self._cache[next(iter(self._cache))]
                self._cache[keys[i]] = emb
        if not keys:
            return patches.new_zeros(0, EMBEDDING_DIM)
        return torch.stack([self._cache[key] for key in keys])

    def audioset_logits(self, feats):
        """AudioSet logits ``[batch, patches, 521]`` of log-mel frames."""
        patches = self.patches(feats)
        emb = self.patch_embeddings(patches.flatten(0, 1))
        return self.logits(emb).unflatten(0, patches.shape[:2])

    def forward(self, feats, lengths=None):
        """``[batch, frames, 64]`` → ``[batch, 1, 1024 or 2048]``; ``lengths``
        is ignored (padding is recognised by its values)."""
        patches = self.patches(feats)
        sound = self.sound(patches)
        weights = sound.unsqueeze(-1).to(patches.dtype)
        flat = patches.flatten(0, 1)
        exporting = torch.jit.is_tracing() or torch.compiler.is_compiling()
        if self.training or exporting:
            emb = self.patch_embeddings(flat)
        else:  # only the patches of sound: short clips cost less
            keep = sound.flatten()
            emb = flat.new_zeros(len(flat), EMBEDDING_DIM)
            emb[keep] = self.frozen_embeddings(flat[keep])
        emb = emb.unflatten(0, sound.shape)
        count = weights.sum(dim=1)
        pooled = (emb * weights).sum(dim=1) / count
        # Ours, not SpeechBrain's StatisticsPooling: that takes lengths, not a
        # mask, and adds noise
        if self.pooling == "mean+std":
            var = ((emb - pooled.unsqueeze(1)).square() * weights).sum(1)
            std = (var / count).clamp(min=1e-8).sqrt()
            pooled = torch.cat([pooled, std], dim=-1)
        return pooled.unsqueeze(1)

    def read_pretrained(self, path):
        """A state dict from YAMNet's release at ``path``, or None if not."""
        return read_release(path) if is_release(path) else None


# Reading the weights: ours, with numpy, so that TensorFlow is not needed.
#: The variables of a layer in TensorFlow's object graph and Keras files.
VARIABLE_KINDS = ("kernel", "depthwise_kernel", "beta", "moving_mean")
VARIABLE_KINDS += ("moving_variance", "bias")
_BUNDLE_KEY = re.compile(
    r"^(.*?)layer_with_weights-(\d+)/(" + "|".join(VARIABLE_KINDS) + r")"
    r"/\.ATTRIBUTES/VARIABLE_VALUE$"
)
_TABLE_MAGIC = 0xDB4775248B80FB57
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
#: TensorFlow DataType enum → numpy dtype (the ones a layer may have).
_DTYPES = {1: "<f4", 2: "<f8", 3: "<i4", 9: "<i8", 19: "<f2"}


def _varint(buf, pos):
    """Decode a protobuf/LevelDB varint at ``pos``: (value, next pos)."""
    value = 0
    for i in range(10):  # 64 bits at most
        byte = buf[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            return value, pos + i + 1
    raise ValueError("varint too long")


def _proto_fields(buf):
    """Fields of a protobuf message: {number: [value, ...]} (raw values)."""
    fields, pos = {}, 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = bytes(buf[pos : pos + size]), pos + size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = bytes(buf[pos : pos + size]), pos + size
        else:
            raise ValueError(f"protobuf wire type {wire}")
        if pos > len(buf):
            raise ValueError("truncated protobuf")
        fields.setdefault(number, []).append(value)
    return fields


def _table_block(table, offset, size):
    """The (key, value) entries of one block of a LevelDB table."""
    if offset + size + 5 > len(table):
        raise ValueError("block past the end of the file")
    if table[offset + size] != 0:
        raise ValueError("compressed blocks are not supported")
    block = table[offset : offset + size]
    restarts = struct.unpack_from("<I", block, size - 4)[0]
    end, pos, key = size - 4 - 4 * restarts, 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        length, pos = _varint(block, pos)
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        yield key, block[pos : pos + length]
        pos += length


def _bundle_entries(index):
    """{name: BundleEntryProto fields} of a bundle's LevelDB index file."""
    if (
        len(index) < 48
        or struct.unpack_from("<Q", index, len(index) - 8)[0] != _TABLE_MAGIC
    ):
        raise ValueError("not a LevelDB table (no table magic number)")
    footer = index[-48:]
    _, pos = _varint(footer, 0)
    _, pos = _varint(footer, pos)  # metaindex block: unused
    index_offset, pos = _varint(footer, pos)
    index_size, _ = _varint(footer, pos)
    entries = {}
    for _, handle in _table_block(index, index_offset, index_size):
        offset, pos = _varint(handle, 0)
        size, _ = _varint(handle, pos)
        for key, value in _table_block(index, offset, size):
            entries[key.decode("utf-8")] = _proto_fields(value)
    return entries


def read_tensor_bundle(folder):
    """The layer variables of a TensorFlow tensor bundle, with numpy only.

    Arguments
    ---------
    folder : str or Path
        A SavedModel folder or its ``variables`` folder.

    Returns
    -------
    dict
        ``{name: numpy.ndarray}`` of the ``layer_with_weights`` entries.

    Raises
    ------
    UserError
        For a missing, damaged or unsupported bundle.
    """
    folder = Path(folder)
    if (folder / "variables").is_dir():
        folder = folder / "variables"
    index_file = folder / "variables.index"
    data_file = folder / "variables.data-00000-of-00001"
    for path in (index_file, data_file):
        if not path.is_file():
            raise UserError(
                f"{folder} is not a YAMNet SavedModel: {path.name} is "
                "missing (expected variables/variables.index and "
                "variables/variables.data-00000-of-00001)"
            )
    try:
        entries = _bundle_entries(index_file.read_bytes())
        header = entries.pop("", {})
        if header.get(1, [1])[0] != 1 or header.get(2, [0])[0] != 0:
            raise ValueError("only one little-endian shard is supported")
        data = np.memmap(data_file, dtype=np.uint8, mode="r")
        variables = {}
        for name, entry in entries.items():
            if not _BUNDLE_KEY.match(name):
                continue
            dtype = _DTYPES.get(entry.get(1, [0])[0])
            if dtype is None or entry.get(3, [0])[0] != 0:
                raise ValueError(f"{name}: unsupported dtype or shard")
            dims = _proto_fields(entry.get(2, [b""])[0]).get(2, [])
            shape = tuple(_proto_fields(d).get(1, [0])[0] for d in dims)
            offset, size = entry.get(4, [0])[0], entry.get(5, [0])[0]
            count = int(np.prod(shape))
            if size != count * np.dtype(dtype).itemsize:
                raise ValueError(f"{name}: {size} bytes for shape {shape}")
            if offset + size > len(data):
                raise ValueError(f"{name}: past the end of {data_file.name}")
            raw = np.frombuffer(data[offset : offset + size], dtype=dtype)
            variables[name] = raw.reshape(shape).astype(np.float32)
    except (ValueError, IndexError, struct.error, UnicodeDecodeError) as e:
        raise UserError(
            f"{index_file} is not a readable TensorFlow tensor bundle "
            f"(damaged, or another format): {e}"
        ) from None
    return variables


def read_keras_h5(path):
    """The layer variables of YAMNet's Keras weights file (needs ``h5py``).

    Arguments
    ---------
    path : str or Path
        The HDF5 file (``yamnet.h5``).

    Returns
    -------
    dict
        ``{"<layer>/<kind>": numpy.ndarray}``.
    """
    try:
        import h5py
    except ImportError:
        raise UserError(
            f"{path} is a Keras HDF5 file: reading it needs h5py "
            "(pip install h5py), or use YAMNet's SavedModel folder"
        ) from None
    variables = {}

    def visit(name, item):
        if isinstance(item, h5py.Dataset):
            key = re.sub(r":\d+$", "", name)
            variables[key] = np.asarray(item, dtype=np.float32)

    try:
        with h5py.File(path, "r") as f:
            f.visititems(visit)
    except OSError as e:
        raise UserError(f"cannot read the HDF5 file {path}: {e}") from None
    return variables


def _layer_lists(variables):
    """YAMNet's 55 weighted layers in order, ``[{kind: array}, ...]``."""
    groups = {}
    for name, value in variables.items():
        match = _BUNDLE_KEY.match(name)
        if match:
            prefix, k, kind = match.groups()
            groups.setdefault(prefix, {}).setdefault(int(k), {})[kind] = value
    if not groups:  # Keras names: layer<n>/<op>[/bn]/<kind>, then the dense
        keyed = {}
        for name, value in variables.items():
            unit, _, kind = name.rpartition("/")
            if kind not in VARIABLE_KINDS:
                continue
            match = re.search(
                r"layer(\d+)/(conv|depthwise_conv|pointwise_conv)(/bn)?$", unit
            )
            if match:
                pointwise = match[2] == "pointwise_conv"
                order = (int(match[1]), pointwise, bool(match[3]))
            elif kind in ("kernel", "bias") and value.shape[-1:] == (
                AUDIOSET_CLASSES,
            ):
                order = (len(LAYERS) + 1, 0, 0)
            else:
                continue
            keyed.setdefault(order, {})[kind] = value
        groups = {"": dict(enumerate(keyed[o] for o in sorted(keyed)))}
    expected = 2 * (2 * len(LAYERS) - 1) + 1
    complete = [
        [layers[k] for k in range(expected)]
        for layers in groups.values()
        if sorted(layers) == list(range(expected))
    ]
    if len(complete) != 1:
        found = {p or "(none)": len(v) for p, v in groups.items()}
        raise ValueError(
            f"expected one set of YAMNet's {expected} weighted layers, found "
            f"{found} layers under each prefix"
        )
    return complete[0]


def yamnet_state_dict(variables, source="the weights"):
    """Map the release's variables onto :class:`YAMNetEncoder`'s state dict.

    Arguments
    ---------
    variables : dict
        From :func:`read_tensor_bundle` or :func:`read_keras_h5`.
    source : str
        Named in the message.

    Returns
    -------
    dict
        ``{name: torch.Tensor}`` for ``YAMNetEncoder.load_state_dict``.

    Raises
    ------
    UserError
        When the variables are not YAMNet's.
    """
    try:
        layers = _layer_lists(variables)
        state = {}
        for j in range(len(layers) // 2):
            conv, bn = layers[2 * j], layers[2 * j + 1]
            if "depthwise_kernel" in conv:
                kernel = conv["depthwise_kernel"].transpose(2, 3, 0, 1)
            else:
                kernel = conv["kernel"].transpose(3, 2, 0, 1)
            state[f"net.{j}.conv.weight"] = kernel
            state[f"net.{j}.bn.beta"] = bn["beta"]
            state[f"net.{j}.bn.running_mean"] = bn["moving_mean"]
            state[f"net.{j}.bn.running_var"] = bn["moving_variance"]
            if "gamma" in bn:
                raise ValueError("a batch norm with a scale (gamma)")
        state["logits.weight"] = layers[-1]["kernel"].T
        state["logits.bias"] = layers[-1]["bias"]
    except (KeyError, ValueError) as e:
        raise UserError(f"{source} are not YAMNet's: {e}") from None
    state = {
        k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()
    }
    expected = YAMNetEncoder().state_dict()
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise UserError(
                f"{source} are not YAMNet's: {key} has shape "
                f"{tuple(value.shape)}, YAMNet's {tuple(expected[key].shape)}"
            )
    return state


def is_release(path):
    """Whether ``path`` is a folder or an HDF5 file (not a torch file)."""
    path = Path(path)
    if path.is_dir():
        return True
    try:
        with open(path, "rb") as f:
            return f.read(8) == _HDF5_MAGIC
    except OSError:
        return False


def read_release(path):
    """YAMNetEncoder's state dict from a SavedModel folder or ``yamnet.h5``.

    Arguments
    ---------
    path : str or Path
        The folder (or its ``variables`` folder) or the HDF5 file.

    Returns
    -------
    dict
    """
    if Path(path).is_dir():
        return yamnet_state_dict(
            read_tensor_bundle(path), f"the variables of {path}"
        )
    return yamnet_state_dict(read_keras_h5(path), f"the weights in {path}")


def read_class_map(path, audioset_names):
    """Labels and the AudioSet classes that stand for each, from a CSV.

    Arguments
    ---------
    path : str or Path
        Rows ``label,AudioSet class name`` (header ``label,audioset`` allowed).
    audioset_names : list of str
        YAMNet's 521 class names, in output order.

    Returns
    -------
    dict
        ``{label: [AudioSet class indices]}``, in the order of the file.

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> _ = (tmp / "map.csv").write_text("label,audioset\\ndog,Bark\\ndog,Dog")
    >>> read_class_map(tmp / "map.csv", ["Dog", "Bark"])
    {'dog': [1, 0]}
    """
    index = {name: i for i, name in enumerate(audioset_names)}
    labels = {}
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(
            f"{path}: cannot be read as a class map ({e})"
        ) from None
    for line, row in enumerate(rows, 1):
        if not row or (line == 1 and row == ["label", "audioset"]):
            continue
        if len(row) != 2 or row[1] not in index:
            raise UserError(
                f"{path}, line {line}: {','.join(row)!r} is not "
                "'label,AudioSet class name' with one of YAMNet's 521 names "
                "(the release's assets/yamnet_class_map.csv lists them)"
            )
        labels.setdefault(row[0], []).append(index[row[1]])
    if not labels:
        raise UserError(f"{path}: no 'label,AudioSet class name' rows")
    return labels


class ZeroShot(Scorer):
    """Label clips with YAMNet's own AudioSet head, without any training.

    A window's AudioSet scores are averaged over its patches of sound; a
    label scores the highest of its classes'. Windows are 4 s; a shorter file
    is one window of its own length (padding would count as sound).

    Arguments
    ---------
    weights : str or Path
        YAMNet's SavedModel folder, with ``assets/yamnet_class_map.csv``.
    class_map : str or Path
        The CSV of ``label,AudioSet class name`` rows.
    """

    sample_rate, channels, num_samples = SAMPLE_RATE, 1, 4 * SAMPLE_RATE

    def __init__(self, weights, class_map):
        names_file = Path(weights) / "assets" / "yamnet_class_map.csv"
        if not Path(weights).is_dir() or not names_file.is_file():
            raise UserError(
                f"{weights}: not YAMNet's release folder (it needs "
                "variables/ and assets/yamnet_class_map.csv; see "
                "../shared/data/README.md, section yamnet/)"
            )
        with open(names_file, encoding="utf-8", newline="") as f:
            names = [row[2] for row in list(csv.reader(f))[1:]]
        self.classes = read_class_map(class_map, names)
        self.labels = list(self.classes)
        self.model_folder = str(weights)
        self.front_end = YAMNetFrontEnd()
        self.encoder = YAMNetEncoder().eval()
        self.encoder.load_state_dict(read_release(weights))

    def file_window_probs(self, path):
        """As :meth:`Scorer.file_window_probs`; a short file unpadded."""
        wav = self.read(path)
        size = min(self.num_samples, max(wav.shape[0], 1))
        windows = sliding_windows(wav, size)
        return self.window_probs(windows), wav.shape[0] / self.sample_rate

    @torch.no_grad()
    def _run(self, windows):
        """``[n, samples, 1]`` windows → ``[n, labels]`` scores in [0, 1]."""
        wavs = torch.tensor(np.asarray(windows, np.float32))[..., 0]
        feats = self.front_end(wavs)
        sound = self.encoder.sound(self.encoder.patches(feats))
        scores = torch.sigmoid(self.encoder.audioset_logits(feats))
        sound = sound.unsqueeze(-1).float()
        audioset = (scores * sound).sum(dim=1) / sound.sum(dim=1)
        best = [audioset[:, i].amax(dim=1) for i in self.classes.values()]
        return torch.stack(best, dim=1).numpy()


def convert(source, out):
    """Write YAMNet's release weights as a PyTorch checkpoint.

    Arguments
    ---------
    source : str or Path
        A SavedModel folder or ``yamnet.h5``.
    out : str or Path
        The checkpoint to write (atomically; an existing file is refused).

    Returns
    -------
    dict
        The state dict.
    """
    from sb_urbansound.atomic import atomic_write_bytes

    if not is_release(source):
        raise UserError(
            f"{source} is neither a YAMNet SavedModel folder nor a Keras "
            "HDF5 file (yamnet.h5)"
        )
    if os.path.lexists(out):
        raise UserError(f"{out} exists: give a new file name")
    state = read_release(source)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(out, buffer.getvalue())
    return state


def main(argv=None):
    """``python -m sb_urbansound.training.yamnet convert SRC OUT.ckpt``."""
    parser = argparse.ArgumentParser(
        prog="python -m sb_urbansound.training.yamnet",
        description="Convert YAMNet's released weights (TensorFlow "
        "SavedModel folder or Keras yamnet.h5) to a PyTorch checkpoint, "
        "without TensorFlow.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="write OUT.ckpt from SRC")
    conv.add_argument("source", help="SavedModel folder or yamnet.h5")
    conv.add_argument("out", help="the checkpoint to write")
    args = parser.parse_args(argv)
    try:
        state = convert(args.source, args.out)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_status
    count = sum(v.numel() for v in state.values())
    print(f"wrote {args.out}: {len(state)} tensors, {count:,} values")
    return 0


if __name__ == "__main__":
    sys.exit(main())
