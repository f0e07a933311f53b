#!/usr/bin/env python3
"""Throughput benchmark: the tutorial, the recipe as users run it, the ceiling.

Makes its own clips in UrbanSound8K's formats (mostly 44.1 and 48 kHz stereo,
16- and 24-bit; some 96 kHz, some mono, some other rates; 16 % shorter than
4 s), written as an UrbanSound8K tree (``metadata/UrbanSound8K.csv``,
``audio/fold{k}/``): fold 1 trains, fold 9 validates (evaluation), fold 10 is
the recipe's test set. Every configuration runs in its own child process, on
the same clips. All share 4 s clips, 64 mels, the CNN 8/16/32/64, Adam +
one-cycle and batch ``--batch-size``; the input differs (both printed):

* the tutorial runs as written: 44.1 kHz stereo, n_fft 1024, hop 512;
* the recipe and the ceiling use ``hparams/cnn.yaml``'s input: 22.05 kHz
  mono, n_fft 512, hop 256 (the same 23 ms windows, 11.6 ms hop and 345
  frames; the same accuracy on the real folds, ``docs/accuracy.md``).

The configurations:

* ``tutorial``, ``tutorial-1thread``: the tutorial's pipeline, written out
  below as it is in the tutorial (a torch ``Dataset`` that opens, resamples
  with a new ``Resample`` per clip and channel, rechannels, pads, shifts,
  builds a ``MelSpectrogram`` and masks per clip; a ``DataLoader`` without
  workers; cross-entropy on logits; per-batch normalisation), at torch's
  default threads and at one thread. Speedups are taken against the faster;
* ``recipe-per-clip``, ``recipe-bank``, ``recipe-feature-bank`` and
  ``recipe-bank-large`` (the bank at ``--large-batch``): the recipe's own
  ``main()`` (``train.py``, loaded with ``sb_urbansound.training.crossval``)
  on the real ``hparams/cnn.yaml`` with command-line overrides (data folder,
  output folder, folds, epochs, ``data_source``, batch size): data
  preparation, clip bank, training with validation every epoch, test of the
  best checkpoint, model export. ``main()`` runs unchanged; to time its
  phases the child replaces, before calling it, some of the recipe module's
  names by wrappers that only take timestamps (``prepare_data``,
  ``load_hyperpyyaml``, ``dataio_prep``, and ``SoundClassifierBrain`` by a
  subclass), and so does ``sb_urbansound.data.loader`` (``build_clip_bank``,
  ``DataSource.use_bank``);
* ``ceiling``, ``ceiling-large``: a plain PyTorch loop, no SpeechBrain and no
  DataLoader, with every clip already decoded and held as int16 in device
  memory (decoded beforehand, untimed, into a clip bank), doing per batch
  exactly the recipe's steps: random placement (one roll per clip), mel
  spectrogram in dB, SpecAugment, batch standardisation, the CNN, NLL, Adam,
  one-cycle. It syncs with the host once per epoch only: the best a training
  loop can do with these models on this machine.

How to read the table:

* ``train/s``: training clips per second over epochs 2..N (the first epoch,
  with worker start-up, allocator and cuDNN warm-up, is excluded; with
  ``--epochs 1`` it is epoch 1, marked ``*``); ``ep1/s`` is epoch 1 alone.
  An epoch is timed from the start of its training stage to its end (for
  the recipe: ``on_stage_start`` to ``on_stage_end``, loader start included);
* ``eval/s``: evaluation clips per second (no augmentation; validation passes
  2..N when there are several, else the one pass; checkpointing excluded);
* ``cpu ms``: CPU time per training clip over the same epochs, of the
  process and of its live children (DataLoader workers);
* ``rss``: peak resident memory (MB) of the process; ``child``: the largest
  peak of its child processes (loader or decoding workers);
* ``start``: seconds from the command's start (the parent launching the
  child) to the first training step; ``exit``: seconds from the child's last
  log line on the console to its exit as the parent sees it (recipe
  configurations); ``e2e``: seconds from the command's start to its exit:
  for the recipe, data preparation, the clip bank (or shards), ``--epochs``
  epochs with validation, the test of the best checkpoint and the model
  export; for the tutorial, its epochs and its one evaluation.

The last lines are ``speedup_vs_tutorial``, ``fraction_of_ceiling``,
``fraction_of_ceiling_large_batch`` and
``us8k_10fold_30epochs_estimate_minutes`` (formula printed above them); all
numbers also go to ``--json PATH``. A value that the chosen ``--configs`` do
not allow is printed as ``nan``.

Usage::

    python bench/throughput.py --quick            # tiny smoke run
    python bench/throughput.py --clips 512 --eval-clips 128 --epochs 3
    python bench/throughput.py --device cuda:0 --clips 2048 --epochs 3
    python bench/throughput.py --configs tutorial,recipe-bank,ceiling

``--threads N`` sets ``OMP_NUM_THREADS`` for the recipe and ceiling runs
(the recipe then uses N torch threads instead of its own choice); the
tutorial runs keep theirs.

Timings on a shared machine are noisy: the script prints the load average
next to the numbers, and ``--repeats N`` runs every configuration N times,
interleaved, and keeps each one's fastest run.
"""

import argparse
import csv
import json
import logging
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "UrbanSound8k" / "SoundClassification"
CNN_YAML = RECIPE / "hparams" / "cnn.yaml"
sys.path.insert(0, str(REPO))

CLASSES = [
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
TRAIN_FOLD, VALID_FOLD, TEST_FOLD = 1, 9, 10

# (sample rate, channels, subtype, share): close to UrbanSound8K's mix (61 % at
# 44.1 kHz, 29 % at 48 kHz, 7 % at 96 kHz; 92 % stereo; a third 24-bit).
FORMATS = [
    (44100, 2, "PCM_16", 0.44),
    (44100, 2, "PCM_24", 0.10),
    (48000, 2, "PCM_16", 0.10),
    (48000, 2, "PCM_24", 0.17),
    (96000, 2, "PCM_24", 0.07),
    (44100, 1, "PCM_16", 0.06),
    (48000, 1, "PCM_16", 0.02),
    (22050, 1, "PCM_16", 0.02),
    (24000, 2, "PCM_16", 0.01),
    (192000, 2, "PCM_24", 0.01),
]
# Share of clips shorter than 4 s (UrbanSound8K: 16 %).
SHORT_SHARE = 0.16
# UrbanSound8K, for the estimate of its 10-fold protocol at 30 epochs.
US8K_CLIPS = 8732
US8K_TRAIN_CLIPS = 7860
US8K_VALID_CLIPS = 873
US8K_TEST_CLIPS = 873
US8K_FOLDS = 10
US8K_EPOCHS = 30

CONFIGS = {
    "tutorial": {"kind": "tutorial"},
    "tutorial-1thread": {"kind": "tutorial", "threads": 1},
    "recipe-per-clip": {"kind": "recipe", "data_source": "files"},
    "recipe-bank": {"kind": "recipe", "data_source": "bank"},
    "recipe-bank-large": {
        "kind": "recipe",
        "data_source": "bank",
        "large": True,
    },
    "recipe-feature-bank": {"kind": "recipe", "data_source": "feature_bank"},
    "recipe-shards": {"kind": "recipe", "data_source": "shards"},
    "ceiling": {"kind": "ceiling"},
    "ceiling-large": {"kind": "ceiling", "large": True},
}
RESULT_MARK = "BENCH_RESULT "
TUTORIAL_INPUT = "44.1 kHz stereo, n_fft 1024, hop 512 (as written)"


# ----------------------------------------------------------------------- data
def make_clip(rng, class_idx, sample_rate, channels, seconds):
    """A clip whose spectrum identifies its class: tone, harmonic, noise
    bursts."""
    n = max(int(round(seconds * sample_rate)), 1)
    t = np.arange(n) / sample_rate
    freq = (
        150.0 * (3500.0 / 150.0) ** (class_idx / 9.0) * rng.uniform(0.95, 1.05)
    )
    sig = np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
    sig += 0.4 * np.sin(2 * np.pi * 2.01 * freq * t)
    sig *= 1.0 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.5, 4.0) * t)
    sig = 0.25 * sig + 0.08 * rng.standard_normal(n)
    sig *= rng.uniform(0.1, 1.0)
    out = np.stack([sig * (1.0 - 0.15 * c) for c in range(channels)], axis=1)
    return np.clip(out, -1, 1)


def make_dataset(folder, n_train, n_eval, seed=0, max_seconds=4.0):
    """Write an UrbanSound8K-shaped tree under ``folder``; reuse an equal one.

    ``n_train`` clips in fold 1, ``n_eval`` in fold 9 and ``n_eval`` in fold
    10, classes in turn, each clip its own recording (``fsID``).
    """
    folder = Path(folder)
    spec = {"n_train": n_train, "n_eval": n_eval, "seed": seed}
    spec["max"] = max_seconds
    done = folder / "dataset.json"
    if done.exists() and json.loads(done.read_text()) == spec:
        return
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(seed)
    shares = np.array([f[3] for f in FORMATS])
    rows = []
    for fold, n in ((TRAIN_FOLD, n_train), (VALID_FOLD, n_eval)):
        rows += _write_fold(folder, fold, n, rng, shares, max_seconds)
    rows += _write_fold(folder, TEST_FOLD, n_eval, rng, shares, max_seconds)
    meta = folder / "metadata"
    meta.mkdir(parents=True, exist_ok=True)
    with open(meta / "UrbanSound8K.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    done.write_text(json.dumps(spec))


def _write_fold(folder, fold, n, rng, shares, max_seconds):
    """Write the clips of one fold; return their CSV rows."""
    rows = []
    for i in range(n):
        sr, ch, subtype, _ = FORMATS[rng.choice(len(FORMATS), p=shares)]
        class_id = i % len(CLASSES)
        seconds = max_seconds
        if rng.random() < SHORT_SHARE:
            seconds = float(rng.uniform(0.3, max_seconds))
        fs_id = 100000 * fold + i
        name = f"{fs_id}-{class_id}-0-{i}.wav"
        path = folder / "audio" / f"fold{fold}" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        clip = make_clip(rng, class_id, sr, ch, seconds)
        sf.write(path, clip, sr, subtype=subtype)
        rows.append(
            {
                "slice_file_name": name,
                "fsID": fs_id,
                "start": 0.0,
                "end": seconds,
                "salience": 1,
                "fold": fold,
                "classID": class_id,
                "class": CLASSES[class_id],
            }
        )
    return rows


def read_fold(data_folder, fold):
    """``[(audio path, classID)]`` of one fold, read from the CSV."""
    data_folder = Path(data_folder)
    with open(data_folder / "metadata" / "UrbanSound8K.csv") as f:
        return [
            (
                str(
                    data_folder
                    / "audio"
                    / f"fold{r['fold']}"
                    / r["slice_file_name"]
                ),
                int(r["classID"]),
            )
            for r in csv.DictReader(f)
            if int(r["fold"]) == fold
        ]


def recipe_input(data_folder):
    """The input settings of the recipe and ceiling runs (cnn.yaml's)."""
    from sb_urbansound.training.experiment import read_yaml_values

    h = read_yaml_values(CNN_YAML, f"data_folder: {data_folder}")
    return (
        f"recipe and ceiling ({CNN_YAML.relative_to(REPO)}) "
        f"{h['sample_rate'] / 1000:g} kHz, {h['channels']} channel(s), "
        f"n_fft {h['n_fft']}, hop {h['hop_length']}"
    )


# ----------------------------------------------------------- measuring tools
def _children():
    """Process ids of this process's live children."""
    me, pids = os.getpid(), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            pids.append(int(stat.parent.name))
    return pids


def cpu_seconds():
    """User + system CPU seconds of this process and of all its children.

    Reaped children come from ``os.times``; live ones (persistent DataLoader
    workers) from ``/proc/<pid>/stat``.
    """
    t = os.times()
    total = t.user + t.system + t.children_user + t.children_system
    tick = os.sysconf("SC_CLK_TCK")
    for pid in _children():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1]
        except OSError:
            continue
        fields = fields.split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _vm_hwm_mb(pid="self"):
    """Peak resident memory (VmHWM) of a process, MB (0 if unreadable)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def children_peak_rss_mb():
    """The largest peak RSS among live and reaped children, MB."""
    live = [_vm_hwm_mb(pid) for pid in _children()]
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    return max([reaped, *live])


def load_average():
    """The 1-minute load average (a shared machine's timings depend on it)."""
    return os.getloadavg()[0]


def sync(device):
    """Wait for the device's queued work, so that a timing is complete."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class Meter:
    """Wall and CPU time of each training epoch and evaluation pass.

    ``start()`` then ``stop(kind, clips)`` around a pass; both synchronise
    the device first. ``step()`` stamps the first training step.
    """

    def __init__(self, device):
        self.device = device
        self.passes = {"train": [], "eval": [], "test": []}
        self.first_step = None
        self.child_rss_mb = 0.0
        self.clips = 0
        self._start = None

    def start(self):
        sync(self.device)
        self.clips = 0
        self._start = (time.perf_counter(), cpu_seconds())

    def stop(self, kind, clips=None):
        sync(self.device)
        wall, cpu = self._start
        self.passes[kind].append(
            {
                "s": time.perf_counter() - wall,
                "cpu_s": cpu_seconds() - cpu,
                "clips": self.clips if clips is None else clips,
            }
        )
        self.child_rss_mb = max(self.child_rss_mb, children_peak_rss_mb())

    def step(self):
        if self.first_step is None:
            self.first_step = time.time()


# ------------------------------------------------- (a) the tutorial, faithfully
def tutorial_components():
    """The tutorial's AudioUtil, SoundDS and model (imports torch lazily)."""
    import torch
    import torchaudio
    from sb_urbansound.training.models import CNNEmbedding
    from torchaudio import transforms

    class AudioUtil:
        """The tutorial's per-clip steps (``torchaudio.load`` → soundfile)."""

        @staticmethod
        def open(audio_file):
            data, sr = sf.read(audio_file, dtype="float32", always_2d=True)
            return (torch.from_numpy(data).t(), sr)

        @staticmethod
        def rechannel(aud, new_channel):
            sig, sr = aud
            if sig.shape[0] == new_channel:
                return aud
            if new_channel == 1:
                resig = sig[:1, :]
            else:
                resig = torch.cat([sig, sig])
            return (resig, sr)

        @staticmethod
        def resample(aud, newsr):
            sig, sr = aud
            if sr == newsr:
                return aud
            num_channels = sig.shape[0]
            resig = torchaudio.transforms.Resample(sr, newsr)(sig[:1, :])
            if num_channels > 1:
                retwo = torchaudio.transforms.Resample(sr, newsr)(sig[1:, :])
                resig = torch.cat([resig, retwo])
            return (resig, newsr)

        @staticmethod
        def pad_trunc(aud, max_ms, random_pad=True):
            sig, sr = aud
            num_rows, sig_len = sig.shape
            max_len = sr // 1000 * max_ms
            if sig_len > max_len:
                sig = sig[:, :max_len]
            elif sig_len < max_len:
                pad_begin_len = (
                    random.randint(0, max_len - sig_len) if random_pad else 0
                )
                pad_end_len = max_len - sig_len - pad_begin_len
                pad_begin = torch.zeros((num_rows, pad_begin_len))
                pad_end = torch.zeros((num_rows, pad_end_len))
                sig = torch.cat((pad_begin, sig, pad_end), 1)
            return (sig, sr)

        @staticmethod
        def time_shift(aud, shift_limit):
            sig, sr = aud
            _, sig_len = sig.shape
            shift_amt = int(random.random() * shift_limit * sig_len)
            return (sig.roll(shift_amt), sr)

        @staticmethod
        def spectro_gram(aud, n_mels=64, n_fft=1024, hop_len=None):
            sig, sr = aud
            top_db = 80
            spec = transforms.MelSpectrogram(
                sr, n_fft=n_fft, hop_length=hop_len, n_mels=n_mels
            )(sig)
            spec = transforms.AmplitudeToDB(top_db=top_db)(spec)
            return spec

        @staticmethod
        def spectro_augment(
            spec, max_mask_pct=0.1, n_freq_masks=1, n_time_masks=1
        ):
            _, n_mels, n_steps = spec.shape
            mask_value = spec.mean()
            aug_spec = spec
            freq_mask_param = max_mask_pct * n_mels
            for _ in range(n_freq_masks):
                aug_spec = transforms.FrequencyMasking(freq_mask_param)(
                    aug_spec, mask_value
                )
            time_mask_param = max_mask_pct * n_steps
            for _ in range(n_time_masks):
                aug_spec = transforms.TimeMasking(time_mask_param)(
                    aug_spec, mask_value
                )
            return aug_spec

    class SoundDS(torch.utils.data.Dataset):
        """The tutorial's dataset; ``train=False`` skips the augmentation."""

        def __init__(self, items, train=True):
            self.items = items
            self.train = train
            self.duration = 4000
            self.sr = 44100
            self.channel = 2
            self.shift_pct = 0.4

        def __len__(self):
            return len(self.items)

        def __getitem__(self, idx):
            audio_file, class_id = self.items[idx]
            aud = AudioUtil.open(audio_file)
            reaud = AudioUtil.resample(aud, self.sr)
            rechan = AudioUtil.rechannel(reaud, self.channel)
            dur_aud = AudioUtil.pad_trunc(rechan, self.duration, self.train)
            if self.train:
                dur_aud = AudioUtil.time_shift(dur_aud, self.shift_pct)
            sgram = AudioUtil.spectro_gram(
                dur_aud, n_mels=64, n_fft=1024, hop_len=None
            )
            if self.train:
                sgram = AudioUtil.spectro_augment(
                    sgram, max_mask_pct=0.1, n_freq_masks=2, n_time_masks=2
                )
            return sgram, class_id

    class AudioClassifier(torch.nn.Module):
        """The tutorial's network: the recipe's CNNEmbedding + a linear
        layer."""

        def __init__(self):
            super().__init__()
            self.embedding = CNNEmbedding(in_channels=2)
            self.lin = torch.nn.Linear(in_features=64, out_features=10)

        def forward(self, x):
            return self.lin(self.embedding(x).squeeze(1))

    return SoundDS, AudioClassifier


def run_tutorial(cfg, stamps):
    """Train and evaluate the tutorial's pipeline (timed per epoch)."""
    import torch

    stamps["imported"] = time.time()
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    random.seed(cfg["seed"])
    device = torch.device(cfg["device"])
    meter = Meter(device)
    SoundDS, AudioClassifier = tutorial_components()
    data = cfg["data_folder"]
    train_ds = SoundDS(read_fold(data, TRAIN_FOLD), train=True)
    val_ds = SoundDS(read_fold(data, VALID_FOLD), train=False)
    bs = cfg["batch_size"]
    train_dl = torch.utils.data.DataLoader(
        train_ds, batch_size=bs, shuffle=True
    )
    val_dl = torch.utils.data.DataLoader(val_ds, batch_size=bs, shuffle=False)

    model = AudioClassifier().to(device)
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
    epochs = cfg["epochs"]
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=0.001,
        steps_per_epoch=int(len(train_dl)),
        epochs=epochs,
        anneal_strategy="linear",
    )
    for _ in range(epochs):
        meter.start()
        model.train()
        for data in train_dl:
            meter.step()
            inputs, targets = data[0].to(device), data[1].to(device)
            inputs_m, inputs_s = inputs.mean(), inputs.std()
            inputs = (inputs - inputs_m) / inputs_s
            optimizer.zero_grad()
            outputs = model(inputs)
            loss = criterion(outputs, targets)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss.item()
            meter.clips += len(targets)
        meter.stop("train")

    model.eval()
    correct = 0
    meter.start()
    with torch.no_grad():
        for data in val_dl:
            inputs, targets = data[0].to(device), data[1].to(device)
            inputs_m, inputs_s = inputs.mean(), inputs.std()
            inputs = (inputs - inputs_m) / inputs_s
            outputs = model(inputs)
            _, prediction = torch.max(outputs, 1)
            correct += (prediction == targets).sum().item()
            meter.clips += len(targets)
    meter.stop("eval")
    return meter, {"accuracy": correct / max(len(val_ds), 1)}


# ------------------------------------------------------- (b) the recipe, as run
class FirstStep(Exception):
    """Stops a recipe run at its first training step (``bench/startup.py``)."""


def recipe_argv(cfg):
    """The recipe's command line for a configuration (hparams/cnn.yaml)."""
    train, valid, test = cfg.get("folds", (TRAIN_FOLD, VALID_FOLD, TEST_FOLD))
    return [
        str(cfg.get("hparams", CNN_YAML)),
        f"--device={cfg['device']}",
        "--noprogressbar",
        f"--data_folder={cfg['data_folder']}",
        f"--output_folder={cfg['output_folder']}",
        "--download=False",
        f"--train_fold_nums=[{train}]",
        f"--valid_fold_nums=[{valid}]",
        f"--test_fold_nums=[{test}]",
        f"--number_of_epochs={cfg['epochs']}",
        f"--batch_size={cfg['batch_size']}",
        f"--seed={cfg['seed']}",
        f"--data_source={cfg.get('data_source', 'bank')}",
    ]


def run_recipe(cfg, stamps):
    """Run the recipe's ``main()``, timestamping its phases."""
    from sb_urbansound.training.crossval import import_recipe, recipe_script

    recipe = import_recipe(recipe_script(CNN_YAML))  # torch, speechbrain, ...
    import torch

    import speechbrain as sb

    stamps["imported"] = time.time()
    meter = Meter(cfg["device"])
    info = {}

    def stamped(function, start, end):
        """``function``, stamping its start and end."""

        def wrapper(*args, **kwargs):
            if start:
                stamps[start] = time.time()
            out = function(*args, **kwargs)
            stamps[end] = time.time()
            return out

        return wrapper

    from sb_urbansound.data import loader

    build_clip_bank = loader.build_clip_bank
    use_bank = loader.DataSource.use_bank

    def timed_build_clip_bank(*args):
        stamps["bank_start"] = time.time()
        bank = build_clip_bank(*args)
        stamps["bank_end"] = time.time()
        info["bank_bytes"] = bank.nbytes
        info["bank_clips"] = len(bank.index)
        return bank

    def timed_use_bank(self, bank, brain, feature_bank=False):
        stamps["use_bank_start"] = time.time()
        use_bank(self, bank, brain, feature_bank)
        sync(brain.device)
        stamps["use_bank_end"] = time.time()
        if self.feature_bank is not None:
            info["feature_bank_bytes"] = self.feature_bank.nbytes

    class TimedBrain(recipe.SoundClassifierBrain):
        """The recipe's Brain, unchanged but for timestamps."""

        def fit(self, *args, **kwargs):
            stamps["fit_start"] = time.time()
            return super().fit(*args, **kwargs)

        def on_stage_start(self, stage, epoch=None):
            meter.start()
            return super().on_stage_start(stage, epoch)

        def fit_batch(self, batch):
            meter.step()
            if cfg.get("stop_at_first_step"):
                raise FirstStep
            meter.clips += batch.batchsize
            return super().fit_batch(batch)

        def evaluate_batch(self, batch, stage):
            meter.clips += batch.batchsize
            return super().evaluate_batch(batch, stage)

        def on_stage_end(self, stage, stage_loss, epoch=None):
            kind = {sb.Stage.TRAIN: "train", sb.Stage.VALID: "eval"}
            meter.stop(kind.get(stage, "test"))  # before checkpointing
            return super().on_stage_end(stage, stage_loss, epoch)

    recipe.prepare_data = stamped(
        recipe.prepare_data, "prepare_start", "prepare_end"
    )
    recipe.load_hyperpyyaml = stamped(recipe.load_hyperpyyaml, None, "yaml_end")
    loader.build_clip_bank = timed_build_clip_bank
    loader.DataSource.use_bank = timed_use_bank
    recipe.dataio_prep = stamped(
        recipe.dataio_prep, "dataio_start", "dataio_end"
    )
    recipe.SoundClassifierBrain = TimedBrain
    try:
        hparams = recipe.main(recipe_argv(cfg))
    except FirstStep:
        return meter, info
    stamps["main_end"] = time.time()
    tested = json.loads(Path(hparams["test_results_file"]).read_text())
    info.update(
        accuracy=tested["accuracy"],
        num_workers=hparams["num_workers"],
        threads=torch.get_num_threads(),
    )
    return meter, info


# ------------------------------------------------ (c) the ceiling: no framework
def run_ceiling(cfg, stamps):
    """The recipe's per-batch steps in a bare loop over clips held on the
    device."""
    import torch
    import torch.nn.functional as F
    from sb_urbansound.data.audio import ClipConditioner
    from sb_urbansound.data.bank import ClipBank, random_placement, roll_rows
    from sb_urbansound.training.augment import SpecAugment
    from sb_urbansound.training.experiment import read_yaml_values
    from sb_urbansound.training.features import (
        BatchStandardize,
        MelSpectrogramDB,
    )
    from sb_urbansound.training.models import CNNEmbedding, LinearClassifier

    stamps["imported"] = time.time()
    torch.manual_seed(cfg["seed"])
    device = torch.device(cfg["device"])
    meter = Meter(device)
    # The settings of hparams/cnn.yaml, read from it
    h = read_yaml_values(CNN_YAML, f"data_folder: {cfg['data_folder']}")
    conditioner = ClipConditioner(
        h["sample_rate"], h["channels"], h["duration_ms"], h["remove_dc"]
    )

    # Setup, untimed: decode every clip once, hold them on the device (int16)
    train = read_fold(cfg["data_folder"], TRAIN_FOLD)
    valid = read_fold(cfg["data_folder"], VALID_FOLD)
    paths = {f"c{i}": path for i, (path, _) in enumerate(train + valid)}
    bank = ClipBank(Path(cfg["workdir"]) / "ceiling-bank", conditioner)
    bank.build(paths, progress=False)
    clips = torch.from_numpy(np.array(bank.clips)).to(device)
    lengths = bank.lengths.to(device)
    rows = bank.rows(list(paths)).to(device)
    labels = torch.tensor([c for _, c in train + valid], device=device)
    train_rows, valid_rows = rows[: len(train)], rows[len(train) :]
    train_y, valid_y = labels[: len(train)], labels[len(train) :]

    def features(batch_rows, train):
        """Waveforms from the held clips → normalised features (recipe
        steps)."""
        wavs = clips[batch_rows].float().mul_(1.0 / 32767.0)
        if train:
            shifts = random_placement(
                lengths[batch_rows], wavs.shape[1], h["shift_pct"]
            )
            wavs = roll_rows(wavs, shifts)
        feats = mel(wavs)
        if train:
            feats = spec_augment(feats)
        return standardize(feats)

    mel = MelSpectrogramDB(
        sample_rate=h["sample_rate"],
        n_fft=h["n_fft"],
        hop_length=h["hop_length"],
        n_mels=h["n_mels"],
        top_db=h["top_db"],
        channels=h["channels"],
    ).to(device)
    spec_augment = SpecAugment(
        h["max_mask_pct"], h["n_freq_masks"], h["n_time_masks"]
    )
    standardize = BatchStandardize()
    embedding = CNNEmbedding(
        h["channels"],
        h["cnn_channels"],
        h["cnn_kernel_sizes"],
        h["cnn_strides"],
    ).to(device)
    classifier = LinearClassifier(h["embedding_size"], len(CLASSES)).to(device)
    params = [*embedding.parameters(), *classifier.parameters()]
    optimizer = torch.optim.Adam(params, lr=h["lr"])
    bs, epochs = cfg["batch_size"], cfg["epochs"]
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=h["max_lr"],
        steps_per_epoch=math.ceil(len(train) / bs),
        epochs=epochs,
        anneal_strategy="linear",
    )
    correct = None
    for _ in range(epochs):
        meter.start()
        embedding.train()
        classifier.train()
        order = torch.randperm(len(train), device=device)
        for idx in order.split(bs):
            meter.step()
            feats = features(train_rows[idx], train=True)
            log_probs = classifier(embedding(feats)).squeeze(1)
            loss = F.nll_loss(log_probs, train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler.last_epoch + 1 < scheduler.total_steps:
                scheduler.step()  # as the recipe: hold the final rate
        meter.stop("train", len(train))

        meter.start()
        embedding.eval()
        classifier.eval()
        correct = torch.zeros((), dtype=torch.long, device=device)
        with torch.no_grad():
            for idx in torch.arange(len(valid), device=device).split(bs):
                feats = features(valid_rows[idx], train=False)
                predicted = classifier(embedding(feats)).argmax(-1).view(-1)
                correct += (predicted == valid_y[idx]).sum()
        meter.stop("eval", len(valid))
    return meter, {
        "accuracy": int(correct) / max(len(valid), 1),
        "threads": torch.get_num_threads(),
    }


# ------------------------------------------------------------- child process
def child(cfg):
    """Run one configuration in this process; print its result as one line."""
    stamps = {"child_start": time.time()}
    stamp_console_logs(stamps)
    load_before = load_average()
    run = {"tutorial": run_tutorial, "recipe": run_recipe}
    run["ceiling"] = run_ceiling
    meter, info = run[cfg["kind"]](cfg, stamps)
    import torch

    stamps["first_step"] = meter.first_step
    result = {
        "name": cfg["name"],
        "kind": cfg["kind"],
        "batch_size": cfg["batch_size"],
        "threads": torch.get_num_threads(),
        "num_workers": 0,
        **info,
        "passes": meter.passes,
        "stamps": stamps,
        "rss_mb": _vm_hwm_mb(),
        "child_rss_mb": max(meter.child_rss_mb, children_peak_rss_mb()),
        "load": (load_before + load_average()) / 2,
    }
    if torch.device(cfg["device"]).type == "cuda":
        result["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    stamps["result"] = time.time()  # then only the process's exit
    print(RESULT_MARK + json.dumps(result), flush=True)
    if cfg["kind"] == "recipe":  # as train.py ends (processes.run_recipe)
        from sb_urbansound.training.processes import exit_now

        exit_now(0)


def run_child(cfg, log_path):
    """Run one configuration in a fresh process; return its result.

    The parent stamps the launch and the exit, so that start-up and shutdown
    are measured as a user would see them; the child's output goes to
    ``log_path``.
    """
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if cfg.get("omp_threads"):  # the recipe's set_torch_threads defers to it
        env["OMP_NUM_THREADS"] = str(cfg["omp_threads"])
    with open(log_path, "w") as log:
        launch = time.time()
        proc = subprocess.run(
            [*cmd, json.dumps(cfg)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
        exit_time = time.time()
    lines = Path(log_path).read_text().splitlines()
    results = [line for line in lines if line.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not results:
        sys.stderr.write("\n".join(lines[-60:]) + "\n")
        raise RuntimeError(
            f"configuration {cfg['name']} failed (exit {proc.returncode}); "
            f"its output: {log_path}"
        )
    result = json.loads(results[-1][len(RESULT_MARK) :])
    result["stamps"].update(launch=launch, exit=exit_time)
    return result


def stamp_console_logs(stamps):
    """Stamp every log record written to a console stream (``last_log``).

    Records go to ``Handler.handle`` once their level passed the handler's;
    the log file's handler (a ``FileHandler``) is left out, so the last stamp
    is that of the last log line a user sees.
    """
    handle = logging.Handler.handle

    def stamped_handle(self, record):
        if isinstance(self, logging.StreamHandler) and not isinstance(
            self, logging.FileHandler
        ):
            stamps["last_log"] = time.time()
        return handle(self, record)

    logging.Handler.handle = stamped_handle


# --------------------------------------------------------------------- report
def steady(passes):
    """The passes that count: all but the first when there are several."""
    return passes[1:] if len(passes) > 1 else passes


def rate(passes):
    """Clips per second over the steady passes (nan when there are none)."""
    counted = steady(passes)
    seconds = sum(p["s"] for p in counted)
    return sum(p["clips"] for p in counted) / seconds if seconds else math.nan


def summarize(r):
    """Derived numbers of one result (rates, CPU per clip, phase times)."""
    train, evals = r["passes"]["train"], r["passes"]["eval"]
    counted = steady(train)
    clips = sum(p["clips"] for p in counted)
    st = r["stamps"]

    def span(a, b):
        if st.get(a) is None or st.get(b) is None:
            return None
        return st[b] - st[a]

    s = {
        "train_clips_per_s": rate(train),
        "first_epoch_clips_per_s": rate(train[:1]),
        "train_epochs_counted": len(counted),
        "eval_clips_per_s": rate(evals),
        "cpu_ms_per_clip": 1000 * sum(p["cpu_s"] for p in counted) / clips
        if clips
        else math.nan,
        "start_to_first_step_s": span("launch", "first_step"),
        "bank_build_s": span("bank_start", "bank_end"),
        "feature_bank_s": span("use_bank_start", "use_bank_end")
        if "feature_bank_bytes" in r
        else None,
        "last_log_to_exit_s": span("last_log", "exit")
        if r["kind"] == "recipe"
        else None,
        "main_end_to_exit_s": span("main_end", "exit"),
        "end_to_end_s": span("launch", "exit"),
        "interpreter_exit_s": span("result", "exit"),
    }
    # Command start -> first step, phase by phase: each stamp that the run
    # has closes the phase named beside it (recipe-per-clip has no bank).
    phases, last = [], "launch"
    feature = "feature bank" if "feature_bank_bytes" in r else "bank to device"
    for stamp, label in (
        ("imported", "python + imports"),
        ("prepare_start", "option checks"),
        ("prepare_end", "data prep"),
        ("yaml_end", "YAML build"),
        ("dataio_start", "experiment folder, Brain"),
        ("dataio_end", "datasets"),
        ("bank_end", "clip bank"),
        ("use_bank_end", feature),
        ("fit_start", "loaders"),
        ("first_step", "fit: optimizer, first batch"),
    ):
        if st.get(stamp) is not None and st.get(last) is not None:
            phases.append((label, st[stamp] - st[last]))
            last = stamp
    s["startup_phases_s"] = phases
    return s


def fmt(x, spec=".1f", width=8):
    """A number for the table ('-' for none, 'nan' for not measurable)."""
    if x is None:
        return f"{'-':>{width}}"
    return f"{x:>{width}{spec}}"


def ratio(a, b):
    """a / b, nan when either is missing."""
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return math.nan
    return a / b


def report(results, args):
    """Print the table, the bank and start-up lines and the final lines."""
    sums = {name: summarize(r) for name, r in results.items()}
    warm = "epochs 2..N" if args.epochs > 1 else "epoch 1 (*: with warm-up)"
    print(
        f"\ntrain/s: training clips/s over {warm}; ep1/s: epoch 1; eval/s: "
        "evaluation clips/s; cpu ms: CPU per training clip (process + "
        "workers); rss/child: peak MB; start: command start -> first "
        "training step (s); exit: last log line -> exit (s)"
    )
    print(
        f"{'config':<20}{'batch':>6}{'thr':>4}{'wrk':>4}{'train/s':>9}"
        f"{'ep1/s':>8}{'eval/s':>8}{'cpu ms':>8}{'rss':>7}{'child':>7}"
        f"{'start':>7}{'exit':>6}{'e2e':>7}{'acc':>6}{'load':>6}"
    )
    star = "*" if args.epochs == 1 else " "
    for name, r in results.items():
        s = sums[name]
        print(
            f"{name:<20}{r['batch_size']:>6}{r['threads']:>4}"
            f"{r['num_workers']:>4}{fmt(s['train_clips_per_s'])}{star}"
            f"{fmt(s['first_epoch_clips_per_s'])}"
            f"{fmt(s['eval_clips_per_s'])}{fmt(s['cpu_ms_per_clip'])}"
            f"{fmt(r['rss_mb'], '.0f', 7)}{fmt(r['child_rss_mb'], '.0f', 7)}"
            f"{fmt(s['start_to_first_step_s'], '.1f', 7)}"
            f"{fmt(s['last_log_to_exit_s'], '.2f', 6)}"
            f"{fmt(s['end_to_end_s'], '.1f', 7)}"
            f"{r['accuracy']:>6.2f}{r['load']:>6.2f}"
        )
        if "gpu_peak_mb" in r:
            print(f"{'':<20}GPU peak allocated: {r['gpu_peak_mb']:.0f} MB")

    print()
    for name, r in results.items():
        s = sums[name]
        if r["kind"] != "recipe":
            continue
        if s["bank_build_s"] is not None:
            per_clip = r["bank_bytes"] / max(r["bank_clips"], 1)
            line = (
                f"{name}: clip bank built in {s['bank_build_s']:.1f} s, "
                f"{r['bank_bytes'] / 1e6:.1f} MB for {r['bank_clips']} clips "
                f"(UrbanSound8K, {US8K_CLIPS} clips: "
                f"{per_clip * US8K_CLIPS / 1e9:.1f} GB)"
            )
            if s["feature_bank_s"] is not None:
                line += (
                    f"; feature bank {s['feature_bank_s']:.1f} s, "
                    f"{r['feature_bank_bytes'] / 1e6:.1f} MB"
                )
            print(line)
        shown = " + ".join(
            f"{label} {t:.1f}"
            for label, t in s["startup_phases_s"]
            if t >= 0.05
        )
        print(
            f"{name}: command start -> first training step "
            f"{s['start_to_first_step_s']:.1f} s ({shown}); last log line "
            f"-> exit {s['last_log_to_exit_s']:.2f} s (end of main() -> "
            f"exit {s['main_end_to_exit_s']:.2f} s)"
        )

    def train_rate(name):
        return sums[name]["train_clips_per_s"] if name in sums else math.nan

    large = args.large_batch
    for base in ("recipe-bank", "ceiling"):
        print(
            f"{base} training clips/s: batch {args.batch_size}: "
            f"{train_rate(base):.1f}, batch {large}: "
            f"{train_rate(base + '-large'):.1f}"
        )
    tutorials = [train_rate(n) for n in sums if n.startswith("tutorial")]
    ours = ("recipe-per-clip", "recipe-bank", "recipe-feature-bank")
    ours = {n: train_rate(n) for n in ours if n in sums}
    best = max(ours, key=ours.get) if ours else None
    speedup = ratio(ours.get(best), max(tutorials, default=None))
    frac = ratio(train_rate("recipe-bank"), train_rate("ceiling"))
    shards_vs_bank = ratio(
        train_rate("recipe-shards"), train_rate("recipe-bank")
    )

    def e2e(name):
        return sums[name]["end_to_end_s"] if name in sums else math.nan

    tutorial_e2e = min(
        (e2e(n) for n in sums if n.startswith("tutorial")), default=math.nan
    )
    # cnn.yaml's defaults: the clip bank and the feature bank
    e2e_speedup = ratio(tutorial_e2e, e2e("recipe-feature-bank"))
    frac_large = ratio(
        train_rate("recipe-bank-large"), train_rate("ceiling-large")
    )
    train_large = train_rate("recipe-bank-large")
    eval_large = (
        sums["recipe-bank-large"]["eval_clips_per_s"]
        if "recipe-bank-large" in sums
        else math.nan
    )
    n_eval = US8K_EPOCHS * US8K_VALID_CLIPS + US8K_TEST_CLIPS
    minutes = (
        US8K_FOLDS
        * (US8K_EPOCHS * US8K_TRAIN_CLIPS / train_large + n_eval / eval_large)
        / 60
    )
    if best:
        print(
            f"best recipe config at batch {args.batch_size}: {best} "
            f"({ours[best]:.1f} clips/s); faster tutorial run: "
            f"{max(tutorials, default=math.nan):.1f} clips/s"
        )
    print(
        f"estimate = {US8K_FOLDS} folds x ({US8K_EPOCHS} epochs x "
        f"{US8K_TRAIN_CLIPS} training clips / {train_large:.1f} clips/s "
        f"[recipe-bank-large train] + ({US8K_EPOCHS} x {US8K_VALID_CLIPS} "
        f"validation + {US8K_TEST_CLIPS} test clips) / {eval_large:.1f} "
        "clips/s [recipe-bank-large eval]); excludes start-up, bank build "
        "and checkpoints"
    )
    summary = {
        "speedup_vs_tutorial": speedup,
        "speedup_of": best,
        "fraction_of_ceiling": frac,
        "fraction_of_ceiling_large_batch": frac_large,
        "us8k_10fold_30epochs_estimate_minutes": minutes,
        "shards_vs_bank": shards_vs_bank,
        "end_to_end_speedup_vs_tutorial": e2e_speedup,
    }
    print(f"speedup_vs_tutorial: {speedup:.2f}")
    print(f"fraction_of_ceiling: {frac:.2f}")
    print(f"fraction_of_ceiling_large_batch: {frac_large:.2f}")
    print(f"us8k_10fold_30epochs_estimate_minutes: {minutes:.1f}")
    print(
        f"end to end, {args.epochs} epochs + test: tutorial (faster run, "
        f"{TUTORIAL_INPUT}) {tutorial_e2e:.1f} s, recipe-feature-bank "
        f"(cnn.yaml's defaults) {e2e('recipe-feature-bank'):.1f} s"
    )
    print(f"shards_vs_bank: {shards_vs_bank:.2f}")
    print(f"end_to_end_speedup_vs_tutorial: {e2e_speedup:.2f}")
    return sums, summary


def _no_nan(obj):
    """``obj`` with NaN numbers as None (strict JSON has no NaN)."""
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_no_nan(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def parse_args(argv=None):
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda:0, ...")
    p.add_argument("--clips", type=int, default=320, help="training clips")
    p.add_argument(
        "--eval-clips", type=int, default=96, help="valid/test clips"
    )
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--large-batch", type=int, default=256)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="OMP_NUM_THREADS for the recipe and ceiling runs (default: "
        "unset, the recipe picks its threads)",
    )
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--json", default=None, help="write all numbers here")
    p.add_argument("--workdir", default=None, help="keep data here (temp)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument(
        "--quick", action="store_true", help="tiny sizes (smoke test)"
    )
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    """Make the clips, run every configuration, print the comparison."""
    args = parse_args(argv)
    if args.child:
        return child(json.loads(args.child))
    max_seconds = 4.0
    if args.quick:
        args.clips, args.eval_clips, args.epochs = 18, 4, 1
        args.large_batch, max_seconds = 18, 1.0
    names = [c for c in args.configs.split(",") if c]
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        raise SystemExit(
            f"--configs: unknown {unknown}; known: {list(CONFIGS)}"
        )
    workdir = Path(
        args.workdir or tempfile.mkdtemp(prefix="sb-urbansound-bench-")
    )
    data = workdir / "data"
    start = time.perf_counter()
    make_dataset(data, args.clips, args.eval_clips, args.seed, max_seconds)
    print(
        f"clips ready in {data} ({args.clips} training, {args.eval_clips} "
        f"validation, {args.eval_clips} test; "
        f"{time.perf_counter() - start:.1f} s)"
    )
    print(
        f"{os.cpu_count()} CPUs; device {args.device}; batch {args.batch_size}"
        f", large batch {args.large_batch}; {args.epochs} epoch(s); load "
        f"average {load_average():.2f}"
    )
    print(f"input: tutorial {TUTORIAL_INPUT}; {recipe_input(data)}")
    base = {
        "workdir": str(workdir),
        "data_folder": str(data),
        "device": args.device,
        "epochs": args.epochs,
        "seed": args.seed,
    }
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    results = {}
    for rep in range(args.repeats):
        order = names if rep % 2 == 0 else names[::-1]
        for name in order:
            conf = CONFIGS[name]
            out = workdir / "out" / name
            shutil.rmtree(out, ignore_errors=True)  # every run builds its bank
            cfg = {
                **base,
                **conf,
                "name": name,
                "output_folder": str(out),
                "batch_size": args.large_batch
                if conf.get("large")
                else args.batch_size,
            }
            if conf["kind"] != "tutorial":
                cfg["omp_threads"] = args.threads
            log = workdir / "logs" / f"{name}-{rep + 1}.log"
            r = run_child(cfg, log)
            s = summarize(r)
            print(
                f"  run {rep + 1} {name}: train "
                f"{s['train_clips_per_s']:.1f} clips/s, eval "
                f"{s['eval_clips_per_s']:.1f} clips/s (load avg "
                f"{r['load']:.2f}; log {log.name})",
                flush=True,
            )
            old = results.get(name)
            if old is None or s["train_clips_per_s"] > summarize(old).get(
                "train_clips_per_s"
            ):
                results[name] = r
    results = {n: results[n] for n in names}
    sums, summary = report(results, args)
    if args.json:
        out = {
            "args": {k: v for k, v in vars(args).items() if k != "child"},
            "cpus": os.cpu_count(),
            "estimate_formula": (
                "folds * (epochs * train_clips / train_rate + "
                "(epochs * valid_clips + test_clips) / eval_rate) / 60"
            ),
            "estimate_constants": {
                "folds": US8K_FOLDS,
                "epochs": US8K_EPOCHS,
                "train_clips": US8K_TRAIN_CLIPS,
                "valid_clips": US8K_VALID_CLIPS,
                "test_clips": US8K_TEST_CLIPS,
            },
            "results": {
                n: {**r, "summary": sums[n]} for n, r in results.items()
            },
            "summary": summary,
        }
        Path(args.json).write_text(json.dumps(_no_nan(out), indent=1))
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
