"""Processes we start, and how a run stops: no child outlives its run.

* :func:`stop_on_signals` turns SIGTERM and SIGHUP (a cluster scheduler's
  preemption, a closed terminal) into a :class:`Stopped` exception, so that a
  stopped run cleans up as after Ctrl-C (temporary files removed, loader
  workers stopped, locks released) and exits with ``128 + signal``;
* :func:`die_with_parent` (in a DataLoader worker, through
  :class:`WorkerInit`) and :func:`die_with_parent_preexec` (for
  ``subprocess.Popen``) make the kernel signal a child when its parent
  ends, even by SIGKILL, so no worker is ever left running on its own;
* :func:`exit_now` ends a run without the interpreter's teardown, which
  costs seconds and which gloo's threads can abort under ``torchrun``;
* :func:`run_recipe` runs a recipe's ``main`` with all of the above.

Authors
-------
 * sb-urbansound contributors
"""

import atexit
import contextlib
import ctypes
import os
import signal
import sys
import threading

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
#: The signals :func:`stop_on_signals` turns into :class:`Stopped`.
STOP_SIGNALS = tuple(
    getattr(signal, name)
    for name in ("SIGTERM", "SIGHUP")
    if hasattr(signal, name)
)


class Stopped(KeyboardInterrupt):
    """The run got a stop signal (SIGTERM, SIGHUP); raised where it was.

    A :class:`KeyboardInterrupt`, so that nothing on the way out mistakes it
    for an error and every ``finally`` runs, as after Ctrl-C.

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
    """``"SIGTERM"`` for 15, and so on.

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
    """Within the block, ``handler(signum, frame)`` handles ``signals``
    (only in the main thread, Python's rule; an ignored signal, as under
    ``nohup``, stays ignored); ``previous`` (a dict) gets each old handler,
    which comes back after the block."""
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
    """Within the block, a stop signal raises :class:`Stopped`.

    The first signal raises; the handlers are then restored, so a second
    one acts at once (its default: the process ends). See :func:`handling`.

    Arguments
    ---------
    signals : tuple of int
        The signals.

    Yields
    ------
    None

    Example
    -------
    >>> import pytest, time
    >>> with pytest.raises(Stopped):
    ...     with stop_on_signals():
    ...         os.kill(os.getpid(), signal.SIGTERM)
    ...         time.sleep(5)  # the handler raises here
    """
    previous = {}

    def handler(signum, frame):
        for sig, old in previous.items():
            signal.signal(sig, old)
        raise Stopped(signum)

    with handling(signals, handler, previous):
        yield


def exit_now(status):
    """End this process: the exit handlers run, the interpreter is not torn
    down.

    After a run, the teardown frees, module by module and object by object,
    what the process's end frees anyway: 1.5 s of CPU after a 3-epoch
    ``cnn.yaml`` run (1.3 s of the command's time on an idle machine). And
    under ``torchrun``, gloo's worker threads outlive
    ``destroy_process_group`` (a DistributedDataParallel module keeps its
    process group). The last ``barrier`` lets the main thread go on while a
    worker thread still holds the works it waited for; when that thread then
    frees a tensor made in Python (SpeechBrain's broadcast of an object), it
    takes the GIL, and during the interpreter's teardown that ends the
    thread, through C++ code that cannot be unwound:
    ``terminate called without an active exception`` (SIGABRT), now and
    then, once every file is written. Here the exit handlers run as at a
    normal exit (log files flushed and closed, loader workers stopped), the
    output is flushed, and the process ends before the teardown.

    Arguments
    ---------
    status : int
        The exit status.

    Example
    -------
    >>> import subprocess, sys
    >>> code = (
    ...     "from sb_urbansound.training.processes import exit_now; exit_now(3)"
    ... )
    >>> subprocess.run([sys.executable, "-c", code]).returncode
    3
    """
    atexit._run_exitfuncs()  # what a normal exit runs first (no public API)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(status)


def run_recipe(main):
    """Runs a recipe's ``main()`` as a command, and exits.

    SIGTERM (a scheduler's preemption) and SIGHUP stop the run as Ctrl-C
    does (:func:`stop_on_signals`): temporary files are removed and workers
    stopped on the way out, and the message says how to resume. A
    ``UserError`` (bad data or options) is one line, without a traceback
    (``sb_urbansound.errors.report``). A finished run, and every process of
    a ``torchrun`` launch, ends with :func:`exit_now`; an error or a stop
    raises ``SystemExit`` (its teardown costs nothing that matters then, and
    a caller in Python, such as a test, gets its status back).

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
    """Make the kernel send ``sig`` to this process when its parent ends.

    Called in a child process right after it starts; if the parent is
    already gone, the child exits at once.

    Arguments
    ---------
    parent_pid : int
        The pid of the parent, as the parent knew it.
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
    >>> die_with_parent(os.getppid()) in (True, False)
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
    """A ``preexec_fn`` that makes a child get ``sig`` when this process dies.

    The child arranges it between fork and exec (:func:`die_with_parent`),
    so the kernel signals it when its parent ends, even by SIGKILL. libc is
    opened here, in the parent (not after the fork).

    Arguments
    ---------
    sig : int
        The signal the child gets.

    Returns
    -------
    callable or None
        The function for ``subprocess.Popen(..., preexec_fn=...)``; None where
        ``prctl`` is not available (not Linux), where nothing is done.

    Example
    -------
    >>> preexec = die_with_parent_preexec()
    >>> preexec is None or callable(preexec)
    True
    """
    prctl = _libc_prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec():
        """In the child: ``sig`` on the parent's death."""
        die_with_parent(parent, sig, prctl)

    return preexec


class WorkerInit:
    """A DataLoader ``worker_init_fn``: the worker dies with its parent.

    A DataLoader worker notices its parent's death only when it next waits
    for work, and a worker decoding a long file (or one whose parent was
    killed mid-epoch) can run on for minutes, with the parent's open files.
    This asks the kernel to kill it (SIGKILL) as soon as the parent ends,
    then calls the loader's own ``worker_init_fn``, if any.

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
