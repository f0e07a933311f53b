"""The tutorial's CNN, split the SpeechBrain way into an embedding model and a
classifier, so that ``EncoderClassifier`` can load a trained model.

Authors
-------
 * sb-urbansound contributors
"""

import torch


class CNNEmbedding(torch.nn.Module):
    """A stack of Conv2d → ReLU → BatchNorm blocks, then global average pooling.

    With the defaults this is the tutorial's network: four blocks of 8, 16, 32 and
    64 channels, kernels 5, 3, 3, 3, stride 2, Kaiming initialisation
    (``a=0.1``) and zero biases.

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
        How the last feature map becomes one vector: ``"avg"`` (the
        tutorial's global average), ``"max"``, ``"avgmax"`` (average and
        maximum side by side: twice the channels; a short sound in a long
        clip is not averaged away), or ``"panns"`` (mean over frequency, then
        maximum plus mean over time, as PANNs' CNN14).
    extra_convs : list of int, optional
        Per block, the number of 3x3 convolutions of stride 1 added after the
        block's own (Conv2d → ReLU → BatchNorm each, as VGG's blocks of two
        or more convolutions); default none. Each one costs about twice the
        multiply-accumulates of the block's own convolution (same
        resolution, its output channels on both sides).
    residual : bool
        Add each block's input to the output of its extra convolutions (a
        residual block, He et al. 2016); only with ``extra_convs``.

    Example
    -------
    >>> model = CNNEmbedding(in_channels=2)
    >>> model(torch.randn(3, 2, 64, 100)).shape
    torch.Size([3, 1, 64])
    >>> CNNEmbedding(in_channels=1, pooling="avgmax").output_size
    128
    >>> deeper = CNNEmbedding(in_channels=1, extra_convs=[0, 0, 1, 1])
    >>> deeper(torch.randn(3, 1, 64, 100)).shape
    torch.Size([3, 1, 64])
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
        extra_convs=None,
        residual=False,
    ):
        super().__init__()
        if pooling not in self.POOLINGS:
            raise ValueError(
                f"pooling must be one of {', '.join(self.POOLINGS)}, got "
                f"{pooling!r}"
            )
        if not len(channels) == len(kernel_sizes) == len(strides):
            raise ValueError(
                "channels, kernel_sizes and strides must have the same length, got "
                f"{list(channels)}, {list(kernel_sizes)}, {list(strides)}"
            )
        if paddings is None:
            paddings = [k // 2 for k in kernel_sizes]
        if extra_convs is None:
            extra_convs = [0] * len(channels)
        if len(extra_convs) != len(channels) or min(extra_convs) < 0:
            raise ValueError(
                "extra_convs must give a count >= 0 for each of the "
                f"{len(channels)} blocks, got {list(extra_convs)}"
            )
        if residual and not any(extra_convs):
            raise ValueError("residual needs extra_convs in some block")
        layers = []
        prev = in_channels
        for out, k, s, p, extra in zip(
            channels, kernel_sizes, strides, paddings, extra_convs, strict=True
        ):
            layers += self._conv_relu_bn(prev, out, k, s, p)
            if extra:
                more = []
                for _ in range(extra):
                    more += self._conv_relu_bn(out, out, 3, 1, 1)
                more = torch.nn.Sequential(*more)
                layers.append(Residual(more) if residual else more)
            prev = out
        self.conv = torch.nn.Sequential(*layers)
        self.pooling = pooling
        self.output_size = self.pooled_size(prev, pooling)

    @staticmethod
    def _conv_relu_bn(in_channels, out_channels, kernel, stride, padding):
        """Conv2d (Kaiming-initialised, zero bias) → ReLU → BatchNorm2d."""
        conv = torch.nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size=kernel,
            stride=stride,
            padding=padding,
        )
        torch.nn.init.kaiming_normal_(conv.weight, a=0.1)
        torch.nn.init.zeros_(conv.bias)
        return [conv, torch.nn.ReLU(), torch.nn.BatchNorm2d(out_channels)]

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
            ``2 * channels`` for ``"avgmax"``, else ``channels``.

        Example
        -------
        >>> CNNEmbedding.pooled_size(64, "avgmax")
        128
        """
        return channels * (2 if pooling == "avgmax" else 1)

    def forward(self, x, lengths=None):
        """Embed a batch of spectrograms.

        Arguments
        ---------
        x : torch.Tensor
            ``[batch, channels, freq, time]``.
        lengths : torch.Tensor, optional
            Relative lengths; unused (clips have a fixed length), kept for
            SpeechBrain's ``embedding_model(feats, lengths)`` interface.

        Returns
        -------
        torch.Tensor
            ``[batch, 1, output_size]``.
        """
        h = self.conv(x)
        if self.pooling == "avg":
            emb = h.mean(dim=(2, 3))
        elif self.pooling == "max":
            emb = h.amax(dim=(2, 3))
        elif self.pooling == "avgmax":
            emb = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        else:  # panns
            per_frame = h.mean(dim=2)
            emb = per_frame.amax(dim=2) + per_frame.mean(dim=2)
        return emb.unsqueeze(1)


class Residual(torch.nn.Module):
    """``x + layers(x)``: a residual connection around some layers.

    Arguments
    ---------
    layers : torch.nn.Module
        Layers whose output has the shape of their input.

    Example
    -------
    >>> block = Residual(torch.nn.Conv2d(4, 4, 3, padding=1))
    >>> block(torch.randn(2, 4, 8, 8)).shape
    torch.Size([2, 4, 8, 8])
    """

    def __init__(self, layers):
        super().__init__()
        self.layers = layers

    def forward(self, x):
        """``x + layers(x)``.

        Arguments
        ---------
        x : torch.Tensor
            The input.

        Returns
        -------
        torch.Tensor
            Same shape.
        """
        return x + self.layers(x)


class LinearClassifier(torch.nn.Module):
    """A linear layer on an embedding, returning log-probabilities.

    Arguments
    ---------
    input_size : int
        Size of the embedding.
    n_classes : int
        Number of classes.
    dropout : float
        Dropout probability on the embedding, in training only (0: none).

    Example
    -------
    >>> clf = LinearClassifier(64, 10, dropout=0.2)
    >>> _ = clf.eval()
    >>> clf(torch.randn(3, 1, 64)).exp().sum(-1).round()
    tensor([[1.],
            [1.],
            [1.]], grad_fn=<RoundBackward0>)
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
        """Classify embeddings.

        Arguments
        ---------
        emb : torch.Tensor
            ``[batch, 1, input_size]`` or ``[batch, input_size]``.

        Returns
        -------
        torch.Tensor
            Log-probabilities, ``[batch, 1, n_classes]`` or ``[batch, n_classes]``.
        """
        logits = self.linear(self.dropout(emb))
        return torch.nn.functional.log_softmax(logits, dim=-1)


class WeightAverage(torch.nn.Module):
    """An exponential moving average of the weights of some modules.

    After each optimizer step, :meth:`update` moves the average towards the
    current weights: ``avg = decay * avg + (1 - decay) * w``, with the decay
    ramped up as ``min(decay, (1 + n) / (10 + n))`` over the first steps
    ``n`` (the average of a few steps does not remember the random start).
    Floating-point buffers (batch-norm statistics) are averaged the same way.
    An averaged model is a smoother, usually better one than the weights of
    any single step (Polyak and Juditsky, 1992; timm's ``ModelEmaV2``).

    :meth:`swap` exchanges the averaged and the current weights in place (its
    own inverse), so that a model can be evaluated, checkpointed and
    exported with the averaged weights and then trained on; :attr:`swapped`
    says which of the two the modules hold, and is saved with the average,
    so a checkpoint taken at either moment resumes right.

    Arguments
    ---------
    modules : list of torch.nn.Module
        The modules whose weights are averaged (e.g. the embedding model and
        the classifier).
    decay : float
        The decay per optimizer step, in ``[0, 1)``: 0.99 averages over about
        the last 100 steps.

    Example
    -------
    >>> net = torch.nn.Linear(2, 1)
    >>> avg = WeightAverage([net], decay=0.9)
    >>> with torch.no_grad():
    ...     _ = net.weight.add_(1.0)
    >>> avg.update()
    >>> before = net.weight.clone()
    >>> avg.swap()  # the averaged weights, for evaluation
    >>> bool(avg.swapped), torch.equal(net.weight, before)
    (True, False)
    >>> avg.swap()  # and back, for training
    >>> bool(avg.swapped), torch.equal(net.weight, before)
    (False, True)
    """

    def __init__(self, modules, decay=0.99):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        # A plain list: the modules are not submodules of the average (their
        # weights are saved with them, not twice)
        self._averaged = list(modules)
        for key, tensor in self._pairs():
            self.register_buffer(key, tensor.detach().clone())
        self.register_buffer("n_updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("swapped", torch.zeros((), dtype=torch.bool))

    def _pairs(self):
        """``(buffer name, current tensor)`` of every averaged tensor.

        Looked up at every call: moving a module to a device replaces its
        buffers.
        """
        for i, module in enumerate(self._averaged):
            named = list(module.named_parameters()) + [
                (name, buf)
                for name, buf in module.named_buffers()
                if buf.is_floating_point()
            ]
            for name, tensor in named:
                yield f"avg_{i}_{name.replace('.', '_')}", tensor

    def _live(self):
        """``(average, current tensor)`` pairs, the average on its device."""
        for key, live in self._pairs():
            avg = getattr(self, key)
            if avg.device != live.device:
                avg = avg.to(live.device)
                setattr(self, key, avg)
            yield avg, live

    @classmethod
    def optional(cls, modules, decay=0.0):
        """An average of ``modules``' weights, or None where ``decay`` is 0.

        For a YAML key that turns the averaging off at 0.

        Arguments
        ---------
        modules : list of torch.nn.Module
            The modules whose weights are averaged.
        decay : float
            The decay per step (0: no averaging, None is returned).

        Returns
        -------
        WeightAverage or None

        Example
        -------
        >>> WeightAverage.optional([torch.nn.Linear(2, 1)], 0.0) is None
        True
        """
        return cls(modules, decay) if decay else None

    @torch.no_grad()
    def update(self):
        """One step of the average, towards the modules' current weights.

        Raises
        ------
        RuntimeError
            If the modules hold the averaged weights (after :meth:`swap`).
        """
        if self.swapped:
            raise RuntimeError("update() while the averaged weights are in")
        n = int(self.n_updates)
        decay = min(self.decay, (1.0 + n) / (10.0 + n))
        for avg, live in self._live():
            avg.lerp_(live.detach(), 1.0 - decay)
        self.n_updates += 1

    @torch.no_grad()
    def swap(self):
        """Exchanges the averaged and the current weights, in place."""
        for avg, live in self._live():
            tmp = live.detach().clone()
            live.copy_(avg)
            avg.copy_(tmp)
        self.swapped.logical_not_()
