"""Model YAMLs: each loads with every key the recipe and cross-validation need,
runs at its default sizes, and trains end to end on generated data (shrunk
through command-line overrides only); a user's own model plugs in the way
``docs/models.md`` says, by its dotted path in a copy of ``cnn.yaml``."""

import json
import os
import re
import shlex
import subprocess
import sys

import pytest
import torch
from helpers import (
    HPARAMS,
    REPO,
    TRAIN_PY,
    US8K_CLASSES,
    load_prepare_module,
    make_urbansound_tree,
)
from hyperpyyaml import load_hyperpyyaml
from sb_urbansound.data.audio import ClipConditioner

CLASSES = US8K_CLASSES[:3]
YAMLS = ["cnn.yaml", "train_ecapa_tdnn.yaml", "xvector.yaml", "cnn14.yaml"]
NEW_YAMLS = YAMLS[1:]

# Keys read by the recipe's train.py (SoundClassifierBrain, dataio_prep,
# load_hparams, main) and by crossval.
REQUIRED_KEYS = [
    "seed",
    "data_folder",
    "output_folder",
    "save_folder",
    "train_log",
    "history_file",
    "test_results_file",
    "train_fold_nums",
    "valid_fold_nums",
    "test_fold_nums",
    "leaky_random_split",
    "skip_missing",
    "download",
    "prepare",
    "skip_prep",
    "train_annotation",
    "valid_annotation",
    "test_annotation",
    "labels_file",
    "label_encoder_file",
    "sample_rate",
    "channels",
    "duration_ms",
    "shift_pct",
    "n_classes",
    "modules",
    "label_encoder",
    "number_of_epochs",
    "batch_size",
    "num_workers",
    "dataloader_options",
    "test_dataloader_options",
    "spec_augment",
    "epoch_counter",
    "opt_class",
    "lr_scheduler",
    "compute_cost",
    "train_logger",
    "checkpointer",
]
MODULES = ["compute_features", "mean_var_norm", "embedding_model", "classifier"]

# Shared by every tiny run: 3 classes, one fold per split, 1 epoch, 0.5 s clips.
COMMON = [
    "--number_of_epochs=1",
    "--num_workers=0",
    "--download=False",
    "--train_fold_nums=[1]",
    "--valid_fold_nums=[2]",
    "--test_fold_nums=[3]",
    "--n_classes=3",
    "--duration_ms=500",
    "--batch_size=3",
]
# Per-model shrinking, by overrides only (the YAML defaults stay full size).
TINY = {
    "cnn.yaml": ["--sample_rate=16000"],
    "train_ecapa_tdnn.yaml": [
        "--n_mels=20",
        "--ecapa_channels=[16,16,16,16,48]",
        "--res2net_scale=4",
        "--se_channels=8",
        "--attention_channels=8",
        "--embedding_size=16",
    ],
    "xvector.yaml": [
        "--n_mels=20",
        "--tdnn_channels=[16,16,16,16,48]",
        "--embedding_size=16",
    ],
    # CNN14's block widths are fixed (64 ... 1024); only the last one shrinks.
    "cnn14.yaml": [
        "--sample_rate=16000",
        "--n_fft=512",
        "--f_max=8000",
        "--n_mels=32",
        "--embedding_size=16",
    ],
}


def load(name, tmp_path, overrides=None):
    load_prepare_module()  # prepare: !name:urbansound8k_prepare... resolves
    overrides = {
        "data_folder": str(tmp_path / "data"),
        "output_folder": str(tmp_path / "out"),
        **(overrides or {}),
    }
    with open(HPARAMS / name, encoding="utf-8") as f:
        return load_hyperpyyaml(f, overrides)


@pytest.mark.parametrize("name", YAMLS)
def test_yaml_has_what_brain_and_crossval_need(name, tmp_path):
    hparams = load(name, tmp_path)
    missing = [k for k in REQUIRED_KEYS if k not in hparams]
    assert not missing, f"{name} lacks {missing}"
    assert sorted(hparams["modules"]) == sorted(MODULES)
    # 0: as many classes as the data has (train.py reloads the YAML with it)
    assert hparams["n_classes"] == 0
    assert hparams["skip_prep"] is False
    assert hparams["train_fold_nums"] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert hparams["valid_fold_nums"] == [9] and hparams["test_fold_nums"] == [
        10
    ]
    assert hparams["leaky_random_split"] is False
    assert str(hparams["history_file"]).startswith(str(tmp_path / "out"))
    assert str(hparams["test_results_file"]).startswith(str(tmp_path / "out"))
    assert hparams["dataloader_options"]["shuffle"] is True
    assert hparams["test_dataloader_options"]["shuffle"] is False
    # Everything with state is saved, so the best checkpoint is the whole model.
    recoverables = hparams["checkpointer"].recoverables
    assert recoverables["embedding_model"] is hparams["embedding_model"]
    assert recoverables["classifier"] is hparams["classifier"]
    assert "counter" in recoverables
    if hasattr(hparams["mean_var_norm"], "_save"):  # running statistics
        assert recoverables["normalizer"] is hparams["mean_var_norm"]


@pytest.mark.parametrize("name", YAMLS)
def test_default_sizes_fit_together(name, tmp_path):
    """The default model, as the Brain calls it, on a 1 s batch of two clips."""
    hparams = load(name, tmp_path, {"duration_ms": 1000, "n_classes": 10})
    mods = torch.nn.ModuleDict(hparams["modules"]).train()
    sample_rate, channels = hparams["sample_rate"], hparams["channels"]
    n = int(sample_rate * hparams["duration_ms"] / 1000)
    # Two stereo 44.1 kHz clips, conditioned as the recipe's data pipeline
    # does; mono models get SpeechBrain's [batch, time], in training as at
    # inference (the exported model's audio normaliser is the same class)
    conditioner = ClipConditioner(sample_rate, channels, hparams["duration_ms"])
    wavs = torch.stack(
        [
            conditioner.clip(torch.randn(30000, 2) * 0.1, 44100, True),
            conditioner.clip(torch.randn(50000, 2) * 0.1, 44100),
        ]
    )
    assert wavs.shape == ((2, n) if channels == 1 else (2, n, channels))
    lens = torch.ones(2)
    with torch.no_grad():
        feats = mods["compute_features"](wavs)
        augment = hparams.get("spec_augment")
        if augment is not None:
            assert augment(feats.clone()).shape == feats.shape
        feats = mods["mean_var_norm"](feats, lens)
        emb = mods["embedding_model"](feats, lens)
        predictions = mods["classifier"](emb)
        if predictions.dim() == 2:
            predictions = predictions.unsqueeze(1)
        assert predictions.shape == (2, 1, hparams["n_classes"])
        loss = hparams["compute_cost"](
            predictions, torch.tensor([[0], [3]]), lens
        )
    assert torch.isfinite(loss)


def key_is_commented(lines, i):
    """A top-level key has an inline comment, or a comment right above its
    group."""
    if "#" in lines[i].split(":", 1)[1]:
        return True
    j = i - 1
    while j >= 0 and re.match(r"^[A-Za-z_][\w]*:", lines[j]):
        j -= 1
    return j >= 0 and lines[j].startswith("#")


@pytest.mark.parametrize("name", NEW_YAMLS)
def test_every_key_is_commented(name):
    lines = (HPARAMS / name).read_text().splitlines()
    keys = [
        i for i, line in enumerate(lines) if re.match(r"^[A-Za-z_][\w]*:", line)
    ]
    bare = [
        lines[i].split(":")[0] for i in keys if not key_is_commented(lines, i)
    ]
    assert not bare, f"{name}: keys without a comment: {bare}"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("us8k")
    make_urbansound_tree(
        root,
        n_per_class_per_fold=2,
        folds=[1, 2, 3],
        classes=CLASSES,
        seconds=(0.3, 0.8),
    )
    return root


def run(argv, cwd=REPO, env=None):
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def check_results(out):
    res = json.loads((out / "test_results.json").read_text())
    assert res["labels"] == sorted(CLASSES)
    assert res["n_clips"] == len(CLASSES) * 2
    assert len(res["confusion_matrix"]) == len(CLASSES)
    assert all(len(row) == len(CLASSES) for row in res["confusion_matrix"])
    assert sum(map(sum, res["confusion_matrix"])) == res["n_clips"]
    assert 0.0 <= res["accuracy"] <= 1.0
    assert set(res["per_class_accuracy"]) == set(CLASSES)
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1]
    return res


# cnn.yaml's run is in the quick run (-m "not slow"); the others train and
# export larger models (CI runs them)
@pytest.mark.parametrize(
    "name",
    [YAMLS[0]] + [pytest.param(n, marks=pytest.mark.slow) for n in NEW_YAMLS],
)
def test_tiny_run_end_to_end(name, tiny_data, tmp_path):
    out = tmp_path / "out"
    result = run(
        [
            str(TRAIN_PY),
            str(HPARAMS / name),
            f"--data_folder={tiny_data}",
            f"--output_folder={out}",
            *COMMON,
            *TINY[name],
        ]
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    check_results(out)
    if name in EXPORTS:
        check_export(name, out / "model")


# What exports to which format (docs/inference.md lists the same); cnn.yaml is
# exported in tests/test_export.py. A refusal names the model and the reason.
EXPORTS = {
    "train_ecapa_tdnn.yaml": {"onnx": False, "torchscript": False},
    "xvector.yaml": {"onnx": False, "torchscript": True},
    "cnn14.yaml": {"onnx": True, "torchscript": True},
}


def check_export(name, folder):
    from sb_urbansound.serving.export import FILES, PROB_TOLERANCE, export_model

    lines = []
    results = export_model(folder, log=lines.append)
    for fmt, expected in EXPORTS[name].items():
        result = results[fmt]
        if expected:
            assert "error" not in result, result
            assert result["top1_agree"] == result["clips"]
            assert result["max_abs_diff"] <= PROB_TOLERANCE
        else:
            assert "cannot be exported to " + fmt in result["error"], result
            assert not (folder / FILES[fmt]).exists()
    print(name, *lines, sep="\n")


def doc_blocks(language):
    """The fenced code blocks of docs/models.md in ``language``."""
    text = (REPO / "docs" / "models.md").read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def replace_top_level(yaml_text, key, new=""):
    """Replace the top-level ``key`` entry (its line and indented lines)."""
    lines = yaml_text.splitlines(keepends=True)
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"{key}:"))
    end = start + 1
    while end < len(lines) and (
        lines[end].startswith(" ") or not lines[end].strip()
    ):
        end += 1
    return "".join(lines[:start]) + new + "".join(lines[end:])


def doc_command(name):
    """The documented command line that runs ``name``: (environment, argv).

    ``VAR=value`` words before ``python`` go to the environment; the
    repository's placeholder path is this repository.
    """
    (block,) = [b for b in doc_blocks("bash") if name in b]
    (line,) = [ln for ln in block.splitlines() if name in ln]
    words = shlex.split(line.replace("/path/to/sb-urbansound", str(REPO)))
    env = {}
    while "=" in words[0]:
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    assert words[0] == "python", line
    return env, words[1:]


def test_own_model_example_from_the_docs(tiny_data, tmp_path):
    """docs/models.md: my_models.py + a copy of cnn.yaml with two entries
    swapped."""
    (module,) = [b for b in doc_blocks("python") if "class " in b]
    (snippet,) = [b for b in doc_blocks("yaml") if "embedding_model:" in b]
    user = tmp_path / "user"
    user.mkdir()
    (user / "my_models.py").write_text(module)
    text = (REPO / "hparams" / "cnn.yaml").read_text()
    text = replace_top_level(text, "classifier")
    text = replace_top_level(text, "embedding_model", snippet + "\n")
    assert text.count("\nclassifier:") == 1
    (user / "my_model.yaml").write_text(text)
    out = tmp_path / "out"
    # The docs' command, run from the folder holding my_models.py; the data
    # folder is ours and the run tiny
    env, argv = doc_command("my_model.yaml")
    assert env == {"PYTHONPATH": "."}
    assert argv[:2] == [str(REPO / "train.py"), "my_model.yaml"]
    assert [a.split("=")[0] for a in argv[2:]] == ["--data_folder"]
    result = run(
        [
            *argv[:2],
            f"--data_folder={tiny_data}",
            f"--output_folder={out}",
            # n_classes as the copy of cnn.yaml has it: 0, from the data
            *[a for a in COMMON if not a.startswith("--n_classes=")],
            "--sample_rate=16000",
        ],
        cwd=user,
        env=env,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    check_results(out)
    hyper = (out / "hyperparams.yaml").read_text()
    assert "my_models.TinyConvEmbedding" in hyper
    assert re.search(r"^n_classes: 3$", hyper, flags=re.M)
