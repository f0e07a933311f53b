"""Download, verify and extract UrbanSound8K (resumable, atomic, checksummed).

Ours, not SpeechBrain's ``download_file``: that has no resume, timeout, retry
or checksum, writes straight to the destination, and unpacks any member path.

Authors
-------
 * sb-urbansound contributors
"""

import contextlib
import http.client
import itertools
import logging
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path, PurePosixPath

from sb_urbansound import __version__
from sb_urbansound.atomic import open_store_file
from sb_urbansound.errors import UserError
from tqdm import tqdm

logger = logging.getLogger(__name__)

# The official archive (Zenodo 1203745, ~6 GB) and soundata's MD5 of it.
URBANSOUND8K_URL = (
    "https://zenodo.org/records/1203745/files/UrbanSound8K.tar.gz?download=1"
)
URBANSOUND8K_MD5 = "9aa69802bbf37fb986f71ec1483a196e"

METADATA_RELPATH = Path("metadata") / "UrbanSound8K.csv"

_RETRY_WAIT_S = 2.0  # multiplied by the attempt number; tests set it to 0
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class DownloadError(UserError, RuntimeError):
    """The data set cannot be downloaded, verified or put in place."""


class ChecksumError(DownloadError):
    """A download does not have the expected MD5 (it has been deleted)."""


class _BadArchiveError(DownloadError):
    """The verified archive's contents are unusable (re-downloading won't
    help)."""


class _RetryableError(Exception):
    """A transient network failure: the partial file is kept for resuming."""


def _download(url, dest, md5, progress, timeout, retries):
    """Download ``url`` to ``dest`` via a resumable, MD5-checked ``.part``."""
    from speechbrain.dataio.dataio import get_md5

    expected = md5.lower() if md5 else None
    if dest.is_file():
        if expected is None or get_md5(dest) == expected:
            logger.info("%s is already downloaded", dest)
            return
        why = "%s does not match MD5 %s; downloading it again"
        logger.warning(why, dest, md5)
        dest.unlink()
    part = dest.with_name(dest.name + ".part")

    attempt = 0  # consecutive failed attempts that downloaded nothing new
    for tries in itertools.count(1):
        size_before = part.stat().st_size if part.exists() else 0
        try:
            _fetch(url, part, progress, timeout)
            break
        except _RetryableError as err:
            if part.exists() and part.stat().st_size > size_before:
                attempt = 0  # it made progress: a long download may drop often
            if attempt >= retries:
                kept = ""
                if part.exists():
                    kept = (
                        f" The partial download is kept at {part}; "
                        "run again to resume."
                    )
                raise DownloadError(
                    f"Downloading {url} failed after {tries} attempt(s): "
                    f"{err}.{kept}"
                ) from err
            attempt += 1
            wait = _RETRY_WAIT_S * attempt
            why = "Downloading %s: %s; retrying in %.0f s (%d/%d)"
            logger.warning(why, url, err, wait, attempt, retries)
            time.sleep(wait)

    if expected is None:
        why = "No MD5 given for %s; the download was not verified"
        logger.warning(why, url)
    elif (digest := get_md5(part)) != expected:
        part.unlink(missing_ok=True)
        raise ChecksumError(
            f"The file downloaded from {url} is corrupt: expected MD5 "
            f"{expected}, got {digest}. The bad file was deleted; please run "
            "again to retry the download."
        )
    else:
        logger.info("MD5 of %s verified (%s)", dest.name, digest)
    os.replace(part, dest)


def download_urbansound8k(
    data_folder,
    url=URBANSOUND8K_URL,
    md5=URBANSOUND8K_MD5,
    progress=True,
    keep_archive=False,
    timeout=60.0,
    retries=3,
):
    """Download UrbanSound8K into ``data_folder`` (safely, resumably, verified).

    Nothing is done when ``metadata/UrbanSound8K.csv`` is there; another
    non-empty folder is refused. The archive is staged in
    ``<parent>/.<name>.download/``, extracted beside it and renamed into place.

    Arguments
    ---------
    data_folder : str or Path
        The folder that will hold ``metadata/`` and ``audio/``.
    url : str
        The archive's URL.
    md5 : str, optional
        The archive's expected MD5 (None: not checked).
    progress : bool
        Show a progress bar.
    keep_archive : bool
        Keep the archive beside ``data_folder``.
    timeout : float
        Seconds to wait for each connection or read.
    retries : int
        Network failures in a row (with no progress) that are retried.

    Returns
    -------
    Path
        ``data_folder``.

    Example
    -------
    >>> mine = getfixture("tmp_path") / "my_audio"
    >>> mine.mkdir()
    >>> _ = (mine / "notes.txt").write_text("mine")
    >>> download_urbansound8k(mine)
    Traceback (most recent call last):
     ...
    sb_urbansound.data.download.DownloadError: data_folder ... is not empty ...
    """
    data_folder = Path(data_folder).expanduser()
    # The real location: staging on the same file system, a link kept
    target = data_folder.resolve()
    if (target / METADATA_RELPATH).is_file():
        why = "UrbanSound8K is already at %s; not downloading"
        logger.info(why, data_folder)
        return data_folder
    if target.exists() and not target.is_dir():
        raise DownloadError(
            f"data_folder {data_folder} exists but is not a folder. Point "
            "data_folder to the extracted UrbanSound8K folder (the one holding "
            "metadata/UrbanSound8K.csv), or to a new or empty folder to "
            "download the data set there."
        )
    if target.is_dir() and any(target.iterdir()):
        raise DownloadError(
            f"data_folder {data_folder} is not empty but has no "
            f"{METADATA_RELPATH.as_posix()}, so it is not an extracted "
            "UrbanSound8K. Nothing was downloaded and nothing in it was "
            "changed. Either point data_folder to the folder you extracted "
            "UrbanSound8K into (the one that holds metadata/ and audio/), or "
            "to a new or empty folder to download the data set (about 6 GB) "
            "there."
        )

    staging = target.parent / f".{target.name}.download"
    name = posixpath.basename(urllib.parse.urlparse(url).path)
    archive = staging / (urllib.parse.unquote(name) or "UrbanSound8K.tar.gz")
    why = "Downloading %s to %s (staging in %s)"
    logger.info(why, url, data_folder, staging)
    staging.mkdir(parents=True, exist_ok=True)
    for stale in staging.glob("extract-*"):  # left by a run that was killed
        logger.info("Removing %s (left by an interrupted extraction)", stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        _download(url, archive, md5, progress, timeout, retries)
        _extract_into_place(archive, target, staging)
    except BaseException as err:
        if isinstance(err, _BadArchiveError):
            archive.unlink(missing_ok=True)
        elif archive.exists():
            why = "The verified archive is kept at %s; the next run reuses it"
            logger.warning(why, archive)
        raise
    else:  # the archive is deleted, or moved beside the data folder
        kept = target.parent / archive.name
        if not keep_archive or not archive.exists():
            archive.unlink(missing_ok=True)
        elif kept.exists():
            logger.warning(
                "%s exists; the archive is left at %s", kept, archive
            )
        else:
            os.replace(archive, kept)
            logger.info("Archive kept at %s", kept)
    finally:
        with contextlib.suppress(OSError):  # only when empty
            staging.rmdir()
    logger.info("UrbanSound8K is ready at %s", data_folder)
    return data_folder


def _fetch(url, part, progress, timeout):
    """One download attempt into ``part`` (resumed if present)."""
    try:  # a link planted as the partial file is never resumed or truncated
        with open(open_store_file(part), "rb") as f:
            start = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        start = 0
    headers = {"User-Agent": f"sb-urbansound/{__version__} (python-urllib)"}
    if start:
        headers["Range"] = f"bytes={start}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        err.close()
        if err.code == 416 and start:
            total = err.headers.get("Content-Range") or ""
            if re.fullmatch(rf"bytes\s+\*/{start}", total.strip()):
                logger.info("%s is already complete (%d bytes)", part, start)
                return
            why = "The server cannot resume from byte %d (HTTP 416); restarting"
            logger.warning(why, start)
            part.unlink()
            return _fetch(url, part, progress, timeout)
        if err.code in (408, 429) or err.code >= 500:
            raise _RetryableError(f"HTTP {err.code} {err.reason}") from err
        raise DownloadError(
            f"Could not download {url}: the server answered HTTP {err.code} "
            f"{err.reason}. Check the URL (and your network or proxy settings)."
        ) from err
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", None) or err
        raise _RetryableError(f"could not connect ({reason})") from err

    with response:
        status = getattr(response, "status", None) or 200  # file:// has none
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        total = length
        if status == 206:
            got = response.headers.get("Content-Range")
            m = _CONTENT_RANGE.fullmatch((got or "").strip())
            if m is None or int(m.group(1)) != start:
                if not start:
                    raise DownloadError(
                        f"Could not download {url}: the server sent a partial "
                        f"answer ({got}) to a request for the whole file."
                    )
                why = (
                    "The server sent an unexpected range (%s); "
                    "restarting from zero"
                )
                logger.warning(why, got)
                response.close()
                part.unlink(missing_ok=True)
                return _fetch(url, part, progress, timeout)
            if m.group(3) != "*":
                total = int(m.group(3))
            elif length is not None:
                total = start + length
        elif start:
            why = "The server ignored the Range request (HTTP %d); "
            logger.info(why + "downloading from the start again", status)
            start = 0

        if start:
            logger.info("Resuming %s from byte %d", part.name, start)
        free = shutil.disk_usage(part.parent).free if total else 0
        if total is not None and free < total - start:
            why = "Only %.1f GB free in %s but %.1f GB still to download"
            logger.warning(why, free / 1e9, part.parent, (total - start) / 1e9)

        received = start
        opts = dict(unit="B", unit_scale=True, unit_divisor=1024)
        opts.update(disable=not progress, dynamic_ncols=True)
        bar = tqdm(total=total, initial=start, desc=part.stem, **opts)
        with open(part, "ab" if start else "wb") as f, bar:
            while True:
                try:
                    chunk = response.read(1 << 20)
                except (OSError, http.client.HTTPException) as err:
                    raise _RetryableError(
                        f"connection lost after {received} bytes ({err!r})"
                    ) from err
                if not chunk:
                    break
                f.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received != total:
        raise _RetryableError(
            f"connection closed after {received} of {total} bytes"
        )


def _check_member(member, archive):
    """Refuse archive members that would land outside the extraction folder."""
    name = member.name
    parts = PurePosixPath(name.replace("\\", "/")).parts
    absolute = name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name)
    if absolute or ".." in parts:
        raise _BadArchiveError(
            f"The archive {archive} contains the unsafe path {name!r} "
            "(absolute or with '..'); refusing to extract it. The archive was "
            "deleted."
        )


def _find_dataset_root(folder, max_depth=2):
    """The folder at most ``max_depth`` levels down that holds the metadata
    CSV."""
    level = [folder]
    for _ in range(max_depth + 1):
        for candidate in level:
            if (candidate / METADATA_RELPATH).is_file():
                return candidate
        level = sorted(p for d in level for p in d.iterdir() if p.is_dir())
    return None


def _extract_into_place(archive, target, staging):
    """Extract ``archive`` into a temporary folder, then rename it to
    ``target``."""
    tmp = Path(tempfile.mkdtemp(prefix="extract-", dir=staging))
    # tarfile's own check of each member: 3.12, 3.11.4+, 3.10.12+
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    try:
        logger.info("Extracting %s", archive)
        with tarfile.open(archive, "r:*") as tar:
            # One pass over the (compressed) stream: check, then extract.
            for member in tar:
                _check_member(member, archive)
                if not (member.isreg() or member.isdir()):
                    why = "Skipping %s in the archive (not a file or folder)"
                    logger.warning(why, member.name)
                    continue
                tar.extract(member, tmp, **safe)
        root = _find_dataset_root(tmp)
        if root is None:
            raise _BadArchiveError(
                f"The archive {archive} does not contain "
                f"{METADATA_RELPATH.as_posix()}, so it is not UrbanSound8K; "
                "it was deleted and nothing was put at the data folder. Check "
                "the URL."
            )
        if not (root / "audio").is_dir():
            logger.warning("The archive has no audio/ folder next to metadata/")

        if target.is_dir():
            try:
                target.rmdir()  # only succeeds while it is still empty
            except OSError as err:
                raise DownloadError(
                    f"data_folder {target} is no longer empty (files appeared "
                    "during the download), so the data set was not put there. "
                    "Empty it or choose a new folder and run again; the "
                    "verified archive is kept and reused."
                ) from err
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(root, target)
    except (tarfile.TarError, EOFError) as err:
        raise _BadArchiveError(
            f"Could not read the archive {archive} ({err}); it was deleted. "
            "Please run again to download it again."
        ) from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
