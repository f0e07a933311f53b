"""Atomic writes: a file (or folder) appears whole or not at all.

Every file that sb-urbansound writes (manifests, results, reports, banks) goes
through these helpers, so an interrupted run never leaves a half-written file
behind. Files get the usual permissions of a new file (0666 less the umask).

Authors
-------
 * sb-urbansound contributors
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

#: Suffix of the temporary files and folders written here.
TMP_SUFFIX = ".tmp"


def current_umask():
    """The process's file-mode creation mask.

    Returns
    -------
    int
        The mask, e.g. ``0o022``.

    Example
    -------
    >>> 0 <= current_umask() <= 0o777
    True
    """
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` atomically (temporary file + rename).

    Arguments
    ---------
    path : str or Path
        Destination file; its parent folder is created if needed.
    data : bytes
        The full contents of the file.

    Returns
    -------
    Path
        The path that was written.

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> atomic_write_bytes(tmp / "a.bin", b"abc").read_bytes()
    b'abc'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX
    )
    try:
        # mkstemp makes the file readable by its owner only
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path, text):
    """Write ``text`` (UTF-8) to ``path`` atomically.

    Arguments
    ---------
    path : str or Path
        Destination file.
    text : str
        The full contents of the file.

    Returns
    -------
    Path
        The path that was written.

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> atomic_write_text(tmp / "a.txt", "hi").read_text()
    'hi'
    """
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj, indent=2):
    """Serialise ``obj`` as JSON and write it to ``path`` atomically.

    Arguments
    ---------
    path : str or Path
        Destination file.
    obj : object
        Anything ``json.dumps`` accepts.
    indent : int
        Indentation of the JSON text.

    Returns
    -------
    Path
        The path that was written.

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> import json
    >>> json.loads(atomic_write_json(tmp / "a.json", {"x": 1}).read_text())
    {'x': 1}
    """
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def make_temp_folder(parent, name):
    """Create a hidden temporary folder next to where ``name`` will live.

    Build a folder's contents in it, then move it into place with
    :func:`replace_folder`; :func:`remove_stale_temps` cleans up after a kill.

    Arguments
    ---------
    parent : str or Path
        The folder that will hold ``name``.
    name : str
        The final folder's name.

    Returns
    -------
    Path
        The new, empty folder, with the usual permissions of a new folder.

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> make_temp_folder(tmp, "model").name.startswith(".model.")
    True
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(
        tempfile.mkdtemp(dir=parent, prefix=f".{name}.", suffix=TMP_SUFFIX)
    )
    os.chmod(folder, 0o777 & ~current_umask())  # mkdtemp makes it private
    return folder


def replace_folder(new, folder):
    """Move the folder ``new`` to ``folder``, replacing an existing one.

    The old folder is first renamed aside, so at every moment ``folder`` is
    either the old one or the new one.

    Arguments
    ---------
    new : str or Path
        A complete folder (e.g. from :func:`make_temp_folder`), on the same
        file system.
    folder : str or Path
        Its final path.

    Returns
    -------
    Path
        ``folder``.

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> new = make_temp_folder(tmp, "m")
    >>> _ = (new / "a.txt").write_text("x")
    >>> sorted(p.name for p in replace_folder(new, tmp / "m").iterdir())
    ['a.txt']
    """
    new, folder = Path(new), Path(folder)
    old = None
    if folder.exists():
        old = Path(
            tempfile.mkdtemp(
                dir=folder.parent, prefix=f".{folder.name}.", suffix=TMP_SUFFIX
            )
        )
        os.replace(folder, old / folder.name)
    os.replace(new, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def remove_stale_temps(folder, names=None):
    """Delete the temporary files and folders that a killed write left behind.

    Only the hidden ``.<name>.<random>.tmp`` entries that these helpers create
    are removed, and only when no other process could still be writing them:
    call it while holding the output folder's lock.

    Arguments
    ---------
    folder : str or Path
        The folder to clean (not recursive).
    names : list of str, optional
        Only the temporaries of these final names (default: all).

    Returns
    -------
    list of Path
        What was removed.

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> _ = atomic_write_text(tmp / "a.txt", "x")
    >>> _ = (tmp / ".a.txt.k2j3.tmp").write_text("half")
    >>> [p.name for p in remove_stale_temps(tmp)]
    ['.a.txt.k2j3.tmp']
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in sorted(folder.iterdir()):
        name = entry.name
        if not (name.startswith(".") and name.endswith(TMP_SUFFIX)):
            continue
        final = name[1:].rsplit(".", 2)[0]
        if names is not None and final not in names:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed
