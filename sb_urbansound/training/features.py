"""Batched features: mel spectrogram in dB, per-batch or per-clip
standardisation, and the ``log1p`` mel front end of SpeechBrain's ESC50 CNN14.

Authors
-------
 * sb-urbansound contributors
"""

import torch
import torchaudio
from sb_urbansound.data.audio import rechannel

# On CPU a whole batch's STFT spills out of the caches (~3x slower): signals
# go through it in chunks of about this many samples (GPU: all at once).
CPU_CHUNK_SAMPLES = 2**19


class MelSpectrogramDB(torch.nn.Module):
    """Mel spectrogram in dB per channel: ``[B, T, C]`` →
    ``[B, C, n_mels, frames]``.

    The tutorial's ``MelSpectrogram`` (power 2), then ``AmplitudeToDB`` with
    ``top_db`` (its floor taken per clip, over all channels).

    Arguments
    ---------
    sample_rate : int
        Sample rate of the input.
    n_fft : int
        FFT size.
    hop_length : int, optional
        Hop between frames (default ``n_fft // 2``).
    n_mels : int
        Number of mel bands.
    top_db : float, optional
        Dynamic range kept below each clip's maximum, in dB.
    channels : int, optional
        If given, inputs are first converted to this many channels.
    f_min : float
        Lowest frequency of the mel filters.
    f_max : float, optional
        Highest frequency of the mel filters (None: Nyquist).

    Example
    -------
    >>> feats = MelSpectrogramDB(
    ...     sample_rate=16000, n_fft=512, n_mels=32, channels=2
    ... )
    >>> feats(torch.randn(3, 16000)).shape
    torch.Size([3, 2, 32, 63])
    """

    def __init__(
        self,
        sample_rate=44100,
        n_fft=1024,
        hop_length=None,
        n_mels=64,
        top_db=80.0,
        channels=None,
        f_min=0.0,
        f_max=None,
    ):
        super().__init__()
        self.channels = channels
        self.melspec = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=n_fft,
            hop_length=hop_length,
            n_mels=n_mels,
            f_min=f_min,
            f_max=f_max,
        )
        self.to_db = torchaudio.transforms.AmplitudeToDB(
            stype="power", top_db=top_db
        )

    def forward(self, wavs):
        """Compute the spectrograms.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[batch, time]`` (mono) or ``[batch, time, channels]``.

        Returns
        -------
        torch.Tensor
            ``[batch, channels, n_mels, frames]`` in dB.
        """
        if wavs.dim() == 2:
            wavs = wavs.unsqueeze(-1)
        if self.channels is not None:
            wavs = rechannel(wavs, self.channels)
        # float32 even under mixed precision: the dB scale needs the range
        with torch.autocast(device_type=wavs.device.type, enabled=False):
            spec = self._unique_channels_mel(wavs.transpose(1, 2).float())
            return self.to_db(spec)

    def _unique_channels_mel(self, signals):
        """:meth:`_power_mel`, once for clips whose channels are all equal
        (mono up-mixed to stereo), then copied."""
        same = (signals[:, 1:] == signals[:, :1]).flatten(1).all(dim=1)
        if not bool(same.any()):
            return self._power_mel(signals)
        channels = signals.shape[1]
        mono = self._power_mel(signals[same, :1]).expand(-1, channels, -1, -1)
        if bool(same.all()):
            return mono
        spec = mono.new_empty((len(signals),) + mono.shape[1:])
        spec[same] = mono
        spec[~same] = self._power_mel(signals[~same])
        return spec

    def _power_mel(self, signals):
        """``self.melspec`` of ``[batch, channels, time]``, faster (ours, not
        torchaudio's: power as ``re² + im²``, CPU STFT in cache-sized
        chunks)."""
        sp = self.melspec.spectrogram  # power 2, not normalised, no pad
        keys = "n_fft hop_length win_length window center pad_mode onesided"
        opts = {key: getattr(sp, key) for key in keys.split()}
        flat = signals.reshape(-1, signals.shape[-1])
        chunk = flat.shape[0]
        if flat.device.type == "cpu":
            chunk = max(1, CPU_CHUNK_SAMPLES // max(flat.shape[-1], 1))
        parts = []
        for part in flat.split(chunk):
            stft = torch.stft(part, return_complex=True, **opts)
            power = torch.view_as_real(stft).square().sum(dim=-1)
            parts.append((power.mT @ self.melspec.mel_scale.fb).mT)
        mel = torch.cat(parts)
        return mel.reshape(signals.shape[:-1] + mel.shape[-2:])


class BatchStandardize(torch.nn.Module):
    """The tutorial's standardisation in training; its average in evaluation.

    In training, ``(x - x.mean()) / x.std()`` over the batch, keeping a
    running average of those statistics for evaluation (as ``BatchNorm``);
    untrained, the input's own. Not SpeechBrain's ``InputNormalization``,
    which normalises per feature. List it among the checkpointer's
    recoverables.

    Arguments
    ---------
    eps : float
        Added to the standard deviation.

    Example
    -------
    >>> norm = BatchStandardize()
    >>> round(norm(torch.randn(4, 2, 8, 8) * 3 + 1).std().item(), 2)  # training
    1.0
    >>> x = torch.randn(2, 1, 8, 8) * 3 + 1
    >>> _ = norm.eval()  # evaluation: the average of the training batches
    >>> torch.equal(norm(x)[:1], norm(x[:1]))  # each clip on its own
    True
    """

    def __init__(self, eps=1e-8):
        super().__init__()
        self.eps = eps
        self.register_buffer("running_mean", torch.zeros(()))
        self.register_buffer("running_std", torch.zeros(()))
        self.register_buffer("batches", torch.zeros((), dtype=torch.long))

    def forward(self, x, lengths=None):
        """Standardise ``x``.

        Arguments
        ---------
        x : torch.Tensor
            Any shape.
        lengths : torch.Tensor, optional
            Unused; SpeechBrain's interface.

        Returns
        -------
        torch.Tensor
            Same shape as ``x``.
        """
        if self.training or int(self.batches) == 0:
            mean, std = x.mean(), x.std()
            if self.training:
                with torch.no_grad():
                    n = self.batches.add_(1).float()
                    self.running_mean.add_((mean - self.running_mean) / n)
                    self.running_std.add_((std - self.running_std) / n)
            return (x - mean) / (std + self.eps)
        return (x - self.running_mean) / (self.running_std + self.eps)


class ClipStandardize(torch.nn.Module):
    """Standardise each clip with its own statistics (optionally per band).

    Arguments
    ---------
    per_band : bool
        Each frequency band over time and channels (cepstral mean and
        variance normalisation), or the whole clip at once.
    eps : float
        Added to the standard deviation.

    Example
    -------
    >>> x = torch.randn(2, 1, 4, 50) * 3 + torch.arange(4.0).view(1, 1, 4, 1)
    >>> out = ClipStandardize()(x)
    >>> out.mean(dim=(1, 3)).abs().max() < 1e-5
    tensor(True)
    """

    def __init__(self, per_band=True, eps=1e-5):
        super().__init__()
        self.per_band = per_band
        self.eps = eps

    def forward(self, x, lengths=None):
        """Standardise ``x``.

        Arguments
        ---------
        x : torch.Tensor
            ``[batch, channels, freq, time]``.
        lengths : torch.Tensor, optional
            Unused; SpeechBrain's interface.

        Returns
        -------
        torch.Tensor
            Same shape as ``x``.
        """
        dims = (1, 3) if self.per_band else (1, 2, 3)
        mean = x.mean(dim=dims, keepdim=True)
        std = x.std(dim=dims, keepdim=True)
        return (x - mean) / (std + self.eps)


class Log1pMelSpectrogram(torch.nn.Module):
    """``log(1 + mel(|STFT| ** power))``: ``[batch, time]`` →
    ``[batch, frames, n_mels]``.

    The features ``speechbrain/cnn14-esc50`` was trained on (SpeechBrain's
    ESC50 recipe): ``STFT``, magnitude to ``power``, mel ``Filterbank``.

    Arguments
    ---------
    sample_rate : int
        Sample rate of the input (Hz).
    n_fft : int
        FFT size.
    win_length, hop_length : float
        Window length and hop (ms).
    n_mels : int
        Number of mel bands.
    power : float
        Exponent of the STFT magnitude (0.5: square root).
    f_min : float
        Lowest frequency of the mel filters (Hz).
    f_max : float, optional
        Highest frequency of the mel filters (Hz; None: half the rate).

    Example
    -------
    >>> feats = Log1pMelSpectrogram(sample_rate=16000, n_mels=40)
    >>> feats(torch.randn(2, 16000)).shape
    torch.Size([2, 87, 40])
    """

    def __init__(
        self,
        sample_rate=16000,
        n_fft=1024,
        win_length=23.2199,
        hop_length=11.6099,
        n_mels=80,
        power=0.5,
        f_min=0.0,
        f_max=None,
    ):
        super().__init__()
        from speechbrain.processing.features import STFT, Filterbank

        self.power = power
        self.stft = STFT(
            sample_rate=sample_rate,
            n_fft=n_fft,
            win_length=win_length,
            hop_length=hop_length,
        )
        self.fbank = Filterbank(
            n_mels=n_mels,
            n_fft=n_fft,
            sample_rate=sample_rate,
            f_min=f_min,
            f_max=f_max if f_max is not None else sample_rate // 2,
            log_mel=False,
        )

    def forward(self, wavs):
        """Compute the features.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[batch, time]``.

        Returns
        -------
        torch.Tensor
            ``[batch, frames, n_mels]``.
        """
        from speechbrain.processing.features import spectral_magnitude

        magnitude = spectral_magnitude(self.stft(wavs), power=self.power)
        return torch.log1p(self.fbank(magnitude))
