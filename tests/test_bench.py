"""Smoke test of the throughput benchmark (tiny sizes; no timing assertions)."""

import os
import re
import subprocess
import sys

import pytest
from helpers import REPO


# strict: once the benchmark runs again this XPASSes, and the mark must go
@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason=(
        "bench/throughput.py predates the recipe layout: its 'ours' runs "
        "import sb_urbansound.brain (SoundClassifierBrain), "
        "sb_urbansound.pipeline (dataio_prepare) and sb_urbansound.cache "
        "(AudioCache, folder_size), all removed, and override the removed "
        "audio_cache/audio_cache_folder keys; it is to be rewritten on the "
        "recipe's train.py (and the coming clip bank)"
    ),
)
def test_benchmark_quick_runs_and_reports(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "throughput.py"),
            "--quick",
            f"--workdir={tmp_path}",
        ],
        cwd=tmp_path,  # runs from anywhere, not only the repository root
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert re.fullmatch(r"speedup_vs_tutorial: \d+\.\d\d", lines[-1]), lines[-1]
    for config in ("tutorial", "tutorial-1thread", "ours", "ours+cache"):
        assert any(line.split()[:1] == [config] for line in lines), config
    assert "audio cache:" in result.stdout
    # The clips were made in the data set's formats, the cache at 44.1 kHz stereo.
    assert (tmp_path / "data" / "manifests" / "train.json").is_file()
    assert list((tmp_path / "audio_cache").glob("44100hz-2ch-*/*.npy"))
