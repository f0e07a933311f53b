"""Processes we start, and how a run stops: no child outlives its run.

SIGTERM and SIGHUP stop a run as Ctrl-C does (:func:`stop_on_signals`),
children get a signal when their parent dies (:func:`die_with_parent`),
:func:`exit_now` skips the interpreter's teardown and :func:`run_recipe`
runs a recipe's ``main`` with all of these (``docs/stores.md``).

Authors
-------
 * sb-urbansound contributors
"""

import atexit
import contextlib
import ctypes
import functools
import os
import signal
import sys
import threading

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
#: The signals :func:`stop_on_signals` turns into :class:`Stopped`.
STOP_SIGNALS = tuple(
    getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n)
)


class Stopped(KeyboardInterrupt):
    """A stop signal; a ``KeyboardInterrupt``, so ``finally`` runs as after
    Ctrl-C.

    Arguments
    ---------
    signum : int
        The signal.

    Example
    -------
    >>> Stopped(signal.SIGTERM).exit_status
    143
    """

    def __init__(self, signum):
        super().__init__(signal_name(signum))
        self.signum = int(signum)

    @property
    def exit_status(self):
        """``128 + signal``, as a shell reports a process killed by it."""
        return 128 + self.signum


def signal_name(signum):
    """The name of a signal: ``"SIGTERM"`` for 15.

    Arguments
    ---------
    signum : int
        A signal number.

    Returns
    -------
    str

    Example
    -------
    >>> signal_name(signal.SIGINT)
    'SIGINT'
    """
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


@contextlib.contextmanager
def handling(signals, handler, previous=None):
    """Within the block, ``handler`` handles ``signals`` (main thread only;
    an ignored signal stays ignored); ``previous`` gets the old handlers."""
    previous = {} if previous is None else previous
    main = threading.current_thread() is threading.main_thread()
    try:
        for sig in signals if main else ():
            old = signal.getsignal(sig)
            if old is not signal.SIG_IGN:
                previous[sig] = signal.SIG_DFL if old is None else old
                signal.signal(sig, handler)
        yield previous
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def stop_on_signals(signals=STOP_SIGNALS):
    """Within the block, a stop signal raises :class:`Stopped`, after
    restoring the handlers (a second signal acts at once).

    Arguments
    ---------
    signals : tuple of int
        The signals.

    Example
    -------
    >>> import pytest, time
    >>> with pytest.raises(Stopped), stop_on_signals():
    ...     os.kill(os.getpid(), signal.SIGTERM)
    ...     time.sleep(5)  # the handler raises here
    """
    previous = {}

    def handler(signum, frame):
        for sig, old in previous.items():
            signal.signal(sig, old)
        raise Stopped(signum)

    with handling(signals, handler, previous):
        yield


def exit_now(status):
    """End this process: exit handlers run, the interpreter is not torn
    down (it costs seconds, and under ``torchrun`` gloo's threads can abort
    it with SIGABRT once every file is written: ``docs/performance.md``).

    Arguments
    ---------
    status : int
        The exit status.

    Example
    -------
    >>> import subprocess
    >>> code = "import sb_urbansound.training.processes as p; p.exit_now(3)"
    >>> subprocess.run([sys.executable, "-c", code]).returncode
    3
    """
    atexit._run_exitfuncs()  # what a normal exit runs first (no public API)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(status)


def run_recipe(main):
    """Run a recipe's ``main()`` as a command, and exit: a stop signal acts
    as Ctrl-C, a ``UserError`` is one line; a finished run (and any
    ``torchrun`` process) ends with :func:`exit_now`, otherwise
    ``SystemExit`` gives a caller in Python its status.

    Arguments
    ---------
    main : callable
        The recipe's ``main``, called without arguments.
    """
    from sb_urbansound.errors import UserError, report

    status = 0
    with stop_on_signals():
        try:
            main()
        except UserError as e:
            status = report(e)
        except KeyboardInterrupt as e:
            stop = e if isinstance(e, Stopped) else Stopped(signal.SIGINT)
            print(
                f"\nstopped by {signal_name(stop.signum)}: run the same "
                "command again to resume from the last checkpoint",
                file=sys.stderr,
            )
            status = stop.exit_status
    if status == 0 or os.environ.get("RANK") is not None:  # RANK: torchrun
        exit_now(status)
    sys.exit(status)


def _libc_prctl():
    """libc's ``prctl`` function (Linux), or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.restype = ctypes.c_int
    prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    return prctl


def die_with_parent(parent_pid, sig=signal.SIGKILL, prctl=None):
    """Have the kernel send ``sig`` to this child when its parent ends (at
    once if it is already gone).

    Arguments
    ---------
    parent_pid : int
        The parent's pid, as the parent knew it.
    sig : int
        The signal to get.
    prctl : callable, optional
        libc's ``prctl`` (default: looked up now).

    Returns
    -------
    bool
        Whether it could be arranged (Linux only).

    Example
    -------
    >>> calls = []  # libc's prctl would change this process itself
    >>> die_with_parent(os.getppid(), prctl=lambda *args: calls.append(args))
    True
    >>> calls == [(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)]
    True
    """
    prctl = prctl or _libc_prctl()
    if prctl is None:
        return False
    prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent_pid:  # it died before prctl: no signal comes
        os._exit(128 + int(sig))
    return True


def die_with_parent_preexec(sig=signal.SIGTERM):
    """A ``preexec_fn`` that makes a child get ``sig`` when this process
    dies, even by SIGKILL (libc is opened here, before the fork).

    Arguments
    ---------
    sig : int
        The signal the child gets.

    Returns
    -------
    callable or None
        For ``subprocess.Popen(preexec_fn=...)``; None without ``prctl``.

    Example
    -------
    >>> preexec = die_with_parent_preexec()
    >>> preexec is None or callable(preexec)
    True
    """
    prctl = _libc_prctl()
    if prctl is None:
        return None
    return functools.partial(die_with_parent, os.getpid(), sig, prctl)


class WorkerInit:
    """A DataLoader ``worker_init_fn``: the worker dies with its parent
    (SIGKILL), not when it next waits for work; then calls ``then``.

    Arguments
    ---------
    then : callable, optional
        Another ``worker_init_fn``, called after.

    Example
    -------
    >>> init = WorkerInit()
    >>> init.parent == os.getpid()
    True
    """

    def __init__(self, then=None):
        self.parent = os.getpid()
        self.then = then

    def __call__(self, worker_id):
        """Run in the worker process."""
        die_with_parent(self.parent)
        if self.then is not None:
            self.then(worker_id)
