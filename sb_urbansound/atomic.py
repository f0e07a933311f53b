"""Stores: how every folder that sb-urbansound writes is written.

The rules of ``docs/stores.md``: marked as ours, written atomically, locked
while written, deleted only if marked, never read or written through a link.

Authors
-------
 * sb-urbansound contributors
"""

import contextlib
import errno
import json
import os
import re
import shutil
import stat
import struct
import sys
import tempfile
import time
from pathlib import Path

from sb_urbansound.errors import BusyError, NotOursError, UserError

TMP_SUFFIX = ".sbu-tmp"
#: A temporary's name, ``.<final name>.<8 random chars>.sbu-tmp``, only.
_TMP_NAME = re.compile(r"^\.(?P<final>.+)\.[a-z0-9_]{8}\.sbu-tmp$")
MARKER_FILE = ".sb_urbansound.json"
MADE_BY = "sb_urbansound"
LOCK_FILE = ".lock"
# written into a run's folder by SpeechBrain's recipe-test runner
_RUNNER_ENTRIES = ("stdout.txt", "stderr.txt", ".passed")


def _umask():
    """The process's file-mode creation mask."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mkdtemp(parent, name):
    """A new temporary folder named for ``name`` in ``parent``."""
    return Path(
        tempfile.mkdtemp(dir=parent, prefix=f".{name}.", suffix=TMP_SUFFIX)
    )


def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` atomically (temporary file + rename).

    Arguments
    ---------
    path : str or Path
        Destination file (its folder is created if needed).
    data : bytes or str
        The contents (a str is written as UTF-8).

    Returns
    -------
    Path
        ``path``.

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> atomic_write_bytes(tmp / "a.bin", b"abc").read_bytes()
    b'abc'
    >>> atomic_write_text(tmp / "a.txt", "hi").read_text()
    'hi'
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX
    )
    try:
        with os.fdopen(fd, "wb") as f:  # f owns fd from here
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's file is private
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


atomic_write_text = atomic_write_bytes


def atomic_write_json(path, obj):
    """Write ``obj`` as indented JSON to ``path`` atomically.

    Arguments
    ---------
    path : str or Path
        Destination file.
    obj : object
        Anything ``json.dumps`` accepts.

    Returns
    -------
    Path
        ``path``.

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> json.loads(atomic_write_json(tmp / "a.json", {"x": 1}).read_text())
    {'x': 1}
    """
    return atomic_write_bytes(path, json.dumps(obj, indent=2) + "\n")


def make_temp_folder(parent, name):
    """A new hidden folder in ``parent`` to build ``name`` in.

    Arguments
    ---------
    parent : str or Path
        The folder that will hold ``name``.
    name : str
        The final folder's name.

    Returns
    -------
    Path
        The new, empty folder (for :func:`replace_folder`).

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> make_temp_folder(tmp, "model").name.startswith(".model.")
    True
    """
    Path(parent).mkdir(parents=True, exist_ok=True)
    folder = _mkdtemp(parent, name)
    os.chmod(folder, 0o777 & ~_umask())  # mkdtemp makes it private
    return folder


def open_store_file(path, flags=os.O_RDONLY, mode=0o666):
    """Open a file of a store, never through a link (``NotOursError`` for a
    link or anything but a regular file; a FIFO cannot hang us).

    Arguments
    ---------
    path : str or Path
        The file.
    flags : int
        ``os.open`` flags (``O_NOFOLLOW``, ``O_CLOEXEC`` are added).
    mode : int
        The permissions of a file that ``O_CREAT`` creates.

    Returns
    -------
    int
        An open file descriptor.

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> _ = (tmp / "notes.txt").write_text("mine")
    >>> (tmp / ".lock").symlink_to(tmp / "notes.txt")
    >>> flags = os.O_RDWR | os.O_CREAT
    >>> open_store_file(tmp / ".lock", flags)  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
     ...
    sb_urbansound.errors.NotOursError: .../.lock is a link
    (to .../notes.txt), ...
    """
    extra = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags | extra, mode)
    except OSError as e:
        # ELOOP: a link; EISDIR: a folder; ENXIO: a FIFO with no reader
        if e.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            raise
    else:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
        os.close(fd)
    path = Path(path)
    link = path.is_symlink()
    what = f"a link (to {os.readlink(path)})" if link else "not a regular file"
    raise NotOursError(
        f"{path} is {what}, not a file that sb-urbansound wrote: it is never "
        "written or read through. Remove it (or choose another folder)."
    )


def read_store_json(path):
    """The JSON of a store's file, or None (absent, not JSON, or a link).

    Arguments
    ---------
    path : str or Path
        The file.

    Returns
    -------
    object or None

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> read_store_json(atomic_write_json(tmp / "a.json", {"x": 1}))
    {'x': 1}
    >>> (tmp / "b.json").symlink_to(tmp / "a.json")
    >>> read_store_json(tmp / "b.json") is None
    True
    """
    try:
        with os.fdopen(open_store_file(path), "rb") as f:
            return json.loads(f.read())
    except (OSError, ValueError, NotOursError):
        return None


def _marker(folder):
    """The marker of a store, or None when ``folder`` has none."""
    marker = read_store_json(Path(folder) / MARKER_FILE)
    ours = isinstance(marker, dict) and marker.get("made_by") == MADE_BY
    return marker if ours else None


def store_kind(folder):
    """The kind of store ``folder`` is (``"run"``, ``"bank"``, ...), or None.

    Arguments
    ---------
    folder : str or Path
        A folder.

    Returns
    -------
    str or None

    Example
    -------
    >>> store_kind(getfixture("tmp_path")) is None
    True
    """
    return (_marker(folder) or {}).get("kind")


def mark_store(folder, kind, **info):
    """Mark ``folder`` as a store of ours (the marker is written only when
    absent or different: never on a read-only store).

    Arguments
    ---------
    folder : str or Path
        The folder (created if needed).
    kind : str
        What the store is: ``run``, ``bank``, ``model``, ``crossval``...
    **info
        More JSON-able facts to record.

    Returns
    -------
    Path
        The folder.

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> store_kind(mark_store(tmp / "m", "model"))
    'model'
    """
    folder = Path(folder)
    marker = {"made_by": MADE_BY, "kind": kind, **info}
    if _marker(folder) != json.loads(json.dumps(marker)):
        atomic_write_json(folder / MARKER_FILE, marker)
    return folder


def claim_folder(folder, kind, what="output_folder"):
    """Make a new or empty ``folder`` a store of ``kind``, use a store of
    that kind as it is, refuse any other folder (naming what it holds).

    Arguments
    ---------
    folder : str or Path
        The folder.
    kind : str
        The kind of store (see :func:`mark_store`).
    what : str
        The option that names the folder, for messages.

    Returns
    -------
    Path
        The folder.

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> store_kind(claim_folder(tmp / "out", "run"))
    'run'
    >>> _ = (tmp / "mine").mkdir(), (tmp / "mine" / "notes.txt").write_text("")
    >>> claim_folder(tmp / "mine", "run")  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
     ...
    sb_urbansound.errors.NotOursError: output_folder ... holds files that
    sb-urbansound did not write (notes.txt)...
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotOursError(
            f"{what} {folder} is a file, not a folder: choose another path "
            f"(--{what}=...)"
        )
    found = store_kind(folder)
    if found == kind:
        return folder
    if found is not None:
        raise NotOursError(
            f"{what} {folder} is an sb-urbansound {found} folder, not a "
            f"{kind} folder: choose another path (--{what}=...)"
        )
    # our lock, marker and (another writer's) temporaries do not count
    runner = _RUNNER_ENTRIES if kind == "run" else ()
    ignored = {MARKER_FILE, LOCK_FILE, *runner}
    names = {p.name for p in folder.iterdir()} if folder.exists() else set()
    entries = sorted(n for n in names - ignored if not _TMP_NAME.match(n))
    if not entries:
        return mark_store(folder, kind)
    shown = ", ".join(entries[:8]) + (" ..." if len(entries) > 8 else "")
    raise NotOursError(
        f"{what} {folder} holds files that sb-urbansound did not write "
        f"({shown}); they could be overwritten. Choose a new or empty "
        "folder (or move these files away)."
    )


def remove_store(folder, kind=None):
    """Delete a store of ours; refuse anything without our marker.

    Arguments
    ---------
    folder : str or Path
        The store.
    kind : str, optional
        Only a store of this kind.

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> remove_store(mark_store(tmp / "b", "bank"), "bank")
    >>> (tmp / "b").exists()
    False
    >>> remove_store(tmp)  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
     ...
    sb_urbansound.errors.NotOursError: ... is not a folder that
    sb-urbansound made...
    """
    folder = Path(folder)
    found = store_kind(folder) if not folder.is_symlink() else None
    if found is None or (kind is not None and found != kind):
        raise NotOursError(
            f"{folder} is not a folder that sb-urbansound made"
            + (f" (a {kind} folder)" if kind else "")
            + ": it is left alone"
        )
    shutil.rmtree(folder)


def replace_folder(new, folder):
    """Move the folder ``new`` to ``folder``, replacing only a store of ours
    of the same kind (renamed aside first: ``folder`` is old or new, never
    missing or half).

    Arguments
    ---------
    new : str or Path
        A complete folder (from :func:`make_temp_folder`).
    folder : str or Path
        Its final path.

    Returns
    -------
    Path
        ``folder``.

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> new = mark_store(make_temp_folder(tmp, "m"), "model")
    >>> _ = (new / "a.txt").write_text("x")
    >>> sorted(p.name for p in replace_folder(new, tmp / "m").iterdir())
    ['.sb_urbansound.json', 'a.txt']
    """
    new, folder = Path(new), Path(folder)
    kind = store_kind(new)
    old = None
    if folder.exists() or folder.is_symlink():
        ours = kind is not None and store_kind(folder) == kind
        if folder.is_symlink() or not ours:
            raise NotOursError(
                f"{folder} exists and is not an sb-urbansound {kind or ''} "
                "folder, so it is not replaced: move it away, or choose "
                "another path"
            )
        old = _mkdtemp(folder.parent, folder.name)
        os.replace(folder, old / folder.name)
    os.replace(new, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def remove_stale_temps(folder):
    """Delete the temporaries of killed writes (call with the store's lock).

    Arguments
    ---------
    folder : str or Path
        The folder to clean (not recursive).

    Returns
    -------
    list of Path
        What was removed.

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> _ = atomic_write_text(tmp / "a.txt", "x")
    >>> _ = (tmp / ".a.txt.k2j3ab_9.sbu-tmp").write_text("half")
    >>> _ = (tmp / ".my.config.tmp").write_text("a user's file")
    >>> [p.name for p in remove_stale_temps(tmp)]
    ['.a.txt.k2j3ab_9.sbu-tmp']
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = [e for e in sorted(folder.iterdir()) if _TMP_NAME.match(e.name)]
    for entry in removed:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    return removed


#: The locks this process holds: (device, inode) of the lock file -> path.
_HELD = {}
#: Linux ``struct flock`` (l_type, l_whence, l_start, l_len, l_pid, padding).
_FLOCK = "hhqqi4x"


def _holder(fd):
    """``"process 123 (python train.py ...)"``: who holds the lock on ``fd``."""
    import fcntl

    pid = None
    if sys.platform.startswith("linux"):  # ask the kernel
        query = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        with contextlib.suppress(OSError):
            answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
            l_type, _, _, _, pid = struct.unpack(_FLOCK, answer)
            pid = pid if l_type != fcntl.F_UNLCK and pid > 0 else None
    if pid is None:  # the pid the holder wrote
        try:
            pid = int(os.pread(fd, 32, 0).split()[0])
        except (OSError, ValueError, IndexError):
            return "a process that could not be identified"
    command = ""
    with contextlib.suppress(OSError):
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        command = " ".join(w.decode(errors="replace") for w in words if w)
    if len(command) > 120:
        command = command[:117] + "..."
    return f"process {pid}" + (f" ({command})" if command else "")


def _file_key(path, fd=None):
    """(device, inode) of a file (not of a link's target), or None."""
    try:
        st = os.fstat(fd) if fd is not None else os.lstat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


class FolderLock:
    """An exclusive lock on a store: a POSIX record lock on ``<folder>/.lock``
    (released by the kernel when the process ends, never held by a child),
    holding the holder's pid; a refusal names the holder.

    Arguments
    ---------
    folder : str or Path
        The store (created if needed).
    what : str
        What the holder does, for messages (``"writing to"``).

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> lock = FolderLock(tmp).acquire()
    >>> FolderLock(tmp).acquire()
    Traceback (most recent call last):
     ...
    sb_urbansound.errors.BusyError: this process already holds ...
    >>> lock.release()
    >>> FolderLock(tmp).acquire().release()
    """

    def __init__(self, folder, what="writing to"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.what = what
        self._fd = self._key = None

    def acquire(self, wait=False, on_wait=None):
        """Take the lock (:class:`BusyError` if this process holds it, or
        another one does and not ``wait``).

        Arguments
        ---------
        wait : bool
            Wait for another process to release it (else raise at once).
        on_wait : callable, optional
            Called once, with the holder's description, when waiting starts.

        Returns
        -------
        FolderLock
            ``self``.
        """
        import fcntl

        if self._fd is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        # a second POSIX lock of one file in a process would succeed, and
        # closing it would drop the first
        if _file_key(self.path) in _HELD:
            raise BusyError(
                f"this process already holds the lock of {self.folder}"
            )
        fd = open_store_file(self.path, os.O_RDWR | os.O_CREAT)
        try:
            while True:
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as e:
                    if e.errno not in (errno.EACCES, errno.EAGAIN):
                        raise
                holder = _holder(fd)
                if not wait:
                    raise BusyError(
                        f"another run ({holder}) is {self.what} "
                        f"{self.folder}. Wait for it to finish (or stop it), "
                        "or use another folder."
                    )
                if on_wait is not None:
                    on_wait(holder)
                    on_wait = None  # once
                time.sleep(0.5)
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        self._key = _file_key(self.path, fd)
        _HELD[self._key] = str(self.path)
        return self

    def release(self):
        """Release the lock (it is also released when the process ends)."""
        if self._fd is not None:
            _HELD.pop(self._key, None)
            os.close(self._fd)
            self._fd = None

    def __del__(self):
        self.release()

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def is_read_only_error(error):
    """Whether an ``OSError`` means that a folder cannot be written.

    Arguments
    ---------
    error : OSError
        The error.

    Returns
    -------
    bool

    Example
    -------
    >>> is_read_only_error(OSError(errno.EROFS, "read-only"))
    True
    """
    read_only = (errno.EROFS, errno.EACCES, errno.EPERM)
    return isinstance(error, OSError) and error.errno in read_only


def reserve_space(fd, size, folder):
    """Allocate ``size`` bytes for an open file, or raise
    :func:`no_space_error` (a memory-mapped file would die by SIGBUS).

    Arguments
    ---------
    fd : int
        An open, writable file descriptor.
    size : int
        Bytes the file will hold.
    folder : str or Path
        Named in the message.

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> with open(tmp / "f", "wb") as f:
    ...     reserve_space(f.fileno(), 4096, tmp)
    >>> (tmp / "f").stat().st_size
    4096
    """
    try:
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
            block = bytes(1 << 24)  # no fallocate here: zeros allocate too
            for done in range(0, size, len(block)):
                os.pwrite(fd, block[: min(len(block), size - done)], done)
            os.fsync(fd)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise no_space_error(folder, size) from None
        raise


def no_space_error(folder, needed):
    """The message for a disk too full to hold what we write.

    Arguments
    ---------
    folder : str or Path
        Where we write.
    needed : int
        Bytes needed.

    Returns
    -------
    UserError

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> "no space left" in str(no_space_error(tmp, 10**12))
    True
    """
    try:
        free = f"{shutil.disk_usage(folder).free / 1e6:.0f} MB free"
    except OSError:
        free = "free space unknown"
    return UserError(
        f"no space left on the device of {folder} (it needs "
        f"{needed / 1e6:.0f} MB, {free}). Free some space or point the "
        "folder at another disk, then run the same command again: it resumes."
    )
