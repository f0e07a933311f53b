"""UrbanSound8K: its metadata CSV, checked row by row, and its official folds.

8,732 slices of 1,297 Freesound recordings (``fsID``) in 10 folds that keep
a recording's slices together (Salamon, Jacoby and Bello, ACM MM 2014).

Authors
-------
 * sb-urbansound contributors
"""

from pathlib import Path

import numpy as np
import pandas as pd
from sb_urbansound.data.manifests import absolute, listing
from sb_urbansound.data.sources.folds import _parse_int
from sb_urbansound.errors import DataPrepError

US8K_CSV = Path("metadata") / "UrbanSound8K.csv"
US8K_REQUIRED_COLUMNS = ("slice_file_name", "fsID", "fold", "classID", "class")
US8K_FOLDS = tuple(range(1, 11))


def load_urbansound8k_table(csv_path, data_folder=None):
    """Load UrbanSound8K's metadata CSV into a table of clips, checking
    every row (all problems are reported together, by CSV line).

    Arguments
    ---------
    csv_path : str or Path
        The metadata CSV.
    data_folder : str or Path, optional
        The folder of ``audio/`` (default: the CSV's folder's parent).

    Returns
    -------
    pandas.DataFrame
        Columns ``clip_id``, ``path``, ``label``, ``fold``, ``group``,
        ``class_id`` and ``line`` (in the CSV).

    Example
    -------
    >>> csv = getfixture("tmp_path") / "UrbanSound8K.csv"
    >>> _ = csv.write_text(
    ...     "slice_file_name,fsID,fold,classID,class\\n"
    ...     "1-0-0-0.wav,1,1,0,air\\n2-3-0-0.wav,2,2,3,dog\\n"
    ... )
    >>> t = load_urbansound8k_table(csv)
    >>> t[["clip_id", "label", "fold", "group"]].values.tolist()
    [['1-0-0-0', 'air', 1, '1'], ['2-3-0-0', 'dog', 2, '2']]
    """
    csv_path = absolute(csv_path)
    data_folder = (
        csv_path.parent.parent if data_folder is None else absolute(data_folder)
    )
    try:
        df = pd.read_csv(
            csv_path,
            dtype=str,
            keep_default_na=False,
            skip_blank_lines=False,
            skipinitialspace=True,
            encoding="utf-8-sig",
        )
    except FileNotFoundError:
        raise DataPrepError(f"metadata CSV {csv_path} not found") from None
    except (
        pd.errors.ParserError,
        pd.errors.EmptyDataError,
        UnicodeDecodeError,
    ) as e:
        raise DataPrepError(
            f"cannot parse the metadata CSV {csv_path}: {e}. Restore the "
            "original UrbanSound8K.csv (comma-separated, one header line)."
        ) from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in US8K_REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataPrepError(
            f"metadata CSV {csv_path} lacks the column(s) {', '.join(missing)} "
            f"(it has: {', '.join(df.columns)}). The header must name "
            f"{', '.join(US8K_REQUIRED_COLUMNS)}."
        )
    df = df[list(US8K_REQUIRED_COLUMNS)].apply(lambda col: col.str.strip())
    # Blank lines were kept so that row i is line i + 2; drop them now
    df["line"] = np.arange(len(df)) + 2
    df = df[(df[list(US8K_REQUIRED_COLUMNS)] != "").any(axis=1)]
    if df.empty:
        raise DataPrepError(f"metadata CSV {csv_path} has no data row")

    problems, folds, class_ids = [], [], []
    rows = df[["line", *US8K_REQUIRED_COLUMNS]].itertuples(index=False)
    for line, name, fs_id, fold, class_id, cls in rows:
        where = f"line {line} ({name or 'no file name'})"
        if not name:
            problems.append(f"{where}: empty slice_file_name")
        elif "/" in name or "\\" in name:
            problems.append(
                f"{where}: slice_file_name must be a bare file name"
            )
        if not fs_id:
            problems.append(f"{where}: empty fsID")
        f = _parse_int(fold)
        if f not in US8K_FOLDS:
            why = f"invalid fold {fold!r} (UrbanSound8K's folds are 1 to 10)"
            problems.append(f"{where}: {why}")
        c = _parse_int(class_id)
        if c is None or c < 0:
            why = f"invalid classID {class_id!r} (need an integer >= 0)"
            problems.append(f"{where}: {why}")
        if not cls:
            problems.append(f"{where}: empty class name")
        folds.append(f)
        class_ids.append(c)
    names = df["slice_file_name"]
    dup = names.duplicated(keep=False) & (names != "")
    for line, name in zip(df["line"][dup], names[dup], strict=True):
        why = "slice_file_name appears more than once"
        problems.append(f"line {line} ({name}): {why}")
    if problems:
        raise DataPrepError(
            f"metadata CSV {csv_path} has {len(problems)} invalid row(s):\n  "
            + listing(problems, sep="\n  ")
            + "\nFix these rows or restore the original UrbanSound8K.csv."
        )
    df = df.assign(fold=folds, classID=class_ids)

    # classID <-> class one-to-one: name rows against their majority pairing
    bad_lines = set()
    for key, value in (("classID", "class"), ("class", "classID")):
        for _, rows in df.groupby(key):
            majority = rows[value].value_counts().index[0]
            bad_lines.update(rows["line"][rows[value] != majority])
    if bad_lines:
        bad = df[df["line"].isin(bad_lines)].sort_values("line")
        pairs = df.groupby(["classID", "class"]).size()
        cols = ["line", "slice_file_name", "classID", "class"]
        rows_txt = [
            f"line {line} ({name}): classID {cid} / class {cls!r}"
            for line, name, cid, cls in bad[cols].itertuples(index=False)
        ]
        raise DataPrepError(
            f"metadata CSV {csv_path}: classID and class are not one-to-one "
            f"({len(bad)} inconsistent row(s)):\n  "
            + listing(rows_txt, sep="\n  ")
            + "\nPairs found (classID, class: rows): "
            + "; ".join(f"{i}, {n}: {k}" for (i, n), k in pairs.items())
            + ". Each classID must always go with the same class name."
        )
    if df["class"].nunique() < 2:
        raise DataPrepError(
            f"metadata CSV {csv_path} holds a single class "
            f"({df['class'].iloc[0]!r}); a classifier needs at least two."
        )
    audio = data_folder / "audio"
    return pd.DataFrame(
        {
            "clip_id": [Path(n).stem for n in df["slice_file_name"]],
            "path": [
                str(audio / f"fold{f}" / n)
                for f, n in zip(df["fold"], df["slice_file_name"], strict=True)
            ],
            "label": df["class"].to_list(),
            "fold": df["fold"].astype(int).to_list(),
            "group": df["fsID"].to_list(),
            "class_id": df["classID"].astype(int).to_list(),
            "line": df["line"].astype(int).to_list(),
        }
    )
