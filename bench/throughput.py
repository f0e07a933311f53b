#!/usr/bin/env python3
"""Throughput benchmark: the tutorial's per-clip pipeline against this recipe.

Makes its own clips in UrbanSound8K's formats (mostly 44.1 and 48 kHz stereo,
16- and 24-bit; some 96 kHz, some mono, some other rates; 16 % shorter than
4 s), then measures, side by side in one run and each in its own process:

* ``tutorial``: the tutorial's pipeline, written below as it is in the tutorial
  (a torch ``Dataset`` that opens, resamples with a new ``Resample`` per clip and
  channel, rechannels, pads, shifts, builds a ``MelSpectrogram`` and masks per
  clip; ``DataLoader(batch_size=16, shuffle=True)``; the same CNN; Adam +
  OneCycleLR; cross-entropy on logits; per-batch normalisation). It runs with
  torch's default threads and, as ``tutorial-1thread``, with one thread, and the
  speedup is taken against the faster of the two;
* ``ours``: the recipe as users run it: ``hparams/cnn.yaml`` loaded with
  ``load_hyperpyyaml`` (tutorial settings: 44.1 kHz, stereo, 4 s, batch 16),
  ``dataio_prepare`` datasets, ``SoundClassifierBrain.fit`` and ``.evaluate``;
* ``ours+cache``: the same with ``audio_cache: True`` (its one-off build time and
  disk use are reported).

For each: clips per second for data loading alone (one pass over the training
DataLoader), for training epochs, for evaluation (no augmentation, for the
tutorial too), the accuracy reached, and the peak resident memory of the
training process and of its DataLoader workers. The last line is
``speedup_vs_tutorial: X.XX``: training clips per second of ``ours`` (or of
``--speedup-of``) over the faster tutorial run.

Usage::

    python bench/throughput.py                    # CPU, 320 + 96 clips, 2 epochs
    python bench/throughput.py --quick            # tiny smoke run
    python bench/throughput.py --device cuda:0 --clips 2048 --epochs 3
    python bench/throughput.py --device cuda:0 --precision bf16

Timings on a shared machine are noisy: the script prints the load average next
to the numbers, and ``--repeats N`` runs every configuration N times,
interleaved, and keeps each one's fastest run.
"""

import argparse
import gc
import json
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
# Total duration of UrbanSound8K's 8732 clips (from its metadata), seconds.
US8K_SECONDS = 31504.2


# ----------------------------------------------------------------------- data
def make_clip(rng, class_idx, sample_rate, channels, seconds):
    """A clip whose spectrum identifies its class: tone, harmonic, noise bursts."""
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
    """Write clips and manifests (this recipe's format) under ``folder``.

    Returns the manifest folder. Reuses an existing set made with the same
    arguments.
    """
    folder = Path(folder)
    spec = {
        "n_train": n_train,
        "n_eval": n_eval,
        "seed": seed,
        "max": max_seconds,
    }
    done = folder / "dataset.json"
    manifests = folder / "manifests"
    if done.exists() and json.loads(done.read_text()) == spec:
        return manifests
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(seed)
    shares = np.array([f[3] for f in FORMATS])
    splits = {"train": {}, "valid": {}}
    for split, n in (("train", n_train), ("valid", n_eval)):
        for i in range(n):
            sr, ch, subtype, _ = FORMATS[rng.choice(len(FORMATS), p=shares)]
            label = i % len(CLASSES)
            seconds = max_seconds
            if rng.random() < SHORT_SHARE:
                seconds = float(rng.uniform(0.3, max_seconds))
            path = folder / "audio" / split / f"{split}-{i:05d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(
                path,
                make_clip(rng, label, sr, ch, seconds),
                sr,
                subtype=subtype,
            )
            splits[split][f"{split}-{i:05d}"] = {
                "wav": str(path),
                "label": CLASSES[label],
                "fold": 1 if split == "train" else 9,
                "group": f"{split}-{i}",
                "duration": seconds,
                "sample_rate": sr,
                "channels": ch,
            }
    manifests.mkdir(parents=True, exist_ok=True)
    (manifests / "train.json").write_text(json.dumps(splits["train"], indent=1))
    (manifests / "valid.json").write_text(json.dumps(splits["valid"], indent=1))
    (manifests / "test.json").write_text(json.dumps(splits["valid"], indent=1))
    (manifests / "labels.json").write_text(json.dumps(sorted(CLASSES)))
    done.write_text(json.dumps(spec))
    return manifests


# ------------------------------------------------------------------- memory
def peak_rss_mb():
    """Peak resident memory of this process (VmHWM) and of its reaped children."""
    own = 0.0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                own = int(line.split()[1]) / 1024.0
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    return own, children


class Timer:
    """Wall time and CPU time (this process and its children) of a block."""

    def start(self):
        gc.collect()
        self._wall, self._cpu = time.perf_counter(), _cpu_seconds()
        return self

    def stop(self):
        gc.collect()
        self.wall = time.perf_counter() - self._wall
        self.cpu = _cpu_seconds() - self._cpu
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _cpu_seconds():
    """User + system CPU seconds of this process and of all its children.

    Reaped children come from ``os.times``; live ones (persistent DataLoader
    workers) from ``/proc/<pid>/stat``.
    """
    t = os.times()
    total = t.user + t.system + t.children_user + t.children_system
    tick = os.sysconf("SC_CLK_TCK")
    me = os.getpid()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:  # ppid; utime and stime follow
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def load_average():
    """The 1-minute load average (a shared machine's timings depend on it)."""
    return os.getloadavg()[0]


# ------------------------------------------------- (a) the tutorial, faithfully
def tutorial_components():
    """The tutorial's AudioUtil, SoundDS and model (imports torch lazily)."""
    import torch
    import torchaudio
    from sb_urbansound.models import CNNEmbedding
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
        """The tutorial's network: the recipe's CNNEmbedding + a linear layer."""

        def __init__(self):
            super().__init__()
            self.embedding = CNNEmbedding(in_channels=2)
            self.lin = torch.nn.Linear(in_features=64, out_features=10)

        def forward(self, x):
            return self.lin(self.embedding(x).squeeze(1))

    return SoundDS, AudioClassifier


def run_tutorial(cfg, manifests):
    """Loading, training and evaluation of the tutorial's pipeline."""
    import torch

    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    random.seed(cfg["seed"])
    device = torch.device(cfg["device"])
    SoundDS, AudioClassifier = tutorial_components()
    labels = sorted(CLASSES)

    def items(split):
        data = json.loads((manifests / f"{split}.json").read_text())
        return [(e["wav"], labels.index(e["label"])) for e in data.values()]

    train_ds = SoundDS(items("train"), train=True)
    val_ds = SoundDS(items("valid"), train=False)
    train_dl = torch.utils.data.DataLoader(
        train_ds, batch_size=16, shuffle=True
    )
    val_dl = torch.utils.data.DataLoader(val_ds, batch_size=16, shuffle=False)
    result = {"threads": torch.get_num_threads()}

    with Timer() as t:
        for _ in train_dl:
            pass
    result["load_s"], result["load_cpu_s"] = t.wall, t.cpu

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
    result["epoch_s"], result["train_cpu_s"] = [], 0.0
    for _ in range(epochs):
        t = Timer().start()
        model.train()
        for data in train_dl:
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
        _sync(device)
        t.stop()
        result["epoch_s"].append(t.wall)
        result["train_cpu_s"] += t.cpu

    model.eval()
    correct = total = 0
    t = Timer().start()
    with torch.no_grad():
        for data in val_dl:
            inputs, targets = data[0].to(device), data[1].to(device)
            inputs_m, inputs_s = inputs.mean(), inputs.std()
            inputs = (inputs - inputs_m) / inputs_s
            outputs = model(inputs)
            _, prediction = torch.max(outputs, 1)
            correct += (prediction == targets).sum().item()
            total += prediction.shape[0]
    _sync(device)
    t.stop()
    result["eval_s"], result["eval_cpu_s"] = t.wall, t.cpu
    result["accuracy"] = correct / max(total, 1)
    result["n_train"], result["n_eval"] = len(train_ds), len(val_ds)
    return result


# ------------------------------------------------------- (b) this recipe, as run
def run_ours(cfg, manifests, workdir):
    """Loading, training and evaluation of the recipe (cnn.yaml + the Brain)."""
    import torch
    from hyperpyyaml import load_hyperpyyaml
    from sb_urbansound.brain import SoundClassifierBrain
    from sb_urbansound.pipeline import dataio_prepare

    import speechbrain as sb

    out = Path(workdir) / f"out-{cfg['name']}"
    shutil.rmtree(out, ignore_errors=True)
    overrides = {
        "seed": cfg["seed"],
        "data_folder": str(Path(workdir) / "data"),
        "output_folder": str(out),
        "manifest_folder": str(manifests),
        "number_of_epochs": cfg["epochs"],
        "download": False,
        "audio_cache": cfg.get("audio_cache", False),
        "audio_cache_folder": str(Path(workdir) / "audio_cache"),
    }
    if cfg.get("num_workers") is not None:
        overrides["num_workers"] = cfg["num_workers"]
    with open(REPO / "hparams" / "cnn.yaml", encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)  # sets torch threads
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    result = {
        "threads": torch.get_num_threads(),
        "num_workers": hparams["num_workers"],
    }

    start = time.perf_counter()
    datasets = dataio_prepare(hparams)
    result["prepare_s"] = time.perf_counter() - start
    if cfg.get("audio_cache"):
        from sb_urbansound.cache import AudioCache, folder_size

        cache = AudioCache(
            hparams["audio_cache_folder"],
            hparams["sample_rate"],
            hparams["channels"],
            hparams["duration_ms"],
        )
        result["cache_bytes"] = folder_size(cache.folder)
        seconds = 0.0  # channel-seconds stored: truncated, mono kept mono
        for split in ("train", "valid"):
            entries = json.loads((manifests / f"{split}.json").read_text())
            for e in entries.values():
                seconds += min(
                    e["duration"], hparams["duration_ms"] / 1000
                ) * min(e["channels"], hparams["channels"])
        result["cache_channel_seconds"] = seconds

    run_opts = {
        "device": cfg["device"],
        "precision": cfg["precision"],
        "noprogressbar": True,
        "compile": cfg.get("compile", False),
    }

    class TimedBrain(SoundClassifierBrain):
        """The recipe's Brain, timing each training epoch (loader start-up too)."""

        def on_stage_start(self, stage, epoch=None):
            if stage == sb.Stage.TRAIN:
                self.timer = Timer().start()
                result.setdefault("cpu0", self.timer._cpu)
            return super().on_stage_start(stage, epoch)

        def on_stage_end(self, stage, stage_loss, epoch=None):
            if stage == sb.Stage.TRAIN:
                _sync(self.device)
                self.timer.stop()
                result["epoch_s"].append(self.timer.wall)
            return super().on_stage_end(stage, stage_loss, epoch)

    result["epoch_s"] = []
    brain = TimedBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    loader = brain.make_dataloader(
        datasets["train"], stage=sb.Stage.TRAIN, **hparams["dataloader_options"]
    )
    with Timer() as t:
        for _ in loader:
            pass
        del loader
    result["load_s"], result["load_cpu_s"] = t.wall, t.cpu

    with Timer() as t:
        brain.fit(
            hparams["epoch_counter"],
            datasets["train"],
            valid_set=None,
            train_loader_kwargs=hparams["dataloader_options"],
        )
    # Workers are reaped when fit drops its loader: their CPU time counts now.
    result["fit_s"] = t.wall
    result["train_cpu_s"] = _cpu_seconds() - result.pop("cpu0")

    with Timer() as t:
        brain.evaluate(
            datasets["valid"],
            test_loader_kwargs=hparams["test_dataloader_options"],
        )
        _sync(brain.device)
    result["eval_s"], result["eval_cpu_s"] = t.wall, t.cpu
    tested = json.loads(Path(hparams["test_results_file"]).read_text())
    result["accuracy"] = tested["accuracy"]
    result["n_train"], result["n_eval"] = (
        len(datasets["train"]),
        len(datasets["valid"]),
    )
    return result


def _sync(device):
    """Wait for queued GPU work, so that timings are complete."""
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def child(cfg):
    """Run one configuration in this process and print its result as JSON."""
    import torch

    manifests = Path(cfg["workdir"]) / "data" / "manifests"
    load_before = load_average()
    if cfg["kind"] == "tutorial":
        result = run_tutorial(cfg, manifests)
    else:
        result = run_ours(cfg, manifests, cfg["workdir"])
    own, workers = peak_rss_mb()
    result["train_s"] = sum(result["epoch_s"])
    result.update(
        name=cfg["name"],
        rss_mb=own,
        workers_rss_mb=workers,
        load=(load_before + load_average()) / 2,
    )
    if str(cfg["device"]).startswith("cuda"):
        result["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(result), flush=True)


def run_child(cfg, env):
    """Run one configuration in a fresh process; return its result."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        json.dumps(cfg),
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=env, cwd=REPO
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
    raise RuntimeError(
        f"configuration {cfg['name']} failed (exit {proc.returncode})"
    )


# --------------------------------------------------------------------- report
def rate(result, key, epochs=1):
    """Clips per second of one measured phase."""
    n = result["n_eval"] if key == "eval_s" else result["n_train"] * epochs
    return n / result[key] if result[key] > 0 else float("inf")


def report(results, epochs, speedup_of):
    """Print the table and the speedup line; return the speedup."""
    print(
        "\nclips/s: load = one pass over the training DataLoader; train = "
        f"{epochs} epoch(s), loader start-up included; eval = no augmentation. "
        "cpu = CPU ms per training clip (all processes). rss = peak MB."
    )
    print(
        f"{'config':<18}{'threads':>8}{'workers':>8}{'load':>8}{'train':>8}"
        f"{'eval':>8}{'cpu':>7}{'acc':>7}{'rss':>7}{'w.rss':>7}{'loadavg':>8}"
    )
    for r in results.values():
        cpu_ms = 1000 * r["train_cpu_s"] / (r["n_train"] * epochs)
        print(
            f"{r['name']:<18}{r['threads']:>8}{r.get('num_workers', 0):>8}"
            f"{rate(r, 'load_s'):>8.1f}{rate(r, 'train_s', epochs):>8.1f}"
            f"{rate(r, 'eval_s'):>8.1f}{cpu_ms:>7.1f}{r['accuracy']:>7.3f}"
            f"{r['rss_mb']:>7.0f}{r['workers_rss_mb']:>7.0f}{r['load']:>8.2f}"
        )
        if "gpu_peak_mb" in r:
            print(f"{'':<18}GPU peak allocated: {r['gpu_peak_mb']:.0f} MB")
    if "ours+cache" in results:
        r = results["ours+cache"]
        per_second = r["cache_bytes"] / max(r["cache_channel_seconds"], 1e-9)
        us8k = per_second * US8K_SECONDS * 2
        print(
            f"audio cache: {r['cache_bytes'] / 1e6:.1f} MB for "
            f"{r['n_train'] + r['n_eval']} clips ({per_second / 1e3:.1f} kB per "
            f"second and channel; UrbanSound8K, {US8K_SECONDS / 3600:.2f} h, all "
            f"stereo: {us8k / 1e9:.1f} GB); first build + prepare "
            f"{r['first_prepare_s']:.1f} s"
        )
    ours = rate(results[speedup_of], "train_s", epochs)
    if "tutorial" in results and "tutorial-1thread" in results:
        default = rate(results["tutorial"], "train_s", epochs)
        print(
            f"{speedup_of} vs tutorial at torch's default threads: {ours / default:.2f}"
        )
    tutorials = [r for k, r in results.items() if k.startswith("tutorial")]
    best = max(rate(r, "train_s", epochs) for r in tutorials)
    speedup = ours / best
    print(f"{speedup_of} vs the faster tutorial run (below): {speedup:.2f}")
    print(f"speedup_vs_tutorial: {speedup:.2f}")
    return speedup


def parse_args(argv=None):
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=320, help="training clips")
    p.add_argument(
        "--eval-clips", type=int, default=96, help="evaluation clips"
    )
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0, ...")
    p.add_argument(
        "--precision", default="fp32", help="ours: fp32, bf16 or fp16"
    )
    p.add_argument("--compile", action="store_true", help="ours: torch.compile")
    p.add_argument(
        "--num-workers", type=int, default=None, help="ours (default: YAML)"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="ours: torch threads"
    )
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument(
        "--configs", default="tutorial,tutorial-1thread,ours,ours+cache"
    )
    p.add_argument(
        "--speedup-of", default="ours", help="config in the last line"
    )
    p.add_argument(
        "--workdir", default=None, help="keep clips here (default: temp)"
    )
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
        args.clips, args.eval_clips, args.epochs = 16, 16, 1
        max_seconds = 1.0
    workdir = Path(
        args.workdir or tempfile.mkdtemp(prefix="sb-urbansound-bench-")
    )
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    make_dataset(
        workdir / "data", args.clips, args.eval_clips, max_seconds=max_seconds
    )
    print(
        f"clips ready in {workdir / 'data'} ({time.perf_counter() - start:.1f} s)"
    )
    shutil.rmtree(workdir / "audio_cache", ignore_errors=True)

    base = {
        "workdir": str(workdir),
        "epochs": args.epochs,
        "device": args.device,
        "precision": args.precision,
        "seed": args.seed,
    }
    configs = {
        "tutorial": {"kind": "tutorial"},
        "tutorial-1thread": {"kind": "tutorial", "threads": 1},
        "ours": {"kind": "ours"},
        "ours+cache": {"kind": "ours", "audio_cache": True},
    }
    names = [c for c in args.configs.split(",") if c]
    unknown = set(names) - set(configs)
    if unknown or not any(n.startswith("tutorial") for n in names):
        raise SystemExit(
            f"--configs: unknown {sorted(unknown)} or no tutorial run"
        )
    if args.speedup_of not in names:
        raise SystemExit(
            f"--speedup-of {args.speedup_of} is not among --configs"
        )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    print(
        f"torch threads default, {os.cpu_count()} CPUs; device {args.device}; "
        f"load average {load_average():.2f}"
    )
    results, first_prepare = {}, {}
    for rep in range(args.repeats):
        order = names if rep % 2 == 0 else names[::-1]
        for name in order:
            cfg = {**base, **configs[name], "name": name}
            if configs[name]["kind"] == "ours":
                cfg.update(
                    compile=args.compile,
                    num_workers=args.num_workers,
                    threads=args.threads,
                )
            r = run_child(cfg, env)
            epochs = ", ".join(f"{t:.1f}" for t in r["epoch_s"])
            print(
                f"  run {rep + 1} {name}: train {rate(r, 'train_s', args.epochs):.1f}"
                f" clips/s (epochs {epochs} s; load avg {r['load']:.2f})",
                flush=True,
            )
            first_prepare.setdefault(name, r.get("prepare_s"))
            r["first_prepare_s"] = first_prepare[name]
            if name not in results or r["train_s"] < results[name]["train_s"]:
                results[name] = r
    report(results, args.epochs, args.speedup_of)
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
