"""Fine-tuning from pretrained encoders (hparams/cnn14_finetune.yaml and
hparams/beats_finetune.yaml), offline: checkpoints of small configurations of
the same architectures are written to a temporary folder, and the recipe
fine-tunes from them on a tiny generated data set.

The recipe runs in this process (its ``main``), with its Brain's
``on_stage_end`` wrapped to record, after each training epoch, the encoder's
weights, which of them were trainable, and the optimizer's learning rates.
"""

import math

import pytest
import torch
from helpers import (
    HPARAMS,
    SHARED,
    US8K_CLASSES,
    load_recipe,
    make_urbansound_tree,
)
from sb_urbansound.errors import UserError
from sb_urbansound.training.finetune import (
    BEATsEncoder,
    build_beats,
    check_finetune_options,
    strict_parameter_transfer,
)
from test_models_yaml import (  # the rules every model YAML follows
    test_default_sizes_fit_together as default_sizes_fit,
    test_every_key_is_commented as every_key_is_commented,
    test_yaml_has_what_brain_and_crossval_need as has_what_the_recipe_needs,
)

import speechbrain as sb
from speechbrain.lobes.models.Cnn14 import Cnn14
from speechbrain.nnet.containers import LengthsCapableSequential
from speechbrain.utils.checkpoints import torch_parameter_transfer

FINETUNE_YAMLS = [
    "cnn14_finetune.yaml",
    "beats_finetune.yaml",
    "yamnet_finetune.yaml",
]

# 6 training, 6 validation and 6 test clips: 2 batches of 4 per epoch
DATA_ARGS = [
    "--download=False",
    "--train_fold_nums=[1]",
    "--valid_fold_nums=[2]",
    "--test_fold_nums=[3]",
    "--num_workers=0",
    "--batch_size=4",
    "--duration_ms=500",
    "--n_classes=0",
]
TRAIN_BATCHES = 2
# CNN14 needs at least 32 mel bands (5 poolings); its block widths are fixed
TINY_CNN14 = {"mel_bins": 32, "emb_dim": 32}
CNN14_ARGS = ["--n_mels=32", "--embedding_size=32"]
# beats_finetune.yaml's architecture (that of the authors' AudioSet
# checkpoints), shrunk
TINY_BEATS = {
    "encoder_layers": 1,
    "encoder_embed_dim": 32,
    "encoder_ffn_embed_dim": 64,
    "encoder_attention_heads": 2,
    "embed_dim": 32,
    "deep_norm": True,
    "relative_position_embedding": True,
    "max_distance": 800,
    "gru_rel_pos": True,
}
BEATS_ARGS = [
    "--beats_layers=1",
    "--beats_dim=32",
    "--beats_ffn_dim=64",
    "--beats_heads=2",
    "--beats_patch_dim=32",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("us8k")
    make_urbansound_tree(
        root,
        n_per_class_per_fold=2,
        folds=[1, 2, 3],
        classes=US8K_CLASSES[:3],
        seconds=(0.3, 0.7),
    )
    return root


def tiny_cnn14_checkpoint(path, seed=7, **sizes):
    """A CNN14 state dict (as the ESC50 recipe saves it), with non-default
    batch-norm statistics so that a loaded model differs from a new one."""
    torch.manual_seed(seed)
    model = Cnn14(**{**TINY_CNN14, **sizes})
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    state = model.state_dict()
    torch.save(state, path)
    return state


def tiny_beats_checkpoint(path, seed=7, **config):
    """A checkpoint in the BEATs authors' format: {"cfg": ..., "model": ...}."""
    torch.manual_seed(seed)
    model = build_beats({**TINY_BEATS, **config})
    state = model.state_dict()
    torch.save({"cfg": vars(model.cfg), "model": state}, path)
    return state


def run_recipe(monkeypatch, yaml, data, out, *args):
    """Run the recipe's main in this process; return the hparams and one
    record per training epoch (encoder state, trainable flags, rates)."""
    recipe = load_recipe()
    brain_class = recipe.SoundClassifierBrain
    original = brain_class.on_stage_end
    records = []

    def spy(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TRAIN:
            encoder = self.modules.embedding_model
            records.append(
                {
                    "epoch": epoch,
                    "trainable": {
                        p.requires_grad for p in encoder.parameters()
                    },
                    "training_mode": encoder.training,
                    "state": {
                        k: v.detach().clone()
                        for k, v in encoder.state_dict().items()
                    },
                    "lr": [g["lr"] for g in self.optimizer.param_groups],
                    "max_lr": [
                        g.get("max_lr") for g in self.optimizer.param_groups
                    ],
                }
            )
        return original(self, stage, stage_loss, epoch)

    monkeypatch.setattr(brain_class, "on_stage_end", spy)
    hparams = recipe.main(
        [
            str(HPARAMS / yaml),
            f"--data_folder={data}",
            f"--output_folder={out}",
            *DATA_ARGS,
            *args,
        ]
    )
    return hparams, records


def same_weights(state, reference, prefix):
    """Whether ``state`` (keys with ``prefix``) equals ``reference``."""
    assert sorted(state) == sorted(prefix + k for k in reference)
    return all(torch.equal(state[prefix + k], v) for k, v in reference.items())


def load_exported(out):
    """The exported model folder, loaded with SpeechBrain's EncoderClassifier;
    checks that it classifies a batch."""
    from speechbrain.inference.classifiers import EncoderClassifier

    folder = out / "model"
    model = EncoderClassifier.from_hparams(source=folder, savedir=folder)
    out_prob, _, index, labels = model.classify_batch(torch.randn(2, 8000))
    assert out_prob.shape == (2, 3)
    assert set(labels) <= set(US8K_CLASSES[:3])
    return model


@pytest.mark.parametrize("name", FINETUNE_YAMLS)
def test_yaml_follows_the_model_yaml_rules(name, tmp_path):
    # Keys, comments, and the default (full-size) model on a 1 s batch
    has_what_the_recipe_needs(name, tmp_path / "keys")
    every_key_is_commented(name)
    default_sizes_fit(name, tmp_path / "sizes")


# ------------------------------------------------------ strict transfer


def test_speechbrain_transfer_loads_nothing_silently_ours_names_keys(tmp_path):
    # A CNN14 state dict (unprefixed keys, as speechbrain/cnn14-esc50 holds)
    # into the embedding model of cnn14.yaml (keys prefixed with "cnn14.")
    path = tmp_path / "embedding_model.ckpt"
    tiny_cnn14_checkpoint(path)
    torch.manual_seed(0)
    wrapped = LengthsCapableSequential(cnn14=Cnn14(**TINY_CNN14))
    before = {k: v.clone() for k, v in wrapped.state_dict().items()}

    torch_parameter_transfer(wrapped, path)  # SpeechBrain's default: no error
    after = wrapped.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing

    with pytest.raises(UserError) as error:
        strict_parameter_transfer(wrapped, path)
    message = str(error.value)
    assert str(path) in message
    assert "missing keys (in the model, not in the file)" in message
    assert "cnn14.conv_block1.conv1.weight" in message
    assert "unexpected keys (in the file, not in the model)" in message
    assert "conv_block1.conv1.weight" in message
    assert "prefix 'cnn14.'" in message
    after = wrapped.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)

    # Into the CNN14 itself: loads, every tensor equal
    strict_parameter_transfer(wrapped.cnn14, path)
    assert same_weights(
        wrapped.cnn14.state_dict(), torch.load(path, weights_only=True), ""
    )


def test_shape_mismatch_is_named(tmp_path):
    path = tmp_path / "wide.ckpt"
    tiny_cnn14_checkpoint(path, emb_dim=64)
    with pytest.raises(UserError) as error:
        strict_parameter_transfer(Cnn14(**TINY_CNN14), path)
    message = str(error.value)
    assert "shape mismatches" in message
    assert "conv_block6.conv1.weight (file (64, 1024, 3, 3), model (32, " in (
        message
    )
    assert str(path) in message


def test_unreadable_checkpoint_is_named(tmp_path):
    path = tmp_path / "broken.ckpt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read the pretrained"):
        strict_parameter_transfer(Cnn14(**TINY_CNN14), path)


def test_beats_authors_checkpoint_loads_and_other_config_is_named(tmp_path):
    path = tmp_path / "BEATs_tiny.pt"
    state = tiny_beats_checkpoint(path)
    encoder = BEATsEncoder(TINY_BEATS)
    strict_parameter_transfer(encoder, path)
    assert same_weights(encoder.state_dict(), state, "beats.")

    with pytest.raises(UserError) as error:
        strict_parameter_transfer(
            BEATsEncoder({**TINY_BEATS, "encoder_layers": 2}), path
        )
    assert "encoder_layers: checkpoint 1, model 2" in str(error.value)
    assert str(path) in str(error.value)


def test_beats_takes_mono_16k_and_long_enough_clips():
    with pytest.raises(UserError, match="sample_rate is 32000"):
        BEATsEncoder(TINY_BEATS, sample_rate=32000)
    encoder = BEATsEncoder(TINY_BEATS)
    with pytest.raises(UserError, match="channels=1"):
        encoder(torch.randn(2, 8000, 2))
    with pytest.raises(UserError, match="raise duration_ms"):
        encoder(torch.randn(2, 2000))
    # Shorter clips of a batch: the mean of their own tokens
    pooled = encoder(torch.randn(2, 16000), torch.tensor([1.0, 0.5]))
    assert pooled.shape == (2, 1, 32) and torch.isfinite(pooled).all()


def test_bad_finetune_options_are_named():
    check_finetune_options({"encoder_lr_scale": None, "freeze_encoder": True})
    for values, named in [
        ({"encoder_lr_scale": 0}, "encoder_lr_scale=0"),
        ({"unfreeze_after_epochs": 1.5}, "unfreeze_after_epochs=1.5"),
        ({"freeze_encoder": "yes"}, "freeze_encoder='yes'"),
        ({"freeze_encoder": True, "unfreeze_after_epochs": 2}, "only one"),
    ]:
        with pytest.raises(UserError, match=named):
            check_finetune_options(values)


def test_an_encoder_that_would_never_unfreeze_is_warned_about(caplog):
    values = {"unfreeze_after_epochs": 24, "number_of_epochs": 10}
    check_finetune_options(values)
    assert "the encoder stays frozen for the whole run" in caplog.text
    caplog.clear()
    check_finetune_options({**values, "number_of_epochs": 30})
    assert "stays frozen" not in caplog.text


# ------------------------------------------------------ the recipe


def test_cnn14_frozen_encoder_stays_the_pretrained_one(
    data, tmp_path, monkeypatch
):
    ckpt = tmp_path / "pretrained" / "embedding_model.ckpt"
    ckpt.parent.mkdir()
    pretrained = tiny_cnn14_checkpoint(ckpt)
    out = tmp_path / "out"
    args = [
        f"--pretrained_encoder={ckpt}",
        "--freeze_encoder=True",
        "--number_of_epochs=2",
        *CNN14_ARGS,
    ]
    hparams, records = run_recipe(
        monkeypatch, "cnn14_finetune.yaml", data, out, *args
    )

    # Loaded (the YAML's seed makes other weights), frozen, in eval mode
    assert [r["epoch"] for r in records] == [1, 2]
    for record in records:
        assert record["trainable"] == {False}
        assert not record["training_mode"]
        assert same_weights(record["state"], pretrained, "cnn14.")
    exported = torch.load(out / "model" / "embedding_model.ckpt")
    assert same_weights(exported, pretrained, "cnn14.")
    assert (out / "test_results.json").exists()
    load_exported(out)

    # Rerun of the finished run: its checkpoint wins, the pretrained file is
    # not read again (it is broken now)
    ckpt.write_bytes(b"broken")
    run_recipe(monkeypatch, "cnn14_finetune.yaml", data, out, *args)


def test_beats_unfreezes_after_one_epoch_with_a_scaled_rate(
    data, tmp_path, monkeypatch
):
    ckpt = tmp_path / "BEATs_tiny.pt"
    pretrained = tiny_beats_checkpoint(ckpt)
    out = tmp_path / "out"
    hparams, records = run_recipe(
        monkeypatch,
        "beats_finetune.yaml",
        data,
        out,
        f"--pretrained_encoder={ckpt}",
        "--unfreeze_after_epochs=1",
        "--encoder_lr_scale=0.1",
        "--number_of_epochs=2",
        "--lr=0.01",
        "--max_lr=0.01",
        *BEATS_ARGS,
    )
    first, second = records
    # Epoch 1: frozen, so still the checkpoint's weights; epoch 2: trained
    assert first["trainable"] == {False} and not first["training_mode"]
    assert same_weights(first["state"], pretrained, "beats.")
    assert second["trainable"] == {True} and second["training_mode"]
    assert not same_weights(second["state"], pretrained, "beats.")
    # Two parameter groups: the head, then the encoder at 0.1 x the rate,
    # and the one-cycle schedule peaks at 0.1 x max_lr for the encoder
    for record in records:
        head, encoder = record["lr"]
        assert math.isclose(encoder, 0.1 * head, rel_tol=1e-6)
        assert record["max_lr"] == pytest.approx([0.01, 0.001])
    history = (out / "train_log.txt").read_text()
    assert "epoch: 2" in history
    load_exported(out)


def test_mismatched_checkpoint_stops_the_run(data, tmp_path, monkeypatch):
    ckpt = tmp_path / "wide.ckpt"
    tiny_cnn14_checkpoint(ckpt, emb_dim=64)
    with pytest.raises(UserError) as error:
        run_recipe(
            monkeypatch,
            "cnn14_finetune.yaml",
            data,
            tmp_path / "out",
            f"--pretrained_encoder={ckpt}",
            *CNN14_ARGS,
        )
    message = str(error.value)
    assert str(ckpt) in message
    assert "conv_block6.conv1.weight (file (64, 1024, 3, 3)" in message


def test_missing_pretrained_encoder_is_named(data, tmp_path, monkeypatch):
    # beats_finetune.yaml has no default checkpoint (not on the hub)
    with pytest.raises(UserError, match="--pretrained_encoder=<checkpoint"):
        run_recipe(
            monkeypatch,
            "beats_finetune.yaml",
            data,
            tmp_path / "out",
            *BEATS_ARGS,
        )
    with pytest.raises(UserError, match="does not exist"):
        run_recipe(
            monkeypatch,
            "beats_finetune.yaml",
            data,
            tmp_path / "out2",
            f"--pretrained_encoder={tmp_path / 'nowhere.pt'}",
            *BEATS_ARGS,
        )


YAMNET = SHARED / "data" / "yamnet"


def test_missing_yamnet_weights_name_the_key_and_the_shared_folder(
    data, tmp_path, monkeypatch
):
    with pytest.raises(UserError) as error:
        run_recipe(monkeypatch, "yamnet_finetune.yaml", data, tmp_path / "o")
    message = str(error.value)
    assert "--pretrained_encoder=<YAMNet's SavedModel folder" in message
    assert "../shared/data/yamnet" in message


needs_yamnet = pytest.mark.skipif(
    not (YAMNET / "variables" / "variables.index").is_file(),
    reason=f"needs YAMNet's released weights at {YAMNET} (../shared is absent)",
)


@needs_yamnet
def test_yamnet_mixes_the_clip_embeddings_not_the_log_mels(
    data, tmp_path, monkeypatch
):
    # (mixed log-mels would be new patches at every epoch for the frozen
    # encoder's cache)
    from sb_urbansound.training.augment import Mixup

    seen, forward = [], Mixup.forward

    def spy(self, x, *args, **kwargs):
        seen.append(tuple(x.shape[1:]))
        return forward(self, x, *args, **kwargs)

    monkeypatch.setattr(Mixup, "forward", spy)
    run_recipe(
        monkeypatch,
        "yamnet_finetune.yaml",
        data,
        tmp_path / "out",
        f"--pretrained_encoder={YAMNET}",
        "--number_of_epochs=1",
    )
    assert seen and set(seen) == {(1, 2048)}  # mean + std of the patches


@needs_yamnet
def test_yamnet_loads_the_release_then_unfreezes_after_one_epoch(
    data, tmp_path, monkeypatch
):
    from sb_urbansound.training.yamnet import read_release

    out = tmp_path / "out"
    hparams, records = run_recipe(
        monkeypatch,
        "yamnet_finetune.yaml",
        data,
        out,
        f"--pretrained_encoder={YAMNET}",  # the SavedModel folder itself
        "--freeze_encoder=False",
        "--unfreeze_after_epochs=1",
        "--number_of_epochs=2",
    )
    release = read_release(YAMNET)
    first, second = records
    assert first["trainable"] == {False} and not first["training_mode"]
    assert same_weights(
        {k: v for k, v in first["state"].items() if "num_batches" not in k},
        release,
        "",
    )
    assert second["trainable"] == {True} and second["training_mode"]
    assert not torch.equal(
        second["state"]["net.26.conv.weight"], release["net.26.conv.weight"]
    )
    assert (
        hparams["data_source"] == "feature_bank"
    )  # YAMNet's log-mel, computed once
    load_exported(out)
