"""Bad input to the commands, through their real command lines: one line
naming the file or value, the documented exit status, no traceback.

``classify --backend onnx`` with a ``model.onnx`` that is not its folder's
(another model's, labels edited after the export, metadata rewritten),
``export`` on a truncated checkpoint or a NaN clip, options that are NaN,
``crossval --help``, a user error of ``train.py`` (printed once) and a
stream that ends inside a frame.

Two untrained model folders are made for the module (16 kHz stereo 1 s, and
8 kHz mono 1.5 s, ~20 s with their ONNX export); nothing uses the network.
"""

import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from helpers import HPARAMS, REPO, run_without_torch, write_clip
from sb_urbansound.serving.export import export_model, untrained_model_folder

LABELS = [f"class_{i}" for i in range(10)]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Two exported model folders: ``wide`` (16 kHz stereo, 1 s) and
    ``narrow`` (8 kHz mono, 1.5 s), each with its model.onnx."""
    root = tmp_path_factory.mktemp("cli_errors")
    specs = {
        "wide": {"sample_rate": 16000, "duration_ms": 1000, "channels": 2},
        "narrow": {"sample_rate": 8000, "duration_ms": 1500, "channels": 1},
    }
    logging.disable(logging.WARNING)
    made = {}
    for name, over in specs.items():
        folder = untrained_model_folder(
            HPARAMS / "cnn.yaml", root / name, LABELS, over
        )
        result = export_model(folder, ["onnx"], log=lambda line: None)
        assert "error" not in result["onnx"], result
        made[name] = folder
    logging.disable(logging.NOTSET)
    made["clip"] = write_clip(root / "clip.wav", 2, 16000, 1, 2.0, "PCM_16")
    return made


def run(*args, stdin=None):
    """``python -m <args>`` from the repository; returns the
    CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", *map(str, args)],
        cwd=REPO,
        env=ENV,
        input=stdin,
        capture_output=True,
        timeout=300,
    )


def one_error_line(result, status):
    """The only line of stderr, after checking the exit status."""
    err = result.stderr.decode()
    assert result.returncode == status, err
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    return err


def copy_folder(folders, name, tmp_path):
    """A copy of a model folder that a test may change."""
    return shutil.copytree(folders[name], tmp_path / name)


def classify_onnx(folder, clip):
    return run(
        "sb_urbansound.serving.classify", folder, clip, "--backend", "onnx"
    )


# ------------------------------------------- model.onnx against its folder


def test_an_onnx_model_from_another_folder_is_refused_naming_both_values(
    folders, tmp_path
):
    folder = copy_folder(folders, "wide", tmp_path)
    shutil.copyfile(folders["narrow"] / "model.onnx", folder / "model.onnx")
    result = classify_onnx(folder, folders["clip"])
    err = one_error_line(result, 2)
    assert result.stdout == b""
    assert f"{folder / 'model.onnx'} does not match" in err
    yaml_file = folder / "hyperparams.yaml"
    assert (
        f"sample_rate is 8000 in its metadata but 16000 in {yaml_file}" in err
    )
    assert f"channels is 1 in its metadata but 2 in {yaml_file}" in err
    assert (
        f"num_samples is 12000 in its metadata but 16000 in {yaml_file}" in err
    )


@pytest.mark.parametrize("name", ["label_encoder.ckpt", "label_encoder.txt"])
def test_labels_swapped_after_the_export_are_refused(folders, tmp_path, name):
    folder = copy_folder(folders, "wide", tmp_path)
    text = (folder / name).read_text()
    text = text.replace("'class_3'", "'x'").replace("'class_4'", "'class_3'")
    (folder / name).write_text(text.replace("'x'", "'class_4'"))
    err = one_error_line(classify_onnx(folder, folders["clip"]), 2)
    assert (
        f"label 3 is 'class_3' in its metadata but 'class_4' in {folder / name}"
        in err
    )


def test_metadata_with_fewer_labels_than_outputs_is_refused(folders, tmp_path):
    import onnx

    folder = copy_folder(folders, "wide", tmp_path)
    model = onnx.load(folder / "model.onnx")
    for prop in model.metadata_props:
        if prop.key == "labels":
            prop.value = '["a", "b", "c"]'
    onnx.save(model, folder / "model.onnx")
    err = one_error_line(classify_onnx(folder, folders["clip"]), 2)
    assert (
        "its metadata gives 3 labels, but the model's output probs has 10"
        in err
    )


NO_TORCH = """
from sb_urbansound.serving.runtime import ModelFileError, OnnxModel
OnnxModel(sys.argv[1])
try:
    OnnxModel(sys.argv[2])
except ModelFileError as e:
    print(e)
"""


def test_the_folder_check_needs_no_torch(folders, tmp_path):
    folder = copy_folder(folders, "wide", tmp_path)
    shutil.copyfile(folders["narrow"] / "model.onnx", folder / "model.onnx")
    result = run_without_torch(NO_TORCH, tmp_path, folders["wide"], folder)
    assert result.returncode == 0, result.stderr
    assert "sample_rate is 8000 in its metadata but 16000" in result.stdout


# ---------------------------------------------------------------- NaN input


def nan_clip(path):
    wav = np.zeros((16000, 1), np.float32)
    wav[100] = np.nan
    sf.write(path, wav, 16000, subtype="FLOAT")
    return path


def test_a_nan_file_gets_the_same_message_from_both_backends(folders, tmp_path):
    clip = nan_clip(tmp_path / "nan.wav")
    messages = {}
    for backend in ("torch", "onnx"):
        result = run(
            "sb_urbansound.serving.classify",
            folders["wide"],
            clip,
            "--backend",
            backend,
        )
        assert result.returncode == 1
        messages[backend] = result.stderr.decode().splitlines()[0]
    assert f"{clip}: holds 1 NaN or infinite sample(s)" in messages["onnx"]
    assert "skip_missing" not in messages["onnx"]
    assert messages["onnx"] == messages["torch"]


def test_export_with_a_nan_data_clip_names_the_clip(folders, tmp_path):
    clip = nan_clip(tmp_path / "nan.wav")
    result = run(
        "sb_urbansound.serving.export", folders["wide"],
        "--format", "onnx", "--data", clip,
    )  # fmt: skip
    err = one_error_line(result, 2)
    assert err.startswith(f"error: --data: {clip}: holds 1 NaN"), err
    assert "cannot be exported" not in err


@pytest.mark.parametrize("option", ["--min-duration", "--merge-gap"])
def test_nan_segment_options_are_refused(folders, option):
    result = run(
        "sb_urbansound.serving.classify", folders["wide"], folders["clip"],
        "--segments", option, "nan",
    )  # fmt: skip
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert f"{option} must be a number" in err.splitlines()[-1]


# -------------------------------------------------- broken folders, usage


def test_export_of_a_truncated_checkpoint_is_one_line(folders, tmp_path):
    folder = copy_folder(folders, "wide", tmp_path)
    ckpt = folder / "embedding_model.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:3000])
    for command in (
        ("sb_urbansound.serving.export", folder, "--format", "onnx"),
        ("sb_urbansound.serving.classify", folder, folders["clip"]),
    ):
        err = one_error_line(run(*command), 2)
        assert err.startswith(f"error: cannot load the model in {folder}: ")
        assert f"{ckpt} is not a complete PyTorch checkpoint" in err


def test_crossval_help_prints_the_usage_and_exits_0():
    result = run("sb_urbansound.training.crossval", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().startswith(
        "usage: python -m sb_urbansound.training.crossval"
    )
    assert result.stderr == b""


def test_a_user_error_of_train_py_is_printed_once(tmp_path):
    missing = tmp_path / "no-data"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            str(HPARAMS / "cnn.yaml"),
            f"--data_folder={missing}",
            f"--output_folder={tmp_path / 'out'}",
            "--download=False",
        ],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    both = result.stdout + result.stderr
    assert both.count(f"{missing} does not exist") == 1, both
    assert result.stderr.startswith(
        f"error: UrbanSound8K data folder {missing}"
    )


# ------------------------------------------------------------------ stream


def test_a_stream_ending_inside_a_frame_says_so(folders):
    noise = np.random.default_rng(0).integers(-3000, 3000, 8000 * 2)
    pcm = noise.astype("<i2").tobytes() + b"\x01"  # stereo, and 1 byte more
    result = run(
        "sb_urbansound.serving.classify", folders["wide"], "--stream", "--rate",
        "8000", "--channels", "2", "--backend", "onnx", stdin=pcm,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.decode().splitlines()) == 1
    err = result.stderr.decode()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("warning: the stream ended inside a frame:")
    assert "1 byte(s) dropped" in err


def test_classify_and_export_in_process_leave_the_log_level_as_it_was(
    monkeypatch, tmp_path
):
    # A train.py started later inherits SB_LOG_LEVEL: WARNING there drops
    # its INFO lines from log.txt
    from sb_urbansound.serving import classify, export

    monkeypatch.setenv("SB_LOG_LEVEL", "INFO")
    assert classify.main([str(tmp_path / "no_model"), "x.wav"]) == 2
    assert export.main([str(tmp_path / "no_model")]) == 2
    assert os.environ["SB_LOG_LEVEL"] == "INFO"


def test_classify_takes_files_after_its_options():
    from sb_urbansound.serving.classify import parse_args

    args = parse_args(["M", "a.wav", "--top-k", "3", "b.wav", "--json"])
    assert (args.model_folder, args.inputs) == ("M", ["a.wav", "b.wav"])
    assert args.top_k == 3 and args.json
