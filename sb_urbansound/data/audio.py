"""Audio in: reading files, and one clip conditioner (files are found by
:func:`sb_urbansound.serving.runtime.find_audio_files`).

:class:`ClipConditioner` serves training and inference alike, so a model
hears at inference what it heard in training. Waveforms are ``[time]`` for
mono, ``[time, channels]`` otherwise (SpeechBrain's layout).

Authors
-------
 * sb-urbansound contributors
"""

import torch
from sb_urbansound.serving.runtime import Conditioner, read_audio

#: Read this much beyond the clip length: soxr's output at the cut depends on
#: about 100 samples of the lower rate past it (up to 100 ms at 1 kHz).
READ_MARGIN_S = 0.15


def load_audio(path, max_seconds=None):
    """Read an audio file as a float32 ``[time, channels]`` tensor.

    Arguments
    ---------
    path : str or Path
        The audio file.
    max_seconds : float, optional
        Read at most this many seconds (None: all).

    Returns
    -------
    wav : torch.Tensor
        ``[time, channels]`` (mono is ``[time, 1]``).
    sample_rate : int
        The file's rate.

    Raises
    ------
    AudioLoadError
        If the file is unusable.

    Example
    -------
    >>> import soundfile as sf, numpy as np
    >>> tmp = getfixture("tmp_path")
    >>> sf.write(tmp / "a.wav", np.zeros((800, 2)), 8000)
    >>> wav, sr = load_audio(tmp / "a.wav", max_seconds=0.05)
    >>> wav.shape, sr
    (torch.Size([400, 2]), 8000)
    """
    wav, sample_rate = read_audio(path, max_seconds)
    return torch.from_numpy(wav), sample_rate


def rechannel(wav, channels):
    """Convert a waveform to ``channels`` channels (last dimension): mono
    is duplicated, several channels are averaged to mono first.

    Arguments
    ---------
    wav : torch.Tensor
        ``[..., time, channels]``.
    channels : int
        The number of channels wanted.

    Returns
    -------
    torch.Tensor
        ``[..., time, channels]``.

    Example
    -------
    >>> rechannel(torch.ones(10, 1), 2).shape
    torch.Size([10, 2])
    >>> rechannel(torch.tensor([[1.0, 3.0]]), 1)
    tensor([[2.]])
    """
    have = wav.shape[-1]
    if have == channels:
        return wav
    if channels < 1:
        raise ValueError(f"channels must be at least 1, got {channels}")
    mono = wav if have == 1 else wav.mean(dim=-1, keepdim=True)
    return mono.expand(*mono.shape[:-1], channels).contiguous()


def pad_trunc(wav, num_samples, random=False, generator=None):
    """Pad with zeros or truncate a waveform (time first) to ``num_samples``:
    long clips keep their start, short ones are padded at the end (or at a
    random position with ``random=True``).

    Arguments
    ---------
    wav : torch.Tensor
        ``[time]`` or ``[time, channels]``.
    num_samples : int
        The length wanted.
    random : bool
        Whether to draw the pad position at random.
    generator : torch.Generator, optional
        The source of randomness for the pad position.

    Returns
    -------
    torch.Tensor
        ``[num_samples]`` or ``[num_samples, channels]``.

    Example
    -------
    >>> pad_trunc(torch.ones(3), 5)
    tensor([1., 1., 1., 0., 0.])
    >>> pad_trunc(torch.ones(9, 2), 5).shape
    torch.Size([5, 2])
    """
    length = wav.shape[0]
    if length >= num_samples:
        return wav[:num_samples]
    begin = 0
    if random:
        pad = num_samples - length
        begin = int(torch.randint(0, pad + 1, (1,), generator=generator))
    out = wav.new_zeros((num_samples,) + tuple(wav.shape[1:]))
    out[begin : begin + length] = wav
    return out


def time_shift(wav, shift_pct, generator=None):
    """Roll a waveform in time by ``[0, shift_pct * length)`` samples, drawn
    uniformly, wrapping around.

    Arguments
    ---------
    wav : torch.Tensor
        ``[time]`` or ``[time, channels]``.
    shift_pct : float
        The largest shift (0: none), as a fraction of the length.
    generator : torch.Generator, optional
        The source of randomness.

    Returns
    -------
    torch.Tensor
        The shifted waveform, same shape.

    Example
    -------
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.arange(10.0)
    >>> sorted(time_shift(x, 0.5, g).tolist()) == x.tolist()
    True
    """
    limit = int(shift_pct * wav.shape[0])
    if limit <= 0:
        return wav
    shift = int(torch.randint(0, limit, (1,), generator=generator))
    return torch.roll(wav, shifts=shift, dims=0)


class ClipConditioner:
    """Bring a clip to the model's sample rate, channel count and length.

    Ours, not SpeechBrain's ``AudioNormalizer``: it down-mixes before
    resampling and up-mixes mono, through the runtime's ``Conditioner``
    (soxr). :meth:`clip` pads or truncates to the training length; calling
    the object (inference) pads short clips and keeps long ones whole.

    Arguments
    ---------
    sample_rate : int
        The model's rate.
    channels : int
        The model's channel count.
    duration_ms : float, optional
        The training clip length in ms (``None``: any).
    remove_dc : bool
        Subtract channel means.

    Example
    -------
    >>> cond = ClipConditioner(16000, channels=2, duration_ms=1000)
    >>> cond(torch.randn(4000), 8000).shape
    torch.Size([16000, 2])
    >>> cond(torch.randn(44100, 2), 22050).shape
    torch.Size([32000, 2])
    >>> ClipConditioner(8000, 1, 500).clip(torch.randn(44100, 2), 44100).shape
    torch.Size([4000])
    """

    def __init__(
        self, sample_rate, channels=1, duration_ms=None, remove_dc=False
    ):
        if duration_ms is not None and not float(duration_ms) > 0:
            raise ValueError(f"duration_ms must be positive, got {duration_ms}")
        self.converter = Conditioner(sample_rate, channels, remove_dc)
        self.sample_rate = self.converter.sample_rate
        self.channels = self.converter.channels
        self.duration_ms = duration_ms
        self.remove_dc = self.converter.remove_dc

    @property
    def num_samples(self):
        """The training clip length in samples (``None``: any length)."""
        if self.duration_ms is None:
            return None
        return int(round(self.sample_rate * float(self.duration_ms) / 1000.0))

    def max_seconds(self):
        """Seconds of a file :meth:`clip` needs (``None``: the whole file).

        Returns
        -------
        float or None
        """
        if self.duration_ms is None:
            return None
        return self.duration_ms / 1000 + READ_MARGIN_S

    def convert(self, audio, sample_rate):
        """Resample and rechannel a clip, and remove its DC offset if asked.

        Arguments
        ---------
        audio : torch.Tensor
            ``[time]`` or ``[time, channels]`` on the CPU.
        sample_rate : int
            Its rate.

        Returns
        -------
        torch.Tensor
            float32 ``[time']`` (mono) or ``[time', channels]``.
        """
        wav = audio.detach().float().numpy()
        wav = torch.from_numpy(self.converter.convert(wav, sample_rate))
        return wav.squeeze(-1) if self.channels == 1 else wav

    def clip(self, audio, sample_rate, random_pad=False, generator=None):
        """Convert a clip and pad or truncate it to the training length.

        Arguments
        ---------
        audio : torch.Tensor
            ``[time]`` or ``[time, channels]``.
        sample_rate : int
            Its rate.
        random_pad : bool
            Put a short clip at a random position (training).
        generator : torch.Generator, optional
            The source of the random position.

        Returns
        -------
        torch.Tensor
            ``[num_samples]`` or ``[num_samples, channels]``.
        """
        wav = self.convert(audio, sample_rate)
        if self.num_samples is None:
            return wav
        return pad_trunc(wav, self.num_samples, random_pad, generator)

    def __call__(self, audio, sample_rate):
        """Convert a clip (any device) and pad a short one at the end."""
        wav = self.convert(audio.detach().to("cpu"), sample_rate)
        wav = pad_trunc(wav, max(self.num_samples or 0, len(wav)))
        return wav.to(audio.device)
