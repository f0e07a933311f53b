"""Batched augmentations, applied on the training device in training only.

* :class:`SpecAugment`: frequency and time masks filled with each clip's own
  mean, as in the tutorial, drawn for a whole batch at once.
* :class:`Mixup`: convex combinations of pairs of examples and of their
  losses, for any model and loss.
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
