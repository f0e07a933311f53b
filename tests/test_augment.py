"""Through the recipe: SpecAugment and mixup run in training only and stay
out of the exported model; a run is repeatable under its seed; the last
epoch's checkpoint is tested when asked."""

import json

import pytest
from helpers import HPARAMS, US8K_CLASSES, load_recipe, make_urbansound_tree
from sb_urbansound.training.augment import Mixup, SpecAugment

import speechbrain as sb

#: The training-only augmentations of cnn_large.yaml, spied on
AUGMENTS = (SpecAugment, Mixup)

# The recipe: augmentation in training only, never in the exported model

AUGMENT_ARGS = [
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
    of SpecAugment and mixup, and the number of training batches."""
    recipe = load_recipe()
    brain_class = recipe.SoundClassifierBrain
    forward = brain_class.compute_forward
    current, calls, train_batches = [None], [], [0]

    def spy_forward(self, batch, stage):
        current[0] = stage
        train_batches[0] += stage == sb.Stage.TRAIN
        return forward(self, batch, stage)

    monkeypatch.setattr(brain_class, "compute_forward", spy_forward)
    for cls in AUGMENTS:
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
    # Every training batch, each of the two, and nothing else
    assert train_batches > 0
    assert calls == [sb.Stage.TRAIN] * (2 * train_batches)
    # The exported model has no training-only module
    model_yaml = (tmp_path / "run" / "model" / "hyperparams.yaml").read_text()
    for name in ("SpecAugment", "Mixup"):
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
