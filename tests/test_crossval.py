"""Tests of sb_urbansound.crossval: fold plans, arguments, resume, outputs.

Most tests inject a fake runner (no training); one end-to-end test runs the real
command on a tiny generated UrbanSound8K tree.
"""

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from helpers import REPO, make_urbansound_tree
from sb_urbansound.crossval import (
    CrossvalError,
    assign_folds,
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


# ------------------------------------------------------- runs with a fake runner
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
    """Writes plausible test_results.json and history.json instead of training."""

    def __init__(self, fail_on=None, shared_clip=False):
        self.calls = []
        self.fail_on = fail_on
        self.shared_clip = shared_clip  # put one clip in every fold's test set

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
        [sys.executable, "-m", "sb_urbansound.crossval", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


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

    start = time.monotonic()
    proc = run_cli(*common, "--folds=[1,2,3]", *TINY)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first_run = time.monotonic() - start
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

    # Rerun after "losing" fold 3's results: folds 1 and 2 are skipped, fold 3
    # resumes from its checkpoint in the same folder.
    (out / "fold_3" / "test_results.json").unlink()
    proc = run_cli(*common, "--folds=[1,2,3]", *TINY)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout + proc.stderr
    assert "fold 1: already finished" in text
    assert "fold 2: already finished" in text
    assert "fold 3: resuming" in text
    assert (out / "fold_3" / "test_results.json").exists()
    assert first_run < 120
