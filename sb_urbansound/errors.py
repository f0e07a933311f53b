"""The errors that name a user's file, row or option and say what to do.

Commands (``train.py``, ``crossval``, ``classify``) catch :class:`UserError`
and print its message instead of a traceback.

Authors
-------
 * sb-urbansound contributors
"""


class UserError(Exception):
    """A problem with the user's data, options or folders (not a bug).

    Example
    -------
    >>> issubclass(DataPrepError, UserError)
    True
    """


class DataPrepError(UserError, ValueError):
    """A problem with the data or the options of data preparation.

    The message names the file, CSV row or option at fault and says how to fix
    it.

    Example
    -------
    >>> try:
    ...     raise DataPrepError("fold 11 is not in the data")
    ... except ValueError as e:
    ...     print(e)
    fold 11 is not in the data
    """


class AudioLoadError(UserError, RuntimeError):
    """An audio file is missing, unreadable, empty or holds non-finite samples.

    Example
    -------
    >>> str(AudioLoadError("x.wav: no such file"))
    'x.wav: no such file'
    """
