"""Unit tests for the batched features, SpecAugment, normalisation and the
CNN."""

import pytest
import torch
from sb_urbansound.training.augment import SpecAugment
from sb_urbansound.training.features import BatchStandardize, MelSpectrogramDB
from sb_urbansound.training.models import CNNEmbedding, LinearClassifier


def test_melspectrogram_shapes_and_top_db():
    feats = MelSpectrogramDB(
        sample_rate=44100, n_fft=1024, hop_length=512, n_mels=64
    )
    wavs = torch.randn(3, 44100 * 4, 2)
    spec = feats(wavs)
    assert spec.shape == (3, 2, 64, 345)  # the tutorial's [2, 64, 345] per clip
    span = spec.amax(dim=(1, 2, 3)) - spec.amin(dim=(1, 2, 3))
    assert (span <= 80.0 + 1e-3).all()
    # per clip: a quiet clip keeps its own range, not the batch's
    wavs[1] *= 1e-3
    spec2 = feats(wavs)
    assert spec2[1].max() < spec2[0].max() - 40


def test_melspectrogram_matches_per_clip():
    feats = MelSpectrogramDB(sample_rate=16000, n_fft=512, n_mels=32, top_db=80)
    wavs = torch.randn(4, 8000, 2)
    batched = feats(wavs)
    for i in range(4):
        single = feats(wavs[i : i + 1])
        assert torch.allclose(batched[i], single[0], atol=1e-4)


def test_melspectrogram_rechannels_mono_input():
    feats = MelSpectrogramDB(
        sample_rate=16000, n_fft=512, n_mels=32, channels=2
    )
    spec = feats(torch.randn(2, 16000))
    assert spec.shape[:2] == (2, 2)
    assert torch.equal(spec[:, 0], spec[:, 1])


def test_specaugment_fills_with_clip_mean():
    torch.manual_seed(0)
    aug = SpecAugment(max_mask_pct=0.3, n_freq_masks=2, n_time_masks=2)
    spec = torch.randn(8, 2, 64, 100) + torch.arange(8.0).view(8, 1, 1, 1) * 10
    out = aug(spec)
    assert out.shape == spec.shape
    changed = out != spec
    assert changed.any()
    for i in range(8):
        mean = spec[i].mean()
        assert torch.allclose(
            out[i][changed[i]], mean.expand(int(changed[i].sum()))
        )
        # masks are whole bands: shared by channels
        assert torch.equal(changed[i, 0], changed[i, 1])
    # independent masks per clip
    assert any(not torch.equal(changed[0], changed[i]) for i in range(1, 8))


def test_specaugment_mask_widths_bounded():
    torch.manual_seed(1)
    aug = SpecAugment(max_mask_pct=0.1, n_freq_masks=1, n_time_masks=0)
    spec = torch.randn(200, 1, 64, 50)
    out = aug(spec)
    masked_bands = (out != spec).all(dim=-1).sum(dim=-1)  # [200, 1]
    assert masked_bands.max() <= 7  # < 0.1 * 64 + 1
    assert masked_bands.float().mean() > 1


def test_batch_standardize():
    x = torch.randn(4, 2, 8, 8) * 5 + 3
    y = BatchStandardize()(x, torch.ones(4))
    assert abs(y.mean().item()) < 1e-5 and abs(y.std().item() - 1) < 1e-4


def test_cnn_shapes_and_init():
    model = CNNEmbedding(in_channels=2, channels=[8, 16, 32, 64])
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32, 64]
    assert [c.kernel_size for c in convs] == [(5, 5), (3, 3), (3, 3), (3, 3)]
    assert all(c.bias.abs().sum() == 0 for c in convs)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 4
    emb = model(torch.randn(5, 2, 64, 345))
    assert emb.shape == (5, 1, 64)
    logp = LinearClassifier(64, 10)(emb)
    assert logp.shape == (5, 1, 10)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(5, 1))


def test_cnn_configurable():
    model = CNNEmbedding(
        in_channels=1, channels=[4, 8], kernel_sizes=[3, 3], strides=[1, 2]
    )
    assert model(torch.randn(2, 1, 32, 40)).shape == (2, 1, 8)


def test_melspectrogram_equals_torchaudio():
    import torchaudio

    feats = MelSpectrogramDB(
        sample_rate=44100, n_fft=1024, hop_length=512, n_mels=64
    )
    wavs = torch.randn(5, 44100 * 2, 2)
    ref = torchaudio.transforms.AmplitudeToDB(top_db=80)(
        torchaudio.transforms.MelSpectrogram(
            44100, n_fft=1024, hop_length=512, n_mels=64
        )(wavs.transpose(1, 2))
    )
    assert torch.allclose(feats(wavs), ref, atol=1e-3)


def test_cnn_poolings():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 32, 40)
    avg = CNNEmbedding(in_channels=1, pooling="avg")
    maps = avg.conv(x)
    assert torch.allclose(avg(x)[:, 0], maps.mean(dim=(2, 3)))
    both = CNNEmbedding(in_channels=1, pooling="avgmax")
    both.load_state_dict(avg.state_dict())
    out = both(x)[:, 0]
    assert out.shape == (2, 128) == (2, both.output_size)
    assert torch.allclose(out[:, :64], maps.mean(dim=(2, 3)))
    assert torch.allclose(out[:, 64:], maps.amax(dim=(2, 3)))
    panns = CNNEmbedding(in_channels=1, pooling="panns")
    panns.load_state_dict(avg.state_dict())
    frames = maps.mean(dim=2)
    expected = frames.amax(dim=2) + frames.mean(dim=2)
    assert torch.allclose(panns(x)[:, 0], expected)
    with pytest.raises(ValueError, match="pooling must be one of"):
        CNNEmbedding(pooling="median")


def test_classifier_dropout_in_training_only():
    torch.manual_seed(0)
    clf = LinearClassifier(32, 5, dropout=0.5)
    emb = torch.randn(4, 1, 32)
    clf.eval()
    assert torch.equal(clf(emb), clf(emb))
    clf.train()
    assert not torch.equal(clf(emb), clf(emb))
    # No parameters of its own: same state dict as without dropout
    assert list(clf.state_dict()) == list(LinearClassifier(32, 5).state_dict())
    with pytest.raises(ValueError):
        LinearClassifier(32, 5, dropout=1.0)


def test_equal_channels_are_computed_once_with_the_same_result():
    mel = MelSpectrogramDB(16000, n_fft=256, n_mels=16, channels=2)
    mono = torch.randn(3, 4000, 1)
    wavs = torch.cat([mono, mono], dim=-1)  # up-mixed mono files
    wavs[1, :, 1] = torch.randn(4000)  # one stereo clip
    computed = []
    power_mel = mel._power_mel

    def counting(signals):
        computed.append(signals.shape[0] * signals.shape[1])
        return power_mel(signals)

    mel._power_mel = counting
    out = mel(wavs)
    assert sum(computed) == 4  # 1 + 2 + 1 signals, not 6
    for i in range(3):  # each clip alone, each channel on its own
        for c in range(2):
            alone = mel.to_db(power_mel(wavs[i : i + 1, :, c : c + 1].mT))
            assert torch.allclose(out[i, c], alone[0, 0], atol=1e-4)
    for all_equal in (wavs[[0, 2]], wavs[[1]]):
        computed.clear()
        assert torch.equal(mel(all_equal), mel.to_db(power_mel(all_equal.mT)))
