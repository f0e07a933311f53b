"""Tests for sb_urbansound.data.download against a local HTTP server (no
internet).

Each test serves a small fake ``UrbanSound8K.tar.gz`` from a
``ThreadingHTTPServer`` on 127.0.0.1 (port chosen by the OS), with a handler
that understands ``Range`` and can be told to misbehave.
"""

import hashlib
import io
import re
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from sb_urbansound.data import download as dl
from sb_urbansound.data.download import (
    ChecksumError,
    DownloadError,
    download_urbansound8k,
)

CSV_TEXT = (
    "slice_file_name,fsID,start,end,salience,fold,classID,class\n"
    "x.wav,100032,0.0,0.317551,1,1,3,dog_bark\n"
    "y.wav,100263,58.5,62.5,1,1,2,children_playing\n"
)
CLIENT_TIMEOUT = 5.0


def _wav_bytes(noise=False):
    buf = io.BytesIO()
    if noise:  # incompressible, so that the archive is a few tens of KB
        signal = 0.1 * np.random.default_rng(0).standard_normal(16000)
    else:
        signal = 0.1 * np.sin(2 * np.pi * 440 * np.arange(800) / 8000.0)
    sf.write(buf, signal, 8000, format="WAV")
    return buf.getvalue()


def _make_tar(files):
    """A .tar.gz (bytes) holding ``{archive path: bytes}``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _us8k_archive():
    wav = _wav_bytes()
    return _make_tar(
        {
            "UrbanSound8K/metadata/UrbanSound8K.csv": CSV_TEXT.encode(),
            "UrbanSound8K/audio/fold1/x.wav": wav,
            "UrbanSound8K/audio/fold1/y.wav": wav,
            "UrbanSound8K/audio/fold2/z.wav": _wav_bytes(noise=True),
            "UrbanSound8K/UrbanSound8K_README.txt": b"readme\n" * 2000,
        }
    )


ARCHIVE = _us8k_archive()
ARCHIVE_MD5 = hashlib.md5(ARCHIVE).hexdigest()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = {}
        self.requests = []  # (path, Range header or None, status sent)
        self.honor_range = True
        self.drop_first_after = None  # close the 1st answer after N body bytes
        self.drop_always = False  # drop every answer, not only the first
        self.stall_s = 0.0  # send the headers, then say nothing for this long

    def url(self, name):
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"

    def handle_error(self, request, client_address):
        pass  # a client that went away is not a test failure


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _answer(self, status, body, headers=()):
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        return body

    def do_GET(self):
        srv = self.server
        rng = self.headers.get("Range")
        self.close_connection = True
        data = srv.files.get(self.path.lstrip("/"))
        if data is None:
            srv.requests.append((self.path, rng, 404))
            self.wfile.write(self._answer(404, b"not found"))
            return
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if m and srv.honor_range:
            start = int(m.group(1))
            if start >= len(data):
                srv.requests.append((self.path, rng, 416))
                headers = [("Content-Range", f"bytes */{len(data)}")]
                self.wfile.write(self._answer(416, b"", headers))
                return
            status, body = 206, data[start:]
            headers = [
                ("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            ]
        else:
            status, body, headers = 200, data, []
        first = not srv.requests
        srv.requests.append((self.path, rng, status))
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if srv.stall_s:
            self.wfile.flush()
            time.sleep(srv.stall_s)
            return
        if srv.drop_first_after is not None and (first or srv.drop_always):
            self.wfile.write(body[: srv.drop_first_after])  # then hang up
        else:
            self.wfile.write(body)


@pytest.fixture
def server():
    srv = _Server()
    srv.files["UrbanSound8K.tar.gz"] = ARCHIVE
    thread = threading.Thread(
        target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _no_retry_wait(monkeypatch):
    monkeypatch.setattr(dl, "_RETRY_WAIT_S", 0.0)


def _get(server, data_folder, name="UrbanSound8K.tar.gz", **kwargs):
    kwargs.setdefault("md5", ARCHIVE_MD5)
    kwargs.setdefault("progress", False)
    kwargs.setdefault("timeout", CLIENT_TIMEOUT)
    return download_urbansound8k(data_folder, url=server.url(name), **kwargs)


def _staging(data_folder):
    return data_folder.parent / f".{data_folder.name}.download"


def _assert_dataset(folder):
    assert (folder / "metadata" / "UrbanSound8K.csv").read_text() == CSV_TEXT
    audio, sr = sf.read(str(folder / "audio" / "fold1" / "x.wav"))
    assert sr == 8000 and len(audio) == 800


def _listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_download_extract_and_verify(server, tmp_path):
    data_folder = tmp_path / "data" / "UrbanSound8K"
    out = _get(server, data_folder, progress=True)
    assert out == data_folder
    _assert_dataset(data_folder)
    # The top-level UrbanSound8K/ folder of the archive became data_folder.
    assert (data_folder / "UrbanSound8K_README.txt").is_file()
    assert not (data_folder / "UrbanSound8K").exists()
    # No archive, partial file or staging folder left behind.
    assert sorted(p.name for p in data_folder.parent.iterdir()) == [
        "UrbanSound8K"
    ]
    assert [r[1:] for r in server.requests] == [(None, 200)]
    # Second call: the data set is there, nothing is requested.
    assert _get(server, data_folder) == data_folder
    assert len(server.requests) == 1


def test_download_into_existing_empty_folder_and_keep_archive(server, tmp_path):
    data_folder = tmp_path / "us8k"
    data_folder.mkdir()
    _get(server, data_folder, keep_archive=True)
    _assert_dataset(data_folder)
    kept = tmp_path / "UrbanSound8K.tar.gz"
    assert kept.read_bytes() == ARCHIVE
    assert not _staging(data_folder).exists()


def test_corrupt_download_raises_and_leaves_nothing(server, tmp_path):
    bad = bytearray(ARCHIVE)
    bad[len(bad) // 2] ^= 0xFF
    server.files["UrbanSound8K.tar.gz"] = bytes(bad)
    data_folder = tmp_path / "UrbanSound8K"
    url = server.url("UrbanSound8K.tar.gz")
    with pytest.raises(ChecksumError) as info:
        _get(server, data_folder)
    msg = str(info.value)
    assert url in msg and ARCHIVE_MD5 in msg
    assert hashlib.md5(bad).hexdigest() in msg and "retry" in msg
    assert not data_folder.exists()
    assert list(tmp_path.iterdir()) == []  # bad partial and staging removed


def test_resume_with_range(server, tmp_path):
    data_folder = tmp_path / "UrbanSound8K"
    staging = _staging(data_folder)
    staging.mkdir()
    n = len(ARCHIVE) // 3
    assert n > 1000
    (staging / "UrbanSound8K.tar.gz.part").write_bytes(ARCHIVE[:n])
    _get(server, data_folder)
    _assert_dataset(data_folder)
    assert [r[1:] for r in server.requests] == [(f"bytes={n}-", 206)]
    assert not staging.exists()


def test_a_partial_download_that_is_a_link_is_refused(server, tmp_path):
    """A link planted as the partial download (-> a user's file) is neither
    resumed (appended to) nor restarted (truncated): refused, named."""
    from sb_urbansound.errors import NotOursError

    mine = tmp_path / "notes.txt"
    mine.write_bytes(ARCHIVE[:2000] + b"my notes")
    data_folder = tmp_path / "UrbanSound8K"
    staging = _staging(data_folder)
    staging.mkdir()
    (staging / "UrbanSound8K.tar.gz.part").symlink_to(mine)
    with pytest.raises(NotOursError, match=r"tar\.gz\.part is a link"):
        _get(server, data_folder)
    assert mine.read_bytes() == ARCHIVE[:2000] + b"my notes"
    assert server.requests == []


def test_dropped_connection_is_resumed_automatically(server, tmp_path):
    server.drop_first_after = len(ARCHIVE) // 2
    data_folder = tmp_path / "UrbanSound8K"
    _get(server, data_folder, retries=2)
    _assert_dataset(data_folder)
    statuses = [r[1:] for r in server.requests]
    assert statuses == [(None, 200), (f"bytes={len(ARCHIVE) // 2}-", 206)]


def test_dropped_connection_without_retries_keeps_partial(server, tmp_path):
    n = len(ARCHIVE) // 4
    server.drop_first_after = n
    data_folder = tmp_path / "UrbanSound8K"
    with pytest.raises(DownloadError, match="run again to resume") as info:
        _get(server, data_folder, retries=0)
    assert f"{n} of {len(ARCHIVE)} bytes" in str(info.value)
    assert not data_folder.exists()
    part = _staging(data_folder) / "UrbanSound8K.tar.gz.part"
    assert part.read_bytes() == ARCHIVE[:n]
    # The next run resumes from byte n and finishes.
    _get(server, data_folder)
    _assert_dataset(data_folder)
    assert [r[1:] for r in server.requests] == [
        (None, 200),
        (f"bytes={n}-", 206),
    ]


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.honor_range = False
    data_folder = tmp_path / "UrbanSound8K"
    staging = _staging(data_folder)
    staging.mkdir()
    # Garbage in the partial file: if it were kept, the MD5 would not match.
    (staging / "UrbanSound8K.tar.gz.part").write_bytes(b"\0" * 500)
    _get(server, data_folder)
    _assert_dataset(data_folder)
    assert [r[1:] for r in server.requests] == [("bytes=500-", 200)]


@pytest.mark.parametrize("extra", [0, 10])
def test_http_416(server, tmp_path, extra):
    """A complete partial file is used as is; a too long one is restarted."""
    data_folder = tmp_path / "UrbanSound8K"
    staging = _staging(data_folder)
    staging.mkdir()
    (staging / "UrbanSound8K.tar.gz.part").write_bytes(ARCHIVE + b"x" * extra)
    _get(server, data_folder)
    _assert_dataset(data_folder)
    size = len(ARCHIVE) + extra
    expected = [(f"bytes={size}-", 416)] + ([(None, 200)] if extra else [])
    assert [r[1:] for r in server.requests] == expected


def test_non_empty_folder_without_metadata_is_refused(server, tmp_path):
    data_folder = tmp_path / "my_audio"
    (data_folder / "sub").mkdir(parents=True)
    (data_folder / "notes.txt").write_text("mine")
    (data_folder / "sub" / "a.wav").write_bytes(b"RIFF")
    before = _listing(tmp_path)
    with pytest.raises(DownloadError) as info:
        _get(server, data_folder)
    msg = str(info.value)
    assert str(data_folder) in msg
    assert "extracted" in msg and "empty" in msg
    assert _listing(tmp_path) == before
    assert (data_folder / "notes.txt").read_text() == "mine"
    assert server.requests == []


def test_archive_without_csv_is_rejected(server, tmp_path):
    archive = _make_tar({"UrbanSound8K/audio/fold1/x.wav": _wav_bytes()})
    server.files["UrbanSound8K.tar.gz"] = archive
    data_folder = tmp_path / "UrbanSound8K"
    with pytest.raises(DownloadError, match="metadata/UrbanSound8K.csv"):
        _get(server, data_folder, md5=hashlib.md5(archive).hexdigest())
    assert not data_folder.exists()
    assert list(tmp_path.iterdir()) == []


def test_unsafe_archive_member_is_rejected(server, tmp_path):
    archive = _make_tar(
        {
            "UrbanSound8K/metadata/UrbanSound8K.csv": CSV_TEXT.encode(),
            "UrbanSound8K/../../evil.txt": b"gotcha",
        }
    )
    server.files["UrbanSound8K.tar.gz"] = archive
    data_folder = tmp_path / "sub" / "UrbanSound8K"
    with pytest.raises(DownloadError, match="unsafe path"):
        _get(server, data_folder, md5=hashlib.md5(archive).hexdigest())
    assert not data_folder.exists()
    assert not any(p.name == "evil.txt" for p in tmp_path.rglob("*"))
    assert list((tmp_path / "sub").iterdir()) == []


def test_http_404_names_the_url(server, tmp_path):
    data_folder = tmp_path / "UrbanSound8K"
    url = server.url("missing.tar.gz")
    with pytest.raises(DownloadError, match="404") as info:
        _get(server, data_folder, name="missing.tar.gz")
    assert url in str(info.value)
    assert [r[2] for r in server.requests] == [404]  # not retried
    assert list(tmp_path.iterdir()) == []


def test_unreachable_server_gives_up(tmp_path):
    # A port that was just free: the connection is refused at once.
    srv = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = srv.server_address[1]
    srv.server_close()
    url = f"http://127.0.0.1:{port}/UrbanSound8K.tar.gz"
    data_folder = tmp_path / "UrbanSound8K"
    with pytest.raises(DownloadError, match="2 attempt") as info:
        download_urbansound8k(
            data_folder,
            url=url,
            progress=False,
            timeout=CLIENT_TIMEOUT,
            retries=1,
        )
    assert url in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_reuses_verified_archive_after_failed_move(
    server, tmp_path, monkeypatch
):
    data_folder = tmp_path / "UrbanSound8K"
    calls = []
    real_replace = dl.os.replace

    def flaky_replace(src, dst):
        if Path(dst) == data_folder.resolve() and not calls:
            calls.append(dst)
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(dl.os, "replace", flaky_replace)
    with pytest.raises(OSError, match="No space"):
        _get(server, data_folder)
    assert not data_folder.exists()
    staging = _staging(data_folder)
    assert sorted(p.name for p in staging.iterdir()) == ["UrbanSound8K.tar.gz"]
    _get(server, data_folder)  # no new request: the verified archive is reused
    _assert_dataset(data_folder)
    assert len(server.requests) == 1
    assert not staging.exists()


def test_stalled_server_times_out(server, tmp_path):
    server.stall_s = 2.0
    data_folder = tmp_path / "UrbanSound8K"
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match="connection lost"):
        _get(server, data_folder, timeout=0.3, retries=0)
    assert time.monotonic() - t0 < 1.5
    assert not data_folder.exists()


def test_stale_extraction_folder_is_cleaned(server, tmp_path):
    data_folder = tmp_path / "UrbanSound8K"
    stale = _staging(data_folder) / "extract-old" / "UrbanSound8K"
    stale.mkdir(parents=True)
    (stale / "half.wav").write_bytes(b"RIFF")
    _get(server, data_folder)
    _assert_dataset(data_folder)
    assert not _staging(data_folder).exists()


def test_retries_count_only_attempts_without_progress(server, tmp_path):
    """A server that drops every answer early still gets the file (resuming)."""
    n = len(ARCHIVE) // 5

    server.drop_first_after = n
    server.drop_always = True
    data_folder = tmp_path / "UrbanSound8K"
    _get(server, data_folder, retries=1)
    _assert_dataset(data_folder)
    assert len(server.requests) == -(-len(ARCHIVE) // n)  # ceil: one per slice


def test_speechbrain_download_file_keeps_a_truncated_archive(server, tmp_path):
    # Why our downloader exists: SpeechBrain's download_file writes straight
    # to its destination, so a dropped connection leaves half an archive
    # there, and the next call finds the file and skips the download; ours
    # (test_dropped_connection_without_retries_keeps_partial) resumes.
    from speechbrain.utils.data_utils import download_file

    server.drop_first_after = len(ARCHIVE) // 3
    dest = tmp_path / "UrbanSound8K.tar.gz"
    try:
        download_file(server.url("UrbanSound8K.tar.gz"), str(dest))
    except Exception:  # a ContentTooShortError, or none: either way
        pass
    server.drop_first_after = None
    download_file(server.url("UrbanSound8K.tar.gz"), str(dest))
    assert dest.exists()
    assert dest.read_bytes() != ARCHIVE  # the truncated file was kept
    assert len(server.requests) == 1  # and never downloaded again
