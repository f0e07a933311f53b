"""The one reader of HyperPyYAML files as data: nothing built, nothing run
(HyperPyYAML's loader runs every ``!apply:``). Torch-free, SpeechBrain-free.

Authors
-------
 * sb-urbansound contributors
"""

from pathlib import Path

from sb_urbansound.errors import UserError


class Tagged:
    """A YAML node with a HyperPyYAML tag (``!new:``, ``!ref``, ...).

    Arguments
    ---------
    tag : str
        The tag (``!new:torch.nn.Linear``).
    value : object
        The node's content.

    Example
    -------
    >>> read_yaml("m: !new:torch.nn.Linear [2, 3]")["m"]
    <!new:torch.nn.Linear [2, 3]>
    """

    def __init__(self, tag, value=None):
        self.tag = tag
        self.value = value

    def __repr__(self):
        return f"<{self.tag} {self.value!r}>"

    def __eq__(self, other):
        mine = (self.tag, self.value)
        return isinstance(other, Tagged) and mine == (other.tag, other.value)

    def __hash__(self):  # a tagged key (refused by the trust check)
        return hash(self.tag)


def _loader():
    """ruamel's safe loader, reading tagged nodes as :class:`Tagged`."""
    import ruamel.yaml
    from ruamel.yaml.constructor import SafeConstructor
    from ruamel.yaml.nodes import MappingNode, SequenceNode

    class TolerantConstructor(SafeConstructor):
        """Reads any other tag as data (a subclass: ``add_constructor``
        changes the class it is called on)."""

    def construct_tagged(constructor, node):
        if isinstance(node, MappingNode):
            value = constructor.construct_mapping(node, deep=True)
        elif isinstance(node, SequenceNode):
            value = constructor.construct_sequence(node, deep=True)
        else:
            value = constructor.construct_scalar(node)
        return Tagged(str(node.tag), value)

    TolerantConstructor.add_constructor(None, construct_tagged)
    loader = ruamel.yaml.YAML(typ="safe", pure=True)
    loader.Constructor = TolerantConstructor
    return loader


def read_yaml(source, nodes=False, name=None):
    """Read a HyperPyYAML file or text as data; what cannot be read raises
    a one-line :class:`UserError` (``cannot read <file>: <why>``).

    Arguments
    ---------
    source : str or Path
        A file (a ``Path``) or YAML text (a ``str``).
    nodes : bool
        Return ruamel's node tree (with line numbers) instead of values.
    name : str or Path, optional
        What the message calls the text (default: the file).

    Returns
    -------
    object
        The values (dicts, lists, scalars, :class:`Tagged`), or the root
        node (None for an empty document).

    Example
    -------
    >>> read_yaml("a: 1\\nb: !ref <a>")
    {'a': 1, 'b': <!ref '<a>'>}
    >>> read_yaml("a: [")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
     ...
    sb_urbansound.errors.UserError: cannot read the YAML text: while parsing ...
    """
    what = name or (source if isinstance(source, Path) else "the YAML text")
    try:
        if isinstance(source, Path):
            source = source.read_text(encoding="utf-8")
        loader = _loader()
        return loader.compose(source) if nodes else loader.load(source)
    except Exception as e:  # syntax errors, unreadable file, deep nesting
        why = " ".join(str(e).split())
        raise UserError(f"cannot read {what}: {why}") from e
