"""Tests of sb_urbansound.training.crossval: fold plans, arguments, resume,
outputs.

Most tests inject a fake runner (no training); one end-to-end test runs the real
command on a tiny generated UrbanSound8K tree.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import REPO, make_urbansound_tree
from sb_urbansound.training.crossval import (
    FORWARDED_SIGNALS,
    CrossvalError,
    FoldFailedError,
    assign_folds,
    fold_finished,
    main,
    parse_crossval_args,
    read_recipe_settings,
    run_crossval,
)

CNN_YAML = str(REPO / "hparams" / "cnn.yaml")
LABELS = ["car_horn", "dog_bark", "siren"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ fold plans
@pytest.mark.parametrize(
    "folds", [list(range(1, 11)), [1, 2, 3], [9, 2, 5, 7], list(range(1, 6))]
)
def test_every_fold_tested_once_and_valid_never_overlaps(folds):
    plans = assign_folds(folds)
    assert sorted(p.test for p in plans) == sorted(folds)
    assert sorted(p.valid for p in plans) == sorted(
        folds
    )  # each validates once
    for p in plans:
        assert p.valid != p.test
        assert p.test not in p.train and p.valid not in p.train
        assert sorted([p.test, p.valid, *p.train]) == sorted(folds)
        assert len(p.train) == len(folds) - 2


def test_valid_fold_is_next_listed_fold_cyclically():
    plans = assign_folds(list(range(1, 11)))
    assert [(p.test, p.valid) for p in plans] == [
        (k, k % 10 + 1) for k in range(1, 11)
    ]


@pytest.mark.parametrize(
    "folds, message",
    [
        ([1, 2], "at least 3"),
        ([1], "at least 3"),
        ([1, 2, 2, 3], "more than once"),
    ],
)
def test_bad_fold_lists(folds, message):
    with pytest.raises(CrossvalError, match=message):
        assign_folds(folds)


# ------------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    "tokens", [["--folds=[1,2,3]"], ["--folds=1,2,3"], ["--folds", "[1, 2, 3]"]]
)
def test_folds_argument_forms(tokens):
    assert parse_crossval_args(["h.yaml", *tokens]).folds == [1, 2, 3]


def test_arguments_split_between_crossval_and_recipe():
    a = parse_crossval_args(
        [
            "h.yaml",
            "--data_folder=/d",
            "--output_folder=/o",
            "--leaky-random-split",
            "--number_of_epochs=3",
            "--device",
            "cpu",
        ]
    )
    assert a.hparams_file == "h.yaml"
    assert a.output_folder == "/o"
    assert a.leaky is True
    assert a.passthrough == [
        "--data_folder=/d",
        "--number_of_epochs=3",
        "--device",
        "cpu",
    ]
    assert parse_crossval_args(["h.yaml", "--leaky_random_split=True"]).leaky
    assert not parse_crossval_args(
        ["h.yaml", "--leaky_random_split=False"]
    ).leaky


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "usage"),
        (["--folds=[1,2,3]"], "first argument"),
        (["h.yaml", "--test_fold_nums=[1]"], "set by crossval"),
        (["h.yaml", "--folds"], "needs a value"),
        (["h.yaml", "--folds=[a,b]"], "not a fold number"),
    ],
)
def test_bad_arguments(argv, message):
    with pytest.raises(CrossvalError, match=message):
        parse_crossval_args(argv)


def test_read_recipe_settings_of_the_real_yaml():
    s = read_recipe_settings(CNN_YAML, ["--data_folder=/nowhere", "--seed=7"])
    assert s["folds"] == list(range(1, 11))
    assert s["output_folder"] == "results/cnn/7"
    assert s["leaky_random_split"] is False
    s = read_recipe_settings(
        CNN_YAML, ["--data_folder=/nowhere", "--leaky_random_split=True"]
    )
    assert s["leaky_random_split"] is True
    with pytest.raises(CrossvalError, match="data_folder"):
        read_recipe_settings(CNN_YAML, [])  # !PLACEHOLDER not filled
    with pytest.raises(CrossvalError, match="not found"):
        read_recipe_settings("no/such.yaml", [])


def test_yaml_without_fold_lists_is_refused(tmp_path):
    (tmp_path / "h.yaml").write_text("seed: 1\noutput_folder: out\n")
    with pytest.raises(CrossvalError, match="train_fold_nums"):
        read_recipe_settings(tmp_path / "h.yaml", [])


# ----------------------------------------------------- runs with a fake runner
def parse_recipe_argv(argv):
    """The fold lists and output folder that crossval passed to the recipe."""
    opts = dict(a[2:].split("=", 1) for a in argv[1:] if a.startswith("--"))
    return {
        "output_folder": opts["output_folder"],
        "train": yaml.safe_load(opts["train_fold_nums"]),
        "valid": yaml.safe_load(opts["valid_fold_nums"]),
        "test": yaml.safe_load(opts["test_fold_nums"]),
        "opts": opts,
    }


class FakeRunner:
    """Writes plausible test_results.json, history.json and model/ instead of
    training."""

    def __init__(
        self, fail_on=None, shared_clip=False, killed_in_export_on=None
    ):
        self.calls = []
        self.fail_on = fail_on
        self.shared_clip = shared_clip  # put one clip in every fold's test set
        # Killed after writing test_results.json, before model/ is complete
        self.killed_in_export_on = killed_in_export_on
        self.export = True

    def __call__(self, argv, fold_dir):
        info = parse_recipe_argv(argv)
        self.calls.append(info)
        test = info["test"][0]
        assert str(fold_dir) == info["output_folder"]
        fold_dir.mkdir(parents=True, exist_ok=True)
        if test == self.fail_on:
            # Interrupted mid-training: a checkpoint exists, no results.
            (fold_dir / "save" / "CKPT+fake").mkdir(parents=True, exist_ok=True)
            raise KeyboardInterrupt
        rng = np.random.default_rng(test)
        n_per_class = 4 + test
        cm = np.zeros((3, 3), dtype=int)
        for i in range(3):
            cm[i] = rng.multinomial(
                n_per_class, [0.1, 0.1, 0.1] + 0.7 * np.eye(3)[i]
            )
        (fold_dir / "test_results.json").write_text(
            json.dumps(
                {
                    "accuracy": float(np.trace(cm) / cm.sum()),
                    "per_class_accuracy": {
                        label: float(cm[i, i] / cm[i].sum())
                        for i, label in enumerate(LABELS)
                    },
                    "confusion_matrix": cm.tolist(),
                    "labels": LABELS,
                    "n_clips": int(cm.sum()),
                }
            )
        )
        history = [
            {
                "epoch": e,
                "lr": 1e-3,
                "train_loss": 1.0 / e,
                "train_accuracy": 0.3 * e,
                "valid_loss": 1.1 / e,
                "valid_accuracy": 0.25 * e,
            }
            for e in (1, 2)
        ]
        (fold_dir / "history.json").write_text(json.dumps(history))
        # The test manifest, where hparams/cnn.yaml's test_annotation points.
        ids = [f"{test}-{i}" for i in range(int(cm.sum()))]
        if self.shared_clip:
            ids[0] = "shared-clip"
        (fold_dir / "manifests").mkdir(exist_ok=True)
        (fold_dir / "manifests" / "test.json").write_text(
            json.dumps({i: {"label": "x"} for i in ids})
        )
        # The model is exported last
        if test == self.killed_in_export_on:
            (fold_dir / ".model.tmp123").mkdir()  # the export's temp folder
            raise KeyboardInterrupt
        if self.export:
            (fold_dir / "model").mkdir(exist_ok=True)
            (fold_dir / "model" / "hyperparams.yaml").write_text("n: 1\n")


def cv_argv(out, *extra):
    return [
        CNN_YAML,
        "--data_folder=/nowhere",
        f"--output_folder={out}",
        *extra,
    ]


def test_run_with_fake_runner_writes_all_outputs(tmp_path):
    out = tmp_path / "cv"
    runner = FakeRunner()
    messages = []
    res = run_crossval(
        cv_argv(out, "--folds=[1,2,3,4]", "--seed=3"),
        runner=runner,
        log=messages.append,
        progress=False,
    )
    # The recipe got the planned fold lists, its own folder and the overrides.
    assert [c["test"] for c in runner.calls] == [[1], [2], [3], [4]]
    for c in runner.calls:
        (test,) = c["test"]
        assert c["valid"] == [test % 4 + 1]
        assert sorted(c["train"]) == sorted({1, 2, 3, 4} - {test, test % 4 + 1})
        assert c["output_folder"] == str(out / f"fold_{test}")
        assert c["opts"]["seed"] == "3"
        assert c["opts"]["data_folder"] == "/nowhere"
        assert "leaky_random_split" not in c["opts"]
    # One summary line per fold, with accuracy and clips.
    assert sum(m.startswith("fold ") and "clips" in m for m in messages) == 4

    saved = json.loads((out / "crossval_results.json").read_text())
    assert saved == json.loads(json.dumps(res))
    assert set(saved) == {"folds", "mean", "std", "confusion_matrix", "labels"}
    accs = [f["accuracy"] for f in saved["folds"]]
    assert saved["mean"] == pytest.approx(np.mean(accs))
    assert saved["std"] == pytest.approx(np.std(accs, ddof=1))
    assert np.sum(saved["confusion_matrix"]) == sum(
        f["n_clips"] for f in saved["folds"]
    )
    assert [f["valid_folds"] for f in saved["folds"]] == [[2], [3], [4], [1]]
    report = (out / "crossval_report.md").read_text()
    assert "| Test fold | Valid fold(s) |" in report
    assert "--folds=[1,2,3,4]" in report
    assert "LEAKY" not in report
    for name in ("confusion_matrix.png", "learning_curves.png"):
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE


def test_clips_in_several_test_sets_are_flagged(tmp_path):
    messages = []
    run_crossval(
        cv_argv(tmp_path / "ok", "--folds=[1,2,3]"),
        runner=FakeRunner(),
        log=messages.append,
        progress=False,
    )
    assert not any("more than one" in m for m in messages)
    run_crossval(
        cv_argv(tmp_path / "bad", "--folds=[1,2,3]"),
        runner=FakeRunner(shared_clip=True),
        log=messages.append,
        progress=False,
    )
    assert any(
        "1 clip(s) are in the test set of more than one" in m for m in messages
    )


def test_default_folds_are_the_yaml_folds(tmp_path):
    runner = FakeRunner()
    run_crossval(
        cv_argv(tmp_path), runner=runner, log=lambda m: None, progress=False
    )
    assert [c["test"][0] for c in runner.calls] == list(range(1, 11))


def test_resume_skips_finished_folds_and_reruns_the_unfinished_one(tmp_path):
    out = tmp_path / "cv"
    argv = cv_argv(out, "--folds=[1,2,3,4,5]")
    first = FakeRunner(fail_on=3)
    with pytest.raises(KeyboardInterrupt):
        run_crossval(argv, runner=first, log=lambda m: None, progress=False)
    assert [c["test"][0] for c in first.calls] == [1, 2, 3]
    assert not (out / "crossval_results.json").exists()

    second = FakeRunner()
    messages = []
    run_crossval(argv, runner=second, log=messages.append, progress=False)
    assert [c["test"][0] for c in second.calls] == [3, 4, 5]
    assert second.calls[0]["output_folder"] == str(
        out / "fold_3"
    )  # same folder
    assert any("fold 1: already finished" in m for m in messages)
    assert any("fold 2: already finished" in m for m in messages)
    assert any("fold 3: resuming" in m for m in messages)
    marker = json.loads((out / "fold_3" / "crossval_fold.json").read_text())
    assert marker["attempts"] == 2
    assert (
        len(json.loads((out / "crossval_results.json").read_text())["folds"])
        == 5
    )

    # A third run trains nothing and rewrites the same results.
    third = FakeRunner()
    run_crossval(argv, runner=third, log=lambda m: None, progress=False)
    assert third.calls == []


def test_fold_killed_during_the_model_export_is_rerun(tmp_path):
    """test_results.json without model/: the fold is not finished."""
    out = tmp_path / "cv"
    argv = cv_argv(out, "--folds=[1,2,3,4]")
    first = FakeRunner(killed_in_export_on=2)
    with pytest.raises(KeyboardInterrupt):
        run_crossval(argv, runner=first, log=lambda m: None, progress=False)
    assert (out / "fold_2" / "test_results.json").exists()
    assert not (out / "fold_2" / "model").exists()

    second = FakeRunner()
    messages = []
    run_crossval(argv, runner=second, log=messages.append, progress=False)
    assert [c["test"][0] for c in second.calls] == [2, 3, 4]
    assert second.calls[0]["output_folder"] == str(out / "fold_2")
    assert any("fold 1: already finished" in m for m in messages)
    assert not any("fold 2: already finished" in m for m in messages)
    model_yaml = out / "fold_2" / "model" / "hyperparams.yaml"
    assert any(
        m.startswith(
            f"fold 2: has test results but no exported model ({model_yaml}): "
            "the run stopped during the export; rerunning it"
        )
        for m in messages
    )
    assert model_yaml.exists()
    marker = json.loads((out / "fold_2" / "crossval_fold.json").read_text())
    assert marker["attempts"] == 2
    # Now every fold is finished: nothing reruns
    third = FakeRunner()
    run_crossval(argv, runner=third, log=lambda m: None, progress=False)
    assert third.calls == []


def test_a_fold_that_exports_no_model_fails(tmp_path):
    runner = FakeRunner()
    runner.export = False
    with pytest.raises(FoldFailedError) as info:
        run_crossval(
            cv_argv(tmp_path / "cv", "--folds=[1,2,3]"),
            runner=runner,
            log=lambda m: None,
            progress=False,
        )
    model_yaml = tmp_path / "cv" / "fold_1" / "model" / "hyperparams.yaml"
    assert str(info.value) == (
        f"the recipe finished fold 1 without writing {model_yaml}"
    )
    assert not fold_finished(tmp_path / "cv" / "fold_1")


def test_changed_fold_assignment_is_refused(tmp_path):
    out = tmp_path / "cv"
    run_crossval(
        cv_argv(out, "--folds=[1,2,3,4]"),
        runner=FakeRunner(),
        log=lambda m: None,
        progress=False,
    )
    with pytest.raises(CrossvalError, match="different fold assignment"):
        run_crossval(
            cv_argv(out, "--folds=[1,2,3]"),
            runner=FakeRunner(),
            log=lambda m: None,
            progress=False,
        )
    with pytest.raises(CrossvalError, match="leaky_random_split"):
        run_crossval(
            cv_argv(out, "--folds=[1,2,3,4]", "--leaky-random-split"),
            runner=FakeRunner(),
            log=lambda m: None,
            progress=False,
        )


def test_leaky_mode_is_passed_to_every_fold_and_flagged(tmp_path):
    out = tmp_path / "cv"
    runner = FakeRunner()
    messages = []
    run_crossval(
        cv_argv(out, "--folds=[1,2,3]", "--leaky-random-split"),
        runner=runner,
        log=messages.append,
        progress=False,
    )
    assert all(c["opts"]["leaky_random_split"] == "True" for c in runner.calls)
    assert "WARNING" in messages[0]
    report = (out / "crossval_report.md").read_text()
    assert report.startswith("# Cross-validation report (LEAKY RANDOM SPLIT)")
    assert "NOT comparable" in report


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--folds=[1,2]"], "at least 3"),
        (["--valid_fold_nums=[3]"], "set by crossval"),
    ],
)
def test_main_reports_user_errors(tmp_path, capsys, extra, message):
    assert main(cv_argv(tmp_path, *extra)) == 2
    assert message in capsys.readouterr().err


# ------------------------------------------------------------------ end to end
TINY = [
    "--number_of_epochs=1",
    "--sample_rate=8000",
    "--channels=1",
    "--duration_ms=500",
    "--n_fft=256",
    "--hop_length=64",
    "--n_mels=32",
    "--num_workers=0",
    "--batch_size=4",
    "--download=False",
    "--n_classes=0",
    "--noprogressbar",
]


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "sb_urbansound.training.crossval", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_end_to_end_tiny_run_and_resume(tmp_path):
    data = tmp_path / "data"
    make_urbansound_tree(
        data,
        n_per_class_per_fold=2,
        folds=range(1, 4),
        classes=["air_conditioner", "car_horn", "siren"],
        seconds=(0.3, 0.6),
        formats=[(8000, 1, "PCM_16"), (16000, 2, "PCM_16")],
    )
    out = tmp_path / "cv"
    common = [
        "hparams/cnn.yaml",
        f"--data_folder={data}",
        f"--output_folder={out}",
    ]

    # A fold that the data does not have: the recipe's clear error, status 1.
    bad = run_cli(*common, "--folds=[1,2,4]", *TINY)
    assert bad.returncode == 1, bad.stderr
    assert "which the data does not have" in bad.stdout + bad.stderr

    proc = run_cli(*common, "--folds=[1,2,3]", *TINY)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads((out / "crossval_results.json").read_text())
    assert [f["test_fold"] for f in res["folds"]] == [1, 2, 3]
    assert [f["valid_folds"] for f in res["folds"]] == [[2], [3], [1]]
    assert sorted(res["labels"]) == ["air_conditioner", "car_horn", "siren"]
    assert (
        np.sum(res["confusion_matrix"]) == 3 * 3 * 2
    )  # every clip tested once
    assert all(f["n_clips"] == 6 for f in res["folds"])
    for name in (
        "crossval_report.md",
        "confusion_matrix.png",
        "learning_curves.png",
    ):
        assert (out / name).stat().st_size > 0
    for k in (1, 2, 3):
        assert (
            len(json.loads((out / f"fold_{k}" / "history.json").read_text()))
            == 1
        )

    # Rerun after "losing" fold 3's results and fold 2's model (as a kill
    # during the export leaves it): fold 1 is skipped, folds 2 and 3 resume
    # from their checkpoints in the same folders, train nothing more, are
    # tested and exported again.
    (out / "fold_3" / "test_results.json").unlink()
    shutil.rmtree(out / "fold_2" / "model")
    proc = run_cli(*common, "--folds=[1,2,3]", *TINY)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout + proc.stderr
    assert "fold 1: already finished" in text
    assert "fold 2: has test results but no exported model" in text
    assert "fold 3: resuming" in text
    for k in (2, 3):
        assert fold_finished(out / f"fold_{k}")
        history = json.loads((out / f"fold_{k}" / "history.json").read_text())
        assert len(history) == 1  # no epoch more


# ------------------------------------------------ stopping: signals and kills
FAKE_YAML = """\
output_folder: out
mode: stop
train_fold_nums: [3]
valid_fold_nums: [2]
test_fold_nums: [1]
"""

# A recipe that records the signals it gets, and stops on them (mode=stop) or
# not (mode=ignore); it writes child.pid once its handlers are in place.
FAKE_TRAIN = """\
import os, signal, sys, time
from pathlib import Path

opts = dict(a[2:].split("=", 1) for a in sys.argv[2:] if "=" in a)
out = Path(opts["output_folder"])
out.mkdir(parents=True, exist_ok=True)


def on_signal(signum, frame):
    with open(out / "signals.txt", "a") as f:
        f.write(signal.Signals(signum).name + "\\n")
    if opts["mode"] == "stop":
        sys.exit(1)


for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, on_signal)
(out / "child.pid").write_text(str(os.getpid()))
while True:
    time.sleep(0.05)
"""

# crossval's command line, with a shorter wait for the recipe to stop
DRIVER = (
    "import sys; import sb_urbansound.training.crossval as c; "
    "c.STOP_TIMEOUT_S = float(sys.argv[1]); sys.exit(c.main(sys.argv[2:]))"
)


def alive(pid):
    """Whether a process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(condition, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.fixture
def fake_crossval(tmp_path):
    """Start crossval on a fake recipe; kill whatever is left at the end."""
    recipe = tmp_path / "recipe"
    (recipe / "hparams").mkdir(parents=True)
    (recipe / "hparams" / "fake.yaml").write_text(FAKE_YAML)
    (recipe / "train.py").write_text(FAKE_TRAIN)
    started = []

    def start(mode="stop", stop_timeout=30, sigint=signal.SIG_DFL):
        """``sigint``: crossval's SIGINT as it starts. Set, not inherited:
        under a non-interactive shell's background job (``pytest ... &`` in
        a script) SIGINT is ignored, and crossval keeps an ignored SIGINT
        (as ``nohup``), so the test's SIGINT would be dropped."""
        out = tmp_path / "cv"
        # Files, not pipes: an orphaned recipe would hold a pipe open
        with open(tmp_path / "stderr.txt", "w") as stderr:
            parent = subprocess.Popen(
                [sys.executable, "-c", DRIVER, str(stop_timeout)]
                + [str(recipe / "hparams" / "fake.yaml")]
                + [f"--output_folder={out}", "--folds=[1,2,3]"]
                + [f"--mode={mode}"],
                cwd=tmp_path,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,  # no terminal signal reaches it
                preexec_fn=lambda: signal.signal(signal.SIGINT, sigint),
            )
        started.append(parent.pid)
        pid_file = out / "fold_1" / "child.pid"
        if not wait_for(lambda: pid_file.exists() and pid_file.read_text(), 60):
            parent.kill()
            pytest.fail((tmp_path / "stderr.txt").read_text())
        started.append(int(pid_file.read_text()))

        def stop(sig, timeout=90):
            """Signal crossval; return its exit status and stderr (the
            timeout only guards against a hang: a loaded machine can take
            tens of seconds to write the report)."""
            parent.send_signal(sig)
            status = parent.wait(timeout=timeout)
            return status, (tmp_path / "stderr.txt").read_text()

        return stop, started[-1], out / "fold_1" / "signals.txt"

    yield start
    for pid in reversed(started):
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow  # kill: two processes
def test_stop_signals_are_forwarded_to_the_recipe(fake_crossval):
    """SIGTERM to crossval: the recipe gets it, ends, and so does crossval,
    also where SIGINT is ignored (``crossval ... &`` in a script)."""
    stop, child, signals = fake_crossval(sigint=signal.SIG_IGN)
    status, stderr = stop(signal.SIGTERM)
    assert status == 128 + signal.SIGTERM, stderr
    assert signals.read_text() == "SIGTERM\n"
    assert not alive(child)
    assert (
        "crossval: interrupted (got SIGTERM; the recipe on fold_1 was stopped "
        "(exit status 1)); rerun the same command to resume" in stderr
    )
    assert not (signals.parent.parent / "fold_2").exists()
    # SIGINT and SIGHUP take the same path
    assert set(FORWARDED_SIGNALS) == {
        signal.SIGTERM,
        signal.SIGINT,
        signal.SIGHUP,
    }


@pytest.mark.slow  # kill: two processes
@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's"
)
def test_the_recipe_dies_with_a_killed_crossval(fake_crossval):
    stop, child, signals = fake_crossval()
    status, _ = stop(signal.SIGKILL)
    assert status == -signal.SIGKILL
    assert wait_for(lambda: not alive(child), 10)
    assert signals.read_text() == "SIGTERM\n"


@pytest.mark.slow  # kill: two processes
def test_a_recipe_that_does_not_stop_is_killed(fake_crossval):
    stop, child, signals = fake_crossval(mode="ignore", stop_timeout=0.5)
    status, stderr = stop(signal.SIGINT)
    assert status == 128 + signal.SIGINT, stderr
    assert signals.read_text() == "SIGINT\n"
    assert not alive(child)
    assert (
        "(got SIGINT; the recipe on fold_1 did not exit within 0.5 s of it "
        "and was killed)" in stderr
    )


def test_a_failed_recipe_is_named_with_its_exit_status_and_command(tmp_path):
    from sb_urbansound.training.crossval import subprocess_runner

    (tmp_path / "recipe" / "hparams").mkdir(parents=True)
    (tmp_path / "recipe" / "train.py").write_text("raise SystemExit(3)\n")
    yaml_file = tmp_path / "recipe" / "hparams" / "h.yaml"
    yaml_file.write_text("seed: 1\n")
    with pytest.raises(FoldFailedError) as info:
        subprocess_runner([str(yaml_file), "--seed=2"], tmp_path / "fold_1")
    message = str(info.value)
    assert "failed on fold_1 (exit status 3)" in message
    assert "--seed=2" in message and "Rerun the same crossval" in message


def test_folds_share_one_clip_bank(tmp_path):
    out = tmp_path / "cv"
    runner = FakeRunner()
    run_crossval(
        cv_argv(out, "--folds=[1,2,3]"),
        runner=runner,
        log=lambda m: None,
        progress=False,
    )
    banks = {call["opts"]["bank_folder"] for call in runner.calls}
    assert banks == {str(out / "bank")}
    # A bank folder given on the command line wins
    mine = FakeRunner()
    run_crossval(
        cv_argv(tmp_path / "cv2", "--folds=[1,2,3]", "--bank_folder=/b"),
        runner=mine,
        log=lambda m: None,
        progress=False,
    )
    assert {call["opts"]["bank_folder"] for call in mine.calls} == {"/b"}


def test_a_rerun_with_other_settings_is_refused(tmp_path):
    out = tmp_path / "cv"
    argv = cv_argv(out, "--folds=[1,2,3]")
    run_crossval(argv, runner=FakeRunner(), log=lambda m: None, progress=False)
    report = (out / "crossval_report.md").read_text()
    # the report shows how each fold was run
    for fold in (1, 2, 3):
        assert f"# fold {fold}" in report
        assert f"--test_fold_nums=[{fold}]" in report
    runner = FakeRunner()
    with pytest.raises(CrossvalError) as info:
        run_crossval(
            [*argv, "--number_of_epochs=2"],
            runner=runner,
            log=lambda m: None,
            progress=False,
        )
    assert "number_of_epochs: 30 -> 2" in str(info.value)
    assert "fold_1" in str(info.value) and "fold_3" in str(info.value)
    assert runner.calls == []
    assert (out / "crossval_report.md").read_text() == report


def test_a_resumed_crossval_with_another_lr_is_refused(tmp_path):
    out = tmp_path / "cv"
    argv = cv_argv(out, "--folds=[1,2,3]")
    with pytest.raises(KeyboardInterrupt):  # killed during fold 2
        run_crossval(
            argv,
            runner=FakeRunner(fail_on=2),
            log=lambda m: None,
            progress=False,
        )
    runner = FakeRunner()
    with pytest.raises(CrossvalError) as info:
        run_crossval(
            [*argv, "--lr=0.01"],
            runner=runner,
            log=lambda m: None,
            progress=False,
        )
    message = str(info.value)
    assert "fold_1:\n    lr: 0.001 -> 0.01" in message
    assert "fold_2:\n    lr: 0.001 -> 0.01" in message
    assert runner.calls == []
    # the same command resumes
    run_crossval(argv, runner=runner, log=lambda m: None, progress=False)
    assert [c["test"][0] for c in runner.calls] == [2, 3]


HOLD_LOCK = """
import sys, time
from sb_urbansound.atomic import FolderLock
lock = FolderLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_two_crossvals_never_share_an_output_folder(tmp_path, capsys):
    out = tmp_path / "cv"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(out)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        code = main(cv_argv(out, "--folds=[1,2,3]"))
    finally:
        holder.kill()
        holder.wait()
    assert code == 75
    err = capsys.readouterr().err
    assert f"another run (process {holder.pid} (" in err
    assert not (out / "fold_1").exists()


def test_a_folder_of_user_files_is_refused(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(cv_argv(out, "--folds=[1,2,3]")) == 2
    assert "notes.txt" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_a_yaml_crossval_cannot_read_is_named_once(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1, 2\n")
    with pytest.raises(CrossvalError) as e:
        read_recipe_settings(bad)
    assert str(e.value).count("cannot read") == 1, str(e.value)
    assert str(bad) in str(e.value)
