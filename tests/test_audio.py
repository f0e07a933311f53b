"""Tests of sb_urbansound.data.audio (finding, reading and conditioning clips)
and of the recipe's data pipeline (``dataio_prep`` in ``train.py``)."""

import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import FORMATS, load_recipe, write_clip
from sb_urbansound.data.audio import (
    READ_MARGIN_S,
    ClipConditioner,
    load_audio,
    pad_trunc,
    rechannel,
    time_shift,
)
from sb_urbansound.errors import AudioLoadError, DataPrepError, UserError
from sb_urbansound.serving.runtime import find_audio_files, remove_dc_offset


def corrupt_after_header(path, seed=0):
    """Overwrite the second half of a file with random bytes."""
    blob = bytearray(path.read_bytes())
    half = len(blob) // 2
    rng = np.random.default_rng(seed)
    blob[half:] = rng.integers(0, 256, len(blob) - half, np.uint8).tobytes()
    path.write_bytes(bytes(blob))


def tone(rate, seconds=1.0, freq=440.0, channels=1):
    """A sine of ``freq`` Hz, ``[time, channels]``."""
    t = torch.arange(int(rate * seconds)) / rate
    return torch.sin(2 * torch.pi * freq * t).unsqueeze(1).repeat(1, channels)


# --------------------------------------------------------------------------
# find_audio_files
# --------------------------------------------------------------------------


def test_find_audio_files_regular_visible_files_only(tmp_path):
    for name in ["a/1.wav", "a/2.FLAC", "b/c/3.ogg"]:
        write_clip(tmp_path / name, 0, 8000, 1, 0.01, subtype=None)
    (tmp_path / "b" / "notes.txt").write_text("not audio")
    expected = ["a/1.wav", "a/2.FLAC", "b/c/3.ogg"]
    assert find_audio_files(tmp_path) == expected
    # Hidden files and folders, a FIFO and a dangling link named *.wav.
    (tmp_path / "a" / "._1.wav").write_bytes(b"\0\5\26\7 resource fork")
    (tmp_path / ".DS_Store").write_bytes(b"junk")
    write_clip(tmp_path / ".ipynb_checkpoints" / "4.wav", 0, 8000, 1, 0.01)
    write_clip(tmp_path / "b" / ".hidden" / "5.wav", 0, 8000, 1, 0.01)
    os.mkfifo(tmp_path / "a" / "x.wav")
    os.symlink("nowhere.wav", tmp_path / "b" / "dangling.wav")
    assert find_audio_files(tmp_path) == expected
    # A link to a file is followed (it is the only path to that file).
    write_clip(tmp_path.parent / "outside.wav", 0, 8000, 1, 0.01)
    os.symlink(tmp_path.parent / "outside.wav", tmp_path / "b" / "link.wav")
    assert find_audio_files(tmp_path) == sorted([*expected, "b/link.wav"])
    assert find_audio_files(tmp_path, suffixes=(".ogg",)) == ["b/c/3.ogg"]


def test_find_audio_files_refuses_two_paths(tmp_path):
    write_clip(tmp_path / "dog" / "1.wav", 0, 8000, 1, 0.01)
    write_clip(tmp_path / "bird" / "2.wav", 1, 8000, 1, 0.01)
    os.symlink("../dog/1.wav", tmp_path / "bird" / "1.wav")
    with pytest.raises(AudioLoadError, match="reached by two paths") as err:
        find_audio_files(tmp_path)
    assert "bird/1.wav and dog/1.wav" in str(err.value)
    assert isinstance(err.value, UserError)
    twice = []
    assert find_audio_files(tmp_path, duplicates=twice) == [
        "bird/1.wav",
        "bird/2.wav",
    ]
    assert twice == [("bird/1.wav", "dog/1.wav")]

    (tmp_path / "bird" / "1.wav").unlink()
    os.symlink("../dog", tmp_path / "bird" / "doglink")
    twice = []
    files = find_audio_files(tmp_path, duplicates=twice)
    assert len(files) == 2 and len(twice) == 1
    assert set(twice[0]) == {"bird/doglink/", "dog/"}
    with pytest.raises(AudioLoadError, match="bird/doglink/ and dog/"):
        find_audio_files(tmp_path)


# --------------------------------------------------------------------------
# load_audio
# --------------------------------------------------------------------------


@pytest.mark.parametrize("sample_rate,channels,subtype", FORMATS)
def test_load_audio_formats(tmp_path, sample_rate, channels, subtype):
    path = write_clip(
        tmp_path / "a.wav", 3, sample_rate, channels, 0.5, subtype
    )
    wav, sr = load_audio(path)
    assert sr == sample_rate
    assert wav.dtype == torch.float32
    assert wav.shape == (int(round(0.5 * sample_rate)), channels)
    assert wav.abs().max() <= 1.0
    assert wav.abs().max() > 0.05  # integer PCM scaled to [-1, 1], not raw ints


def test_load_audio_flac_and_ogg(tmp_path):
    for name in ("a.flac", "a.ogg"):
        path = write_clip(tmp_path / name, 1, 22050, 2, 0.3, None)
        wav, sr = load_audio(path)
        assert sr == 22050 and wav.shape[1] == 2 and wav.shape[0] > 6000


def test_load_audio_errors_name_the_file(tmp_path):
    with pytest.raises(AudioLoadError, match="missing.wav: no such file"):
        load_audio(tmp_path / "missing.wav")
    bad = tmp_path / "corrupt.wav"
    bad.write_bytes(b"RIFF not really a wav file" * 10)
    with pytest.raises(AudioLoadError, match="corrupt.wav"):
        load_audio(bad)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0, 1)), 8000)
    with pytest.raises(AudioLoadError, match="empty.wav: holds no samples"):
        load_audio(empty)
    flac = write_clip(tmp_path / "broken.flac", 0, 16000, 1, 2.0, "PCM_16")
    corrupt_after_header(flac)
    with pytest.raises(AudioLoadError, match="broken.flac: cannot be decoded"):
        load_audio(flac)
    os.mkfifo(tmp_path / "pipe.wav")  # would block a reader
    with pytest.raises(AudioLoadError, match="pipe.wav: not a regular file"):
        load_audio(tmp_path / "pipe.wav")
    (tmp_path / "folder.wav").mkdir()
    with pytest.raises(AudioLoadError, match="folder.wav: not a regular"):
        load_audio(tmp_path / "folder.wav")


def test_load_audio_refuses_nan_and_inf(tmp_path):
    for value in (np.nan, np.inf, -np.inf):
        sig = np.zeros((800, 2), np.float32)
        sig[5, 1] = value
        path = tmp_path / "bad.wav"
        sf.write(path, sig, 8000, subtype="FLOAT")
        with pytest.raises(AudioLoadError, match="1 NaN or infinite") as err:
            load_audio(path)
        assert str(path) in str(err.value)
        # Within the part that is read: refused too.
        with pytest.raises(AudioLoadError, match="NaN or infinite"):
            load_audio(path, max_seconds=0.01)


def test_load_audio_max_seconds_reads_only_that_much(tmp_path):
    path = write_clip(tmp_path / "a.wav", 0, 8000, 2, 1.0, "PCM_16")
    full, _ = load_audio(path)
    assert full.shape == (8000, 2)
    for seconds, frames in [(0.25, 2000), (0.1001, 801), (5.0, 8000)]:
        wav, sr = load_audio(path, max_seconds=seconds)
        assert sr == 8000 and wav.shape == (frames, 2)
        assert torch.equal(wav, full[:frames])
    assert load_audio(path, max_seconds=1e-9)[0].shape == (1, 2)
    # A NaN after the part that is kept is never read.
    sig = np.zeros((8000, 1), np.float32)
    sig[6000, 0] = np.nan
    late = tmp_path / "late_nan.wav"
    sf.write(late, sig, 8000, subtype="FLOAT")
    assert load_audio(late, max_seconds=0.5)[0].shape == (4000, 1)
    with pytest.raises(AudioLoadError, match="late_nan.wav: holds 1 NaN"):
        load_audio(late)


# --------------------------------------------------------------------------
# Waveform steps
# --------------------------------------------------------------------------


def test_rechannel():
    mono = torch.randn(100, 1)
    stereo = rechannel(mono, 2)
    assert stereo.shape == (100, 2)
    assert torch.equal(stereo[:, 0], stereo[:, 1])
    assert torch.equal(stereo[:, 0], mono[:, 0])
    two = torch.stack([torch.ones(50), 3 * torch.ones(50)], dim=1)
    assert torch.allclose(rechannel(two, 1), 2 * torch.ones(50, 1))
    assert rechannel(two, 2) is two
    assert rechannel(torch.randn(10, 3), 2).shape == (10, 2)
    batch = torch.randn(4, 100, 1)
    assert rechannel(batch, 2).shape == (4, 100, 2)
    with pytest.raises(ValueError):
        rechannel(two, 0)


def test_pad_trunc_deterministic_and_random():
    wav = torch.ones(30, 2)
    out = pad_trunc(wav, 100)
    assert out.shape == (100, 2)
    assert out[:30].eq(1).all() and out[30:].eq(0).all()
    assert torch.equal(pad_trunc(wav, 100), out)  # evaluation: deterministic
    starts = set()
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        r = pad_trunc(wav, 100, random=True, generator=g)
        assert r.shape == (100, 2) and r.sum() == 60
        nz = r[:, 0].nonzero().flatten()
        assert nz[-1] - nz[0] == 29  # contiguous, unchanged
        starts.add(int(nz[0]))
    assert len(starts) > 10
    long = torch.arange(500.0).unsqueeze(1)
    assert torch.equal(pad_trunc(long, 100), long[:100])
    assert torch.equal(pad_trunc(long, 100, random=True), long[:100])
    assert pad_trunc(torch.ones(3), 5).shape == (5,)  # mono [time]


def test_time_shift_wraps_around():
    g = torch.Generator().manual_seed(1)
    wav = torch.arange(100.0).unsqueeze(1).repeat(1, 2)
    shifts = set()
    for _ in range(30):
        out = time_shift(wav, 0.4, generator=g)
        k = int((out[:, 0] == 0).nonzero())
        assert 0 <= k < 40
        assert torch.equal(out, torch.roll(wav, k, dims=0))  # nothing lost
        shifts.add(k)
    assert len(shifts) > 5
    assert torch.equal(time_shift(wav, 0.0), wav)
    mono = torch.arange(100.0)
    assert sorted(time_shift(mono, 0.5).tolist()) == mono.tolist()


def test_remove_dc_offset():
    wav = np.stack([np.full(50, 0.3), np.arange(50.0)], 1).astype(np.float32)
    out = remove_dc_offset(wav)
    assert np.abs(out.mean(axis=0)).max() < 1e-5
    assert np.allclose(out[:, 1], np.arange(50.0) - 24.5)


# --------------------------------------------------------------------------
# ClipConditioner
# --------------------------------------------------------------------------


@pytest.mark.parametrize("src", [8000, 22050, 44100, 48000, 96000])
def test_conditioner_resamples(src):
    cond = ClipConditioner(16000, channels=2)
    out = cond.convert(tone(src, channels=2), src)
    assert out.shape == (16000, 2) and out.dtype == torch.float32
    # The tone survives: its spectrum peaks at 440 Hz.
    spectrum = torch.fft.rfft(out[:, 0]).abs()
    assert abs(int(spectrum.argmax()) - 440) <= 1


def test_conditioner_channels_and_layout():
    stereo = torch.stack([torch.ones(8000), 3 * torch.ones(8000)], dim=1)
    mono_model = ClipConditioner(8000, channels=1)
    out = mono_model.convert(stereo, 8000)
    assert out.shape == (8000,)  # SpeechBrain's mono layout: [time]
    assert torch.allclose(out, 2 * torch.ones(8000))  # channels averaged
    assert mono_model.convert(torch.ones(8000, 1), 8000).shape == (8000,)
    assert mono_model.convert(torch.ones(8000), 8000).shape == (8000,)
    # Down-mixed before resampling: same as resampling the mean.
    src = tone(44100, channels=2) * torch.tensor([1.0, 0.5])
    assert torch.allclose(
        ClipConditioner(16000, 1).convert(src, 44100),
        ClipConditioner(16000, 1).convert(src.mean(dim=1), 44100),
        atol=1e-5,
    )
    # A stereo model hears a mono file on both channels.
    up = ClipConditioner(16000, channels=2).convert(tone(8000), 8000)
    assert up.shape == (16000, 2) and torch.equal(up[:, 0], up[:, 1])
    assert mono_model.convert(
        torch.ones(80, dtype=torch.int16), 8000
    ).dtype == (torch.float32)
    with pytest.raises(ValueError, match="channels"):
        ClipConditioner(8000, channels=0)
    with pytest.raises(ValueError, match="duration_ms"):
        ClipConditioner(8000, duration_ms=0)


def test_conditioner_clip_train_vs_eval(tmp_path):
    path = write_clip(tmp_path / "a.wav", 2, 48000, 1, 1.0, "PCM_24")
    cond = ClipConditioner(16000, channels=2, duration_ms=2000)
    assert cond.num_samples == 32000 and cond.max_seconds() == 2 + READ_MARGIN_S
    wav, rate = load_audio(path, max_seconds=cond.max_seconds())
    a, b = cond.clip(wav, rate), cond.clip(wav, rate)
    assert a.shape == (32000, 2)
    assert torch.equal(a, b)  # evaluation: deterministic
    assert a[:15900].abs().max() > 0.05
    assert a[16100:].abs().max() < 1e-3  # padded at the end
    torch.manual_seed(0)
    outs = [cond.clip(wav, rate, random_pad=True) for _ in range(5)]
    assert all(o.shape == (32000, 2) for o in outs)
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
    # Long clips are cut to the training length, in training and evaluation.
    long = tone(8000, seconds=5.0)
    assert cond.clip(long, 8000).shape == (32000, 2)
    assert cond.clip(long, 8000, random_pad=True).shape == (32000, 2)
    # No length given: any length.
    assert ClipConditioner(16000).clip(long, 8000).shape == (80000,)


def test_conditioner_call_is_inference(tmp_path):
    """Called (as EncoderClassifier.load_audio does): pads short clips at the
    end like evaluation does, keeps long ones whole."""
    cond = ClipConditioner(16000, channels=1, duration_ms=1000)
    short = tone(8000, seconds=0.25, channels=2)
    out = cond(short, 8000)
    assert out.shape == (16000,)
    assert torch.equal(out, cond.clip(short, 8000))
    assert out[4100:].abs().max() < 1e-3
    long = tone(44100, seconds=3.0)
    assert cond(long, 44100).shape == (48000,)
    assert cond(tone(16000).squeeze(1), 16000).shape == (16000,)


def test_remove_dc_in_training_and_inference(tmp_path):
    offset = np.full((8000, 1), 0.3, dtype=np.float32)
    data = offset + 0.1 * np.sin(np.arange(8000) / 5.0)[:, None].astype(
        np.float32
    )
    path = tmp_path / "dc.wav"
    sf.write(path, data, 8000, subtype="FLOAT")
    wav, sr = load_audio(path)
    plain = ClipConditioner(8000, 1, 1000).clip(wav, sr)
    assert abs(plain.mean().item() - 0.3) < 0.01
    cond = ClipConditioner(8000, 1, 1000, remove_dc=True)
    clean = cond.clip(wav, sr)
    assert abs(clean.mean().item()) < 1e-3
    # inference does exactly what evaluation does
    assert torch.allclose(cond(wav, sr), clean, atol=1e-6)
    # the offset is removed before padding: the padding stays at zero
    short = cond.clip(wav[:4000], sr)
    assert short[4000:].abs().max() == 0 and abs(short[:4000].mean()) < 1e-3


# --------------------------------------------------------------------------
# The recipe's data pipeline
# --------------------------------------------------------------------------


def make_dataio_hparams(tmp_path, channels=2, remove_dc=False):
    from speechbrain.dataio.encoder import CategoricalEncoder

    entries = {}
    for i, (label, sr, ch) in enumerate([("b", 8000, 1), ("a", 44100, 2)]):
        write_clip(tmp_path / "data" / f"{i}.wav", i, sr, ch, 0.2)
        entries[f"clip{i}"] = {
            "wav": f"{{data_root}}/{i}.wav",
            "label": label,
            "fold": 1,
        }
    for split in ("train", "valid", "test"):
        (tmp_path / f"{split}.json").write_text(json.dumps(entries))
    (tmp_path / "labels.json").write_text(json.dumps(["a", "b"]))
    return {
        **{
            f"{s}_annotation": tmp_path / f"{s}.json"
            for s in ("train", "valid", "test")
        },
        "labels_file": tmp_path / "labels.json",
        "label_encoder": CategoricalEncoder(),
        "label_encoder_file": tmp_path / f"label_encoder{channels}.txt",
        "sample_rate": 16000,
        "channels": channels,
        "duration_ms": 500,
        "shift_pct": 0.4,
        "remove_dc": remove_dc,
        "data_folder": str(tmp_path / "data"),
    }


def test_dataio_prep_items(tmp_path):
    dataio_prep = load_recipe().dataio_prep
    hparams = make_dataio_hparams(tmp_path, channels=2)
    data = dataio_prep(hparams)
    assert set(data) == {"train", "valid", "test"}
    item = data["test"][0]
    assert set(item) == {"id", "wav", "sig", "label", "label_encoded"}
    assert item["id"] == "clip0" and item["label"] == "b"
    assert item["wav"] == str(tmp_path / "data" / "0.wav")  # data_root
    assert item["label_encoded"].tolist() == [1]
    assert data["test"][1]["label_encoded"].tolist() == [0]
    assert item["sig"].shape == (8000, 2)
    # Evaluation: deterministic, the 0.2 s clip at the start, then zeros.
    assert torch.equal(data["test"][0]["sig"], item["sig"])
    assert item["sig"][:3200].abs().max() > 0.05
    assert item["sig"][3300:].abs().max() < 1e-3
    # It is what the exported model's conditioner hears at inference.
    cond = ClipConditioner(16000, 2, 500)
    assert torch.allclose(
        cond(*load_audio(tmp_path / "data" / "0.wav")), item["sig"], atol=1e-6
    )
    # Training: random pad position and time shift.
    torch.manual_seed(0)
    train = [data["train"][0]["sig"] for _ in range(5)]
    assert all(s.shape == (8000, 2) for s in train)
    assert any(not torch.equal(train[0], s) for s in train[1:])

    # Mono comes out as [time], and remove_dc reaches the conditioner.
    mono = dataio_prep(make_dataio_hparams(tmp_path, 1, remove_dc=True))
    sig = mono["test"][1]["sig"]
    assert sig.shape == (8000,)
    assert abs(sig[:3200].mean()) < 1e-3

    # a stale encoder for other labels is refused with a clear message
    (tmp_path / "labels.json").write_text(json.dumps(["a", "b", "c"]))
    hparams["label_encoder"] = type(hparams["label_encoder"])()
    with pytest.raises(DataPrepError, match="label_encoder2.txt"):
        dataio_prep(hparams)


@pytest.mark.parametrize("rate, model_rate", [(48000, 16000), (1000, 16000)])
def test_reading_only_the_clip_gives_the_whole_file_result(
    tmp_path, rate, model_rate
):
    # The resampler's filter needs samples past the cut (the most at 1 kHz,
    # the lowest rate); the read margin gives it them, so the kept clip
    # equals the whole-file one
    path = write_clip(tmp_path / "long.wav", 3, rate, 2, 3.0, "PCM_24")
    cond = ClipConditioner(model_rate, channels=1, duration_ms=1000)
    whole = cond.clip(*load_audio(path))
    part = cond.clip(*load_audio(path, max_seconds=cond.max_seconds()))
    assert (whole - part).abs().max() < 1e-5
    cut = cond.clip(*load_audio(path, max_seconds=1.0))  # no margin
    assert (whole - cut).abs().max() > 1e-4
