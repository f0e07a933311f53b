"""Using a trained model: the self-contained inference folder and scoring.

:func:`export_inference_folder` writes ``<output_folder>/model/``, which
SpeechBrain's ``EncoderClassifier`` loads (see ``docs/inference.md``).

Authors
-------
 * sb-urbansound contributors
"""

import contextlib
import io
import logging
import math
import shutil
import zipfile
from pathlib import Path

import torch
import torch.utils._pytree as pytree
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, TaggedScalar
from sb_urbansound.atomic import make_temp_folder, mark_store, replace_folder
from sb_urbansound.errors import UserError
from sb_urbansound.serving.card import write_model_card
from sb_urbansound.serving.runtime import Scorer
from sb_urbansound.serving.trust import check_model_yaml
from sb_urbansound.training.augment import circular_views
from sb_urbansound.yaml_reader import Tagged, read_yaml
from torch.utils._python_dispatch import TorchDispatchMode

from speechbrain.utils.checkpoints import (
    DEFAULT_SAVE_HOOKS,
    get_default_hook,
    torch_save,
)

logger = logging.getLogger(__name__)

#: Sub-folder of ``output_folder`` that holds the inference folder.
MODEL_SUBFOLDER = "model"
#: Keys that the generated ``hyperparams.yaml`` defines besides the modules.
RESERVED_KEYS = tuple(
    "sample_rate channels duration_ms remove_dc tta_views tta_max_shift "
    "modules label_encoder audio_normalizer pretrainer".split()
)
_DEFAULT_LABEL_ENCODER = "!new:speechbrain.dataio.encoder.CategoricalEncoder"


def _strip_comments(node, seen=None):
    """Remove ruamel comments (which would land in odd places) from a tree."""
    seen = set() if seen is None else seen
    if id(node) in seen:
        return node
    seen.add(id(node))
    if getattr(node, "ca", None) is not None:
        node.ca.comment = node.ca.end = None
        node.ca.items.clear()
    if isinstance(node, (dict, list)):
        for value in node.values() if isinstance(node, dict) else node:
            _strip_comments(value, seen)
    return node


def make_inference_yaml(
    training_yaml, module_names, sample_rate, channels, duration_ms, header=""
):
    """Build the inference ``hyperparams.yaml`` from a resolved training YAML:
    the modules and ``label_encoder``, the audio spec, ``audio_normalizer``
    and a ``pretrainer`` that loads each from ``<folder>/<name>.ckpt``.

    Arguments
    ---------
    training_yaml : str
        The training YAML, references resolved, with a ``modules`` mapping.
    module_names : list of str
        The modules to keep (keys of ``modules``).
    sample_rate, channels : int
        The model's rate and channel count.
    duration_ms : float
        The training clip duration (ms).
    header : str
        Comment lines put at the top of the file (without ``#``).

    Returns
    -------
    str
        The YAML text.

    Example
    -------
    >>> text = '''
    ... data_folder: /data
    ... model: !new:torch.nn.Linear {in_features: 2, out_features: 4}
    ... modules: {classifier: !ref <model>}
    ... '''
    >>> from hyperpyyaml import resolve_references
    >>> resolved = resolve_references(text).getvalue()
    >>> print(make_inference_yaml(resolved, ["classifier"], 16000, 1, 1000))
    ... # doctest: +ELLIPSIS
    sample_rate: 16000
    channels: 1
    duration_ms: 1000
    remove_dc: false
    classifier: !new:torch.nn.Linear {in_features: 2, out_features: 4}
    label_encoder: !new:speechbrain.dataio.encoder.CategoricalEncoder
    ...
    modules:
      classifier: !ref <classifier>
    ...
    """
    tree = YAML().load(training_yaml)  # not read_yaml: round trip keeps tags
    modules = tree.get("modules") if tree is not None else None
    if not isinstance(modules, dict):
        raise ValueError(
            "The training YAML has no `modules` mapping to export."
        )
    for name in module_names:
        if name in RESERVED_KEYS:
            raise ValueError(
                f"A module is named {name!r}, which the inference YAML needs "
                f"for itself ({', '.join(RESERVED_KEYS)}); rename it."
            )
        if name not in modules:
            raise ValueError(
                f"Module {name!r} is not in the training YAML's modules."
            )
    out = CommentedMap()
    out["sample_rate"] = int(sample_rate)
    out["channels"] = int(channels)
    out["duration_ms"] = duration_ms
    out["remove_dc"] = bool(tree.get("remove_dc", False))
    if int(tree.get("tta_views", 1) or 1) > 1:  # tested with shifted views
        out["tta_views"] = int(tree["tta_views"])
        out["tta_max_shift"] = float(tree.get("tta_max_shift", 0.0))
    for name in module_names:
        out[name] = _strip_comments(modules[name])
    label_encoder = tree.get("label_encoder")
    if label_encoder is None:
        label_encoder = TaggedScalar("", tag=_DEFAULT_LABEL_ENCODER)
    out["label_encoder"] = _strip_comments(label_encoder)
    stream = io.StringIO()
    yaml = YAML()
    yaml.width = 88
    yaml.dump(out, stream)
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    lines += [
        stream.getvalue().rstrip("\n"),
        "# Filled from label_encoder.ckpt, so its size is right: "
        "no expect_len warning",
        "__label_encoder_ignore_len: !apply:speechbrain.dataio.encoder."
        "CategoricalEncoder.ignore_len [!ref <label_encoder>]",
        "",
        "modules:",
        *[f"  {name}: !ref <{name}>" for name in module_names],
        "",
        "# classify_file: resample + channels as in training, pad short clips",
        "audio_normalizer: !new:sb_urbansound.data.audio.ClipConditioner",
        "  sample_rate: !ref <sample_rate>",
        "  channels: !ref <channels>",
        "  duration_ms: !ref <duration_ms>",
        "  remove_dc: !ref <remove_dc>",
        "",
        "# Each loadable is read from <folder>/<name>.ckpt (source=<folder>)",
        "pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer",
        "  loadables:",
        *[f"    {n}: !ref <{n}>" for n in [*module_names, "label_encoder"]],
    ]
    return "\n".join(lines) + "\n"


def _save_module(obj, path):
    """Save ``obj`` with its SpeechBrain default save hook (a class's own,
    such as ``InputNormalization``'s statistics, which its load hook reads)."""
    hook = get_default_hook(obj, DEFAULT_SAVE_HOOKS)
    if hook is torch_save and not obj.state_dict():
        torch.save({}, path)  # stateless (SpeechBrain's hook warns about it)
        return
    hook(obj, path)


def export_inference_folder(
    hparams, folder=None, min_key="error", max_key=None, verify=True
):
    """Write the inference folder of a trained model (built aside, loaded,
    moved into place); each module from the best checkpoint, else as it is.

    Arguments
    ---------
    hparams : dict
        The training hyperparameters (``output_folder``, ``modules``, filled
        ``label_encoder``, the audio spec, optionally ``checkpointer``).
    folder : str or Path, optional
        Where to write (default ``<output_folder>/model``).
    min_key : str
        The meta key whose lowest value is the best.
    max_key : str, optional
        If given, the meta key whose highest value is the best (instead of
        ``min_key``).
    verify : bool
        Load the new folder before moving it into place.

    Returns
    -------
    Path
        The inference folder.

    Example
    -------
    See ``tests/test_inference.py`` (it needs a trained run).
    """
    output_folder = Path(hparams["output_folder"])
    folder = Path(folder or output_folder / MODEL_SUBFOLDER)
    yaml_file = output_folder / "hyperparams.yaml"
    checkpointer = hparams.get("checkpointer")
    modules = {k: v for k, v in hparams["modules"].items() if v is not None}
    best, ckpt = None, "(in memory)"
    if checkpointer is not None:
        key = {"max_key": max_key} if max_key else {"min_key": min_key}
        best = checkpointer.find_checkpoint(**key)
    if best is None:
        logger.warning(
            "No checkpoint found in %s: exporting the modules as they are "
            "in memory.",
            getattr(checkpointer, "checkpoints_dir", None),
        )
    else:
        ckpt = f"{best.path.name} {dict(best.meta)}"
    header = (
        "Inference hyperparameters of a trained sb-urbansound model.\n"
        "Generated by sb_urbansound.serving.inference.export_inference_folder "
        "from\n"
        f"{yaml_file}\ncheckpoint: {ckpt}\n"
        "Load: EncoderClassifier.from_hparams(source=<folder>, "
        "savedir=<folder>)"
    )
    spec = [hparams[k] for k in ("sample_rate", "channels", "duration_ms")]
    training_yaml = yaml_file.read_text(encoding="utf-8")
    text = make_inference_yaml(training_yaml, list(modules), *spec, header)
    recoverables = getattr(checkpointer, "recoverables", {}).items()
    saved_as = {id(obj): name for name, obj in recoverables}
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_folder(folder.parent, folder.name)
    try:
        (tmp / "hyperparams.yaml").write_text(text, encoding="utf-8")
        for name, module in modules.items():
            target = tmp / f"{name}.ckpt"
            rec_name = saved_as.get(id(module))
            if best is not None and rec_name in best.paramfiles:
                shutil.copyfile(best.paramfiles[rec_name], target)
                continue
            if any(p.requires_grad for p in module.parameters()):
                logger.warning(
                    "Module %r has trainable parameters but is not saved by "
                    "the checkpointer: exporting its current state, not the "
                    "best one.",
                    name,
                )
            _save_module(module, target)
        hparams["label_encoder"].save(tmp / "label_encoder.txt")
        shutil.copyfile(tmp / "label_encoder.txt", tmp / "label_encoder.ckpt")
        try:
            write_model_card(tmp, hparams)
        except Exception as e:  # the model matters more than its card
            name = type(e).__name__
            logger.warning("No model card written in %s (%s: %s)", tmp, name, e)
        if verify:
            model = load_model(tmp, trust=True)  # this run wrote it
            n_labels = len(model.hparams.label_encoder)
            if n_labels != len(hparams["label_encoder"]):
                raise RuntimeError(
                    f"The exported label encoder has {n_labels} labels"
                )
        mark_store(tmp, "model")  # the store kind (docs/stores.md)
        replace_folder(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("Inference folder written to %s", folder)
    return folder


class ModelFolderError(UserError, FileNotFoundError):
    """A folder is not a complete model folder (the message says why).

    Example
    -------
    >>> issubclass(ModelFolderError, FileNotFoundError)
    True
    """


#: Keys of a training YAML that an inference ``hyperparams.yaml`` never has.
_TRAINING_KEYS = ("checkpointer", "epoch_counter", "train_annotation")
_COPY = (
    "copy the whole model folder that training wrote (<output_folder>/model)"
)


def _read_model_yaml(folder):
    """The top level of ``<folder>/hyperparams.yaml`` (tags kept, not built)."""
    path = folder / "hyperparams.yaml"
    try:
        tree = read_yaml(path)
    except UserError as e:
        raise ModelFolderError(str(e)) from None
    if not isinstance(tree, dict):
        raise ModelFolderError(f"{path} is not a YAML mapping")
    return tree


def check_model_folder(folder):
    """Check that ``folder`` holds a model and every file its YAML loads.

    Arguments
    ---------
    folder : str or Path
        The inference folder (``<output_folder>/model``).

    Raises
    ------
    ModelFolderError
        One line saying what is wrong and what to do.

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> (tmp / "model").mkdir()
    >>> _ = (tmp / "model" / "hyperparams.yaml").write_text("x: 1")
    >>> check_model_folder(tmp)  # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
     ...
    sb_urbansound.serving.inference.ModelFolderError:
    ... is a training output folder; its model is .../model
    """
    folder = Path(folder)
    inner = folder / MODEL_SUBFOLDER
    if (inner / "hyperparams.yaml").is_file():
        raise ModelFolderError(
            f"{folder} is a training output folder; its model is {inner}"
        )
    if not (folder / "hyperparams.yaml").is_file():
        raise ModelFolderError(
            f"No model folder at {folder} (expected hyperparams.yaml and the "
            "checkpoints: the 'model' folder that training writes in its "
            "output_folder)"
        )
    tree = _read_model_yaml(folder)
    for key, what, types in (  # values that no audio can have
        ("sample_rate", "Hz >= 1", int),
        ("channels", ">= 1", int),
        ("duration_ms", "milliseconds > 0", (int, float)),
    ):
        value = tree.get(key)
        valid = isinstance(value, types) and value > 0  # int: >= 1
        if key in tree and (isinstance(value, bool) or not valid):
            raise ModelFolderError(
                f"{folder / 'hyperparams.yaml'}: {key}: {value!r} is not valid "
                f"({what}); the file was changed by hand? Copy the model "
                "folder that training wrote."
            )
    pretrainer = tree.get("pretrainer")
    if pretrainer is None and any(k in tree for k in _TRAINING_KEYS):
        raise ModelFolderError(
            f"{folder} is a training output folder without a model: training "
            f"writes {inner} when it ends, so this run did not finish. Rerun "
            "the same training command to finish it (it resumes from its last "
            "checkpoint)."
        )
    if isinstance(pretrainer, Tagged):  # !new:...Pretrainer
        pretrainer = pretrainer.value
    if not isinstance(pretrainer, dict):
        return
    loadables, paths = pretrainer.get("loadables"), pretrainer.get("paths")
    paths = paths if isinstance(paths, dict) else {}
    if not isinstance(loadables, dict):
        return
    missing = [
        folder / f"{name}.ckpt"
        for name in loadables
        if name not in paths and not (folder / f"{name}.ckpt").is_file()
    ]
    if missing:
        raise ModelFolderError(
            f"{folder} is missing {', '.join(str(p) for p in missing)}, which "
            f"its hyperparams.yaml loads: {_COPY}"
        )


def load_model(folder, device="cpu", trust=False):
    """Check an inference folder (and, unless ``trust``, its YAML), then load
    it with SpeechBrain's ``EncoderClassifier``; outputs checked vs. labels.

    Arguments
    ---------
    folder : str or Path
        The inference folder (``<output_folder>/model``).
    device : str
        Where to run the model (``"cpu"``, ``"cuda:0"``, ...).
    trust : bool
        Skip :func:`~sb_urbansound.serving.trust.check_model_yaml`.

    Returns
    -------
    speechbrain.inference.classifiers.EncoderClassifier
        The model, in eval mode, with ``model_folder``.

    Example
    -------
    >>> load_model("no/such/folder")  # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
     ...
    sb_urbansound.serving.inference.ModelFolderError:
    No model folder at no/such/folder (expected hyperparams.yaml ...
    """
    folder = Path(folder)
    check_model_folder(folder)
    path = folder / "hyperparams.yaml"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeError) as e:
        raise ModelFolderError(f"cannot read {path}: {e}") from None
    if not trust:
        check_model_yaml(path, text)
    from hyperpyyaml import load_hyperpyyaml

    from speechbrain.inference.classifiers import EncoderClassifier

    source = str(folder.resolve())
    try:
        # EncoderClassifier.from_hparams(source, savedir=source), but built
        # from the text just checked: from_hparams would read the file again
        budget = None if trust else _TensorBudget(_budget(folder), path)
        with budget or contextlib.nullcontext():
            hparams = load_hyperpyyaml(text)
        hparams["savedir"] = source
        pretrainer = hparams["pretrainer"]
        pretrainer.set_collect_in(source)
        pretrainer.collect_files(default_source=source)
        pretrainer.load_collected()
        model = EncoderClassifier(
            modules=hparams["modules"],
            hparams=hparams,
            run_opts={"device": device},
        )
    except ModelFolderError:
        raise
    except Exception as e:  # a truncated checkpoint, the wrong weights, ...
        raise ModelFolderError(
            f"cannot load the model in {folder}: {_load_failure(folder, e)}"
        ) from e
    encoder = getattr(model.hparams, "label_encoder", None)
    if encoder is not None and len(encoder) == 0:
        raise ModelFolderError(
            f"{folder / 'label_encoder.ckpt'} holds no labels: {_COPY}"
        )
    _, channels, num_samples = model_audio_spec(model)
    if encoder is not None and num_samples is not None:  # outputs vs labels
        shape = (1, num_samples) + ((channels,) if channels > 1 else ())
        outputs = window_log_probs(model, torch.zeros(shape)).shape[-1]
        if outputs != len(encoder):
            raise ModelFolderError(
                f"{folder / 'label_encoder.ckpt'} holds {len(encoder)} labels, "
                f"but the model has {outputs} outputs: the files come from "
                f"different models. {_COPY.capitalize()}."
            )
    model.model_folder = str(folder)
    return model


def _budget(folder):
    """The bytes of tensors a model folder's YAML may build: what its
    checkpoints hold, three times, plus 512 MB for the building itself."""
    held = sum(
        p.stat().st_size
        for p in folder.glob("*.ckpt")
        if p.is_file() and not p.is_symlink()
    )
    return 3 * held + (512 << 20)


class _TensorBudget(TorchDispatchMode):
    """Refuse a tensor before it is made once the tensors made so far add up
    to more than ``limit`` bytes.

    Each operation is first run on the ``meta`` device, which gives the size
    of its result without memory: an allowed class given a huge size in a
    model folder's YAML (``Linear [90000, 90000]``) is refused before torch
    allocates it. In-place operations and views make no new storage and are
    not counted; freed temporaries are (so the count only overestimates).

    Example
    -------
    >>> with _TensorBudget(1 << 20, "x.yaml"):  # doctest: +NORMALIZE_WHITESPACE
    ...     small = torch.zeros(1000)
    ...     big = torch.nn.Linear(1000, 1000)
    Traceback (most recent call last):
     ...
    sb_urbansound.serving.inference.ModelFolderError:
    x.yaml builds more than 1 MB of tensors...
    """

    def __init__(self, limit, source):
        super().__init__()
        self.limit, self.source, self.made = limit, source, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not func._schema.is_mutable:
            self.made += _result_bytes(func, args, kwargs)
            if self.made > self.limit:
                raise ModelFolderError(
                    f"{self.source} builds more than "
                    f"{math.ceil(self.limit / 2**20)} MB of tensors, far "
                    "more than the checkpoints beside it hold: its sizes do "
                    f"not match its weights. {_COPY.capitalize()}."
                )
        return func(*args, **kwargs)


def _result_bytes(func, args, kwargs):
    """The bytes of new storage ``func`` would make, run on ``meta``."""
    meta = (
        pytree.tree_map_only(torch.Tensor, lambda t: t.to("meta"), args),
        pytree.tree_map_only(torch.Tensor, lambda t: t.to("meta"), kwargs),
    )
    leaves = pytree.tree_leaves((args, kwargs))
    if "device" in kwargs or not any(torch.is_tensor(t) for t in leaves):
        meta[1]["device"] = torch.device("meta")  # a factory: made on meta
    try:
        out = func(*meta[0], **meta[1])
    except Exception:  # data-dependent (.item()): bounded by its inputs
        return 0
    return sum(
        t.numel() * t.element_size()
        for t in pytree.tree_leaves(out)
        if isinstance(t, torch.Tensor) and not t._is_view()
    )


def _load_failure(folder, error):
    """Why a folder did not load: a truncated checkpoint, else ``error``."""
    modules = _read_model_yaml(folder).get("modules")
    for name in modules if isinstance(modules, dict) else ():
        ckpt = folder / f"{name}.ckpt"
        if ckpt.is_file() and not zipfile.is_zipfile(ckpt):
            return (
                f"{ckpt} is not a complete PyTorch checkpoint (truncated or "
                f"replaced): {_COPY}"
            )
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def model_audio_spec(model):
    """The sample rate, channel count and clip length (samples) of a model.

    Arguments
    ---------
    model : speechbrain.inference.interfaces.Pretrained
        A loaded model.

    Returns
    -------
    sample_rate : int
        The model's rate, from its hparams, else its ``audio_normalizer``.
    channels : int
        The model's channel count, from the same places.
    num_samples : int or None
        The training clip length at that rate (``None``: unknown).

    Example
    -------
    >>> from types import SimpleNamespace as NS
    >>> hparams = NS(sample_rate=8, channels=2, duration_ms=500)
    >>> model_audio_spec(NS(hparams=hparams))
    (8, 2, 4)
    """
    hp, norm = model.hparams, getattr(model, "audio_normalizer", None)
    rate = getattr(hp, "sample_rate", None) or getattr(
        norm, "sample_rate", 16000
    )
    channels = getattr(hp, "channels", None) or getattr(norm, "channels", 1)
    ms = getattr(hp, "duration_ms", None)
    num_samples = None if ms is None else int(round(int(rate) * ms / 1000.0))
    return int(rate), int(channels), num_samples


@torch.no_grad()
def window_log_probs(model, windows, batch_size=16):
    """``classify_batch(windows)``'s scores, ``batch_size`` windows at a time
    (the normaliser sees them all).

    Arguments
    ---------
    model : speechbrain.inference.classifiers.EncoderClassifier
        The loaded model.
    windows : torch.Tensor
        ``[n_windows, time(, channels)]``, full length, at the model's rate.
    batch_size : int
        Windows per forward pass.

    Returns
    -------
    torch.Tensor
        ``[n_windows, n_classes]`` scores (log-probabilities), on the CPU.

    Example
    -------
    See ``tests/test_inference.py``.
    """
    mods, device = model.mods, model.device
    batch_size = max(int(batch_size), 1)
    chunks = windows.split(batch_size)
    feats = [mods.compute_features(c.to(device, torch.float32)) for c in chunks]
    lens = torch.ones(windows.shape[0], device=device)
    feats = mods.mean_var_norm(torch.cat(feats), lens)
    scores = [
        mods.classifier(mods.embedding_model(f, n)).reshape(len(f), -1)
        for f, n in zip(feats.split(batch_size), lens.split(batch_size))
    ]
    return torch.cat(scores).float().cpu()


@torch.no_grad()
def window_probs(model, windows, batch_size=16):
    """Softmax of :func:`window_log_probs`, averaged over ``tta_views``.

    Arguments
    ---------
    model : speechbrain.inference.classifiers.EncoderClassifier
        As in :func:`window_log_probs`.
    windows : torch.Tensor
        As in :func:`window_log_probs`.
    batch_size : int
        Windows per forward pass (memory only).

    Returns
    -------
    torch.Tensor
        ``[n_windows, n_classes]`` probabilities, on the CPU.

    Example
    -------
    See ``tests/test_inference.py``.
    """
    n_windows = windows.shape[0]
    views = int(getattr(model.hparams, "tta_views", 1) or 1)
    if views > 1:
        max_shift = float(getattr(model.hparams, "tta_max_shift", 0.0))
        samples = round(max_shift * windows.shape[1])
        windows = circular_views(windows, views, samples, dim=1)
    probs = torch.softmax(window_log_probs(model, windows, batch_size), -1)
    return probs.view(views, n_windows, -1).mean(dim=0)


class TorchScorer(Scorer):
    """A model loaded with SpeechBrain as a :class:`Scorer` (eager PyTorch).

    Arguments
    ---------
    model : speechbrain.inference.classifiers.EncoderClassifier
        The loaded model.
    batch_size : int
        Windows per forward pass (memory only).

    Example
    -------
    See ``tests/test_inference.py``.
    """

    def __init__(self, model, batch_size=16):
        self.model = model
        self.batch_size = batch_size
        self.model_folder = getattr(model, "model_folder", None)
        spec = model_audio_spec(model)
        self.sample_rate, self.channels, self.num_samples = spec
        encoder = model.hparams.label_encoder
        self.labels = [encoder.ind2lab[i] for i in range(len(encoder))]
        self.remove_dc = bool(getattr(model.hparams, "remove_dc", False))

    def window_probs(self, windows):
        """As :meth:`Scorer.window_probs` (a torch tensor too)."""
        windows = torch.as_tensor(windows)
        if self.channels == 1 and windows.dim() == 3:
            windows = windows[..., 0]  # SpeechBrain's mono layout
        return window_probs(self.model, windows, self.batch_size).numpy()

    def read(self, path):
        """A file at the model's rate and channels (a torch tensor)."""
        return torch.from_numpy(super().read(path))
