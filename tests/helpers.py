"""Test helpers: generated audio in the real data set's formats, and shared
paths.

Nothing here downloads anything. Audio is synthesised so that each class has
its own spectral signature (a tone whose frequency depends on the class, with
noise), which a small model can learn in a few epochs.
"""

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
US8K_CSV = SHARED / "data" / "UrbanSound8K" / "metadata" / "UrbanSound8K.csv"
FSDD_DIR = SHARED / "data" / "fsdd" / "recordings"

requires_us8k_csv = pytest.mark.skipif(
    not US8K_CSV.exists(),
    reason=(
        f"needs the real UrbanSound8K metadata at {US8K_CSV} "
        "(../shared is absent)"
    ),
)
requires_fsdd = pytest.mark.skipif(
    not FSDD_DIR.is_dir(),
    reason=(
        f"needs the spoken-digit recordings at {FSDD_DIR} (../shared is absent)"
    ),
)

US8K_CLASSES = [
    "air_conditioner",
    "car_horn",
    "children_playing",
    "dog_bark",
    "drilling",
    "engine_idling",
    "gun_shot",
    "jackhammer",
    "siren",
    "street_music",
]
US8K_COLUMNS = [
    "slice_file_name",
    "fsID",
    "start",
    "end",
    "salience",
    "fold",
    "classID",
    "class",
]

# (sample rate, channels, soundfile subtype): the mix found in the real data
# set.
FORMATS = [
    (44100, 2, "PCM_16"),
    (48000, 2, "PCM_24"),
    (44100, 1, "PCM_16"),
    (96000, 2, "PCM_24"),
    (22050, 1, "PCM_U8"),
    (8000, 1, "PCM_16"),
    (48000, 1, "FLOAT"),
    (16000, 2, "PCM_16"),
]


def class_frequency(class_idx, n_classes=10):
    """Tone frequency (Hz) of a class: log-spaced between 150 Hz and 3.5 kHz."""
    return 150.0 * (3500.0 / 150.0) ** (class_idx / max(n_classes - 1, 1))


def class_signal(
    class_idx, sample_rate, seconds, channels, seed=0, n_classes=10
):
    """A [frames, channels] float32 signal whose spectrum identifies the
    class."""
    rng = np.random.default_rng(seed)
    n = max(int(round(seconds * sample_rate)), 1)
    t = np.arange(n) / sample_rate
    f = class_frequency(class_idx, n_classes) * rng.uniform(0.97, 1.03)
    tone = np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    tone += 0.5 * np.sin(2 * np.pi * 2 * f * t)
    sig = 0.3 * tone + 0.05 * rng.standard_normal(n)
    sig *= rng.uniform(0.3, 1.0)
    out = np.stack([sig * (1.0 - 0.2 * c) for c in range(channels)], axis=1)
    return np.clip(out, -1, 1).astype(np.float32)


def write_clip(
    path,
    class_idx=0,
    sample_rate=44100,
    channels=1,
    seconds=1.0,
    subtype="PCM_16",
    seed=0,
    n_classes=10,
):
    """Write one generated clip to ``path`` (format from the suffix) and
    return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = class_signal(
        class_idx, sample_rate, seconds, channels, seed, n_classes
    )
    sf.write(str(path), data, sample_rate, subtype=subtype)
    return path


def make_urbansound_tree(
    root,
    n_per_class_per_fold=2,
    folds=range(1, 11),
    classes=US8K_CLASSES,
    seconds=(1.0, 4.5),
    formats=FORMATS,
    seed=0,
):
    """Build a small UrbanSound8K-shaped data set under ``root``.

    Writes ``metadata/UrbanSound8K.csv`` (the real columns) and
    ``audio/fold{k}/{fsID}-{classID}-0-{i}.wav`` in a cycle of real-world
    formats, with durations drawn from ``seconds``. Each recording (fsID)
    stays in one fold.

    Returns the list of row dicts written to the CSV.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    rows = []
    k = 0
    for fold in folds:
        for class_id, name in enumerate(classes):
            fs_id = 1000 * fold + class_id
            for i in range(n_per_class_per_fold):
                sr, ch, subtype = formats[k % len(formats)]
                dur = float(rng.uniform(*seconds))
                fname = f"{fs_id}-{class_id}-0-{i}.wav"
                write_clip(
                    root / "audio" / f"fold{fold}" / fname,
                    class_id,
                    sr,
                    ch,
                    dur,
                    subtype,
                    seed=seed * 100003 + k,
                    n_classes=len(classes),
                )
                rows.append(
                    {
                        "slice_file_name": fname,
                        "fsID": fs_id,
                        "start": 0.0,
                        "end": dur,
                        "salience": 1,
                        "fold": fold,
                        "classID": class_id,
                        "class": name,
                    }
                )
                k += 1
    meta = root / "metadata"
    meta.mkdir(parents=True, exist_ok=True)
    with open(meta / "UrbanSound8K.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=US8K_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def write_us8k_csv(path, rows, columns=US8K_COLUMNS):
    """Write UrbanSound8K-style metadata ``rows`` (dicts) to ``path``; return
    it.

    Keys of a row that are not in ``columns`` are left out, so a column can be
    dropped by passing ``columns`` without it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(
            f, fieldnames=list(columns), extrasaction="ignore"
        )
        writer.writeheader()
        writer.writerows(rows)
    return path


def snapshot_tree(root):
    """``{relative path: (size, mtime_ns)}`` of every file and folder under
    root.

    Compare two snapshots to check that a function modified nothing in ``root``.
    """
    root = Path(root)
    snap = {}
    for p in sorted(root.rglob("*")):
        st = p.stat()
        snap[p.relative_to(root).as_posix()] = (
            st.st_size if p.is_file() else None,
            st.st_mtime_ns,
        )
    return snap


# Command-line overrides for a tiny, fast run of hparams/cnn.yaml on data from
# make_urbansound_tree(root, n, folds=[1, 2, 3, 4], classes=US8K_CLASSES[:4]):
# 16 kHz stereo (cnn.yaml is mono: the tests' models also cover the up-mix).
TINY_CNN_ARGS = [
    "--sample_rate=16000",
    "--channels=2",
    "--duration_ms=1000",
    "--n_classes=0",
    "--num_workers=0",
    "--download=False",
    "--batch_size=8",
    "--train_fold_nums=[1,2]",
    "--valid_fold_nums=[3]",
    "--test_fold_nums=[4]",
]

# The recipe, in SpeechBrain's layout (the top-level train.py and hparams/ are
# links into it).
RECIPE = REPO / "recipes" / "UrbanSound8k" / "SoundClassification"
HPARAMS = RECIPE / "hparams"
TRAIN_PY = RECIPE / "train.py"


def load_recipe():
    """The recipe's ``train.py`` as a module (its folder goes on sys.path)."""
    from sb_urbansound.training.crossval import import_recipe

    return import_recipe(TRAIN_PY)


def load_prepare_module():
    """The recipe's ``urbansound8k_prepare.py`` as a module."""
    import importlib

    if str(RECIPE) not in sys.path:
        sys.path.insert(0, str(RECIPE))
    return importlib.import_module("urbansound8k_prepare")


def _can_mount_tmpfs():
    """Whether this machine lets a test mount a small tmpfs (in a private
    mount namespace, with ``unshare``), to fill a disk for real."""
    import shutil
    import tempfile

    if shutil.which("unshare") is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        cmd = f"mount -t tmpfs -o size=1m tmpfs {tmp} && touch {tmp}/x"
        try:
            result = subprocess.run(
                ["unshare", "-m", "sh", "-c", cmd],
                capture_output=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
    return result.returncode == 0


CAN_MOUNT = _can_mount_tmpfs()
_skip_without_mount = pytest.mark.skipif(
    not CAN_MOUNT,
    reason="needs `unshare -m` and mount permission (a real full or "
    "read-only file system in a private mount namespace)",
)


def requires_mount(test):
    """Skip ``test`` where no file system can be mounted, and mark it slow:
    it starts a Python that loads torch, in a private mount namespace."""
    return pytest.mark.slow(_skip_without_mount(test))


def run_in_namespace(setup, cmd, **kwargs):
    """Run ``cmd`` after the shell commands ``setup`` (mounts), in a private
    mount namespace: what is mounted there is gone when it ends."""
    import shlex

    script = f"{setup} && exec {shlex.join(str(c) for c in cmd)}"
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=kwargs.pop("timeout", 600),
        **kwargs,
    )


#: The data memory (heap and anonymous maps) a test's subprocess may take: a
#: command that loads torch, SpeechBrain and a model uses less than 1 GiB.
MEMORY_LIMIT = 2 << 30


def run_with_memory_limit(cmd, limit=MEMORY_LIMIT, **kwargs):
    """Run ``cmd`` with its data memory limited to ``limit`` bytes
    (``RLIMIT_DATA``: an allocation past it fails at once, however much
    memory the machine has)."""
    import resource

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

    env = {**os.environ, "OMP_NUM_THREADS": "1", **kwargs.pop("env", {})}
    return subprocess.run(
        [str(c) for c in cmd],
        preexec_fn=limit_memory,
        capture_output=True,
        env=env,
        timeout=kwargs.pop("timeout", 300),
        **kwargs,
    )


NO_NETWORK = textwrap.dedent(
    """
    import socket

    def _blocked(*args, **kwargs):
        raise OSError("network access attempted during an offline test")

    socket.socket.connect = _blocked
    socket.socket.connect_ex = _blocked
    socket.create_connection = _blocked
    socket.getaddrinfo = _blocked
    """
)


def offline_env(tmp_path, *paths):
    """Environment for a subprocess with sockets blocked (via sitecustomize)."""
    site = tmp_path / "offline_site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(NO_NETWORK)
    pythonpath = os.pathsep.join(
        str(p) for p in [site, *paths, os.environ.get("PYTHONPATH", "")] if p
    )
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": pythonpath,
        "HF_HUB_OFFLINE": "1",
    }


#: Run first by every torch-free script: any import of BLOCKED fails
BLOCK_TORCH = textwrap.dedent(
    """
    import sys
    BLOCKED = ("torch", "torchaudio", "speechbrain", "hyperpyyaml")
    for name in BLOCKED:
        sys.modules[name] = None
    """
)


def run_without_torch(script, tmp_path, *args):
    """Run a Python ``script`` with ``args`` in tmp_path (one thread), torch,
    torchaudio, SpeechBrain and HyperPyYAML blocked (:data:`BLOCK_TORCH`)."""
    return subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH + script, *map(str, args)],
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
