"""Manifests: check every audio file once, write SpeechBrain JSON manifests
atomically, and skip the work when they are up to date.

Every data source (:mod:`sb_urbansound.sources`) builds a table of clips
(``clip_id``, ``path``, ``label``, ``fold``, ``group``) and hands it to
:func:`write_manifests`, which writes in ``save_folder``:

* ``train.json``, ``valid.json``, ``test.json``: ``{clip_id: {"wav": <absolute
  path>, "label": str, "fold": int, "group": str, "duration": float seconds,
  "sample_rate": int, "channels": int}}`` (sample rate and channels of the
  file as stored, before any resampling or down-mixing);
* ``labels.json``: the sorted list of all class labels over all folds, so
  label indices are the same in every split;
* ``prepare_options.json``: the options, a fingerprint of the inputs and how
  the data was split (:func:`recorded_split`); when it matches a new call and
  all outputs exist, the work is skipped.

Every file is decoded once (not just its header): a file that is missing, not
a regular file, unreadable, empty, corrupt after its header or that holds NaN
or infinite samples is named; with ``skip_missing`` it is left out with a
warning that names it. Nothing in the data folder is ever modified.

Authors
-------
 * sb-urbansound contributors
"""

import hashlib
import json
import logging
import os
import re
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
from sb_urbansound.hardware import progress_bar
from sb_urbansound.runtime import MAX_RATE, MIN_RATE

logger = logging.getLogger(__name__)

# Bump when the content or format of the outputs changes, so that old outputs
# are rebuilt instead of being reused.
MANIFEST_FORMAT_VERSION = 2

SPLITS = ("train", "valid", "test")
#: The store kind of a manifest folder.
MANIFESTS_KIND = "manifests"
OPTIONS_FILE = "prepare_options.json"
LABELS_FILE = "labels.json"

# How many offending items an error message lists before "... and N more".
MAX_LISTED = 20
# Below this many files, the check runs without a progress bar.
PROGRESS_MIN_FILES = 200
# The kinds of unusable audio file, in the order error messages count them.
PROBLEM_KINDS = (
    "missing",
    "not a file",
    "unreadable",
    "empty",
    "corrupt",
    "non-finite",
    "unsupported rate",
)


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
    """Run the shared pipeline on a table of clips and write the outputs.

    Arguments
    ---------
    function : str
        Name of the public function (recorded in the options file).
    table : pandas.DataFrame
        Clips with columns ``clip_id``, ``path``, ``label``, ``fold``, ``group``.
    save_folder : str or Path
        Output folder.
    splits : dict
        ``{"train": [folds], "valid": [folds], "test": [folds]}``, validated.
    options : dict
        The options that determine the outputs (JSON-serialisable).
    fingerprint : dict
        What identifies the inputs (stats of the CSV or of the files).
    skip_missing : bool
        Leave unusable files out (one warning) instead of raising.
    leaky_random_split : bool
        Reassign clips to random folds (sizes kept) before splitting.
    seed : int
        Seed of ``leaky_random_split``.
    missing_hint : str, optional
        Extra advice appended to the error about missing files.
    warn_shared_groups : bool
        Warn (instead of staying silent) when a group spans several splits.
    full_check : bool
        Decode every file (else read the headers only, for a run whose clip
        bank or shards decode the files and name those that fail).
    split : str, optional
        How the clips were dealt to folds, in words ("by group: ..."):
        logged, and recorded for the recipe's log and the model card.

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
    # A store (docs/stores.md): ours alone, one writer at a time
    claim_folder(save_folder, MANIFESTS_KIND, "manifest_folder")
    with FolderLock(save_folder, "preparing the manifests in").acquire(
        wait=True,
        on_wait=lambda who: logger.info(
            "Waiting for %s, which is preparing %s", who, save_folder
        ),
    ):
        return _write_locked(
            function,
            table,
            save_folder,
            splits,
            options,
            fingerprint,
            skip_missing,
            leaky_random_split,
            seed,
            missing_hint,
            warn_shared_groups,
            full_check,
            split,
        )


def _write_locked(
    function,
    table,
    save_folder,
    splits,
    options,
    fingerprint,
    skip_missing,
    leaky_random_split,
    seed,
    missing_hint,
    warn_shared_groups,
    full_check,
    split,
):
    """:func:`write_manifests`, with the manifest folder locked."""
    outputs = {s: str(save_folder / f"{s}.json") for s in SPLITS}
    outputs["labels"] = str(save_folder / LABELS_FILE)
    options_path = save_folder / OPTIONS_FILE
    record = _jsonable(
        {
            "format_version": MANIFEST_FORMAT_VERSION,
            "function": function,
            "options": options,
            "inputs": fingerprint,
            "checks": "decoded" if full_check else "headers",
            "split": split,
        }
    )
    if _up_to_date(options_path, record, outputs.values()):
        logger.info(
            "Manifests in %s are up to date, skipping preparation", save_folder
        )
        return outputs

    # Outputs are about to change: an interrupted run must not look up to date.
    options_path.unlink(missing_ok=True)

    labels = sorted(table["label"].unique())
    if leaky_random_split:
        table = _leaky_reassign(table, seed)

    fold_to_split = {f: s for s, folds in splits.items() for f in folds}
    table = table.assign(split=table["fold"].map(fold_to_split))
    unused = table[table["split"].isna()]
    if len(unused):
        logger.info(
            "%d clip(s) of fold(s) %s are in no split (not used)",
            len(unused),
            sorted(unused["fold"].unique().tolist()),
        )
    table = table[table["split"].notna()].sort_values("clip_id", kind="stable")
    _check_unique_ids(table)

    info = probe_audio(
        table["path"].to_list(),
        skip_missing,
        missing_hint,
        full_check=full_check,
    )
    table = table[table["path"].isin(info)]
    for split in SPLITS:
        if not (table["split"] == split).any():
            raise DataPrepError(
                f"no usable clip is left in the {split} split (folds "
                f"{splits[split]}) once unusable files are skipped; add audio to "
                "these folds or choose other folds."
            )

    _report_split(table, labels, warn_shared_groups, leaky_random_split)
    for split in SPLITS:
        part = table[table["split"] == split]
        manifest = {}
        for row in part.itertuples(index=False):
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
        atomic_write_json(outputs[split], manifest)
        logger.info("Wrote %d clips to %s", len(manifest), outputs[split])
    atomic_write_json(outputs["labels"], labels)
    atomic_write_json(options_path, record)
    return outputs


def recorded_split(manifest_folder):
    """How the manifests in ``manifest_folder`` split the data, in words.

    Arguments
    ---------
    manifest_folder : str or Path
        A folder written by :func:`write_manifests`.

    Returns
    -------
    str or None
        What :func:`write_manifests` was told (``"by group: ..."``), or None
        for a folder without a record (ready-made manifests).

    Example
    -------
    >>> recorded_split("/nowhere") is None
    True
    """
    try:
        record = json.loads(
            (Path(manifest_folder) / OPTIONS_FILE).read_text(encoding="utf-8")
        )
    except (OSError, ValueError, TypeError):
        return None
    split = record.get("split") if isinstance(record, dict) else None
    return split if isinstance(split, str) else None


def _up_to_date(options_path, record, output_paths):
    """Whether ``options_path`` records ``record`` and all outputs exist and
    read as what we wrote (a damaged one, or a link, is written again)."""
    previous = read_store_json(options_path)
    outputs = [read_store_json(p) for p in output_paths]
    manifests_ok = all(
        isinstance(o, dict) and all(isinstance(v, dict) for v in o.values())
        for o in outputs[:-1]
    )
    labels_ok = isinstance(outputs[-1], list)
    return previous == record and manifests_ok and labels_ok


def _leaky_reassign(table, seed):
    """Give each clip a random fold, keeping fold sizes (leaks groups)."""
    logger.warning(
        "leaky_random_split=True: clips are reassigned to random folds, so clips "
        "of one recording/group leak across train, valid and test. This inflates "
        "scores and is only meant to compare against the proper split; do not "
        "report it as a result."
    )
    rng = np.random.default_rng(seed)
    return table.assign(fold=rng.permutation(table["fold"].to_numpy()))


def _check_unique_ids(table):
    """Raise if two clips selected for the manifests share a clip id."""
    dup = table["clip_id"].duplicated(keep=False)
    if dup.any():
        rows = [
            f"{c}: {p}"
            for c, p in zip(
                table["clip_id"][dup], table["path"][dup], strict=True
            )
        ]
        raise DataPrepError(
            f"{int(dup.sum())} clips share a clip id: {listing(rows)}. Rename the "
            "files so that each clip id is unique."
        )


def check_audio_file(path, block_frames=1 << 20, full=True):
    """Decode a whole audio file once; return its shape or why it is unusable.

    Reading only the header would let through a file whose data is corrupt
    after the header (it would stop training mid-epoch) or that holds NaN
    samples (they would turn the model's weights into NaN). The file is read in
    blocks, so a long recording needs little memory. With ``full=False`` only
    the header is read: for runs whose clip bank or shards decode every file
    anyway, and name the ones that cannot be decoded.

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
        ``(kind, message)`` where ``kind`` is one of ``missing``,
        ``not a file``, ``unreadable``, ``empty``, ``corrupt``,
        ``non-finite``, ``unsupported rate``.

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
    if not os.path.lexists(path) or not os.path.exists(path):
        return ("missing", f"missing: {path}")
    if not os.path.isfile(path):
        return ("not a file", f"not a regular file: {path}")
    try:
        with sf.SoundFile(path) as f:
            frames, rate, channels = f.frames, f.samplerate, f.channels
            if frames <= 0 or rate <= 0 or channels <= 0:
                return ("empty", f"empty (0 frames): {path}")
            if not MIN_RATE <= rate <= MAX_RATE:
                return (
                    "unsupported rate",
                    f"{rate} Hz, outside {MIN_RATE} to {MAX_RATE} Hz: {path}",
                )
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
        return (kind, f"{kind} ({_short_error(e, path)}): {path}")
    if bad:
        return (
            "non-finite",
            f"non-finite ({bad} NaN or infinite samples): {path}",
        )
    return (int(frames), int(rate), int(channels))


def probe_audio(
    paths, skip_missing, missing_hint=None, threads=4, full_check=True
):
    """Decode every file once; report or skip the unusable ones.

    See :func:`check_audio_file` for what is checked. The files are decoded by
    a few threads (libsndfile works without Python's lock), with a progress
    bar for large data sets.

    Arguments
    ---------
    paths : list of str
        Absolute audio paths.
    skip_missing : bool
        Skip unusable files with a warning that names them instead of raising.
    missing_hint : str, optional
        Extra advice for the error about missing files.
    threads : int
        Files decoded at once.
    full_check : bool
        Decode the samples (else read the headers only).

    Returns
    -------
    dict
        ``{path: (frames, sample_rate, channels)}`` for the usable files.

    Raises
    ------
    DataPrepError
        Naming every unusable file, unless ``skip_missing``.
    """
    from concurrent.futures import ThreadPoolExecutor

    info, problems, counts = {}, [], {}
    unique = list(dict.fromkeys(paths))
    with ThreadPoolExecutor(max(1, int(threads))) as pool:
        results = progress_bar(
            pool.map(
                lambda path: check_audio_file(path, full=full_check), unique
            ),
            total=len(unique),
            desc="Checking audio files" if full_check else "Reading headers",
            unit="file",
            enabled=len(unique) >= PROGRESS_MIN_FILES,
        )
        for path, result in zip(unique, results):
            if isinstance(result[0], str):
                counts[result[0]] = counts.get(result[0], 0) + 1
                problems.append(result[1])
            else:
                info[path] = result
    if problems:
        summary = ", ".join(
            f"{counts[k]} {k}" for k in PROBLEM_KINDS if k in counts
        )
        if skip_missing:
            logger.warning(
                "skip_missing=True: leaving out %d of %d audio file(s) (%s):\n  %s",
                len(problems),
                len(unique),
                summary,
                listing(problems, sep="\n  "),
            )
        else:
            hint = ""
            if missing_hint and counts.get("missing"):
                hint = f"\n{missing_hint}"
            raise DataPrepError(
                f"{len(problems)} of {len(unique)} audio file(s) cannot be used "
                f"({summary}):\n  "
                + listing(problems, sep="\n  ")
                + hint
                + "\nFix or remove these files, or pass skip_missing=True to "
                "leave them out."
            )
    return info


def _report_split(table, labels, warn_shared_groups, leaky):
    """Log split sizes; warn about labels absent from train and shared groups."""
    for split in SPLITS:
        part = table[table["split"] == split]
        logger.info(
            "%s: %d clips, %d groups, folds %s",
            split,
            len(part),
            part["group"].nunique(),
            sorted(part["fold"].unique().tolist()),
        )
    train_labels = set(table["label"][table["split"] == "train"])
    absent = [lab for lab in labels if lab not in train_labels]
    if absent:
        logger.warning(
            "label(s) %s have no clip in the train split", listing(absent, 10)
        )
    if warn_shared_groups and not leaky:
        spread = table.groupby("group")["split"].nunique()
        shared = spread[spread > 1].index.tolist()
        if shared:
            logger.warning(
                "%d group(s) (source recordings) have clips in more than one "
                "split: %s. This comes from the data set's own folds.",
                len(shared),
                listing(sorted(shared), 10),
            )


def file_stamp(path):
    """What changes when a file's content changes: size, mtime and ctime.

    The status-change time (ctime) cannot be set back by a user or a tool, so
    rewriting a file with the same size and an old mtime still changes the
    stamp (copying or moving the data set does too, which only costs a
    rebuild).

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
    """Path and :func:`file_stamp` of one file (for the options record).

    Arguments
    ---------
    path : str or Path
        The file.

    Returns
    -------
    dict
        ``{"path": str, "stamp": list or None}``.
    """
    return {"path": str(path), "stamp": file_stamp(path)}


def stat_list(data_folder, files):
    """``[relative path, stamp]`` of each file (for the options record).

    Arguments
    ---------
    data_folder : Path
        The folder the paths are relative to.
    files : list of str
        Relative paths.

    Returns
    -------
    list
        ``[[path, stamp], ...]``.
    """
    return [[rel, file_stamp(data_folder / rel)] for rel in files]


def stat_digest(paths):
    """Compact fingerprint of many files: count present + hash of their stamps.

    Arguments
    ---------
    paths : list of str
        The files.

    Returns
    -------
    dict
        ``files_listed``, ``files_present`` and ``sha256``.
    """
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


def _short_error(exc, path):
    """An exception message without the repeated file path."""
    msg = str(exc).replace(f"'{path}'", "").replace(str(path), "")
    msg = re.sub(r"^Error opening\s*:\s*", "", msg).strip(": ")
    return msg or type(exc).__name__


def listing(items, limit=MAX_LISTED, sep=", "):
    """Join the first ``limit`` items, then "... and N more"."""
    items = [str(i) for i in items]
    text = sep.join(items[:limit])
    if len(items) > limit:
        text += f"{sep}... and {len(items) - limit} more"
    return text


def _jsonable(obj):
    """Normalise through JSON (tuples to lists) so records compare equal."""
    return json.loads(json.dumps(obj))


def absolute(path):
    """Absolute path (symlinks kept, ``~`` expanded)."""
    return Path(os.path.abspath(os.path.expanduser(str(path))))


def read_labels(labels_file=None, manifests=()):
    """The class labels in index order.

    From ``labels.json`` when data preparation wrote one; else (ready-made
    manifests, ``skip_prep``) the sorted labels found in the manifests.

    Arguments
    ---------
    labels_file : str or Path, optional
        ``labels.json`` in the manifest folder.
    manifests : list of str or Path
        SpeechBrain JSON manifests with a ``label`` field.

    Returns
    -------
    list of str
        The labels.

    Raises
    ------
    DataPrepError
        If neither gives a label.

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
