"""The class-folder and file-name recipes (hparams/folders.yaml,
hparams/fsdd.yaml) train end to end through train.py (the top-level link to the
recipe's) and write the same results as UrbanSound8K's; ready-made manifests
train with skip_prep."""

import json
import os
import subprocess
import sys

import pytest
from helpers import FSDD_DIR, REPO, requires_fsdd, write_clip

FAST = ["--num_workers=0", "--batch_size=16"]


def run_train(yaml, args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            str(REPO / "hparams" / yaml),
            *args,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def class_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("my_sounds")
    formats = [
        ("wav", 44100, 2, "PCM_16"),
        ("flac", 16000, 1, "PCM_24"),
        ("ogg", 22050, 1, None),
        ("wav", 48000, 1, "FLOAT"),
    ]
    for c, label in enumerate(["bird", "engine", "rain"]):
        for i in range(12):
            ext, sr, ch, subtype = formats[i % len(formats)]
            sub = root / label / ("deeper/still" if i % 3 == 0 else "")
            write_clip(
                sub / f"{label}{i}.{ext}",
                c,
                sr,
                ch,
                0.5 + 0.1 * (i % 5),
                subtype,
                seed=100 * c + i,
                n_classes=3,
            )
    return root


def test_folders_yaml_trains_and_writes_results(class_folders, tmp_path):
    out = tmp_path / "out"
    # n_classes is the YAML's 0: as many classes as the folders hold
    result = run_train(
        "folders.yaml",
        [
            f"--data_folder={class_folders}",
            f"--output_folder={out}",
            "--number_of_epochs=8",
            "--sample_rate=16000",
            "--duration_ms=1000",
            "--lr=0.01",
            "--max_lr=0.01",
            *FAST,
        ],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    res = json.loads((out / "test_results.json").read_text())
    assert res["labels"] == ["bird", "engine", "rain"]
    assert set(res) >= {
        "accuracy",
        "per_class_accuracy",
        "confusion_matrix",
        "n_clips",
    }
    splits = {
        s: json.loads((out / "manifests" / f"{s}.json").read_text())
        for s in ("train", "valid", "test")
    }
    assert sum(len(v) for v in splits.values()) == 36
    assert res["n_clips"] == len(splits["test"])
    assert res["accuracy"] > 0.5  # chance is 1/3
    # The model was built for the 3 classes found, and says so
    assert "n_classes: 3" in (out / "hyperparams.yaml").read_text()
    assert "n_classes: 3" in (out / "model" / "hyperparams.yaml").read_text()


def test_skip_prep_trains_on_ready_made_manifests(class_folders, tmp_path):
    """skip_prep=True: no data preparation, the given manifests as they are."""
    files = sorted(p for p in class_folders.rglob("*") if p.is_file())
    manifests = {"train": {}, "valid": {}, "test": {}}
    for i, path in enumerate(files):
        split = ("train", "train", "valid", "test")[i % 4]
        label = path.relative_to(class_folders).parts[0]
        manifests[split][f"clip{i}"] = {"wav": str(path), "label": label}
    args = []
    for split, entries in manifests.items():
        (tmp_path / f"{split}.json").write_text(json.dumps(entries))
        args.append(f"--{split}_annotation={tmp_path / f'{split}.json'}")
    out = tmp_path / "out"
    result = run_train(
        "folders.yaml",
        [
            # Preparation would fail on this folder: it must not run
            f"--data_folder={tmp_path / 'no such folder'}",
            f"--output_folder={out}",
            "--skip_prep=True",
            *args,
            "--number_of_epochs=1",
            "--sample_rate=16000",
            "--duration_ms=500",
            *FAST,
        ],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (out / "manifests").exists()
    res = json.loads((out / "test_results.json").read_text())
    # The labels come from the manifests (there is no labels.json)
    assert res["labels"] == ["bird", "engine", "rain"]
    assert res["n_clips"] == len(manifests["test"])


def test_a_folder_of_mp3_trains_split_by_the_group_pattern_of_the_command_line(
    tmp_path,
):
    """mp3 files, UrbanSound8K-style names, --group_pattern: the log and the
    model card say how the data was split."""
    for c, label in enumerate(["bird", "engine"]):
        for k in range(5):
            for i in range(2):
                write_clip(
                    tmp_path / "data" / label / f"{10 * c + k}-{c}-0-{i}.mp3",
                    c,
                    16000,
                    1,
                    0.5,
                    subtype=None,
                    seed=10 * k + i,
                    n_classes=2,
                )
    out = tmp_path / "out"
    result = run_train(
        "folders.yaml",
        [
            f"--data_folder={tmp_path / 'data'}",
            f"--output_folder={out}",
            r"--group_pattern=^(\d+)-",
            "--number_of_epochs=1",
            "--sample_rate=16000",
            "--duration_ms=500",
            *FAST,
        ],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    splits = {}
    for split in ("train", "valid", "test"):
        manifest = json.loads((out / "manifests" / f"{split}.json").read_text())
        for entry in manifest.values():
            assert entry["wav"].endswith(".mp3")
            assert (
                entry["group"] == entry["wav"].rsplit("/", 1)[1].split("-")[0]
            )
            splits.setdefault(entry["group"], set()).add(split)
    assert len(splits) == 10 and all(len(s) == 1 for s in splits.values())
    split = (
        r"split by group: group_pattern '^(\d+)-' gives 10 groups of 20 "
        "files, and a group never spans two folds"
    )
    log = (out / "log.txt").read_text()
    assert f"Data {split}" in log, [x for x in log.splitlines() if "split" in x]
    assert f"; {split}." in (out / "model" / "README.md").read_text()


def test_folders_yaml_wrong_n_classes_is_clear(class_folders, tmp_path):
    result = run_train(
        "folders.yaml",
        [
            f"--data_folder={class_folders}",
            f"--output_folder={tmp_path}",
            "--n_classes=5",
            "--number_of_epochs=1",
            *FAST,
        ],
    )
    assert result.returncode == 2
    assert "--n_classes=3" in result.stderr
    assert "Traceback" not in result.stderr


def test_folders_yaml_single_class_is_clear(tmp_path):
    write_clip(tmp_path / "data" / "only" / "a.wav", 0, 16000, 1, 0.3)
    write_clip(tmp_path / "data" / "only" / "b.wav", 0, 16000, 1, 0.3)
    result = run_train(
        "folders.yaml",
        [
            f"--data_folder={tmp_path / 'data'}",
            f"--output_folder={tmp_path / 'out'}",
            "--n_classes=1",
            "--number_of_epochs=1",
            *FAST,
        ],
    )
    assert result.returncode == 2
    assert "class" in result.stderr and "Traceback" not in result.stderr


@requires_fsdd
def test_fsdd_yaml_holds_out_whole_speakers(tmp_path):
    out = tmp_path / "out"
    result = run_train(
        "fsdd.yaml",
        [
            f"--data_folder={FSDD_DIR}",
            f"--output_folder={out}",
            "--number_of_epochs=1",
            "--num_workers=0",
            "--batch_size=64",
        ],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    speakers = {}
    for split in ("train", "valid", "test"):
        manifest = json.loads((out / "manifests" / f"{split}.json").read_text())
        speakers[split] = {
            v["wav"].rsplit("_", 2)[-2] for v in manifest.values()
        }
    assert len(speakers["train"]) == 4
    assert len(speakers["valid"]) == 1 and len(speakers["test"]) == 1
    assert not (speakers["train"] & speakers["test"])
    assert not (speakers["valid"] & speakers["test"])
    res = json.loads((out / "test_results.json").read_text())
    assert res["labels"] == [str(d) for d in range(10)]
    assert res["n_clips"] == 500
