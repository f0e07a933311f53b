#!/usr/bin/env python3
"""Start-up: time to the first training step against reading every file.

On a data folder of real clips (by default the shared folds 2, 3 and 10),
two commands run in fresh processes, back to back, ``--repeats`` times:

* ``plain read``: ``python -c`` that imports soundfile and reads every audio
  file of the folder whole (``soundfile.read``), from launch to exit;
* ``recipe``: the recipe's ``main()`` on ``hparams/cnn.yaml`` (clip bank and
  feature bank on, as shipped) in a new output folder, from launch to its
  first training step (the run stops there): imports, data preparation,
  clip bank, feature bank, model and loaders. It runs through
  ``bench/throughput.py``'s child, which also stamps the phases.

It prints each run, the load average next to it (the machine may be
shared), the phases of the fastest recipe run, and the ratio of the fastest
recipe run to the fastest plain read (the goal: at most 3).

Usage::

    python bench/startup.py
    python bench/startup.py \\
        --data_folder ../shared/data/UrbanSound8K-folds-2-3-10 \\
        --folds 2,3,10 --repeats 3
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import REPO, load_average, run_child  # noqa: E402

PLAIN_READ = """
import sys
from pathlib import Path
import soundfile
for path in sorted(Path(sys.argv[1]).glob("audio/*/*")):
    soundfile.read(path, dtype="float32")
"""

PHASES = [
    ("imports", "launch", "imported"),
    ("data preparation", "imported", "prepare_end"),
    ("hyperparameters", "prepare_end", "yaml_end"),
    ("clip bank", "bank_start", "bank_end"),
    ("feature bank", "use_bank_start", "use_bank_end"),
    ("loaders, optimizer, first batch", "use_bank_end", "first_step"),
]


def plain_read(data_folder):
    """Seconds for a fresh process to read every audio file, launch to exit."""
    start = time.time()
    subprocess.run([sys.executable, "-c", PLAIN_READ, data_folder], check=True)
    return time.time() - start


def recipe_start(args, workdir, rep):
    """Seconds from launching the recipe to its first step, and its stamps."""
    out = workdir / "out"
    shutil.rmtree(out, ignore_errors=True)  # every run builds its banks
    cfg = {
        "kind": "recipe",
        "name": f"recipe-{rep}",
        "data_folder": args.data_folder,
        "output_folder": str(out),
        "folds": args.folds.split(","),
        "device": args.device,
        "epochs": 1,
        "batch_size": 16,
        "seed": 1234,
        "data_source": "feature_bank",
        "stop_at_first_step": True,
    }
    result = run_child(cfg, workdir / f"recipe-{rep}.log")
    stamps = result["stamps"]
    return stamps["first_step"] - stamps["launch"], stamps


def main(argv=None):
    """Run both commands ``--repeats`` times; print the times and the ratio."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data_folder",
        default=str(REPO.parent / "shared/data/UrbanSound8K-folds-2-3-10"),
    )
    p.add_argument("--folds", default="2,3,10", help="train,valid,test")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    files = len(list(Path(args.data_folder).glob("audio/*/*")))
    print(f"{files} files in {args.data_folder}")
    workdir = Path(tempfile.mkdtemp(prefix="sb-urbansound-startup-"))
    reads, starts = [], []
    try:
        for rep in range(args.repeats):
            load = load_average()
            reads.append(plain_read(args.data_folder))
            print(f"  plain read: {reads[-1]:.1f} s (load {load:.1f})")
            load = load_average()
            starts.append(recipe_start(args, workdir, rep))
            print(
                f"  recipe to first step: {starts[-1][0]:.1f} s "
                f"(load {load:.1f})",
                flush=True,
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    best, stamps = min(starts, key=lambda s: s[0])
    print("phases of the fastest recipe run (s):")
    for name, a, b in PHASES:
        if a in stamps and b in stamps:
            print(f"  {name:32s} {stamps[b] - stamps[a]:6.1f}")
    print(f"plain read (fastest): {min(reads):.1f} s")
    print(f"recipe to first step (fastest): {best:.1f} s")
    print(f"first_step_over_plain_read: {best / min(reads):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
