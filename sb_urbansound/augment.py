"""Batched augmentations, applied on the training device in training only.

* :class:`SpecAugment`: frequency and time masks filled with each clip's own
  mean, as in the tutorial, drawn for a whole batch at once.

Authors
-------
 * sb-urbansound contributors
"""

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
