#!/usr/bin/env python3
"""Inference benchmark: eager PyTorch, TorchScript and ONNX Runtime on the CPU.

For each model YAML (``cnn.yaml``, ``cnn_large.yaml`` by default, at their
full sizes: both 22.05 kHz mono, 4 s windows, 10 classes) a
model folder is built from the YAML's initial weights (speed does not depend
on training; the normaliser gets statistics, as training gives it), exported
with ``sb_urbansound.serving.export`` (which checks both exports against
eager PyTorch), and the three backends score the same conditioned windows:

* ``eager``: what ``classify`` runs today,
  :func:`sb_urbansound.serving.inference.window_probs` on the model loaded with
  SpeechBrain's ``EncoderClassifier`` (features, normaliser, network,
  softmax);
* ``torchscript``: ``model.ts`` (:class:`sb_urbansound.serving.export.
  TorchScriptScorer`);
* ``onnx``: ``model.onnx`` in onnxruntime
  (:class:`sb_urbansound.serving.runtime.OnnxModel`).

Each backend gets the same threads (``--threads``, default 1: one core, the
fair setting on a shared machine). A call scores ``batch`` windows (the
windows of one clip); it is timed after warm-up calls, for at least
``--min-seconds`` and ``--min-calls``. Reported: clips (windows) per second
over the timed calls, and the latency of one call, median (p50) and 95th
percentile (p95), in milliseconds. With ``--repeats N`` every configuration
runs N times, interleaved, and the fastest run is kept. The last lines give,
per model, ``onnx_vs_eager_batch1`` (clips per second of ONNX Runtime over
eager PyTorch at batch 1; the goal is at least 2.0).

``--profile`` adds where the time of one window goes: eager PyTorch stage by
stage (features, normaliser, embedding, classifier), and ONNX Runtime operator
by operator (its own profiler), with the features alone in each backend.

Usage::

    python bench/inference.py                     # both models, batch 1 and 32
    python bench/inference.py --profile --repeats 2 --json bench-inference.json
    python bench/inference.py --quick             # smoke run (the tests run it)
"""

import argparse
import collections
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
HPARAMS = REPO / "recipes" / "UrbanSound8k" / "SoundClassification" / "hparams"
BACKENDS = ("eager", "torchscript", "onnx")
LABELS = [f"class_{i}" for i in range(10)]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="cnn,cnn_large")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-seconds", type=float, default=3.0)
    parser.add_argument("--min-calls", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny smoke run: cnn at 16 kHz 1 s, batches 1 and 4",
    )
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.batches = [int(b) for b in args.batches.split(",")]
    args.backends = [b.strip() for b in args.backends.split(",")]
    unknown = set(args.backends) - set(BACKENDS)
    if unknown:
        parser.error(f"unknown backends: {', '.join(sorted(unknown))}")
    if args.quick:
        args.models, args.batches = ["cnn"], [1, 4]
        args.min_seconds, args.min_calls = 0.1, 3
    return args


def build(name, workdir, quick):
    """An untrained model folder for ``name``, exported to both formats."""
    from sb_urbansound.serving.export import (
        export_model,
        untrained_model_folder,
    )

    overrides = {"sample_rate": 16000, "duration_ms": 1000} if quick else {}
    folder = untrained_model_folder(
        HPARAMS / f"{name}.yaml", workdir / name, LABELS, overrides
    )
    lines = []
    results = export_model(folder, log=lines.append)
    for line in lines:
        print(f"  {name}: {line}")
    bad = [fmt for fmt, r in results.items() if "error" in r]
    if bad:
        raise SystemExit(f"{name}: export failed for {', '.join(bad)}")
    return folder


def scorers(folder, backends, threads, batch):
    """``{backend: callable(windows np) -> probs}`` for one model."""
    from sb_urbansound.serving.export import TorchScriptScorer
    from sb_urbansound.serving.inference import TorchScorer, load_model
    from sb_urbansound.serving.runtime import OnnxModel

    out = {}
    if "eager" in backends:
        out["eager"] = TorchScorer(load_model(folder), batch).window_probs
    if "torchscript" in backends:
        out["torchscript"] = TorchScriptScorer(
            folder / "model.ts", chunk=batch
        ).window_probs
    if "onnx" in backends:
        out["onnx"] = OnnxModel(
            folder, threads=threads, chunk=batch
        ).window_probs
    return out


def time_calls(fn, windows, min_seconds, min_calls, warmup=3):
    """Latencies (seconds) of repeated calls, after warm-up calls."""
    for _ in range(warmup):
        fn(windows)
    latencies = []
    start = time.perf_counter()
    while (
        len(latencies) < min_calls or time.perf_counter() - start < min_seconds
    ):
        t = time.perf_counter()
        fn(windows)
        latencies.append(time.perf_counter() - t)
    return latencies


def summarise(latencies, batch):
    lat = np.asarray(latencies)
    return {
        "clips_per_s": batch * len(lat) / lat.sum(),
        "p50_ms": 1000 * float(np.percentile(lat, 50)),
        "p95_ms": 1000 * float(np.percentile(lat, 95)),
        "calls": len(lat),
    }


def profile(folder, threads, windows):
    """Where one window's time goes, per stage (eager) and per op (ONNX)."""
    import onnxruntime
    import torch
    from sb_urbansound.serving.export import MelSpectrogramGraph
    from sb_urbansound.serving.inference import load_model

    model = load_model(folder)
    mods = model.mods
    x = torch.from_numpy(windows[:1])
    x = x[..., 0] if x.shape[-1] == 1 else x
    stages = collections.OrderedDict()
    with torch.no_grad():
        feats = mods.compute_features(x)
        norm = mods.mean_var_norm(feats, torch.ones(1))
        emb = mods.embedding_model(norm, torch.ones(1))
        steps = {
            "features (eager: torch.stft, mel, dB)": lambda: (
                mods.compute_features(x)
            ),
            "normaliser": lambda: mods.mean_var_norm(feats, torch.ones(1)),
            "embedding model": lambda: mods.embedding_model(
                norm, torch.ones(1)
            ),
            "classifier": lambda: mods.classifier(emb),
        }
        for name, step in steps.items():
            lat = time_calls(lambda _: step(), None, 1.0, 20)
            stages[name] = 1000 * float(np.median(lat))
    print("\nEager PyTorch, one window, median ms per stage:")
    for name, ms in stages.items():
        print(f"  {ms:8.3f}  {name}")

    # ONNX Runtime, operator by operator
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = str(folder / "ort_profile")
    session = onnxruntime.InferenceSession(
        str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    feeds = {"waveforms": np.ascontiguousarray(windows[:1])}
    calls = 30
    for _ in range(calls):
        session.run(None, feeds)
    trace = json.loads(Path(session.end_profiling()).read_text())
    per_op = collections.Counter()
    for event in trace:
        if event.get("cat") == "Node" and event["name"].endswith(
            "_kernel_time"
        ):
            per_op[event["args"]["op_name"]] += event["dur"]
    total = sum(per_op.values()) / calls / 1000
    print(f"\nONNX Runtime, one window: {total:.3f} ms in operators, by type:")
    for op, us in per_op.most_common(12):
        print(f"  {us / calls / 1000:8.3f}  {op}")

    # The features alone, in ONNX Runtime (the graph's matmul DFT)
    graph = MelSpectrogramGraph(
        mods.compute_features, windows.shape[1], "matmul"
    )
    path = folder / "features.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph, (x,), str(path), dynamo=True, verbose=False, optimize=True
        )
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    features = onnxruntime.InferenceSession(
        str(path), options, providers=["CPUExecutionProvider"]
    )
    name = features.get_inputs()[0].name
    xn = x.numpy()
    lat = time_calls(lambda _: features.run(None, {name: xn}), None, 1.0, 20)
    stages["features (ONNX Runtime: matmul DFT, mel, dB)"] = 1000 * float(
        np.median(lat)
    )
    print(
        "\nFeatures alone, one window, median ms: eager "
        f"{stages['features (eager: torch.stft, mel, dB)']:.3f}, ONNX Runtime "
        f"{stages['features (ONNX Runtime: matmul DFT, mel, dB)']:.3f}"
    )
    return {
        "eager_stages_ms": stages,
        "onnx_ops_ms": {
            op: us / calls / 1000 for op, us in per_op.most_common()
        },
    }


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    import torch

    torch.set_num_threads(args.threads)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-inference-"))
    workdir.mkdir(parents=True, exist_ok=True)
    from sb_urbansound.training.hardware import hardware_description

    print(f"# {hardware_description()}")
    print(
        f"# onnxruntime {__import__('onnxruntime').__version__}, threads "
        f"{args.threads}, load average {os.getloadavg()[0]:.2f}"
    )
    results = []
    profiles = {}
    for name in args.models:
        folder = build(name, workdir, args.quick)
        torch.set_num_threads(args.threads)  # the YAML sets its own
        from sb_urbansound.serving.runtime import OnnxModel

        spec = OnnxModel(folder)
        rng = np.random.default_rng(0)
        best = {}
        for _ in range(args.repeats):
            for batch in args.batches:
                windows = (
                    0.1
                    * rng.standard_normal(
                        (batch, spec.num_samples, spec.channels)
                    )
                ).astype(np.float32)
                for backend, fn in scorers(
                    folder, args.backends, args.threads, batch
                ).items():
                    lat = time_calls(
                        fn, windows, args.min_seconds, args.min_calls
                    )
                    row = summarise(lat, batch)
                    key = (backend, batch)
                    if (
                        key not in best
                        or row["clips_per_s"] > best[key]["clips_per_s"]
                    ):
                        best[key] = row
        for (backend, batch), row in sorted(
            best.items(), key=lambda kv: (kv[0][1], BACKENDS.index(kv[0][0]))
        ):
            results.append(
                {"model": name, "backend": backend, "batch": batch, **row}
            )
        if args.profile:
            windows = (
                0.1 * rng.standard_normal((1, spec.num_samples, spec.channels))
            ).astype(np.float32)
            print(f"\n## {name}: profile")
            profiles[name] = profile(folder, args.threads, windows)

    print(f"\n# load average after: {os.getloadavg()[0]:.2f}\n")
    print("| model | backend | batch | clips/s | p50 ms | p95 ms |")
    print("|---|---|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['model']} | {r['backend']} | {r['batch']} | "
            f"{r['clips_per_s']:.1f} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} |"
        )
    ratios = {}
    for name in args.models:
        rows = {
            r["backend"]: r
            for r in results
            if r["model"] == name and r["batch"] == 1
        }
        if "eager" in rows and "onnx" in rows:
            ratios[name] = (
                rows["onnx"]["clips_per_s"] / rows["eager"]["clips_per_s"]
            )
    print()
    for name, ratio in ratios.items():
        print(f"onnx_vs_eager_batch1 {name}: {ratio:.2f}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "results": results,
                    "onnx_vs_eager_batch1": ratios,
                    "profiles": profiles,
                    "threads": args.threads,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
