"""What a model folder may run: its ``hyperparams.yaml`` is checked first.

HyperPyYAML builds whatever a tag names, so a model folder is code:
:func:`check_model_yaml` allows only what this plugin's model folders are
made of and names every other line (rules: ``docs/stores.md``).

Authors
-------
 * sb-urbansound contributors
"""

import pydoc
import re
from pathlib import Path

from ruamel.yaml.nodes import MappingNode, ScalarNode
from sb_urbansound.errors import UserError
from sb_urbansound.yaml_reader import read_yaml

from speechbrain.utils.run_opts import RunOptions

#: ``<tag kind>:<module>.<qualname>`` of each object a model folder's YAML
#: may build, name or call (``tests/test_trust.py`` checks every recipe's).
ALLOWED = (
    # Audio, features, normalisers
    "!new:sb_urbansound.data.audio.ClipConditioner",
    "!new:sb_urbansound.training.features.MelSpectrogramDB",
    "!new:sb_urbansound.training.features.Log1pMelSpectrogram",
    "!new:sb_urbansound.training.features.BatchStandardize",
    "!new:sb_urbansound.training.features.ClipStandardize",
    "!new:speechbrain.lobes.features.Fbank",
    "!new:speechbrain.processing.features.InputNormalization",
    # Networks
    "!new:sb_urbansound.training.models.CNNEmbedding",
    "!apply:sb_urbansound.training.models.CNNEmbedding.pooled_size",
    "!new:sb_urbansound.training.models.LinearClassifier",
    "!new:sb_urbansound.training.finetune.BEATsEncoder",
    "!new:sb_urbansound.training.finetune.PassThrough",
    "!new:sb_urbansound.training.yamnet.YAMNetFrontEnd",
    "!new:sb_urbansound.training.yamnet.YAMNetEncoder",
    "!new:speechbrain.lobes.models.Cnn14.Cnn14",
    "!new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN",
    "!new:speechbrain.lobes.models.ECAPA_TDNN.Classifier",
    "!new:speechbrain.lobes.models.Xvector.Xvector",
    "!new:speechbrain.lobes.models.Xvector.Classifier",
    "!new:speechbrain.nnet.containers.Sequential",
    "!new:speechbrain.nnet.containers.LengthsCapableSequential",
    "!new:torch.nn.modules.linear.Linear",
    "!new:torch.nn.modules.dropout.Dropout",
    "!new:torch.nn.modules.activation.ReLU",
    "!name:torch.nn.modules.activation.LeakyReLU",
    "!new:torch.nn.modules.activation.LogSoftmax",
    # Labels and loading
    "!new:speechbrain.dataio.encoder.CategoricalEncoder",
    "!apply:speechbrain.dataio.encoder.CategoricalEncoder.ignore_len",
    "!new:speechbrain.utils.parameter_transfer.Pretrainer",
)
#: The packages whose modules a tag may import (importing a module runs it).
_PACKAGES = {entry.split(":")[1].split(".")[0] for entry in ALLOWED}
_STR = "tag:yaml.org,2002:str"
#: Plain YAML types (``%TAG`` directives and ``!!`` tags give others).
_PLAIN = {
    f"tag:yaml.org,2002:{kind}"
    for kind in ("str", "int", "float", "bool", "null", "seq", "map")
}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Top-level keys that SpeechBrain reads as run options (``compile``, ...).
_RUN_OPTIONS = set(RunOptions().as_dict())


class UntrustedModelError(UserError):
    """A model folder's YAML would run something outside the allow-list.

    Example
    -------
    >>> issubclass(UntrustedModelError, UserError)
    True
    """


def _locate(name):
    """``pydoc.locate`` of a public name in :data:`_PACKAGES` (else None)."""
    parts = name.split(".")
    if parts[0] not in _PACKAGES or not all(
        p.isidentifier() and not p.startswith("_") for p in parts
    ):
        return None
    try:
        return pydoc.locate(name)
    except Exception:  # an import that fails
        return None


def _object_problem(tag):
    """Why ``!new:``/``!name:``/``!apply:`` + a dotted name is refused."""
    kind, _, name = tag.partition(":")
    obj = _locate(name)
    try:
        real = f"{obj.__module__}.{obj.__qualname__}"
    except Exception:  # None, a module, an instance
        real = None
    if f"{kind}:{real}" in ALLOWED and _locate(real) is obj:
        return None
    what = f"{real}: " if real and real != name else ""
    return f"{tag} ({what}not one of the objects a model is made of)"


def _node_problem(node, is_key, above):
    """Why a composed YAML node is refused (None: it is not)."""
    tag = node.tag
    text = node.value if isinstance(node, ScalarNode) else ""
    if node.anchor:
        return f"&{node.anchor} (anchors and aliases can expand without bound)"
    if is_key:
        if tag == _STR and _NAME.fullmatch(text):
            return None
        shown = text if tag == _STR else f"{tag} {text}".rstrip()
        return f"key {shown} (keys are plain names)"
    if tag in _PLAIN:
        if tag == _STR and text.startswith("("):
            return f"{text} (a string in parentheses is read as a !tuple)"
        if tag == _STR and re.search("<[^>]*>", text):
            return f"{text} (a <reference> in a string is evaluated)"
        return None
    if tag == "!ref":
        match = re.fullmatch(r"<([A-Za-z0-9_]+)>", text)
        if match and match[1] in above:
            return None
        return f"!ref {text} (a reference names a key above it: <key>)"
    if tag.partition(":")[0] in ("!new", "!name", "!apply"):
        return _object_problem(tag)
    return f"{tag} (model folders do not use this tag)"


def _problems(root):
    """``(line, why)`` of every node of a composed YAML that is refused."""
    found, seen, above = [], set(), set()

    def walk(node, is_key=False):
        stack = [(node, is_key)]
        while stack:
            node, is_key = stack.pop()
            if id(node) in seen:  # an alias: its anchor is refused
                continue
            seen.add(id(node))
            why = _node_problem(node, is_key, above)
            if why:
                found.append((node.start_mark.line + 1, why))
            if isinstance(node.value, list):  # children, in document order
                for item in reversed(node.value):
                    if isinstance(item, tuple):  # a mapping's (key, value)
                        stack += [(item[1], False), (item[0], True)]
                    else:
                        stack.append((item, False))

    pairs = root.value if isinstance(root, MappingNode) else []
    for key, value in pairs:
        walk(key, is_key=True)
        name = key.value if isinstance(key, ScalarNode) else None
        line = key.start_mark.line + 1
        if name in _RUN_OPTIONS:
            found.append((line, f"{name} (a SpeechBrain run option)"))
        if name == "pretrainer" and isinstance(value, MappingNode):
            for arg, _ in value.value:
                if arg.value in ("paths", "collect_in"):
                    why = f"pretrainer {arg.value} (it loads files from "
                    why += "outside the model folder)"
                    found.append((arg.start_mark.line + 1, why))
        walk(value)
        above.add(name)
    if root is not None and not pairs:
        walk(root)
    return sorted(found, key=lambda item: item[0])


def check_model_yaml(path, text=None):
    """Refuse a model ``hyperparams.yaml`` that runs anything but a model.

    Arguments
    ---------
    path : str or Path
        The file (named in the message).
    text : str, optional
        Its text as read once by the caller, who then loads that text
        (default: the file is read here).

    Raises
    ------
    UntrustedModelError
        Naming each line outside the allow-list (one line).

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> _ = (tmp / "h.yaml").write_text(
    ...     "m: !new:torch.nn.Linear [2, 3]\\nx: !apply:os.system [ls]\\n"
    ... )
    >>> check_model_yaml(tmp / "h.yaml")  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
     ...
    sb_urbansound.serving.trust.UntrustedModelError: ...h.yaml runs what a
    model does not need: line 2: !apply:os.system (not one of the objects a
    model is made of). ...
    """
    path = Path(path)
    source = path if text is None else text
    problems = _problems(read_yaml(source, nodes=True, name=path))
    if problems:
        raise UntrustedModelError(
            f"{path} runs what a model does not need: "
            + "; ".join(f"line {line}: {why}" for line, why in problems)
            + ". A model folder is code: this one was changed or made "
            "elsewhere. Load it only if you trust where it comes from, with "
            "--trust-model (trust=True)."
        )
