"""Test-time averaging over shifted views: used in validation and test, kept
in the exported model, and applied by ``classify`` the way the test did."""

import json
import subprocess
import sys

import pytest
import torch
from helpers import HPARAMS, REPO
from sb_urbansound.data.audio import ClipConditioner, load_audio
from sb_urbansound.serving.classify import classify_files
from sb_urbansound.serving.inference import load_model
from sb_urbansound.training.augment import average_views, circular_views

DIGITS = REPO / "tests" / "samples" / "UrbanSound8k" / "digits"


@pytest.fixture(scope="module")
def fsdd_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tta") / "out"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            str(HPARAMS / "fsdd.yaml"),
            f"--data_folder={DIGITS}",
            f"--output_folder={out}",
            "--n_folds=3",
            "--train_fold_nums=[1]",
            "--valid_fold_nums=[2]",
            "--test_fold_nums=[3]",
            "--number_of_epochs=3",
            "--batch_size=2",
            "--duration_ms=300",
            "--noprogressbar",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_views_roll_and_average():
    x = torch.arange(6.0).view(1, 6)
    views = circular_views(x, 3, 4)
    assert views.shape == (3, 6)
    assert [torch.nonzero(v == 0).item() for v in views] == [0, 2, 4]
    logp = torch.log_softmax(torch.randn(3 * 2, 1, 4), dim=-1)
    avg = average_views(logp, 3)
    expected = logp.exp().view(3, 2, 1, 4).mean(0).log()
    assert torch.allclose(avg, expected, atol=1e-6)


def test_exported_model_scores_with_the_views_of_the_test(fsdd_run):
    model_dir = fsdd_run / "model"
    text = (model_dir / "hyperparams.yaml").read_text()
    assert "tta_views: 5" in text and "tta_max_shift: 0.15" in text
    model = load_model(model_dir)
    manifest = json.loads((fsdd_run / "manifests" / "test.json").read_text())
    clip = next(iter(manifest.values()))["wav"]

    # By hand: the 5 shifted views of the padded clip, probabilities averaged
    cond = ClipConditioner(8000, 1, 300, remove_dc=True)
    wav = cond(*load_audio(clip))
    views = circular_views(wav.unsqueeze(0), 5, round(0.15 * wav.shape[0]))
    with torch.no_grad():
        feats = model.mods.compute_features(views)
        feats = model.mods.mean_var_norm(feats, torch.ones(5))
        out = model.mods.classifier(model.mods.embedding_model(feats))
    expected = torch.softmax(out.view(5, -1), -1).mean(0)

    (got,) = classify_files(model, [clip], top_k=10, progress=False)
    probs = {item["label"]: item["prob"] for item in got["top_k"]}
    labels = model.hparams.label_encoder.ind2lab
    for i, p in enumerate(expected.tolist()):
        assert probs[labels[i]] == pytest.approx(p, abs=1e-5)


def test_classify_agrees_with_the_recipes_test(fsdd_run):
    # The recipe's test and classify score every test clip the same way, so
    # their confusion matrices are the same
    results = json.loads((fsdd_run / "test_results.json").read_text())
    manifest = json.loads((fsdd_run / "manifests" / "test.json").read_text())
    model = load_model(fsdd_run / "model")
    found = classify_files(
        model, [e["wav"] for e in manifest.values()], progress=False
    )
    labels = results["labels"]
    matrix = [[0] * len(labels) for _ in labels]
    for entry, result in zip(manifest.values(), found):
        matrix[labels.index(entry["label"])][labels.index(result["label"])] += 1
    assert matrix == results["confusion_matrix"]
