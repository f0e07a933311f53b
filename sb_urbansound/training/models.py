"""The tutorial's CNN as a SpeechBrain embedding model and classifier.

Authors
-------
 * sb-urbansound contributors
"""

import torch


class CNNEmbedding(torch.nn.Module):
    """Conv2d → ReLU → BatchNorm blocks, then global pooling (the tutorial's).

    Arguments
    ---------
    in_channels : int
        Channels of the input spectrogram (the audio's channel count).
    channels : list of int
        Output channels of each block.
    kernel_sizes : list of int
        Kernel size of each block.
    strides : list of int
        Stride of each block.
    paddings : list of int, optional
        Padding of each block (default: ``kernel_size // 2``).
    pooling : str
        ``"avg"`` (the tutorial's), ``"max"``, ``"avgmax"`` (both side by side:
        twice the channels) or ``"panns"`` (mean over frequency, then maximum
        plus mean over time, as PANNs' CNN14).

    Example
    -------
    >>> model = CNNEmbedding(in_channels=2)
    >>> model(torch.randn(3, 2, 64, 100)).shape
    torch.Size([3, 1, 64])
    >>> CNNEmbedding(in_channels=1, pooling="avgmax").output_size
    128
    """

    POOLINGS = ("avg", "max", "avgmax", "panns")

    def __init__(
        self,
        in_channels=2,
        channels=(8, 16, 32, 64),
        kernel_sizes=(5, 3, 3, 3),
        strides=(2, 2, 2, 2),
        paddings=None,
        pooling="avg",
    ):
        super().__init__()
        if pooling not in self.POOLINGS:
            raise ValueError(
                f"pooling must be one of {', '.join(self.POOLINGS)}, got "
                f"{pooling!r}"
            )
        if not len(channels) == len(kernel_sizes) == len(strides):
            raise ValueError(
                "channels, kernel_sizes and strides must have the same length, "
                f"got {list(channels)}, {list(kernel_sizes)}, {list(strides)}"
            )
        if paddings is None:
            paddings = [k // 2 for k in kernel_sizes]
        layers, prev = [], in_channels
        for out, k, s, p in zip(
            channels, kernel_sizes, strides, paddings, strict=True
        ):
            conv = torch.nn.Conv2d(prev, out, k, s, p)
            torch.nn.init.kaiming_normal_(conv.weight, a=0.1)
            torch.nn.init.zeros_(conv.bias)
            layers += [conv, torch.nn.ReLU(), torch.nn.BatchNorm2d(out)]
            prev = out
        self.conv = torch.nn.Sequential(*layers)
        self.pooling = pooling
        self.output_size = self.pooled_size(prev, pooling)

    @staticmethod
    def pooled_size(channels, pooling="avg"):
        """The embedding size of a last block of ``channels`` with ``pooling``.

        Arguments
        ---------
        channels : int
            Output channels of the last conv block.
        pooling : str
            One of :attr:`POOLINGS`.

        Returns
        -------
        int

        Example
        -------
        >>> CNNEmbedding.pooled_size(64, "avgmax")
        128
        """
        return channels * (2 if pooling == "avgmax" else 1)

    def forward(self, x, lengths=None):
        """``[batch, channels, freq, time]`` → ``[batch, 1, output_size]``;
        ``lengths`` is ignored (clips have a fixed length)."""
        h = self.conv(x)
        if self.pooling == "panns":
            per_frame = h.mean(dim=2)
            return (per_frame.amax(dim=2) + per_frame.mean(dim=2)).unsqueeze(1)
        parts = [h.mean(dim=(2, 3))] if "avg" in self.pooling else []
        if "max" in self.pooling:
            parts.append(h.amax(dim=(2, 3)))
        return torch.cat(parts, dim=1).unsqueeze(1)


class LinearClassifier(torch.nn.Module):
    """A linear layer on an embedding, returning log-probabilities.

    Arguments
    ---------
    input_size : int
        Size of the embedding.
    n_classes : int
        Number of classes.
    dropout : float
        Dropout probability on the embedding (0: none).

    Example
    -------
    >>> clf = LinearClassifier(64, 10, dropout=0.2).eval()
    >>> clf(torch.randn(3, 1, 64)).exp().sum(-1).allclose(torch.ones(3, 1))
    True
    """

    def __init__(self, input_size=64, n_classes=10, dropout=0.0):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        # No parameters: the state dict is the same with or without dropout
        self.dropout = (
            torch.nn.Dropout(dropout) if dropout > 0 else torch.nn.Identity()
        )
        self.linear = torch.nn.Linear(input_size, n_classes)

    def forward(self, emb):
        """Embeddings ``[batch, (1,) input_size]`` → log-probabilities."""
        logits = self.linear(self.dropout(emb))
        return torch.nn.functional.log_softmax(logits, dim=-1)
