#!/usr/bin/env python3
"""The ablation of docs/accuracy.md: one cross-validation per choice.

Each configuration is a recipe YAML plus overrides, run with
``python -m sb_urbansound.training.crossval`` into ``<out>/<name>``; a
finished one is skipped, so the script resumes. The table gives, for each
configuration, its parameters and multiply-accumulates per clip
(``bench/model_cost.py``), the median training time per epoch (from the
folds' ``history.json``), and the mean ± sample std of the fold accuracies::

    python bench/ablation.py fsdd --data_folder=../shared/data/fsdd/recordings
    python bench/ablation.py generated --out results/ablation
    python bench/ablation.py fsdd --only full,baseline     # some of them
    python bench/ablation.py fsdd --table                  # the table only
    python bench/ablation.py real                          # real audio

``real`` cross-validates over the shared real folds 2, 3 and 10 of
UrbanSound8K (``../shared/data/UrbanSound8K-folds-2-3-10``); its table also
gives the accuracy of each fold's last-epoch checkpoint, where the run tested
it (``--test_checkpoint=last``) or ``bench/retest.py`` re-tested it.

``generated`` first writes an UrbanSound8K-shaped data set of synthetic
clips in the data set's formats (10 classes, overlapping tones in noise,
folds 1-5) under ``<out>/generated_data``.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from model_cost import model_cost  # noqa: E402

HPARAMS = REPO / "hparams"

# name: (yaml, overrides, what it shows)
FSDD = {
    "baseline": (
        "fsdd.yaml",
        [
            "--cnn_pooling=avg",
            "--label_smoothing=0.0",
            "--tta_views=1",
            "--mixup_prob=0.0",
            "--data_source=bank",
        ],
        "the former defaults: average pooling, no label smoothing, no views",
    ),
    "avgmax": (
        "fsdd.yaml",
        [
            "--label_smoothing=0.0",
            "--tta_views=1",
            "--mixup_prob=0.0",
            "--data_source=bank",
        ],
        "+ average and maximum pooling",
    ),
    "avgmax+ls": (
        "fsdd.yaml",
        ["--tta_views=1", "--mixup_prob=0.0", "--data_source=bank"],
        "+ label smoothing 0.1",
    ),
    "full": (
        "fsdd.yaml",
        ["--mixup_prob=0.0", "--data_source=bank"],
        "+ 5 shifted views at validation and test",
    ),
    "full+mixup": (
        "fsdd.yaml",
        ["--mixup_prob=1.0", "--data_source=bank"],
        "+ mixup (alpha 0.4): fsdd.yaml's settings",
    ),
    "full+wide": (
        "fsdd.yaml",
        [
            "--mixup_prob=0.0",
            "--data_source=bank",
            "--cnn_channels=[16,32,64,128]",
            "--last_channels=128",
        ],
        "`full` with twice the channels (16/32/64/128)",
    ),
    "full+feature_bank": (
        "fsdd.yaml",
        ["--mixup_prob=0.0", "--data_source=feature_bank"],
        "`full` from the feature bank (features computed once)",
    ),
    "full+per_clip": (
        "fsdd.yaml",
        ["--mixup_prob=0.0", "--data_source=files"],
        "`full` from the per-clip pipeline (no bank)",
    ),
}

# The runs of docs/accuracy.md used the clip bank without the feature bank
GENERATED_COMMON = [
    "--download=False",
    "--data_source=bank",
    "--number_of_epochs=10",
    "--duration_ms=2000",
]
# cnn.yaml at the tutorial's input, as the tables were measured (cnn.yaml
# itself is at 22.05 kHz mono since)
TUTORIAL_INPUT = [
    "--sample_rate=44100",
    "--channels=2",
    "--n_fft=1024",
    "--hop_length=512",
]
GENERATED = {
    "cnn": (
        "cnn.yaml",
        TUTORIAL_INPUT,
        "the tutorial's recipe (44.1 kHz stereo)",
    ),
    "cnn_large": (
        "cnn_large.yaml",
        [],
        "22.05 kHz mono, 32-256 channels, avg+max, mixup, label smoothing",
    ),
    "cnn_large-mixup": (
        "cnn_large.yaml",
        ["--mixup_alpha=0.4", "--label_smoothing=0.0"],
        "`cnn_large` without label smoothing",
    ),
    "cnn_large-nomixup": (
        "cnn_large.yaml",
        ["--mixup_prob=0.0"],
        "`cnn_large` without mixup",
    ),
    "cnn_large-avgpool": (
        "cnn_large.yaml",
        ["--cnn_pooling=avg"],
        "`cnn_large` with the tutorial's average pooling",
    ),
    "cnn_large-narrow": (
        "cnn_large.yaml",
        ["--cnn_channels=[8,16,32,64]", "--last_channels=64"],
        "`cnn_large` with the tutorial's 8/16/32/64 channels",
    ),
    "cnn_large-30ep": (
        "cnn_large.yaml",
        ["--number_of_epochs=30"],
        "`cnn_large`, 30 epochs",
    ),
    "cnn_large-nomixup-30ep": (
        "cnn_large.yaml",
        ["--mixup_prob=0.0", "--number_of_epochs=30"],
        "`cnn_large` without mixup, 30 epochs",
    ),
    "cnn_large-44k": (
        "cnn_large.yaml",
        ["--sample_rate=44100", "--channels=2", "--hop_length=512"],
        "`cnn_large` on the tutorial's input (44.1 kHz stereo, hop 512)",
    ),
}


def merged(extra, overrides):
    """The common options, less those a configuration sets, then its own."""
    keys = {o.split("=", 1)[0] for o in overrides}
    return [e for e in extra if e.split("=", 1)[0] not in keys] + overrides


# Real UrbanSound8K audio: three-fold cross-validation over the shared folds
# 2, 3 and 10 (a converted copy: 22.05 kHz mono, zero-padded to 4 s)
REAL_FOLDS = "[2,3,10]"
REAL_COMMON = ["--download=False"]
# cnn_large.yaml as it was before the real-audio tuning (issue 15), as
# overrides of the shipped one
CNN_LARGE_BEFORE = [
    "--classifier_dropout=0.0",
    "--weight_decay=0.0",
    "--test_checkpoint=best",
]
SCREEN = ["--number_of_epochs=30"]


def before(*changes, epochs=SCREEN):
    """The former cnn_large.yaml with some changes (30 epochs by default)."""
    return merged(merged(CNN_LARGE_BEFORE, list(epochs)), list(changes))


REAL = {
    "cnn": (
        "cnn.yaml",
        TUTORIAL_INPUT,
        "`cnn.yaml`: the tutorial's network and settings (44.1 kHz stereo)",
    ),
    "before": (
        "cnn_large.yaml",
        before(epochs=[]),
        "`cnn_large.yaml` before this tuning, 60 epochs",
    ),
    "before-seed2": (
        "cnn_large.yaml",
        before("--seed=2", epochs=[]),
        "`before`, another seed (2)",
    ),
    "before-30ep": (
        "cnn_large.yaml",
        before(),
        "the same, 30 epochs (the screening rows below start from it)",
    ),
    "dropout": (
        "cnn_large.yaml",
        before("--classifier_dropout=0.3"),
        "+ dropout 0.3 before the classifier",
    ),
    "panns-pool": (
        "cnn_large.yaml",
        before("--cnn_pooling=panns"),
        "pooling: mean over frequency, then max + mean over time",
    ),
    "weight_decay": (
        "cnn_large.yaml",
        before("--weight_decay=0.05"),
        "+ weight decay 0.05 (AdamW)",
    ),
    "specaug": (
        "cnn_large.yaml",
        before("--max_mask_pct=0.2", "--n_freq_masks=2", "--n_time_masks=3"),
        "stronger SpecAugment: masks up to 20 %, 3 time masks",
    ),
    "batch16": (
        "cnn_large.yaml",
        before("--batch_size=16"),
        "batch 16 instead of 32 (twice the optimizer steps)",
    ),
    "mixup1": (
        "cnn_large.yaml",
        before("--mixup_alpha=1.0", "--test_checkpoint=last"),
        "mixup alpha 1.0 instead of 0.4",
    ),
    "hop512": (
        "cnn_large.yaml",
        before("--hop_length=512"),
        "hop 512 (23 ms, 173 frames) instead of 256: half the cost",
    ),
    "shipped": (
        "cnn_large.yaml",
        [],
        "**`cnn_large.yaml` as it ships**: `before` with the last "
        "epoch's checkpoint tested",
    ),
}


def make_generated(folder):
    """An UrbanSound8K-shaped data set whose classes overlap (not trivial)."""
    sys.path.insert(0, str(REPO / "tests"))
    import numpy as np
    from helpers import make_urbansound_tree

    if (folder / "metadata" / "UrbanSound8K.csv").exists():
        return
    import helpers

    def hard_signal(class_idx, sample_rate, seconds, channels, seed=0, n=10):
        rng = np.random.default_rng(seed)
        t = np.arange(max(int(seconds * sample_rate), 1)) / sample_rate
        f = helpers.class_frequency(class_idx, n) * rng.uniform(0.85, 1.15)
        sig = np.sin(2 * np.pi * f * t + rng.uniform(0, 6.3))
        sig *= rng.uniform(0.0, 1.0) < (0.5 + 0.5 * np.sin(2 * np.pi * t * 3))
        sig = 0.2 * sig + 0.2 * rng.standard_normal(t.shape)
        out = np.stack([sig] * channels, axis=1) * rng.uniform(0.2, 1.0)
        return np.clip(out, -1, 1).astype(np.float32)

    helpers.class_signal = hard_signal
    make_urbansound_tree(folder, 8, folds=range(1, 6), seconds=(1.0, 2.0))


def run(name, config, out, data_folder, extra, folds):
    """Run one configuration's cross-validation (skipped when finished)."""
    yaml, overrides, _ = config
    target = out / name
    if (target / "crossval_results.json").exists():
        return
    cmd = [
        sys.executable,
        "-m",
        "sb_urbansound.training.crossval",
        str(HPARAMS / yaml),
        f"--data_folder={data_folder}",
        f"--output_folder={target}",
        "--noprogressbar",
        *merged(extra, overrides),
    ]
    if folds:
        cmd.append(f"--folds={folds}")
    print("+", " ".join(cmd), flush=True)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    subprocess.run(cmd, check=True, cwd=REPO, env=env)


def summary(accuracies):
    """``mean ± std % (fold, ...)`` of fold accuracies."""
    spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
    folds = ", ".join(f"{100 * a:.1f}" for a in accuracies)
    return (
        f"**{100 * statistics.mean(accuracies):.1f} ± {100 * spread:.1f} %** "
        f"({folds})"
    )


def last_epoch(name, config, out):
    """The accuracy of the last epochs' checkpoints: tested by the run
    (``--test_checkpoint=last``) or re-tested (``bench/retest.py``)."""
    folds = sorted((out / name).glob("fold_*"), key=lambda p: int(p.name[5:]))
    settings = [f / "hyperparams.yaml" for f in folds]
    if folds and all(
        re.search(r"^test_checkpoint: last\s*$", f.read_text(), re.M)
        for f in settings
        if f.exists()
    ):
        return "(as tested)"
    files = [f / "test_results_last.json" for f in folds]
    if not folds or not all(f.exists() for f in files):
        return "(not re-tested)"
    return summary([json.loads(f.read_text())["accuracy"] for f in files])


def row(name, config, out, extra, with_last=False):
    """One table row: cost, epoch time, accuracy (and the last epoch's)."""
    yaml, overrides, what = config
    results = out / name / "crossval_results.json"
    if not results.exists():
        return f"| {name} | {what} | (not run) | | | |" + " |" * with_last
    res = json.loads(results.read_text())
    cost = model_cost(HPARAMS / yaml, merged(extra, overrides))
    seconds = []
    for fold in sorted((out / name).glob("fold_*")):
        history = json.loads((fold / "history.json").read_text())
        seconds += [
            h["train_seconds"] for h in history if h.get("train_seconds")
        ]
    epoch = f"{statistics.median(seconds):.1f} s" if seconds else "?"
    folds = ", ".join(f"{100 * f['accuracy']:.1f}" for f in res["folds"])
    line = (
        f"| {name} | {what} | {cost['parameters']:,} | "
        f"{cost['macs_per_clip'] / 1e6:.1f} M | {epoch} | "
        f"**{100 * res['mean']:.1f} ± {100 * res['std']:.1f} %** ({folds}) |"
    )
    if with_last:
        line += f" {last_epoch(name, config, out)} |"
    return line


def main(argv=None):
    """Command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("set", choices=["fsdd", "generated", "real"])
    parser.add_argument("--data_folder", default=None)
    parser.add_argument("--out", default="results/ablation")
    parser.add_argument("--only", default=None, help="comma-separated names")
    parser.add_argument("--table", action="store_true", help="no new runs")
    args = parser.parse_args(argv)
    out = Path(args.out) / args.set
    if args.set == "fsdd":
        configs, extra, folds = FSDD, [], None
        data = args.data_folder or str(
            REPO.parent / "shared/data/fsdd/recordings"
        )
    elif args.set == "real":
        configs, extra, folds = REAL, REAL_COMMON, REAL_FOLDS
        data = args.data_folder or str(
            REPO.parent / "shared/data/UrbanSound8K-folds-2-3-10"
        )
    else:
        configs, extra, folds = GENERATED, GENERATED_COMMON, "[1,2,3,4,5]"
        data = args.data_folder or str(Path(args.out) / "generated_data")
        if not args.table:
            make_generated(Path(data))
    names = args.only.split(",") if args.only else list(configs)
    if not args.table:
        for name in names:
            run(name, configs[name], out, data, extra, folds)
    with_last = args.set == "real"
    header = (
        "| config | change | parameters | MACs per clip | s per epoch "
        "| accuracy (folds) |"
    )
    rule = "|---|---|---:|---:|---:|---|"
    if with_last:
        header += " last epoch's checkpoint (folds) |"
        rule += "---|"
    print(header)
    print(rule)
    for name in names:
        print(row(name, configs[name], out, extra, with_last))


if __name__ == "__main__":
    main()
