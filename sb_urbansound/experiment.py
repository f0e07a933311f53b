"""The output folder of a run: command-line overrides and run bookkeeping.

Authors
-------
 * sb-urbansound contributors
"""

import re


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
