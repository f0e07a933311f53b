"""What the real-audio tuning added: the feature augmentations (shapes,
limits, determinism under a seed) and, through the recipe, that they run in
training only and stay out of the exported model; the moving average of the
weights; class-balanced sampling; testing the last epoch's checkpoint."""

import json
import math
import re

import pytest
import torch
from helpers import HPARAMS, US8K_CLASSES, load_recipe, make_urbansound_tree
from sb_urbansound.augment import (
    BackgroundMix,
    FrequencyShift,
    RandomGain,
    TimeStretch,
    resample_axis,
)
from sb_urbansound.models import WeightAverage

import speechbrain as sb

FEATURE_AUGMENTS = [
    (RandomGain, {"max_gain_db": 6.0}),
    (TimeStretch, {"max_stretch": 0.25}),
    (FrequencyShift, {"max_shift_pct": 0.1}),
    (BackgroundMix, {"prob": 1.0, "min_snr_db": 0.0, "max_snr_db": 10.0}),
]
OFF = [
    RandomGain(max_gain_db=0.0),
    RandomGain(max_gain_db=6.0, prob=0.0),
    TimeStretch(max_stretch=0.0),
    TimeStretch(max_stretch=0.2, prob=0.0),
    FrequencyShift(max_shift_pct=0.0),
    FrequencyShift(max_shift_pct=0.1, prob=0.0),
    BackgroundMix(prob=0.0),
]


def db_spectrograms(batch=6, channels=1, bands=32, frames=40, seed=0):
    """Random dB spectrograms with per-clip levels, as MelSpectrogramDB's."""
    gen = torch.Generator().manual_seed(seed)
    level = torch.rand(batch, 1, 1, 1, generator=gen) * 60 - 50
    noise = torch.randn(batch, channels, bands, frames, generator=gen)
    return level + 10 * noise


@pytest.mark.parametrize(("cls", "kwargs"), FEATURE_AUGMENTS)
def test_shapes_and_change(cls, kwargs):
    feats = db_spectrograms(channels=2)
    out = cls(**kwargs)(feats)
    assert out.shape == feats.shape and out.dtype == feats.dtype
    assert torch.isfinite(out).all()
    assert not torch.equal(out, feats)
    # SpeechBrain's [batch, frames, n_mels] layout, through ``dim``
    if cls in (TimeStretch, FrequencyShift):
        dim = 1 if cls is TimeStretch else 2
        flat = feats[:, 0].transpose(1, 2)
        assert cls(**kwargs, dim=dim)(flat).shape == flat.shape


@pytest.mark.parametrize(("cls", "kwargs"), FEATURE_AUGMENTS)
def test_determinism_under_a_seed(cls, kwargs):
    feats = db_spectrograms()
    aug = cls(**kwargs)

    def run(seed):
        return aug(feats, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))
    # Without a generator: torch's global one, which the recipe seeds
    torch.manual_seed(3)
    first = aug(feats)
    torch.manual_seed(3)
    assert torch.equal(first, aug(feats))


@pytest.mark.parametrize("aug", OFF, ids=lambda a: repr(a))
def test_turned_off_is_the_identity_and_draws_nothing(aug):
    feats = db_spectrograms()
    torch.manual_seed(0)
    out = aug(feats)
    after = torch.rand(1)
    torch.manual_seed(0)
    assert out is feats
    # No random number drawn: a run with it off is the run without it
    assert torch.equal(after, torch.rand(1))


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (RandomGain, {"max_gain_db": -1.0}),
        (RandomGain, {"max_gain_db": math.inf}),
        (RandomGain, {"prob": 1.5}),
        (TimeStretch, {"max_stretch": -0.1}),
        (TimeStretch, {"max_stretch": 1.5}),
        (FrequencyShift, {"max_shift_pct": 1.0}),
        (FrequencyShift, {"prob": -0.1}),
        (BackgroundMix, {"min_snr_db": 10.0, "max_snr_db": 5.0}),
        (BackgroundMix, {"max_snr_db": math.inf}),
        (BackgroundMix, {"prob": 2.0}),
    ],
)
def test_limits_are_checked(cls, kwargs):
    with pytest.raises(ValueError):
        cls(**kwargs)


def test_gain_is_one_level_per_clip_within_the_limit():
    feats = db_spectrograms()
    out = RandomGain(max_gain_db=6.0)(feats)
    diff = out - feats
    per_clip = diff.flatten(1)
    assert torch.allclose(
        per_clip, per_clip[:, :1].expand_as(per_clip), atol=1e-4
    )
    assert (diff.abs() <= 6.0 + 1e-5).all()
    assert per_clip[:, 0].unique().numel() == len(feats)


def test_time_stretch_reads_frames_at_its_rate():
    # Frame j holds j: a stretched clip reads frame rate * j (wrapping)
    frames = 50
    ramp = torch.arange(frames, dtype=torch.float32)
    feats = ramp.expand(8, 1, 4, frames).clone()
    out = TimeStretch(max_stretch=0.25)(feats)
    start = out[:, 0, 0, :10]  # no wrap below frame 10 at rate <= 1.25
    rate = start[:, 1] - start[:, 0]
    assert torch.allclose(start, rate[:, None] * torch.arange(10.0), atol=1e-4)
    assert ((rate >= 1 / 1.25 - 1e-5) & (rate <= 1.25 + 1e-5)).all()
    assert (rate != 1).all()
    # Every band of a clip moves the same way
    assert torch.equal(out[:, :, :1].expand_as(out), out)


def test_frequency_shift_moves_bands_and_repeats_the_edges():
    bands = 32
    ramp = torch.arange(bands, dtype=torch.float32).view(1, 1, bands, 1)
    feats = ramp.expand(8, 2, bands, 5).clone()
    out = FrequencyShift(max_shift_pct=0.1)(feats)
    # Band f reads band f - shift, clamped to the edges
    shift = feats[:, 0, 16, 0] - out[:, 0, 16, 0]
    assert (shift.abs() <= 0.1 * bands + 1e-5).all()
    expected = (ramp.view(1, bands) - shift[:, None]).clamp(0, bands - 1)
    assert torch.allclose(out[:, 0, :, 0], expected, atol=1e-4)
    # Channels and frames of a clip move together
    assert torch.equal(out[:, :1, :, :1].expand_as(out), out)


def test_background_is_mixed_at_its_ratio_and_keeps_the_foreground():
    feats = db_spectrograms(batch=5)
    snr = 12.0
    out = BackgroundMix(prob=1.0, min_snr_db=snr, max_snr_db=snr)(feats)
    assert (out >= feats - 1e-4).all()  # powers add up
    fg = torch.pow(10.0, feats / 10)
    added = torch.pow(10.0, out / 10) - fg
    ratio = fg.mean(dim=(1, 2, 3)) / added.mean(dim=(1, 2, 3))
    assert torch.allclose(
        10 * torch.log10(ratio), torch.full((5,), snr), atol=1e-2
    )


def test_background_never_mixes_a_clip_with_itself():
    # Two clips: each one's background is the other
    quiet, loud = torch.full((1, 1, 4, 4), -60.0), torch.full((1, 1, 4, 4), 0.0)
    feats = torch.cat([quiet, loud])
    out = BackgroundMix(prob=1.0, min_snr_db=0.0, max_snr_db=0.0)(feats)
    # 0 dB: the background has the clip's own mean power, so +3 dB
    assert torch.allclose(out, feats + 10 * math.log10(2), atol=1e-3)
    # A batch of one is left alone
    assert torch.equal(BackgroundMix(prob=1.0)(quiet), quiet)


def test_per_clip_probability():
    feats = db_spectrograms(batch=200)
    out = RandomGain(max_gain_db=6.0, prob=0.5)(feats)
    changed = (out != feats).flatten(1).any(dim=1).float().mean()
    assert 0.3 < changed < 0.7


def test_resample_axis_wraps_or_clamps():
    x = torch.arange(5.0).view(1, 5)
    pos = torch.tensor([[-0.5, 4.5]])
    assert resample_axis(x, pos, dim=1).tolist() == [[0.0, 4.0]]
    assert resample_axis(x, pos, dim=1, wrap=True).tolist() == [[2.0, 2.0]]


# The recipe: augmentation in training only, never in the exported model

AUGMENT_ARGS = [
    "--gain_db=6.0",
    "--time_stretch=0.2",
    "--freq_shift_pct=0.05",
    "--background_prob=0.5",
    "--classifier_dropout=0.3",
    "--weight_decay=0.01",
]
RUN_ARGS = [
    "--download=False",
    "--train_fold_nums=[1]",
    "--valid_fold_nums=[2]",
    "--test_fold_nums=[3]",
    "--num_workers=0",
    "--batch_size=4",
    "--duration_ms=500",
    "--number_of_epochs=2",
    "--cnn_channels=[4,4,8,16]",
    "--last_channels=16",
    "--noprogressbar",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("us8k")
    make_urbansound_tree(
        root,
        n_per_class_per_fold=3,
        folds=[1, 2, 3],
        classes=US8K_CLASSES[:3],
        seconds=(0.3, 0.7),
    )
    return root


def run_recording_stages(monkeypatch, data, out, *args):
    """Runs cnn_large.yaml in this process; returns the stage of every call
    of a feature augmentation, and the number of training batches."""
    recipe = load_recipe()
    brain_class = recipe.SoundClassifierBrain
    forward = brain_class.compute_forward
    current, calls, train_batches = [None], [], [0]

    def spy_forward(self, batch, stage):
        current[0] = stage
        train_batches[0] += stage == sb.Stage.TRAIN
        return forward(self, batch, stage)

    monkeypatch.setattr(brain_class, "compute_forward", spy_forward)
    for cls, _ in FEATURE_AUGMENTS:
        original = cls.forward

        def spy(self, feats, generator=None, original=original):
            calls.append(current[0])
            return original(self, feats, generator)

        monkeypatch.setattr(cls, "forward", spy)
    recipe.main(
        [
            str(HPARAMS / "cnn_large.yaml"),
            f"--data_folder={data}",
            f"--output_folder={out}",
            *RUN_ARGS,
            *args,
        ]
    )
    return calls, train_batches[0]


def test_augmentation_runs_in_training_only(monkeypatch, data, tmp_path):
    calls, train_batches = run_recording_stages(
        monkeypatch, data, tmp_path / "run", *AUGMENT_ARGS
    )
    # Every training batch, each of the four, and nothing else
    assert train_batches > 0
    assert calls == [sb.Stage.TRAIN] * (4 * train_batches)
    # The exported model has no training-only module
    model_yaml = (tmp_path / "run" / "model" / "hyperparams.yaml").read_text()
    for name in (
        "feature_augment",
        "RandomGain",
        "TimeStretch",
        "FrequencyShift",
        "BackgroundMix",
        "SpecAugment",
        "Mixup",
    ):
        assert name not in model_yaml
    results = json.loads((tmp_path / "run" / "test_results.json").read_text())
    assert results["n_clips"] == 9


def test_a_run_is_repeatable_under_its_seed(monkeypatch, data, tmp_path):
    histories = []
    for name in ("a", "b"):
        run_recording_stages(
            monkeypatch, data, tmp_path / name, *AUGMENT_ARGS, "--seed=7"
        )
        history = json.loads((tmp_path / name / "history.json").read_text())
        histories.append([(h["train_loss"], h["valid_loss"]) for h in history])
    assert histories[0] == histories[1]


# The average of the weights (WeightAverage, ``ema_decay``)


def test_weight_average_follows_the_weights_and_swaps():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    avg = WeightAverage([net], decay=0.5)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    net(torch.randn(8, 3))  # moves the batch-norm statistics
    # The ramped decay of the first step: min(0.5, 1 / 10)
    avg.update()
    avg.swap()
    for key, value in net.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        live = avg.get_buffer(f"avg_0_{key.replace('.', '_')}")
        assert torch.allclose(value, 0.1 * start[key] + 0.9 * live)
    with pytest.raises(RuntimeError):
        avg.update()  # the averaged weights are in
    avg.swap()
    assert not avg.swapped and int(avg.n_updates) == 1
    # Many updates on fixed weights: the average reaches them
    for _ in range(60):
        avg.update()
    avg.swap()
    averaged = [p.clone() for p in net.parameters()]
    avg.swap()
    for a, p in zip(averaged, net.parameters(), strict=True):
        assert torch.allclose(a, p, atol=1e-5)


def test_weight_average_state_round_trip_and_limits():
    net = torch.nn.Linear(3, 2)
    avg = WeightAverage([net], decay=0.9)
    avg.update()
    avg.swap()
    again = WeightAverage([torch.nn.Linear(3, 2)], decay=0.9)
    again.load_state_dict(avg.state_dict())
    assert bool(again.swapped) and int(again.n_updates) == 1
    # The modules' weights are not part of the average's state
    assert not any(k.startswith("_") for k in avg.state_dict())
    assert WeightAverage.optional([net], 0.0) is None
    for decay in (-0.1, 1.0):
        with pytest.raises(ValueError):
            WeightAverage([net], decay=decay)


def run_spying_weights(monkeypatch, data, out, stop_at=None, *args):
    """Runs cnn_large.yaml with a weight average; records, at the start of
    each training epoch, the modules' weights and the average; raises
    ``Stop`` at the start of training epoch ``stop_at``."""
    recipe = load_recipe()
    brain_class = recipe.SoundClassifierBrain
    original = brain_class.on_stage_start
    records = {}

    def spy(self, stage, epoch=None):
        original(self, stage, epoch)
        if stage == sb.Stage.TRAIN:
            if epoch == stop_at:
                raise Stop
            records[epoch] = {
                "model": {
                    k: v.clone()
                    for k, v in self.modules.embedding_model.state_dict().items()
                },
                "average": {
                    k: v.clone() for k, v in self.average.state_dict().items()
                },
            }

    monkeypatch.setattr(brain_class, "on_stage_start", spy)
    recipe.main(
        [
            str(HPARAMS / "cnn_large.yaml"),
            f"--data_folder={data}",
            f"--output_folder={out}",
            *[a for a in RUN_ARGS if not a.startswith("--number_of_epochs")],
            "--number_of_epochs=3",
            "--ema_decay=0.9",
            *args,
        ]
    )
    return records


class Stop(Exception):
    """Stops a run, as a kill would, between two epochs."""


def same_state(a, b):
    return sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_weight_average_is_validated_exported_and_resumed(
    monkeypatch, data, tmp_path
):
    import gc

    full = run_spying_weights(monkeypatch, data, tmp_path / "full")
    # Training goes on from the trained weights, not the average
    assert not full[2]["average"]["swapped"]
    assert not same_state(full[2]["model"], full[3]["model"])
    # The kept checkpoint holds the averaged weights, and so does the
    # exported model; the trained ones are in the average's state
    # (the exported one, named in the model's hyperparams.yaml: a run keeps
    # the best checkpoint and the last one)
    header = (tmp_path / "full" / "model" / "hyperparams.yaml").read_text()
    name = re.search(r"checkpoint: (CKPT\+\S+)", header).group(1)
    ckpt = tmp_path / "full" / "save" / name
    saved = torch.load(ckpt / "embedding_model.ckpt")
    average = torch.load(ckpt / "weight_average.ckpt")
    assert bool(average["swapped"])
    exported = torch.load(tmp_path / "full" / "model" / "embedding_model.ckpt")
    assert same_state(saved, exported)
    assert not torch.equal(
        saved["conv.0.weight"], average["avg_0_conv_0_weight"]
    )

    # Stopped after epoch 1 and resumed: epoch 2 starts from the same
    # trained weights and the same average as without the stop
    with pytest.raises(Stop):
        run_spying_weights(monkeypatch, data, tmp_path / "resumed", 2)
    gc.collect()  # closes the stopped run's output-folder lock
    resumed = run_spying_weights(monkeypatch, data, tmp_path / "resumed")
    assert same_state(resumed[2]["model"], full[2]["model"])
    assert same_state(resumed[2]["average"], full[2]["average"])


def test_class_balanced_sampling_draws_classes_equally():
    from types import SimpleNamespace

    recipe = load_recipe()
    labels = ["a"] * 90 + ["b"] * 9 + ["c"] * 1
    dataset = SimpleNamespace(
        data={f"clip{i}": {"label": lab} for i, lab in enumerate(labels)},
        data_ids=[f"clip{i}" for i in range(len(labels))],
    )

    def sampler(seed):
        brain = SimpleNamespace(hparams=SimpleNamespace(seed=seed))
        kwargs = recipe.SoundClassifierBrain.balanced_loader_kwargs(
            brain, dataset, {"batch_size": 4, "shuffle": True}
        )
        assert "shuffle" not in kwargs and kwargs["batch_size"] == 4
        assert brain.train_sampler is kwargs["sampler"]
        return kwargs["sampler"]

    draws = []
    for epoch in range(30):
        s = sampler(1)
        s.set_epoch(epoch)
        epoch_draw = list(s)
        assert len(epoch_draw) == len(labels)
        draws += epoch_draw
    share = {c: sum(labels[i] == c for i in draws) / len(draws) for c in "abc"}
    assert all(abs(v - 1 / 3) < 0.05 for v in share.values()), share
    # Determinism under the seed, a new draw per epoch and per seed
    a, b = sampler(1), sampler(1)
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)
    assert list(sampler(1)) != list(sampler(2))


def test_the_last_epoch_is_tested_and_exported(monkeypatch, data, tmp_path):
    from sb_urbansound.errors import UserError

    recipe = load_recipe()
    brain_class = recipe.SoundClassifierBrain
    original = brain_class.on_stage_end

    def worse_each_epoch(self, stage, stage_loss, epoch=None):
        # Validation error rising with the epoch: the best is epoch 1
        if stage == sb.Stage.VALID:
            self.stats.summarize = lambda field: 1.0 / epoch
        return original(self, stage, stage_loss, epoch)

    monkeypatch.setattr(brain_class, "on_stage_end", worse_each_epoch)
    args = [a for a in RUN_ARGS if not a.startswith("--number_of_epochs")]
    for which, epoch in (("best", 1), ("last", 3)):
        out = tmp_path / which
        recipe.main(
            [
                str(HPARAMS / "cnn_large.yaml"),
                f"--data_folder={data}",
                f"--output_folder={out}",
                *args,
                "--number_of_epochs=3",
                f"--test_checkpoint={which}",
            ]
        )
        assert f"Epoch loaded: {epoch} " in (out / "train_log.txt").read_text()
        header = (out / "model" / "hyperparams.yaml").read_text()
        assert f"'epoch': {epoch}," in header
    with pytest.raises(UserError, match="test_checkpoint"):
        recipe.main(
            [
                str(HPARAMS / "cnn_large.yaml"),
                f"--data_folder={data}",
                f"--output_folder={tmp_path / 'bad'}",
                *RUN_ARGS,
                "--test_checkpoint=worst",
            ]
        )
