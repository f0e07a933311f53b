"""Classify audio files with a trained model (the ``model`` folder training
writes).

Prints ``path<TAB>label<TAB>probability`` per file; exit status 0 when every
file was classified, 1 otherwise, 2 for a usage error or a model folder that
cannot be loaded. See ``docs/inference.md``.

Authors
-------
 * sb-urbansound contributors
"""

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
from sb_urbansound.errors import AudioLoadError, UserError, report
from sb_urbansound.serving import timeline
from sb_urbansound.serving.runtime import (
    AUDIO_SUFFIXES,
    OnnxModel,
    Scorer,
    check_rate,
    find_audio_files,
)
from sb_urbansound.serving.stream import _silence_stdout, run_stream
from tqdm import tqdm

logger = logging.getLogger(__name__)

#: Show a progress bar from this many files on.
PROGRESS_MIN_FILES = 10


def classify_files(
    model_folder,
    paths,
    top_k=1,
    batch_size=16,
    device="cpu",
    progress=None,
    on_error=None,
    trust=False,
    backend="torch",
    segments=None,
):
    """Classify audio files (and those in folders), each on its own.

    Arguments
    ---------
    model_folder : str or Path or EncoderClassifier or OnnxModel
        The inference folder, or a model already loaded from one.
    paths : list of str or Path
        Audio files and folders (searched recursively).
    top_k : int
        Labels per file.
    batch_size : int
        Windows per forward pass (memory only).
    device : str
        For a folder: where to run it.
    progress : bool, optional
        Show a tqdm bar on stderr (default: from ``PROGRESS_MIN_FILES``).
    on_error : callable, optional
        ``on_error(path, message)`` for each file that cannot be classified
        and each folder with no audio file (default: log a warning).
    trust : bool
        Skip :mod:`sb_urbansound.serving.trust`'s check.
    backend : str
        ``"torch"`` or ``"onnx"``.
    segments : dict, optional
        Also find each file's events, with these keyword arguments of
        :func:`sb_urbansound.serving.timeline.find_segments`.

    Returns
    -------
    list of dict
        One per file: ``Scorer.classify_file``'s keys (and ``segments``,
        ``counts``), or ``path`` and ``error`` (a message).

    Example
    -------
    See ``tests/test_inference.py``.
    """
    scorer = load_scorer(model_folder, backend, device, batch_size, trust)
    folder_name = scorer.model_folder or "(a model loaded in memory)"
    items = []  # (path, message): message for a folder with no audio file
    for item in map(Path, paths):
        if not item.is_dir():  # reported when it is read, if it cannot be
            items.append((item, None))
        elif found := find_audio_files(item, duplicates=[]):
            items += [(item / rel, None) for rel in found]
        else:
            message = (
                f"{item}: no audio file in this folder or its subfolders "
                f"(looked for {', '.join(AUDIO_SUFFIXES)} files, in any case; "
                "hidden files are skipped)"
            )
            items.append((item, message))
    if progress is None:
        progress = len(items) >= PROGRESS_MIN_FILES
    on_error = on_error or (lambda path, message: logger.warning(message))
    results = []
    bar = tqdm(items, disable=not progress, unit="file", file=sys.stderr)
    for path, message in bar:
        if message is None:
            try:
                per_window, duration_s = scorer.file_window_probs(path)
            except (AudioLoadError, OSError) as e:
                while e.__cause__ is not None:
                    e = e.__cause__
                message = f"{path}: cannot be read as audio ({e})"
                if not path.is_file():
                    message = f"{path}: no such file"
            else:  # the audio is finite: the model's weights are at fault
                if not np.isfinite(per_window.mean(axis=0)).all():
                    message = (
                        f"{path}: the model gives NaN probabilities: its "
                        "weights are not finite, so it was likely trained on "
                        "bad data (clips or features with NaN or infinite "
                        "values) or its training diverged; retrain it. "
                        f"model folder: {folder_name}"
                    )
        if message is not None:
            on_error(path, message)
            results.append({"path": str(path), "error": message})
            continue
        result = scorer.summary(path, per_window, duration_s, top_k)
        if segments is not None:
            rate, labels = scorer.sample_rate, scorer.labels
            spans = timeline.window_spans(
                len(per_window), scorer.num_samples, rate, duration_s
            )
            segs = timeline.find_segments(per_window, labels, spans, **segments)
            result["segments"] = segs
            result["counts"] = timeline.count_events(segs, labels)
        results.append(result)
    return results


def load_scorer(
    model_folder, backend="torch", device="cpu", batch_size=16, trust=False
):
    """A model folder (or a loaded model) as a ``Scorer``.

    Arguments
    ---------
    model_folder : str or Path or EncoderClassifier or OnnxModel
        The inference folder, or a model already loaded.
    backend : str
        As in :func:`classify_files`.
    device : str
        As in :func:`classify_files`.
    batch_size : int
        As in :func:`classify_files`.
    trust : bool
        As in :func:`classify_files`.

    Returns
    -------
    sb_urbansound.serving.runtime.Scorer
        A ``TorchScorer`` or an ``OnnxModel``, with ``model_folder``.

    Example
    -------
    >>> load_scorer("nothing", backend="onnx")  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
     ...
    sb_urbansound.serving.runtime.ModelFileError:
    No ONNX model at nothing ...
    """
    if backend not in ("torch", "onnx"):
        raise ValueError(f"backend must be torch or onnx, got {backend!r}")
    if isinstance(model_folder, Scorer):
        return model_folder
    if backend == "onnx" and isinstance(model_folder, (str, Path)):
        scorer = OnnxModel(model_folder)
        scorer.model_folder = str(model_folder)
        return scorer
    try:  # only here: the ONNX backend runs without torch
        from sb_urbansound.serving.inference import TorchScorer, load_model
    except ImportError as e:
        raise UserError(
            f"the torch backend needs PyTorch and SpeechBrain ({e}): install "
            "them, or use --backend onnx with the folder's model.onnx"
        ) from None

    if not isinstance(model_folder, (str, Path)):  # an EncoderClassifier
        return TorchScorer(model_folder, batch_size)
    scorer = TorchScorer(load_model(model_folder, device, trust), batch_size)
    scorer.model_folder = str(model_folder)
    return scorer


@contextlib.contextmanager
def quiet_speechbrain(enabled=True):
    """Lower SpeechBrain's loggers and ``SB_LOG_LEVEL`` to WARNING meanwhile.

    Arguments
    ---------
    enabled : bool
        Whether to lower them (else do nothing).

    Yields
    ------
    None

    Example
    -------
    >>> before = os.environ.get("SB_LOG_LEVEL")
    >>> with quiet_speechbrain():
    ...     os.environ["SB_LOG_LEVEL"]
    'WARNING'
    >>> os.environ.get("SB_LOG_LEVEL") == before
    True
    """
    if not enabled:
        yield
        return
    loggers = logging.root.manager.loggerDict
    names = [n for n in loggers if n.split(".")[0] == "speechbrain"]
    levels = {name: logging.getLogger(name).level for name in names}
    env = os.environ.get("SB_LOG_LEVEL")
    os.environ["SB_LOG_LEVEL"] = "WARNING"
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        if env is None:
            os.environ.pop("SB_LOG_LEVEL", None)
        else:
            os.environ["SB_LOG_LEVEL"] = env
        for name, old in levels.items():
            logging.getLogger(name).setLevel(old)


def _format_lines(result):
    """A result's tab-separated line (path, then label/probability pairs),
    or with ``segments`` its events' lines and a count line.

    Example
    -------
    >>> r = {"path": "a.wav", "top_k": [{"label": "siren", "prob": 0.91234}]}
    >>> r["top_k"].append({"label": "dog\\tbark", "prob": 0.05})
    >>> _format_lines(r)[0].split("\\t")
    ['a.wav', 'siren', '0.9123', 'dog\\\\tbark', '0.0500']
    >>> seg = {"start": 0.0, "end": 2.5, "label": "siren", "score": 0.91}
    >>> r.update(segments=[seg], counts={"dog_bark": 0, "siren": 1})
    >>> for line in _format_lines(r):
    ...     print(line.replace("\\t", " | "))
    a.wav | 0.000 | 2.500 | siren | 0.9100
    # a.wav: 1 events: siren 1
    """
    path = _escape(result["path"])
    if "segments" not in result:
        fields = [path]
        for item in result["top_k"]:
            fields += [_escape(item["label"]), f"{item['prob']:.4f}"]
        return ["\t".join(fields)]
    lines = [
        f"{path}\t{s['start']:.3f}\t{s['end']:.3f}\t"
        f"{_escape(s['label'])}\t{s['score']:.4f}"
        for s in result["segments"]
    ]
    counts = ", ".join(
        f"{_escape(k)} {n}" for k, n in result["counts"].items() if n
    )
    summary = f"# {path}: {len(result['segments'])} events"
    lines.append(summary + (f": {counts}" if counts else ""))
    return lines


def _escape(text):
    """A field with tabs, newlines, backslashes escaped (PostgreSQL text)."""
    text = str(text).replace("\\", "\\\\")
    return text.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _write_results(results, as_json, stream):
    """Write the results: tab-separated lines, or a JSON list.

    Example
    -------
    >>> import io
    >>> out = io.StringIO()
    >>> r = {"path": "a.wav", "top_k": [{"label": "dog", "prob": 1.0}]}
    >>> _write_results([r, {"path": "b.wav", "error": "x"}], False, out)
    >>> out.getvalue()
    'a.wav\\tdog\\t1.0000\\n'
    """
    if as_json:
        # Valid JSON only: a non-finite probability is an error, never NaN
        json.dump(results, stream, indent=2, allow_nan=False)
        stream.write("\n")
    else:
        for result in results:
            if "error" not in result:
                stream.write("\n".join(_format_lines(result)) + "\n")
    stream.flush()


def add_model_options(parser, verbose_help):
    """Add the model folder and the options every command that loads one has.

    Arguments
    ---------
    parser : argparse.ArgumentParser
        The command's parser.
    verbose_help : str
        What ``-v`` shows.

    Example
    -------
    >>> parser = argparse.ArgumentParser()
    >>> add_model_options(parser, "show tracebacks")
    >>> parser.parse_args(["m", "--trust-model"]).trust_model
    True
    """
    add = parser.add_argument
    add("model_folder", help="the inference folder (<output_folder>/model)")
    add(
        "--trust-model",
        action="store_true",
        help="load a model folder whose hyperparams.yaml builds or calls "
        "more than a model needs (a model folder is code: only for folders "
        "whose origin you trust; see sb_urbansound.serving.trust)",
    )
    add("-v", "--verbose", action="store_true", help=verbose_help)


def parse_args(argv=None):
    """Parse the command line.

    Arguments
    ---------
    argv : list of str, optional
        The arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    argparse.Namespace
        One attribute per option, defaults filled in.

    Example
    -------
    >>> a = parse_args(["model", "x.wav", "dir", "--top-k", "3", "--json"])
    >>> a.model_folder, a.inputs, a.top_k, a.json, a.device
    ('model', ['x.wav', 'dir'], 3, True, 'cpu')
    >>> a = parse_args("model --stream --rate 8000 --channels 1".split())
    >>> a.stream, a.rate, a.channels, a.inputs
    (True, 8000, 1, [])
    """
    parser = argparse.ArgumentParser(
        prog="python -m sb_urbansound.serving.classify",
        description=(
            "Classify audio files with a trained sb-urbansound model: path, "
            "label and probability (tab-separated) per file; longer clips are "
            "scored over sliding windows, their probabilities averaged. Exit "
            "status: 0 if every file was classified, 1 if some could not be, 2 "
            "if the model folder cannot be loaded."
        ),
    )
    add = parser.add_argument
    add_model_options(
        parser, "show SpeechBrain's information messages (model loading)"
    )
    suffixes = "/".join(s.lstrip(".") for s in AUDIO_SUFFIXES)
    add(
        "inputs",
        nargs="*",
        help=f"audio files, or folders searched recursively for {suffixes} "
        "files (none with --stream)",
    )
    add(
        "--top-k",
        type=int,
        default=1,
        metavar="N",
        help="print the N most probable labels (default: 1)",
    )
    add(
        "--json", action="store_true", help="print a JSON list instead of lines"
    )
    add("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    add(
        "--batch-size",
        type=int,
        default=16,
        metavar="B",
        help="windows per forward pass; memory only, results do not change "
        "(default: 16)",
    )
    add(
        "--no-progress",
        dest="progress",
        action="store_false",
        help=(
            f"no progress bar (default: shown from {PROGRESS_MIN_FILES} files)"
        ),
    )
    add(
        "--backend",
        choices=["torch", "onnx"],
        default="torch",
        help="torch: PyTorch and SpeechBrain (default); onnx: the folder's "
        "model.onnx, without torch (sb_urbansound.serving.export writes it)",
    )
    add(
        "--zero-shot",
        metavar="MAP.csv",
        help="no trained model: the model folder is YAMNet's release folder "
        "(e.g. ../shared/data/yamnet) and each label scores the best of its "
        "AudioSet classes, from MAP.csv's 'label,AudioSet class name' rows "
        "(e.g. recipes/UrbanSound8k/SoundClassification/zero_shot_map.csv)",
    )
    live = parser.add_argument_group(
        "live stream",
        "read raw signed 16-bit little-endian PCM from standard input, as "
        "arecord/sox/ffmpeg write it, and print one JSON line per hop",
    ).add_argument
    live("--stream", action="store_true", help="classify stdin")
    live("--rate", type=int, help="the stream's sample rate (1000 to 768000)")
    live("--channels", type=int, help="its channel count")
    event = parser.add_argument_group(
        "event timeline",
        "print each file's events (start, end, label, score) from its "
        "windows' probabilities, and their count per class",
    ).add_argument
    event("--segments", action="store_true", help="find events in each file")
    event(
        "--threshold",
        type=float,
        help="lowest probability for a class to be present (default: 0.5)",
    )
    for flag, what in (
        ("--min-duration", "drop events shorter than S seconds"),
        ("--merge-gap", "merge events of a class at most S seconds apart"),
    ):
        event(flag, type=float, metavar="S", help=f"{what} (default: 0)")
    args = parser.parse_intermixed_args(argv)  # files before or after options
    if args.top_k < 1:
        parser.error("--top-k must be at least 1")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.zero_shot and args.backend != "torch":
        parser.error("--zero-shot runs YAMNet with torch: no --backend onnx")
    if args.stream:
        if args.inputs:
            parser.error("--stream reads standard input: give no files")
        if args.rate is None or args.channels is None:
            parser.error("--stream needs --rate and --channels")
        if args.channels < 1:
            parser.error("--channels must be at least 1")
        if args.segments or args.json:
            parser.error("--stream prints JSON lines; no --segments or --json")
    else:
        if not args.inputs:
            parser.error("give audio files or folders (or --stream)")
        if args.rate is not None or args.channels is not None:
            parser.error("--rate and --channels describe a --stream")
    segment_options = ("threshold", "min_duration", "merge_gap")
    flags = {k: f"--{k.replace('_', '-')}" for k in segment_options}
    given = [flags[k] for k in segment_options if getattr(args, k) is not None]
    if given and not args.segments:
        parser.error(", ".join(given) + " only apply with --segments")
    args.threshold = 0.5 if args.threshold is None else args.threshold
    args.min_duration = args.min_duration or 0.0
    args.merge_gap = args.merge_gap or 0.0
    if not 0.0 <= args.threshold <= 1.0:
        parser.error("--threshold must be between 0 and 1")
    for key in ("min_duration", "merge_gap"):
        if not getattr(args, key) >= 0:  # NaN too
            parser.error(
                f"{flags[key]} must be a number of seconds >= 0, "
                f"got {getattr(args, key)}"
            )
    return args


def main(argv=None):
    """Run the command line.

    Arguments
    ---------
    argv : list of str, optional
        The arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status (see the module docstring).

    Example
    -------
    >>> main(["no/such/model", "x.wav"])
    2
    """
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    with quiet_speechbrain(enabled=not args.verbose):
        return _classify(args)


def _classify(args):
    """The command's work, for :func:`main`; returns the exit status."""
    try:
        if args.stream:
            check_rate(args.rate, "--rate")
        if args.zero_shot:
            from sb_urbansound.training.yamnet import ZeroShot

            model = ZeroShot(args.model_folder, args.zero_shot)
        else:
            options = args.backend, args.device, args.batch_size
            model = load_scorer(args.model_folder, *options, args.trust_model)
    except (UserError, FileNotFoundError) as e:
        report(e)
        return 2
    except Exception as e:  # SpeechBrain's, for a folder that passed the checks
        if args.verbose:
            raise
        print(
            f"error: cannot load the model in {args.model_folder}: "
            f"{type(e).__name__}: {e} (-v shows the traceback)",
            file=sys.stderr,
        )
        return 2
    if args.stream:
        return run_stream(model, args.rate, args.channels, args.top_k)
    keys = ("threshold", "min_duration", "merge_gap")
    segments = {k: getattr(args, k) for k in keys} if args.segments else None
    results = classify_files(
        model,
        args.inputs,
        top_k=args.top_k,
        batch_size=args.batch_size,
        progress=None if args.progress else False,
        on_error=lambda _, msg: tqdm.write(f"error: {msg}", file=sys.stderr),
        segments=segments,
    )
    try:
        _write_results(results, args.json, sys.stdout)
    except BrokenPipeError:  # the reader went away (``| head``)
        _silence_stdout(sys.stdout)
        return 0
    except OSError as e:
        print(f"error: cannot write the results: {e}", file=sys.stderr)
        return 1
    failed = sum("error" in result for result in results)
    if failed:
        print(
            f"{failed} of {len(results)} files could not be classified",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
