"""The model card (README.md of a model folder): Hugging Face metadata, the
facts of the run, and usage code blocks that run as written, as SpeechBrain's
hub checks run the READMEs of its models.

(That training writes the card with its own numbers is checked in
tests/test_inference.py, on its trained model.)
"""

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import HPARAMS, write_clip
from sb_urbansound.serving.card import card_info, card_metadata, model_card
from sb_urbansound.serving.export import untrained_model_folder

LABELS = ["car_horn", "dog_bark", "siren"]


def run_files(folder, test=True, history=True):
    """A run's output files, as the recipe writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    if test:
        results = {
            "accuracy": 0.75,
            "per_class_accuracy": {
                "car_horn": 1.0,
                "dog_bark": 0.5,
                "siren": 0.75,
            },
            "confusion_matrix": [[2, 0, 0], [1, 1, 0], [0, 1, 3]],
            "labels": LABELS,
            "n_clips": 8,
        }
        (folder / "test_results.json").write_text(json.dumps(results))
    if history:
        epochs = [
            {
                "epoch": e,
                "train_accuracy": 0.5 + 0.1 * e,
                "valid_accuracy": 0.6,
                "train_seconds": 61.5,
            }
            for e in (1, 2)
        ]
        (folder / "history.json").write_text(json.dumps(epochs))
    (folder / "run_settings.json").write_text(
        json.dumps(
            {
                "data": {
                    "train": {"clips": 40},
                    "valid": {"clips": 9},
                    "test": {"clips": 8},
                }
            }
        )
    )
    return {
        "output_folder": str(folder),
        "test_results_file": str(folder / "test_results.json"),
        "history_file": str(folder / "history.json"),
        "data_folder": "/data/UrbanSound8K",
        "train_fold_nums": [1, 2],
        "valid_fold_nums": [9],
        "test_fold_nums": [10],
        "sample_rate": 22050,
        "channels": 1,
        "duration_ms": 4000,
        "number_of_epochs": 2,
        "batch_size": 32,
        "modules": {},
    }


def test_card_metadata_is_hugging_face_model_card_metadata(tmp_path):
    hparams = run_files(tmp_path / "run")

    def prepare_urbansound8k():
        """Stands for the recipe's data preparation."""

    hparams["prepare"] = prepare_urbansound8k
    text = model_card(card_info(hparams, LABELS, hardware="CPU: test"), "m")
    meta = card_metadata(text)
    assert meta["library_name"] == "speechbrain"
    assert meta["pipeline_tag"] == "audio-classification"
    assert "audio-classification" in meta["tags"]
    assert meta["datasets"] == ["UrbanSound8K"]
    assert meta["metrics"] == ["accuracy"]
    (result,) = meta["model-index"][0]["results"]
    assert result["task"]["type"] == "audio-classification"
    assert result["dataset"]["split"] == "fold 10"
    assert result["metrics"][0] == {
        "type": "accuracy",
        "value": 0.75,
        "name": "Test accuracy",
    }
    # The facts of the run
    assert "| 2 | siren | 75.00 % | 4 |" in text
    assert "| 1 | dog_bark | 50.00 % | 2 |" in text
    assert "Test accuracy **75.00 %** on 8 clips" in text
    assert "- train: fold(s) 1, 2, 40 clips" in text
    assert "- test: fold(s) 10, 8 clips" in text
    assert "- Hardware: CPU: test" in text
    assert "- Training time: 2m 03s over 2 epochs" in text
    assert "| sample_rate | 22050 |" in text and "| batch_size | 32 |" in text


def test_card_without_results_says_so(tmp_path):
    hparams = run_files(tmp_path / "run", test=False, history=False)
    text = model_card(card_info(hparams, LABELS, hardware="CPU"), "m")
    meta = card_metadata(text)
    assert "model-index" not in meta  # no number is made up
    assert "No test results" in text
    assert "Training time: not recorded" in text
    assert "| 0 | car_horn | n/a | n/a |" in text


def test_the_card_says_how_the_data_was_split(tmp_path):
    from sb_urbansound.data.sources import prepare_folders

    for k in range(12):
        write_clip(
            tmp_path / "d" / LABELS[k % 3] / f"{k // 4}-{k % 3}-0-{k}.wav",
            k % 3,
            8000,
            1,
            0.05,
            seed=k,
        )
    folds = dict(train_fold_nums=[1], valid_fold_nums=[2], test_fold_nums=[3])
    texts = {}
    for pattern in (None, r"^(\d+)-"):
        hparams = run_files(tmp_path / f"run{pattern is None}", test=False)
        hparams["manifest_folder"] = tmp_path / f"manifests{pattern is None}"
        hparams["n_folds"] = 3
        hparams["prepare"] = prepare_folders
        hparams["data_folder"] = str(tmp_path / "d")
        prepare_folders(
            tmp_path / "d",
            hparams["manifest_folder"],
            n_folds=3,
            group_pattern=pattern,
            **folds,
        )
        texts[pattern] = model_card(card_info(hparams, LABELS, "CPU"), "m")
    assert (
        "Class folders in `d`, 3 folds; split by file: each of the 12 files "
        "is its own group (group_pattern is not set), so clips cut from one "
        "recording can land in two splits." in texts[None]
    )
    assert (
        "Class folders in `d`, 3 folds; split by group: group_pattern "
        "'^(\\d+)-' gives 3 groups of 12 files, and a group never spans two "
        "folds." in texts[r"^(\d+)-"]
    )


def test_the_card_says_how_to_install_from_a_clone_with_the_extras(tmp_path):
    text = model_card(card_info(run_files(tmp_path), LABELS, "CPU"), "m")
    assert 'pip install -e ".[export,runtime]"' in text
    assert "clone" in text
    assert "pip install sb-urbansound" not in text


def code_blocks(text):
    """The card's fenced python and bash blocks, in order."""
    return re.findall(r"```(python|bash)\n(.*?)```", text, flags=re.S)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A model folder (untrained cnn.yaml, small) with its card."""
    logging.disable(logging.INFO)
    folder = untrained_model_folder(
        HPARAMS / "cnn.yaml",
        tmp_path_factory.mktemp("card") / "model",
        LABELS,
        {"sample_rate": 16000, "duration_ms": 1000},
    )
    logging.disable(logging.NOTSET)
    return folder


def test_exported_folder_has_a_card(model_dir):
    text = (model_dir / "README.md").read_text()
    meta = card_metadata(text)
    assert meta["library_name"] == "speechbrain"
    assert "No test results" in text  # untrained weights
    for label in LABELS:
        assert f"| {label} |" in text
    assert "MelSpectrogramDB → BatchStandardize → CNNEmbedding" in text


@pytest.mark.slow  # six Pythons and an ONNX export
def test_card_code_blocks_run_as_written(model_dir, tmp_path):
    # As a user who downloaded the folder: model/ and a clip beside it
    shutil.copytree(model_dir, tmp_path / "model")
    write_clip(tmp_path / "clip.wav", 1, 44100, 2, 1.5, "PCM_16")
    blocks = code_blocks((model_dir / "README.md").read_text())
    kinds = [kind for kind, _ in blocks]
    assert kinds.count("python") == 3 and kinds.count("bash") == 2
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PATH": str(Path(sys.executable).parent)
        + os.pathsep
        + os.environ["PATH"],
    }
    outputs = []
    for kind, code in blocks:
        command = (
            [sys.executable, "-c", code]
            if kind == "python"
            else ["bash", "-ec", code]
        )
        result = subprocess.run(
            command,
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, (code, result.stderr[-2000:])
        outputs.append(result.stdout)
    # Each prints a label of the model
    for out in outputs[:3] + outputs[4:]:
        assert any(label in out for label in LABELS), out
    assert (tmp_path / "model" / "model.onnx").is_file()  # the ONNX block
