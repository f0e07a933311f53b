"""End-to-end tests of the recipe on generated data: it learns, it resumes after
a kill, and bad input stops it with a clear message that names the culprit."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import REPO, TINY_CNN_ARGS, US8K_CLASSES, make_urbansound_tree

CLASSES = US8K_CLASSES[:4]
SMALL = TINY_CNN_ARGS


@pytest.fixture(scope="module")
def small_data(tiny_us8k):
    """4 classes x 4 folds x 6 clips (tests/conftest.py; read only)."""
    return tiny_us8k


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


def run_in_process(args, capsys):
    """``train.py hparams/cnn.yaml ARGS`` in this process, for a run that
    stops before it takes its output folder: the recipe's ``main`` under
    ``run_recipe``, as from the shell, without loading torch in a new
    Python. Returns (exit status, stderr); any other exception (a
    traceback) propagates."""
    from helpers import HPARAMS, load_recipe
    from sb_urbansound.training.processes import run_recipe

    recipe = load_recipe()
    with pytest.raises(SystemExit) as info:
        run_recipe(lambda: recipe.main([str(HPARAMS / "cnn.yaml"), *args]))
    return info.value.code, capsys.readouterr().err


def snapshot(folder):
    return {
        str(p): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in Path(folder).rglob("*")
    }


def test_env_log_lists_the_packages_of_the_python_that_ran(tiny_cnn_run):
    # SpeechBrain's env.log is the `pip freeze` of the pip first on PATH,
    # which can be another environment's (pyenv's shims on this machine)
    from importlib.metadata import version

    out, _ = tiny_cnn_run
    lines = (out / "env.log").read_text().splitlines()
    assert lines[0] == "SpeechBrain system description"
    for package in ("torch", "speechbrain", "sb-urbansound"):
        assert f"{package}=={version(package)}" in lines, package
    # and, as SpeechBrain's, the checkout's revision and the CUDA line
    assert "Git revision:" in lines or "Could not get git revision" in lines
    assert lines[-1] == "CUDA not available" or lines[-2].endswith("version:")


def test_training_learns(tiny_cnn_run):
    # 12 epochs at lr 0.01 (tests/conftest.py's TINY_TRAIN_ARGS), run once
    # for the session
    out, _ = tiny_cnn_run
    res = json.loads((out / "test_results.json").read_text())
    assert res["labels"] == sorted(CLASSES)
    assert res["n_clips"] == 4 * 6
    assert sum(map(sum, res["confusion_matrix"])) == res["n_clips"]
    assert res["accuracy"] >= 0.6, res  # chance is 0.25
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, 13))
    assert all(h["train_seconds"] > 0 for h in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    log = (out / "train_log.txt").read_text()
    assert "epoch: 12" in log and "test accuracy" in log
    lrs = [h["lr"] for h in history]
    assert max(lrs) <= 0.01 + 1e-9 and min(lrs) > 0  # one-cycle, never negative
    assert lrs.index(max(lrs)) not in (0, len(lrs) - 1)  # rises, then falls


@pytest.mark.slow
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


def test_a_failed_download_names_the_missing_folder(tmp_path, monkeypatch):
    from helpers import load_prepare_module
    from sb_urbansound.data.download import DownloadError
    from sb_urbansound.errors import DataPrepError

    prepare = load_prepare_module()

    def unreachable(folder):
        raise DownloadError("Downloading https://zenodo.org/... failed")

    monkeypatch.setattr(prepare, "download_urbansound8k", unreachable)
    missing = tmp_path / "no_such_folder"
    with pytest.raises(DataPrepError) as info:
        prepare.prepare_urbansound8k(missing, tmp_path / "m", download=True)
    message = str(info.value)
    assert f"the data folder {missing} does not exist" in message
    assert "--download=False skips the download" in message
    assert "zenodo" in message


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


def test_missing_data_folder_option_is_clear(capsys):
    status, stderr = run_in_process([], capsys)
    assert status == 2
    assert "--data_folder=" in stderr and "Traceback" not in stderr


@pytest.mark.slow
def test_torchrun_two_cpu_processes(small_data, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a free port: runs beside other jobs
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


# ------------------------------------------- no silent wrong answers (issue 11)
@pytest.fixture(scope="module")
def finished_run(small_data, tmp_path_factory):
    """A finished 2-epoch run: (output folder, its arguments)."""
    out = tmp_path_factory.mktemp("finished") / "out"
    args = [
        f"--data_folder={small_data}",
        f"--output_folder={out}",
        "--number_of_epochs=2",
        *SMALL,
    ]
    result = run_train(args)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, args


def replace_arg(args, key, value):
    return [a for a in args if not a.startswith(f"--{key}=")] + [
        f"--{key}={value}"
    ]


def test_reused_folder_with_other_folds_is_refused(finished_run):
    out, args = finished_run
    before = snapshot(out)
    other = replace_arg(args, "train_fold_nums", "[1,4]")
    other = replace_arg(other, "test_fold_nums", "[2]")
    result = run_train(other)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "started with other settings" in result.stderr
    assert "train_fold_nums: [1, 2] -> [1, 4]" in result.stderr
    assert "Traceback" not in result.stderr
    after = snapshot(out)
    for name in ("test_results.json", "history.json", "hyperparams.yaml"):
        assert after[str(out / name)] == before[str(out / name)]


def test_more_epochs_on_a_finished_run_is_refused(finished_run):
    out, args = finished_run
    history = (out / "history.json").read_text()
    result = run_train(replace_arg(args, "number_of_epochs", 4))
    assert result.returncode == 2, result.stderr[-3000:]
    assert (
        "planned for" in result.stderr and "--number_of_epochs" in result.stderr
    )
    assert (out / "history.json").read_text() == history


def test_rerun_cleans_leftovers_and_marks_the_resume(finished_run):
    out, args = finished_run
    (out / ".test_results.json.k3j4ab_c.sbu-tmp").write_text("half")
    (out / ".model.x7y8abcd.sbu-tmp").mkdir()
    (out / "save" / ".history.json.a1b2cdef.sbu-tmp").write_text("half")
    # the user's hidden files that merely end in .tmp are not ours
    (out / ".my.config.tmp").write_text("mine")
    (out / ".notes.old.tmp").mkdir()
    result = run_train(args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (out / ".test_results.json.k3j4ab_c.sbu-tmp").exists()
    assert not (out / ".model.x7y8abcd.sbu-tmp").exists()
    assert not (out / "save" / ".history.json.a1b2cdef.sbu-tmp").exists()
    assert (out / ".my.config.tmp").read_text() == "mine"
    assert (out / ".notes.old.tmp").is_dir()
    log = (out / "train_log.txt").read_text()
    assert "resumed from the checkpoint after epoch 2" in log


def test_two_runs_never_write_one_folder(finished_run):
    from sb_urbansound.training.experiment import RunFolder

    out, args = finished_run
    holder = RunFolder(out)
    holder.lock()
    try:
        result = run_train(args)
    finally:
        holder.unlock()
    assert result.returncode == 75  # busy: try again later
    assert f"another run (process {os.getpid()} (" in result.stderr


def test_diverging_training_stops_and_names_the_files(small_data, tmp_path):
    result = run_train(
        [
            f"--data_folder={small_data}",
            f"--output_folder={tmp_path / 'out'}",
            "--number_of_epochs=2",
            "--lr=1e30",
            "--max_lr=1e30",
            *SMALL,
        ]
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "the loss of a train batch is" in result.stderr
    assert str(small_data / "audio") in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "option, message",
    [
        ("--batch_size=0", "batch_size=0 is not valid"),
        ("--number_of_epochs=-1", "number_of_epochs=-1 is not valid"),
        ("--channels=0", "channels=0 is not valid"),
        ("--duration_ms=0", "duration_ms=0 is not valid"),
        ("--sample_rate=abc", "sample_rate='abc' is not valid"),
        ("--batch_sise=4", "unknown option --batch_sise"),
        ("--seed=3 --seed=4", "--seed is given twice"),
        ("--duration_ms=1", "22 samples, shorter than one FFT window"),
        ("--hop_length=0", "hop_length=0 is not valid"),
        ("--hop_length=-3", "hop_length=-3 is not valid"),
        ("--sample_rate=100", "sample_rate=100 is not valid"),
        ("--sample_rate=2147483647", "sample_rate=2147483647 is not valid"),
        ("--top_db=-5", "top_db=-5 is not valid"),
        ("--n_mels=100000", "more than the 257 frequency bins of n_fft=512"),
        ("--n_fft=1", "n_fft=1 is not valid"),
        ("--max_mask_pct=-0.5", "max_mask_pct=-0.5 is not valid"),
        (
            "--data_source=clips",
            "data_source='clips' is not valid: data_source must be files, "
            "bank, feature_bank or shards",
        ),
    ],
)
def test_bad_options_are_named(tmp_path, option, message, capsys):
    status, stderr = run_in_process(
        [
            f"--data_folder={tmp_path}",
            f"--output_folder={tmp_path / 'out'}",
            *option.split(),
        ],
        capsys,
    )
    assert status == 2
    assert message in stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "out").exists()


def test_a_device_torch_cannot_use_stops_the_run_before_anything_is_built(
    small_data, tmp_path, capsys
):
    # It was found only when SpeechBrain made the trainer: after the clip
    # bank was built, and with a traceback ('Found no NVIDIA driver')
    count = torch.cuda.device_count()
    device = f"cuda:{count}" if count else "cuda"
    out = tmp_path / "out"
    status, stderr = run_in_process(
        [
            f"--data_folder={small_data}",
            f"--output_folder={out}",
            f"--device={device}",
            *SMALL,
        ],
        capsys,
    )
    assert status == 2, stderr[-3000:]
    assert f"--device={device} cannot be used" in stderr
    assert "Traceback" not in stderr
    assert not out.exists()  # nothing prepared, no bank built


@pytest.mark.parametrize("key", ["output_folder", "bank_folder"])
def test_folders_inside_the_data_folder_are_refused(
    small_data, tmp_path, key, capsys
):
    before = snapshot(small_data)
    folders = {"output_folder": tmp_path / "out", key: small_data / "mine"}
    status, stderr = run_in_process(
        [
            f"--data_folder={small_data}",
            *[f"--{k}={v}" for k, v in folders.items()],
            *SMALL,
        ],
        capsys,
    )
    assert status == 2
    assert f"{key} {small_data / 'mine'} is inside data_folder" in stderr
    assert snapshot(small_data) == before


def test_a_folder_of_user_files_is_never_written(small_data, tmp_path):
    out = tmp_path / "mine"
    (out / "model").mkdir(parents=True)
    files = {
        "train.py": "print('mine')",
        "hyperparams.yaml": "mine: 1",
        "history.json": '{"not": "a list"}',
        "model/README.txt": "mine",
        ".my.config.tmp": "mine",
    }
    for name, text in files.items():
        (out / name).write_text(text)
    result = run_train(
        [f"--data_folder={small_data}", f"--output_folder={out}", *SMALL]
    )
    assert result.returncode == 2
    assert "holds files that sb-urbansound did not write" in result.stderr
    assert "history.json, hyperparams.yaml, model, train.py" in result.stderr
    assert "Traceback" not in result.stderr
    for name, text in files.items():
        assert (out / name).read_text() == text


def test_loader_workers_are_stopped_when_the_run_ends(small_data, tmp_path):
    # Persistent DataLoader workers (the per-clip path) used to live until the
    # interpreter exited, where stopping them cost seconds per worker: the run
    # ends with no worker process left.
    import multiprocessing

    from helpers import HPARAMS, load_recipe

    recipe = load_recipe()
    recipe.main(
        [
            str(HPARAMS / "cnn.yaml"),
            f"--data_folder={small_data}",
            f"--output_folder={tmp_path / 'out'}",
            "--number_of_epochs=1",
            "--data_source=files",
            "--noprogressbar",
            *replace_arg(SMALL, "num_workers", 2),
        ]
    )
    assert (tmp_path / "out" / "test_results.json").exists()
    assert multiprocessing.active_children() == []


def test_one_decode_pass_still_names_bad_files(tmp_path):
    """With a clip bank, preparation reads headers and the bank decodes every
    file once: a file corrupt after its header and one holding NaN are named
    by the bank; with skip_missing, preparation decodes them and leaves them
    out; the per-clip path decodes every file at preparation."""
    import numpy as np
    import soundfile as sf

    data = tmp_path / "data"
    make_urbansound_tree(
        data,
        n_per_class_per_fold=2,
        folds=[1, 2, 3, 4],
        classes=CLASSES,
        seconds=(0.3, 0.5),
    )
    nan = data / "audio" / "fold1" / "1000-0-0-0.wav"
    sf.write(nan, np.full(4000, np.nan, dtype=np.float32), 16000, "FLOAT")
    cut = data / "audio" / "fold2" / "2001-1-0-1.wav"
    with open(cut, "r+b") as f:  # a valid header, then garbage
        f.seek(44)
        f.write(b"\xff" * 64)
    sf.write(cut.with_suffix(".flac"), np.zeros(16000), 16000)
    flac = cut.with_suffix(".flac").read_bytes()
    cut.unlink()
    damaged = cut.with_suffix(".flac")
    damaged.write_bytes(flac[: len(flac) // 2] + b"\x00" * (len(flac) // 2))
    import csv

    rows = list(csv.DictReader(open(data / "metadata" / "UrbanSound8K.csv")))
    for row in rows:
        if row["slice_file_name"] == cut.name:
            row["slice_file_name"] = damaged.name
    with open(data / "metadata" / "UrbanSound8K.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    out = tmp_path / "out"
    result = run_train(
        [f"--data_folder={data}", f"--output_folder={out}", *SMALL]
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "cannot be decoded into the clip bank" in result.stderr
    assert nan.name in result.stderr and damaged.name in result.stderr
    assert "--skip_missing=True" in result.stderr
    assert "Traceback" not in result.stderr
    options = json.loads(
        (out / "manifests" / "prepare_options.json").read_text()
    )
    assert options["checks"] == "headers"

    skipped = tmp_path / "skipped"
    result = run_train(
        [
            f"--data_folder={data}",
            f"--output_folder={skipped}",
            "--skip_missing=True",
            "--number_of_epochs=1",
            *SMALL,
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert nan.name in result.stderr and damaged.name in result.stderr
    train = json.loads((skipped / "manifests" / "train.json").read_text())
    assert nan.stem not in train and damaged.stem not in train

    per_clip = tmp_path / "per_clip"
    result = run_train(
        [
            f"--data_folder={data}",
            f"--output_folder={per_clip}",
            "--data_source=files",
            *SMALL,
        ]
    )
    assert result.returncode == 2
    assert "cannot be used" in result.stderr  # named at preparation
    assert nan.name in result.stderr and damaged.name in result.stderr
