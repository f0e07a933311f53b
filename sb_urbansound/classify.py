"""Classify audio files with a trained model (the ``model`` folder training writes).

Usage::

    python -m sb_urbansound.classify MODEL_FOLDER FILE_OR_FOLDER... \\
        [--top-k N] [--json] [--device cpu] [--batch-size 16] [--no-progress] [-v]

Folders are searched recursively for ``.wav``, ``.flac`` and ``.ogg`` files (in
sorted order); files named on the command line are read whatever their suffix.
Each file is read (:func:`sb_urbansound.audio.load_audio`), converted to the
model's sample rate and channels as in training, cut into windows of the
training duration (hop: half a window; the last window zero-padded as in
evaluation; a short clip is one padded window), and the windows' class
probabilities are averaged (see :func:`sb_urbansound.inference.classify_waveform`).

Output: one line per file on stdout, ``path<TAB>label<TAB>probability`` (with
``--top-k N``: N label/probability pairs, most probable first); with ``--json``
a JSON list of objects instead (``path``, ``label``, ``prob``, ``top_k``,
``n_windows``, ``duration_s``; a file that could not be classified has
``path`` and ``error`` only). A file that cannot be read, a folder with no
audio file, and a file whose probabilities are not finite (a model with NaN
weights) are reported on stderr and the others are still classified; the exit
status is then 1 (0 when every file was classified, 2 for a usage error or a
model folder that cannot be loaded: missing, a training output folder instead
of its ``model`` folder, or a checkpoint file missing). The JSON output is
always valid JSON (no ``NaN``). A progress bar goes to stderr when there are
many files.

Authors
-------
 * sb-urbansound contributors
"""

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import torch
from sb_urbansound.audio import (
    AUDIO_SUFFIXES,
    ClipConditioner,
    find_audio_files,
    load_audio,
)
from sb_urbansound.errors import AudioLoadError, UserError
from sb_urbansound.inference import (
    classify_waveform,
    load_model,
    model_audio_spec,
    top_k_labels,
)
from tqdm import tqdm

logger = logging.getLogger(__name__)

#: Show a progress bar from this many files on.
PROGRESS_MIN_FILES = 10


def expand_inputs(inputs):
    """Expand files and folders into a list of audio files.

    A folder is searched recursively with
    :func:`sb_urbansound.audio.find_audio_files`; any other input is kept as
    it is, in order (a missing file is then reported when it is classified).

    Arguments
    ---------
    inputs : list of str or Path
        Files and folders.

    Returns
    -------
    list of Path
        The files, in input order.

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> for name in ["b/2.flac", "b/1.WAV", "b/notes.txt", "a.mp3"]:
    ...     (tmp / name).parent.mkdir(exist_ok=True)
    ...     _ = (tmp / name).write_bytes(b"")
    >>> found = expand_inputs([tmp / "b", tmp / "a.mp3"])
    >>> [p.relative_to(tmp).as_posix() for p in found]
    ['b/1.WAV', 'b/2.flac', 'a.mp3']
    """
    files = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            found = find_audio_files(item, duplicates=[])
            files += [item / rel for rel in found]
        else:
            files.append(item)
    return files


def classify_files(
    model_folder,
    paths,
    top_k=1,
    batch_size=16,
    device="cpu",
    progress=None,
    on_error=None,
    trust=False,
):
    """Classify audio files (and the audio files in folders) with a trained model.

    Each file is classified on its own: its sliding windows form one batch (see
    :func:`sb_urbansound.inference.classify_waveform`), so a file's result does
    not depend on the other files.

    Arguments
    ---------
    model_folder : str or Path or EncoderClassifier
        The inference folder (``<output_folder>/model``), or a model already
        loaded from one.
    paths : list of str or Path
        Audio files and folders (searched recursively, see
        :func:`find_audio_files`).
    top_k : int
        How many labels to return per file.
    batch_size : int
        Windows per forward pass (memory only).
    device : str
        Where to run the model, when ``model_folder`` is a folder.
    progress : bool, optional
        Show a tqdm bar on stderr (default: when there are at least
        ``PROGRESS_MIN_FILES`` files).
    on_error : callable, optional
        Called as ``on_error(path, message)`` for each file that cannot be
        classified and each folder with no audio file (default: log a
        warning).
    trust : bool
        Load a model folder whose ``hyperparams.yaml`` builds or calls
        anything (see :mod:`sb_urbansound.trust`).

    Returns
    -------
    list of dict
        One per file, in order: ``path`` (str), ``label`` and ``prob`` (the most
        probable class), ``top_k`` (list of ``{"label", "prob"}``),
        ``n_windows`` and ``duration_s``; or ``path`` and ``error`` (a message)
        for a file that could not be read or whose probabilities are not
        finite, and for a folder with no audio file.

    Example
    -------
    See ``tests/test_inference.py``; from the command line,
    ``python -m sb_urbansound.classify results/cnn/1234/model clip.wav``.
    """
    if _is_path(model_folder):
        model = load_model(model_folder, device, trust=trust)
        folder_name = str(model_folder)
    else:
        model = model_folder
        folder_name = getattr(model, "model_folder", None)
    sample_rate, channels, num_samples = model_audio_spec(model)
    remove_dc = bool(getattr(model.hparams, "remove_dc", False))
    normalizer = ClipConditioner(sample_rate, channels, remove_dc=remove_dc)
    items = []  # (path, message): message for an input with no audio file
    for item in paths:
        found = expand_inputs([item])
        if found:
            items += [(path, None) for path in found]
        else:  # a folder (a file is kept, and reported if it cannot be read)
            items.append((Path(item), describe_empty_folder(item)))
    if progress is None:
        progress = len(items) >= PROGRESS_MIN_FILES
    if on_error is None:

        def on_error(path, message):
            """Log a file that could not be classified."""
            logger.warning("%s", message)

    results = []

    def fail(path, message):
        """Record a file that could not be classified."""
        on_error(path, message)
        results.append({"path": str(path), "error": message})

    bar = tqdm(items, disable=not progress, unit="file", file=sys.stderr)
    for path, message in bar:
        if message is not None:
            fail(path, message)
            continue
        try:
            wav, rate = load_audio(path)
        except (AudioLoadError, OSError) as e:
            fail(path, describe_load_error(path, e))
            continue
        wav = normalizer.convert(wav, rate)
        probs, n_windows = classify_waveform(
            model, wav, num_samples, None, batch_size
        )
        if not bool(torch.isfinite(probs).all()):
            fail(path, describe_nan_model(path, folder_name))
            continue
        best = top_k_labels(model, probs, top_k)
        results.append(
            {
                "path": str(path),
                "label": best[0][0],
                "prob": best[0][1],
                "top_k": [{"label": lab, "prob": p} for lab, p in best],
                "n_windows": n_windows,
                "duration_s": wav.shape[0] / sample_rate,
            }
        )
    return results


def describe_load_error(path, error):
    """A one-line message naming a file that could not be read, and why.

    Arguments
    ---------
    path : str or Path
        The file.
    error : Exception
        What reading it raised.

    Returns
    -------
    str
        ``"<path>: no such file"`` or ``"<path>: cannot be read as audio (<why>)"``.

    Example
    -------
    >>> describe_load_error("no/such.wav", AudioLoadError("not found"))
    'no/such.wav: no such file'
    """
    if not Path(path).is_file():
        return f"{path}: no such file"
    cause = error
    while cause.__cause__ is not None:
        cause = cause.__cause__
    return f"{path}: cannot be read as audio ({cause})"


def describe_empty_folder(folder):
    """The message for a folder in which no audio file was found.

    Arguments
    ---------
    folder : str or Path
        The folder.

    Returns
    -------
    str
        A one-line message naming the folder and the suffixes looked for.

    Example
    -------
    >>> describe_empty_folder("clips")
    'clips: no audio file in this folder or its subfolders (looked for .wav, .flac, .ogg files, in any case; hidden files are skipped)'
    """
    suffixes = ", ".join(AUDIO_SUFFIXES)
    return (
        f"{folder}: no audio file in this folder or its subfolders (looked for "
        f"{suffixes} files, in any case; hidden files are skipped)"
    )


def describe_nan_model(path, model_folder):
    """The message for a file whose class probabilities are not finite.

    The audio that :func:`~sb_urbansound.audio.load_audio` returns is always
    finite, so the model is at fault: its weights (or normalisation
    statistics) are NaN or infinite, as after training on bad data.

    Arguments
    ---------
    path : str or Path
        The file.
    model_folder : str or Path or None
        The model folder (None: unknown).

    Returns
    -------
    str
        A one-line message naming the file and the model folder.

    Example
    -------
    >>> describe_nan_model("a.wav", "run/model")  # doctest: +ELLIPSIS
    'a.wav: the model gives NaN probabilities: ... model folder: run/model'
    """
    if model_folder is None:
        model_folder = "(a model loaded in memory)"
    return (
        f"{path}: the model gives NaN probabilities: its weights are not "
        "finite, so it was likely trained on bad data (clips or features with "
        "NaN or infinite values) or its training diverged; retrain it. "
        f"model folder: {model_folder}"
    )


def _quiet_speechbrain(level=logging.WARNING):
    """Lower SpeechBrain's loggers (INFO by default) to ``level``."""
    os.environ["SB_LOG_LEVEL"] = logging.getLevelName(level)
    for name in list(logging.root.manager.loggerDict):
        if name == "speechbrain" or name.startswith("speechbrain."):
            logging.getLogger(name).setLevel(level)


def _is_path(obj):
    """Whether ``obj`` names a folder (rather than being a loaded model)."""
    return isinstance(obj, (str, Path))


def format_line(result):
    """One tab-separated output line: path, then label/probability pairs.

    A tab, newline or backslash inside a path or label is written as ``\\t``,
    ``\\n`` or ``\\\\`` (as in PostgreSQL's text format), so every line has its
    fields.

    Arguments
    ---------
    result : dict
        A successful result of :func:`classify_files`.

    Returns
    -------
    str
        ``path\\tlabel\\tprob[\\tlabel\\tprob...]``, probabilities with 4 decimals.

    Example
    -------
    >>> r = {
    ...     "path": "a.wav",
    ...     "top_k": [
    ...         {"label": "siren", "prob": 0.91234},
    ...         {"label": "car_horn", "prob": 0.05},
    ...     ],
    ... }
    >>> format_line(r).split("\\t")
    ['a.wav', 'siren', '0.9123', 'car_horn', '0.0500']
    >>> r["top_k"] = [{"label": "dog\\tbark", "prob": 1.0}]
    >>> format_line(r).split("\\t")
    ['a.wav', 'dog\\\\tbark', '1.0000']
    """
    fields = [_escape(result["path"])]
    for item in result["top_k"]:
        fields += [_escape(item["label"]), f"{item['prob']:.4f}"]
    return "\t".join(fields)


def _escape(text):
    """A field of a tab-separated line, with its special characters escaped."""
    text = str(text).replace("\\", "\\\\")
    return text.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def write_results(results, as_json, stream):
    """Write the results: tab-separated lines, or a JSON list.

    Arguments
    ---------
    results : list of dict
        From :func:`classify_files`.
    as_json : bool
        A JSON list (failed files included, with their ``error``) instead of
        one line per classified file.
    stream : file
        Where to write; it is flushed, so a full disk is reported here.

    Example
    -------
    >>> import io
    >>> out = io.StringIO()
    >>> r = {"path": "a.wav", "top_k": [{"label": "dog", "prob": 1.0}]}
    >>> write_results([r, {"path": "b.wav", "error": "x"}], False, out)
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
                stream.write(format_line(result) + "\n")
    stream.flush()


def parse_args(argv=None):
    """Parse the command line (see the module docstring).

    Arguments
    ---------
    argv : list of str, optional
        The arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    argparse.Namespace
        ``model_folder``, ``inputs``, ``top_k``, ``json``, ``device``,
        ``batch_size``, ``verbose``, ``progress``.

    Example
    -------
    >>> a = parse_args(["model", "x.wav", "dir", "--top-k", "3", "--json"])
    >>> a.model_folder, a.inputs, a.top_k, a.json, a.device
    ('model', ['x.wav', 'dir'], 3, True, 'cpu')
    """
    parser = argparse.ArgumentParser(
        prog="python -m sb_urbansound.classify",
        description=(
            "Classify audio files with a trained sb-urbansound model. Prints "
            "path, label and probability (tab-separated) per file. Clips longer "
            "than the training duration are scored over sliding windows (hop: "
            "half a window) and the window probabilities averaged. Exit status: 0 "
            "if every file was classified, 1 if some could not be (unreadable "
            "file, folder without audio, NaN probabilities), 2 if the model "
            "folder cannot be loaded."
        ),
    )
    parser.add_argument(
        "model_folder", help="the inference folder (<output_folder>/model)"
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        help="audio files, or folders searched recursively for "
        + "/".join(s.lstrip(".") for s in AUDIO_SUFFIXES)
        + " files",
    )
    parser.add_argument(
        "--top-k",
        type=int,
        default=1,
        metavar="N",
        help="print the N most probable labels (default: 1)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print a JSON list instead of lines"
    )
    parser.add_argument(
        "--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=16,
        metavar="B",
        help="windows per forward pass; memory only, results do not change "
        "(default: 16)",
    )
    parser.add_argument(
        "--trust-model",
        action="store_true",
        help="load a model folder whose hyperparams.yaml builds or calls "
        "more than a model needs (a model folder is code: only for folders "
        "whose origin you trust; see sb_urbansound.trust)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show SpeechBrain's information messages (model loading)",
    )
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help=f"no progress bar (default: shown from {PROGRESS_MIN_FILES} files)",
    )
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error("--top-k must be at least 1")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    return args


def main(argv=None):
    """Run the command line; return the exit status.

    Arguments
    ---------
    argv : list of str, optional
        The arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 if every file was classified, 1 if some could not be (see
        :func:`classify_files`), 2 if the model folder could not be loaded.

    Example
    -------
    >>> main(["no/such/model", "x.wav"])
    2
    """
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    if not args.verbose:
        _quiet_speechbrain()
    failed = []

    def report(path, message):
        """Print a file that could not be classified to stderr."""
        failed.append(path)
        tqdm.write(f"error: {message}", file=sys.stderr)

    try:
        model = load_model(args.model_folder, args.device, args.trust_model)
    except (UserError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
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
    results = classify_files(
        model,
        args.inputs,
        top_k=args.top_k,
        batch_size=args.batch_size,
        progress=None if args.progress else False,
        on_error=report,
    )
    try:
        write_results(results, args.json, sys.stdout)
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, and keep Python
        # from reporting the failed flush of stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        print(f"error: cannot write the results: {e}", file=sys.stderr)
        return 1
    if failed:
        print(
            f"{len(failed)} of {len(results)} files could not be classified",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
