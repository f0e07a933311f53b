"""YAMNet in PyTorch (sb_urbansound.training.yamnet): front end, encoder,
converter.

The tests that need YAMNet's released weights read them from the shared
folder (``../shared/data/yamnet``) and skip, saying so, when it is absent.

Reference values: the numbers in ``TF_LOGMEL`` and ``TF_LOGITS`` were
written down once from the release with TensorFlow 2.16.2 (tensorflow-cpu,
in a throwaway environment that is not part of this project): the
variables read with TensorFlow's own checkpoint reader
(``tf.train.load_checkpoint``), the front end of YAMNet's ``features.py``
(its waveform padding, ``tf.signal.stft``, ``tf.signal.
linear_to_mel_weight_matrix``) and the network with ``tf.nn.conv2d`` /
``tf.nn.depthwise_conv2d`` ('SAME' padding) and ``tf.nn.
batch_normalization`` (epsilon 1e-4, offset only), on the sounds of
:func:`sounds`. They are independent of this module's code.
"""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import HPARAMS, SHARED, run_without_torch
from sb_urbansound.errors import UserError
from sb_urbansound.serving import classify, export
from sb_urbansound.serving.export import export_model, untrained_model_folder
from sb_urbansound.serving.inference import load_model
from sb_urbansound.training import yamnet
from sb_urbansound.training.finetune import strict_parameter_transfer
from test_runtime import NO_TORCH

from speechbrain.inference.classifiers import EncoderClassifier

WEIGHTS = SHARED / "data" / "yamnet"
requires_weights = pytest.mark.skipif(
    not (WEIGHTS / "variables" / "variables.index").is_file(),
    reason=(
        f"needs YAMNet's released weights at {WEIGHTS} (../shared is absent)"
    ),
)

# Frames 0, 50 and 199, mel bands 0, 10, 40 and 63 of each sound
TF_LOGMEL = {
    "noise": [
        [2.1649, 1.6256, 2.5888, 3.8979],
        [0.6798, 1.8367, 2.739, 3.638],
        [1.5065, 0.6954, 1.6955, 3.2212],
    ],
    "tone": [
        [-2.6027, 1.7864, -1.208, -0.1713],
        [-2.4713, 1.7869, -1.6764, -0.0359],
        [1.0585, 2.4306, -0.7954, -0.934],
    ],
    "siren": [
        [-2.7552, -2.0119, -1.2202, -0.1713],
        [-2.5976, -2.4678, 3.4395, -0.0359],
        [-0.1191, 0.4629, 0.3791, -0.3304],
    ],
}
# The logits of the 4 patches of each sound, for the AudioSet classes
# Speech, White noise, Sine wave, Siren and Alarm
LOGIT_CLASSES = [0, 514, 495, 390, 382]
TF_LOGITS = {
    "noise": [
        [-2.8341, 0.3108, -4.2166, -4.6993, -3.2407],
        [-3.4693, -1.996, -9.2723, -4.5095, -4.5736],
        [-4.0345, -3.0553, -11.1978, -4.7149, -4.6343],
        [-4.5308, -3.7741, -9.1997, -8.7173, -9.0278],
    ],
    "tone": [
        [-4.0244, -4.4803, -0.1848, -4.6913, -2.556],
        [-3.9139, -2.0372, -0.3753, -4.0937, -2.5138],
        [-3.8627, -2.7925, 0.1603, -4.0617, -2.479],
        [-4.4575, -10.3906, -1.1223, -4.7899, 0.9049],
    ],
    "siren": [
        [-8.5235, -25.6796, -18.3231, 3.6318, 3.7601],
        [-6.8991, -13.3153, -7.2119, 1.8698, 1.4535],
        [-7.3821, -19.2246, -13.0475, 3.7898, 3.4495],
        [-4.6621, -13.0216, -12.6252, 0.2442, -0.165],
    ],
}


def sounds():
    """Three generated 2 s sounds at 16 kHz: white noise, 440 Hz, a siren."""
    rate = 16000
    t = np.arange(2 * rate) / rate
    rng = np.random.RandomState(0)  # the legacy generator: a frozen stream
    noise = (0.5 * rng.standard_normal(2 * rate)).clip(-1, 1)
    hiss = 0.01 * rng.standard_normal(2 * rate)
    tone = 0.5 * np.sin(2 * np.pi * 440 * t) + hiss
    freq = 1000 + 400 * np.sin(np.pi * t)  # 600-1400 Hz, a 2 s cycle
    phase = 2 * np.pi * np.cumsum(freq) / rate
    siren = (
        0.3
        * (np.sin(phase) + 0.5 * np.sin(2 * phase) + 0.3 * np.sin(3 * phase))
        + hiss
    )
    return {
        "noise": noise.astype(np.float32),
        "tone": tone.astype(np.float32),
        "siren": siren.astype(np.float32),
    }


def numpy_log_mel(wav):
    """YAMNet's log-mel in plain numpy, from the model's published facts."""
    first, hop = 400 - 160 + 160 * 96, 160 * 48
    n = max(len(wav), first)
    padded = first + hop * int(np.ceil((n - first) / hop))
    wav = np.pad(wav.astype(np.float64), (0, padded - len(wav)))
    frames = np.lib.stride_tricks.sliding_window_view(wav, 400)[::160]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    magnitude = np.abs(np.fft.rfft(frames * window, n=512))
    hz = np.arange(257) * 8000 / 256

    def htk(f):
        return 1127 * np.log(1 + f / 700)

    edges = np.linspace(htk(125), htk(7500), 66)
    mel = np.zeros((257, 64))
    for band in range(64):
        lo, mid, hi = edges[band : band + 3]
        for b in range(1, 257):  # the DC bin gets no weight
            m = htk(hz[b])
            mel[b, band] = max(
                0, min((m - lo) / (mid - lo), (hi - m) / (hi - mid))
            )
    return np.log(magnitude @ mel + 0.001)


@pytest.fixture(scope="module")
def encoder():
    """YAMNetEncoder with the released weights, in evaluation mode."""
    enc = yamnet.YAMNetEncoder()
    enc.load_state_dict(yamnet.read_release(WEIGHTS), strict=False)
    return enc.eval()


def test_the_log_mel_matches_a_numpy_reference_and_tensorflow():
    front = yamnet.YAMNetFrontEnd()
    for name, wav in sounds().items():
        ours = front(torch.from_numpy(wav)[None])[0].numpy()
        reference = numpy_log_mel(wav)
        assert ours.shape == reference.shape == (240, 64)
        np.testing.assert_allclose(ours, reference, atol=1e-3, err_msg=name)
        pinned = ours[[0, 50, 199]][:, [0, 10, 40, 63]]
        np.testing.assert_allclose(pinned, TF_LOGMEL[name], atol=1e-3)


def test_same_padding_is_tensorflows_not_torchs_symmetric_padding():
    # TensorFlow pads stride-2 convolutions of even inputs after only
    assert yamnet.same_padding(96, 3, 2) == (0, 1)
    assert yamnet.same_padding(6, 3, 2) == (0, 1)
    assert yamnet.same_padding(95, 3, 2) == (1, 1)
    assert yamnet.same_padding(64, 3, 1) == (1, 1)
    assert yamnet.same_padding(64, 1, 1) == (0, 0)
    unit = yamnet.ConvUnit(1, 1, 3, 2).eval()
    torch.nn.init.ones_(unit.conv.weight)
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 0, 0] = 1.0  # only 'SAME' with (0, 1) leaves the corner out
    x[0, 0, 3, 3] = 100.0
    out = unit.conv(torch.nn.functional.pad(x, (0, 1, 0, 1)))
    assert out[0, 0, 1, 1] == 100.0 and out[0, 0, 0, 0] == 1.0
    assert unit(x).shape == (1, 1, 2, 2)


def test_batch_norm_centres_without_scale_with_epsilon_1e_4():
    bn = yamnet.CentredBatchNorm(3).eval()
    bn.running_mean.copy_(torch.tensor([1.0, 2.0, 3.0]))
    bn.running_var.copy_(torch.tensor([0.0, 1.0, 4.0]))
    bn.beta.data.copy_(torch.tensor([0.5, 0.0, -1.0]))
    x = torch.full((1, 3, 1, 1), 2.0)
    expected = (2.0 - bn.running_mean) / torch.sqrt(bn.running_var + 1e-4)
    expected = expected + bn.beta.data
    torch.testing.assert_close(bn(x).flatten(), expected)
    assert not any("weight" in k for k in bn.state_dict())
    # in training too: the loaded statistics, never updated
    bn.train()
    torch.testing.assert_close(bn(x).flatten(), expected)
    assert bn.running_mean.tolist() == [1.0, 2.0, 3.0]
    # the convolution unit folds it into the convolution
    unit = yamnet.ConvUnit(3, 3, 3, 1, True).train()
    unit.bn.load_state_dict(bn.state_dict())
    x = torch.randn(2, 3, 5, 4)
    unfolded = torch.relu(bn(unit.conv(torch.nn.functional.pad(x, (1,) * 4))))
    torch.testing.assert_close(unit(x), unfolded)


@requires_weights
def test_the_release_has_batch_norms_with_an_offset_and_no_scale():
    variables = yamnet.read_tensor_bundle(WEIGHTS)
    kinds = {name.split("/")[-3] for name in variables}
    assert kinds == {
        "kernel",
        "depthwise_kernel",
        "beta",
        "moving_mean",
        "moving_variance",
        "bias",
    }
    assert len(variables) == 110  # 27 convolutions, 27 batch norms, dense


@requires_weights
def test_the_logits_match_values_written_down_from_the_release(encoder):
    front = yamnet.YAMNetFrontEnd()
    for name, wav in sounds().items():
        with torch.no_grad():
            logits = encoder.audioset_logits(front(torch.from_numpy(wav)[None]))
        ours = logits[0][:, LOGIT_CLASSES].numpy()
        np.testing.assert_allclose(
            ours, TF_LOGITS[name], atol=1e-3, err_msg=name
        )


@requires_weights
def test_the_audioset_top5_of_generated_sounds_make_sense(encoder):
    with open(WEIGHTS / "assets" / "yamnet_class_map.csv") as f:
        names = [row["display_name"] for row in csv.DictReader(f)]
    front = yamnet.YAMNetFrontEnd()
    top5 = {}
    for name, wav in sounds().items():
        with torch.no_grad():
            logits = encoder.audioset_logits(front(torch.from_numpy(wav)[None]))
        scores = torch.sigmoid(logits[0]).mean(dim=0)
        top5[name] = [names[i] for i in scores.topk(5).indices]
    assert "White noise" in top5["noise"], top5
    assert top5["tone"][0] in ("Sine wave", "Dial tone", "Tuning fork"), top5
    assert top5["siren"][0] in ("Siren", "Alarm"), top5
    assert {"Siren", "Alarm"} <= set(top5["siren"]), top5


@requires_weights
def test_convert_writes_a_checkpoint_that_strict_transfer_loads(
    tmp_path, capsys
):
    out = tmp_path / "yamnet.ckpt"
    assert yamnet.main(["convert", str(WEIGHTS), str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    from_ckpt, from_folder = yamnet.YAMNetEncoder(), yamnet.YAMNetEncoder()
    strict_parameter_transfer(from_ckpt, out)
    strict_parameter_transfer(from_folder, WEIGHTS)  # the folder, directly
    for (key, a), b in zip(
        from_ckpt.state_dict().items(), from_folder.state_dict().values()
    ):
        assert torch.equal(a, b), key
    # an existing file is never overwritten
    before = out.read_bytes()
    assert yamnet.main(["convert", str(WEIGHTS), str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert out.read_bytes() == before


def _copy_weights(tmp_path):
    copy = tmp_path / "yamnet"
    shutil.copytree(WEIGHTS, copy)
    for path in copy.rglob("*"):
        path.chmod(0o644 if path.is_file() else 0o755)
    return copy / "variables"


@requires_weights
@pytest.mark.parametrize(
    "damage",
    ["truncated index", "no magic", "truncated data", "foreign", "a file"],
)
def test_a_damaged_or_foreign_bundle_is_refused_in_one_line(
    tmp_path, capsys, damage
):
    variables = _copy_weights(tmp_path)
    index = variables / "variables.index"
    data = variables / "variables.data-00000-of-00001"
    source = variables.parent
    if damage == "truncated index":
        index.write_bytes(index.read_bytes()[:3000])
    elif damage == "no magic":
        index.write_bytes(index.read_bytes()[:-8] + b"\0" * 8)
    elif damage == "truncated data":
        data.write_bytes(data.read_bytes()[:1_000_000])
    elif damage == "foreign":  # a bundle of another model: no YAMNet layers
        index.write_bytes(
            index.read_bytes().replace(b"layer_with", b"LAYER_with")
        )
    else:
        source = tmp_path / "model.ckpt"
        torch.save({"x": torch.ones(1)}, source)
    out = tmp_path / "out.ckpt"
    assert yamnet.main(["convert", str(source), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not out.exists()


@requires_weights
def test_variables_are_found_by_layer_under_any_prefix():
    variables = yamnet.read_tensor_bundle(WEIGHTS)
    prefix = "layer-1/layer/_func/_yamnet/"
    moved = {
        "model/backbone/" + name[len(prefix) :]: value
        for name, value in variables.items()
    }
    expected = yamnet.yamnet_state_dict(variables)
    got = yamnet.yamnet_state_dict(moved)
    assert all(torch.equal(got[k], v) for k, v in expected.items())
    # two complete copies: which one is YAMNet is not clear, so refuse
    with pytest.raises(UserError, match="expected one set"):
        yamnet.yamnet_state_dict({**variables, **moved})


@requires_weights
def test_keras_h5_weights_give_the_same_checkpoint(tmp_path):
    h5py = pytest.importorskip("h5py")
    state = yamnet.read_release(WEIGHTS)
    # Keras' layout: one group per layer, variables "<layer>/<kind>:0"
    path = tmp_path / "yamnet.h5"
    with h5py.File(path, "w") as f:
        for j in range(27):
            i, part = (j + 1) // 2, (j + 1) % 2
            op = (
                "conv" if j == 0 else ("depthwise_conv", "pointwise_conv")[part]
            )
            layer = f"layer{i + 1}/{op}"
            weight = state[f"net.{j}.conv.weight"].numpy()
            if op == "depthwise_conv":
                f[f"{layer}/{layer}/depthwise_kernel:0"] = weight.transpose(
                    2, 3, 0, 1
                )
            else:
                f[f"{layer}/{layer}/kernel:0"] = weight.transpose(2, 3, 1, 0)
            for kind, key in (
                ("beta", "beta"),
                ("moving_mean", "running_mean"),
                ("moving_variance", "running_var"),
            ):
                f[f"{layer}/bn/{layer}/bn/{kind}:0"] = state[
                    f"net.{j}.bn.{key}"
                ].numpy()
        f["logits/logits/kernel:0"] = state["logits.weight"].numpy().T
        f["logits/logits/bias:0"] = state["logits.bias"].numpy()
    got = yamnet.read_release(path)
    assert all(torch.equal(got[k], v) for k, v in state.items())
    enc = yamnet.YAMNetEncoder()
    strict_parameter_transfer(enc, path)


def test_patches_of_padding_are_left_out_of_the_clip_embedding():
    enc = yamnet.YAMNetEncoder().eval()
    front = yamnet.YAMNetFrontEnd()
    sound = torch.from_numpy(sounds()["siren"][:16000])
    padded = torch.cat([sound, torch.zeros(48000)])  # a 1 s clip in 4 s
    with torch.no_grad():
        feats = front(torch.stack([padded, torch.zeros(64000)]))
        pooled = enc(feats)
        patches = enc.patches(feats[:1])[0]
        emb = enc.patch_embeddings(patches)
        with_sound = (patches > yamnet.SILENCE).flatten(1).any(dim=1)
        # the graph that exports computes every patch: the same numbers
        enc.train()
        enc.net.eval()  # (batch norm: running statistics in both)
        everything = enc(feats)
    assert 0 < with_sound.sum() < len(patches)
    torch.testing.assert_close(pooled[0, 0], emb[with_sound].mean(dim=0))
    torch.testing.assert_close(pooled, everything)
    assert torch.isfinite(pooled[1]).all()  # all silence: all patches


def test_a_frozen_encoder_computes_each_patch_once_until_its_weights_change():
    enc = yamnet.YAMNetEncoder().eval()
    feats = yamnet.YAMNetFrontEnd()(torch.randn(2, 32000) * 0.1)
    computed = []
    compute = enc.patch_embeddings
    enc.patch_embeddings = lambda p: computed.append(len(p)) or compute(p)
    trained = enc(feats)  # parameters need gradients: no cache
    enc.requires_grad_(False)  # frozen
    first, again = enc(feats), enc(feats)
    assert computed == [8, 8]  # 2 clips of 4 patches, then none
    torch.testing.assert_close(first, trained)
    torch.testing.assert_close(again, first)
    with torch.no_grad():
        enc.net[0].bn.beta.add_(0.5)  # e.g. a loaded checkpoint
    changed = enc(feats)
    assert computed == [8, 8, 8]
    assert not torch.equal(changed, first)


# ------------------------------------------------- a model folder's ways out

LABELS = ["dog_bark", "siren", "street_music"]


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A yamnet_finetune.yaml model folder: YAMNet's weights, a random head,
    1 s windows; exported to ONNX and TorchScript (with the export's check)."""
    if not (WEIGHTS / "variables" / "variables.index").is_file():
        pytest.skip(f"needs YAMNet's released weights at {WEIGHTS}")
    torch.manual_seed(0)
    folder = untrained_model_folder(
        HPARAMS / "yamnet_finetune.yaml",
        tmp_path_factory.mktemp("yamnet") / "model",
        LABELS,
        {"duration_ms": 1000},
    )
    torch.save(yamnet.read_release(WEIGHTS), folder / "embedding_model.ckpt")
    return folder, export_model(folder)


def test_a_yamnet_model_folder_exports_and_matches_eager_pytorch(model_folder):
    folder, results = model_folder
    for fmt, file in export.FILES.items():
        result = results[fmt]
        assert "error" not in result, result
        assert (folder / file).is_file()
        assert result["top1_agree"] == result["clips"] > 0
        assert result["max_abs_diff"] <= export.PROB_TOLERANCE
    # the graph starts from the waveform: YAMNet's front end is inside
    import onnx

    proto = onnx.load(folder / "model.onnx")
    meta = {p.key: p.value for p in proto.metadata_props}
    assert "YAMNetFrontEnd" in meta["modules"]
    assert "YAMNetEncoder" in meta["modules"]
    # EncoderClassifier (SpeechBrain's) loads the folder
    model = load_model(folder)
    assert isinstance(model, EncoderClassifier)
    wav = torch.from_numpy(sounds()["siren"][:16000])[None]
    assert model.classify_batch(wav)[0].shape[-1] == len(LABELS)


def test_a_yamnet_model_card_names_yamnet_audioset_and_the_licence(
    model_folder,
):
    card = (model_folder[0] / "README.md").read_text()
    for words in ("YAMNet", "AudioSet", "Apache License 2.0"):
        assert words in card
    # whether the encoder was frozen or fine-tuned is in the settings
    assert "| freeze_encoder | False |" in card, card
    assert "| unfreeze_after_epochs | 24 |" in card, card
    assert "and fine-tuned here" not in card


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_classify_segments_and_stream_work_for_yamnet(
    model_folder, backend, tmp_path, capsys
):
    import soundfile as sf

    folder = model_folder[0]
    wav = np.concatenate(list(sounds().values()))  # 6 s
    path = tmp_path / "three.wav"
    sf.write(path, wav, 16000)
    code = classify.main(
        [str(folder), str(path), "--segments", "--json", "--backend", backend]
        + ["--threshold", "0.3"]  # a random head: one class is above 1/3
    )
    assert code == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["segments"] and result["n_windows"] == 11
    pcm = (np.clip(wav, -1, 1) * 32767).astype("<i2").tobytes()
    done = subprocess.run(
        [sys.executable, "-m", "sb_urbansound.serving.classify", str(folder)]
        + ["--stream", "--rate", "16000", "--channels", "1"]
        + ["--backend", backend],
        input=pcm,
        capture_output=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(lines) == 11 and all(x["label"] in LABELS for x in lines)


def test_the_onnx_runtime_scores_a_yamnet_model_without_torch(
    model_folder, tmp_path
):
    import soundfile as sf

    folder = model_folder[0]
    path = tmp_path / "siren.wav"
    sf.write(path, sounds()["siren"], 16000)
    done = run_without_torch(NO_TORCH, tmp_path, folder, path)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["loaded"] == []
    (ref,) = classify.classify_files(folder, [path], top_k=3, progress=False)
    assert out["result"]["label"] == ref["label"]
    assert out["result"]["prob"] == pytest.approx(ref["prob"], abs=1e-3)


@requires_weights
def test_classify_zero_shot_labels_generated_sounds_through_a_class_map(
    tmp_path,
):
    import soundfile as sf

    class_map = tmp_path / "map.csv"
    class_map.write_text(
        "label,audioset\n"
        "hiss,White noise\n"
        "beep,Sine wave\n"
        "beep,Dial tone\n"
        "wail,Siren\n"
        "wail,Civil defense siren\n"
    )
    files = []
    for name, wav in sounds().items():
        files.append(tmp_path / f"{name}.wav")
        sf.write(files[-1], wav, 16000)
    result = subprocess.run(
        [sys.executable, "-m", "sb_urbansound.serving.classify", str(WEIGHTS)]
        + [str(f) for f in files]
        + ["--zero-shot", str(class_map)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    labels = [line.split("\t")[1] for line in result.stdout.splitlines()]
    assert labels == ["hiss", "beep", "wail"], result.stdout
    # the same scores as the encoder's own AudioSet head, class by class
    model = yamnet.ZeroShot(WEIGHTS, class_map)
    wav = torch.from_numpy(sounds()["siren"])
    with torch.no_grad():
        logits = model.encoder.audioset_logits(model.front_end(wav[None]))
    audioset = torch.sigmoid(logits[0]).mean(dim=0)
    expected = [float(audioset[i].max()) for i in model.classes.values()]
    got = model.file_window_probs(files[2])[0].mean(axis=0)
    np.testing.assert_allclose(got, expected, atol=1e-4)


@requires_weights
def test_a_class_map_naming_no_audioset_class_is_refused_naming_the_line(
    tmp_path,
):
    class_map = tmp_path / "map.csv"
    class_map.write_text("label,audioset\ndog,Bark\ncat,Meow meow\n")
    result = subprocess.run(
        [sys.executable, "-m", "sb_urbansound.serving.classify", str(WEIGHTS)]
        + ["x.wav", "--zero-shot", str(class_map)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert f"{class_map}, line 3: 'cat,Meow meow'" in result.stderr
    assert "Traceback" not in result.stderr


@requires_weights
@pytest.mark.parametrize("pooling", ["mean", "mean+std"])
def test_more_zero_padding_leaves_the_clip_embedding_as_it_is(
    encoder, pooling, monkeypatch
):
    monkeypatch.setattr(encoder, "pooling", pooling)
    front = yamnet.YAMNetFrontEnd()
    sound = torch.from_numpy(sounds()["siren"][:16000])
    with torch.no_grad():
        short, long = (
            encoder(front(torch.cat([sound, torch.zeros(pad)])[None]))
            for pad in (16000, 48000)
        )
    assert encoder.patches(front(torch.zeros(1, 64000))).shape[1] == 8
    assert short.abs().max() > 0.1  # (a random encoder's would be ~0)
    torch.testing.assert_close(short, long)
