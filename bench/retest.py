#!/usr/bin/env python3
"""Re-test a finished cross-validation with another checkpoint of each fold.

A run keeps two checkpoints: the one with the lowest validation error and the
last epoch's. ``crossval`` tests the one that ``test_checkpoint`` names; this
script tests the other one (``--which=last`` or ``best``) of every fold of a
finished cross-validation, on the same test clips, without training and
without changing the run: the results go to ``<fold>/test_results_<which>.json``
and the mean ± sample std over the folds is printed::

    python bench/retest.py results/ablation/real/before --which=last

It answers "what would the other choice of checkpoint have scored", on the
same trained models (``docs/accuracy.md``).
"""

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAIN_PY = (
    REPO / "recipes" / "UrbanSound8k" / "SoundClassification" / "train.py"
)
KEYS = {"best": {"min_key": "error"}, "last": {"max_key": "unixtime"}}


def retest_fold(fold, which="last", device="cpu"):
    """Tests one fold's ``which`` checkpoint; returns its test results."""
    from hyperpyyaml import load_hyperpyyaml
    from sb_urbansound.training.crossval import import_recipe

    from speechbrain.utils.train_logger import FileTrainLogger

    recipe = import_recipe(TRAIN_PY)
    fold = Path(fold)
    target = fold / f"test_results_{which}.json"
    with open(fold / "hyperparams.yaml", encoding="utf-8") as f:
        hparams = load_hyperpyyaml(f, {"test_results_file": str(target)})
    with tempfile.TemporaryDirectory() as tmp:
        # The run's own log stays as it is
        hparams["train_logger"] = FileTrainLogger(str(Path(tmp) / "log.txt"))
        brain = recipe.SoundClassifierBrain(
            modules=hparams["modules"],
            opt_class=hparams["opt_class"],
            hparams=hparams,
            run_opts={"device": device, "noprogressbar": True},
            checkpointer=hparams["checkpointer"],
        )
        # The run's own data source (its bank is there already)
        brain.data = recipe.data_source(hparams, brain)
        with brain.data:
            brain.evaluate(brain.data.test_loader(), **KEYS[which])
    return json.loads(target.read_text(encoding="utf-8"))


def main(argv=None):
    """Command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="crossval output folders")
    parser.add_argument("--which", choices=sorted(KEYS), default="last")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    for folder in args.folders:
        folds = sorted(
            Path(folder).glob("fold_*"), key=lambda p: int(p.name[5:])
        )
        if not folds or not all(
            (f / "test_results.json").exists() for f in folds
        ):
            sys.exit(f"{folder}: not a finished cross-validation")
        accs = [
            retest_fold(f, args.which, args.device)["accuracy"] for f in folds
        ]
        spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
        values = ", ".join(f"{100 * a:.1f}" for a in accs)
        print(
            f"{folder}: {args.which} checkpoint "
            f"{100 * statistics.mean(accs):.1f} ± {100 * spread:.1f} % "
            f"({values})",
            flush=True,
        )


if __name__ == "__main__":
    main()
