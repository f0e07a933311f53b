"""Using a trained model: the inference folder that training writes,
SpeechBrain's EncoderClassifier on it, the sliding windows, and the classify
command line.

A tiny model is trained once for the session (tests/conftest.py); nothing here
uses the network (sockets are blocked in-process, and in the subprocess).
"""

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import REPO, US8K_CLASSES, load_recipe, offline_env, write_clip
from hyperpyyaml import load_hyperpyyaml, resolve_references
from sb_urbansound.data.audio import ClipConditioner
from sb_urbansound.errors import UserError
from sb_urbansound.serving import classify, inference
from sb_urbansound.serving.inference import (
    export_inference_folder,
    load_model,
    window_log_probs,
)
from sb_urbansound.serving.timeline import sliding_windows

from speechbrain.inference.classifiers import EncoderClassifier

CLASSES = US8K_CLASSES[:4]
SAMPLE_RATE = 16000
DURATION_S = 1.0
MODEL_FILES = {
    ".sb_urbansound.json",  # the store's marker (docs/stores.md)
    "hyperparams.yaml",
    "compute_features.ckpt",
    "mean_var_norm.ckpt",
    "embedding_model.ckpt",
    "classifier.ckpt",
    "label_encoder.txt",
    "label_encoder.ckpt",
    "README.md",  # the model card (tests/test_card.py)
}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Make any network access in this process fail loudly."""

    def blocked(*args, **kwargs):
        raise OSError("network access attempted during an offline test")

    for name in ("connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, blocked)
    monkeypatch.setattr(socket, "create_connection", blocked)
    monkeypatch.setattr(socket, "getaddrinfo", blocked)


@pytest.fixture(scope="module")
def trained(tiny_cnn_run):
    """The tiny model, trained once for the session (tests/conftest.py):
    returns (output folder, data folder)."""
    return tiny_cnn_run


@pytest.fixture(scope="module")
def model(trained):
    out, _ = trained
    return load_model(out / "model")


def class_index(label):
    return CLASSES.index(label)


def clip(
    path, label, sample_rate=44100, channels=2, seconds=0.8, subtype="PCM_24"
):
    """A generated clip of class ``label`` (same signature as the training
    data)."""
    return write_clip(
        path,
        class_index(label),
        sample_rate,
        channels,
        seconds,
        subtype,
        seed=4242 + class_index(label),
        n_classes=len(CLASSES),
    )


def snapshot(folder):
    return {
        p.name: (p.is_symlink(), p.stat().st_size, p.stat().st_mtime_ns)
        for p in Path(folder).iterdir()
    }


# ------------------------------------------------------------------ the folder


def test_training_writes_a_model_card_with_its_numbers(trained):
    from sb_urbansound.serving.card import card_metadata
    from sb_urbansound.training.report import format_duration

    out, _ = trained
    text = (out / "model" / "README.md").read_text()
    results = json.loads((out / "test_results.json").read_text())
    history = json.loads((out / "history.json").read_text())
    meta = card_metadata(text)
    assert meta["library_name"] == "speechbrain"
    assert meta["datasets"] == ["UrbanSound8K"]
    metric = meta["model-index"][0]["results"][0]["metrics"][0]
    assert metric["value"] == round(results["accuracy"], 4)
    assert meta["model-index"][0]["results"][0]["dataset"]["split"] == "fold 4"
    for label, acc in results["per_class_accuracy"].items():
        assert f"| {label} | {100 * acc:.2f} % |" in text
    seconds = sum(h["train_seconds"] for h in history)
    assert f"Training time: {format_duration(seconds)} over 12 epochs" in text
    assert "- Hardware: CPU:" in text
    assert "| sample_rate | 16000 |" in text and "| channels | 2 |" in text


def test_model_folder_is_self_contained(trained):
    out, data = trained
    folder = out / "model"
    assert {p.name for p in folder.iterdir()} == MODEL_FILES
    assert not [p for p in out.iterdir() if p.name.startswith(".model.")]
    text = (folder / "hyperparams.yaml").read_text()
    body = "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#")
    )
    # No training objects, no paths to the data or the run
    for key in (
        "data_folder",
        "prepare",
        "checkpointer",
        "epoch_counter",
        "opt_class",
    ):
        assert f"{key}:" not in body
    assert str(data) not in body and str(out) not in body
    assert "pretrainer:" in body and "audio_normalizer:" in body
    # The normaliser is the recipe's own clip conditioner
    assert "!new:sb_urbansound.data.audio.ClipConditioner" in body
    # Same values as training
    trained_yaml = (out / "hyperparams.yaml").read_text()
    assert "sample_rate: 16000" in body and "duration_ms: 1000" in body
    assert "n_classes: 4" in body and "n_classes: 4" in trained_yaml
    # The checkpoints are those of the best (tested) checkpoint
    (best,) = (out / "save").glob("CKPT+*")
    for name in ("embedding_model", "classifier"):
        exported = (folder / f"{name}.ckpt").read_bytes()
        assert exported == (best / f"{name}.ckpt").read_bytes()
    assert (folder / "label_encoder.txt").read_text() == (
        out / "save" / "label_encoder.txt"
    ).read_text()


def test_encoder_classifier_loads_moved_folder_and_classifies_files(
    trained, tmp_path, monkeypatch
):
    out, _ = trained
    folder = tmp_path / "moved model"
    shutil.copytree(out / "model", folder)
    before = snapshot(folder)
    monkeypatch.chdir(tmp_path)  # paths must not depend on the current folder
    model = EncoderClassifier.from_hparams(
        source=str(folder), savedir=str(folder)
    )
    assert snapshot(folder) == before  # loading writes nothing, links nothing
    assert model.audio_normalizer.sample_rate == SAMPLE_RATE
    for label in CLASSES:
        # Another format than the model's: stereo 44.1 kHz 24-bit
        path = clip(tmp_path / f"{label}.wav", label)
        out_prob, score, index, text_lab = model.classify_file(str(path))
        assert text_lab == [label]
        assert out_prob.shape == (1, len(CLASSES))
        assert torch.allclose(out_prob.exp().sum(-1), torch.ones(1), atol=1e-4)
    # Mono 8 kHz too
    path = clip(tmp_path / "mono.flac", CLASSES[2], 8000, 1, 0.6, "PCM_16")
    assert model.classify_file(str(path))[3] == [CLASSES[2]]


def recipe_hparams(out):
    """The run's resolved training YAML, loaded as the recipe loads it."""
    load_recipe()  # the recipe folder on sys.path (for its prepare function)
    text = (out / "hyperparams.yaml").read_text()
    return load_hyperpyyaml(text, {"num_workers": 0})


def test_classify_batch_matches_the_recipe_test_run(trained, model):
    """Same clips, same batches as the recipe's test stage → same
    predictions."""
    out, _ = trained
    hparams = recipe_hparams(out)
    batch_size = hparams["test_dataloader_options"]["batch_size"]
    assert batch_size == 8 and not hparams["test_dataloader_options"]["shuffle"]
    # The recipe's own test data pipeline (load, resample, channels, pad)
    test_set = load_recipe().dataio_prep(hparams)["test"]
    manifest = json.loads((out / "manifests" / "test.json").read_text())
    items = [test_set[i] for i in range(len(test_set))]
    assert [item["id"] for item in items] == list(manifest)
    predicted, targets = [], []
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        wavs = torch.stack([item["sig"] for item in batch])
        assert wavs.shape[1:] == (SAMPLE_RATE, 2)
        _, _, _, labels = model.classify_batch(wavs)
        predicted += labels
        targets += [item["label"] for item in batch]
    results = json.loads((out / "test_results.json").read_text())
    labels = results["labels"]
    matrix = [[0] * len(labels) for _ in labels]
    for t, p in zip(targets, predicted, strict=True):
        matrix[labels.index(t)][labels.index(p)] += 1
    assert matrix == results["confusion_matrix"]
    assert results["accuracy"] >= 0.9  # the test below relies on a good model


def test_window_scores_match_classify_batch_in_any_chunking(model):
    torch.manual_seed(0)
    windows = torch.randn(7, SAMPLE_RATE, 2) * 0.1
    reference = model.classify_batch(windows)[0]
    for batch_size in (1, 3, 16):
        scores = window_log_probs(model, windows, batch_size=batch_size)
        assert torch.allclose(scores, reference, atol=1e-5)


def test_long_clip_uses_sliding_windows(model, tmp_path):
    label = CLASSES[1]
    path = clip(
        tmp_path / "long.wav", label, 22050, 1, 5 * DURATION_S, "PCM_16"
    )
    wav, rate = sf.read(path, dtype="float32", always_2d=True)
    # As classify does: rate and channels only, the whole clip
    wav = ClipConditioner(SAMPLE_RATE, 2).convert(torch.from_numpy(wav), rate)
    assert wav.shape == (5 * SAMPLE_RATE, 2)
    windows = sliding_windows(wav, SAMPLE_RATE)
    probs = inference.TorchScorer(model).window_probs(windows).mean(axis=0)
    assert windows.shape[0] == 9  # 1 + (5 s - 1 s) / 0.5 s
    assert probs.argmax() == class_index(label)
    assert math.isclose(probs.sum(), 1.0, abs_tol=1e-4)
    # The result does not depend on the chunking of windows
    scorer_1 = inference.TorchScorer(model, batch_size=1)
    probs_1 = scorer_1.window_probs(windows).mean(axis=0)
    assert np.allclose(probs, probs_1, atol=1e-5)
    # A clip no longer than the training duration is one padded window
    assert sliding_windows(wav[:100], SAMPLE_RATE).shape == (1, SAMPLE_RATE, 2)


# ------------------------------------------------------------------- the CLI


@pytest.fixture
def audio_dir(tmp_path):
    """A folder of clips (one per class, nested, wav/flac) and a text file."""
    root = tmp_path / "clips"
    for i, label in enumerate(CLASSES):
        suffix = ".flac" if i % 2 else ".wav"
        sub = root / "sub" if i >= 2 else root
        clip(sub / f"{i}_{label}{suffix}", label, 44100, 2 - i % 2, 0.7)
    (root / "notes.txt").write_text("not audio")
    return root


def run_cli(capsys, *argv):
    status = classify.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_cli_prints_tab_separated_lines(trained, audio_dir, capsys):
    out, _ = trained
    status, stdout, stderr = run_cli(capsys, out / "model", audio_dir)
    assert status == 0, stderr
    lines = stdout.splitlines()
    assert len(lines) == len(CLASSES)  # notes.txt is not picked up
    for line in lines:
        path, label, prob = line.split("\t")
        assert Path(path).name.split("_", 1)[1].rsplit(".", 1)[0] == label
        assert 0.5 < float(prob) <= 1.0
        assert len(prob.split(".")[1]) == 4


def test_cli_takes_a_folder_of_mp3_files(trained, tmp_path, capsys):
    out, _ = trained
    for label in CLASSES:
        clip(tmp_path / "mp3" / f"{label}.mp3", label, 44100, 2, 0.7, None)
    status, stdout, stderr = run_cli(capsys, out / "model", tmp_path / "mp3")
    assert status == 0, stderr
    lines = [line.split("\t") for line in stdout.splitlines()]
    assert [Path(path).name for path, _, _ in lines] == [
        f"{label}.mp3" for label in sorted(CLASSES)
    ]
    assert all(Path(path).stem == label for path, label, _ in lines)


def test_cli_top_k(trained, audio_dir, capsys):
    out, _ = trained
    status, stdout, _ = run_cli(capsys, out / "model", audio_dir, "--top-k", 4)
    assert status == 0
    for line in stdout.splitlines():
        fields = line.split("\t")
        assert len(fields) == 1 + 2 * 4
        labels, probs = fields[1::2], [float(p) for p in fields[2::2]]
        assert sorted(labels) == sorted(CLASSES)
        assert probs == sorted(probs, reverse=True)
        assert math.isclose(sum(probs), 1.0, abs_tol=1e-3)
    # More than the number of classes: all of them
    _, stdout, _ = run_cli(capsys, out / "model", audio_dir, "--top-k", 9)
    assert all(len(line.split("\t")) == 9 for line in stdout.splitlines())


def test_cli_json_and_long_clip(trained, tmp_path, capsys):
    out, _ = trained
    label = CLASSES[3]
    long_clip = clip(tmp_path / "long.flac", label, 48000, 2, 5 * DURATION_S)
    short_clip = clip(
        tmp_path / "short.wav", CLASSES[0], 8000, 1, 0.5, "PCM_16"
    )
    status, stdout, _ = run_cli(
        capsys, out / "model", long_clip, short_clip, "--json", "--top-k", "2"
    )
    assert status == 0
    results = json.loads(stdout)
    assert [r["path"] for r in results] == [str(long_clip), str(short_clip)]
    long_result, short_result = results
    assert long_result["label"] == label and long_result["n_windows"] == 9
    assert math.isclose(long_result["duration_s"], 5.0, abs_tol=1e-3)
    assert [t["label"] for t in long_result["top_k"]][0] == label
    assert len(long_result["top_k"]) == 2
    assert long_result["prob"] == long_result["top_k"][0]["prob"]
    assert (
        short_result["label"] == CLASSES[0] and short_result["n_windows"] == 1
    )


def test_cli_reports_unreadable_files_and_goes_on(trained, audio_dir, capsys):
    out, _ = trained
    broken = audio_dir / "sub" / "broken.wav"
    broken.write_bytes(b"RIFF but not really a wave file" * 4)
    empty = audio_dir / "empty.flac"
    empty.write_bytes(b"")
    missing = audio_dir / "missing.wav"
    status, stdout, stderr = run_cli(capsys, out / "model", audio_dir, missing)
    assert status == 1
    assert len(stdout.splitlines()) == len(CLASSES)  # the others are classified
    for bad in (broken, empty, missing):
        assert str(bad) in stderr and str(bad) not in stdout
    assert f"{str(missing)}: no such file" in stderr
    assert "3 of 7 files could not be classified" in stderr
    # --json lists the failures with their message
    status, stdout, _ = run_cli(capsys, out / "model", broken, "--json")
    assert status == 1
    (result,) = json.loads(stdout)
    assert result["path"] == str(broken) and "cannot be read" in result["error"]


def test_cli_missing_model_folder(tmp_path, capsys):
    status, stdout, stderr = run_cli(capsys, tmp_path / "nope", tmp_path)
    assert status == 2 and stdout == ""
    assert "No model folder" in stderr


def strict_json(text):
    """Parse JSON as strict parsers do: NaN and Infinity are not JSON."""

    def refuse(constant):
        raise ValueError(f"{constant} is not valid JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def nan_model(trained, tmp_path):
    """A copy of the trained model whose classifier weights are all NaN."""
    out, _ = trained
    folder = tmp_path / "nan model"
    shutil.copytree(out / "model", folder)
    state = torch.load(folder / "classifier.ckpt")
    torch.save(
        {k: torch.full_like(v, float("nan")) for k, v in state.items()},
        folder / "classifier.ckpt",
    )
    return folder


def test_cli_nan_model_is_an_error_per_file_and_json_stays_valid(
    nan_model, audio_dir, capsys
):
    status, stdout, stderr = run_cli(capsys, nan_model, audio_dir, "--json")
    assert status == 1
    results = strict_json(stdout)
    assert len(results) == len(CLASSES)
    for result in results:
        assert set(result) == {"path", "error"}
        message = result["error"]
        assert message.startswith(result["path"] + ": the model gives NaN")
        assert "trained on bad data" in message
        assert message.endswith(f"model folder: {nan_model}")
        assert f"error: {message}" in stderr
    assert f"{len(CLASSES)} of {len(CLASSES)} files could not be" in stderr
    # Lines: nothing on stdout, the same errors, status 1
    status, stdout, stderr = run_cli(capsys, nan_model, audio_dir)
    assert status == 1 and stdout == ""
    assert stderr.count("the model gives NaN") == len(CLASSES)
    # The API: an error per file, valid JSON, also for a model loaded first
    for source in (nan_model, load_model(nan_model)):
        results = classify.classify_files(source, [audio_dir], on_error=print)
        assert all("NaN" in r["error"] for r in results)
        assert str(nan_model) in results[0]["error"]
        json.dumps(results, allow_nan=False)


def test_cli_folder_without_audio_is_an_error(trained, tmp_path, capsys):
    out, _ = trained
    empty = tmp_path / "no audio"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("not audio")
    (empty / ".hidden.wav").write_bytes(b"")
    status, stdout, stderr = run_cli(capsys, out / "model", empty)
    assert status == 1 and stdout == ""
    assert (
        f"error: {empty}: no audio file in this folder or its subfolders"
        in (stderr)
    )
    assert "looked for .wav, .flac, .ogg, .mp3 files" in stderr
    # Beside a good file: the file is classified, the folder reported
    good = clip(tmp_path / "good.wav", CLASSES[0])
    status, stdout, stderr = run_cli(
        capsys, out / "model", empty, good, "--json"
    )
    assert status == 1
    bad_result, good_result = strict_json(stdout)
    assert bad_result["path"] == str(empty)
    assert "no audio file" in bad_result["error"]
    assert good_result["label"] == CLASSES[0]


def test_cli_training_output_folder_names_its_model(trained, tmp_path, capsys):
    out, _ = trained
    status, stdout, stderr = run_cli(capsys, out, out / "model")
    assert status == 2 and stdout == ""
    expected = (
        f"{out} is a training output folder; its model is {out / 'model'}"
    )
    assert stderr == f"error: {expected}\n"
    # A run that stopped before exporting its model
    unfinished = tmp_path / "unfinished run"
    unfinished.mkdir()
    shutil.copy(out / "hyperparams.yaml", unfinished)
    status, stdout, stderr = run_cli(capsys, unfinished, out / "model")
    assert status == 2 and stdout == ""
    assert stderr.startswith(
        f"error: {unfinished} is a training output folder without a model"
    )
    assert "Traceback" not in stderr and len(stderr.splitlines()) == 1


@pytest.mark.parametrize(
    "name", ["label_encoder.ckpt", "classifier.ckpt", "mean_var_norm.ckpt"]
)
def test_cli_model_folder_missing_a_checkpoint(trained, tmp_path, capsys, name):
    out, _ = trained
    folder = tmp_path / "model"
    shutil.copytree(out / "model", folder)
    (folder / name).unlink()
    status, stdout, stderr = run_cli(capsys, folder, out / "model")
    assert status == 2 and stdout == ""
    assert stderr.startswith(f"error: {folder} is missing {folder / name},")
    assert "which its hyperparams.yaml loads" in stderr
    assert "Traceback" not in stderr and len(stderr.splitlines()) == 1


def test_model_folder_with_a_bad_label_encoder(trained, tmp_path, capsys):
    out, _ = trained
    folder = tmp_path / "model"
    shutil.copytree(out / "model", folder)
    # No labels: SpeechBrain loads it, the model would decode nothing
    (folder / "label_encoder.ckpt").write_text(
        "================\n'starting_index' => 0\n"
    )
    with pytest.raises(inference.ModelFolderError, match="holds no labels"):
        load_model(folder)
    status, _, stderr = run_cli(capsys, folder, out / "model")
    assert status == 2
    assert stderr.startswith(f"error: {folder / 'label_encoder.ckpt'} holds no")
    # Unreadable: SpeechBrain's error, in one line
    (folder / "label_encoder.ckpt").write_text("")
    status, stdout, stderr = run_cli(capsys, folder, out / "model")
    assert status == 2 and stdout == ""
    assert stderr.startswith(f"error: cannot load the model in {folder}: ")
    assert "Traceback" not in stderr and len(stderr.splitlines()) == 1


def test_classify_files_api(trained, audio_dir):
    out, _ = trained
    results = classify.classify_files(out / "model", [audio_dir], top_k=2)
    assert len(results) == len(CLASSES)
    for r in results:
        assert set(r) == {
            "path",
            "label",
            "prob",
            "top_k",
            "n_windows",
            "duration_s",
        }
        assert r["label"] in Path(r["path"]).name and len(r["top_k"]) == 2


def test_module_entry_point_with_progress_bar(trained, tmp_path):
    """``python -m sb_urbansound.serving.classify`` in a subprocess, sockets
    blocked."""
    out, _ = trained
    files = [
        clip(tmp_path / "many" / f"{i:02d}.wav", CLASSES[i % 4], 16000, 1, 0.5)
        for i in range(12)
    ]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sb_urbansound.serving.classify",
            str(out / "model"),
        ]
        + [str(tmp_path / "many")],
        cwd=tmp_path,
        env=offline_env(tmp_path, REPO),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(f) for f in files]
    assert [line.split("\t")[1] for line in lines] == [
        CLASSES[i % 4] for i in range(12)
    ]
    assert "12/12" in result.stderr  # tqdm's bar
    assert "Fetch" not in result.stderr  # SpeechBrain's INFO messages are off


# ------------------------------------------- export of other model families


# Mono, as the recipe's mono YAMLs: [batch, time] waveforms straight into Fbank
XVECTOR_YAML = """
sample_rate: 16000
channels: 1
duration_ms: 500
n_mels: 20
output_folder: {out}
data_folder: /nowhere/data
__set_seed: !apply:torch.manual_seed [3]
compute_features: !new:speechbrain.lobes.features.Fbank
    n_mels: !ref <n_mels>
mean_var_norm: !new:speechbrain.processing.features.InputNormalization
    norm_type: global
embedding_model: !new:speechbrain.lobes.models.Xvector.Xvector
    in_channels: !ref <n_mels>
    tdnn_blocks: 2
    tdnn_channels: [8, 16]
    tdnn_kernel_sizes: [3, 1]
    tdnn_dilations: [1, 1]
    lin_neurons: 8
classifier: !new:speechbrain.lobes.models.Xvector.Classifier
    input_shape: [null, null, 8]
    lin_blocks: 0
    out_neurons: 3
modules:
    compute_features: !ref <compute_features>
    mean_var_norm: !ref <mean_var_norm>
    embedding_model: !ref <embedding_model>
    classifier: !ref <classifier>
label_encoder: !new:speechbrain.dataio.encoder.CategoricalEncoder
checkpointer: !new:speechbrain.utils.checkpoints.Checkpointer
    checkpoints_dir: !ref <output_folder>/save
    recoverables:
        normalizer: !ref <mean_var_norm>
        embedding_model: !ref <embedding_model>
        classifier: !ref <classifier>
"""


def forward(hparams, wavs):
    mods = hparams["modules"]
    lens = torch.ones(wavs.shape[0])
    feats = mods["mean_var_norm"](mods["compute_features"](wavs), lens)
    return mods["classifier"](mods["embedding_model"](feats, lens)).squeeze(1)


def test_export_of_a_stateful_normaliser_takes_the_best_checkpoint(tmp_path):
    """An x-vector-style YAML: InputNormalization saved under another name."""
    out = tmp_path / "run"
    out.mkdir()
    resolved = resolve_references(XVECTOR_YAML.format(out=out)).getvalue()
    (out / "hyperparams.yaml").write_text(resolved)
    hparams = load_hyperpyyaml(resolved)
    hparams["label_encoder"].update_from_iterable(["a", "b", "c"])
    mods = hparams["modules"]
    for module in mods.values():
        module.train()
    feats = mods["compute_features"](torch.randn(4, 8000))
    mods["mean_var_norm"](feats, torch.ones(4), epoch=0)  # running statistics
    for module in mods.values():
        module.eval()
    wavs = torch.randn(3, 8000) * 0.1
    best_scores = forward(hparams, wavs)
    best_mean = mods["mean_var_norm"].glob_mean.clone()
    checkpointer = hparams["checkpointer"]
    checkpointer.save_checkpoint(meta={"error": 0.2})
    # A later, worse checkpoint; memory then holds neither
    with torch.no_grad():
        for p in mods["classifier"].parameters():
            p.add_(1.0)
    mods["mean_var_norm"].glob_mean += 5.0
    checkpointer.save_checkpoint(meta={"error": 0.6})
    with torch.no_grad():
        for p in mods["classifier"].parameters():
            p.mul_(-2.0)

    folder = export_inference_folder(hparams)
    assert folder == out / "model"
    assert {p.name for p in folder.iterdir()} == MODEL_FILES
    text = (folder / "hyperparams.yaml").read_text()
    assert "/nowhere/data" not in text and "__set_seed" not in text
    model = load_model(folder)
    assert torch.equal(model.mods.mean_var_norm.glob_mean, best_mean)
    assert torch.allclose(model.classify_batch(wavs)[0], best_scores, atol=1e-5)
    # classify_file's normaliser gives this mono model [time] clips, the
    # layout the training batches had: short ones padded to 500 ms
    stereo = torch.randn(2000, 2) * 0.1  # 0.25 s at 8 kHz
    sig = model.audio_normalizer(stereo, 8000)
    assert sig.shape == (8000,)
    assert torch.equal(sig, ClipConditioner(16000, 1, 500).clip(stereo, 8000))
    assert model.classify_batch(sig.unsqueeze(0))[0].shape == (1, 3)
    assert model.hparams.label_encoder.decode_ndim([0, 2]) == ["a", "c"]

    # Export again: the folder is replaced, nothing is left behind
    (folder / "stale.txt").write_text("old export")
    export_inference_folder(hparams, verify=False)
    assert {p.name for p in folder.iterdir()} == MODEL_FILES
    assert sorted(p.name for p in out.iterdir()) == [
        "hyperparams.yaml",
        "model",
        "save",
    ]


def test_failed_export_keeps_the_previous_folder(tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    resolved = resolve_references(XVECTOR_YAML.format(out=out)).getvalue()
    (out / "hyperparams.yaml").write_text(resolved)
    hparams = load_hyperpyyaml(resolved)
    hparams["label_encoder"].update_from_iterable(["a", "b", "c"])
    (out / "model").mkdir()
    (out / "model" / "previous.txt").write_text("previous export")

    def broken_load(folder, device="cpu", trust=False):
        raise RuntimeError("cannot load the new folder")

    # Fails at the check, once the new folder is written
    monkeypatch.setattr(inference, "load_model", broken_load)
    with pytest.raises(RuntimeError, match="cannot load"):
        export_inference_folder(hparams)
    assert [p.name for p in (out / "model").iterdir()] == ["previous.txt"]
    assert not [p for p in out.iterdir() if p.name.startswith(".model")]
    # A module name that the inference YAML needs for itself
    hparams["modules"]["pretrainer"] = hparams["modules"]["classifier"]
    with pytest.raises(ValueError, match="pretrainer"):
        export_inference_folder(hparams, verify=False)
    assert [p.name for p in (out / "model").iterdir()] == ["previous.txt"]


def test_normalizer_matches_the_training_pipeline(trained, model, tmp_path):
    """classify_file's audio path = evaluation's (resample, channels, pad)."""
    out, _ = trained
    hparams = recipe_hparams(out)
    # A test set of three files, through the recipe's own data pipeline
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    paths = [
        clip(tmp_path / "a.wav", CLASSES[0], 44100, 2, 0.6),
        clip(tmp_path / "b.flac", CLASSES[1], 8000, 1, 0.3, "PCM_16"),
        clip(tmp_path / "c.wav", CLASSES[2], 48000, 1, 0.9, "FLOAT"),
    ]
    entries = {
        p.stem: {"wav": str(p), "label": CLASSES[i]}
        for i, p in enumerate(paths)
    }
    for split in ("train", "valid", "test"):
        hparams[f"{split}_annotation"] = manifests / f"{split}.json"
        (manifests / f"{split}.json").write_text(json.dumps(entries))
    test_set = load_recipe().dataio_prep(hparams)["test"]
    for i, path in enumerate(paths):
        expected = test_set[i]["sig"]
        assert expected.shape == (SAMPLE_RATE, 2)
        # What EncoderClassifier.classify_file feeds the model
        got = model.load_audio(str(path))
        assert torch.allclose(got, expected, atol=1e-6)


# ------------------------------------------------ a model folder is code


def copy_model(trained, tmp_path):
    out, _ = trained
    folder = tmp_path / "model"
    shutil.copytree(out / "model", folder)
    return folder


@pytest.mark.parametrize(
    "line, named",
    [
        ('pwned: !apply:os.system ["touch {marker}"]', "!apply:os.system"),
        ('pwned: !new:subprocess.Popen [["touch", "{marker}"]]', "subprocess"),
        ("pwned: !name:builtins.exec", "!name:builtins.exec"),
        ("pwned: !module:os", "!module:os"),
        (
            (
                "pwned: !apply:sb_urbansound.atomic.atomic_write_text "
                '["{marker}", x]'
            ),
            "atomic_write_text",
        ),
        (
            (
                "pwned: !new:sb_urbansound.atomic.atomic_write_text "
                '["{marker}", x]'
            ),
            "!new:sb_urbansound.atomic.atomic_write_text",
        ),
        ("pwned: !ref <sample_rate> ** 2 ** 3", "**"),
    ],
)
def test_a_model_folder_that_runs_code_is_refused(
    trained, tmp_path, capsys, audio_dir, line, named
):
    folder = copy_model(trained, tmp_path)
    marker = tmp_path / "pwned.txt"
    yaml_path = folder / "hyperparams.yaml"
    n_lines = len(yaml_path.read_text().splitlines())
    with open(yaml_path, "a") as f:
        f.write(line.format(marker=marker) + "\n")
    status, stdout, stderr = run_cli(capsys, folder, audio_dir)
    assert status == 2 and stdout == ""
    assert f"line {n_lines + 1}: " in stderr and named in stderr
    assert "--trust-model" in stderr
    assert not marker.exists()
    with pytest.raises(UserError):
        load_model(folder)
    assert not marker.exists()


def test_trust_model_loads_it_anyway(trained, tmp_path, capsys, audio_dir):
    folder = copy_model(trained, tmp_path)
    marker = tmp_path / "ran.txt"
    with open(folder / "hyperparams.yaml", "a") as f:
        f.write(
            f'ran: !apply:pathlib.Path.touch [!new:pathlib.Path ["{marker}"]]\n'
        )
    status, stdout, _ = run_cli(capsys, folder, audio_dir, "--trust-model")
    assert status == 0 and len(stdout.splitlines()) == len(CLASSES)
    assert marker.exists()  # what --trust-model means


def test_every_recipe_model_folder_passes_the_check(trained):
    from sb_urbansound.serving.trust import check_model_yaml

    out, _ = trained
    check_model_yaml(out / "model" / "hyperparams.yaml")


def test_labels_that_do_not_match_the_outputs_are_named(trained, tmp_path):
    folder = copy_model(trained, tmp_path)
    text = (folder / "label_encoder.ckpt").read_text()
    last = [line for line in text.splitlines() if "=>" in line][-2]
    (folder / "label_encoder.ckpt").write_text(text.replace(last + "\n", ""))
    with pytest.raises(inference.ModelFolderError) as info:
        load_model(folder)
    assert f"holds {len(CLASSES) - 1} labels" in str(info.value)
    assert f"has {len(CLASSES)} outputs" in str(info.value)


@pytest.mark.parametrize("key, value", [("sample_rate", 0), ("channels", -1)])
def test_an_impossible_audio_spec_is_named(trained, tmp_path, key, value):
    folder = copy_model(trained, tmp_path)
    path = folder / "hyperparams.yaml"
    text = path.read_text()
    import re

    path.write_text(re.sub(rf"(?m)^{key}: .*$", f"{key}: {value}", text))
    with pytest.raises(inference.ModelFolderError, match=f"{key}: {value}"):
        load_model(folder)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_an_output_that_cannot_be_written_is_an_error(trained, audio_dir):
    out, _ = trained
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [sys.executable, "-m", "sb_urbansound.serving.classify"]
            + [str(out / "model"), str(audio_dir)],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            timeout=300,
        )
    assert result.returncode == 1
    assert "error: cannot write the results" in result.stderr
    assert "No space left" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_closed_pipe_ends_classify_quietly(trained, audio_dir):
    out, _ = trained
    proc = subprocess.Popen(
        [sys.executable, "-m", "sb_urbansound.serving.classify"]
        + [str(out / "model"), str(audio_dir), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    proc.stdout.close()  # the reader is gone before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 0
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_a_dangling_audio_link_is_named(trained, audio_dir, capsys, caplog):
    out, _ = trained
    (audio_dir / "gone.wav").symlink_to(audio_dir / "no-such-file.wav")
    with caplog.at_level("WARNING"):
        status, stdout, _ = run_cli(capsys, out / "model", audio_dir)
    assert status == 0 and len(stdout.splitlines()) == len(CLASSES)
    assert "gone.wav" in caplog.text and "point to nothing" in caplog.text


def test_a_module_with_its_own_save_hook_is_exported_by_that_hook(tmp_path):
    # InputNormalization (ECAPA, x-vector, CNN14 YAMLs) keeps its statistics
    # outside state_dict(): its own hooks save and load them.
    from sb_urbansound.serving.inference import _save_module

    from speechbrain.processing.features import InputNormalization

    norm = InputNormalization()
    norm.train()
    norm(torch.randn(4, 10, 3), torch.ones(4))
    _save_module(norm, tmp_path / "norm.ckpt")
    loaded = InputNormalization()
    loaded._load(tmp_path / "norm.ckpt")
    assert loaded.count == norm.count
    assert torch.equal(loaded.glob_mean, norm.glob_mean)
