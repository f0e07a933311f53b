"""Tests of UrbanSound8K preparation: the recipe's ``urbansound8k_prepare.py``
and ``sb_urbansound.data.sources.urbansound8k`` (metadata CSV to JSON
manifests).

The class-folder and file-name sources are tested in ``test_sources.py``, the
audio checks and the fingerprint of the inputs in ``test_manifests.py``.
"""

import io
import json
import logging
import os
import re
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from helpers import (
    FORMATS,
    US8K_CLASSES,
    US8K_COLUMNS,
    US8K_CSV,
    load_prepare_module,
    make_urbansound_tree,
    requires_us8k_csv,
    snapshot_tree,
    write_clip,
    write_us8k_csv,
)
from sb_urbansound.data.sources.urbansound8k import load_urbansound8k_table
from sb_urbansound.errors import DataPrepError

PREPARE = load_prepare_module()
prepare_urbansound8k = PREPARE.prepare_urbansound8k

# Who logs what: the checks of the audio and the up-to-date skip are in
# sb_urbansound.data.manifests, the download in the recipe's module.
MANIFESTS_LOGGER = "sb_urbansound.data.manifests"
PREPARE_LOGGER = PREPARE.__name__
REAL_FOLD_SIZES = [873, 888, 925, 990, 936, 823, 838, 806, 816, 837]
SPLITS = ("train", "valid", "test")


def load(out):
    """Manifests and labels of a preparation result."""
    manifests = {s: json.loads(Path(out[s]).read_text()) for s in SPLITS}
    return manifests, json.loads(Path(out["labels"]).read_text())


def tiny_wav_bytes(frames=80, sample_rate=8000):
    buf = io.BytesIO()
    sf.write(buf, np.zeros((frames, 1), np.float32), sample_rate, format="WAV")
    return buf.getvalue()


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def us8k_master(tmp_path_factory):
    """A generated UrbanSound8K-shaped tree: 10 folds x 10 classes x 1 clip."""
    root = tmp_path_factory.mktemp("us8k") / "UrbanSound8K"
    rows = make_urbansound_tree(
        root, n_per_class_per_fold=1, seconds=(0.3, 6.0)
    )
    return root, rows


@pytest.fixture
def us8k(us8k_master, tmp_path):
    """A private copy of the generated tree, free to damage."""
    root, rows = us8k_master
    copy = tmp_path / "UrbanSound8K"
    shutil.copytree(root, copy)
    return copy, [dict(r) for r in rows]


# --------------------------------------------------------------------------
# UrbanSound8K: real metadata
# --------------------------------------------------------------------------


@requires_us8k_csv
def test_real_csv_table():
    table = load_urbansound8k_table(US8K_CSV, US8K_CSV.parents[1])
    assert len(table) == 8732
    sizes = table["fold"].value_counts().sort_index()
    assert sizes.index.tolist() == list(range(1, 11))
    assert sizes.tolist() == REAL_FOLD_SIZES
    pairs = sorted(set(zip(table["class_id"], table["label"], strict=True)))
    assert pairs == list(enumerate(US8K_CLASSES))
    assert table["clip_id"].is_unique
    assert table["group"].nunique() == 1297
    first = table.iloc[0]
    assert first["path"] == str(
        US8K_CSV.parents[1]
        / "audio"
        / f"fold{first['fold']}"
        / f"{first['clip_id']}.wav"
    )
    assert first["line"] == 2


@requires_us8k_csv
def test_real_csv_full_dataset(tmp_path, caplog):
    """All 8,732 rows with tiny stand-in audio: split sizes, speed, skipping."""
    data = tmp_path / "UrbanSound8K"
    (data / "metadata").mkdir(parents=True)
    shutil.copy(US8K_CSV, data / "metadata" / "UrbanSound8K.csv")
    rows = pd.read_csv(US8K_CSV)

    # No audio at all: one error listing the first files and the count.
    with pytest.raises(DataPrepError) as err:
        prepare_urbansound8k(data, tmp_path / "out", download=False)
    msg = str(err.value)
    assert "8732 of 8732 audio file(s) cannot be used (8732 missing)" in msg
    assert "... and 8712 more" in msg and "skip_missing=True" in msg
    assert "audio/fold<fold>/<slice_file_name>" in msg
    # skip_missing leaves every clip out: nothing usable is left.
    caplog.set_level(logging.WARNING, logger=MANIFESTS_LOGGER)
    with pytest.raises(
        DataPrepError, match="no usable clip is left in the train"
    ):
        prepare_urbansound8k(
            data, tmp_path / "out", skip_missing=True, download=False
        )
    assert "leaving out 8732 of 8732" in caplog.text

    blob = tiny_wav_bytes()
    for fold, name in zip(rows["fold"], rows["slice_file_name"], strict=True):
        path = data / "audio" / f"fold{fold}" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
    caplog.clear()
    out = prepare_urbansound8k(data, tmp_path / "out", download=False)
    manifests, labels = load(out)
    assert [len(manifests[s]) for s in SPLITS] == [
        sum(REAL_FOLD_SIZES[:8]),
        REAL_FOLD_SIZES[8],
        REAL_FOLD_SIZES[9],
    ]
    assert labels == sorted(US8K_CLASSES)
    assert Counter(e["fold"] for e in manifests["train"].values()) == {
        f: n for f, n in zip(range(1, 9), REAL_FOLD_SIZES, strict=False)
    }
    # The official folds put one recording (fsID 180937) in folds 1 and 9.
    assert "180937" in caplog.text


@requires_us8k_csv
def test_real_csv_subset_with_audio(tmp_path):
    """A few real rows per fold, with generated audio at the real paths."""
    real = pd.read_csv(US8K_CSV)
    subset = real.groupby("fold", sort=True).head(3).reset_index(drop=True)
    data = tmp_path / "UrbanSound8K"
    write_us8k_csv(
        data / "metadata" / "UrbanSound8K.csv", subset.to_dict("records")
    )
    for k, row in subset.iterrows():
        sr, ch, subtype = FORMATS[k % len(FORMATS)]
        write_clip(
            data / "audio" / f"fold{row['fold']}" / row["slice_file_name"],
            int(row["classID"]),
            sr,
            ch,
            min(float(row["end"] - row["start"]), 4.0),
            subtype,
            seed=k,
        )
    out = prepare_urbansound8k(
        data,
        tmp_path / "out",
        train_fold_nums=[1, 2, 3, 4, 5, 6],
        valid_fold_nums=[7, 8],
        test_fold_nums=[9, 10],
        download=False,
    )
    manifests, labels = load(out)
    assert [len(manifests[s]) for s in SPLITS] == [18, 6, 6]
    assert labels == sorted(subset["class"].unique())
    for _, row in subset.iterrows():
        split = (
            "train"
            if row["fold"] <= 6
            else "valid"
            if row["fold"] <= 8
            else "test"
        )
        entry = manifests[split][row["slice_file_name"][:-4]]
        assert entry["label"] == row["class"]
        assert entry["group"] == str(row["fsID"])
        assert entry["fold"] == row["fold"]


# --------------------------------------------------------------------------
# UrbanSound8K: generated tree
# --------------------------------------------------------------------------


def test_us8k_manifest_fields_mixed_formats(us8k_master, tmp_path):
    data, rows = us8k_master
    out = prepare_urbansound8k(data, tmp_path / "out", download=False)
    assert set(out) == {"train", "valid", "test", "labels"}
    manifests, labels = load(out)
    assert labels == sorted(US8K_CLASSES)
    assert [len(manifests[s]) for s in SPLITS] == [80, 10, 10]

    split_of_fold = dict.fromkeys(range(1, 9), "train") | {
        9: "valid",
        10: "test",
    }
    for k, row in enumerate(rows):
        sr, ch, _ = FORMATS[k % len(FORMATS)]
        entry = manifests[split_of_fold[row["fold"]]][
            row["slice_file_name"][:-4]
        ]
        assert set(entry) == {
            "wav",
            "label",
            "fold",
            "group",
            "duration",
            "sample_rate",
            "channels",
        }
        assert Path(entry["wav"]).is_absolute() and Path(entry["wav"]).is_file()
        assert entry["wav"] == str(
            data / "audio" / f"fold{row['fold']}" / row["slice_file_name"]
        )
        assert entry["label"] == row["class"]
        assert entry["fold"] == row["fold"]
        assert entry["group"] == str(row["fsID"])
        assert entry["sample_rate"] == sr and entry["channels"] == ch
        assert isinstance(entry["duration"], float)
        assert entry["duration"] == pytest.approx(row["end"], abs=1.5 / sr)
    durations = [e["duration"] for m in manifests.values() for e in m.values()]
    assert min(durations) < 4.0 < max(durations)
    rates = {e["sample_rate"] for m in manifests.values() for e in m.values()}
    assert rates == {sr for sr, _, _ in FORMATS}
    # Groups never cross splits.
    groups = [{e["group"] for e in manifests[s].values()} for s in SPLITS]
    assert not (
        groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2]
    )


@pytest.mark.parametrize(
    "folds, overlap",
    [
        (
            ([1, 2, 3], [3], [4]),
            "train_fold_nums and valid_fold_nums share fold(s) 3",
        ),
        (
            ([1, 2], [3], [2, 4]),
            "train_fold_nums and test_fold_nums share fold(s) 2",
        ),
        (
            ([1, 2], [3, 4], [4]),
            "valid_fold_nums and test_fold_nums share fold(s) 4",
        ),
    ],
)
def test_overlapping_folds(us8k_master, tmp_path, folds, overlap):
    data, _ = us8k_master
    with pytest.raises(DataPrepError, match=re.escape(overlap)):
        prepare_urbansound8k(data, tmp_path / "out", *folds, download=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "folds, message",
    [
        (
            ([1], [2], [11]),
            "test_fold_nums names fold.s. 11, which the data does not",
        ),
        (([], [2], [3]), "train_fold_nums is empty"),
        (
            ([1], ["x"], [3]),
            "valid_fold_nums holds 'x', which is not a fold number",
        ),
    ],
)
def test_invalid_fold_lists(us8k_master, tmp_path, folds, message):
    data, _ = us8k_master
    with pytest.raises(DataPrepError, match=message):
        prepare_urbansound8k(data, tmp_path / "out", *folds, download=False)


def test_fold_lists_accept_single_ints(us8k_master, tmp_path):
    data, _ = us8k_master
    out = prepare_urbansound8k(
        data, tmp_path / "out", [1, 2], 3, 4, download=False
    )
    manifests, _ = load(out)
    assert {e["fold"] for e in manifests["test"].values()} == {4}


def test_missing_column_is_named(us8k, tmp_path):
    data, rows = us8k
    cols = [c for c in US8K_COLUMNS if c != "classID"]
    write_us8k_csv(data / "metadata" / "UrbanSound8K.csv", rows, cols)
    with pytest.raises(DataPrepError, match="lacks the column.s. classID"):
        prepare_urbansound8k(data, tmp_path / "out", download=False)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"fold": "abc"}, r"line 5 \(.*\.wav\): invalid fold 'abc'"),
        ({"fold": 0}, r"line 5 \(.*\.wav\): invalid fold '0'"),
        ({"fold": 11}, r"line 5 \(.*\.wav\): invalid fold '11'"),
        ({"classID": "x"}, r"line 5 \(.*\.wav\): invalid classID 'x'"),
        ({"class": ""}, r"line 5 \(.*\.wav\): empty class name"),
        ({"slice_file_name": "101-0-0-0.wav"}, "appears more than once"),
    ],
)
def test_invalid_rows_are_named(us8k, tmp_path, change, message):
    data, rows = us8k
    rows[0]["slice_file_name"] = "101-0-0-0.wav"
    rows[3].update(change)
    write_us8k_csv(data / "metadata" / "UrbanSound8K.csv", rows)
    with pytest.raises(DataPrepError, match=message):
        prepare_urbansound8k(data, tmp_path / "out", download=False)


def test_fold_outside_1_to_10_names_its_line(us8k, tmp_path):
    """UrbanSound8K has folds 1 to 10: a row in fold 11 is a typo, named."""
    data, rows = us8k
    rows[41]["fold"] = 11
    csv_path = write_us8k_csv(data / "metadata" / "UrbanSound8K.csv", rows)
    expected = (
        f"line 43 ({rows[41]['slice_file_name']}): invalid fold '11' "
        "(UrbanSound8K's folds are 1 to 10)"
    )
    with pytest.raises(DataPrepError, match=re.escape(expected)) as err:
        load_urbansound8k_table(csv_path)
    assert "1 invalid row(s)" in str(err.value)
    with pytest.raises(DataPrepError, match=re.escape(expected)):
        prepare_urbansound8k(data, tmp_path / "out", download=False)
    assert not (tmp_path / "out").exists()


def test_all_row_problems_reported_together(us8k, tmp_path):
    data, rows = us8k
    rows[3]["fold"] = "abc"
    rows[7]["classID"] = -1
    write_us8k_csv(data / "metadata" / "UrbanSound8K.csv", rows)
    with pytest.raises(DataPrepError, match="2 invalid row") as err:
        prepare_urbansound8k(data, tmp_path / "out", download=False)
    assert "line 5" in str(err.value) and "line 9" in str(err.value)


def test_inconsistent_class_id(us8k, tmp_path):
    data, rows = us8k
    rows[14]["class"] = "dog_bark"  # classID 4 (drilling) named dog_bark
    write_us8k_csv(data / "metadata" / "UrbanSound8K.csv", rows)
    with pytest.raises(DataPrepError, match="not one-to-one") as err:
        prepare_urbansound8k(data, tmp_path / "out", download=False)
    msg = str(err.value)
    assert (
        f"line 16 ({rows[14]['slice_file_name']}): classID 4 / class 'dog_bark'"
        in msg
    )
    assert "line 2 " not in msg  # the consistent rows are not blamed


def test_single_class_csv(us8k, tmp_path):
    data, rows = us8k
    rows = [r for r in rows if r["classID"] == 0]
    write_us8k_csv(data / "metadata" / "UrbanSound8K.csv", rows)
    with pytest.raises(DataPrepError, match="single class"):
        prepare_urbansound8k(data, tmp_path / "out", download=False)


@pytest.mark.parametrize(
    "content",
    [
        b"slice_file_name,fsID,fold,classID,class\na.wav,1,1,0,x,extra,fields\n",
        b"\xff\xfe\x00garbage\x80\x81",
        b"",
    ],
)
def test_unparsable_csv(us8k, tmp_path, content):
    data, _ = us8k
    (data / "metadata" / "UrbanSound8K.csv").write_bytes(content)
    with pytest.raises(DataPrepError, match="UrbanSound8K.csv"):
        prepare_urbansound8k(data, tmp_path / "out", download=False)


def test_bad_audio_reported_together_or_skipped(us8k, tmp_path, caplog):
    data, rows = us8k
    audio = {
        r["slice_file_name"]: data / "audio" / f"fold{r['fold']}" for r in rows
    }
    names = [rows[0], rows[1], rows[95]]
    missing, corrupt, empty = (
        audio[r["slice_file_name"]] / r["slice_file_name"] for r in names
    )
    missing.unlink()
    corrupt.write_bytes(os.urandom(3000))
    sf.write(empty, np.zeros((0, 1), np.float32), 8000)
    with pytest.raises(DataPrepError) as err:
        prepare_urbansound8k(data, tmp_path / "out", download=False)
    msg = str(err.value)
    assert (
        "3 of 100 audio file(s) cannot be used "
        "(1 missing, 1 unreadable, 1 empty)" in msg
    )
    assert f"missing: {missing}" in msg
    assert "unreadable (" in msg and str(corrupt) in msg
    assert f"empty (0 frames): {empty}" in msg
    assert not (tmp_path / "out" / "train.json").exists()

    caplog.set_level(logging.WARNING, logger=MANIFESTS_LOGGER)
    out = prepare_urbansound8k(
        data, tmp_path / "out", skip_missing=True, download=False
    )
    assert (
        "leaving out 3 of 100 audio file(s) (1 missing, 1 unreadable, 1 empty)"
        in (caplog.text)
    )
    manifests, labels = load(out)
    assert [len(manifests[s]) for s in SPLITS] == [78, 10, 9]
    assert labels == sorted(US8K_CLASSES)
    kept = {cid for m in manifests.values() for cid in m}
    assert not kept & {Path(p).stem for p in (missing, corrupt, empty)}


def audio_path(data, row):
    """Where UrbanSound8K keeps the audio of a CSV row."""
    return data / "audio" / f"fold{row['fold']}" / row["slice_file_name"]


def corrupt_after_header(path, seed=0):
    """Overwrite the second half of a file with random bytes."""
    blob = bytearray(path.read_bytes())
    half = len(blob) // 2
    rng = np.random.default_rng(seed)
    blob[half:] = rng.integers(0, 256, len(blob) - half, np.uint8).tobytes()
    path.write_bytes(bytes(blob))


def test_nan_sample_is_named_or_skipped(us8k, tmp_path, caplog):
    """One NaN sample would turn the model's weights into NaN."""
    data, rows = us8k
    path = audio_path(data, rows[6])  # fold 1 (train), 48 kHz float WAV
    assert sf.info(path).subtype == "FLOAT"
    wav, rate = sf.read(path, dtype="float32", always_2d=True)
    wav[len(wav) // 3, 0] = np.nan
    sf.write(path, wav, rate, subtype="FLOAT")
    with pytest.raises(DataPrepError) as err:
        prepare_urbansound8k(data, tmp_path / "out", download=False)
    msg = str(err.value)
    assert "1 of 100 audio file(s) cannot be used (1 non-finite)" in msg
    assert f"non-finite (1 NaN or infinite samples): {path}" in msg
    assert not (tmp_path / "out" / "train.json").exists()

    caplog.set_level(logging.WARNING, logger=MANIFESTS_LOGGER)
    out = prepare_urbansound8k(
        data, tmp_path / "out", skip_missing=True, download=False
    )
    assert "leaving out 1 of 100 audio file(s) (1 non-finite)" in caplog.text
    assert f"non-finite (1 NaN or infinite samples): {path}" in caplog.text
    manifests, _ = load(out)
    assert [len(manifests[s]) for s in SPLITS] == [79, 10, 10]
    assert path.stem not in manifests["train"]


def test_flac_corrupt_after_its_header_is_named(us8k, tmp_path, caplog):
    """A header-only check would let this file stop training mid-epoch."""
    data, rows = us8k
    row = rows[42]  # fold 5 (train), class 2
    audio_path(data, row).unlink()
    row["slice_file_name"] = row["slice_file_name"][:-4] + ".flac"
    write_us8k_csv(data / "metadata" / "UrbanSound8K.csv", rows)
    path = write_clip(audio_path(data, row), 2, 44100, 1, 3.0, "PCM_16")
    corrupt_after_header(path)
    assert sf.info(path).frames == 3 * 44100  # the header still reads
    with pytest.raises(DataPrepError) as err:
        prepare_urbansound8k(data, tmp_path / "out", download=False)
    msg = str(err.value)
    assert "1 of 100 audio file(s) cannot be used (1 corrupt)" in msg
    assert re.search(rf"corrupt \(.+\): {re.escape(str(path))}", msg), msg

    caplog.set_level(logging.WARNING, logger=MANIFESTS_LOGGER)
    out = prepare_urbansound8k(
        data, tmp_path / "out", skip_missing=True, download=False
    )
    assert "leaving out 1 of 100 audio file(s) (1 corrupt)" in caplog.text
    assert str(path) in caplog.text
    manifests, _ = load(out)
    assert [len(manifests[s]) for s in SPLITS] == [79, 10, 10]
    assert path.stem not in manifests["train"]


def test_absent_data_folder_without_download(tmp_path, monkeypatch):
    def no_download(data_folder, **kwargs):
        raise AssertionError("download=False must not download")

    monkeypatch.setattr(PREPARE, "download_urbansound8k", no_download)
    with pytest.raises(DataPrepError, match="does not exist.*download=True"):
        prepare_urbansound8k(
            tmp_path / "nowhere", tmp_path / "out", download=False
        )
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        DataPrepError, match=r"metadata.UrbanSound8K.csv not found"
    ):
        prepare_urbansound8k(
            tmp_path / "empty", tmp_path / "out", download=False
        )
    # Not downloading is the default.
    with pytest.raises(DataPrepError, match="not found"):
        prepare_urbansound8k(tmp_path / "empty", tmp_path / "out")


def test_download_only_when_csv_absent(
    us8k_master, tmp_path, monkeypatch, caplog
):
    master, _ = us8k_master
    calls = []

    def fake_download(data_folder, **kwargs):
        calls.append((Path(data_folder), kwargs))
        shutil.copytree(master, data_folder)

    monkeypatch.setattr(PREPARE, "download_urbansound8k", fake_download)
    caplog.set_level(logging.INFO, logger=PREPARE_LOGGER)
    data = tmp_path / "fetched"
    out = prepare_urbansound8k(data, tmp_path / "out", download=True)
    assert calls == [(data, {})]
    assert "not found: downloading UrbanSound8K" in caplog.text
    assert str(data / "metadata" / "UrbanSound8K.csv") in caplog.text
    assert len(load(out)[0]["train"]) == 80
    # The CSV is there now: no second download.
    out2 = prepare_urbansound8k(data, tmp_path / "out2", download=True)
    assert len(calls) == 1
    assert load(out2) == load(out)


def test_download_that_yields_no_csv(tmp_path, monkeypatch):
    calls = []

    def fake_download(data_folder, **kwargs):
        calls.append(Path(data_folder))
        Path(data_folder).mkdir()

    monkeypatch.setattr(PREPARE, "download_urbansound8k", fake_download)
    with pytest.raises(
        DataPrepError, match="still missing after the download"
    ) as err:
        prepare_urbansound8k(tmp_path / "d", tmp_path / "out", download=True)
    assert calls == [tmp_path / "d"]
    assert str(tmp_path / "d" / "metadata" / "UrbanSound8K.csv") in str(
        err.value
    )
    assert not (tmp_path / "out").exists()


def test_data_folder_not_modified(us8k_master, tmp_path):
    data, _ = us8k_master
    before = snapshot_tree(data)
    prepare_urbansound8k(data, tmp_path / "a", download=False)
    prepare_urbansound8k(
        data, tmp_path / "b", leaky_random_split=True, download=False
    )
    assert snapshot_tree(data) == before


def test_up_to_date_skip_and_rewrite(us8k, tmp_path, caplog):
    data, rows = us8k
    save = tmp_path / "out"
    out = prepare_urbansound8k(data, save, download=False)
    names = [
        "train.json",
        "valid.json",
        "test.json",
        "labels.json",
        "prepare_options.json",
    ]
    assert sorted(
        p.name for p in save.iterdir() if not p.name.startswith(".")
    ) == sorted(names)
    old = 1_000_000_000_000_000_000  # 2001: any rewrite changes it
    for n in names:
        os.utime(save / n, ns=(old, old))
    options = json.loads((save / "prepare_options.json").read_text())
    assert options["function"] == "prepare_urbansound8k"
    assert options["options"]["valid_fold_nums"] == [9]
    assert options["inputs"]["csv"]["path"].endswith("UrbanSound8K.csv")

    caplog.set_level(logging.INFO, logger=MANIFESTS_LOGGER)
    assert prepare_urbansound8k(data, save, download=False) == out
    assert "up to date, skipping" in caplog.text
    assert {(save / n).stat().st_mtime_ns for n in names} == {old}

    # Another option: rewritten.
    prepare_urbansound8k(
        data, save, valid_fold_nums=[10], test_fold_nums=[9], download=False
    )
    assert (save / "valid.json").stat().st_mtime_ns != old
    assert {e["fold"] for e in load(out)[0]["valid"].values()} == {10}

    # Back to the defaults, then change the CSV: rewritten.
    prepare_urbansound8k(data, save, download=False)
    os.utime(save / "train.json", ns=(old, old))
    write_us8k_csv(data / "metadata" / "UrbanSound8K.csv", rows[:-1])
    prepare_urbansound8k(data, save, download=False)
    assert (save / "train.json").stat().st_mtime_ns != old
    assert len(load(out)[0]["test"]) == 9

    # An output deleted: rewritten.
    (save / "labels.json").unlink()
    prepare_urbansound8k(data, save, download=False)
    assert (save / "labels.json").is_file()


def test_same_size_rewrite_with_restored_mtime_rebuilds(us8k, tmp_path):
    """The fingerprint holds each file's ctime, which cannot be set back."""
    data, rows = us8k
    save = tmp_path / "out"
    prepare_urbansound8k(data, save, download=False)
    path = audio_path(data, rows[6])  # 48 kHz float WAV
    before = path.stat()
    wav, rate = sf.read(path, dtype="float32", always_2d=True)
    wav[len(wav) // 2, 0] = np.nan
    time.sleep(0.05)  # let the file system's clock move on
    sf.write(path, wav, rate, subtype="FLOAT")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert after.st_size == before.st_size
    assert after.st_mtime_ns == before.st_mtime_ns
    assert after.st_ctime_ns != before.st_ctime_ns
    # Not "up to date": the file is checked again, and its NaN found.
    with pytest.raises(
        DataPrepError,
        match=re.escape(f"non-finite (1 NaN or infinite samples): {path}"),
    ):
        prepare_urbansound8k(data, save, download=False)
