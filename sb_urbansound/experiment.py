"""The output folder of a run: command-line overrides and run bookkeeping.

Authors
-------
 * sb-urbansound contributors
"""

import io
import re

from sb_urbansound.errors import UserError


def set_override(overrides, key, value):
    """Set one top-level key in SpeechBrain's YAML overrides string.

    ``speechbrain.parse_arguments`` returns the command line's ``--key=value``
    options as YAML text, one ``key: value`` line per key; this replaces the
    line of ``key`` (or adds one).

    Arguments
    ---------
    overrides : str
        The overrides (may be empty).
    key : str
        A top-level YAML key.
    value : int, float, bool or str
        Its new value, written as YAML.

    Returns
    -------
    str
        The new overrides.

    Example
    -------
    >>> set_override("lr: 0.1\\nn_classes: 0\\n", "n_classes", 4)
    'lr: 0.1\\nn_classes: 4\\n'
    """
    kept = re.sub(rf"(?m)^{re.escape(key)}:.*(\n|$)", "", overrides or "")
    if kept and not kept.endswith("\n"):
        kept += "\n"
    return f"{kept}{key}: {value}\n"


def _whole(minimum):
    """A check: a whole number (not a bool) of at least ``minimum``."""

    def check(value):
        return (
            isinstance(value, int)
            and not isinstance(value, bool)
            and value >= minimum
        )

    return check


def _number(low, high=None, low_open=True):
    """A check: a real number in ``(low, high)`` (``[low, ...`` if closed)."""

    def check(value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        above = value > low if low_open else value >= low
        return above and (high is None or value < high)

    return check


#: Keys whose values are checked before anything is built: the check and what
#: a valid value is, for the message.
CHECKED_KEYS = {
    "batch_size": (_whole(1), "a whole number >= 1"),
    "number_of_epochs": (_whole(1), "a whole number >= 1"),
    "channels": (_whole(1), "a whole number >= 1 (1: mono, 2: stereo)"),
    "sample_rate": (_whole(1), "a sample rate in Hz, e.g. 16000"),
    "duration_ms": (_number(0), "a clip length in milliseconds > 0"),
    "n_classes": (_whole(0), "0 (as many as the data has) or a whole number"),
    "shift_pct": (_number(0, 1, low_open=False), "a fraction in [0, 1)"),
    "num_workers": (_whole(0), "a whole number >= 0"),
    "n_folds": (_whole(1), "a whole number >= 1"),
    "lr": (_number(0), "a learning rate > 0"),
    "max_lr": (_number(0), "a learning rate > 0"),
    "n_mels": (_whole(1), "a whole number >= 1"),
}


def read_yaml_values(hparams_file, overrides=""):
    """The YAML's top-level values, with overrides, without building anything.

    References (``!ref``) are resolved as ``load_hyperpyyaml`` would resolve
    them, but no object is created (``!new:`` and ``!name:`` nodes come back
    as ruamel tagged nodes).

    Arguments
    ---------
    hparams_file : str or Path
        The YAML file.
    overrides : str
        YAML overrides (SpeechBrain's format).

    Returns
    -------
    dict
        The top-level keys and their resolved values.

    Raises
    ------
    UserError
        For a key given twice, an unknown key or a required key left unset;
        the message names the key.

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> _ = (tmp / "h.yaml").write_text("seed: 1\\nout: !ref r/<seed>\\n")
    >>> read_yaml_values(tmp / "h.yaml", "seed: 7")["out"]
    'r/7'
    >>> read_yaml_values(tmp / "h.yaml", "sede: 7")
    Traceback (most recent call last):
     ...
    sb_urbansound.errors.UserError: unknown option --sede: ... (did you mean --seed?)...
    """
    import difflib

    from hyperpyyaml import resolve_references

    seen = []
    for line in (overrides or "").splitlines():
        key = line.split(":", 1)[0].strip()
        if key and not line[:1].isspace():
            if key in seen:
                raise UserError(
                    f"--{key} is given twice on the command line; give it once"
                )
            seen.append(key)
    try:
        with open(hparams_file, encoding="utf-8") as fin:
            text = fin.read()
    except OSError as e:
        raise UserError(
            f"cannot read the YAML file {hparams_file}: {e}"
        ) from None
    keys = list(_tolerant_yaml().load(text) or {})
    for key in seen:
        if key not in keys:
            close = difflib.get_close_matches(key, keys, n=3)
            hint = f" (did you mean {', '.join('--' + k for k in close)}?)"
            raise UserError(
                f"unknown option --{key}: {hparams_file} has no such key"
                + (hint if close else "")
                + "; SpeechBrain's run options are listed by --help"
            )
    try:
        resolved = resolve_references(io.StringIO(text), overrides)
    except ValueError as e:
        match = re.search(r"'(\w+)' is a !PLACEHOLDER", str(e))
        if not match:
            raise
        key = match.group(1)
        raise UserError(
            f"{key} is required: pass --{key}=... on the command line"
        ) from None
    return dict(_tolerant_yaml().load(resolved) or {})


class Tagged:
    """A YAML node with a HyperPyYAML tag (``!new:``, ``!apply:``, ...)."""

    def __init__(self, tag):
        self.tag = tag

    def __repr__(self):
        return f"<{self.tag}>"


def _tolerant_yaml():
    """A safe YAML loader that reads tagged nodes as :class:`Tagged`."""
    import ruamel.yaml
    from ruamel.yaml.constructor import SafeConstructor

    class TolerantConstructor(SafeConstructor):
        """SafeConstructor that accepts any tag (a subclass: ruamel's
        ``add_multi_constructor`` changes the class it is called on)."""

    TolerantConstructor.add_multi_constructor(
        "!", lambda constructor, tag, node: Tagged(tag)
    )
    loader = ruamel.yaml.YAML(typ="safe", pure=True)
    loader.Constructor = TolerantConstructor
    return loader


def check_values(values, hparams_file="the YAML"):
    """Check the values of :data:`CHECKED_KEYS` before anything is built.

    Arguments
    ---------
    values : dict
        Top-level keys and values (from :func:`read_yaml_values`).
    hparams_file : str or Path
        Named in the message.

    Raises
    ------
    UserError
        Naming the key, its value and what a valid value is.

    Example
    -------
    >>> check_values({"batch_size": 0})
    Traceback (most recent call last):
     ...
    sb_urbansound.errors.UserError: batch_size=0 is not valid: ...
    """
    for key, (check, allowed) in CHECKED_KEYS.items():
        value = values.get(key)
        if key in values and not isinstance(value, Tagged) and not check(value):
            raise UserError(
                f"{key}={values[key]!r} is not valid: {key} must be {allowed} "
                f"(from {hparams_file} or --{key}=...)"
            )


def load_hparams_file(hparams_file, overrides=""):
    """Load a recipe YAML, with one-line errors for bad options.

    Unknown or repeated options, required keys left unset and invalid values
    of :data:`CHECKED_KEYS` are reported before any object is built, naming
    the key (see :func:`read_yaml_values` and :func:`check_values`).

    Arguments
    ---------
    hparams_file : str or Path
        The YAML file.
    overrides : str
        YAML overrides (SpeechBrain's format).

    Returns
    -------
    dict
        The loaded hyperparameters.
    """
    from hyperpyyaml import load_hyperpyyaml

    check_values(read_yaml_values(hparams_file, overrides), hparams_file)
    with open(hparams_file, encoding="utf-8") as fin:
        return load_hyperpyyaml(fin, overrides)
