"""Tests of sb_urbansound.prepare: metadata/folders/file names to JSON manifests."""

import io
import json
import logging
import os
import re
import shutil
import sys
import time
import types
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from helpers import (
    FORMATS,
    FSDD_DIR,
    US8K_CLASSES,
    US8K_COLUMNS,
    US8K_CSV,
    make_urbansound_tree,
    requires_fsdd,
    requires_us8k_csv,
    snapshot_tree,
    write_clip,
    write_us8k_csv,
)
from sb_urbansound.prepare import (
    DataPrepError,
    assign_group_folds,
    load_urbansound8k_table,
    prepare_filenames,
    prepare_folders,
    prepare_urbansound8k,
)

LOGGER = "sb_urbansound.prepare"
REAL_FOLD_SIZES = [873, 888, 925, 990, 936, 823, 838, 806, 816, 837]
FSDD_PATTERN = r"(?P<label>\d)_(?P<group>[a-z]+)_\d+\.wav"
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


@pytest.fixture
def class_folders(tmp_path):
    """Three classes, files at several depths, wav/flac/ogg mixed, hidden junk."""
    root = tmp_path / "classes"
    exts = [".wav", ".flac", ".ogg"]
    layout = {
        "bird": [
            "rec1-a",
            "rec1-b",
            "sub/rec2-a",
            "sub/deeper/rec3-a",
            "rec4-a",
        ],
        "car": ["rec5-a", "rec5-b", "x/rec6-a", "rec7-a", "rec8-a"],
        "dog": ["rec9-a", "y/z/rec10-a", "rec11-a", "rec11-b", "rec12-a"],
    }
    k = 0
    for class_idx, (label, stems) in enumerate(layout.items()):
        for stem in stems:
            ext = exts[k % 3]
            subtype = {".wav": "PCM_16", ".flac": "PCM_24", ".ogg": "VORBIS"}[
                ext
            ]
            write_clip(
                root / label / f"{stem}{ext}",
                class_idx,
                sample_rate=16000,
                channels=1 + k % 2,
                seconds=0.2,
                subtype=subtype,
                seed=k,
            )
            k += 1
    # Same stem, other suffix: needs a distinct clip id.
    assert (root / "dog" / "rec9-a.flac").is_file()
    write_clip(root / "dog" / "rec9-a.wav", 2, 16000, 1, 0.2, "PCM_16")
    # Things to ignore: hidden files and folders, non-audio files.
    (root / "bird" / "._rec1-a.wav").write_bytes(b"\0\5\26\7 not audio")
    (root / ".ipynb_checkpoints").mkdir()
    write_clip(root / ".ipynb_checkpoints" / "x.wav", 0, 8000, 1, 0.1)
    (root / "car" / "notes.txt").write_text("not audio")
    return root


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
    caplog.set_level(logging.WARNING, logger=LOGGER)
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
    start = time.perf_counter()
    out = prepare_urbansound8k(data, tmp_path / "out", download=False)
    elapsed = time.perf_counter() - start
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
    assert elapsed < 20, f"preparing 8,732 clips took {elapsed:.1f} s"


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
        "3 of 100 audio file(s) cannot be used (1 missing, 1 unreadable, 1 empty)"
        in msg
    )
    assert f"missing: {missing}" in msg
    assert "unreadable (" in msg and str(corrupt) in msg
    assert f"empty (0 frames): {empty}" in msg
    assert not (tmp_path / "out" / "train.json").exists()

    caplog.set_level(logging.WARNING, logger=LOGGER)
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


def test_absent_data_folder_without_download(tmp_path):
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


@pytest.mark.parametrize(
    "url, md5, expected",
    [
        (None, None, {}),
        (
            "http://example.invalid/a.tgz",
            "abc",
            {"url": "http://example.invalid/a.tgz", "md5": "abc"},
        ),
    ],
)
def test_download_when_csv_absent(
    us8k_master, tmp_path, monkeypatch, url, md5, expected
):
    master, _ = us8k_master
    calls = []

    def fake_download(data_folder, **kwargs):
        calls.append((Path(data_folder), kwargs))
        shutil.copytree(master, data_folder)

    fake = types.ModuleType("sb_urbansound.download")
    fake.download_urbansound8k = fake_download
    monkeypatch.setitem(sys.modules, "sb_urbansound.download", fake)
    data = tmp_path / "fetched"
    out = prepare_urbansound8k(
        data, tmp_path / "out", download_url=url, download_md5=md5
    )
    assert calls == [(data, expected)]
    assert len(load(out)[0]["train"]) == 80
    # The CSV is there now: no second download.
    prepare_urbansound8k(data, tmp_path / "out2", download_url=url)
    assert len(calls) == 1


def test_download_that_yields_no_csv(tmp_path, monkeypatch):
    fake = types.ModuleType("sb_urbansound.download")
    fake.download_urbansound8k = lambda data_folder, **kw: Path(
        data_folder
    ).mkdir()
    monkeypatch.setitem(sys.modules, "sb_urbansound.download", fake)
    with pytest.raises(DataPrepError, match="still missing after the download"):
        prepare_urbansound8k(tmp_path / "d", tmp_path / "out")


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
    assert sorted(p.name for p in save.iterdir()) == sorted(names)
    old = 1_000_000_000_000_000_000  # 2001: any rewrite changes it
    for n in names:
        os.utime(save / n, ns=(old, old))
    options = json.loads((save / "prepare_options.json").read_text())
    assert options["function"] == "prepare_urbansound8k"
    assert options["options"]["valid_fold_nums"] == [9]
    assert options["inputs"]["csv"]["path"].endswith("UrbanSound8K.csv")

    caplog.set_level(logging.INFO, logger=LOGGER)
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


# --------------------------------------------------------------------------
# Class folders and file names
# --------------------------------------------------------------------------


@requires_fsdd
def test_fsdd_one_speaker_per_fold(tmp_path):
    before = snapshot_tree(FSDD_DIR)
    out = prepare_filenames(
        FSDD_DIR,
        tmp_path / "out",
        FSDD_PATTERN,
        n_folds=6,
        train_fold_nums=[1, 2, 3, 4],
        valid_fold_nums=[5],
        test_fold_nums=[6],
    )
    manifests, labels = load(out)
    assert labels == [str(d) for d in range(10)]
    assert [len(manifests[s]) for s in SPLITS] == [2000, 500, 500]
    speakers = {}
    for m in manifests.values():
        for cid, e in m.items():
            speakers.setdefault(e["fold"], set()).add(e["group"])
            assert cid == Path(e["wav"]).stem
            assert e["label"] == cid.split("_")[0]
            assert e["sample_rate"] == 8000 and e["channels"] == 1
    assert sorted(speakers) == [1, 2, 3, 4, 5, 6]
    assert all(len(s) == 1 for s in speakers.values())
    assert len(set().union(*speakers.values())) == 6
    assert snapshot_tree(FSDD_DIR) == before


def test_class_folders(class_folders, tmp_path):
    before = snapshot_tree(class_folders)
    out = prepare_folders(
        class_folders,
        tmp_path / "out",
        n_folds=4,
        train_fold_nums=[1, 2],
        valid_fold_nums=[3],
        test_fold_nums=[4],
        group_pattern=r"^(?P<group>rec\d+)-",
    )
    manifests, labels = load(out)
    assert labels == ["bird", "car", "dog"]
    entries = {cid: e for m in manifests.values() for cid, e in m.items()}
    assert len(entries) == 16
    assert "bird__sub__deeper__rec3-a" in entries
    assert entries["bird__sub__deeper__rec3-a"]["label"] == "bird"
    # Same stem with two suffixes: two clips with distinct ids.
    dog9 = sorted(e["wav"] for e in entries.values() if "rec9-a" in e["wav"])
    assert [Path(p).suffix for p in dog9] == [".flac", ".wav"]
    assert {Path(e["wav"]).suffix for e in entries.values()} == {
        ".wav",
        ".flac",
        ".ogg",
    }
    assert {e["channels"] for e in entries.values()} == {1, 2}
    assert not any(
        "._" in e["wav"] or "ipynb" in e["wav"] for e in entries.values()
    )
    # A group stays in one fold (rec1, rec5, rec11 have two clips each).
    fold_of_group = {}
    for e in entries.values():
        assert fold_of_group.setdefault(e["group"], e["fold"]) == e["fold"]
    assert len(fold_of_group) == 12
    assert snapshot_tree(class_folders) == before


def test_class_folders_without_group_pattern(class_folders, tmp_path):
    out = prepare_folders(
        class_folders,
        tmp_path / "out",
        n_folds=3,
        train_fold_nums=[1],
        valid_fold_nums=[2],
        test_fold_nums=[3],
    )
    manifests, _ = load(out)
    groups = [e["group"] for m in manifests.values() for e in m.values()]
    assert len(groups) == len(set(groups)) == 16
    assert "bird/sub/rec2-a.ogg" in groups


def test_assign_group_folds():
    groups = ["a", "b", "c", "d", "e", "f"] * 3
    folds = assign_group_folds(groups, 6, seed=3)
    assert folds == assign_group_folds(groups, 6, seed=3)
    fold_of = dict(zip(groups, folds, strict=True))
    assert sorted(fold_of.values()) == [1, 2, 3, 4, 5, 6]
    assert [fold_of[g] for g in groups] == folds
    sizes = Counter(assign_group_folds(list("abcdefg"), 3, seed=0))
    assert sorted(sizes.values()) == [2, 2, 3]
    with pytest.raises(
        DataPrepError, match="n_folds=7 but the data has only 6"
    ):
        assign_group_folds(groups, 7)


def make_named_files(root, names):
    for k, name in enumerate(names):
        write_clip(root / name, k % 2, 8000, 1, 0.05, "PCM_16", seed=k)
    return root


def test_filenames_errors(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(DataPrepError, match="does not exist"):
        prepare_filenames(tmp_path / "nowhere", out, FSDD_PATTERN)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("hi")
    with pytest.raises(
        DataPrepError, match=r"no audio file \(.wav, .flac, .ogg\)"
    ):
        prepare_filenames(tmp_path / "empty", out, FSDD_PATTERN)
    with pytest.raises(DataPrepError, match="no audio file"):
        prepare_folders(tmp_path / "empty", out)

    data = make_named_files(
        tmp_path / "d", [f"{k % 2}_spk{k % 3}_{k}.wav" for k in range(12)]
    )
    with pytest.raises(DataPrepError, match=r"has no named group \(\?P<label>"):
        prepare_filenames(data, out, r"(\d)_.*\.wav")
    with pytest.raises(DataPrepError, match="not a valid regex"):
        prepare_filenames(data, out, r"(?P<label>\d")
    with pytest.raises(
        DataPrepError, match="matches none of the 12 audio file"
    ):
        prepare_filenames(data, out, r"(?P<label>\d)_[a-z]+_\d+\.wav")

    make_named_files(data / "extra", ["oops.wav", "1-spk2.flac"])
    with pytest.raises(DataPrepError) as err:
        prepare_filenames(
            data, out, r"(?P<label>\d)_(?P<group>spk\d)_\d+\.wav", n_folds=3
        )
    msg = str(err.value)
    assert "does not match 2 of the 14" in msg
    assert "extra/oops.wav" in msg and "extra/1-spk2.flac" in msg
    shutil.rmtree(data / "extra")

    with pytest.raises(
        DataPrepError, match="n_folds=5 but the data has only 3 group"
    ):
        prepare_filenames(data, out, r"(?P<label>\d)_(?P<group>spk\d)_\d+\.wav")
    with pytest.raises(DataPrepError, match="single class"):
        prepare_filenames(data, out, r"\d_(?P<label>spk)\d_\d+\.wav")
    assert not out.exists()

    ok = prepare_filenames(
        data,
        out,
        r"(?P<label>\d)_(?P<group>spk\d)_\d+\.wav",
        n_folds=3,
        train_fold_nums=[1],
        valid_fold_nums=[2],
        test_fold_nums=[3],
    )
    manifests, labels = load(ok)
    assert labels == ["0", "1"]
    assert all(
        len({e["group"] for e in manifests[s].values()}) == 1 for s in SPLITS
    )


def test_folders_errors(tmp_path, class_folders):
    out = tmp_path / "out"
    with pytest.raises(DataPrepError, match="does not exist"):
        prepare_folders(tmp_path / "nowhere", out)
    with pytest.raises(DataPrepError, match=r"has no named group \(\?P<group>"):
        prepare_folders(class_folders, out, group_pattern=r"rec\d+")
    with pytest.raises(DataPrepError, match="finds no group in 16 of 16"):
        prepare_folders(class_folders, out, group_pattern=r"^(?P<group>zzz)")
    with pytest.raises(
        DataPrepError, match="n_folds must be a positive integer"
    ):
        prepare_folders(class_folders, out, n_folds=0)
    with pytest.raises(
        DataPrepError, match="fold.s. 5, which the data does not"
    ):
        prepare_folders(class_folders, out, n_folds=4)

    single = tmp_path / "single"
    make_named_files(single / "only", ["a.wav", "b.wav", "c.wav"])
    with pytest.raises(DataPrepError, match="single class .'only'"):
        prepare_folders(
            single,
            out,
            n_folds=3,
            train_fold_nums=[1],
            valid_fold_nums=[2],
            test_fold_nums=[3],
        )
    make_named_files(single, ["loose.wav"])
    with pytest.raises(
        DataPrepError, match="directly in .*outside any class folder"
    ):
        prepare_folders(single, out)
    assert not out.exists()


# --------------------------------------------------------------------------
# leaky_random_split
# --------------------------------------------------------------------------


def test_leaky_random_split(tmp_path, caplog):
    data = tmp_path / "d"
    names = [f"{k % 2}_spk{k % 4}_{k}.wav" for k in range(48)]
    make_named_files(data, names)
    pattern = r"(?P<label>\d)_(?P<group>spk\d)_\d+\.wav"
    kwargs = dict(
        n_folds=4,
        train_fold_nums=[1, 2],
        valid_fold_nums=[3],
        test_fold_nums=[4],
    )

    def folds_by_clip(out):
        manifests, _ = load(out)
        return {
            cid: (e["fold"], e["group"])
            for m in manifests.values()
            for cid, e in m.items()
        }

    proper = folds_by_clip(
        prepare_filenames(data, tmp_path / "p", pattern, **kwargs)
    )
    caplog.set_level(logging.WARNING, logger=LOGGER)
    leaky = folds_by_clip(
        prepare_filenames(
            data, tmp_path / "l", pattern, leaky_random_split=True, **kwargs
        )
    )
    assert "leaky_random_split=True" in caplog.text and "leak" in caplog.text
    assert set(leaky) == set(proper)
    assert Counter(f for f, _ in leaky.values()) == Counter(
        f for f, _ in proper.values()
    )
    groups_folds = {}
    for fold, group in leaky.values():
        groups_folds.setdefault(group, set()).add(fold)
    assert any(len(f) > 1 for f in groups_folds.values())
    proper_folds = {}
    for fold, group in proper.values():
        proper_folds.setdefault(group, set()).add(fold)
    assert all(len(f) == 1 for f in proper_folds.values())
    # Reproducible from the seed, different with another seed.
    again = folds_by_clip(
        prepare_filenames(
            data, tmp_path / "l2", pattern, leaky_random_split=True, **kwargs
        )
    )
    assert again == leaky
    other = folds_by_clip(
        prepare_filenames(
            data,
            tmp_path / "l3",
            pattern,
            leaky_random_split=True,
            seed=99,
            **kwargs,
        )
    )
    assert other != leaky
