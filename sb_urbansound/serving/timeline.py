"""The time axis of a recording: sliding windows and event timelines.

Torch-free (numpy only), so the PyTorch path and the runtime share one
definition of windows and segments (``docs/inference.md``, "Event timelines").

Authors
-------
 * sb-urbansound contributors
"""

import math

import numpy as np


def default_hop(num_samples):
    """The hop between windows: half a window (at least one sample).

    Arguments
    ---------
    num_samples : int

    Returns
    -------
    int

    Example
    -------
    >>> default_hop(16000), default_hop(1)
    (8000, 1)
    """
    return max(int(num_samples) // 2, 1)


def window_count(length, num_samples):
    """How many windows cover a clip of ``length`` samples.

    Arguments
    ---------
    length, num_samples : int
        The clip length and the window length (samples).

    Returns
    -------
    int

    Example
    -------
    >>> window_count(3, 4), window_count(10, 4), window_count(11, 4)
    (1, 4, 5)
    """
    extra = max(length - int(num_samples), 0)
    return 1 + math.ceil(extra / default_hop(num_samples))


def sliding_windows(wav, num_samples):
    """Cut a clip (time first) into windows of ``num_samples``, one every
    hop until one reaches the end; the last is zero-padded. Views of the
    (padded) clip: read-only for an array, a tensor for a tensor.

    Arguments
    ---------
    wav : numpy.ndarray or torch.Tensor
        ``[time]`` or ``[time, channels]``.
    num_samples : int

    Returns
    -------
    numpy.ndarray or torch.Tensor
        ``[n_windows, num_samples(, channels)]``.

    Example
    -------
    >>> sliding_windows(np.arange(10), 4).tolist()
    [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7], [6, 7, 8, 9]]
    >>> sliding_windows(np.ones((3, 2)), 4).shape
    (1, 4, 2)
    """
    num_samples = int(num_samples)
    hop = default_hop(num_samples)
    n = window_count(wav.shape[0], num_samples)
    total = (n - 1) * hop + num_samples
    tensor = not isinstance(wav, np.ndarray)
    array = wav.detach().cpu().numpy() if tensor else wav  # no copy on CPU
    if array.shape[0] != total:  # total >= length: pad with zeros
        pad = [(0, total - array.shape[0])] + [(0, 0)] * (array.ndim - 1)
        array = np.pad(array, pad)
    windows = np.lib.stride_tricks.sliding_window_view(
        array, num_samples, 0, writeable=tensor
    )[::hop]  # [n, (channels,) num_samples]
    windows = np.moveaxis(windows, -1, 1)  # [n, num_samples(, channels)]
    if not tensor:
        return windows
    import torch  # only for a tensor: the module stays torch-free

    return torch.from_numpy(windows).to(wav.device)


def window_spans(n_windows, num_samples, sample_rate, duration_s):
    """The stretch each window speaks for (seconds): the hop around its
    centre, from 0 for the first to ``duration_s`` for the last.

    Arguments
    ---------
    n_windows : int
        The number of windows.
    num_samples : int
        The window length (samples).
    sample_rate : int
        The model's sample rate.
    duration_s : float

    Returns
    -------
    numpy.ndarray
        ``[n_windows, 2]``: start and end of each stretch.

    Example
    -------
    >>> window_spans(3, 4, 1, 8.0).tolist()
    [[0.0, 3.0], [3.0, 5.0], [5.0, 8.0]]
    """
    hop = default_hop(num_samples)
    centres = np.arange(n_windows) * hop + num_samples / 2
    spans = np.stack([centres - hop / 2, centres + hop / 2], axis=1)
    spans = np.minimum(spans / float(sample_rate), float(duration_s))
    spans[0, 0] = 0.0
    spans[-1, 1] = float(duration_s)
    return spans


def find_segments(
    probs, labels, spans, threshold=0.5, min_duration=0.0, merge_gap=0.0
):
    """Turn per-window class probabilities into events: a class is present
    where its probability reaches ``threshold``; runs at most ``merge_gap``
    s apart merge, events shorter than ``min_duration`` s are dropped; an
    event's score is its class's mean probability over its windows.

    Arguments
    ---------
    probs : numpy.ndarray
    labels : list of str
    spans : numpy.ndarray
        From :func:`window_spans`.
    threshold : float
        The probability at which a class is present.
    min_duration : float
        Events shorter than this (s) are dropped.
    merge_gap : float
        Runs at most this far apart (s) merge.

    Returns
    -------
    list of dict
        ``{"start", "end", "label", "score"}``, by start time (then label).

    Example
    -------
    >>> p = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.9, 0.1]])
    >>> spans = window_spans(4, 2, 1, 5.0)
    >>> for s in find_segments(p, ["a", "b"], spans):
    ...     print(s["start"], s["end"], s["label"], round(s["score"], 2))
    0.0 2.5 a 0.85
    2.5 3.5 b 0.7
    3.5 5.0 a 0.9
    >>> len(find_segments(p, ["a", "b"], spans, merge_gap=1.0))
    2
    """
    probs = np.asarray(probs, dtype=np.float64)
    events = []
    for c, label in enumerate(labels):
        runs = []  # [first window, last window]
        for k in np.flatnonzero(probs[:, c] >= threshold):
            if runs and (
                k == runs[-1][1] + 1
                or spans[k, 0] - spans[runs[-1][1], 1] <= merge_gap
            ):
                runs[-1][1] = k
            else:
                runs.append([k, k])
        for first, last in runs:
            held = probs[first : last + 1, c]
            held = held[held >= threshold]  # windows merged across a gap
            start, end = spans[first, 0], spans[last, 1]
            if end - start < min_duration:
                continue
            start, end = round(float(start), 6), round(float(end), 6)
            score = float(held.mean())
            events.append(dict(start=start, end=end, label=label, score=score))
    events.sort(key=lambda e: (e["start"], e["label"]))
    return events


def count_events(segments, labels):
    """How many events of each class.

    Arguments
    ---------
    segments : list of dict
    labels : list of str
        Classes to list even when they have no event.

    Returns
    -------
    dict

    Example
    -------
    >>> count_events([{"label": "b"}, {"label": "b"}], ["a", "b"])
    {'a': 0, 'b': 2}
    """
    counts = dict.fromkeys(labels, 0)
    for seg in segments:
        counts[seg["label"]] = counts.get(seg["label"], 0) + 1
    return counts
