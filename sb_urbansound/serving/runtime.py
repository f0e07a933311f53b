"""A runtime without torch: read, condition and classify audio with
``model.onnx``.

Of this package only torch-free modules are imported. Audio takes
training's steps (``docs/inference.md``, "Without torch")::

    model = OnnxModel("results/cnn/1234/model")  # or ".../model.onnx"
    result = model.classify_file("dog.wav", top_k=3)

Authors
-------
 * sb-urbansound contributors
"""

import json
import logging
import math
import os
import stat
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from sb_urbansound.errors import AudioLoadError, UserError
from sb_urbansound.serving.timeline import sliding_windows
from sb_urbansound.yaml_reader import read_yaml

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
CHUNK_WINDOWS = 16  # windows per run (memory only)
REQUIRED_METADATA = ("labels", "sample_rate", "channels", "num_samples")
MIN_RATE, MAX_RATE = 1000, 768000  # Hz, of every file, stream and model
RESAMPLE_QUALITY = "HQ"
#: The resampler, as stores of resampled clips record it (bank, shards).
RESAMPLER = f"soxr {soxr.__libsoxr_version__} {RESAMPLE_QUALITY}"


#: Audio suffixes looked for in folders (any case): what soundfile decodes.
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


def find_audio_files(folder, suffixes=AUDIO_SUFFIXES, duplicates=None):
    """The audio files under ``folder``, at any depth, each file once.

    Links are followed; hidden names and non-regular files are skipped
    (dangling links with a warning).

    Arguments
    ---------
    folder : str or Path
        The folder to search.
    suffixes : tuple of str
        Suffixes to collect (lower case, with the dot).
    duplicates : list, optional
        If given, collects ``(first path, second path)`` pairs.

    Returns
    -------
    list of str
        Sorted POSIX paths relative to ``folder``.

    Raises
    ------
    AudioLoadError
        If a file is reached by two paths (and ``duplicates`` is None).

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> for name in ["b/2.flac", "b/1.WAV", "b/notes.txt", ".hidden/3.wav"]:
    ...     (tmp / name).parent.mkdir(exist_ok=True)
    ...     _ = (tmp / name).write_bytes(b"")
    >>> find_audio_files(tmp)
    ['b/1.WAV', 'b/2.flac']
    """
    folder = Path(folder)
    twice, dangling = [], []
    seen_dirs, seen_files = {}, {}
    for root, dirs, names in os.walk(folder, followlinks=True):
        rel_root = Path(os.path.relpath(root, folder)).as_posix()
        real = os.path.realpath(root)
        if real in seen_dirs:  # a second path to a folder (or a link loop)
            twice.append((seen_dirs[real] + "/", rel_root + "/"))
            dirs[:] = []
            continue
        seen_dirs[real] = rel_root
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            suffix = Path(name).suffix.lower()
            if name.startswith(".") or suffix not in suffixes:
                continue
            path = os.path.join(root, name)
            try:
                st = os.stat(path)
            except OSError:  # a dangling link
                dangling.append(os.path.relpath(path, folder))
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            rel = Path(os.path.relpath(path, folder)).as_posix()
            key = (st.st_dev, st.st_ino)
            if key in seen_files:
                twice.append((seen_files[key], rel))
                continue
            seen_files[key] = rel
    if duplicates is not None:
        duplicates.extend(twice)
    elif twice:
        shown = "; ".join(f"{a} and {b}" for a, b in twice[:10])
        raise AudioLoadError(
            f"{len(twice)} audio file(s) or folder(s) under {folder} are "
            f"reached by two paths (symbolic links): {shown}. One recording "
            "would get two labels or two folds: remove the links or the "
            "copies."
        )
    if dangling:
        shown = ", ".join(dangling[:10])
        more = f" and {len(dangling) - 10} more" if len(dangling) > 10 else ""
        why = "%d link(s) under %s named like audio files point to nothing "
        why += "and are skipped: %s%s"
        logger.warning(why, len(dangling), folder, shown, more)
    return sorted(seen_files.values())


class ModelFileError(UserError):
    """A file is not an sb-urbansound ONNX model (the message says why)."""


def check_regular_file(path):
    """Raise :class:`AudioLoadError` unless ``path`` is an existing regular
    file.

    Arguments
    ---------
    path : str or Path

    Example
    -------
    >>> check_regular_file("no/such.wav")
    Traceback (most recent call last):
     ...
    sb_urbansound.errors.AudioLoadError: no/such.wav: no such file
    """
    try:
        st = os.stat(path)
    except OSError:
        raise AudioLoadError(f"{path}: no such file") from None
    if not stat.S_ISREG(st.st_mode):
        raise AudioLoadError(
            f"{path}: not a regular file (a folder, pipe or device); only "
            "regular files are read as audio"
        )


def read_audio(path, max_seconds=None):
    """Read an audio file as float32 ``[time, channels]`` with its rate
    (soundfile, as ``speechbrain.dataio.audio_io``); refuse a bad one.

    Arguments
    ---------
    path : str or Path
        The audio file (anything soundfile reads).
    max_seconds : float, optional
        Read at most this many seconds from the start.

    Returns
    -------
    wav : numpy.ndarray
    sample_rate : int

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> sf.write(tmp / "a.wav", np.zeros((800, 2)), 8000)
    >>> wav, rate = read_audio(tmp / "a.wav", max_seconds=0.05)
    >>> wav.shape, wav.dtype, rate
    ((400, 2), dtype('float32'), 8000)
    """
    check_regular_file(path)
    try:  # one open (info() then read() would parse the file twice)
        with sf.SoundFile(str(path)) as f:
            rate, frames = f.samplerate, -1
            if max_seconds is not None:
                frames = max(math.ceil(max_seconds * rate), 1)
            wav = f.read(frames, dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile errors: RuntimeError, LibsndfileError
        raise AudioLoadError(
            f"{path}: cannot be decoded ({e.__cause__ or e}). The file may be "
            "corrupt: replace it, or remove it from the data set."
        ) from e
    if wav.shape[0] == 0:
        raise AudioLoadError(
            f"{path}: holds no samples; remove it from the data set."
        )
    check_rate(rate, f"{path}: sample rate")
    finite = np.isfinite(wav)
    if not finite.all():
        raise AudioLoadError(
            f"{path}: holds {int((~finite).sum())} NaN or infinite sample(s), "
            "which no model can use. Repair or remove the file."
        )
    return wav, int(rate)


def rechannel(wav, channels):
    """Convert ``[time, have]`` audio to ``channels`` channels (via mono).

    Arguments
    ---------
    wav : numpy.ndarray
    channels : int

    Returns
    -------
    numpy.ndarray

    Example
    -------
    >>> rechannel(np.array([[1.0, 3.0]], dtype=np.float32), 1).tolist()
    [[2.0]]
    >>> rechannel(np.ones((5, 1)), 2).shape
    (5, 2)
    """
    have = wav.shape[-1]
    if have == channels:
        return wav
    if have == 1:
        mono = wav
    elif have == 2:  # mean()'s numbers, faster
        mono = (wav[..., :1] + wav[..., 1:]) / 2
    else:
        mono = wav.mean(axis=-1, keepdims=True)
    if channels == 1:
        return mono.astype(wav.dtype, copy=False)
    return np.repeat(mono, channels, axis=-1).astype(wav.dtype, copy=False)


def check_rate(rate, what):
    """Refuse a sample rate outside ``MIN_RATE`` .. ``MAX_RATE``.

    Arguments
    ---------
    rate : int
    what : str
        What has it, for the message (``"--rate"``).

    Returns
    -------
    int

    Example
    -------
    >>> check_rate(44101, "--rate")
    44101
    >>> check_rate(0, "--rate")  # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
     ...
    sb_urbansound.errors.AudioLoadError: --rate 0 Hz is outside the supported
    sample rates, 1000 to 768000 Hz
    """
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioLoadError(
            f"{what} {rate} Hz is outside the supported sample rates, "
            f"{MIN_RATE} to {MAX_RATE} Hz"
        )
    return int(rate)


class Resampler:
    """Resample ``[time, channels]`` audio block by block with soxr.

    soxr, not torchaudio: its memory does not depend on the ratio, its
    output not on how the input is cut. :meth:`flush` returns the rest.

    Arguments
    ---------
    orig_freq, new_freq : int
        The input and output rates.

    Example
    -------
    >>> r = Resampler(16000, 8000)
    >>> x = np.random.default_rng(0).standard_normal((1000, 2), "float32")
    >>> a = np.concatenate([r(x[:300]), r(x[300:]), r.flush()])
    >>> b = resample(x, 16000, 8000)
    >>> a.shape, bool(np.array_equal(a, b))
    ((500, 2), True)
    """

    def __init__(self, orig_freq, new_freq):
        self.orig = check_rate(orig_freq, "resampling from")
        self.new = check_rate(new_freq, "resampling to")
        self.identity = self.orig == self.new
        self._stream = None  # soxr's, made for the first block's channels
        self._channels = 1

    def __call__(self, x):
        """Feed ``[time, channels]`` input; return float32 output so far."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        self._channels = x.shape[1]
        if self.identity:
            return x
        if self._stream is None:
            self._stream = soxr.ResampleStream(
                self.orig, self.new, x.shape[1], "float32", RESAMPLE_QUALITY
            )
        return self._stream.resample_chunk(x)

    def flush(self):
        """Return the last output samples once the input has ended; reset."""
        end = np.zeros((0, self._channels), np.float32)
        if self.identity or self._stream is None:
            return end
        out = self._stream.resample_chunk(end, last=True)
        self._stream = None
        return out


def resample(wav, orig_freq, new_freq):
    """Resample ``[time, channels]`` audio (:class:`Resampler`, one block).

    Arguments
    ---------
    wav : numpy.ndarray
    orig_freq, new_freq : int

    Returns
    -------
    numpy.ndarray

    Example
    -------
    >>> resample(np.ones((441, 1), np.float32), 44100, 16000).shape
    (160, 1)
    """
    r = Resampler(orig_freq, new_freq)
    out = r(wav)
    return out if r.identity else np.concatenate([out, r.flush()])


def remove_dc_offset(wav):
    """Subtract each channel's mean (time first), as training's ``remove_dc``.

    Arguments
    ---------
    wav : numpy.ndarray

    Returns
    -------
    numpy.ndarray

    Example
    -------
    >>> remove_dc_offset(np.array([[1.0], [3.0]], np.float32)).ravel().tolist()
    [-1.0, 1.0]
    """
    mean = wav.mean(axis=0, keepdims=True, dtype=np.float64)
    return (wav - mean.astype(np.float32)).astype(np.float32, copy=False)


class Conditioner:
    """Bring audio to a model's rate and channels, as training does.

    Arguments
    ---------
    sample_rate, channels : int
    remove_dc : bool

    Example
    -------
    >>> cond = Conditioner(8000, 2)
    >>> cond.convert(np.zeros((16000, 1), np.float32), 16000).shape
    (8000, 2)
    """

    def __init__(self, sample_rate, channels=1, remove_dc=False):
        self.sample_rate = int(sample_rate)
        self.channels = int(channels)
        self.remove_dc = bool(remove_dc)
        if self.channels < 1:
            raise ValueError(f"channels must be at least 1, got {channels}")

    def convert(self, wav, sample_rate, upmix=True):
        """Down-mix, resample, up-mix (and remove the DC offset) a clip.

        Arguments
        ---------
        wav : numpy.ndarray
            ``[time]`` or ``[time, channels]``.
        sample_rate : int
        upmix : bool
            Duplicate a mono clip to ``self.channels`` (False: for the bank).

        Returns
        -------
        numpy.ndarray
        """
        wav = np.asarray(wav, dtype=np.float32)
        if wav.ndim == 1:
            wav = wav[:, None]
        wav = rechannel(wav, min(self.channels, wav.shape[1]))  # down-mix
        wav = resample(wav, sample_rate, self.sample_rate)
        if upmix:
            wav = rechannel(wav, self.channels)
        return remove_dc_offset(wav) if self.remove_dc else wav


def parse_metadata(meta, source):
    """The audio spec and labels in an export's metadata (ONNX or TorchScript).

    Arguments
    ---------
    meta : dict
    source : str or Path
        Named in messages.

    Returns
    -------
    dict

    Example
    -------
    >>> meta = {"labels": '["a"]', "sample_rate": "8000", "channels": "1"}
    >>> parse_metadata({**meta, "num_samples": "800"}, "m")["num_samples"]
    800
    """
    missing = [key for key in REQUIRED_METADATA if key not in meta]
    if missing:
        raise ModelFileError(
            f"{source} is not an ONNX model exported by "
            "sb_urbansound.serving.export "
            f"(its metadata lacks {', '.join(missing)}): export the model "
            "folder with python -m sb_urbansound.serving.export MODEL_FOLDER"
        )
    try:
        labels = json.loads(meta["labels"])
        return {
            "labels": [str(label) for label in labels],
            "sample_rate": int(meta["sample_rate"]),
            "channels": int(meta["channels"]),
            "num_samples": int(meta["num_samples"]),
            "remove_dc": meta.get("remove_dc", "false") == "true",
        }
    except (ValueError, TypeError) as e:
        raise ModelFileError(f"{source}: bad metadata ({e})") from None


def _parse_metadata(session, source):
    """Return :func:`parse_metadata` of an ONNX session, checked against
    shapes."""
    meta = session.get_modelmeta().custom_metadata_map
    spec = parse_metadata(meta, source)
    waveforms, probs = session.get_inputs()[0], session.get_outputs()[0]
    shapes = [
        ("samples", spec["num_samples"], "input", waveforms, 1),
        ("channels", spec["channels"], "input", waveforms, 2),
        ("labels", len(spec["labels"]), "output", probs, 1),
    ]
    for what, value, kind, node, axis in shapes:
        size = node.shape[axis] if len(node.shape) > axis else None
        if isinstance(size, int) and size != value:
            raise ModelFileError(
                f"{source}: its metadata gives {value} {what}, but the "
                f"model's {kind} {node.name} has {size}: the metadata was "
                "changed after the export; export the model folder again "
                "(python -m sb_urbansound.serving.export MODEL_FOLDER)"
            )
    return spec


def read_label_file(path):
    """The labels of a ``CategoricalEncoder.save`` file, by index.

    Arguments
    ---------
    path : str or Path

    Returns
    -------
    list of str

    Example
    -------
    >>> path = getfixture("tmp_path") / "l.txt"
    >>> _ = path.write_text("'b' => 1\\n'a' => 0\\n================\\n")
    >>> read_label_file(path)
    ['a', 'b']
    """
    import ast  # not CategoricalEncoder.load: no SpeechBrain here

    labels = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith("================"):
                    break
                literal, index = line.strip().split(" => ", 1)
                labels[int(index)] = str(ast.literal_eval(literal))
    except (OSError, ValueError, SyntaxError) as e:
        raise ModelFileError(
            f"cannot read the labels in {path} ({e}): copy the whole model "
            "folder that training wrote"
        ) from None
    return [labels[i] for i in sorted(labels)]


def folder_spec(folder):
    """What a model folder's own files say of its audio and labels.

    Arguments
    ---------
    folder : str or Path

    Returns
    -------
    list of (str, object, Path)
        ``(key, value, file)`` for each key of the spec found.

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> _ = (tmp / "hyperparams.yaml").write_text(
    ...     "sample_rate: 8000\\nchannels: 1\\nduration_ms: 1500\\n"
    ...     "x: !new:a.B\\n"
    ... )
    >>> [(key, value) for key, value, _ in folder_spec(tmp)]
    [('sample_rate', 8000), ('channels', 1), ('num_samples', 12000)]
    """
    folder = Path(folder)
    found = []
    yaml_file = folder / "hyperparams.yaml"
    if yaml_file.is_file():
        try:
            tree = read_yaml(yaml_file)  # tags (!new:) are kept, not built
        except UserError as e:
            raise ModelFileError(str(e)) from None
        tree = tree if isinstance(tree, dict) else {}
        spec = {
            key: tree[key] for key in ("sample_rate", "channels") if key in tree
        }
        rate, ms = tree.get("sample_rate"), tree.get("duration_ms")
        if isinstance(rate, int) and isinstance(ms, (int, float)):
            # as inference.model_audio_spec computes it
            spec["num_samples"] = int(round(rate * ms / 1000.0))
        if "remove_dc" in tree:
            spec["remove_dc"] = tree["remove_dc"]
        found = [(key, value, yaml_file) for key, value in spec.items()]
    for name in ("label_encoder.ckpt", "label_encoder.txt"):
        if (folder / name).is_file():
            found.append(
                ("labels", read_label_file(folder / name), folder / name)
            )
    return found


def check_folder(spec, file):
    """Refuse an ONNX model whose metadata differs from its folder's files
    (it would classify unlike the folder's PyTorch model).

    Arguments
    ---------
    spec : dict
        The ONNX model's metadata (:func:`parse_metadata`).
    file : Path

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> _ = (tmp / "hyperparams.yaml").write_text("sample_rate: 16000\\n")
    >>> onnx = tmp / "model.onnx"
    >>> spec = {"sample_rate": 8000}
    >>> check_folder(spec, onnx)  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
     ...
    sb_urbansound.serving.runtime.ModelFileError: ...model.onnx does not
    match the model folder it is in: sample_rate is 8000 in its metadata but
    16000 in .../hyperparams.yaml. Export ...
    """
    diffs = []
    for key, value, source in folder_spec(Path(file).parent):
        mine = spec[key]
        if key == "labels" and len(value) != len(mine):
            diffs.append(
                f"{len(mine)} labels in its metadata but {len(value)} in "
                f"{source}"
            )
            continue
        if key == "labels" and value != mine:  # the first label that differs
            i = [a != b for a, b in zip(mine, value)].index(True)
            key, mine, value = f"label {i}", mine[i], value[i]
        if value != mine or isinstance(value, bool) != isinstance(mine, bool):
            diffs.append(
                f"{key} is {mine!r} in its metadata but {value!r} in {source}"
            )
    if diffs:
        raise ModelFileError(
            f"{file} does not match the model folder it is in: "
            + "; ".join(diffs)
            + ". Export the folder again to write its own (python -m "
            f"sb_urbansound.serving.export {Path(file).parent})."
        )


class Scorer:
    """What scores the windows of a clip: the interface of every backend.

    A backend has the spec (``labels``, ``sample_rate``, ``channels``,
    ``num_samples``, ``remove_dc``) and :meth:`_run`, called ``chunk``
    windows at a time; reading, windowing and averaging are shared.

    Example
    -------
    >>> class Uniform(Scorer):
    ...     labels, sample_rate, channels, num_samples = ["a", "b"], 8, 1, 4
    ...
    ...     def _run(self, windows):
    ...         return np.full((len(windows), 2), 0.5, np.float32)
    >>> Uniform().window_probs(np.zeros((40, 4))).shape
    (40, 2)
    """

    model_folder = None  # for messages; None: a model in memory
    chunk = CHUNK_WINDOWS
    remove_dc = False

    def _run(self, windows):
        """Return ``[n, n_classes]`` probabilities of
        ``[n, samples, channels]``."""
        raise NotImplementedError

    def window_probs(self, windows):
        """Class probabilities of each window of one clip.

        Arguments
        ---------
        windows : numpy.ndarray
            ``[n_windows, num_samples, channels]`` at the model's rate.

        Returns
        -------
        numpy.ndarray
        """
        if windows.ndim == 2:
            windows = windows[..., None]
        step = max(int(self.chunk), 1)
        chunks = [windows[i : i + step] for i in range(0, len(windows), step)]
        return np.concatenate([self._run(chunk) for chunk in chunks])

    def read(self, path):
        """Read a file and convert it to the model's rate and channels.

        Arguments
        ---------
        path : str or Path

        Returns
        -------
        numpy.ndarray
        """
        wav, rate = read_audio(path)
        cond = Conditioner(self.sample_rate, self.channels, self.remove_dc)
        return cond.convert(wav, rate)

    def file_window_probs(self, path):
        """Read, condition and window a file; score every window.

        Arguments
        ---------
        path : str or Path

        Returns
        -------
        probs : numpy.ndarray
        duration_s : float
        """
        wav = self.read(path)
        windows = sliding_windows(wav, self.num_samples or wav.shape[0])
        return self.window_probs(windows), wav.shape[0] / self.sample_rate

    def classify_file(self, path, top_k=1):
        """Classify one file as ``classify`` does: windows, mean probability.

        Arguments
        ---------
        path : str or Path
        top_k : int

        Returns
        -------
        dict
            ``path``, ``label``, ``prob``, ``top_k``, ``n_windows``,
            ``duration_s``.
        """
        return self.summary(path, *self.file_window_probs(path), top_k)

    def summary(self, path, probs, duration_s, top_k=1):
        """Return :meth:`classify_file`'s result from
        :meth:`file_window_probs`'s."""
        best = top_k_labels(probs.mean(axis=0), self.labels, top_k)
        return {
            "path": str(path),
            **best[0],  # label, prob
            "top_k": best,
            "n_windows": int(probs.shape[0]),
            "duration_s": duration_s,
        }


class OnnxModel(Scorer):
    """An exported model (``model.onnx``) with the audio steps of training.

    Arguments
    ---------
    path : str or Path or bytes
        A model folder, its ``model.onnx`` or the file's bytes.
    threads : int, optional
        onnxruntime's intra-op threads (default: onnxruntime's).
    chunk : int
        Windows per run (memory only).
    """

    def __init__(self, path, threads=None, chunk=CHUNK_WINDOWS):
        try:
            import onnxruntime
        except ImportError:
            raise ModelFileError(
                "onnxruntime is not installed: pip install onnxruntime (or, "
                'in a clone of sb-urbansound, pip install -e ".[runtime]")'
            ) from None

        if isinstance(path, bytes):  # a serialised model (the export's check)
            file, source = "(ONNX model in memory)", path
        else:
            path = Path(path)
            file = path / ONNX_FILE if path.is_dir() else path
            if not file.is_file():
                hint = (
                    f"python -m sb_urbansound.serving.export {path} writes it"
                    if path.is_dir()
                    else "give a model folder or its model.onnx"
                )
                if (path / "model" / "hyperparams.yaml").is_file():
                    hint = (
                        f"{path} is a training output folder; its model is "
                        f"{path / 'model'}"
                    )
                raise ModelFileError(f"No ONNX model at {file} ({hint})")
            source = str(file)
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        try:
            self.session = onnxruntime.InferenceSession(
                source, options, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # not ONNX, truncated, ...
            raise ModelFileError(
                f"{file} cannot be loaded by onnxruntime ({e})"
            ) from None
        spec = _parse_metadata(self.session, file)
        if not isinstance(path, bytes):  # the folder's files must agree
            check_folder(spec, file)
        self.path = file
        vars(self).update(spec)
        self.chunk = max(int(chunk), 1)
        self.input_name = self.session.get_inputs()[0].name

    def _run(self, windows):
        """One onnxruntime call (see :meth:`Scorer._run`)."""
        feeds = {self.input_name: np.ascontiguousarray(windows, np.float32)}
        return self.session.run(None, feeds)[0]


def top_k_labels(probs, labels, k=1):
    """The ``k`` most probable labels and their probabilities.

    Arguments
    ---------
    probs : numpy.ndarray
    labels : list of str
    k : int

    Returns
    -------
    list of dict

    Example
    -------
    >>> top_k_labels(np.array([0.2, 0.5, 0.3]), ["a", "b", "c"], k=2)
    [{'label': 'b', 'prob': 0.5}, {'label': 'c', 'prob': 0.3}]
    """
    k = max(1, min(int(k), len(labels)))
    order = np.argsort(-np.asarray(probs), kind="stable")[:k]
    return [{"label": labels[i], "prob": float(probs[i])} for i in order]
