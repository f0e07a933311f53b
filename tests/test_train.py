"""End-to-end tests of the recipe on generated data: it learns, it resumes after a
kill, and bad input stops it with a clear message that names the culprit."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, TINY_CNN_ARGS, US8K_CLASSES, make_urbansound_tree

CLASSES = US8K_CLASSES[:4]
SMALL = TINY_CNN_ARGS


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("us8k")
    make_urbansound_tree(
        root,
        n_per_class_per_fold=6,
        folds=[1, 2, 3, 4],
        classes=CLASSES,
        seconds=(0.4, 1.2),
    )
    return root


def run_train(args, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            str(REPO / "hparams" / "cnn.yaml"),
            *args,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        **kwargs,
    )


def snapshot(folder):
    return {
        str(p): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in Path(folder).rglob("*")
    }


def test_training_learns(small_data, tmp_path):
    out = tmp_path / "out"
    result = run_train(
        [
            f"--data_folder={small_data}",
            f"--output_folder={out}",
            "--number_of_epochs=12",
            "--max_lr=0.01",
            "--lr=0.01",
            *SMALL,
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    res = json.loads((out / "test_results.json").read_text())
    assert res["labels"] == sorted(CLASSES)
    assert res["n_clips"] == 4 * 6
    assert sum(map(sum, res["confusion_matrix"])) == res["n_clips"]
    assert res["accuracy"] >= 0.6, res  # chance is 0.25
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, 13))
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    log = (out / "train_log.txt").read_text()
    assert "epoch: 12" in log and "test accuracy" in log
    lrs = [h["lr"] for h in history]
    assert max(lrs) <= 0.01 + 1e-9 and min(lrs) > 0  # one-cycle, never negative
    assert lrs.index(max(lrs)) not in (0, len(lrs) - 1)  # rises, then falls


def test_kill_and_resume(small_data, tmp_path):
    out = tmp_path / "out"
    args = [
        f"--data_folder={small_data}",
        f"--output_folder={out}",
        "--number_of_epochs=6",
        *SMALL,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "train.py"),
            str(REPO / "hparams" / "cnn.yaml"),
            *args,
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    history = out / "history.json"
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            if history.exists() and len(json.loads(history.read_text())) >= 2:
                break
            if proc.poll() is not None:
                pytest.fail("training finished before it could be killed")
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    done = len(json.loads(history.read_text()))
    assert 2 <= done < 6
    assert not (out / "test_results.json").exists()

    result = run_train(args)
    assert result.returncode == 0, result.stderr[-3000:]
    epochs = [h["epoch"] for h in json.loads(history.read_text())]
    assert epochs == list(range(1, 7))
    log = (out / "train_log.txt").read_text()
    # finished epochs are not repeated: each epoch is logged once, or twice only
    # for the one epoch that was running when the process was killed
    counts = [log.count(f"epoch: {e}, ") for e in range(1, 7)]
    assert counts[: done - 1] == [1] * (done - 1), log
    assert "Going into epoch 1\n" not in result.stderr + result.stdout
    assert (out / "test_results.json").exists()

    # a third run of the same command trains nothing more
    again = run_train(args)
    assert again.returncode == 0
    assert len(json.loads(history.read_text())) == 6
    assert "Going into epoch" not in again.stderr + again.stdout


def test_missing_data_folder_is_clear(tmp_path):
    missing = tmp_path / "no_such_folder"
    result = run_train(
        [
            f"--data_folder={missing}",
            f"--output_folder={tmp_path / 'out'}",
            *SMALL,
        ]
    )
    assert result.returncode != 0
    assert str(missing) in result.stderr
    assert "Traceback" not in result.stderr
    assert not missing.exists()


def test_corrupt_and_missing_audio_named(small_data, tmp_path):
    data = tmp_path / "data"
    make_urbansound_tree(
        data,
        n_per_class_per_fold=1,
        folds=[1, 2, 3, 4],
        classes=CLASSES,
        seconds=(0.3, 0.5),
    )
    corrupt = data / "audio" / "fold1" / "1000-0-0-0.wav"
    corrupt.write_bytes(b"\x00garbage" * 100)
    missing = data / "audio" / "fold2" / "2001-1-0-0.wav"
    missing.unlink()
    before = snapshot(data)
    result = run_train(
        [f"--data_folder={data}", f"--output_folder={tmp_path / 'out'}", *SMALL]
    )
    assert result.returncode != 0
    assert (
        "1000-0-0-0.wav" in result.stderr and "2001-1-0-0.wav" in result.stderr
    )
    assert "Traceback" not in result.stderr
    assert snapshot(data) == before


def test_missing_data_folder_option_is_clear():
    result = run_train([])
    assert result.returncode == 2
    assert (
        "--data_folder=" in result.stderr and "Traceback" not in result.stderr
    )


def test_torchrun_two_cpu_processes(small_data, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        str(REPO / "train.py"),
        str(REPO / "hparams" / "cnn.yaml"),
        f"--data_folder={small_data}",
        f"--output_folder={out}",
        "--number_of_epochs=1",
        "--distributed_backend=gloo",
        "--device=cpu",
        *SMALL,
    ]
    result = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert json.loads((out / "test_results.json").read_text())["n_clips"] == 24
