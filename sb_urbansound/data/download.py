"""Download, verify and extract UrbanSound8K (resumable, atomic, checksummed).

The archive goes to a hidden staging folder beside ``data_folder``; a broken
download resumes with an HTTP ``Range`` request; the whole archive's MD5 is
checked (SpeechBrain's ``get_md5``); it is extracted into a temporary folder
and moved into place with one rename, so no half data set is ever left at
``data_folder``, and a folder of the user's is never written into.
SpeechBrain's ``download_file``/``fetch`` cannot do it: no resume, timeout,
retry or checksum, written straight to the destination (a dropped
connection leaves half an archive that the next call takes as done:
``tests/test_download.py``), and ``unpack`` extracts any member path.
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

# The official archive (Zenodo record 1203745, about 6 GB); the MD5 is the
# one soundata checks (soundata/datasets/urbansound8k.py, REMOTES["all"]).
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
    """The verified archive's contents are unusable (re-downloading won't help)."""


class _RetryableError(Exception):
    """A transient network failure: the partial file is kept for resuming."""


def _download(url, dest, md5, progress, timeout, retries):
    """Download ``url`` to ``dest`` through ``<dest>.part`` (resumed with a
    ``Range`` request, retried ``retries`` times in a row without progress);
    only a file that matches ``md5`` becomes ``dest``."""
    from speechbrain.dataio.dataio import get_md5

    dest = Path(dest)
    expected = md5.lower() if md5 else None
    if dest.is_file():
        if expected is None or get_md5(dest) == expected:
            logger.info("%s is already downloaded", dest)
            return dest
        logger.warning(
            "%s does not match MD5 %s; downloading it again", dest, md5
        )
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
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
                kept = (
                    f" The partial download is kept at {part}; run again to "
                    "resume."
                    if part.exists()
                    else ""
                )
                raise DownloadError(
                    f"Downloading {url} failed after {tries} attempt(s): {err}.{kept}"
                ) from err
            attempt += 1
            wait = _RETRY_WAIT_S * attempt
            why = "Downloading %s: %s; retrying in %.0f s (%d/%d)"
            logger.warning(why, url, err, wait, attempt, retries)
            time.sleep(wait)

    if expected is None:
        logger.warning(
            "No MD5 given for %s; the download was not verified", url
        )
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
    return dest


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

    Nothing is done when ``data_folder/metadata/UrbanSound8K.csv`` exists; a
    non-empty folder without it is refused. The archive is downloaded into
    ``<parent>/.<name>.download/`` (kept there, verified, when a later step
    fails), extracted beside it and moved to ``data_folder`` in one rename.

    Arguments
    ---------
    data_folder : str or Path
        Where the data set should be: the folder that will contain
        ``metadata/UrbanSound8K.csv`` and ``audio/fold1`` .. ``audio/fold10``.
    url : str
        URL of the ``UrbanSound8K.tar.gz`` archive.
    md5 : str or None
        Expected MD5 of the archive; None skips the check (not recommended).
    progress : bool
        Show a tqdm progress bar while downloading.
    keep_archive : bool
        Keep the archive, moved to ``<parent of data_folder>/<archive name>``
        (left in the staging folder if that name is taken).
    timeout : float
        Seconds to wait for the connection and for each read.
    retries : int
        How many network failures in a row (with no progress) are retried.

    Returns
    -------
    Path
        ``data_folder``, which now holds ``metadata/UrbanSound8K.csv`` and
        ``audio/``.

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
    # Work on the real location (a symlinked data folder gets filled, the link
    # stays) so that the staging folder is on the same file system as the target.
    target = data_folder.resolve()
    if (target / METADATA_RELPATH).is_file():
        logger.info(
            "UrbanSound8K is already at %s; not downloading", data_folder
        )
        return data_folder
    if target.exists() and not target.is_dir():
        raise DownloadError(
            f"data_folder {data_folder} exists but is not a folder. Point "
            "data_folder to the extracted UrbanSound8K folder (the one holding "
            "metadata/UrbanSound8K.csv), or to a new or empty folder to download "
            "the data set there."
        )
    if target.is_dir() and any(target.iterdir()):
        raise DownloadError(
            f"data_folder {data_folder} is not empty but has no "
            f"{METADATA_RELPATH.as_posix()}, so it is not an extracted "
            "UrbanSound8K. Nothing was downloaded and nothing in it was changed. "
            "Either point data_folder to the folder you extracted UrbanSound8K "
            "into (the one that holds metadata/ and audio/), or to a new or empty "
            "folder to download the data set (about 6 GB) there."
        )

    staging = target.parent / f".{target.name}.download"
    archive = staging / _archive_name(url)
    logger.info(
        "Downloading %s to %s (staging in %s)", url, data_folder, staging
    )
    staging.mkdir(parents=True, exist_ok=True)
    for stale in staging.glob("extract-*"):  # left by a run that was killed
        logger.info("Removing %s (left by an interrupted extraction)", stale)
        shutil.rmtree(stale, ignore_errors=True)
    done = False
    try:
        _download(url, archive, md5, progress, timeout, retries)
        try:
            _extract_into_place(archive, target, staging)
        except _BadArchiveError:
            # Its contents are unusable: a new download is the only way out.
            archive.unlink(missing_ok=True)
            raise
        done = True
    finally:
        if done:
            _dispose_archive(archive, target.parent, keep_archive)
        elif archive.exists():
            logger.warning(
                "The verified archive is kept at %s; the next run reuses it",
                archive,
            )
        with contextlib.suppress(OSError):  # only when empty
            staging.rmdir()
    logger.info("UrbanSound8K is ready at %s", data_folder)
    return data_folder


def _archive_name(url):
    """File name of the archive, taken from the URL's path."""
    name = posixpath.basename(urllib.parse.urlparse(url).path)
    return urllib.parse.unquote(name) or "UrbanSound8K.tar.gz"


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
            logger.warning(
                "The server cannot resume from byte %d (HTTP 416); restarting",
                start,
            )
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
        total = None
        if status == 206:
            m = _CONTENT_RANGE.fullmatch(
                (response.headers.get("Content-Range") or "").strip()
            )
            if m is None or int(m.group(1)) != start:
                if not start:
                    raise DownloadError(
                        f"Could not download {url}: the server sent a partial "
                        f"answer ({response.headers.get('Content-Range')}) to a "
                        "request for the whole file."
                    )
                logger.warning(
                    "The server sent an unexpected range (%s); restarting from zero",
                    response.headers.get("Content-Range"),
                )
                response.close()
                part.unlink(missing_ok=True)
                return _fetch(url, part, progress, timeout)
            if m.group(3) != "*":
                total = int(m.group(3))
            elif length is not None:
                total = start + length
        else:
            if start:
                logger.info(
                    "The server ignored the Range request (HTTP %d); downloading "
                    "from the start again",
                    status,
                )
                start = 0
            total = length

        mode = "ab" if start else "wb"
        if start:
            logger.info("Resuming %s from byte %d", part.name, start)
        free = shutil.disk_usage(part.parent).free if total else 0
        if total is not None and free < total - start:
            why = "Only %.1f GB free in %s but %.1f GB still to download"
            logger.warning(why, free / 1e9, part.parent, (total - start) / 1e9)

        received = start
        bar = tqdm(
            total=total,
            initial=start,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=part.name[: -len(".part")] or part.name,
            disable=not progress,
            dynamic_ncols=True,
        )
        with open(part, mode) as f, bar:
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
    if (
        name.startswith(("/", "\\"))
        or re.match(r"^[A-Za-z]:", name)
        or ".." in parts
    ):
        raise _BadArchiveError(
            f"The archive {archive} contains the unsafe path {name!r} (absolute "
            "or with '..'); refusing to extract it. The archive was deleted."
        )


def _find_dataset_root(folder, max_depth=2):
    """The folder at most ``max_depth`` levels down that holds the metadata CSV."""
    level = [folder]
    for _ in range(max_depth + 1):
        for candidate in level:
            if (candidate / METADATA_RELPATH).is_file():
                return candidate
        level = sorted(
            p for parent in level for p in parent.iterdir() if p.is_dir()
        )
    return None


def _extract_into_place(archive, target, staging):
    """Extract ``archive`` into a temporary folder, then rename it to ``target``."""
    tmp = Path(tempfile.mkdtemp(prefix="extract-", dir=staging))
    # tarfile's own check of each member: 3.12, 3.11.4+, 3.10.12+
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    try:
        logger.info("Extracting %s", archive)
        try:
            with tarfile.open(archive, "r:*") as tar:
                # One pass over the (compressed) stream: check, then extract.
                for member in tar:
                    _check_member(member, archive)
                    if not (member.isreg() or member.isdir()):
                        logger.warning(
                            "Skipping %s in the archive (not a file or folder)",
                            member.name,
                        )
                        continue
                    tar.extract(member, tmp, **safe)
        except (tarfile.TarError, EOFError) as err:
            raise _BadArchiveError(
                f"Could not read the archive {archive} ({err}); it was deleted. "
                "Please run again to download it again."
            ) from err

        root = _find_dataset_root(tmp)
        if root is None:
            raise _BadArchiveError(
                f"The archive {archive} does not contain "
                f"{METADATA_RELPATH.as_posix()}, so it is not UrbanSound8K; it was "
                "deleted and nothing was put at the data folder. Check the URL."
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
                    "Empty it or choose a new folder and run again; the verified "
                    "archive is kept and reused."
                ) from err
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(root, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _dispose_archive(archive, parent, keep_archive):
    """Delete the archive after success, or move it next to the data folder."""
    if not archive.exists():
        return
    kept = parent / archive.name
    if not keep_archive:
        archive.unlink()
    elif kept.exists():
        logger.warning("%s exists; the archive is left at %s", kept, archive)
    else:
        os.replace(archive, kept)
        logger.info("Archive kept at %s", kept)
