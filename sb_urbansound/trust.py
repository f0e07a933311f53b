"""What a model folder may run: its ``hyperparams.yaml`` is checked first.

A model folder's ``hyperparams.yaml`` is HyperPyYAML, and HyperPyYAML builds
whatever its tags name: ``!new:os.system`` or ``!apply:os.system`` would run
a command the moment the folder is loaded. A model folder is therefore code,
unless it is checked. :func:`check_model_yaml` allows only what a model
needs, and names every other tag with its line:

* ``!new:`` and ``!name:``: classes of SpeechBrain, of this plugin, of
  ``torch.nn`` and of ``torchaudio.transforms`` (:data:`TRUSTED_PREFIXES`);
* ``!apply:``: only the few side-effect-free functions that exported models
  call (:data:`TRUSTED_CALLS`);
* never ``!module:`` (a module gives access to anything), ``!include:``
  (another file, unchecked) or a ``!ref`` with ``**`` (an expression that
  can take forever), nor a ``pretrainer`` that fetches files from elsewhere
  (``paths``, ``collect_in``).

The checkpoint files are read by ``torch.load`` with ``weights_only=True``
(SpeechBrain's hooks), which refuses pickled code. ``--trust-model``
(``trust=True``) skips this check, as Hugging Face's ``trust_remote_code``
does, for folders whose origin you trust.

Authors
-------
 * sb-urbansound contributors
"""

import importlib
import inspect
from pathlib import Path

from sb_urbansound.errors import UserError

#: Modules whose classes a model folder may build (``!new:``, ``!name:``).
TRUSTED_PREFIXES = (
    "speechbrain.",
    "sb_urbansound.",
    "torch.nn.",
    "torchaudio.transforms.",
)
#: Functions a model folder may call (``!apply:``, ``!applyref:``).
TRUSTED_CALLS = (
    "speechbrain.dataio.encoder.CategoricalEncoder.ignore_len",
    "sb_urbansound.models.CNNEmbedding.pooled_size",
)
#: Tags that need no check.
_PLAIN_TAGS = ("!ref", "!copy", "!tuple", "!PLACEHOLDER")


class UntrustedModelError(UserError):
    """A model folder's YAML would run something outside the allow-list.

    Example
    -------
    >>> issubclass(UntrustedModelError, UserError)
    True
    """


def _locate(dotted):
    """The object a dotted path names (module, then attributes), or None."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for name in parts[cut:]:
                obj = getattr(obj, name)
        except AttributeError:
            return None
        return obj
    return None


def _problem(tag, node):
    """Why a tagged node is not allowed (None: it is)."""
    kind, _, target = tag.partition(":")
    if tag in _PLAIN_TAGS:
        text = node.value if isinstance(node.value, str) else ""
        if "**" in text:
            return "an expression with ** (it can take forever)"
        return None
    if kind in ("!new", "!name"):
        if not target.startswith(TRUSTED_PREFIXES):
            return f"{target} is not a class of {', '.join(TRUSTED_PREFIXES)}"
        obj = _locate(target)
        if obj is None:
            return f"{target} cannot be imported"
        if kind == "!new" and not inspect.isclass(obj):
            return f"{target} is a function, not a class"
        return None
    if kind in ("!apply", "!applyref"):
        if target not in TRUSTED_CALLS:
            return f"{target} is not one of the functions a model may call"
        return None
    if kind == "!module":
        return "a module gives access to anything"
    if kind == "!include":
        return "it reads another file, unchecked"
    return "an unknown tag"


def _walk(node):
    """Every node under ``node`` (mappings: keys and values)."""
    yield node
    value = getattr(node, "value", None)
    if isinstance(value, list):
        for item in value:
            for child in item if isinstance(item, tuple) else (item,):
                yield from _walk(child)


def check_model_yaml(path):
    """Refuse a model ``hyperparams.yaml`` that runs anything but a model.

    Arguments
    ---------
    path : str or Path
        The file.

    Raises
    ------
    UntrustedModelError
        Naming each tag outside the allow-list with its line, and what to do.

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> _ = (tmp / "h.yaml").write_text(
    ...     "m: !new:torch.nn.Linear [2, 3]\\nx: !apply:os.system [ls]\\n"
    ... )
    >>> check_model_yaml(tmp / "h.yaml")
    Traceback (most recent call last):
     ...
    sb_urbansound.trust.UntrustedModelError: ...h.yaml runs what a model does not need:
      line 2: !apply:os.system (os.system is not one of the functions a model may call)
    ...
    """
    from ruamel.yaml import YAML

    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            root = YAML().compose(f)
    except Exception as e:  # syntax errors, unreadable file
        raise UserError(f"cannot read {path}: {e}") from None
    problems = []
    for node in _walk(root) if root is not None else ():
        tag = node.tag or ""
        if not tag.startswith("!"):
            continue
        why = _problem(tag, node)
        if why is not None:
            line = node.start_mark.line + 1
            problems.append(f"line {line}: {tag} ({why})")
    problems += _pretrainer_problems(root)
    if problems:
        raise UntrustedModelError(
            f"{path} runs what a model does not need:\n  "
            + "\n  ".join(problems)
            + "\nA model folder is code: this one was changed or made "
            "elsewhere. Load it only if you trust where it comes from, with "
            "--trust-model (trust=True)."
        )


def _pretrainer_problems(root):
    """A top-level ``pretrainer`` that fetches files from outside the folder."""
    if root is None or not isinstance(root.value, list):
        return []
    problems = []
    for key, value in root.value:
        if key.value != "pretrainer" or not isinstance(value.value, list):
            continue
        for arg, _ in value.value:
            if arg.value in ("paths", "collect_in"):
                line = arg.start_mark.line + 1
                problems.append(
                    f"line {line}: pretrainer {arg.value} (it loads files "
                    "from outside the model folder)"
                )
    return problems
