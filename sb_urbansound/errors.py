"""The errors that name a user's file, row or option and say what to do.

Commands (``train.py``, ``crossval``, ``classify``, ``export``) catch
:class:`UserError` and print its message instead of a traceback
(:func:`report`).

Authors
-------
 * sb-urbansound contributors
"""

import logging
import sys


def report(error):
    """Print an error as one line, ``error: <message>``, on stderr, once: the
    run's log files (``log.txt``) get it too, the console's handlers do not.

    Arguments
    ---------
    error : UserError
        The error.

    Returns
    -------
    int
        Its exit status.

    Example
    -------
    >>> import contextlib, io
    >>> err = io.StringIO()
    >>> with contextlib.redirect_stderr(err):
    ...     status = report(UserError("x.wav: no such file"))
    >>> err.getvalue(), status
    ('error: x.wav: no such file\\n', 2)
    """
    record = logging.LogRecord(
        __name__, logging.ERROR, __file__, 0, "%s", (error,), None
    )
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
    print(f"error: {error}", file=sys.stderr)
    return getattr(error, "exit_status", 2)


class UserError(Exception):
    """A problem with the user's data, options or folders (not a bug).

    Commands print its message and exit with :attr:`exit_status`.

    Example
    -------
    >>> issubclass(DataPrepError, UserError), UserError("x").exit_status
    (True, 2)
    """

    #: The exit status of a command stopped by this error.
    exit_status = 2


class BusyError(UserError):
    """Another process holds a store's lock (the message names it).

    Its exit status, 75 (``EX_TEMPFAIL``), tells a caller (``crossval``)
    that trying again later may work.

    Example
    -------
    >>> BusyError("busy").exit_status
    75
    """

    exit_status = 75


class NotOursError(UserError):
    """A folder we would write into, replace or delete was not made by
    sb-urbansound (the message names it and what it holds)."""


class DataPrepError(UserError, ValueError):
    """A problem with the data or the options of data preparation: the
    message names the file, CSV row or option at fault and how to fix it.

    Example
    -------
    >>> try:
    ...     raise DataPrepError("fold 11 is not in the data")
    ... except ValueError as e:
    ...     print(e)
    fold 11 is not in the data
    """


class AudioLoadError(UserError, RuntimeError):
    """An audio file is missing, unreadable, empty or holds non-finite
    samples."""
