"""Folds: parsing and checking fold lists, and group-aware fold assignment.

Authors
-------
 * sb-urbansound contributors
"""

import itertools

import numpy as np
from sb_urbansound.data.manifests import SPLITS, listing
from sb_urbansound.errors import DataPrepError


def _parse_int(value):
    """``int`` from an int or an integral number/string, else None."""
    if isinstance(value, (int, np.integer)):
        return int(value)
    try:
        return int(str(value).strip())
    except ValueError:
        pass
    try:
        f = float(str(value).strip())
    except ValueError:
        return None
    return int(f) if f.is_integer() else None


def parse_fold_list(value, name="folds"):
    """Read a list of fold numbers: ``[1, 2]``, ``3``, ``"[1,2]"``, ``"1 2"``.

    Arguments
    ---------
    value : list or int or str
        The fold list.
    name : str
        The option's name, for error messages.

    Returns
    -------
    list of int
        The folds, in the order given.

    Example
    -------
    >>> parse_fold_list("[1, 2,3]"), parse_fold_list(4), parse_fold_list("5 6")
    ([1, 2, 3], [4], [5, 6])
    """
    if value is None:
        return []
    if isinstance(value, str):
        value = value.strip().strip("[]()").replace(",", " ").split()
    elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = [value]
    try:
        items = list(value)
    except TypeError:
        raise DataPrepError(
            f"{name} must be a list of fold numbers such as [1,2,3], got "
            f"{value!r}"
        ) from None
    folds = [None if isinstance(i, bool) else _parse_int(i) for i in items]
    if None in folds:
        raise DataPrepError(
            f"{name} holds {items[folds.index(None)]!r}, which is not a fold "
            "number; write e.g. [1,2,3]"
        )
    return folds


def check_fold_lists(train, valid, test, available):
    """Validate the three fold lists; return them as sorted lists of int.

    Arguments
    ---------
    train : int, str or list of int
        Fold numbers of the training split (see :func:`parse_fold_list`).
    valid : int, str or list of int
        Fold numbers of the validation split.
    test : int, str or list of int
        Fold numbers of the test split.
    available : iterable of int
        The folds that exist.

    Returns
    -------
    dict
        ``{"train": [...], "valid": [...], "test": [...]}``.

    Example
    -------
    >>> check_fold_lists([2, 1], "3", 4, available=range(1, 5))
    {'train': [1, 2], 'valid': [3], 'test': [4]}
    """
    available = sorted(int(f) for f in available)
    shown = ", ".join(map(str, available))
    splits = {}
    for split, value in zip(SPLITS, (train, valid, test), strict=True):
        name = f"{split}_fold_nums"
        folds = parse_fold_list(value, name)
        if not folds:
            raise DataPrepError(
                f"{name} is empty; give at least one fold "
                f"(folds available: {shown})"
            )
        unknown = sorted(set(folds) - set(available))
        if unknown:
            raise DataPrepError(
                f"{name} names fold(s) {', '.join(map(str, unknown))}, which "
                f"the data does not have; folds available: {shown}"
            )
        splits[split] = sorted(set(folds))
    overlaps = []
    for a, b in itertools.combinations(SPLITS, 2):
        common = ", ".join(map(str, sorted(set(splits[a]) & set(splits[b]))))
        if common:
            why = f"{a}_fold_nums and {b}_fold_nums share fold(s) {common}"
            overlaps.append(why)
    if overlaps:
        raise DataPrepError(
            "; ".join(overlaps)
            + ". Each fold may belong to one split only (train, valid or test)."
        )
    return splits


def check_n_folds(n_folds):
    """``n_folds`` as a positive int, or a clear error."""
    n = None if isinstance(n_folds, bool) else _parse_int(n_folds)
    if n is None or n < 1:
        why = f"n_folds must be a positive integer, got {n_folds!r}"
        raise DataPrepError(why)
    return n


def assign_group_folds(groups, n_folds, seed=1234):
    """Deal shuffled groups round-robin to folds ``1..n_folds``.

    Arguments
    ---------
    groups : list of str
        The group of each clip.
    n_folds : int
        The number of folds (at most that of groups).
    seed : int
        The seed of the shuffle.

    Returns
    -------
    list of int
        The fold (1-based) of each clip, in the order of ``groups``.

    Example
    -------
    >>> folds = assign_group_folds(["a", "b", "a", "c"], n_folds=3, seed=0)
    >>> folds[0] == folds[2], sorted(set(folds))
    (True, [1, 2, 3])
    """
    n = check_n_folds(n_folds)
    unique = sorted(set(groups))
    if n > len(unique):
        raise DataPrepError(
            f"n_folds={n} but the data has only {len(unique)} group(s) "
            f"({listing(unique, 5)}); each fold needs at least one group. "
            "Lower n_folds, or give a finer group (or none, so each file is "
            "its own group)."
        )
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of = {unique[j]: k % n + 1 for k, j in enumerate(order)}
    return [fold_of[g] for g in groups]
