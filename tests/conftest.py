"""Fixtures shared by several test files, built once per test session.

Training the tiny model is the most expensive step of the tests; the files
that need a trained ``cnn.yaml`` model (training, inference, the runtime)
share one run. A test that changes the run's folder copies it first.
"""

import subprocess
import sys

import pytest
from helpers import (
    REPO,
    TINY_CNN_ARGS,
    US8K_CLASSES,
    make_urbansound_tree,
    offline_env,
)


@pytest.fixture(scope="session", autouse=True)
def child_tmpdir(tmp_path_factory):
    """The processes the tests start keep their temporary files under
    pytest's folder, not in /tmp: one killed on purpose leaves behind what
    it would have removed at exit (multiprocessing's ``pymp-*`` folders,
    torchrun's ``torchelastic_*``)."""
    folder = tmp_path_factory.mktemp("child-tmp")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(folder))
        yield folder


@pytest.fixture(scope="session")
def tiny_us8k(tmp_path_factory):
    """A small UrbanSound8K-shaped tree: 4 classes x 4 folds x 6 clips of
    0.4-1.2 s (read only: a test that changes it makes its own)."""
    root = tmp_path_factory.mktemp("tiny_us8k")
    make_urbansound_tree(
        root,
        n_per_class_per_fold=6,
        folds=[1, 2, 3, 4],
        classes=US8K_CLASSES[:4],
        seconds=(0.4, 1.2),
    )
    return root


#: The tiny model's training: 12 epochs of ``cnn.yaml`` on ``tiny_us8k``.
TINY_TRAIN_ARGS = [
    *TINY_CNN_ARGS,
    "--number_of_epochs=12",
    "--lr=0.01",
    "--max_lr=0.01",
]


@pytest.fixture(scope="session")
def tiny_cnn_run(tiny_us8k, tmp_path_factory):
    """``train.py hparams/cnn.yaml`` run once on ``tiny_us8k`` with
    ``TINY_TRAIN_ARGS``, sockets blocked: (output folder, data folder).
    Read only: a test that changes the folder copies it."""
    root = tmp_path_factory.mktemp("tiny_cnn_run")
    out = root / "out"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            str(REPO / "hparams" / "cnn.yaml"),
            f"--data_folder={tiny_us8k}",
            f"--output_folder={out}",
            *TINY_TRAIN_ARGS,
        ],
        cwd=REPO,
        env=offline_env(root),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out, tiny_us8k
