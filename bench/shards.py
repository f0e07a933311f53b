#!/usr/bin/env python3
"""Storage and I/O of the clip bank and of shards: the numbers docs/scale.md
scales up.

On an UrbanSound8K-shaped folder (``metadata/UrbanSound8K.csv`` and
``audio/fold<k>/``), at the given rate, channels and clip length, it measures:

* the clip bank: build time (decode, resample, rechannel, cut, int16) and
  bytes per clip;
* shards in int16 and in FLAC: write time (the same decoding, and the tar
  and checksum), bytes per clip, and the read rate of one process: a
  training epoch through :class:`sb_urbansound.data.shards.ShardStream` (read
  ahead by a thread, SHA-256 checked, shuffle buffer), clips/s and MB/s.

Usage::

    python bench/shards.py \\
        --data_folder ../shared/data/UrbanSound8K-folds-2-3-10
    python bench/shards.py --data_folder DIR --sample_rate 44100 --channels 2

It prints one line per measurement and, with ``--json PATH``, writes them.
"""

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def read_clips(data_folder, folds):
    """``{clip_id: (path, label)}`` of the listed folds."""
    data_folder = Path(data_folder)
    with open(data_folder / "metadata" / "UrbanSound8K.csv") as f:
        rows = list(csv.DictReader(f))
    return {
        Path(r["slice_file_name"]).stem: (
            str(
                data_folder
                / "audio"
                / f"fold{r['fold']}"
                / r["slice_file_name"]
            ),
            r["class"],
        )
        for r in rows
        if not folds or int(r["fold"]) in folds
    }


def measure(args):
    """Run the measurements; return them."""
    from sb_urbansound.data.audio import ClipConditioner
    from sb_urbansound.data.bank import ClipBank
    from sb_urbansound.data.shards import Shards, ShardStream
    from sb_urbansound.training.hardware import hardware_description

    clips = read_clips(args.data_folder, args.folds)
    cond = ClipConditioner(args.sample_rate, args.channels, args.duration_ms)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="sbu-shards-"))
    out = {
        "hardware": hardware_description(),
        "clips": len(clips),
        "sample_rate": args.sample_rate,
        "channels": args.channels,
        "duration_ms": args.duration_ms,
        "load_average": os.getloadavg()[0],
    }
    print(
        f"{len(clips)} clips; {out['hardware']}; load {out['load_average']:.2f}"
    )

    bank = ClipBank(work / "bank", cond)
    start = time.perf_counter()
    bank.build({k: p for k, (p, _) in clips.items()}, progress=False)
    seconds = time.perf_counter() - start
    out["bank"] = {
        "build_s": seconds,
        "clips_per_s": len(clips) / seconds,
        "bytes_per_clip": bank.nbytes / len(clips),
    }
    print(
        f"clip bank: built in {seconds:.1f} s ({len(clips) / seconds:.0f} "
        f"clips/s), {bank.nbytes / len(clips) / 1e3:.0f} KB per clip"
    )
    for fmt in ("int16", "flac"):
        shards = Shards(work / f"shards-{fmt}", cond, args.shard_size, fmt)
        start = time.perf_counter()
        index = shards.write({"train": clips}, progress=False)
        written = time.perf_counter() - start
        entries = index["splits"]["train"]
        size = sum(s["bytes"] for s in entries)
        stream = ShardStream(
            shards.folder,
            entries,
            train=True,
            buffer=args.buffer,
            num_samples=cond.num_samples,
        )
        start = time.perf_counter()
        n = sum(1 for _ in stream)
        read = time.perf_counter() - start
        out[f"shards_{fmt}"] = {
            "write_s": written,
            "write_clips_per_s": len(clips) / written,
            "bytes_per_clip": size / len(clips),
            "read_clips_per_s": n / read,
            "read_mb_per_s": size / read / 1e6,
            "shards": len(entries),
        }
        print(
            f"shards {fmt}: written in {written:.1f} s "
            f"({len(clips) / written:.0f} clips/s), "
            f"{size / len(clips) / 1e3:.0f} KB per clip; one process "
            f"reads {n / read:.0f} clips/s ({size / read / 1e6:.0f} MB/s)"
        )
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return out


def main(argv=None):
    """Parse the options, measure, print."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_folder", required=True)
    p.add_argument("--folds", type=int, nargs="*", default=None)
    p.add_argument("--sample_rate", type=int, default=22050)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--duration_ms", type=float, default=4000)
    p.add_argument("--shard_size", type=int, default=500)
    p.add_argument("--buffer", type=int, default=1000)
    p.add_argument("--workdir", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    out = measure(args)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
