"""Stops at any moment: SIGTERM or SIGKILL at random points of the clip bank
build, of an epoch, of the test and of the model export. After each stop no
process of the run is left, the output folder is not locked, and the same
command resumes and finishes with one history entry per epoch."""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from helpers import REPO, TINY_CNN_ARGS, US8K_CLASSES, make_urbansound_tree

# Each test trains, stops and resumes whole runs: minutes in all
pytestmark = pytest.mark.slow

CLASSES = US8K_CLASSES[:4]
EPOCHS = 2
#: The log line that starts each phase, and how long the phase lasts at
#: most on the tiny data (the signal comes at a random point of it).
PHASES = {
    "bank build": ("Clip bank: decoding", 0.4),
    "epoch": ("Going into epoch", 1.0),
    "test": ("Loading a checkpoint from", 0.4),
    "export": ("Test accuracy", 0.4),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("us8k")
    make_urbansound_tree(
        root,
        n_per_class_per_fold=6,
        folds=[1, 2, 3, 4],
        classes=CLASSES,
        seconds=(0.5, 4.0),
    )
    return root


def train_command(data, out, extra=()):
    keys = {a.split("=")[0] for a in extra}
    return [
        sys.executable,
        str(REPO / "train.py"),
        str(REPO / "hparams" / "cnn.yaml"),
        f"--data_folder={data}",
        f"--output_folder={out}",
        f"--number_of_epochs={EPOCHS}",
        "--noprogressbar",
        *[a for a in TINY_CNN_ARGS if a.split("=")[0] not in keys],
        *extra,
    ]


def processes_with_tag(tag):
    """Pids of the live processes whose environment holds ``tag``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if tag.encode() in environ and state != "Z":
            found.append(int(entry.name))
    return found


def run_and_stop(command, marker, window, signum, rng, tag):
    """Start ``command``; send ``signum`` at a random point after the first
    log line holding ``marker``. Return (exit status, output, delay)."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "SBU_STOP_TEST": tag,
    }
    proc = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines, seen = [], threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if marker in line:
                seen.set()
        seen.set()  # the end of the output: the run is over

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    delay = rng.uniform(0, window)
    if seen.wait(timeout=300):
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signum)
    code = proc.wait(timeout=300)
    reader.join(timeout=30)
    return code, "".join(lines), delay


def assert_nothing_left(tag, out):
    """No process of the stopped run lives on, and its folder is free."""
    deadline = time.monotonic() + 10
    while processes_with_tag(tag) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_with_tag(tag) == [], "a process outlived its run"
    from sb_urbansound.atomic import FolderLock

    if (out / ".lock").exists():
        FolderLock(out).acquire().release()  # raises if still held


def assert_finished(out):
    results = json.loads((out / "test_results.json").read_text())
    assert results["n_clips"] == len(CLASSES) * 6
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))
    assert (out / "model" / "hyperparams.yaml").is_file()
    assert not list(out.rglob("*.sbu-tmp")), "a temporary file was left"


def run_again(command, what=None, timeout=600):
    """Run the stopped command again, as a user would; it must succeed."""
    rerun = subprocess.run(
        command,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert rerun.returncode == 0, (what, rerun.stderr[-3000:])


@pytest.mark.parametrize("phase", list(PHASES))
def test_stopped_at_any_point_the_run_resumes(data, tmp_path, phase):
    rng = random.Random(f"{phase}")
    marker, window = PHASES[phase]
    for attempt, signum in enumerate([signal.SIGTERM, signal.SIGKILL]):
        out = tmp_path / f"out{attempt}"
        tag = uuid.uuid4().hex
        code, log, delay = run_and_stop(
            train_command(data, out), marker, window, signum, rng, tag
        )
        what = f"{signal.Signals(signum).name} {delay:.2f} s after {marker!r}"
        finished = "Inference folder written" in log
        if signum == signal.SIGTERM and code != 0 and not finished:
            # a clean stop: a message, the status of a SIGTERM, no traceback
            # (after the last line, the interpreter's exit may take it)
            assert code == 128 + signal.SIGTERM, (what, log[-3000:])
            assert "run the same command again to resume" in log, what
            assert "Traceback" not in log, (what, log[-3000:])
        assert_nothing_left(tag, out)
        run_again(train_command(data, out), what)
        assert_finished(out)


def test_loader_workers_die_with_a_killed_run(data, tmp_path):
    """The per-clip path's DataLoader workers never outlive their run."""
    rng = random.Random(1)
    for attempt, signum in enumerate([signal.SIGKILL, signal.SIGTERM]):
        out = tmp_path / f"out{attempt}"
        tag = uuid.uuid4().hex
        command = train_command(
            data, out, ["--data_source=files", "--num_workers=2"]
        )
        code, log, delay = run_and_stop(
            command, "Going into epoch", 1.0, signum, rng, tag
        )
        assert_nothing_left(tag, out)
        run_again(command)
        assert_finished(out)


def test_crossval_stopped_during_the_bank_build_resumes(data, tmp_path):
    """SIGTERM to crossval while its recipe builds the bank: crossval passes
    it on, and the same command then finishes (the fold is not locked)."""
    out = tmp_path / "cv"
    command = [
        sys.executable,
        "-m",
        "sb_urbansound.training.crossval",
        str(REPO / "hparams" / "cnn.yaml"),
        f"--data_folder={data}",
        f"--output_folder={out}",
        "--folds=[1,2,3]",
        "--number_of_epochs=1",
        "--noprogressbar",
        *[a for a in TINY_CNN_ARGS if "fold_nums" not in a],
    ]
    tag = uuid.uuid4().hex
    code, log, _ = run_and_stop(
        command,
        "Clip bank: decoding",
        0.2,
        signal.SIGTERM,
        random.Random(2),
        tag,
    )
    assert code == 128 + signal.SIGTERM, log[-3000:]
    assert "rerun the same command to resume" in log
    assert_nothing_left(tag, out / "fold_1")
    run_again(command, timeout=900)
    results = json.loads((out / "crossval_results.json").read_text())
    assert [f["test_fold"] for f in results["folds"]] == [1, 2, 3]


def test_a_run_from_shards_resumes_its_interrupted_epoch(data, tmp_path):
    rng = random.Random(3)
    for attempt, signum in enumerate([signal.SIGKILL, signal.SIGTERM]):
        out = tmp_path / f"out{attempt}"
        tag = uuid.uuid4().hex
        command = train_command(
            data, out, ["--data_source=shards", "--shard_size=8"]
        )
        run_and_stop(command, "Going into epoch 2", 0.5, signum, rng, tag)
        assert_nothing_left(tag, out)
        run_again(command)
        assert_finished(out)
