"""Test and cross-validation results: aggregation, Markdown report, plots.

Accuracies are fractions, printed as percentages. Files are written
atomically; plots use matplotlib's Agg canvas (no ``pyplot``, no display).

Authors
-------
 * sb-urbansound contributors
"""

import io
import json
import logging
import math
from pathlib import Path

import numpy as np
from sb_urbansound.atomic import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)

logger = logging.getLogger(__name__)

LEAKY_WARNING = """\
## ⚠️ LEAKY RANDOM SPLIT: these numbers are NOT comparable to published results

This run used `--leaky-random-split`: clips were shuffled across folds at random
(keeping the fold sizes) instead of using the data's own \
folds. It exists only to
show how much such a split inflates accuracy. **Do not report these numbers.**

Why it is wrong: UrbanSound8K's 8,732 clips are slices cut from 1,297 Freesound
recordings (its `fsID`), and the official folds keep all slices of a recording
together. Slices of one recording share the same source, microphone and
background, so a random clip split puts slices of the same recording on both
sides: the model is tested on recordings it has already heard in training, and
the score measures memorisation of recordings rather than recognition of sound
classes. The data set's authors (Salamon, Jacoby and Bello, 2014) therefore ask
that results use the 10 predefined folds, never a reshuffle; the tutorial this
recipe comes from reports its accuracy on exactly such a random split. The same
holds for any data grouped by recording or speaker. Compare with a run without
`--leaky-random-split` to see the difference.
"""


def _clean_float(value):
    """``value`` as a float; None for None or NaN."""
    nan = value is None or math.isnan(value := float(value))
    return None if nan else value


def aggregate_folds(fold_results):
    """Combine the test results of the folds of a cross-validation.

    Arguments
    ---------
    fold_results : list of dict
        One per fold: ``test_fold``, ``valid_folds`` and the recipe's
        ``test_results.json`` keys.

    Returns
    -------
    dict
        ``crossval_results.json``: ``folds``, ``mean``, ``std`` (sample std;
        None for one fold), ``confusion_matrix`` (the folds' sum, in the
        first fold's label order) and ``labels``.

    Raises
    ------
    ValueError
        For no folds, or a fold whose labels or matrix do not match.

    Example
    -------
    >>> cms = {1: [[1, 0], [1, 0]], 2: [[1, 0], [0, 1]]}
    >>> res = aggregate_folds(
    ...     dict(test_fold=k, valid_folds=[3 - k], accuracy=k / 2, n_clips=2)
    ...     | dict(confusion_matrix=cms[k], labels=["a", "b"])
    ...     for k in (1, 2)
    ... )
    >>> res["mean"], round(res["std"], 4), res["confusion_matrix"]
    (0.75, 0.3536, [[2, 0], [1, 1]])
    """
    fold_results = list(fold_results)
    if not fold_results:
        raise ValueError("aggregate_folds needs at least one fold result")

    labels = [str(label) for label in fold_results[0]["labels"]]
    if len(set(labels)) != len(labels):
        raise ValueError(
            f"fold {fold_results[0]['test_fold']}: duplicate labels"
        )
    n = len(labels)
    total = np.zeros((n, n), dtype=np.int64)
    folds = []
    for res in fold_results:
        fold = res["test_fold"]
        fold_labels = [str(label) for label in res["labels"]]
        if sorted(fold_labels) != sorted(labels):
            missing = sorted(set(labels) - set(fold_labels))
            extra = sorted(set(fold_labels) - set(labels))
            raise ValueError(
                f"fold {fold} has different labels from fold "
                f"{fold_results[0]['test_fold']}: missing {missing}, "
                f"extra {extra}. "
                "All folds must be trained on the same classes."
            )
        cm = np.asarray(res["confusion_matrix"], dtype=np.int64)
        if cm.shape != (n, n):
            raise ValueError(
                f"fold {fold}: confusion matrix of shape {cm.shape} "
                f"for {n} labels"
            )
        order = [fold_labels.index(label) for label in labels]
        cm = cm[np.ix_(order, order)]
        n_clips = int(res["n_clips"])
        if int(cm.sum()) != n_clips:
            raise ValueError(
                f"fold {fold}: confusion matrix counts {int(cm.sum())} clips "
                f"but n_clips is {n_clips}"
            )
        total += cm
        per_class = res.get("per_class_accuracy") or {}
        folds.append(
            {
                "test_fold": int(fold),
                "valid_folds": [int(v) for v in res["valid_folds"]],
                "accuracy": float(res["accuracy"]),
                "per_class_accuracy": {
                    label: _clean_float(per_class.get(label))
                    for label in labels
                },
                "n_clips": n_clips,
            }
        )

    mean, std = _mean_std([f["accuracy"] for f in folds])
    return {
        "folds": folds,
        "mean": mean,
        "std": std,
        "confusion_matrix": total.tolist(),
        "labels": labels,
    }


def format_pct(value, digits=2):
    """A fraction as a percentage, or ``n/a`` for None.

    Arguments
    ---------
    value : float or None
        The fraction.
    digits : int
        Digits after the point.

    Returns
    -------
    str

    Example
    -------
    >>> format_pct(0.5), format_pct(None), format_pct(0.25, 1)
    ('50.00 %', 'n/a', '25.0 %')
    """
    return "n/a" if value is None else f"{100.0 * float(value):.{digits}f} %"


def _mean_std(values):
    """Mean and sample std (None when undefined) of the non-None values."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    std = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return float(np.mean(values)), std


def _pm(mean, std):
    """Format ``mean ± std`` as percentages."""
    if mean is None:
        return "n/a"
    if std is None:
        return f"{format_pct(mean)} (one value, no std)"
    return f"{100.0 * mean:.2f} ± {100.0 * std:.2f} %"


def format_duration(seconds):
    """Format a duration as ``1h 02m 03s``, ``2m 03s`` or ``4.2s``.

    Arguments
    ---------
    seconds : float
        The duration.

    Returns
    -------
    str

    Example
    -------
    >>> format_duration(3723), format_duration(123), format_duration(4.21)
    ('1h 02m 03s', '2m 03s', '4.2s')
    """
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    h, rem = divmod(int(round(seconds)), 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def write_markdown_report(
    path,
    results,
    command,
    hardware,
    leaky=False,
    fold_seconds=None,
    title=None,
    fold_commands=None,
):
    """Write the human-readable cross-validation report (Markdown).

    Arguments
    ---------
    path : str or Path
        Destination ``.md`` file (written atomically).
    results : dict
        The output of :func:`aggregate_folds`.
    command : str
        The command line that produced the results, shown verbatim.
    hardware : str
        A description of the machine.
    leaky : bool
        Whether the folds were a random clip split (adds a warning).
    fold_seconds : dict, optional
        ``{test_fold: seconds}``, a column of the per-fold table.
    title : str, optional
        The report's heading.
    fold_commands : dict, optional
        ``{test_fold: recipe command}`` each fold was last run with.

    Returns
    -------
    str
        The Markdown text that was written.

    Example
    -------
    >>> cm = [[1, 0], [0, 1]]
    >>> one = dict(n_clips=2, labels=["a", "b"], confusion_matrix=cm)
    >>> res = aggregate_folds(
    ...     dict(one, test_fold=k, valid_folds=[1], accuracy=a)
    ...     for k, a in [(1, 0.5), (2, 0.75), (3, 1.0)]
    ... )
    >>> path = getfixture("tmp_path") / "r.md"
    >>> "75.00 ± 25.00 %" in write_markdown_report(path, res, "python", "CPU")
    True
    """
    folds, labels = results["folds"], results["labels"]
    mean, std = results["mean"], results["std"]
    secs = {int(k): v for k, v in (fold_seconds or {}).items()}
    n_total = sum(f["n_clips"] for f in folds)
    leak = " (LEAKY RANDOM SPLIT)" if leaky else ""
    acc = _pm(mean, std)
    if std is None:
        acc = f"{format_pct(mean)} (std undefined for a single fold)"
    lines = [f"# {title or 'Cross-validation report' + leak}", ""]
    lines += [LEAKY_WARNING] if leaky else []
    lines += [
        f"**Accuracy: {acc}** (mean ± sample standard deviation over "
        f"{len(folds)} folds, {n_total} test clips in all"
        + (", leaky random split" if leaky else "")
        + ")\n\n## Per-fold results\n",
        "| Test fold | Valid fold(s) | Test clips | Accuracy |"
        + (" Time |" if secs else ""),
        "|---:|---:|---:|---:|" + ("---:|" if secs else ""),
    ]
    for f in folds:
        sec = secs.get(int(f["test_fold"]))
        time = " n/a |" if sec is None else f" {format_duration(sec)} |"
        lines.append(
            f"| {f['test_fold']} | {', '.join(map(str, f['valid_folds']))} "
            f"| {f['n_clips']} | {format_pct(f['accuracy'])} |"
            + (time if secs else "")
        )
    lines += [
        f"| **mean ± std** | | {n_total} | **{_pm(mean, std)}** |"
        + (" |" if secs else "")
        + "\n\n## Per-class accuracy\n\n"
        "Mean ± sample std of each class's accuracy over the folds (folds "
        "without clips of the class are left out), and the pooled accuracy "
        "from the summed confusion matrix (correct / all test clips of the "
        "class).\n",
        "| Class | Mean ± std over folds | Pooled | Clips | "
        + " | ".join(f"Fold {f['test_fold']}" for f in folds)
        + " |",
        "|---|---:|---:|---:|" + "---:|" * len(folds),
    ]
    cm = np.asarray(results["confusion_matrix"], dtype=np.int64)
    for i, label in enumerate(labels):
        values = [f["per_class_accuracy"].get(label) for f in folds]
        n_class = int(cm[i].sum()) if cm.size else 0
        pooled = cm[i, i] / n_class if n_class else None
        lines.append(
            f"| {label} | {_pm(*_mean_std(values))} | {format_pct(pooled)} | "
            f"{n_class} | "
            + " | ".join(format_pct(v, 1) for v in values)
            + " |"
        )
    lines.append(
        "\n## Plots\n\n"
        "* `confusion_matrix.png`: the confusion matrix summed over all "
        "folds, normalised per true class.\n"
        "* `learning_curves.png`: training and validation loss and accuracy "
        "per epoch, one colour per fold.\n\n## Command\n\n"
        f"```\n{command}\n```\n"
    )
    if fold_commands:
        lines.append(
            "Each fold as it was run (crossval refuses to mix folds of other "
            "settings):\n\n```"
        )
        for test_fold in sorted(fold_commands, key=int):
            lines += [f"# fold {test_fold}", fold_commands[test_fold]]
        lines += ["```", ""]
    text = "\n".join(lines + ["## Hardware", "", hardware, ""])
    atomic_write_text(path, text)
    return text


def _new_figure(width, height):
    """A matplotlib Figure bound to the Agg canvas (no pyplot, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path):
    """Render ``fig`` to PNG in memory and write it atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


def plot_confusion_matrix(path, cm, labels, title=None):
    """Plot a confusion matrix normalised per true class, as a PNG.

    Arguments
    ---------
    path : str or Path
        Destination ``.png`` file (written atomically).
    cm : array-like of int
        Counts, rows true class, columns predicted class, in ``labels`` order.
    labels : list of str
        Class names.
    title : str, optional
        Figure title.

    Returns
    -------
    Path
        The path written.

    Example
    -------
    >>> tmp = getfixture("tmp_path")
    >>> p = plot_confusion_matrix(tmp / "cm.png", [[3, 1], [0, 4]], ["a", "b"])
    >>> p.read_bytes()[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
    """
    cm = np.asarray(cm, dtype=np.float64)
    n = len(labels)
    if cm.shape != (n, n):
        raise ValueError(f"confusion matrix of shape {cm.shape} for {n} labels")
    totals = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)

    size = max(4.0, 0.65 * n + 2.5)
    fig = _new_figure(size + 1.0, size)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(
        im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class"
    )
    ax.set_xticks(
        range(n), labels, rotation=45, ha="right", rotation_mode="anchor"
    )
    ax.set_yticks(
        range(n),
        [f"{label} ({int(t)})" for label, t in zip(labels, totals.ravel())],
    )
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class (number of clips)")
    ax.set_title(
        title
        or f"Confusion matrix, summed over folds ({int(cm.sum())} clips), "
        "normalised per true class",
        fontsize=10,
    )
    fontsize = 9 if n <= 10 else max(5, 9 - (n - 10) // 3)
    style = dict(ha="center", va="center", fontsize=fontsize)
    for (i, j), value in np.ndenumerate(norm):
        color = "white" if value > 0.5 else "black"
        ax.text(j, i, f"{value:.2f}", color=color, **style)
    return _save_png(fig, path)


def plot_learning_curves(path, histories, title=None):
    """Plot loss and accuracy per epoch of each fold, as a PNG (one colour
    per fold; train solid, valid dashed).

    Arguments
    ---------
    path : str or Path
        Destination ``.png`` file (written atomically).
    histories : dict
        ``{fold: rows of the recipe's history.json}``.
    title : str, optional
        Figure title.

    Returns
    -------
    Path
        The path written.

    Example
    -------
    >>> hist = {1: [dict(epoch=1, train_loss=2.0, valid_accuracy=0.25)]}
    >>> path = getfixture("tmp_path") / "lc.png"
    >>> plot_learning_curves(path, hist).stat().st_size > 0
    True
    """
    from matplotlib.lines import Line2D

    fig = _new_figure(12, 4.8)
    ax_loss, ax_acc = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    colors = "blue orange green red purple brown pink gray olive cyan".split()
    splits = (("train", "-"), ("valid", "--"))
    fold_handles, anything = [], False
    for idx, (fold, history) in enumerate(histories.items()):
        color = "tab:" + colors[idx % len(colors)]
        history = list(history or [])
        for key, ax, scale in (("loss", ax_loss, 1), ("accuracy", ax_acc, 100)):
            for split, style in splits:
                points = [
                    (row.get("epoch", i + 1), scale * float(v))
                    for i, row in enumerate(history)
                    if (v := row.get(f"{split}_{key}")) is not None
                    and not math.isnan(float(v))
                ]
                if not points:
                    continue
                anything = True
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, style, color=color, marker="o", markersize=3)
        fold_handles.append(Line2D([], [], color=color, label=f"fold {fold}"))

    for ax, name in ((ax_loss, "Loss"), (ax_acc, "Accuracy (%)")):
        ax.set_xlabel("Epoch")
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax_loss.set_title("Loss per epoch")
    ax_acc.set_title("Accuracy per epoch")
    if not anything:
        where = dict(ha="center", transform=ax_loss.transAxes)
        ax_loss.text(0.5, 0.5, "no epochs recorded", **where)
    ax_acc.legend(
        handles=fold_handles
        + [
            Line2D([], [], color="black", linestyle=s, label=n)
            for n, s in splits
        ],
        loc="center left",
        bbox_to_anchor=(1.02, 0.5),
        fontsize=8,
        title="test fold",
    )
    fig.suptitle(
        title or "Learning curves per test fold (train solid, valid dashed)"
    )
    return _save_png(fig, path)


def append_history(path, epoch, lr, train_stats, valid_stats):
    """Record one epoch in ``history.json``, dropping that epoch and later
    ones if recorded before (a resumed run).

    Arguments
    ---------
    path : str or Path
        The history file (a JSON list, one object per epoch).
    epoch : int
        The epoch.
    lr : float
        The learning rate at the end of the epoch.
    train_stats : dict
        ``loss``, ``accuracy`` and ``seconds`` of the training stage.
    valid_stats : dict
        ``loss`` and ``accuracy`` of the validation stage.

    Returns
    -------
    list of dict

    Example
    -------
    >>> tmp, s = getfixture("tmp_path"), {"loss": 1.0, "accuracy": 0.5}
    >>> _ = append_history(tmp / "h.json", 1, 0.1, s, s)
    >>> [h["epoch"] for h in append_history(tmp / "h.json", 2, 0.1, s, s)]
    [1, 2]
    """
    history = []
    if Path(path).exists():
        try:
            loaded = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            loaded = e
        if not isinstance(loaded, list):
            logger.warning(
                "%s is not a learning curve of this run (%s): it is written "
                "again from epoch %d",
                path,
                loaded if isinstance(loaded, Exception) else "not a list",
                epoch,
            )
            loaded = []
        history = [
            h
            for h in loaded
            if isinstance(h, dict)
            and isinstance(h.get("epoch"), int)
            and h["epoch"] < epoch
        ]
    train_stats = train_stats or {}
    history.append(
        {
            "epoch": epoch,
            "lr": lr,
            "train_loss": train_stats.get("loss"),
            "train_accuracy": train_stats.get("accuracy"),
            "valid_loss": valid_stats["loss"],
            "valid_accuracy": valid_stats["accuracy"],
            "train_seconds": train_stats.get("seconds"),
        }
    )
    atomic_write_json(path, history)
    return history


def confusion_matrix(targets, predictions, labels):
    """Count (true, predicted) pairs into a matrix in label order.

    Ours: ``ClassificationStats``'s matrix lacks the classes it has not seen.

    Arguments
    ---------
    targets, predictions : list of str
        True and predicted labels.
    labels : list of str
        All labels, in index order.

    Returns
    -------
    list of list of int
        ``len(labels) x len(labels)`` counts.

    Example
    -------
    >>> confusion_matrix(["a", "b", "b"], ["a", "a", "b"], ["a", "b", "c"])
    [[1, 0, 0], [1, 1, 0], [0, 0, 0]]
    """
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for target, prediction in zip(targets, predictions, strict=True):
        matrix[index[target]][index[prediction]] += 1
    return matrix


def classification_results(targets, predictions, labels):
    """Summarise a test run: accuracy, per-class accuracy, confusion matrix.

    Arguments
    ---------
    targets, predictions : list of str
        True and predicted labels.
    labels : list of str
        All labels, in index order.

    Returns
    -------
    dict
        ``accuracy``, ``per_class_accuracy`` (None for a class without clips),
        ``confusion_matrix``, ``labels``, ``n_clips``.

    Example
    -------
    >>> r = classification_results(["a", "b", "b"], ["a", "a", "b"], ["a", "b"])
    >>> r["accuracy"], r["per_class_accuracy"]
    (0.6666666666666666, {'a': 1.0, 'b': 0.5})
    """
    matrix = confusion_matrix(targets, predictions, labels)
    n_clips = len(targets)
    correct = sum(matrix[i][i] for i in range(len(labels)))
    return {
        "accuracy": correct / n_clips if n_clips else 0.0,
        "per_class_accuracy": {
            label: row[i] / sum(row) if sum(row) else None
            for i, (label, row) in enumerate(zip(labels, matrix))
        },
        "confusion_matrix": matrix,
        "labels": list(labels),
        "n_clips": n_clips,
    }


def write_test_results(path, stats, label_encoder):
    """Write a test's results (:func:`classification_results`) as JSON.

    Arguments
    ---------
    path : str
        The results file (the YAML's ``test_results_file``).
    stats : speechbrain.utils.metric_stats.ClassificationStats
        The test's predictions.
    label_encoder : speechbrain.dataio.encoder.CategoricalEncoder
        The classes, in index order.

    Returns
    -------
    dict

    Example
    -------
    >>> from speechbrain.dataio.encoder import CategoricalEncoder
    >>> from speechbrain.utils.metric_stats import ClassificationStats
    >>> stats, encoder = ClassificationStats(), CategoricalEncoder()
    >>> encoder.update_from_iterable(["a", "b"])
    >>> stats.append(["x", "y"], ["a", "a"], ["a", "b"])
    >>> path = getfixture("tmp_path") / "r.json"
    >>> write_test_results(path, stats, encoder)["accuracy"]
    0.5
    """
    labels = [label_encoder.ind2lab[i] for i in range(len(label_encoder))]
    results = classification_results(stats.targets, stats.predictions, labels)
    atomic_write_json(path, results)
    logger.info(
        "Test accuracy %.4f on %d clips; results in %s",
        results["accuracy"],
        results["n_clips"],
        path,
    )
    return results
