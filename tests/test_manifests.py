"""Tests of sb_urbansound.data.manifests: the audio check, the fingerprint of
the inputs and the labels (the whole preparation is tested in
``test_prepare.py`` and ``test_sources.py``)."""

import logging
import os
import re
import time

import numpy as np
import pytest
import soundfile as sf
from helpers import write_clip
from sb_urbansound.data.manifests import (
    check_audio_file,
    file_stamp,
    probe_audio,
    read_labels,
    stat_digest,
)
from sb_urbansound.errors import DataPrepError

LOGGER = "sb_urbansound.data.manifests"


def corrupt_after_header(path, seed=0):
    """Overwrite the second half of a file with random bytes."""
    blob = bytearray(path.read_bytes())
    half = len(blob) // 2
    rng = np.random.default_rng(seed)
    blob[half:] = rng.integers(0, 256, len(blob) - half, np.uint8).tobytes()
    path.write_bytes(bytes(blob))


@pytest.fixture
def bad_files(tmp_path):
    """One file of each kind that cannot be used, by kind."""
    files = {"missing": tmp_path / "missing.wav"}
    files["not a file"] = tmp_path / "folder.wav"
    files["not a file"].mkdir()
    files["unreadable"] = tmp_path / "garbage.wav"
    files["unreadable"].write_bytes(os.urandom(3000))
    files["empty"] = tmp_path / "empty.wav"
    sf.write(files["empty"], np.zeros((0, 1), np.float32), 8000)
    files["corrupt"] = write_clip(
        tmp_path / "corrupt.flac", 1, 16000, 2, 2.0, "PCM_16"
    )
    corrupt_after_header(files["corrupt"])
    files["non-finite"] = tmp_path / "inf.wav"
    sig = np.zeros((800, 2), np.float32)
    sig[10, 1] = np.inf
    sig[20, 0] = np.nan
    sf.write(files["non-finite"], sig, 8000, subtype="FLOAT")
    files["unsupported rate"] = tmp_path / "slow.wav"
    sf.write(files["unsupported rate"], np.zeros(800, np.float32), 500)
    return {kind: str(path) for kind, path in files.items()}


def test_check_audio_file_kinds(tmp_path, bad_files):
    good = write_clip(tmp_path / "good.flac", 0, 22050, 2, 0.5, "PCM_24")
    assert check_audio_file(str(good)) == (11025, 22050, 2)
    # Decoded in blocks: the block size changes nothing.
    assert check_audio_file(str(good), block_frames=1000) == (11025, 22050, 2)
    for kind, path in bad_files.items():
        got, message = check_audio_file(path)
        assert got == kind, (path, message)
        assert message.endswith(f": {path}")
    # A pipe named *.wav would block a reader: it is not opened.
    os.mkfifo(tmp_path / "pipe.wav")
    assert check_audio_file(str(tmp_path / "pipe.wav"))[0] == "not a file"
    assert (
        "(2 NaN or infinite samples)"
        in check_audio_file(bad_files["non-finite"], block_frames=7)[1]
    )


def test_probe_audio_names_every_file_or_skips(tmp_path, bad_files, caplog):
    good = str(write_clip(tmp_path / "good.wav", 0, 8000, 1, 0.1))
    paths = [good, *reversed(bad_files.values()), good]
    with pytest.raises(DataPrepError) as err:
        probe_audio(paths, skip_missing=False, missing_hint="HINT")
    msg = str(err.value)
    # Counted in a fixed order of kinds, whatever the order of the files.
    assert (
        "7 of 8 audio file(s) cannot be used (1 missing, 1 not a file, "
        "1 unreadable, 1 empty, 1 corrupt, 1 non-finite, 1 unsupported rate)"
        in msg
    )
    for path in bad_files.values():
        assert path in msg
    assert "\nHINT" in msg and "skip_missing=True" in msg

    caplog.set_level(logging.WARNING, logger=LOGGER)
    info = probe_audio(paths, skip_missing=True, missing_hint="HINT")
    assert info == {good: (800, 8000, 1)}
    assert "leaving out 7 of 8 audio file(s)" in caplog.text
    for path in bad_files.values():
        assert path in caplog.text
    # The hint is about missing files only.
    with pytest.raises(DataPrepError) as err:
        probe_audio([bad_files["empty"]], False, missing_hint="HINT")
    assert "HINT" not in str(err.value)


def test_file_stamp_sees_a_rewrite_with_restored_mtime(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, np.zeros(800, np.float32), 8000, subtype="FLOAT")
    st = path.stat()
    stamp = file_stamp(path)
    assert stamp == [st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    digest = stat_digest([str(path), str(tmp_path / "absent.wav")])
    assert digest["files_listed"] == 2 and digest["files_present"] == 1
    assert stat_digest([str(path), str(tmp_path / "absent.wav")]) == digest

    time.sleep(0.05)  # let the file system's clock move on
    sf.write(path, np.ones(800, np.float32), 8000, subtype="FLOAT")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = file_stamp(path)
    assert again[:2] == stamp[:2]  # same size, same mtime ...
    assert again != stamp  # ... yet the stamp changed
    assert stat_digest([str(path), str(tmp_path / "absent.wav")]) != digest
    assert file_stamp(tmp_path / "absent.wav") is None


def test_read_labels(tmp_path):
    labels_file = tmp_path / "labels.json"
    manifest = tmp_path / "train.json"
    manifest.write_text('{"a": {"label": "dog"}, "b": {"label": 3}}')
    assert read_labels(labels_file, [manifest]) == ["3", "dog"]
    labels_file.write_text('["cat", "dog"]')
    assert read_labels(labels_file, [manifest]) == ["cat", "dog"]
    (tmp_path / "bad.json").write_text('{"a": {"wav": "x.wav"}}')
    with pytest.raises(
        DataPrepError, match="clip a in .*bad.json has no label"
    ):
        read_labels(None, [tmp_path / "bad.json"])
    with pytest.raises(DataPrepError, match=re.escape("cannot read")):
        read_labels(None, [tmp_path / "absent.json"])
    (tmp_path / "empty.json").write_text("{}")
    with pytest.raises(DataPrepError, match="no class label found"):
        read_labels(None, [tmp_path / "empty.json"])
