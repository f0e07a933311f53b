"""Labels from your own folders: one folder per class
(:func:`prepare_folders`) or a regex on the file names
(:func:`prepare_filenames`). Clips are dealt to folds by group.

Authors
-------
 * sb-urbansound contributors
"""

import logging
import os
import re
from collections import Counter, defaultdict
from pathlib import Path

import pandas as pd
from sb_urbansound.data.manifests import (
    absolute,
    file_stamp,
    listing,
    write_manifests,
)
from sb_urbansound.data.sources.folds import (
    assign_group_folds,
    check_fold_lists,
    check_n_folds,
)
from sb_urbansound.errors import AudioLoadError, DataPrepError
from sb_urbansound.serving.runtime import AUDIO_SUFFIXES, find_audio_files

logger = logging.getLogger(__name__)

#: UrbanSound8K's file names: ``fsID-classID-occurrenceID-sliceID``, the
#: slices of one Freesound recording (fsID).
US8K_NAME = re.compile(r"(\d+)-\d+-\d+-\d+")


def prepare_folders(
    data_folder,
    save_folder,
    n_folds=5,
    train_fold_nums=(1, 2, 3),
    valid_fold_nums=(4,),
    test_fold_nums=(5,),
    group_pattern=None,
    skip_missing=False,
    leaky_random_split=False,
    seed=1234,
    full_check=True,
):
    """Write train/valid/test manifests from one folder per class: any audio
    file under ``<data_folder>/<label>/`` is a clip of ``label``. Shuffled
    groups are dealt round-robin to folds ``1..n_folds``.

    Arguments
    ---------
    data_folder : str or Path
        Folder holding one sub-folder per class.
    save_folder : str or Path
        Where manifests are written.
    n_folds : int
        Number of folds (at most that of groups).
    train_fold_nums : list of int
        The folds of the training split (in ``1..n_folds``).
    valid_fold_nums : list of int
        The folds of the validation split.
    test_fold_nums : list of int
        The folds of the test split. The three splits share no fold.
    group_pattern : str, optional
        Regex searched in each file name; its group ``group``, or else its
        first group, is the file's group (default: each file its own).
    skip_missing : bool
        Leave unusable files out with a warning (else raise).
    leaky_random_split : bool
        Reassign each clip to a random fold (for comparisons only).
    seed : int
        Seed of the fold assignment.
    full_check : bool
        Decode every file (else the headers).

    Returns
    -------
    dict
        ``{"train": path, "valid": path, "test": path, "labels": path}`` (str).

    Example
    -------
    >>> import json, numpy as np, soundfile as sf
    >>> data = getfixture("tmp_path") / "data"
    >>> for i in range(6):
    ...     (data / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
    ...     sf.write(data / f"c{i % 2}" / f"{i}.wav", np.zeros(80), 8000)
    >>> out = prepare_folders(data, data.parent / "out", 3, 1, 2, 3)
    >>> json.loads(Path(out["labels"]).read_text())
    ['c0', 'c1']
    """
    data_folder = absolute(data_folder)
    group_re = None
    if group_pattern is not None:
        group_re = _compile_pattern(group_pattern, "group_pattern")
    files = _list_audio_files(data_folder)

    top_level = [rel for rel in files if len(Path(rel).parts) < 2]
    if top_level:
        raise DataPrepError(
            f"{len(top_level)} audio file(s) lie directly in {data_folder}, "
            f"outside any class folder: {listing(top_level)}. Move each file "
            "into <data_folder>/<label>/, or use prepare_filenames if the "
            "label is in the file name."
        )
    labels = [Path(rel).parts[0] for rel in files]
    groups = [None] * len(files)
    if group_re is not None:
        which = "group" if "group" in group_re.groupindex else 1
        found = [group_re.search(Path(rel).name) for rel in files]
        groups = [m and m.group(which) or None for m in found]
        unmatched = [rel for rel, g in zip(files, groups) if g is None]
        if unmatched:
            raise DataPrepError(
                f"group_pattern '{group_re.pattern}' finds no group in "
                f"{len(unmatched)} of {len(files)} file name(s) under "
                f"{data_folder}: "
                f"{listing(unmatched)}. Fix group_pattern so that its group "
                "matches every file name, or rename these files."
            )
    known = set(labels)
    for label_dir in sorted(p for p in data_folder.iterdir() if p.is_dir()):
        if label_dir.name not in known and not label_dir.name.startswith("."):
            why = "Class folder %s holds no %s file: ignored"
            logger.warning(why, label_dir, "/".join(AUDIO_SUFFIXES))
    folds = (train_fold_nums, valid_fold_nums, test_fold_nums)
    return _write(
        "prepare_folders",
        {"group_pattern": getattr(group_re, "pattern", None)},
        (files, labels, groups),
        (data_folder, save_folder, n_folds, folds),
        (skip_missing, leaky_random_split, seed, full_check),
    )


def prepare_filenames(
    data_folder,
    save_folder,
    pattern,
    n_folds=5,
    train_fold_nums=(1, 2, 3),
    valid_fold_nums=(4,),
    test_fold_nums=(5,),
    skip_missing=False,
    leaky_random_split=False,
    seed=1234,
    full_check=True,
):
    """Write train/valid/test manifests, reading labels from the file names
    (folds are dealt as in :func:`prepare_folders`).

    Arguments
    ---------
    data_folder : str or Path
        Folder holding the audio files.
    save_folder : str or Path
        Where manifests are written.
    pattern : str
        Regex matching every whole file name, with a named group ``label``
        (and optionally ``group``).
    n_folds : int
        As in :func:`prepare_folders`.
    train_fold_nums : list of int
        As in :func:`prepare_folders`.
    valid_fold_nums : list of int
        As in :func:`prepare_folders`.
    test_fold_nums : list of int
        As in :func:`prepare_folders`.
    skip_missing : bool
        As in :func:`prepare_folders`.
    leaky_random_split : bool
        As in :func:`prepare_folders`.
    seed : int
        As in :func:`prepare_folders`.
    full_check : bool
        As in :func:`prepare_folders`.

    Returns
    -------
    dict
        ``{"train": path, "valid": path, "test": path, "labels": path}`` (str).

    Example
    -------
    >>> import json, numpy as np, soundfile as sf
    >>> data = getfixture("tmp_path") / "data"
    >>> data.mkdir()
    >>> for i in range(6):
    ...     sf.write(data / f"{i % 2}_s{i % 3}.wav", np.zeros(80), 8000)
    >>> pattern = r"(?P<label>\\d)_(?P<group>s\\d)\\.wav"
    >>> out = prepare_filenames(data, data.parent / "o", pattern, 3, 1, 2, 3)
    >>> json.loads(Path(out["labels"]).read_text())
    ['0', '1']
    """
    data_folder = absolute(data_folder)
    regex = _compile_pattern(pattern, "pattern", required="label")
    files = _list_audio_files(data_folder)

    found = [regex.fullmatch(Path(rel).name) for rel in files]
    unmatched = [r for r, m in zip(files, found) if not m or not m["label"]]
    if len(unmatched) == len(files):
        raise DataPrepError(
            f"pattern {regex.pattern!r} matches none of the {len(files)} audio "
            f"file name(s) under {data_folder} (e.g. {listing(files, 3)}). The "
            "pattern must match the whole file name, suffix included, e.g. "
            r"'(?P<label>\d)_(?P<group>[a-z]+)_\d+\.wav'."
        )
    if unmatched:
        raise DataPrepError(
            f"pattern {regex.pattern!r} does not match {len(unmatched)} of the "
            f"{len(files)} audio file name(s) under {data_folder}: "
            f"{listing(unmatched)}. Widen the pattern (it must match the whole "
            "file name, suffix included) or move these files out of "
            "data_folder."
        )
    labels = [m["label"] for m in found]
    groups = [m.groupdict().get("group") or None for m in found]
    folds = (train_fold_nums, valid_fold_nums, test_fold_nums)
    return _write(
        "prepare_filenames",
        {"pattern": regex.pattern},
        (files, labels, groups),
        (data_folder, save_folder, n_folds, folds),
        (skip_missing, leaky_random_split, seed, full_check),
    )


def _write(function, extra_options, clips, where, how):
    """Deal ``clips`` (files, labels, groups) to folds; write the manifests."""
    data_folder, save_folder, n_folds, folds = where
    skip_missing, leaky_random_split, seed, full_check = how
    files, labels, groups = clips
    own = [g or rel for g, rel in zip(groups, files, strict=True)]
    if len(set(labels)) < 2:
        raise DataPrepError(
            f"the audio under {data_folder} has a single class "
            f"({labels[0]!r}, {len(files)} file(s)); a classifier needs at "
            "least two classes."
        )
    table = pd.DataFrame(
        {
            "clip_id": _clip_ids(files),
            "path": [str(data_folder / rel) for rel in files],
            "label": labels,
            "fold": assign_group_folds(own, n_folds, seed),
            "group": own,
        }
    )
    n_folds = check_n_folds(n_folds)
    splits = check_fold_lists(*folds, list(range(1, n_folds + 1)))
    if function == "prepare_folders":
        key, unset = "group_pattern", "group_pattern is not set"
        fix = "set group_pattern, e.g. --group_pattern="
    else:
        key, unset = "pattern", "pattern has no (?P<group>...)"
        fix = "add a group to pattern, as in (?P<group>...)"
    if any(g is not None for g in groups):
        split = (
            f"by group: {key} '{extra_options[key]}' gives "
            f"{table['group'].nunique()} groups of {len(files)} files, and a "
            "group never spans two folds"
        )
    else:
        split = (
            f"by file: each of the {len(files)} files is its own group "
            f"({unset}), so clips cut from one recording can land in two "
            "splits"
        )
        hint = None if leaky_random_split else _group_hint(files, labels)
        if hint is not None:
            fix = fix if key == "pattern" else f"{fix}'{hint[1]}'"
            why = "The file names suggest groups (%s), but the data is split "
            why += "by file: clips of one recording can land in training and "
            why += "test, which inflates the accuracy. If they come from one "
            logger.warning(why + "recording, %s", hint[0], fix)
    options = {
        "data_folder": str(data_folder),
        **extra_options,
        "n_folds": n_folds,
        **{f"{name}_fold_nums": folds for name, folds in splits.items()},
        "skip_missing": bool(skip_missing),
        "leaky_random_split": bool(leaky_random_split),
        "seed": int(seed),
    }
    stamps = [[rel, file_stamp(data_folder / rel)] for rel in files]
    args = (function, table, save_folder, splits, options, {"files": stamps})
    args += (skip_missing, leaky_random_split, seed)
    return write_manifests(*args, full_check=full_check, split=split)


def _group_hint(files, labels):
    """Groups the file names suggest, as ``(example, regex)``, or None."""
    fs_ids, shared = defaultdict(list), defaultdict(list)
    for rel, label in zip(files, labels, strict=True):
        name, stem = Path(rel).name, Path(rel).stem
        us8k = US8K_NAME.fullmatch(stem)
        if us8k:
            fs_ids[us8k.group(1)].append(name)
        cut = max(stem.rfind("-"), stem.rfind("_"))
        if cut > 0:
            shared[label, stem[: cut + 1]].append(name)
    for fs_id, same in fs_ids.items():
        if len(same) > 1:
            return (
                f"{same[0]} and {same[1]} are UrbanSound8K-style names of "
                f"one recording, fsID {fs_id}",
                r"^(\d+)-",
            )
    # labels: how many of their prefixes 2+ files share
    several = Counter(label for (label, _), same in shared.items() if same[1:])
    for (label, prefix), same in shared.items():
        if len(same) > 1 and several[label] > 1:
            return (
                f"{same[0]} and {same[1]} share {prefix[:-1]!r}",
                f"^(.+){prefix[-1]}",
            )
    return None


def _clip_ids(files):
    """Clip ids from relative paths: no suffix, ``/`` replaced, made unique."""
    ids = [os.path.splitext(rel)[0].replace("/", "__") for rel in files]
    seen = Counter(ids)
    out, used = [], set()
    for rel, cid in zip(files, ids, strict=True):
        if seen[cid] > 1:  # same stem, different suffix: keep the suffix
            cid = rel.replace("/", "__").replace(".", "_")
        base, n = cid, 1
        while cid in used:
            n += 1
            cid = f"{base}-{n}"
        used.add(cid)
        out.append(cid)
    return out


def _list_audio_files(data_folder):
    """Sorted relative paths of the audio files under ``data_folder``."""
    if not data_folder.is_dir():
        raise DataPrepError(
            f"data folder {data_folder} does not exist (or is not a folder). "
            "Point data_folder to the folder that holds your audio."
        )
    try:
        files = find_audio_files(data_folder)
    except AudioLoadError as e:
        raise DataPrepError(str(e)) from None
    if not files:
        raise DataPrepError(
            f"no audio file ({', '.join(AUDIO_SUFFIXES)}, in any case) found "
            f"under {data_folder}. Check data_folder, or convert your files "
            "to one of these formats (e.g. FLAC)."
        )
    return files


def _compile_pattern(pattern, name, required=None):
    """Compile a user regex with the named group ``required`` (or any group)."""
    try:
        regex = re.compile(pattern)  # a compiled pattern is returned as is
    except (re.error, TypeError) as e:
        raise DataPrepError(
            f"{name} {pattern!r} is not a valid regex: {e}"
        ) from None
    if required is None and not regex.groups:
        raise DataPrepError(
            f"{name} '{regex.pattern}' has no group: put the part of the file "
            "name that names the group (recording, speaker) in parentheses, "
            r"e.g. '^(\d+)-'."
        )
    if required is not None and required not in regex.groupindex:
        raise DataPrepError(
            f"{name} {regex.pattern!r} has no named group (?P<{required}>...); "
            f"wrap the part of the file name that gives the {required} in "
            f"(?P<{required}>...)."
        )
    return regex
