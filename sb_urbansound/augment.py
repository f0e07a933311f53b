"""Batched augmentations, applied on the training device in training only.

* :class:`SpecAugment`: frequency and time masks filled with each clip's own
  mean, as in the tutorial, drawn for a whole batch at once.
* :class:`Mixup`: convex combinations of pairs of examples and of their
  losses, for any model and loss.
* :class:`RandomGain`, :class:`TimeStretch`, :class:`FrequencyShift` and
  :class:`BackgroundMix`: per-clip transformations of dB spectrograms (a
  level change, a speed change, a pitch-shift proxy, another clip of the
  batch mixed in underneath), cheap enough to run on every batch of the
  feature bank.
* :func:`circular_views` and :func:`average_views`: test-time averaging over
  circularly shifted views of each clip (evaluation, not training).

Authors
-------
 * sb-urbansound contributors
"""

import math

import torch


def _band_masks(batch, size, max_width, device, generator=None):
    """One random band ``[start, end)`` per clip, as a ``[batch, size]`` bool mask.

    Same law as ``torchaudio.functional.mask_along_axis``: width uniform in
    ``[0, max_width)``, start uniform in ``[0, size - width)``.
    """
    width = torch.rand(batch, 1, device=device, generator=generator) * max_width
    start = torch.rand(batch, 1, device=device, generator=generator) * (
        size - width
    )
    start, end = start.long(), (start + width).long()
    idx = torch.arange(size, device=device).unsqueeze(0)
    return (idx >= start) & (idx < end)


class SpecAugment(torch.nn.Module):
    """Frequency and time masks filled with each clip's mean, applied batched.

    The tutorial applies ``torchaudio.transforms.FrequencyMasking`` and
    ``TimeMasking`` clip by clip with ``mask_value=spec.mean()``. torchaudio's
    masking takes a single fill value for a whole batch, so this module draws
    independent masks per clip and fills each with that clip's own mean, as the
    tutorial does, in one pass over the batch. Masks are shared by a clip's
    channels, as in the tutorial.

    Arguments
    ---------
    max_mask_pct : float
        Largest mask width as a fraction of the number of mel bands (frequency
        masks) or of frames (time masks).
    n_freq_masks : int
        Number of frequency masks per clip.
    n_time_masks : int
        Number of time masks per clip.

    Example
    -------
    >>> aug = SpecAugment(max_mask_pct=0.5, n_freq_masks=2, n_time_masks=2)
    >>> spec = torch.randn(4, 2, 16, 40)
    >>> aug(spec).shape
    torch.Size([4, 2, 16, 40])
    """

    def __init__(self, max_mask_pct=0.1, n_freq_masks=1, n_time_masks=1):
        super().__init__()
        self.max_mask_pct = max_mask_pct
        self.n_freq_masks = n_freq_masks
        self.n_time_masks = n_time_masks

    def forward(self, spec, generator=None):
        """Mask a batch of spectrograms.

        Arguments
        ---------
        spec : torch.Tensor
            ``[batch, channels, freq, time]``.
        generator : torch.Generator, optional
            Source of randomness (default: torch's global generator).

        Returns
        -------
        torch.Tensor
            The masked spectrograms (a new tensor).
        """
        batch, _, n_freq, n_time = spec.shape
        mean = spec.mean(dim=(1, 2, 3), keepdim=True)
        masked = torch.zeros(
            batch, 1, n_freq, n_time, dtype=torch.bool, device=spec.device
        )
        for _ in range(self.n_freq_masks):
            band = _band_masks(
                batch,
                n_freq,
                self.max_mask_pct * n_freq,
                spec.device,
                generator,
            )
            masked |= band[:, None, :, None]
        for _ in range(self.n_time_masks):
            band = _band_masks(
                batch,
                n_time,
                self.max_mask_pct * n_time,
                spec.device,
                generator,
            )
            masked |= band[:, None, None, :]
        return torch.where(masked, mean.expand_as(spec), spec)


class Mixup(torch.nn.Module):
    """Mix each example of a batch with another one (Zhang et al., 2018).

    ``x' = lam * x + (1 - lam) * x[perm]`` with one ``lam ~ Beta(alpha,
    alpha)`` per batch and a random permutation ``perm``; the loss is mixed
    the same way, ``lam * loss(y) + (1 - lam) * loss(y[perm])``, which works
    with any loss function (see :meth:`mix_loss`). It applies to any input:
    waveforms, spectrograms or embeddings. Training only.

    Arguments
    ---------
    alpha : float
        Beta distribution parameter (> 0); 0.2-0.4 are usual values.
    prob : float
        Probability that a batch is mixed at all.

    Example
    -------
    >>> mix = Mixup(alpha=0.4)
    >>> x = torch.randn(8, 1, 16, 20)
    >>> mixed, perm, lam = mix(x)
    >>> mixed.shape, perm.shape, 0.0 <= lam <= 1.0
    (torch.Size([8, 1, 16, 20]), torch.Size([8]), True)
    """

    def __init__(self, alpha=0.2, prob=1.0):
        super().__init__()
        if not alpha > 0:
            raise ValueError(f"mixup alpha must be positive, got {alpha}")
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"mixup prob must be in [0, 1], got {prob}")
        self.alpha = float(alpha)
        self.prob = float(prob)
        self.beta = torch.distributions.Beta(self.alpha, self.alpha)

    def forward(self, x, generator=None):
        """Mix a batch.

        Arguments
        ---------
        x : torch.Tensor
            ``[batch, ...]``.
        generator : torch.Generator, optional
            Source of randomness of the pairing and of whether the batch is
            mixed (CPU; ``lam`` comes from torch's global generator).

        Returns
        -------
        mixed : torch.Tensor
            The mixed batch.
        perm : torch.LongTensor
            Each example's partner.
        lam : float
            The weight of the example itself (1.0: not mixed).
        """
        batch = x.shape[0]
        perm = torch.arange(batch, device=x.device)
        if batch < 2 or torch.rand(1, generator=generator).item() >= self.prob:
            return x, perm, 1.0
        lam = float(self.beta.sample())
        perm = torch.randperm(batch, generator=generator).to(x.device)
        return lam * x + (1.0 - lam) * x[perm], perm, lam

    @staticmethod
    def mix_loss(loss_fn, predictions, targets, perm, lam, *args):
        """The mixed loss: ``lam * loss(y) + (1 - lam) * loss(y[perm])``.

        Arguments
        ---------
        loss_fn : callable
            ``loss_fn(predictions, targets, *args)``.
        predictions : torch.Tensor
            The model's output for the mixed batch.
        targets : torch.Tensor
            ``[batch, ...]`` targets of the unmixed examples.
        perm : torch.LongTensor
            From :meth:`forward`.
        lam : float
            From :meth:`forward`.
        *args
            Passed to ``loss_fn`` (e.g. lengths).

        Returns
        -------
        torch.Tensor
            The loss.

        Example
        -------
        >>> nll = lambda p, y: torch.nn.functional.nll_loss(p, y)
        >>> p = torch.log_softmax(torch.randn(4, 3), -1)
        >>> y = torch.tensor([0, 1, 2, 0])
        >>> torch.isclose(
        ...     Mixup.mix_loss(nll, p, y, torch.arange(4), 1.0), nll(p, y)
        ... )
        tensor(True)
        """
        loss = loss_fn(predictions, targets, *args)
        if lam >= 1.0:
            return loss
        return lam * loss + (1.0 - lam) * loss_fn(
            predictions, targets[perm.to(targets.device)], *args
        )


def _per_clip(batch, prob, device, generator=None):
    """Which clips of a batch are transformed: a ``[batch]`` bool tensor."""
    if prob >= 1.0:
        return torch.ones(batch, dtype=torch.bool, device=device)
    return torch.rand(batch, device=device, generator=generator) < prob


def _uniform(batch, low, high, device, generator=None):
    """``[batch]`` values drawn uniformly in ``[low, high)``."""
    draw = torch.rand(batch, device=device, generator=generator)
    return low + (high - low) * draw


def _check_prob(prob):
    """Checks that ``prob`` is a probability."""
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"prob must be in [0, 1], got {prob}")
    return float(prob)


def resample_axis(x, positions, dim=-1, wrap=False):
    """Reads each example of a batch at fractional positions along one axis.

    Linear interpolation between the two nearest elements; positions outside
    ``[0, size - 1]`` wrap around (``wrap=True``, for circular time axes) or
    take the nearest edge (``wrap=False``).

    Arguments
    ---------
    x : torch.Tensor
        ``[batch, ...]``.
    positions : torch.Tensor
        ``[batch, n]`` positions along ``dim``, one row per example.
    dim : int
        The axis to read along (not the batch axis).
    wrap : bool
        Wrap positions around the axis instead of clamping them.

    Returns
    -------
    torch.Tensor
        ``x`` with ``dim`` replaced by the ``n`` positions.

    Example
    -------
    >>> x = torch.tensor([[0.0, 10.0, 20.0, 30.0]])
    >>> resample_axis(x, torch.tensor([[0.5, 3.5, -1.0]]), dim=1)
    tensor([[ 5., 30.,  0.]])
    >>> resample_axis(x, torch.tensor([[3.5, 4.0]]), dim=1, wrap=True)
    tensor([[15.,  0.]])
    """
    moved = x.movedim(dim, -1)
    size = moved.shape[-1]
    low = positions.floor()
    frac = (positions - low).to(moved.dtype)
    low = low.long()
    high = low + 1
    if wrap:
        low, high = low % size, high % size
    else:
        low, high = low.clamp(0, size - 1), high.clamp(0, size - 1)
    shape = (moved.shape[0],) + (1,) * (moved.dim() - 2) + (-1,)
    out_shape = moved.shape[:-1] + (positions.shape[-1],)
    low = low.view(shape).expand(out_shape)
    high = high.view(shape).expand(out_shape)
    frac = frac.view(shape)
    out = moved.gather(-1, low) * (1 - frac) + moved.gather(-1, high) * frac
    return out.movedim(-1, dim)


class RandomGain(torch.nn.Module):
    """Adds a random level in dB to each clip of a batch of dB spectrograms.

    A clip recorded closer or further away: the same sound, louder or
    quieter. With the tutorial's batch standardisation (one mean and one
    standard deviation per batch) the level of a clip relative to the others
    is part of the input, so the change is not normalised away.

    Arguments
    ---------
    max_gain_db : float
        The gain is drawn uniformly in ``[-max_gain_db, max_gain_db]`` dB per
        clip (0: no change).
    prob : float
        Probability that a clip is changed.

    Example
    -------
    >>> gain = RandomGain(max_gain_db=6.0)
    >>> feats = torch.zeros(4, 1, 16, 20)
    >>> out = gain(feats)
    >>> out.shape, bool((out.abs() <= 6.0).all())
    (torch.Size([4, 1, 16, 20]), True)
    >>> bool((out == out[:, :, :1, :1]).all())  # one level per clip
    True
    """

    def __init__(self, max_gain_db=6.0, prob=1.0):
        super().__init__()
        if not 0.0 <= max_gain_db < float("inf"):
            raise ValueError(
                f"max_gain_db must be finite and >= 0, got {max_gain_db}"
            )
        self.max_gain_db = float(max_gain_db)
        self.prob = _check_prob(prob)

    def forward(self, feats, generator=None):
        """Change the level of each clip.

        Arguments
        ---------
        feats : torch.Tensor
            ``[batch, ...]`` dB spectrograms.
        generator : torch.Generator, optional
            Source of randomness, on ``feats``' device (default: torch's
            global generator).

        Returns
        -------
        torch.Tensor
            The changed spectrograms (a new tensor, or ``feats`` itself when
            ``max_gain_db`` or ``prob`` is 0).
        """
        if self.max_gain_db == 0.0 or self.prob == 0.0:
            return feats
        batch, device = feats.shape[0], feats.device
        gain = _uniform(
            batch, -self.max_gain_db, self.max_gain_db, device, generator
        )
        gain = gain * _per_clip(batch, self.prob, device, generator)
        return feats + gain.view((batch,) + (1,) * (feats.dim() - 1))


class TimeStretch(torch.nn.Module):
    """Plays each clip of a batch of spectrograms faster or slower.

    The frame axis is resampled (linear interpolation) at a rate drawn per
    clip, log-uniformly in ``[1 / (1 + max_stretch), 1 + max_stretch]``: a
    rate of 1.25 plays the clip 25 % faster (the output's frame ``j`` is
    the input's frame ``1.25 j``, wrapping around the clip, whose training
    shift is circular too); a rate of 0.8 slows it down and drops its last
    fifth. The spectral content of each frame is kept, as in a phase-vocoder
    time stretch (Salamon and Bello, 2017), not as in a speed change, which
    would also move the pitch.

    Arguments
    ---------
    max_stretch : float
        Largest relative change of speed, in ``[0, 1]`` (0: no change).
    prob : float
        Probability that a clip is stretched.
    dim : int
        The frame axis (-1 for ``[batch, channels, n_mels, frames]``, 1 for
        SpeechBrain's ``[batch, frames, n_mels]``).

    Example
    -------
    >>> stretch = TimeStretch(max_stretch=0.25)
    >>> stretch(torch.randn(4, 1, 16, 50)).shape
    torch.Size([4, 1, 16, 50])
    """

    def __init__(self, max_stretch=0.2, prob=1.0, dim=-1):
        super().__init__()
        if not 0.0 <= max_stretch <= 1.0:
            raise ValueError(
                f"max_stretch must be in [0, 1], got {max_stretch}"
            )
        self.max_stretch = float(max_stretch)
        self.prob = _check_prob(prob)
        self.dim = dim

    def forward(self, feats, generator=None):
        """Stretch each clip.

        Arguments
        ---------
        feats : torch.Tensor
            ``[batch, ...]`` spectrograms.
        generator : torch.Generator, optional
            Source of randomness, on ``feats``' device.

        Returns
        -------
        torch.Tensor
            The stretched spectrograms, same shape.
        """
        if self.max_stretch == 0.0 or self.prob == 0.0:
            return feats
        batch, device = feats.shape[0], feats.device
        log_max = math.log1p(self.max_stretch)
        rate = _uniform(batch, -log_max, log_max, device, generator).exp()
        rate = torch.where(
            _per_clip(batch, self.prob, device, generator),
            rate,
            torch.ones_like(rate),
        )
        frames = torch.arange(feats.shape[self.dim], device=device)
        positions = frames.unsqueeze(0) * rate.unsqueeze(1)
        return resample_axis(feats, positions, dim=self.dim, wrap=True)


class FrequencyShift(torch.nn.Module):
    """Moves each clip of a batch of mel spectrograms up or down in frequency.

    A pitch-shift proxy: on the mel scale, above a few hundred hertz, a pitch
    shift by a factor is nearly a constant shift of the mel bands. Each clip
    is shifted by a random fraction of a band count drawn uniformly in
    ``[-max_shift_pct, max_shift_pct]`` of the bands (linear interpolation
    between bands); the bands shifted in from outside repeat the edge band.

    Arguments
    ---------
    max_shift_pct : float
        Largest shift as a fraction of the number of bands, in ``[0, 1)``
        (0: no change). With 64 mel bands up to 22 kHz, 0.05 is about 3
        bands, 2-3 semitones in the middle of the range.
    prob : float
        Probability that a clip is shifted.
    dim : int
        The frequency axis (-2 for ``[batch, channels, n_mels, frames]``, -1
        for SpeechBrain's ``[batch, frames, n_mels]``).

    Example
    -------
    >>> shift = FrequencyShift(max_shift_pct=0.1)
    >>> shift(torch.randn(4, 1, 16, 50)).shape
    torch.Size([4, 1, 16, 50])
    """

    def __init__(self, max_shift_pct=0.05, prob=1.0, dim=-2):
        super().__init__()
        if not 0.0 <= max_shift_pct < 1.0:
            raise ValueError(
                f"max_shift_pct must be in [0, 1), got {max_shift_pct}"
            )
        self.max_shift_pct = float(max_shift_pct)
        self.prob = _check_prob(prob)
        self.dim = dim

    def forward(self, feats, generator=None):
        """Shift each clip.

        Arguments
        ---------
        feats : torch.Tensor
            ``[batch, ...]`` spectrograms.
        generator : torch.Generator, optional
            Source of randomness, on ``feats``' device.

        Returns
        -------
        torch.Tensor
            The shifted spectrograms, same shape.
        """
        if self.max_shift_pct == 0.0 or self.prob == 0.0:
            return feats
        batch, device = feats.shape[0], feats.device
        bands = feats.shape[self.dim]
        most = self.max_shift_pct * bands
        shift = _uniform(batch, -most, most, device, generator)
        shift = shift * _per_clip(batch, self.prob, device, generator)
        positions = torch.arange(bands, device=device).unsqueeze(0)
        positions = positions - shift.unsqueeze(1)
        return resample_axis(feats, positions, dim=self.dim, wrap=False)


class BackgroundMix(torch.nn.Module):
    """Mixes another clip of the batch under each clip, keeping its label.

    Salamon and Bello (2017) mixed recorded street scenes under UrbanSound8K's
    clips; here the background of a clip is another clip of the same batch,
    at a random signal-to-background ratio: the mixture of the two powers,
    ``10 log10(10^(x / 10) + w 10^(b / 10))``, with ``w`` set so that the
    clip's mean power is ``snr_db`` above the background's. Unlike mixup, the
    label stays the foreground's: the background is quieter, as in a real
    scene. Works on dB spectrograms (``AmplitudeToDB``'s power scale).

    Arguments
    ---------
    prob : float
        Probability that a clip gets a background (0: never).
    min_snr_db : float
        Lowest ratio of the clip's mean power to the background's, in dB.
    max_snr_db : float
        Highest ratio (drawn uniformly in between).

    Example
    -------
    >>> mix = BackgroundMix(prob=1.0, min_snr_db=10.0, max_snr_db=20.0)
    >>> feats = torch.randn(4, 1, 16, 20) * 10 - 40
    >>> out = mix(feats)
    >>> out.shape, bool((out >= feats).all())  # powers only add up
    (torch.Size([4, 1, 16, 20]), True)
    """

    def __init__(self, prob=0.5, min_snr_db=5.0, max_snr_db=20.0):
        super().__init__()
        if not min_snr_db <= max_snr_db:
            raise ValueError(
                f"min_snr_db ({min_snr_db}) must not exceed max_snr_db "
                f"({max_snr_db})"
            )
        if not all(math.isfinite(v) for v in (min_snr_db, max_snr_db)):
            raise ValueError("min_snr_db and max_snr_db must be finite")
        self.prob = _check_prob(prob)
        self.min_snr_db = float(min_snr_db)
        self.max_snr_db = float(max_snr_db)

    def forward(self, feats, generator=None):
        """Mix backgrounds in.

        Arguments
        ---------
        feats : torch.Tensor
            ``[batch, ...]`` dB spectrograms (power).
        generator : torch.Generator, optional
            Source of randomness, on ``feats``' device.

        Returns
        -------
        torch.Tensor
            The mixtures in dB, same shape (``feats`` itself when nothing is
            mixed).
        """
        batch, device = feats.shape[0], feats.device
        if self.prob == 0.0 or batch < 2:
            return feats
        # A partner other than the clip itself: an offset of 1 to batch - 1
        offset = torch.randint(
            1, batch, (batch,), device=device, generator=generator
        )
        partner = (torch.arange(batch, device=device) + offset) % batch
        snr = _uniform(
            batch, self.min_snr_db, self.max_snr_db, device, generator
        )
        mixed = _per_clip(batch, self.prob, device, generator)
        dims = tuple(range(1, feats.dim()))
        # Powers relative to each clip's peak (no overflow in float32); the
        # background's weight sets the ratio of the two mean powers to snr
        peak = feats.amax(dim=dims, keepdim=True)
        power = torch.pow(10.0, (feats - peak) / 10.0)
        mean = power.mean(dim=dims)
        weight = mean / mean[partner] * torch.pow(10.0, -snr / 10.0) * mixed
        shape = (batch,) + (1,) * (feats.dim() - 1)
        total = power + weight.view(shape) * power[partner]
        return peak + 10.0 * torch.log10(total)


def circular_views(x, n_views, max_shift, dim=1):
    """Copies of a batch rolled by amounts spread evenly over ``[0, max_shift]``.

    Test-time averaging: a model scored on several circularly shifted views
    of each clip (the training shifts are circular too) and its probabilities
    averaged (:func:`average_views`) is less sensitive to where a sound sits
    in its clip.

    Arguments
    ---------
    x : torch.Tensor
        ``[batch, ...]``.
    n_views : int
        The number of views (1: ``x`` itself).
    max_shift : int
        The largest roll, in elements of dimension ``dim``.
    dim : int
        The dimension to roll (time: 1 for waveforms and SpeechBrain's
        features, -1 for ``[batch, channels, n_mels, frames]``).

    Returns
    -------
    torch.Tensor
        ``[n_views * batch, ...]``, view by view.

    Example
    -------
    >>> circular_views(torch.arange(4).view(1, 4), 3, 2).tolist()
    [[0, 1, 2, 3], [3, 0, 1, 2], [2, 3, 0, 1]]
    """
    shifts = torch.linspace(0, int(max_shift), int(n_views)).round().long()
    return torch.cat([torch.roll(x, int(s), dims=dim) for s in shifts])


def average_views(log_probs, n_views):
    """Average the probabilities of the views of :func:`circular_views`.

    Arguments
    ---------
    log_probs : torch.Tensor
        ``[n_views * batch, ...]`` log-probabilities, view by view.
    n_views : int
        The number of views.

    Returns
    -------
    torch.Tensor
        ``[batch, ...]``: the log of the mean probability over the views.

    Example
    -------
    >>> p = torch.log(torch.tensor([[0.2, 0.8], [0.6, 0.4]]))
    >>> average_views(p, 2).exp()
    tensor([[0.4000, 0.6000]])
    """
    views = log_probs.reshape(int(n_views), -1, *log_probs.shape[1:])
    return torch.logsumexp(views, dim=0) - math.log(n_views)
