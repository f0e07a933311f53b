"""Tests of sb_urbansound.training.report on synthetic fold results (no
training), and of the machine description that the cross-validation report
quotes."""

import json

import matplotlib.image
import numpy as np
import pytest
from sb_urbansound.training.hardware import hardware_description
from sb_urbansound.training.report import (
    aggregate_folds,
    append_history,
    classification_results,
    confusion_matrix,
    plot_confusion_matrix,
    plot_learning_curves,
    write_markdown_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LABELS = ["car_horn", "dog_bark", "siren"]


def fake_fold(test_fold, valid_fold, rng, labels=LABELS, n_per_class=None):
    """A test_results.json-shaped dict with a random, consistent confusion
    matrix."""
    n = len(labels)
    counts = n_per_class or rng.integers(3, 12, size=n)
    cm = np.zeros((n, n), dtype=int)
    for i, count in enumerate(counts):
        p = rng.dirichlet(np.ones(n) + 4 * np.eye(n)[i])
        cm[i] = rng.multinomial(int(count), p)
    per_class = {
        label: (cm[i, i] / cm[i].sum() if cm[i].sum() else None)
        for i, label in enumerate(labels)
    }
    return {
        "test_fold": test_fold,
        "valid_folds": [valid_fold],
        "accuracy": float(np.trace(cm) / cm.sum()),
        "per_class_accuracy": per_class,
        "confusion_matrix": cm.tolist(),
        "labels": list(labels),
        "n_clips": int(cm.sum()),
    }


@pytest.fixture
def folds():
    rng = np.random.default_rng(0)
    return [fake_fold(k, k % 5 + 1, rng) for k in range(1, 6)]


def test_mean_and_std_match_numpy(folds):
    res = aggregate_folds(folds)
    accs = np.array([f["accuracy"] for f in folds])
    assert res["mean"] == pytest.approx(np.mean(accs))
    assert res["std"] == pytest.approx(np.std(accs, ddof=1))
    assert [f["accuracy"] for f in res["folds"]] == pytest.approx(accs)
    assert set(res) == {"folds", "mean", "std", "confusion_matrix", "labels"}
    assert set(res["folds"][0]) == {
        "test_fold",
        "valid_folds",
        "accuracy",
        "per_class_accuracy",
        "n_clips",
    }
    assert [f["test_fold"] for f in res["folds"]] == [1, 2, 3, 4, 5]
    assert res["folds"][0]["valid_folds"] == [2]


def test_single_fold_std_is_null():
    rng = np.random.default_rng(1)
    res = aggregate_folds([fake_fold(1, 2, rng)])
    assert res["std"] is None
    assert json.loads(json.dumps(res))["std"] is None


def test_summed_confusion_matrix_counts_every_clip_once(folds):
    res = aggregate_folds(folds)
    cm = np.array(res["confusion_matrix"])
    assert cm.sum() == sum(f["n_clips"] for f in folds)
    expected = sum(np.array(f["confusion_matrix"]) for f in folds)
    np.testing.assert_array_equal(cm, expected)
    assert res["labels"] == LABELS


def test_label_mismatch_is_an_error(folds):
    rng = np.random.default_rng(2)
    folds.append(
        fake_fold(6, 1, rng, labels=["car_horn", "dog_bark", "gun_shot"])
    )
    with pytest.raises(ValueError, match="different labels"):
        aggregate_folds(folds)


def test_reordered_labels_are_aligned():
    rng = np.random.default_rng(3)
    a = fake_fold(1, 2, rng)
    b = fake_fold(2, 3, rng)
    expected = np.array(a["confusion_matrix"]) + np.array(b["confusion_matrix"])
    # Same fold b, with labels (and matrix rows/columns) in reverse order.
    b_rev = dict(b, labels=LABELS[::-1])
    b_rev["confusion_matrix"] = np.array(b["confusion_matrix"])[
        ::-1, ::-1
    ].tolist()
    res = aggregate_folds([a, b_rev])
    assert res["labels"] == LABELS
    np.testing.assert_array_equal(res["confusion_matrix"], expected)


def test_inconsistent_matrix_is_an_error(folds):
    folds[1]["n_clips"] += 1
    with pytest.raises(ValueError, match="n_clips"):
        aggregate_folds(folds)
    folds[1]["n_clips"] -= 1
    folds[2]["confusion_matrix"] = [[1, 0], [0, 1]]
    with pytest.raises(ValueError, match="shape"):
        aggregate_folds(folds)
    with pytest.raises(ValueError, match="at least one"):
        aggregate_folds([])


def test_missing_class_in_a_fold_is_null_and_json_safe():
    rng = np.random.default_rng(4)
    fold = fake_fold(1, 2, rng, n_per_class=[3, 0, 4])
    fold["per_class_accuracy"]["dog_bark"] = float("nan")
    res = aggregate_folds([fold, fake_fold(2, 3, rng), fake_fold(3, 1, rng)])
    assert res["folds"][0]["per_class_accuracy"]["dog_bark"] is None
    json.dumps(res, allow_nan=False)


def test_markdown_report_has_tables_command_and_hardware(tmp_path, folds):
    res = aggregate_folds(folds)
    path = tmp_path / "report.md"
    text = write_markdown_report(
        path,
        res,
        command=(
            "python -m sb_urbansound.training.crossval hparams/cnn.yaml --x=1"
        ),
        hardware="CPU: test",
        fold_seconds={k: 61.0 * k for k in range(1, 6)},
    )
    assert path.read_text() == text
    assert (
        "| Test fold | Valid fold(s) | Test clips | Accuracy | Time |" in text
    )
    for f in folds:
        assert (
            f"| {f['test_fold']} | {f['valid_folds'][0]} | {f['n_clips']} |"
            in text
        )
    mean, std = 100 * res["mean"], 100 * res["std"]
    assert f"{mean:.2f} ± {std:.2f} %" in text
    for label in LABELS:
        assert f"| {label} |" in text
    assert (
        "python -m sb_urbansound.training.crossval hparams/cnn.yaml --x=1"
        in text
    )
    assert "CPU: test" in text
    assert "LEAKY" not in text


def test_markdown_report_warns_when_leaky(tmp_path, folds):
    res = aggregate_folds(folds)
    text = write_markdown_report(
        tmp_path / "r.md", res, "cmd --leaky-random-split", "hw", leaky=True
    )
    assert "LEAKY RANDOM SPLIT" in text
    assert "NOT comparable" in text
    assert "slices of the same recording" in text
    # The warning comes before the numbers.
    assert text.index("LEAKY RANDOM SPLIT") < text.index("Per-fold results")


def check_png(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    return image


def test_confusion_matrix_png(tmp_path, folds):
    res = aggregate_folds(folds)
    path = plot_confusion_matrix(
        tmp_path / "cm.png", res["confusion_matrix"], res["labels"]
    )
    check_png(path)
    # A class without test clips must not break the normalisation.
    check_png(
        plot_confusion_matrix(tmp_path / "z.png", [[2, 1], [0, 0]], ["a", "b"])
    )
    with pytest.raises(ValueError):
        plot_confusion_matrix(tmp_path / "bad.png", [[1, 2]], ["a", "b"])
    assert not list(
        tmp_path.glob(".*.tmp")
    )  # atomic writes leave nothing behind


def test_learning_curves_png(tmp_path):
    histories = {
        k: [
            {
                "epoch": e,
                "lr": 1e-3,
                "train_loss": 2.0 / e + 0.1 * k,
                "train_accuracy": 0.2 * e,
                "valid_loss": 2.2 / e,
                "valid_accuracy": 0.15 * e if e != 2 else None,
            }
            for e in range(1, 5)
        ]
        for k in range(1, 4)
    }
    check_png(plot_learning_curves(tmp_path / "lc.png", histories))
    check_png(plot_learning_curves(tmp_path / "empty.png", {1: []}))


def test_hardware_description():
    text = hardware_description()
    assert "CPU:" in text and "cores" in text
    assert "torch" in text and "GPU:" in text


def test_confusion_matrix_keeps_classes_never_seen():
    cm = confusion_matrix(["b", "b", "a"], ["b", "a", "a"], ["a", "b", "c"])
    assert cm == [[1, 0, 0], [1, 1, 0], [0, 0, 0]]
    with pytest.raises(KeyError):
        confusion_matrix(["a"], ["z"], ["a", "b"])


def test_classification_results_feed_aggregate_folds():
    targets = ["siren", "dog_bark", "dog_bark", "siren", "siren"]
    predictions = ["siren", "dog_bark", "siren", "siren", "dog_bark"]
    res = classification_results(targets, predictions, LABELS)
    assert res["accuracy"] == pytest.approx(3 / 5)
    assert res["per_class_accuracy"] == {
        "car_horn": None,  # no clip of the class: not 0, not NaN
        "dog_bark": 0.5,
        "siren": pytest.approx(2 / 3),
    }
    assert res["confusion_matrix"] == [[0, 0, 0], [0, 1, 1], [0, 1, 2]]
    assert res["labels"] == LABELS and res["n_clips"] == 5
    json.dumps(res, allow_nan=False)
    # What the recipe writes is what the cross-validation report reads
    fold = dict(res, test_fold=1, valid_folds=[2])
    agg = aggregate_folds([fold])
    assert agg["mean"] == pytest.approx(3 / 5)
    assert agg["confusion_matrix"] == res["confusion_matrix"]
    empty = classification_results([], [], LABELS)
    assert empty["accuracy"] == 0.0 and empty["n_clips"] == 0


def test_append_history_replaces_a_repeated_epoch(tmp_path):
    path = tmp_path / "history.json"
    train = {"loss": 1.0, "accuracy": 0.5}
    for epoch in (1, 2, 3):
        append_history(path, epoch, 0.1, train, {"loss": 2.0, "accuracy": 0.1})
    # A resumed run repeats epoch 2: it replaces 2 and drops 3
    history = append_history(
        path, 2, 0.05, None, {"loss": 1.5, "accuracy": 0.4}
    )
    assert json.loads(path.read_text()) == history
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[1] == {
        "epoch": 2,
        "lr": 0.05,
        "train_loss": None,
        "train_accuracy": None,
        "valid_loss": 1.5,
        "valid_accuracy": 0.4,
        "train_seconds": None,
    }
    assert history[0]["train_seconds"] is None  # train stats without time
    assert not list(tmp_path.glob(".*.tmp"))
    # The learning-curve plot reads it as it is
    check_png(plot_learning_curves(tmp_path / "lc.png", {1: history}))
