"""Export to ONNX and TorchScript: the export's features against the recipe's,
every required model YAML exported and checked against eager PyTorch, the
metadata, and the command line (refusals, failed checks, exit status).

The model folders are built from the YAMLs with their initial weights (no
training: the check compares numbers, not accuracy); nothing uses the network.
"""

import json
import logging

import numpy as np
import onnx
import pytest
import torch
from helpers import HPARAMS, requires_mount, run_in_namespace, write_clip
from sb_urbansound.serving import export
from sb_urbansound.serving.export import (
    PROB_TOLERANCE,
    MatmulMelPower,
    MelSpectrogramGraph,
    TorchScriptScorer,
    export_model,
    main,
    untrained_model_folder,
)
from sb_urbansound.serving.inference import (
    TorchScorer,
    load_model,
    window_probs,
)
from sb_urbansound.serving.runtime import OnnxModel, Scorer
from sb_urbansound.serving.timeline import sliding_windows
from sb_urbansound.training.features import MelSpectrogramDB

LABELS = ["dog_bark", "siren", "street_music"]
# The YAMLs whose models must export, shrunk by overrides (export time is
# mostly tracing; fsdd.yaml keeps its 5 shifted test views)
# (a BatchStandardize gets training statistics, as a trained model's has:
# constants in the export)
REQUIRED = {
    "cnn.yaml": {"sample_rate": 16000, "duration_ms": 1000, "channels": 2},
    "cnn_large.yaml": {"sample_rate": 8000, "duration_ms": 1000},
    "folders.yaml": {"sample_rate": 8000, "duration_ms": 1000},
    "fsdd.yaml": {"duration_ms": 500},
}


@pytest.fixture(autouse=True)
def quiet():
    logging.disable(logging.INFO)
    yield
    logging.disable(logging.NOTSET)


# ------------------------------------------------------------ the features


@pytest.mark.parametrize(
    "rate, n_fft, hop, n_mels, channels, f_min",
    [
        (44100, 1024, 512, 64, 2, 0.0),  # the tutorial's
        (22050, 512, 256, 64, 1, 0.0),  # cnn.yaml
        (22050, 1024, 256, 64, 1, 0.0),  # cnn_large.yaml, folders.yaml
        (8000, 256, 64, 40, 1, 60.0),  # fsdd.yaml
        (16000, 400, 160, 40, 1, 0.0),  # n_fft not a power of 2, hop apart
    ],
)
@pytest.mark.parametrize("method", ["matmul", "stft"])
def test_export_features_equal_melspectrogramdb(
    rate, n_fft, hop, n_mels, channels, f_min, method
):
    mel = MelSpectrogramDB(
        rate, n_fft, hop, n_mels, top_db=80, channels=channels, f_min=f_min
    )
    length = rate // 2
    gen = torch.Generator().manual_seed(0)
    x = 0.1 * torch.randn(3, length, channels, generator=gen)
    t = torch.arange(length) / rate
    x[1] += 0.5 * torch.sin(2 * torch.pi * 440 * t).unsqueeze(-1)
    x[2, length // 3 :] = 0.0  # silence, as in a zero-padded window
    x = x.squeeze(-1) if channels == 1 else x
    graph = MelSpectrogramGraph(mel, length, method)
    with torch.no_grad():
        ref, got = mel(x), graph(x)
    assert got.shape == ref.shape
    # dB values from -80 to +40: equal to a few thousandths of a dB
    assert float((got - ref).abs().max()) < 2e-3


def test_matmul_dft_is_the_power_spectrum():
    # The two-stage matrix-product DFT against float64 FFT, bin by bin (an
    # identity "mel" matrix keeps every bin)
    n, hop, length = 1024, 512, 8192
    eye = torch.eye(n // 2 + 1)
    op = MatmulMelPower(torch.hann_window(n), eye, hop, length)
    x = torch.randn(2, length)
    frames = x.double().unfold(-1, n, hop) * torch.hann_window(n).double()
    ref = torch.fft.rfft(frames).abs() ** 2
    got = op(x)
    assert got.shape == ref.shape
    assert float(((got - ref).abs() / ref.max()).max()) < 1e-6


# --------------------------------------------------------- the model YAMLs


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """An untrained model folder per required YAML."""
    root = tmp_path_factory.mktemp("export")
    return {
        name: untrained_model_folder(
            HPARAMS / name,
            root / name.replace(".yaml", ""),
            LABELS,
            over,
        )
        for name, over in REQUIRED.items()
    }


@pytest.fixture(scope="module")
def exported(folders):
    """Every required YAML's model exported to both formats (with the check)."""
    lines = []
    results = {
        name: export_model(folder, log=lines.append)
        for name, folder in folders.items()
    }
    return results, lines


@pytest.mark.parametrize("name", list(REQUIRED))
def test_required_models_export_and_match_eager_pytorch(
    name, exported, folders
):
    results, lines = exported
    for fmt, file in export.FILES.items():
        result = results[name][fmt]
        assert "error" not in result, result
        assert (
            result["path"] == folders[name] / file and result["path"].is_file()
        )
        # Every generated clip, from 0.3 to 10.5 windows (the long one is
        # scored in chunks)
        assert result["clips"] == len(export.CHECK_LENGTHS)
        assert result["windows"] == 1 + 1 + 3 + 6 + 20
        assert result["top1_agree"] == result["clips"]
        assert result["max_abs_diff"] <= PROB_TOLERANCE
        print(
            f"{name} {fmt}: {result['clips']} clips, {result['windows']} "
            f"windows, top-1 {result['top1_agree']}/{result['clips']}, "
            f"max |dprob| {result['max_abs_diff']:.1e}"
        )
    # the command printed both numbers for each format
    assert sum("against eager PyTorch" in line for line in lines) == 2 * len(
        REQUIRED
    )


@pytest.mark.parametrize("name", ["cnn.yaml", "fsdd.yaml"])
def test_exported_files_agree_with_eager_on_other_clips(
    name, exported, folders
):
    # Read back from disk and scored on clips the check did not see: one
    # window, and a long clip in chunks of 3 windows
    folder = folders[name]
    model = load_model(folder)
    rate, channels = model.hparams.sample_rate, model.hparams.channels
    num = round(rate * model.hparams.duration_ms / 1000)
    gen = torch.Generator().manual_seed(7)
    for length in (num, 7 * num + 123):
        wav = 0.2 * torch.randn(length, channels, generator=gen)
        wav = wav.squeeze(-1) if channels == 1 else wav
        windows = sliding_windows(wav, num)
        ref = window_probs(model, windows).numpy()
        array = windows.numpy().reshape(windows.shape[0], num, channels)
        for scorer in (
            OnnxModel(folder, chunk=3),
            TorchScriptScorer(folder / "model.ts", chunk=3),
        ):
            got = scorer.window_probs(array)
            assert np.abs(got - ref).max() < PROB_TOLERANCE
            assert (got.mean(0).argmax()) == ref.mean(0).argmax()


def test_every_backend_is_one_scorer_with_the_folders_spec(
    exported, folders, tmp_path
):
    # classify, --stream and the export's check see a model only through
    # runtime.Scorer: the same spec, and the same result for a file
    folder = folders["cnn.yaml"]
    clip = write_clip(tmp_path / "c.wav", 1, 22050, 1, 2.3)
    scorers = [
        TorchScorer(load_model(folder)),
        OnnxModel(folder),
        TorchScriptScorer(folder / "model.ts"),
    ]
    spec = ("labels", "sample_rate", "channels", "num_samples", "remove_dc")
    ref = scorers[0].classify_file(clip)
    for scorer in scorers:
        assert isinstance(scorer, Scorer)
        assert [getattr(scorer, k) for k in spec] == [
            getattr(scorers[0], k) for k in spec
        ]
        got = scorer.classify_file(clip)
        assert got["n_windows"] == ref["n_windows"] > 1
        assert got["label"] == ref["label"]
        assert abs(got["prob"] - ref["prob"]) < 1e-3


def test_onnx_metadata_and_interface(exported, folders):
    for name, folder in folders.items():
        proto = onnx.load(folder / "model.onnx")
        meta = {p.key: p.value for p in proto.metadata_props}
        model = load_model(folder)
        assert json.loads(meta["labels"]) == LABELS
        assert int(meta["sample_rate"]) == model.hparams.sample_rate
        assert int(meta["channels"]) == model.hparams.channels
        num = round(
            model.hparams.sample_rate * model.hparams.duration_ms / 1000
        )
        assert int(meta["num_samples"]) == num
        inputs = {i.name: i for i in proto.graph.input}
        shape = inputs["waveforms"].type.tensor_type.shape.dim
        assert shape[0].dim_param  # the number of windows is dynamic
        assert [d.dim_value for d in shape[1:]] == [num, model.hparams.channels]
        # One input, one output: each window is scored on its own
        assert list(inputs) == ["waveforms"]
        assert [o.name for o in proto.graph.output] == ["probs"]
        assert meta["normalization"].startswith("per window")
        assert meta["tta_views"] == ("5" if name == "fsdd.yaml" else "1")
        # TorchScript: the same metadata
        files = {"metadata.json": ""}
        torch.jit.load(str(folder / "model.ts"), _extra_files=files)
        assert json.loads(files["metadata.json"]) == meta


# ---------------------------------------------------------- command line


def test_cli_with_data_clips(folders, tmp_path, capsys):
    folder = folders["cnn.yaml"]
    clips = tmp_path / "clips"
    for i, (rate, ch, subtype) in enumerate(
        [(44100, 2, "PCM_16"), (8000, 1, "PCM_U8"), (48000, 1, "FLOAT")]
    ):
        write_clip(clips / f"{i}.wav", i, rate, ch, 0.5 + i, subtype, seed=i)
    manifest = tmp_path / "test.json"
    manifest.write_text(json.dumps({"a": {"wav": str(clips / "0.wav")}}))
    assert (
        main(
            [
                str(folder),
                "--format",
                "onnx",
                "--data",
                str(clips),
                str(manifest),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "onnx: 4 clips (" in out and "same top-1 label on 4/4 clips" in out
    assert "max |Δprob|" in out and ": OK, wrote" in out
    assert (
        main(
            [
                str(folder),
                "--format",
                "torchscript",
                "--data",
                str(clips),
                "--max-clips",
                "2",
            ]
        )
        == 0
    )
    assert "torchscript: 2 clips" in capsys.readouterr().out


def test_cli_errors_exit_2(folders, tmp_path, capsys):
    assert main([str(tmp_path / "nothing")]) == 2
    assert "No model folder" in capsys.readouterr().err
    # a training output folder: named, with its model folder
    (tmp_path / "run" / "model").mkdir(parents=True)
    (tmp_path / "run" / "model" / "hyperparams.yaml").write_text("x: 1\n")
    assert main([str(tmp_path / "run")]) == 2
    assert "training output folder" in capsys.readouterr().err
    # --data naming a file that is not audio
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    assert main([str(folders["cnn.yaml"]), "--data", str(bad)]) == 2
    assert "bad.wav" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(folders["cnn.yaml"]), "--format", "tflite"])


def test_failed_check_writes_nothing_and_exits_1(
    folders, tmp_path, monkeypatch, capsys
):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(folders["folders.yaml"], folder)
    for file in export.FILES.values():
        (folder / file).unlink()
    original = export.WindowClassifier.forward

    def off(self, waveforms):
        """An export that computes something else: one probability moved."""
        return original(self, waveforms) + torch.tensor([0.01, -0.01, 0.0])

    monkeypatch.setattr(export.WindowClassifier, "forward", off)
    assert main([str(folder), "--format", "torchscript"]) == 1
    out = capsys.readouterr().out
    assert "torchscript: refused:" in out and "max |Δprob| 1.0e-02" in out
    assert "nothing written" in out
    assert not (folder / "model.ts").exists()


def test_exporter_error_is_a_refusal_with_the_reason(
    folders, tmp_path, monkeypatch, capsys
):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(folders["folders.yaml"], folder)
    (folder / "model.onnx").unlink()

    def fail(*args, **kwargs):
        raise RuntimeError("Unsupported: aten::frobnicate on line 3")

    monkeypatch.setattr(torch.onnx, "export", fail)
    assert main([str(folder)]) == 1  # torchscript written, onnx refused
    out = capsys.readouterr().out
    assert (
        "onnx: refused: MelSpectrogramDB + BatchStandardize + CNNEmbedding + "
        "LinearClassifier cannot be exported to onnx: RuntimeError: "
        "Unsupported: aten::frobnicate on line 3"
    ) in out
    assert (
        not (folder / "model.onnx").exists() and (folder / "model.ts").exists()
    )


def test_a_normaliser_without_training_statistics_is_refused(
    folders, tmp_path, capsys
):
    """An untrained BatchStandardize has no statistics to hold as constants:
    its model is refused, naming why, and nothing is written."""
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(folders["cnn.yaml"], folder)
    for file in export.FILES.values():
        (folder / file).unlink(missing_ok=True)
    ckpt = folder / "mean_var_norm.ckpt"
    state = torch.load(ckpt)
    state["batches"].zero_()
    torch.save(state, ckpt)
    assert main([str(folder), "--format", "onnx"]) == 1
    out = capsys.readouterr().out
    assert (
        "onnx: refused: MelSpectrogramDB + BatchStandardize + CNNEmbedding + "
        "LinearClassifier cannot be exported to onnx: its BatchStandardize "
        "normaliser has no training statistics"
    ) in out
    assert not (folder / "model.onnx").exists()


def test_generated_check_clips_are_fixed(folders):
    # The default check is reproducible: the same clips every time
    a = export.generated_clips(16000, 2, 16000)
    b = export.generated_clips(16000, 2, 16000)
    assert all(torch.equal(x[1], y[1]) for x, y in zip(a, b))
    assert [c.shape[0] for _, c in a] == [4800, 16000, 27200, 51200, 168000]


def test_export_takes_the_model_folder_lock(folders, capsys):
    # Another process writing in the model folder: refused at once, named
    import subprocess
    import sys

    folder = folders["cnn.yaml"]
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from sb_urbansound.atomic import FolderLock\n"
            "lock = FolderLock(sys.argv[1]).acquire()\n"
            "print('held', flush=True)\n"
            "time.sleep(120)\n",
            str(folder),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main([str(folder), "--format", "onnx"]) == 75
        err = capsys.readouterr().err
        assert f"process {holder.pid}" in err and str(folder) in err
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_file_that_is_a_link_is_refused_and_the_file_kept(
    folders, tmp_path, capsys
):
    """The issue's case: ``M/.lock`` replaced by a link to a user's file;
    the export refuses, naming it, and the file keeps its contents."""
    folder = folders["cnn.yaml"]
    mine = tmp_path / "notes.txt"
    mine.write_text("my notes")
    lock = folder / ".lock"
    lock.unlink(missing_ok=True)
    lock.symlink_to(mine)
    try:
        assert main([str(folder), "--format", "all"]) == 2
    finally:
        lock.unlink()
    err = capsys.readouterr().err
    assert f"{lock} is a link (to {mine})" in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert mine.read_text() == "my notes"


@requires_mount
def test_export_of_a_read_only_model_folder_is_one_line(folders):
    """A model folder on a read-only mount (root ignores permission bits):
    one line naming the folder and what to do, no traceback."""
    import subprocess
    import sys

    folder = folders["cnn.yaml"]
    mount = (
        f"mount --bind {folder} {folder} && mount -o remount,ro,bind {folder}"
    )
    result = run_in_namespace(
        mount,
        [sys.executable, "-m", "sb_urbansound.serving.export", str(folder)],
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    err = result.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert f"the model folder {folder} cannot be written" in err
    assert "Copy the folder to a writable place" in err


def test_an_untrained_folder_gets_statistics_for_speechbrains_normaliser(
    tmp_path,
):
    # InputNormalization (the ECAPA, x-vector and CNN14 YAMLs) sees the
    # generated clips as BatchStandardize does: with empty statistics the
    # folder's model failed on its first clip (a size mismatch)
    folder = untrained_model_folder(
        HPARAMS / "xvector.yaml",
        tmp_path / "model",
        LABELS,
        {"sample_rate": 16000, "duration_ms": 1000},
    )
    norm = load_model(folder).mods.mean_var_norm  # scores a clip to load
    assert type(norm).__name__ == "InputNormalization"
    assert norm.glob_mean.shape == (80,) and float(norm.glob_std.min()) > 0
