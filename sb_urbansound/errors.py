"""The errors that name a user's file, row or option and say what to do:
commands print them as one line (:func:`report`), without a traceback.

Authors
-------
 * sb-urbansound contributors
"""

import logging
import sys


def report(error):
    """Print ``error: <message>`` on stderr, and to the run's log files.

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

    Example
    -------
    >>> issubclass(DataPrepError, UserError), UserError("x").exit_status
    (True, 2)
    """

    exit_status = 2


class BusyError(UserError):
    """Another process holds a store's lock: exit status 75 (``EX_TEMPFAIL``).

    Example
    -------
    >>> BusyError("busy").exit_status
    75
    """

    exit_status = 75


class NotOursError(UserError):
    """A folder we would write, replace or delete is not ours."""


class DataPrepError(UserError, ValueError):
    """A problem with the data or the options of data preparation.

    Example
    -------
    >>> isinstance(DataPrepError("fold 11 is not in the data"), ValueError)
    True
    """


class AudioLoadError(UserError, RuntimeError):
    """An audio file is missing, unreadable, empty or not finite."""
