"""Classify a live stream: raw 16-bit PCM in, one JSON line per window out.

Torch-free; memory does not grow with the stream. See "Live streams" in
``docs/inference.md``.

Authors
-------
 * sb-urbansound contributors
"""

import json
import os
import sys

import numpy as np
from sb_urbansound.serving.runtime import Resampler, rechannel, top_k_labels
from sb_urbansound.serving.timeline import default_hop

#: Bytes per sample of the input (signed 16-bit).
SAMPLE_BYTES = 2
#: Largest read (bytes); ``read1`` returns what has arrived, up to this.
READ_BYTES = 1 << 16


class StreamWindows:
    """Turn blocks of raw PCM into full windows at the model's rate.

    Arguments
    ---------
    rate : int
        The input's sample rate.
    channels : int
        The input's channel count.
    sample_rate : int
        The model's sample rate.
    model_channels : int
        The model's channel count.
    num_samples : int
        The window length (model samples).
    remove_dc : bool
        Subtract each window's mean.

    Example
    -------
    >>> w = StreamWindows(8000, 1, 8000, 1, num_samples=4)
    >>> out = w.feed((np.arange(1, 8, dtype="<i2") * 1000).tobytes())
    >>> [(s, (x[:, 0] * 32768).astype(int).tolist()) for s, x in out]
    [(0, [1000, 2000, 3000, 4000]), (2, [3000, 4000, 5000, 6000])]
    >>> [(s, (x[:, 0] * 32768).astype(int).tolist()) for s, x in w.finish()]
    [(4, [5000, 6000, 7000, 0])]
    """

    def __init__(
        self,
        rate,
        channels,
        sample_rate,
        model_channels,
        num_samples,
        remove_dc=False,
    ):
        self.channels = int(channels)
        self.model_channels = int(model_channels)
        self.num_samples = int(num_samples)
        self.hop = default_hop(num_samples)
        self.remove_dc = bool(remove_dc)
        self.resampler = Resampler(rate, sample_rate)
        self.frames = 0  # input frames so far
        self._pending = b""  # bytes of an incomplete frame
        self._buffer = np.zeros((0, self.model_channels), np.float32)
        self._start = 0  # model sample where the buffer starts
        self.total = 0  # model samples so far
        self.emitted = 0  # windows given out
        self.dropped = 0  # bytes of an incomplete last frame

    def _window(self, samples):
        """One window from ``samples`` (zero-padded), DC removed if asked."""
        window = np.zeros((self.num_samples, self.model_channels), np.float32)
        window[: samples.shape[0]] = samples
        if self.remove_dc:
            window -= window.mean(axis=0, keepdims=True, dtype=np.float64)
        return window

    def _push(self, converted):
        """Add model-rate samples; return the windows now full."""
        out = []
        self.total += converted.shape[0]
        self._buffer = np.concatenate([self._buffer, converted])
        while self._buffer.shape[0] >= self.num_samples:
            window = self._window(self._buffer[: self.num_samples])
            out.append((self._start, window))
            self.emitted += 1
            self._buffer = self._buffer[self.hop :]
            self._start += self.hop
        return out

    def feed(self, data):
        """Add raw bytes; return the windows that became full.

        Arguments
        ---------
        data : bytes
            Interleaved signed 16-bit little-endian samples (any length).

        Returns
        -------
        list of (int, numpy.ndarray)
            ``(start, window)``: first model sample, ``[num_samples, C]``.
        """
        data = self._pending + data
        frame = SAMPLE_BYTES * self.channels
        usable = len(data) // frame * frame
        self._pending = data[usable:]
        if not usable:
            return []
        block = np.frombuffer(data[:usable], dtype="<i2")
        self.frames += usable // frame
        wav = block.reshape(-1, self.channels).astype(np.float32) / 32768.0
        wav = rechannel(wav, min(self.model_channels, self.channels))
        return self._push(rechannel(self.resampler(wav), self.model_channels))

    def finish(self):
        """The windows left once the input has ended (the last one padded).

        Returns
        -------
        list of (int, numpy.ndarray)
            As :meth:`feed`; an incomplete last frame's bytes go to
            :attr:`dropped`.
        """
        self.dropped = len(self._pending)
        out = self._push(rechannel(self.resampler.flush(), self.model_channels))
        if self.frames > 0 and (  # a few frames may resample to none
            self.emitted == 0
            or self._start + self.num_samples - self.hop < self.total
        ):
            out.append((self._start, self._window(self._buffer)))
            self.emitted += 1
        return out


def _window_line(start, end, probs, labels, top_k=1):
    """The JSON line of one window.

    Example
    -------
    >>> probs = np.array([0.25, 0.75])
    >>> labels = ["a", "b"]
    >>> _window_line(0.0, 1.0, probs, labels)  # doctest: +NORMALIZE_WHITESPACE
    '{"start": 0.0, "end": 1.0, "label": "b", "prob": 0.75,
    "top_k": [{"label": "b", "prob": 0.75}]}'
    """
    best = top_k_labels(probs, labels, top_k)
    line = {"start": round(float(start), 6), "end": round(float(end), 6)}
    line.update(label=best[0]["label"], prob=best[0]["prob"], top_k=best)
    return json.dumps(line, allow_nan=False)


def run_stream(scorer, rate, channels, top_k=1, infile=None, outfile=None):
    """Classify a raw PCM stream window by window.

    Arguments
    ---------
    scorer : sb_urbansound.serving.runtime.Scorer
        The model.
    rate : int
        The input's sample rate.
    channels : int
        The input's channel count.
    top_k : int
        Labels per line.
    infile : file, optional
        Binary input (default: stdin).
    outfile : file, optional
        Text output (default: stdout).

    Returns
    -------
    int
        0 at the end of the input or when the reader goes away, 130 on
        Ctrl-C, 1 if the output cannot be written.
    """
    infile = sys.stdin.buffer if infile is None else infile
    outfile = sys.stdout if outfile is None else outfile
    spec = scorer.sample_rate, scorer.channels, scorer.num_samples
    windows = StreamWindows(rate, channels, *spec, scorer.remove_dc)
    read = getattr(infile, "read1", infile.read)
    # At most a second of input per read (resampled up to 768 times)
    size = min(READ_BYTES, SAMPLE_BYTES * windows.channels * int(rate))
    sr, labels = float(scorer.sample_rate), scorer.labels

    def emit(items):
        """Score windows and print their lines."""
        for start, window in items:
            probs = scorer.window_probs(window[None])[0]
            end = min(start + windows.num_samples, max(windows.total, 1))
            line = _window_line(start / sr, end / sr, probs, labels, top_k)
            outfile.write(line + "\n")
            outfile.flush()

    try:
        while True:
            data = read(size)
            if not data:
                break
            emit(windows.feed(data))
        emit(windows.finish())
        if windows.dropped:
            print(
                "warning: the stream ended inside a frame: its last "
                f"{windows.dropped} byte(s) dropped (a frame is "
                f"{SAMPLE_BYTES * channels} bytes: 16-bit samples, {channels} "
                "channel(s))",
                file=sys.stderr,
            )
    except BrokenPipeError:
        _silence_stdout(outfile)
        return 0
    except KeyboardInterrupt:
        return 130
    except OSError as e:  # a full disk, a closed terminal
        print(f"error: cannot write the results: {e}", file=sys.stderr)
        return 1
    return 0


def _silence_stdout(outfile):
    """After a broken pipe: stdout to /dev/null (the flush at exit raises)."""
    if outfile is not sys.stdout:
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
