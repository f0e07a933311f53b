"""Tests of sb_urbansound.data.sources: class folders, file names and folds to
JSON manifests (UrbanSound8K's CSV is tested in ``test_prepare.py``)."""

import json
import logging
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
from helpers import FSDD_DIR, HPARAMS, requires_fsdd, snapshot_tree, write_clip
from sb_urbansound.data.sources import prepare_filenames, prepare_folders
from sb_urbansound.data.sources.folds import (
    assign_group_folds,
    check_fold_lists,
    check_n_folds,
    parse_fold_list,
)
from sb_urbansound.errors import DataPrepError, UserError
from sb_urbansound.training.experiment import build_partial, read_yaml_values

import speechbrain as sb

SOURCES_LOGGER = "sb_urbansound.data.sources.files"
MANIFESTS_LOGGER = "sb_urbansound.data.manifests"
FSDD_PATTERN = r"(?P<label>\d)_(?P<group>[a-z]+)_\d+\.wav"
SPLITS = ("train", "valid", "test")


def load(out):
    """Manifests and labels of a preparation result."""
    manifests = {s: json.loads(Path(out[s]).read_text()) for s in SPLITS}
    return manifests, json.loads(Path(out["labels"]).read_text())


@pytest.fixture
def class_folders(tmp_path):
    """Three classes, files at several depths, wav/flac/ogg mixed, hidden
    junk."""
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
        DataPrepError, match=r"no audio file \(.wav, .flac, .ogg, .mp3, in any"
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
    with pytest.raises(DataPrepError, match=r"'rec\\d\+' has no group: put"):
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
# Groups: the warning, group_pattern from the command line, and mp3
# --------------------------------------------------------------------------

FIVE_FOLDS = dict(
    n_folds=3, train_fold_nums=[1], valid_fold_nums=[2], test_fold_nums=[3]
)


def warnings_of(caplog):
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == SOURCES_LOGGER and r.levelno == logging.WARNING
    ]


def test_file_names_that_suggest_groups_warn_when_no_group_is_set(
    tmp_path, caplog
):
    caplog.set_level(logging.INFO)
    # UrbanSound8K-style names: fsID-classID-occurrenceID-sliceID
    us8k = make_named_files(
        tmp_path / "us8k",
        [
            f"{c}/{100 * n + k}-{n}-0-{i}.wav"
            for n, c in enumerate("ab", 1)
            for k in range(3)
            for i in range(2)
        ],
    )
    prepare_folders(us8k, tmp_path / "o1", **FIVE_FOLDS)
    (message,) = warnings_of(caplog)
    assert "100-1-0-0.wav and 100-1-0-1.wav" in message
    assert "--group_pattern='^(\\d+)-'" in message
    # Shared prefixes: two recordings per class, cut in parts
    caplog.clear()
    parts = make_named_files(
        tmp_path / "parts",
        [
            f"{c}/rec{k}_{i:03d}.flac"
            for c in "ab"
            for k in range(2)
            for i in range(3)
        ],
    )
    prepare_folders(parts, tmp_path / "o2", **FIVE_FOLDS)
    (message,) = warnings_of(caplog)
    assert "rec0_000.flac and rec0_001.flac share 'rec0'" in message
    assert "--group_pattern='^(.+)_'" in message
    # The file-name source: the group goes into its pattern
    caplog.clear()
    named = make_named_files(
        tmp_path / "named",
        [f"{k % 2}_spk{k % 4}_{k}.wav" for k in range(12)],
    )
    prepare_filenames(
        named, tmp_path / "o3", r"(?P<label>\d)_.*\.wav", **FIVE_FOLDS
    )
    (message,) = warnings_of(caplog)
    assert "add a group to pattern, as in (?P<group>...)" in message
    # No warning: a group is set, or the names say nothing but the class
    caplog.clear()
    prepare_folders(
        us8k, tmp_path / "o4", group_pattern=r"^(\d+)-", **FIVE_FOLDS
    )
    plain = make_named_files(
        tmp_path / "plain",
        [f"{c}/{c}_{i}.wav" for c in ("dog", "cat") for i in range(3)],
    )
    prepare_folders(plain, tmp_path / "o5", **FIVE_FOLDS)
    assert warnings_of(caplog) == []


def prepare_from_command_line(tmp_path, data, *args):
    """Data preparation as train.py runs it, from command-line options."""
    hparams_file, _, overrides = sb.parse_arguments(
        [
            str(HPARAMS / "folders.yaml"),
            f"--data_folder={data}",
            f"--output_folder={tmp_path / 'out'}",
            *args,
        ]
    )
    values = read_yaml_values(hparams_file, overrides)
    return build_partial(values["prepare"])()


def test_group_pattern_given_on_the_command_line_splits_by_group(tmp_path):
    data = make_named_files(
        tmp_path / "d",
        [
            f"{c}/{100 * n + k}-{n}-0-{i}.wav"
            for n, c in enumerate("ab", 1)
            for k in range(6)
            for i in range(3)
        ],
    )
    out = prepare_from_command_line(tmp_path, data, r"--group_pattern=^(\d+)-")
    manifests, _ = load(out)
    folds = {}
    for split, entries in manifests.items():
        for cid, e in entries.items():
            assert e["group"] == Path(e["wav"]).name.split("-")[0]
            folds.setdefault(e["group"], set()).add(split)
    assert len(folds) == 12
    assert all(len(splits) == 1 for splits in folds.values())


def test_a_bad_group_pattern_is_one_line_naming_it(tmp_path):
    data = make_named_files(tmp_path / "d", ["a/1-a-0-0.wav", "b/2-b-0-0.wav"])
    for option, expected in [
        ("--group_pattern=(", "group_pattern '(' is not a valid regex: "),
        ("--group_pattern=[^-]+", "--group_pattern=[^-]+ is not a valid YAML"),
        (r"--group_pattern=^\d+-", r"group_pattern '^\d+-' has no group"),
        ("--group_pattern=^(?P<group>x)-", "a value refers to <group>"),
    ]:
        with pytest.raises(UserError) as error:
            prepare_from_command_line(tmp_path, data, option)
        assert str(error.value).startswith(expected), str(error.value)
        assert "\n" not in str(error.value)


def test_a_folder_of_mp3_files_is_prepared(tmp_path):
    for k in range(6):
        write_clip(
            tmp_path / "d" / "ab"[k % 2] / f"{k}.mp3",
            k % 2,
            16000,
            1,
            0.5,
            subtype=None,
            seed=k,
        )
    out = prepare_folders(tmp_path / "d", tmp_path / "out", **FIVE_FOLDS)
    manifests, labels = load(out)
    entries = [e for m in manifests.values() for e in m.values()]
    assert labels == ["a", "b"] and len(entries) == 6
    for e in entries:
        assert e["wav"].endswith(".mp3") and e["sample_rate"] == 16000
        assert e["duration"] == pytest.approx(0.5, abs=0.06)


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
    caplog.set_level(logging.WARNING, logger=MANIFESTS_LOGGER)
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


# --------------------------------------------------------------------------
# What the finder leaves out or refuses
# --------------------------------------------------------------------------


def test_folder_reached_by_two_paths(class_folders, tmp_path):
    """A link to another class folder would give its clips two labels."""
    out = tmp_path / "out"
    os.symlink("../dog", class_folders / "bird" / "doglink")
    with pytest.raises(DataPrepError, match="reached by two paths") as err:
        prepare_folders(
            class_folders,
            out,
            n_folds=3,
            train_fold_nums=[1],
            valid_fold_nums=[2],
            test_fold_nums=[3],
        )
    msg = str(err.value)
    assert "bird/doglink/" in msg
    assert re.search(r"(?<![\w/])dog/", msg), msg  # the real folder too
    assert not out.exists()
    # Without the link the same call works.
    (class_folders / "bird" / "doglink").unlink()
    manifests, _ = load(
        prepare_folders(
            class_folders,
            out,
            n_folds=3,
            train_fold_nums=[1],
            valid_fold_nums=[2],
            test_fold_nums=[3],
        )
    )
    assert sum(len(m) for m in manifests.values()) == 16


def test_file_reached_by_two_paths(class_folders, tmp_path):
    assert (class_folders / "dog" / "rec9-a.wav").is_file()
    os.symlink("../dog/rec9-a.wav", class_folders / "car" / "rec9-copy.wav")
    with pytest.raises(DataPrepError, match="reached by two paths") as err:
        prepare_filenames(
            class_folders, tmp_path / "out", r"(?P<label>rec)\d+-.*"
        )
    msg = str(err.value)
    assert "car/rec9-copy.wav" in msg and "dog/rec9-a.wav" in msg


def test_fifo_and_empty_class_folder_are_ignored(
    class_folders, tmp_path, caplog
):
    os.mkfifo(class_folders / "bird" / "x.wav")
    (class_folders / "cat").mkdir()
    (class_folders / "cat" / "readme.txt").write_text("no audio yet")
    caplog.set_level(logging.WARNING, logger=SOURCES_LOGGER)
    out = prepare_folders(
        class_folders,
        tmp_path / "out",
        n_folds=3,
        train_fold_nums=[1],
        valid_fold_nums=[2],
        test_fold_nums=[3],
    )
    manifests, labels = load(out)
    assert labels == ["bird", "car", "dog"]
    wavs = [e["wav"] for m in manifests.values() for e in m.values()]
    assert len(wavs) == 16
    assert str(class_folders / "bird" / "x.wav") not in wavs
    assert f"Class folder {class_folders / 'cat'} holds no" in caplog.text


def test_fold_list_parsing_and_checks():
    assert parse_fold_list("[1, 2,3]") == [1, 2, 3]
    assert parse_fold_list("4 5") == [4, 5]
    assert parse_fold_list(6) == [6]
    assert parse_fold_list([7.0, "8"]) == [7, 8]
    assert parse_fold_list(None) == []
    for bad in ([1.5], ["x"], [True]):
        with pytest.raises(DataPrepError, match="not a fold number"):
            parse_fold_list(bad, "test_fold_nums")
    with pytest.raises(DataPrepError, match="test_fold_nums must be a list"):
        parse_fold_list(True, "test_fold_nums")
    assert check_fold_lists("2,1", [3], 4, range(1, 5)) == {
        "train": [1, 2],
        "valid": [3],
        "test": [4],
    }
    with pytest.raises(DataPrepError, match="folds available: 1, 2, 3"):
        check_fold_lists([1], [2], [4], range(1, 4))
    assert check_n_folds("5") == 5
    for bad in (0, -1, "x", True, 2.5):
        with pytest.raises(DataPrepError, match="positive integer"):
            check_n_folds(bad)
