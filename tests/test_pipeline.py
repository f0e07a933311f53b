"""Unit tests for the per-clip waveform steps and the data pipeline."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import FORMATS, write_clip
from sb_urbansound.pipeline import (
    AudioLoadError,
    Resampler,
    load_audio,
    make_audio_pipeline,
    pad_trunc,
    rechannel,
    time_shift,
)


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
    with pytest.raises(AudioLoadError, match="missing.wav"):
        load_audio(tmp_path / "missing.wav")
    bad = tmp_path / "corrupt.wav"
    bad.write_bytes(b"RIFF not really a wav file" * 10)
    with pytest.raises(AudioLoadError, match="corrupt.wav"):
        load_audio(bad)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0, 1)), 8000)
    with pytest.raises(AudioLoadError, match="empty.wav"):
        load_audio(empty)


def test_rechannel():
    mono = torch.randn(100, 1)
    stereo = rechannel(mono, 2)
    assert stereo.shape == (100, 2)
    assert torch.equal(stereo[:, 0], stereo[:, 1])
    assert torch.equal(stereo[:, 0], mono[:, 0])
    two = torch.stack([torch.ones(50), 3 * torch.ones(50)], dim=1)
    assert torch.allclose(rechannel(two, 1), 2 * torch.ones(50, 1))
    assert rechannel(two, 2) is two
    batch = torch.randn(4, 100, 1)
    assert rechannel(batch, 2).shape == (4, 100, 2)
    with pytest.raises(ValueError):
        rechannel(two, 0)


@pytest.mark.parametrize("src", [8000, 22050, 44100, 48000, 96000])
def test_resampler_rates_and_cache(src):
    resample = Resampler(16000)
    t = torch.arange(src) / src
    wav = torch.sin(2 * torch.pi * 440 * t).unsqueeze(1).repeat(1, 2)
    out = resample(wav, src)
    assert out.shape == (16000, 2)
    # The tone survives: its spectrum peaks at 440 Hz.
    spectrum = torch.fft.rfft(out[:, 0]).abs()
    assert abs(int(spectrum.argmax()) - 440) <= 1
    first = resample.cache.get(src)
    resample(wav, src)
    assert resample.cache.get(src) is first
    assert len(resample.cache) == (0 if src == 16000 else 1)


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


def test_audio_pipeline_train_vs_eval(tmp_path):
    path = str(write_clip(tmp_path / "a.wav", 2, 48000, 1, 1.0, "PCM_24"))
    evaluate = make_audio_pipeline(16000, 2, 2000, shift_pct=0.4, train=False)
    a, b = evaluate(path), evaluate(path)
    assert a.shape == (32000, 2)
    assert torch.equal(a, b)
    assert a[16100:].abs().max() < 1e-3  # padded at the end
    train = make_audio_pipeline(16000, 2, 2000, shift_pct=0.4, train=True)
    torch.manual_seed(0)
    outs = [train(path) for _ in range(5)]
    assert all(o.shape == (32000, 2) for o in outs)
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_dataio_prepare_items(tmp_path):
    from sb_urbansound.pipeline import dataio_prepare

    from speechbrain.dataio.encoder import CategoricalEncoder

    entries = {}
    for i, (label, sr, ch) in enumerate([("b", 8000, 1), ("a", 44100, 2)]):
        path = write_clip(tmp_path / f"{i}.wav", i, sr, ch, 0.2)
        entries[f"clip{i}"] = {"wav": str(path), "label": label, "fold": 1}
    for split in ("train", "valid", "test"):
        (tmp_path / f"{split}.json").write_text(json.dumps(entries))
    (tmp_path / "labels.json").write_text(json.dumps(["a", "b"]))
    hparams = {
        **{
            f"{s}_annotation": tmp_path / f"{s}.json"
            for s in ("train", "valid", "test")
        },
        "labels_file": tmp_path / "labels.json",
        "label_encoder": CategoricalEncoder(),
        "label_encoder_file": tmp_path / "label_encoder.txt",
        "sample_rate": 16000,
        "channels": 2,
        "duration_ms": 500,
        "shift_pct": 0.4,
    }
    data = dataio_prepare(hparams)
    item = data["test"][0]
    assert item["id"] == "clip0" and item["label"] == "b"
    assert item["label_encoded"].tolist() == [1]
    assert item["sig"].shape == (8000, 2)
    # a stale encoder for other labels is refused with a clear message
    (tmp_path / "labels.json").write_text(json.dumps(["a", "b", "c"]))
    hparams["label_encoder"] = CategoricalEncoder()
    with pytest.raises(ValueError, match="label_encoder.txt"):
        dataio_prepare(hparams)


def test_remove_dc_in_pipeline_and_inference(tmp_path):
    from sb_urbansound.inference import TrainingAudioNormalizer

    offset = np.full((8000, 1), 0.3, dtype=np.float32)
    data = offset + 0.1 * np.sin(np.arange(8000) / 5.0)[:, None].astype(
        np.float32
    )
    path = tmp_path / "dc.wav"
    sf.write(path, data, 8000, subtype="FLOAT")
    plain = make_audio_pipeline(8000, 1, 1000)(str(path))
    assert abs(plain.mean().item() - 0.3) < 0.01
    clean = make_audio_pipeline(8000, 1, 1000, remove_dc=True)(str(path))
    assert abs(clean.mean().item()) < 1e-3
    # inference does exactly what evaluation does
    wav, sr = load_audio(path)
    norm = TrainingAudioNormalizer(8000, 1, pad_to_ms=1000, remove_dc=True)
    assert torch.allclose(norm(wav, sr), clean, atol=1e-6)
