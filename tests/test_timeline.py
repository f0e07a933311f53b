"""Event timelines and live streams: segments of a long recording with known
events at known times, a stream of the same recording through standard input
(its lines, their latency, the end of the input, a reader that goes away), and
the windows and segments on their own.

One model is trained for the module (``hparams/folders.yaml``, 8 kHz, 1 s
windows, ~15 s) on sounds a small model tells apart: a low tone, a high tone,
and the background noise alone; it is exported to ONNX for the torch-free
runs. Nothing here uses the network.
"""

import io
import json
import os
import select
import subprocess
import sys
import threading

import numpy as np
import pytest
import soundfile as sf
from helpers import REPO
from sb_urbansound.serving import classify
from sb_urbansound.serving.export import export_model
from sb_urbansound.serving.runtime import Conditioner
from sb_urbansound.serving.stream import StreamWindows, run_stream
from sb_urbansound.serving.timeline import (
    count_events,
    find_segments,
    sliding_windows,
    window_count,
    window_spans,
)

RATE = 8000  # the model's
WINDOW_S, HOP_S = 1.0, 0.5
KINDS = {"low": 300.0, "high": 1800.0, "noise": None}
# The long recording: (label, start s, end s); background noise elsewhere
EVENTS = [("low", 2.0, 5.0), ("high", 8.0, 11.5), ("low", 13.0, 14.5)]
LENGTH_S = 16.3


def sound(kind, seconds, rate, rng):
    """Background noise, plus the tone of ``kind`` (none for "noise")."""
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    out = rng.uniform(0.01, 0.04) * rng.standard_normal(n)
    if KINDS[kind] is not None:
        f = KINDS[kind] * rng.uniform(0.95, 1.05)
        a = rng.uniform(0.2, 0.5)
        out += a * np.sin(2 * np.pi * f * t + rng.uniform(0, 6.3))
        out += 0.3 * a * np.sin(2 * np.pi * 2 * f * t)
    return out.astype(np.float32)


def recording(rate, channels, seed=1):
    """The long recording: background noise with EVENTS' tones in it."""
    rng = np.random.default_rng(seed)
    wav = 0.025 * rng.standard_normal(int(LENGTH_S * rate))
    t = np.arange(wav.shape[0]) / rate
    for label, start, end in EVENTS:
        inside = (t >= start) & (t < end)
        f = KINDS[label]
        wav[inside] += 0.35 * np.sin(2 * np.pi * f * t[inside])
        wav[inside] += 0.1 * np.sin(2 * np.pi * 2 * f * t[inside])
    wav = np.stack([wav * (1 - 0.1 * c) for c in range(channels)], 1)
    return wav.astype(np.float32)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """folders.yaml trained on low tones, high tones and noise; with ONNX."""
    root = tmp_path_factory.mktemp("timeline")
    rng = np.random.default_rng(0)
    for kind in KINDS:
        for i in range(30):  # some shorter than a window: zero padding
            path = root / "data" / kind / f"{kind}_{i}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            seconds = rng.uniform(0.8, 1.5)
            sf.write(path, sound(kind, seconds, RATE, rng), RATE)
    out = root / "out"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            str(REPO / "hparams" / "folders.yaml"),
            f"--data_folder={root / 'data'}",
            f"--output_folder={out}",
            f"--sample_rate={RATE}",
            "--duration_ms=1000",
            "--number_of_epochs=12",
            "--batch_size=8",
            "--lr=0.01",
            "--max_lr=0.01",
            "--num_workers=0",
        ],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = export_model(out / "model", ["onnx"], log=lambda line: None)
    assert "error" not in results["onnx"], results
    return out / "model"


@pytest.fixture(scope="module")
def long_file(tmp_path_factory):
    """The recording as a 22.05 kHz stereo file (converted as in training)."""
    path = tmp_path_factory.mktemp("long") / "street.wav"
    sf.write(path, recording(22050, 2), 22050, subtype="PCM_16")
    return path


def check_events(segments, hop=HOP_S):
    """Every event found with its label, boundaries within one hop; no tone
    reported where there is none."""
    for label, start, end in EVENTS:
        found = [
            s
            for s in segments
            if s["label"] == label and s["start"] < end and s["end"] > start
        ]
        assert len(found) == 1, (label, start, end, segments)
        assert abs(found[0]["start"] - start) <= hop, (found, start)
        assert abs(found[0]["end"] - end) <= hop, (found, end)
    for s in segments:
        if s["label"] != "noise":
            assert any(
                s["label"] == label and s["start"] < end and s["end"] > start
                for label, start, end in EVENTS
            ), s


# ---------------------------------------------------------------- segments


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_segments_find_every_event(model_folder, long_file, backend, capsys):
    code = classify.main(
        [
            str(model_folder),
            str(long_file),
            "--segments",
            "--json",
            "--backend",
            backend,
        ]
    )
    assert code == 0
    (result,) = json.loads(capsys.readouterr().out)
    check_events(result["segments"])
    assert result["counts"]["low"] == 2 and result["counts"]["high"] == 1
    assert result["n_windows"] == window_count(
        round(LENGTH_S * RATE), RATE * WINDOW_S
    )
    # Tab-separated: one line per event, then the counts
    classify.main(
        [str(model_folder), str(long_file), "--segments", "--backend", backend]
    )
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(result["segments"]) + 1
    first = lines[0].split("\t")
    assert first[0] == str(long_file) and float(first[1]) == 0.0
    assert lines[-1].startswith(
        f"# {long_file}: {len(result['segments'])} events"
    )
    assert "high 1" in lines[-1] and "low 2" in lines[-1]


def test_segments_options(model_folder, long_file, capsys):
    def run(*options):
        classify.main(
            [
                str(model_folder),
                str(long_file),
                "--segments",
                "--json",
                "--backend",
                "onnx",
                *options,
            ]
        )
        return json.loads(capsys.readouterr().out)[0]["segments"]

    base = run()
    # min duration: the 1.5 s event goes, the 3 s ones stay
    long_only = run("--min-duration", "2.5")
    assert all(s["end"] - s["start"] >= 2.5 for s in long_only)
    assert {(s["label"], s["start"]) for s in long_only} < {
        (s["label"], s["start"]) for s in base
    }
    assert [s["label"] for s in long_only if s["label"] != "noise"] == [
        "low",
        "high",
    ]
    # merge gap: the two low events (8 s apart) become one
    merged = run("--merge-gap", "9")
    assert sum(s["label"] == "low" for s in merged) == 1
    # threshold 1: only windows that are sure (probability 1.0 in float32)
    assert all(s["score"] == 1.0 for s in run("--threshold", "1.0"))


# ------------------------------------------------------------------ stream


def pcm(wav):
    """float32 [time, channels] → interleaved signed 16-bit bytes."""
    return (np.clip(wav, -1, 1) * 32767).astype("<i2").tobytes()


def stream_command(model_folder, rate, channels, backend="onnx"):
    return [
        sys.executable,
        "-m",
        "sb_urbansound.serving.classify",
        str(model_folder),
        "--stream",
        "--rate",
        str(rate),
        "--channels",
        str(channels),
        "--backend",
        backend,
        "--top-k",
        "2",
    ]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_stream_of_known_events(model_folder, tmp_path):
    # 16 kHz stereo in: down-mixed and resampled to the model's 8 kHz mono
    wav = recording(16000, 2, seed=3)
    result = subprocess.run(
        stream_command(model_folder, 16000, 2),
        input=pcm(wav),
        capture_output=True,
        env=ENV,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert result.stderr == b""
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    # The windows of a file of the same length, the last one padded
    n = window_count(round(LENGTH_S * RATE), RATE)
    assert len(lines) == n
    for k, line in enumerate(lines):
        assert line["start"] == pytest.approx(k * HOP_S)
        assert line["end"] == pytest.approx(min(k * HOP_S + WINDOW_S, LENGTH_S))
        assert (
            len(line["top_k"]) == 2
            and line["label"] == line["top_k"][0]["label"]
        )
    # A window inside an event hears it; one away from every event hears noise
    for line in lines:
        inside = [
            lab
            for lab, a, b in EVENTS
            if a <= line["start"] and line["end"] <= b
        ]
        away = all(line["end"] <= a or line["start"] >= b for _, a, b in EVENTS)
        if inside:
            assert line["label"] == inside[0], line
        elif away:
            assert line["label"] == "noise", line
    # Segments from the stream's windows find the events too
    probs = np.array(
        [
            [
                {i["label"]: i["prob"] for i in line["top_k"]}.get(lab, 0.0)
                for lab in KINDS
            ]
            for line in lines
        ]
    )
    spans = window_spans(len(lines), RATE, RATE, LENGTH_S)
    check_events(find_segments(probs, list(KINDS), spans))


def read_line(proc, timeout=120):
    """The next line of the process's stdout (None after ``timeout``)."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline() if ready else None


def test_stream_answers_before_the_input_ends(model_folder):
    # A line comes once a window (and what the resampler holds back: soxr,
    # up to 0.12 s at 16 kHz) has arrived, while the stream is still open;
    # then one per hop
    wav = recording(16000, 1, seed=4)
    data = pcm(wav)
    per_s = 16000 * 2
    proc = subprocess.Popen(
        stream_command(model_folder, 16000, 1),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    try:
        proc.stdin.write(data[: int(1.15 * per_s) // 2 * 2])
        proc.stdin.flush()
        first = read_line(proc)
        assert first is not None, "no line after one window"
        assert json.loads(first)["start"] == 0.0
        proc.stdin.write(
            data[int(1.15 * per_s) // 2 * 2 : int(1.65 * per_s) // 2 * 2]
        )
        proc.stdin.flush()
        second = read_line(proc)
        assert second is not None and json.loads(second)["start"] == 0.5
        # The rest, then the end of the input: the remaining windows, exit 0
        proc.stdin.write(data[int(1.65 * per_s) // 2 * 2 :])
        proc.stdin.close()
        rest = proc.stdout.read().splitlines()
        assert proc.wait(timeout=120) == 0
    finally:
        proc.kill()
    assert 2 + len(rest) == window_count(round(LENGTH_S * RATE), RATE)
    assert proc.stderr.read() == b""


def test_stream_reader_going_away_ends_quietly(model_folder):
    proc = subprocess.Popen(
        stream_command(model_folder, 8000, 1),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    data = pcm(recording(8000, 1)) * 4  # about a minute

    def feed():
        try:
            for i in range(0, len(data), 4000):
                proc.stdin.write(data[i : i + 4000])
                proc.stdin.flush()
            proc.stdin.close()
        except (BrokenPipeError, ValueError, OSError):
            pass  # the classifier has gone: expected

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        assert read_line(proc) is not None
        proc.stdout.close()  # like `| head -n 1`
        assert proc.wait(timeout=120) == 0
    finally:
        proc.kill()
    err = proc.stderr.read().decode()
    assert err == "", err


def test_stream_ends_with_short_or_empty_input(model_folder):
    scorer = classify.load_scorer(model_folder, "onnx")
    for seconds, lines in [(0.0, 0), (0.3, 1), (1.0, 1), (1.2, 2)]:
        wav = recording(8000, 1)[: int(seconds * 8000)]
        data = io.BytesIO(pcm(wav) + b"\x01")  # and half a frame: dropped
        out = io.StringIO()
        assert run_stream(scorer, 8000, 1, 1, data, out) == 0
        out = [json.loads(line) for line in out.getvalue().splitlines()]
        assert len(out) == lines
        if lines:
            assert out[-1]["end"] == pytest.approx(seconds)


def test_stream_torch_and_onnx_agree(model_folder):
    data = pcm(recording(11025, 2, seed=5)[: 11025 * 4])
    outputs = {}
    for backend in ("torch", "onnx"):
        scorer = classify.load_scorer(model_folder, backend)
        out = io.StringIO()
        assert run_stream(scorer, 11025, 2, 3, io.BytesIO(data), out) == 0
        outputs[backend] = [
            json.loads(line) for line in out.getvalue().splitlines()
        ]
    assert len(outputs["torch"]) == len(outputs["onnx"]) == 7
    for t, o in zip(outputs["torch"], outputs["onnx"], strict=True):
        assert (t["start"], t["end"], t["label"]) == (
            o["start"],
            o["end"],
            o["label"],
        )
        for a, b in zip(t["top_k"], o["top_k"], strict=True):
            assert (
                a["label"] == b["label"] and abs(a["prob"] - b["prob"]) <= 1e-3
            )


@pytest.mark.parametrize("rate", [44100, 44101])
def test_stream_windows_are_the_file_windows_in_constant_memory(rate):
    # 2 minutes of 44.1 kHz stereo in random blocks, to a 16 kHz mono model:
    # the windows are those of the whole converted signal, and the window
    # buffer never holds more than a window and a block (44101 Hz: no common
    # factor with 16 kHz)
    rng = np.random.default_rng(0)
    wav = (0.3 * rng.standard_normal((rate * 120, 2))).astype(np.float32)
    raw = np.clip(wav, -1, 1 - 1 / 32768)
    ints = (raw * 32768).astype("<i2")
    num = 16000
    stream = StreamWindows(rate, 2, 16000, 1, num)
    got, peak, i = [], 0, 0
    while i < ints.shape[0]:
        size = int(rng.integers(1, 20000))
        got += stream.feed(ints[i : i + size].tobytes())
        peak = max(peak, stream._buffer.shape[0])
        i += size
    got += stream.finish()
    assert peak <= num + 20000
    whole = Conditioner(16000, 1).convert(ints.astype(np.float32) / 32768, rate)
    ref = sliding_windows(whole, num)
    assert [start for start, _ in got] == [
        k * num // 2 for k in range(len(ref))
    ]
    assert np.array_equal(np.stack([w for _, w in got]), ref)


# ----------------------------------------------------- windows and segments


def test_window_spans_tile_the_recording():
    spans = window_spans(window_count(17000, 8000), 8000, 8000, 17000 / 8000)
    assert spans[0, 0] == 0.0 and spans[-1, 1] == pytest.approx(17000 / 8000)
    assert np.allclose(spans[1:, 0], spans[:-1, 1])
    assert np.allclose(spans[1:-1, 1] - spans[1:-1, 0], 0.5)


def test_find_segments_threshold_merge_and_minimum():
    labels = ["a", "b"]
    p_a = np.array([0.9, 0.9, 0.2, 0.8, 0.1, 0.1, 0.95, 0.95, 0.95])
    probs = np.stack([p_a, 1 - p_a], 1)
    spans = window_spans(9, 2, 2, 5.0)  # stretches of 0.5 s
    segs = find_segments(probs, labels, spans)
    assert [(s["label"], s["start"], s["end"]) for s in segs] == [
        ("a", 0.0, 1.25),
        ("b", 1.25, 1.75),
        ("a", 1.75, 2.25),
        ("b", 2.25, 3.25),
        ("a", 3.25, 5.0),
    ]
    assert segs[0]["score"] == pytest.approx(0.9)
    merged = find_segments(probs, labels, spans, merge_gap=0.5)
    assert [(s["label"], s["start"], s["end"]) for s in merged][0] == (
        "a",
        0.0,
        2.25,
    )
    assert merged[0]["score"] == pytest.approx((0.9 + 0.9 + 0.8) / 3)
    long = find_segments(probs, labels, spans, min_duration=1.0)
    assert [s["label"] for s in long] == ["a", "b", "a"]
    assert find_segments(probs, labels, spans, threshold=0.99) == []
    assert count_events(segs, labels) == {"a": 3, "b": 2}
