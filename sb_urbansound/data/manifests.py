"""Manifests: check every audio file once, write SpeechBrain JSON manifests
atomically, and skip the work when ``prepare_options.json`` still matches.

Authors
-------
 * sb-urbansound contributors
"""

import functools
import hashlib
import json
import logging
import os
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
from sb_urbansound.atomic import (
    FolderLock,
    atomic_write_json,
    claim_folder,
    read_store_json,
)
from sb_urbansound.errors import DataPrepError
from sb_urbansound.serving.runtime import MAX_RATE, MIN_RATE
from sb_urbansound.training.hardware import progress_bar

logger = logging.getLogger(__name__)

# Bump when the outputs change, so that old outputs are rebuilt.
MANIFEST_FORMAT_VERSION = 2
SPLITS = ("train", "valid", "test")
MANIFESTS_KIND = "manifests"
OPTIONS_FILE = "prepare_options.json"
# The kinds of unusable audio file, in the order error messages count them.
PROBLEM_KINDS = ("missing", "not a file", "unreadable", "empty", "corrupt")
PROBLEM_KINDS += ("non-finite", "unsupported rate")


def write_manifests(
    function,
    table,
    save_folder,
    splits,
    options,
    fingerprint,
    skip_missing,
    leaky_random_split,
    seed,
    missing_hint=None,
    warn_shared_groups=False,
    full_check=True,
    split=None,
):
    """Check the clips of a table and write the manifests (or reuse them).

    Arguments
    ---------
    function : str
        The public function (recorded).
    table : pandas.DataFrame
        The clips (``clip_id``, ``path``, ``label``, ``fold``, ``group``).
    save_folder : str or Path
        The output folder.
    splits : dict
        ``{"train": [folds], ...}`` (validated).
    options : dict
        The options that determine the outputs.
    fingerprint : dict
        What identifies the inputs.
    skip_missing : bool
        Leave unusable files out.
    leaky_random_split : bool
        Reassign clips to random folds (seeded with ``seed``).
    seed : int
        Seed of ``leaky_random_split``.
    missing_hint : str, optional
        Advice for the error about missing files.
    warn_shared_groups : bool
        Warn when a group spans splits.
    full_check : bool
        Decode every file (else the headers only).
    split : str, optional
        How the clips were dealt to folds, in words (logged and recorded).

    Returns
    -------
    dict
        Paths of the train/valid/test manifests and of the labels file.
    """
    if leaky_random_split:
        split = (
            "at random, clip by clip (leaky_random_split: clips of one "
            "recording land in several splits; for comparisons only)"
        )
    if split:
        logger.info("Data split %s", split)
    save_folder = absolute(save_folder)
    claim_folder(save_folder, MANIFESTS_KIND, "manifest_folder")
    lock = FolderLock(save_folder, "preparing the manifests in")
    why = "Waiting for %s, which is preparing %s"
    on_wait = lambda who: logger.info(why, who, save_folder)  # noqa: E731
    with lock.acquire(wait=True, on_wait=on_wait):
        outputs = {s: str(save_folder / f"{s}.json") for s in SPLITS}
        outputs["labels"] = str(save_folder / "labels.json")
        options_path = save_folder / OPTIONS_FILE
        record = {"format_version": MANIFEST_FORMAT_VERSION}
        record.update(function=function, options=options, inputs=fingerprint)
        record.update(checks="decoded" if full_check else "headers")
        record = json.loads(json.dumps({**record, "split": split}))  # as read
        if _up_to_date(options_path, record, outputs.values()):
            why = "Manifests in %s are up to date, skipping preparation"
            logger.info(why, save_folder)
            return outputs
        options_path.unlink(missing_ok=True)  # a killed run: not up to date
        labels = sorted(table["label"].unique())
        if leaky_random_split:
            logger.warning(
                "leaky_random_split=True: clips are reassigned to random "
                "folds, so clips of one recording/group leak across train, "
                "valid and test. This inflates scores and is only meant to "
                "compare against the proper split; do not report it as a "
                "result."
            )
            rng = np.random.default_rng(seed)
            table = table.assign(fold=rng.permutation(table["fold"].to_numpy()))
        fold_to_split = {f: s for s, folds in splits.items() for f in folds}
        table = table.assign(split=table["fold"].map(fold_to_split))
        unused = table[table["split"].isna()]
        if len(unused):
            folds = sorted(unused["fold"].unique().tolist())
            why = "%d clip(s) of fold(s) %s are in no split (not used)"
            logger.info(why, len(unused), folds)
        table = table[table["split"].notna()]
        table = table.sort_values("clip_id", kind="stable")
        dup = table["clip_id"].duplicated(keep=False)
        if dup.any():
            pairs = zip(table["clip_id"][dup], table["path"][dup], strict=True)
            rows = [f"{c}: {p}" for c, p in pairs]
            raise DataPrepError(
                f"{int(dup.sum())} clips share a clip id: {listing(rows)}. "
                "Rename the files so that each clip id is unique."
            )
        paths = table["path"].to_list()
        info = probe_audio(paths, skip_missing, missing_hint, full_check)
        table = table[table["path"].isin(info)]
        for name in SPLITS:
            part = table[table["split"] == name]
            if part.empty:
                raise DataPrepError(
                    f"no usable clip is left in the {name} split (folds "
                    f"{splits[name]}) once unusable files are skipped; add "
                    "audio to these folds or choose other folds."
                )
            folds = sorted(part["fold"].unique().tolist())
            why = "%s: %d clips, %d groups, folds %s"
            logger.info(why, name, len(part), part["group"].nunique(), folds)
        train_labels = set(table["label"][table["split"] == "train"])
        absent = [lab for lab in labels if lab not in train_labels]
        if absent:
            why = "label(s) %s have no clip in the train split"
            logger.warning(why, listing(absent, 10))
        if warn_shared_groups and not leaky_random_split:
            spread = table.groupby("group")["split"].nunique()
            shared = spread[spread > 1].index.tolist()
            if shared:
                why = "%d group(s) (source recordings) have clips in more "
                why += (
                    "than one split: %s. This comes from the data set's own "
                    "folds."
                )
                logger.warning(why, len(shared), listing(sorted(shared), 10))
        for name in SPLITS:
            manifest = {}
            for row in table[table["split"] == name].itertuples(index=False):
                frames, rate, channels = info[row.path]
                manifest[row.clip_id] = {
                    "wav": row.path,
                    "label": str(row.label),
                    "fold": int(row.fold),
                    "group": str(row.group),
                    "duration": frames / rate,
                    "sample_rate": int(rate),
                    "channels": int(channels),
                }
            atomic_write_json(outputs[name], manifest)
            logger.info("Wrote %d clips to %s", len(manifest), outputs[name])
        atomic_write_json(outputs["labels"], labels)
        atomic_write_json(options_path, record)
        return outputs


def _up_to_date(options_path, record, output_paths):
    """Whether ``options_path`` records ``record`` and the outputs read back."""
    outputs = [read_store_json(p) for p in output_paths]
    return (
        read_store_json(options_path) == record
        and all(
            isinstance(o, dict) and all(isinstance(v, dict) for v in o.values())
            for o in outputs[:-1]
        )
        and isinstance(outputs[-1], list)
    )


def recorded_split(manifest_folder):
    """How the manifests in ``manifest_folder`` split the data, in words.

    Arguments
    ---------
    manifest_folder : str or Path or None
        A folder written by :func:`write_manifests`.

    Returns
    -------
    str or None
        The recorded split (``"by group: ..."``), or None without a record.

    Example
    -------
    >>> recorded_split("/nowhere") is None, recorded_split(None) is None
    (True, True)
    """
    if manifest_folder is None:
        return None
    record = read_store_json(Path(manifest_folder) / OPTIONS_FILE)
    split = record.get("split") if isinstance(record, dict) else None
    return split if isinstance(split, str) else None


def check_audio_file(path, block_frames=1 << 20, full=True):
    """Decode a whole audio file once, in blocks; its shape or why unusable.

    Arguments
    ---------
    path : str
        The audio file.
    block_frames : int
        Frames decoded at a time.
    full : bool
        Decode the samples (else read the header only).

    Returns
    -------
    tuple
        ``(frames, sample_rate, channels)`` for a usable file, else
        ``(kind, message)``, ``kind`` one of :data:`PROBLEM_KINDS`.

    Example
    -------
    >>> import soundfile as sf, numpy as np
    >>> tmp = getfixture("tmp_path")
    >>> sf.write(tmp / "a.wav", np.zeros((800, 2)), 8000)
    >>> check_audio_file(str(tmp / "a.wav"))
    (800, 8000, 2)
    >>> sf.write(tmp / "b.wav", np.full(8, np.nan), 8000, subtype="FLOAT")
    >>> check_audio_file(str(tmp / "b.wav"))[0]
    'non-finite'
    """
    if not os.path.exists(path):  # dangling links too
        return ("missing", f"missing: {path}")
    if not os.path.isfile(path):
        return ("not a file", f"not a regular file: {path}")
    try:
        with sf.SoundFile(path) as f:
            frames, rate, channels = f.frames, f.samplerate, f.channels
            if frames <= 0 or rate <= 0 or channels <= 0:
                return ("empty", f"empty (0 frames): {path}")
            if not MIN_RATE <= rate <= MAX_RATE:
                why = f"{rate} Hz, outside {MIN_RATE} to {MAX_RATE} Hz: {path}"
                return ("unsupported rate", why)
            bad = 0
            blocks = f.blocks(blocksize=block_frames, dtype="float32")
            for block in blocks if full else ():
                bad += int(block.size - np.count_nonzero(np.isfinite(block)))
    except Exception as e:  # libsndfile errors, permissions, ...
        kind = "unreadable" if "header" in str(e).lower() else "corrupt"
        try:
            sf.info(path)
        except Exception:
            kind = "unreadable"
        msg = str(e).replace(f"'{path}'", "").replace(str(path), "")
        msg = re.sub(r"^Error opening\s*:\s*", "", msg).strip(": ")
        return (kind, f"{kind} ({msg or type(e).__name__}): {path}")
    if bad:
        why = f"non-finite ({bad} NaN or infinite samples): {path}"
        return ("non-finite", why)
    return (int(frames), int(rate), int(channels))


def probe_audio(paths, skip_missing, missing_hint=None, full_check=True):
    """Check every file once (:func:`check_audio_file`); report or skip the
    unusable ones.

    Arguments
    ---------
    paths : list of str
        Absolute audio paths.
    skip_missing : bool
        Skip unusable files with a warning (else raise).
    missing_hint : str, optional
        Advice for missing files.
    full_check : bool
        Decode the samples (else read the headers only).

    Returns
    -------
    dict
        ``{path: (frames, sample_rate, channels)}`` for the usable files.
    """
    unique = list(dict.fromkeys(paths))
    desc = "Checking audio files" if full_check else "Reading headers"
    bar = dict(total=len(unique), desc=desc, unit="file")
    check = functools.partial(check_audio_file, full=full_check)
    with ThreadPoolExecutor(4) as pool:  # libsndfile runs without the GIL
        results = pool.map(check, unique)
        results = progress_bar(results, enabled=len(unique) >= 200, **bar)
        results = dict(zip(unique, results))
    bad = [r for r in results.values() if isinstance(r[0], str)]
    info = {p: r for p, r in results.items() if not isinstance(r[0], str)}
    if not bad:
        return info
    problems = [message for _, message in bad]
    counts = Counter(kind for kind, _ in bad)
    summary = ", ".join(f"{counts[k]} {k}" for k in PROBLEM_KINDS if counts[k])
    if skip_missing:
        why = "skip_missing=True: leaving out %d of %d audio file(s) "
        why += "(%s):\n  %s"
        shown = listing(problems, sep="\n  ")
        logger.warning(why, len(problems), len(unique), summary, shown)
        return info
    hint = f"\n{missing_hint}" if missing_hint and counts.get("missing") else ""
    raise DataPrepError(
        f"{len(problems)} of {len(unique)} audio file(s) cannot be used "
        f"({summary}):\n  "
        + listing(problems, sep="\n  ")
        + hint
        + "\nFix or remove these files, or pass skip_missing=True to "
        "leave them out."
    )


def file_stamp(path):
    """What changes with a file's content: size, mtime and ctime (which,
    unlike the mtime, cannot be set back).

    Arguments
    ---------
    path : str or Path
        The file.

    Returns
    -------
    list or None
        ``[size, mtime_ns, ctime_ns]``, or None when the file is absent.

    Example
    -------
    >>> file_stamp("no/such/file") is None
    True
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def stat_entry(path):
    """``{"path", "stamp"}`` of one file, for the options record."""
    return {"path": str(path), "stamp": file_stamp(path)}


def stat_digest(paths):
    """Fingerprint of many files: counts and a ``sha256`` of their stamps."""
    h = hashlib.sha256()
    present = 0
    for path in sorted(paths):
        stamp = file_stamp(path)
        present += stamp is not None
        h.update(f"{path}\0{stamp}\n".encode())
    return {
        "files_listed": len(paths),
        "files_present": present,
        "sha256": h.hexdigest(),
    }


def listing(items, limit=20, sep=", "):
    """Join the first ``limit`` items, then "... and N more"."""
    items = [str(i) for i in items]
    text = sep.join(items[:limit])
    if len(items) > limit:
        text += f"{sep}... and {len(items) - limit} more"
    return text


def absolute(path):
    """Absolute path (symlinks kept, ``~`` expanded)."""
    return Path(os.path.abspath(os.path.expanduser(str(path))))


def read_labels(labels_file=None, manifests=()):
    """The class labels in index order: ``labels.json``, else the sorted
    labels of the manifests.

    Arguments
    ---------
    labels_file : str or Path, optional
        ``labels.json``.
    manifests : list of str or Path
        SpeechBrain manifests with ``label``.

    Returns
    -------
    list of str

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> _ = (tmp / "m.json").write_text('{"a": {"label": "dog"}}')
    >>> read_labels(tmp / "absent.json", [tmp / "m.json"])
    ['dog']
    """
    if labels_file is not None and Path(labels_file).is_file():
        with open(labels_file, encoding="utf-8") as f:
            return json.load(f)
    found = set()
    for manifest in manifests:
        try:
            with open(manifest, encoding="utf-8") as f:
                entries = json.load(f)
        except (OSError, ValueError) as e:
            raise DataPrepError(
                f"cannot read the manifest {manifest} ({e}). Run data "
                "preparation (skip_prep=False) or give a valid annotation file."
            ) from None
        for clip_id, entry in entries.items():
            if "label" not in entry:
                raise DataPrepError(
                    f"clip {clip_id} in {manifest} has no label field"
                )
            found.add(str(entry["label"]))
    if not found:
        raise DataPrepError(
            f"no class label found: no {labels_file} and no labelled clip in "
            f"{', '.join(map(str, manifests)) or 'the manifests'}"
        )
    return sorted(found)
