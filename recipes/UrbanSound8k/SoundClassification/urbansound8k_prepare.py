"""
Data preparation for UrbanSound8K: its metadata CSV to SpeechBrain manifests.

Reads ``<data_folder>/metadata/UrbanSound8K.csv``, checks every row, keeps the
official folds, checks every audio file once (it exists, decodes, holds finite
samples) and writes ``train.json``, ``valid.json``, ``test.json`` and
``labels.json`` in ``save_folder``. The work is skipped when the manifests are
up to date for the same options and files.

Download: https://urbansounddataset.weebly.com/urbansound8k.html (CC BY-NC
3.0); with ``download=True`` the official archive is fetched from Zenodo when
``data_folder`` holds no copy.

Authors
 * sb-urbansound contributors 2026
"""

from sb_urbansound.data.download import DownloadError, download_urbansound8k
from sb_urbansound.data.manifests import (
    absolute,
    stat_digest,
    stat_entry,
    write_manifests,
)
from sb_urbansound.data.sources.folds import check_fold_lists
from sb_urbansound.data.sources.urbansound8k import (
    US8K_CSV,
    load_urbansound8k_table,
)
from sb_urbansound.errors import DataPrepError

from speechbrain.utils.logger import get_logger

logger = get_logger(__name__)


def prepare_urbansound8k(
    data_folder,
    save_folder,
    train_fold_nums=(1, 2, 3, 4, 5, 6, 7, 8),
    valid_fold_nums=(9,),
    test_fold_nums=(10,),
    skip_missing=False,
    leaky_random_split=False,
    seed=1234,
    download=False,
    full_check=True,
):
    """Write train/valid/test manifests for UrbanSound8K from its official
    folds.

    The audio is expected at
    ``<data_folder>/audio/fold<fold>/<slice_file_name>``. A clip's id is its
    file name without the suffix, its label the ``class`` column, its group
    the source recording (``fsID``).

    Arguments
    ---------
    data_folder : str
        The UrbanSound8K folder (the one holding ``metadata/`` and ``audio/``).
    save_folder : str
        Where the manifests are written (created if needed).
    train_fold_nums : list of int
        Folds of the training split.
    valid_fold_nums : list of int
        Folds of the validation split.
    test_fold_nums : list of int
        Folds of the test split. The three lists must be non-empty and must
        not share any fold.
    skip_missing : bool
        Leave out missing or unusable audio files with a warning that names
        them, instead of stopping with an error that names them.
    leaky_random_split : bool
        Bad practice, for comparisons only: shuffle clips across folds
        (seeded, fold sizes kept), which puts slices of one recording in both
        training and test.
    seed : int
        Seed of ``leaky_random_split``.
    download : bool
        Download the data set into ``data_folder`` when it has no CSV.
    full_check : bool
        Decode every audio file (else read the headers only: ``train.py``
        asks for this when its clip bank or shards decode the files anyway,
        so that a first run decodes each file once).

    Returns
    -------
    dict
        ``{"train": path, "valid": path, "test": path, "labels": path}``.

    Raises
    ------
    DataPrepError
        On a missing data folder or CSV, a malformed CSV (named by line),
        invalid fold lists or unusable audio files (named).

    Example
    -------
    >>> prepare_urbansound8k("no/such/folder", "manifests")
    Traceback (most recent call last):
     ...
    sb_urbansound.errors.DataPrepError: UrbanSound8K data folder ...
    """
    data_folder = absolute(data_folder)
    csv_path = data_folder / US8K_CSV
    if not csv_path.is_file():
        if not download:
            if not data_folder.is_dir():
                raise DataPrepError(
                    f"UrbanSound8K data folder {data_folder} does not exist. "
                    "Point data_folder to the extracted data set (the folder "
                    "holding metadata/ and audio/), or pass --download=True "
                    "to fetch it."
                )
            raise DataPrepError(
                f"UrbanSound8K metadata {csv_path} not found. Point "
                "data_folder to the extracted data set (the folder holding "
                "metadata/ and audio/), or pass --download=True to fetch it."
            )
        logger.info("%s not found: downloading UrbanSound8K", csv_path)
        where = (
            f"{csv_path} was not found"
            if data_folder.is_dir()
            else f"the data folder {data_folder} does not exist"
        )
        try:
            download_urbansound8k(data_folder)
        except DownloadError as e:
            raise DataPrepError(
                f"UrbanSound8K not found: {where}, and downloading it failed "
                f"({e}).\nPoint --data_folder to the extracted data set (the "
                "folder holding metadata/ and audio/); --download=False skips "
                "the download."
            ) from None
        if not csv_path.is_file():
            raise DataPrepError(
                f"UrbanSound8K metadata {csv_path} is still missing after the "
                "download. Check that the archive extracts to metadata/ and "
                "audio/ under data_folder."
            )

    table = load_urbansound8k_table(csv_path, data_folder)
    splits = check_fold_lists(
        train_fold_nums,
        valid_fold_nums,
        test_fold_nums,
        sorted(table["fold"].unique()),
    )
    options = {
        "data_folder": str(data_folder),
        "train_fold_nums": splits["train"],
        "valid_fold_nums": splits["valid"],
        "test_fold_nums": splits["test"],
        "skip_missing": bool(skip_missing),
        "leaky_random_split": bool(leaky_random_split),
        "seed": int(seed),
    }
    fingerprint = {
        "csv": stat_entry(csv_path),
        "audio": stat_digest(table["path"]),
    }
    missing_hint = (
        f"The audio is expected at {data_folder}/audio/fold<fold>/"
        "<slice_file_name>: check that the archive is fully extracted there."
    )
    return write_manifests(
        function="prepare_urbansound8k",
        table=table,
        save_folder=save_folder,
        splits=splits,
        options=options,
        fingerprint=fingerprint,
        skip_missing=skip_missing,
        leaky_random_split=leaky_random_split,
        seed=seed,
        missing_hint=missing_hint,
        warn_shared_groups=True,
        full_check=full_check,
        split="by UrbanSound8K's official folds, as its authors ask",
    )
