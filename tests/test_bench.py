"""Smoke test of the throughput benchmark (tiny sizes; no timing assertions)."""

import json
import math
import os
import re
import subprocess
import sys

import pytest
from helpers import REPO

CONFIGS = [
    "tutorial",
    "tutorial-1thread",
    "recipe-per-clip",
    "recipe-bank",
    "recipe-bank-large",
    "recipe-feature-bank",
    "recipe-shards",
    "ceiling",
    "ceiling-large",
]
LAST_LINES = [
    "speedup_vs_tutorial",
    "fraction_of_ceiling",
    "fraction_of_ceiling_large_batch",
    "us8k_10fold_30epochs_estimate_minutes",
    "shards_vs_bank",
    "end_to_end_speedup_vs_tutorial",
]


def positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.slow  # nine trainings
def test_benchmark_quick_runs_and_reports(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    json_path = tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "throughput.py"),
            "--quick",
            f"--workdir={tmp_path}",
            f"--json={json_path}",
        ],
        cwd=tmp_path,  # runs from anywhere, not only the repository root
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    lines = out.strip().splitlines()

    # The last lines, in order, parsable, with finite positive numbers
    printed = {}
    last = [line for line in lines[-8:] if not line.startswith("end to end,")]
    assert re.search(r"end to end, 1 epochs \+ test: tutorial", out)
    for key, line in zip(LAST_LINES, last[-len(LAST_LINES) :], strict=True):
        match = re.fullmatch(rf"{key}: (\d+\.\d+)", line)
        assert match, line
        printed[key] = float(match.group(1))
        assert printed[key] > 0, line
    assert "estimate = 10 folds x (30 epochs x 7860 training clips" in out

    # One table row per configuration; bank and start-up lines
    for config in CONFIGS:
        assert any(line.split()[:1] == [config] for line in lines), config
    for config in ("recipe-bank", "recipe-bank-large", "recipe-feature-bank"):
        assert f"{config}: clip bank built in" in out, config
        assert f"{config}: command start -> first training step" in out
    assert "recipe-per-clip: clip bank built" not in out
    assert re.search(r"feature bank \d+\.\d s, \d+\.\d MB", out)
    assert re.search(r"recipe-bank training clips/s: batch 16: \S+, batch", out)
    assert re.search(r"ceiling training clips/s: batch 16: \S+, batch", out)

    # The data: an UrbanSound8K tree that the recipe's own preparation read
    data = tmp_path / "data"
    assert (data / "metadata" / "UrbanSound8K.csv").is_file()
    n_train = len(list((data / "audio" / "fold1").glob("*.wav")))
    n_valid = len(list((data / "audio" / "fold9").glob("*.wav")))
    assert n_train > 16 and n_valid > 0  # two training batches at batch 16
    assert (
        tmp_path / "out" / "recipe-bank" / "manifests" / "train.json"
    ).is_file()
    # data_source bank/files reached the recipe
    assert list(
        (tmp_path / "out" / "recipe-bank" / "bank").glob("*/index.json")
    )
    assert not (tmp_path / "out" / "recipe-per-clip" / "bank").exists()
    # data_source reached the recipe: shards, no bank
    assert (
        tmp_path / "out" / "recipe-shards" / "shards" / "shards.json"
    ).is_file()
    assert not (tmp_path / "out" / "recipe-shards" / "bank").exists()

    # The JSON: every configuration, sane numbers, the same final values
    report = json.loads(json_path.read_text())
    assert set(report["results"]) == set(CONFIGS)
    for name, r in report["results"].items():
        s = r["summary"]
        for key in ("train_clips_per_s", "eval_clips_per_s", "cpu_ms_per_clip"):
            assert positive(s[key]), (name, key, s[key])
        assert positive(r["rss_mb"]), name
        assert positive(s["start_to_first_step_s"]), name
        assert positive(s["end_to_end_s"]), name
        assert sum(p["clips"] for p in r["passes"]["train"]) == n_train, name
        assert sum(p["clips"] for p in r["passes"]["eval"]) == n_valid, name
        assert 0.0 <= r["accuracy"] <= 1.0, name
    results = report["results"]
    assert results["recipe-bank"]["batch_size"] == 16
    assert results["recipe-bank-large"]["batch_size"] > 16
    assert results["ceiling-large"]["batch_size"] > 16
    for name in ("recipe-bank", "recipe-bank-large", "recipe-feature-bank"):
        s = results[name]["summary"]
        assert positive(results[name]["bank_bytes"]), name
        assert s["bank_build_s"] >= 0 and s["last_log_to_exit_s"] >= 0, name
    assert positive(results["recipe-feature-bank"]["feature_bank_bytes"])
    assert results["recipe-per-clip"]["num_workers"] >= 1
    assert results["recipe-bank"]["num_workers"] == 0
    for key, value in printed.items():
        assert abs(report["summary"][key] - value) <= 0.051 * max(1, value)


def test_shards_benchmark_runs_on_an_urbansound8k_folder(tmp_path):
    from helpers import make_urbansound_tree

    make_urbansound_tree(tmp_path / "data", 1, folds=[1, 2], seconds=(0.5, 1.0))
    json_path = tmp_path / "shards.json"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "shards.py"),
            f"--data_folder={tmp_path / 'data'}",
            "--sample_rate=8000",
            "--duration_ms=1000",
            "--shard_size=7",
            f"--json={json_path}",
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(json_path.read_text())
    assert report["clips"] == 20
    assert report["shards_int16"]["shards"] == 3
    for key in ("bank", "shards_int16", "shards_flac"):
        assert positive(report[key]["bytes_per_clip"]), key
    # int16 at 8 kHz: the bank holds 1 s a clip, shards the 0.5-1 s of each
    # clip (and a little tar and npy header)
    assert report["bank"]["bytes_per_clip"] == 16000
    assert 8000 < report["shards_int16"]["bytes_per_clip"] < 17000
    assert "one process reads" in result.stdout


@pytest.mark.slow  # export and timing
def test_inference_benchmark_quick_runs_and_reports(tmp_path):
    json_path = tmp_path / "inference.json"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "inference.py"),
            "--quick",
            f"--workdir={tmp_path / 'work'}",
            f"--json={json_path}",
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert re.fullmatch(r"onnx_vs_eager_batch1 cnn: \d+\.\d+", lines[-1])
    # One table row per backend and batch, with finite positive numbers
    rows = [line for line in lines if line.startswith("| cnn |")]
    assert len(rows) == 3 * 2
    data = json.loads(json_path.read_text())
    assert {(r["backend"], r["batch"]) for r in data["results"]} == {
        (b, n) for b in ("eager", "torchscript", "onnx") for n in (1, 4)
    }
    for r in data["results"]:
        assert positive(r["clips_per_s"]) and positive(r["p50_ms"])
        assert r["p95_ms"] >= r["p50_ms"]
    # Both exports were checked against eager PyTorch on the way
    assert result.stdout.count("against eager PyTorch") == 2
