"""Batched augmentations (:class:`SpecAugment`, :class:`Mixup`) and test-time
averaging over circularly shifted views (:func:`circular_views`,
:func:`average_views`).

Authors
-------
 * sb-urbansound contributors
"""

import math

import torch


def _band_masks(batch, size, max_width, device, generator=None):
    """One random band per clip, a ``[batch, size]`` bool mask (the law of
    ``torchaudio.functional.mask_along_axis``)."""
    width = torch.rand(batch, 1, device=device, generator=generator) * max_width
    start = torch.rand(batch, 1, device=device, generator=generator) * (
        size - width
    )
    start, end = start.long(), (start + width).long()
    idx = torch.arange(size, device=device).unsqueeze(0)
    return (idx >= start) & (idx < end)


class SpecAugment(torch.nn.Module):
    """Frequency and time masks filled with each clip's mean, applied batched.

    Ours, not torchaudio's masking: that fills a whole batch with one value,
    the tutorial fills each clip with its own mean.

    Arguments
    ---------
    max_mask_pct : float
        Largest mask width as a fraction of the mel bands or frames.
    n_freq_masks, n_time_masks : int
        Number of frequency and time masks per clip.

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
        """Mask ``[batch, channels, freq, time]`` (a new tensor), drawing from
        ``generator`` (default: torch's global one)."""
        batch, _, n_freq, n_time = spec.shape
        mean = spec.mean(dim=(1, 2, 3), keepdim=True)
        masked = torch.zeros(
            batch, 1, n_freq, n_time, dtype=torch.bool, device=spec.device
        )
        for _ in range(self.n_freq_masks):
            width = self.max_mask_pct * n_freq
            band = _band_masks(batch, n_freq, width, spec.device, generator)
            masked |= band[:, None, :, None]
        for _ in range(self.n_time_masks):
            width = self.max_mask_pct * n_time
            band = _band_masks(batch, n_time, width, spec.device, generator)
            masked |= band[:, None, None, :]
        return torch.where(masked, mean.expand_as(spec), spec)


class Mixup(torch.nn.Module):
    """Mix each example of a batch with another one (Zhang et al., 2018).

    ``x' = lam * x + (1 - lam) * x[perm]``, one ``lam ~ Beta(alpha, alpha)``
    per batch; :meth:`mix_loss` mixes the losses the same way.

    Arguments
    ---------
    alpha : float
        Beta distribution parameter (> 0).
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
            CPU source of the pairing and of whether to mix (not of ``lam``).

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
            The output for the mixed batch.
        targets : torch.Tensor
            The unmixed examples' targets.
        perm : torch.LongTensor
            Each example's partner, from :meth:`forward`.
        lam : float
            The weight of the example itself, from :meth:`forward`.
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
        >>> loss = Mixup.mix_loss(nll, p, y, torch.arange(4), 1.0)
        >>> torch.isclose(loss, nll(p, y))
        tensor(True)
        """
        loss = loss_fn(predictions, targets, *args)
        if lam >= 1.0:
            return loss
        return lam * loss + (1.0 - lam) * loss_fn(
            predictions, targets[perm.to(targets.device)], *args
        )


def circular_views(x, n_views, max_shift, dim=1):
    """Copies of a batch rolled by amounts spread evenly over
    ``[0, max_shift]``.

    Arguments
    ---------
    x : torch.Tensor
        ``[batch, ...]``.
    n_views : int
        The number of views (1: ``x`` itself).
    max_shift : int
        The largest roll.
    dim : int
        The dimension to roll (time).

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
