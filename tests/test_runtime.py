"""The runtime without torch: its reading, conditioning and windows against
training's (every audio format of UrbanSound8K), its results against the
PyTorch path on a trained model, ``classify --backend onnx``, and a run with
torch blocked.

A tiny model (trained once for the session, tests/conftest.py) is
exported to ONNX; nothing here uses the network.
"""

import json
import logging
import os
import shutil
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import (
    FORMATS,
    US8K_CLASSES,
    run_with_memory_limit,
    run_without_torch,
    write_clip,
)
from sb_urbansound.data.audio import ClipConditioner, load_audio
from sb_urbansound.errors import AudioLoadError
from sb_urbansound.serving import classify, runtime
from sb_urbansound.serving.export import export_model
from sb_urbansound.serving.runtime import (
    Conditioner,
    OnnxModel,
    Resampler,
    read_audio,
    resample,
)
from sb_urbansound.serving.timeline import sliding_windows

CLASSES = US8K_CLASSES[:4]
# Rates of UrbanSound8K's files (8 to 96 kHz, and 11.025, 32 kHz) and of the
# recipe's models
RATES = [8000, 11025, 16000, 22050, 32000, 44100, 48000, 96000]
MODEL_RATES = [8000, 16000, 22050, 44100]


@pytest.fixture(scope="module")
def trained(tiny_cnn_run, tmp_path_factory):
    """The tiny cnn.yaml model (16 kHz stereo, 1 s; trained once for the
    session, tests/conftest.py), copied and exported."""
    out = tmp_path_factory.mktemp("runtime")
    shutil.copytree(tiny_cnn_run[0] / "model", out / "model")
    logging.disable(logging.INFO)
    results = export_model(out / "model", ["onnx"], log=lambda line: None)
    logging.disable(logging.NOTSET)
    assert "error" not in results["onnx"], results
    return out / "model"


# ----------------------------------------------------- reading, conditioning


@pytest.mark.parametrize("orig", RATES + [44101])
@pytest.mark.parametrize("new", MODEL_RATES)
def test_the_resampler_gives_a_file_the_numbers_of_a_stream(orig, new):
    # 44101 Hz: no common factor with any model rate
    rng = np.random.default_rng(orig + new)
    x = (0.3 * rng.standard_normal((orig // 3 + 17, 2))).astype(np.float32)
    got = resample(x, orig, new)
    assert got.dtype == np.float32 and got.shape[1] == 2
    assert abs(got.shape[0] - x.shape[0] * new / orig) <= 0.5
    # On a stream, block by block: the same numbers
    r = Resampler(orig, new)
    sizes = rng.integers(1, 3000, 40)
    parts, i = [], 0
    for size in sizes:
        parts.append(r(x[i : i + size]))
        i += size
    parts += [r(x[i:]), r.flush()]
    assert np.array_equal(np.concatenate(parts), got)


@pytest.mark.parametrize("rate, channels, subtype", FORMATS)
def test_reading_equals_load_audio(rate, channels, subtype, tmp_path):
    path = write_clip(tmp_path / "a.wav", 3, rate, channels, 0.7, subtype)
    ref, ref_rate = load_audio(path)
    got, got_rate = read_audio(path)
    assert got_rate == ref_rate == rate
    assert np.array_equal(got, ref.numpy())


@pytest.mark.parametrize("rate, channels, subtype", FORMATS)
@pytest.mark.parametrize(
    "model_rate, model_channels, remove_dc",
    [(16000, 2, False), (22050, 1, True), (44100, 2, True), (8000, 1, False)],
)
def test_conditioning_equals_training(
    rate, channels, subtype, model_rate, model_channels, remove_dc, tmp_path
):
    path = write_clip(tmp_path / "a.wav", 2, rate, channels, 1.3, subtype)
    wav, sr = load_audio(path)
    ref = ClipConditioner(model_rate, model_channels, remove_dc=remove_dc)
    ref = ref.convert(wav, sr).numpy()
    got = Conditioner(model_rate, model_channels, remove_dc).convert(
        *read_audio(path)
    )
    ref = ref.reshape(got.shape)  # mono: [time] there, [time, 1] here
    assert np.abs(got - ref).max() <= 1e-5
    # and the windows are the same windows
    num = model_rate // 2
    ref_windows = sliding_windows(torch.from_numpy(ref), num).numpy()
    got_windows = sliding_windows(got, num)
    assert got_windows.shape == ref_windows.shape
    assert np.abs(got_windows - ref_windows).max() <= 1e-5


@pytest.mark.parametrize("length", [1, 5, 16000, 16001, 24000, 40001])
def test_numpy_windows_equal_torch_windows(length):
    x = np.random.default_rng(length).standard_normal((length, 2))
    ref = sliding_windows(torch.from_numpy(x), 16000).numpy()
    assert np.array_equal(sliding_windows(x, 16000), ref)


# --------------------------------------------------- against the torch path


def format_clips(folder):
    """A clip per format of UrbanSound8K and per length (short, one window,
    several windows), each of a class the model knows."""
    paths = []
    for i, (rate, channels, subtype) in enumerate(FORMATS):
        for seconds in (0.4, 1.0, 2.7):
            label = i % len(CLASSES)
            paths.append(
                write_clip(
                    folder / f"{rate}_{channels}_{subtype}_{seconds}.wav",
                    label,
                    rate,
                    channels,
                    seconds,
                    subtype,
                    seed=100 + i,
                    n_classes=len(CLASSES),
                )
            )
    return paths


def test_runtime_equals_torch_on_every_format(trained, tmp_path):
    paths = format_clips(tmp_path)
    k = len(CLASSES)
    ref = classify.classify_files(trained, paths, top_k=k, progress=False)
    got = classify.classify_files(
        trained, paths, top_k=k, progress=False, backend="onnx"
    )
    worst = {}
    for r, g in zip(ref, got, strict=True):
        assert g["path"] == r["path"]
        assert g["label"] == r["label"], r["path"]
        assert g["n_windows"] == r["n_windows"]
        assert g["duration_s"] == pytest.approx(r["duration_s"])
        rp = {item["label"]: item["prob"] for item in r["top_k"]}
        gp = {item["label"]: item["prob"] for item in g["top_k"]}
        diff = max(abs(rp[lab] - gp[lab]) for lab in CLASSES)
        assert diff <= 1e-3, (r["path"], diff)
        fmt = os.path.basename(r["path"]).rsplit("_", 1)[0]
        worst[fmt] = max(worst.get(fmt, 0.0), diff)
    for fmt, diff in worst.items():
        print(f"{fmt}: 3 clips, top-1 equal, max |dprob| {diff:.1e}")
    # Both paths classify these generated clips right (a trained model)
    right = sum(
        r["label"] == CLASSES[int(i // 3) % len(CLASSES)]
        for i, r in enumerate(ref)
    )
    assert right >= 0.8 * len(ref)


def test_trained_batch_standardize_exports_its_statistics(trained):
    # Trained: BatchStandardize keeps its training statistics, so the export
    # scores each window on its own (one input: the windows)
    model = OnnxModel(trained)
    assert [i.name for i in model.session.get_inputs()] == ["waveforms"]
    meta = model.session.get_modelmeta().custom_metadata_map
    assert meta["normalization"].startswith("per window")


def test_chunked_scoring_equals_one_pass(trained, tmp_path):
    path = write_clip(tmp_path / "long.wav", 1, 44100, 2, 9.3, "PCM_16")
    whole = OnnxModel(trained, chunk=1000).file_window_probs(path)[0]
    chunks = OnnxModel(trained, chunk=3).file_window_probs(path)[0]
    assert whole.shape == (1 + 17, len(CLASSES))
    assert np.abs(whole - chunks).max() <= 1e-5
    ref = classify.load_scorer(trained).file_window_probs(path)[0]
    assert np.abs(whole - ref).max() <= 1e-4


NO_TORCH = textwrap.dedent(
    """
    import json
    from sb_urbansound.serving.runtime import OnnxModel

    result = OnnxModel(sys.argv[1]).classify_file(sys.argv[2], top_k=4)
    loaded = sorted(
        m for m in sys.modules
        if m.split(".")[0] in BLOCKED and sys.modules[m] is not None
    )
    print(json.dumps({"result": result, "loaded": loaded}))
    """
)


def test_runtime_needs_no_torch(trained, tmp_path):
    path = write_clip(tmp_path / "a.wav", 2, 48000, 2, 2.2, "PCM_24", seed=5)
    result = run_without_torch(NO_TORCH, tmp_path, trained, path)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["loaded"] == []
    (ref,) = classify.classify_files(trained, [path], top_k=4, progress=False)
    got = out["result"]
    assert got["label"] == ref["label"]
    ref_probs = {i["label"]: i["prob"] for i in ref["top_k"]}
    for item in got["top_k"]:
        assert item["prob"] == pytest.approx(ref_probs[item["label"]], abs=1e-3)


NO_TORCH_CLI = textwrap.dedent(
    """
    import runpy
    sys.argv[0] = "classify"
    runpy.run_module("sb_urbansound.serving.classify", run_name="__main__")
    """
)


@pytest.mark.parametrize("options", [[], ["--segments"]])
def test_classify_with_backend_onnx_runs_without_torch(
    trained, tmp_path, capsys, options
):
    clips = tmp_path / "clips"
    write_clip(clips / "a.wav", 1, 22050, 1, 2.6, "PCM_16", seed=2)
    write_clip(clips / "b.wav", 3, 44100, 2, 1.3, "FLOAT", seed=3)
    args = [str(trained), str(clips), "--top-k", "2", *options]
    result = run_without_torch(
        NO_TORCH_CLI, tmp_path, *args, "--backend", "onnx"
    )
    assert result.returncode == 0, result.stderr
    if not options:  # the torch backend there: one line that says what to do
        torch_run = run_without_torch(NO_TORCH_CLI, tmp_path, *args)
        assert torch_run.returncode == 2
        (line,) = torch_run.stderr.splitlines()
        assert "needs PyTorch" in line and "--backend onnx" in line
    assert classify.main(args) == 0  # the torch backend, in this process
    expected = capsys.readouterr().out.splitlines()
    got = result.stdout.splitlines()
    assert len(got) == len(expected) >= 2
    for o, t in zip(got, expected, strict=True):
        o, t = o.split("\t"), t.split("\t")
        numbers = [i for i, f in enumerate(t) if f.replace(".", "").isdigit()]
        assert [f for i, f in enumerate(o) if i not in numbers] == [
            f for i, f in enumerate(t) if i not in numbers
        ]
        for i in numbers:
            assert abs(float(o[i]) - float(t[i])) <= 2e-3


# ---------------------------------------------------------- command line


def test_cli_backend_onnx_prints_what_torch_prints(trained, tmp_path, capsys):
    clips = tmp_path / "clips"
    for i, (rate, channels, subtype) in enumerate(FORMATS[:4]):
        write_clip(
            clips / f"{i}.wav", i % 4, rate, channels, 1.6, subtype, seed=i
        )
    outputs = {}
    for backend in ("torch", "onnx"):
        code = classify.main(
            [str(trained), str(clips), "--top-k", "2", "--backend", backend]
        )
        assert code == 0
        outputs[backend] = capsys.readouterr().out.splitlines()
    assert len(outputs["onnx"]) == len(outputs["torch"]) == 4
    for t, o in zip(outputs["torch"], outputs["onnx"], strict=True):
        t, o = t.split("\t"), o.split("\t")
        assert o[0] == t[0] and o[1] == t[1] and o[3] == t[3]  # path, labels
        assert abs(float(o[2]) - float(t[2])) <= 1e-3 + 1e-4  # 4 decimals
    # --json: the same fields
    classify.main(
        [str(trained), str(clips / "0.wav"), "--json", "--backend", "onnx"]
    )
    (item,) = json.loads(capsys.readouterr().out)
    assert set(item) == {
        "path",
        "label",
        "prob",
        "top_k",
        "n_windows",
        "duration_s",
    }


def test_cli_backend_onnx_errors(trained, tmp_path, capsys):
    # No model.onnx: exit 2, and how to make one
    folder = tmp_path / "model"
    folder.mkdir()
    assert classify.main([str(folder), "x.wav", "--backend", "onnx"]) == 2
    err = capsys.readouterr().err
    assert "No ONNX model at" in err and "sb_urbansound.serving.export" in err
    # A training output folder: its model folder is named
    (tmp_path / "run" / "model").mkdir(parents=True)
    (tmp_path / "run" / "model" / "hyperparams.yaml").write_text("x: 1\n")
    assert (
        classify.main([str(tmp_path / "run"), "x.wav", "--backend", "onnx"])
        == 2
    )
    assert "training output folder" in capsys.readouterr().err
    # Not an ONNX model
    (folder / "model.onnx").write_bytes(b"not onnx")
    assert classify.main([str(folder), "x.wav", "--backend", "onnx"]) == 2
    assert "cannot be loaded by onnxruntime" in capsys.readouterr().err
    # An unreadable file: the same message as the torch path, exit 1
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    messages = {}
    for backend in ("torch", "onnx"):
        code = classify.main([str(trained), str(bad), "--backend", backend])
        assert code == 1
        messages[backend] = capsys.readouterr().err.splitlines()[0]
    assert messages["onnx"].startswith(f"error: {bad}: cannot be decoded") or (
        messages["onnx"].startswith(f"error: {bad}: cannot be read as audio")
    )
    assert messages["onnx"] == messages["torch"]


def test_runtime_rejects_an_onnx_file_without_our_metadata(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph), path)
    with pytest.raises(runtime.ModelFileError, match="lacks labels"):
        OnnxModel(path)


# ------------------------------------- odd sample rates: bounded memory


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_file_at_44101_hz_is_classified_in_bounded_memory(
    trained, tmp_path, backend
):
    # 44101 and 16000 have no common factor: a table of one filter per
    # output phase took 5.26 GiB
    path = write_clip(tmp_path / "odd.wav", 1, 44101, 1, 2.0)
    cmd = [
        sys.executable,
        "-m",
        "sb_urbansound.serving.classify",
        trained,
        path,
    ]
    result = run_with_memory_limit([*cmd, "--backend", backend], text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    (line,) = result.stdout.splitlines()
    assert line.split("\t")[0] == str(path)


def test_a_stream_at_44101_hz_is_classified_in_bounded_memory(trained):
    noise = np.random.default_rng(0).integers(-3000, 3000, 32000, "<i2")
    cmd = [sys.executable, "-m", "sb_urbansound.serving.classify", trained]
    result = run_with_memory_limit(
        [*cmd, "--stream", "--rate", "44101", "--channels", "1"]
        + ["--backend", "onnx"],
        input=noise.tobytes(),
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    (line,) = result.stdout.splitlines()  # 0.73 s: one padded window
    assert json.loads(line)["label"] in CLASSES


@pytest.mark.parametrize("rate", ["0", "999", "768001", "2147483647"])
def test_a_stream_rate_outside_the_range_is_refused_in_one_line(trained, rate):
    cmd = [
        sys.executable,
        "-m",
        "sb_urbansound.serving.classify",
        trained,
        "--stream",
    ]
    result = run_with_memory_limit(
        [*cmd, "--rate", rate, "--channels", "1", "--backend", "onnx"],
        input=b"\0" * 64000,
    )
    err = result.stderr.decode()
    assert result.returncode == 2 and result.stdout == b""
    assert len(err.splitlines()) == 1 and f"--rate {rate}" in err, err


def test_a_file_at_an_unsupported_rate_is_refused_by_both_readers(tmp_path):
    path = tmp_path / "slow.wav"
    sf.write(path, np.zeros(2000, np.float32), 500)
    for read in (load_audio, read_audio):
        with pytest.raises(AudioLoadError, match="500 Hz") as info:
            read(path)
        assert str(path) in str(info.value)
        assert len(str(info.value).splitlines()) == 1
