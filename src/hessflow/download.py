"""Download and unpack the CIFAR-10 binary version, all-or-nothing.

Two steps, each safe to interrupt and rerun:

1. :func:`download` streams a URL into a hidden temporary file next to the destination
   (``.{name}.part-{pid}``), hashing while it reads, retries transient network failures with
   exponential backoff, checks the sha256, and only then renames the file onto the destination
   with :func:`os.replace`. So the destination is either absent or a complete, verified file -- a
   workflow engine that decides from a file's existence whether a job ran can trust it.
2. :func:`extract_cifar10` unpacks the archive into a temporary folder, checks that the six batch
   files are there and plausible, and renames the folder to ``directory/cifar-10-batches-bin``.

Checksum policy: a sha256 mismatch is *not* retried. The body arrived complete (its length matched
``Content-Length`` and TCP checksums every segment), so a mismatch means the server sent different
content -- an error page, a moved or changed file, a proxy's substitute -- and asking again returns
the same bytes. Failing at once with both hashes in the message is more useful than a retry loop.

Only the standard library is used for the network and the archive (no TensorFlow), so this runs
in a bare environment; the CIFAR-10 file names come from :mod:`hessflow.data`.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from pathlib import Path

from hessflow.artifacts import fsync_file, sha256_file
from hessflow.data import (
    CIFAR10_DIRNAME,
    CIFAR10_RECORD_BYTES,
    CIFAR10_TEST_FILES,
    CIFAR10_TRAIN_FILES,
)

__all__ = [
    "CIFAR10_SHA256",
    "CIFAR10_SIZE",
    "CIFAR10_URL",
    "ArchiveError",
    "ChecksumError",
    "DownloadError",
    "download",
    "extract_cifar10",
    "fetch_cifar10",
    "verify_archive",
]

# Published by the dataset's authors: 170,052,171 bytes, SHA-256 below (MD5
# c32a1d4ab5d03f1284b67883e8d87530), as listed by TFDS's checksum registry and several other
# independent projects. It unpacks to cifar-10-batches-bin/ (data_batch_1..5.bin, test_batch.bin).
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_SHA256 = "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"
CIFAR10_SIZE = 170_052_171

_CHUNK_BYTES = 1 << 16  # small enough that a stalled read is noticed, large enough to be cheap
_PROGRESS_INTERVAL_S = 5.0  # seconds between progress lines
_USER_AGENT = "hessflow-download/0.1 (+python urllib)"

# HTTP statuses worth asking again for: server-side trouble and rate limiting. Everything else in
# 4xx (404 above all) will not change on a retry, so it fails at once.
_RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class DownloadError(OSError):
    """A download failed (network error after all retries, or a permanent HTTP error)."""


class ChecksumError(ValueError):
    """Downloaded bytes do not have the expected sha256."""


class ArchiveError(ValueError):
    """An archive is corrupt, unsafe, or lacks the expected members."""


class _TransientError(Exception):
    """Internal: one attempt failed in a way that a later attempt may not (wraps the cause)."""


# ================================================================================================
# Download
# ================================================================================================
def download(
    url: str,
    destination: str | os.PathLike,
    sha256: str,
    *,
    retries: int = 3,
    timeout: float = 60,
    backoff: float = 2.0,
    log: Callable[[str], object] = print,
) -> Path:
    """Download ``url`` to ``destination`` and verify its sha256, all-or-nothing.

    If ``destination`` already exists with the expected sha256 nothing is downloaded. If it
    exists with another hash it is deleted (logged) and downloaded again -- a known-bad file is
    not left where a workflow would take it for a finished download.

    The body is streamed into ``.{name}.part-{pid}`` in the destination's folder and hashed on the
    fly; a progress line (bytes so far, MB/s) is logged every few seconds. Transient failures --
    connection errors, socket timeouts, HTTP 5xx/408/429, a body shorter than its
    ``Content-Length`` -- are retried from the start, waiting ``backoff * 2**k`` seconds before
    retry ``k = 0, 1, ...``; at most ``retries`` retries, i.e. ``retries + 1`` requests in all.
    Other HTTP errors (404, 403, ...) fail on the first request. A sha256 mismatch is not retried
    (see the module docstring). The temporary file is removed whatever happens, including
    ``KeyboardInterrupt``; only a verified file is renamed onto ``destination``.

    Args:
        url: ``http(s)://`` (or any scheme :func:`urllib.request.urlopen` handles).
        destination: file path; missing parent folders are created.
        sha256: expected hex digest (case-insensitive).
        retries: number of retries after the first attempt (>= 0).
        timeout: socket timeout in seconds, per blocking operation (connect, each read).
        backoff: wait before the first retry, in seconds; doubles for each further retry.
        log: called with one human-readable line per event.

    Returns:
        ``destination`` as a :class:`~pathlib.Path`.

    Raises:
        DownloadError: a permanent HTTP error, or transient failures on every attempt; the
            message names the URL, the last error, and where to place the file by hand.
        ChecksumError: the downloaded bytes have another sha256 (message names URL and both
            hashes); nothing is left at ``destination``.
    """
    destination = Path(destination)
    expected = _normalized_sha256(sha256)
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    destination.parent.mkdir(parents=True, exist_ok=True)

    if destination.exists():
        actual = sha256_file(destination)
        if actual == expected:
            log(f"{destination} already present with the expected sha256; not downloading")
            return destination
        log(f"{destination} exists but has sha256 {actual}, expected {expected}: "
            "deleting it and downloading again")
        destination.unlink()

    part = destination.with_name(f".{destination.name}.part-{os.getpid()}")
    try:
        actual = _download_with_retries(url, part, retries, timeout, backoff, log, destination)
        if actual != expected:
            raise ChecksumError(
                f"download of {url} has sha256 {actual}, expected {expected}; the file was "
                f"deleted. The server sent different content (an error page, or a changed "
                f"file); if you have the right file, place it by hand at {destination}"
            )
        fsync_file(part)  # the data must be on disk before the rename makes it visible
        os.replace(part, destination)
    finally:
        # Reached with `part` still present only on failure (incl. KeyboardInterrupt).
        part.unlink(missing_ok=True)
    log(f"downloaded {url} to {destination} (sha256 verified)")
    return destination


def _download_with_retries(url, part, retries, timeout, backoff, log, destination) -> str:
    """Fetch ``url`` into ``part`` with up to ``retries`` retries; return the body's sha256."""
    attempts = retries + 1
    for attempt in range(1, attempts + 1):
        try:
            return _fetch_once(url, part, timeout, log)
        except _TransientError as error:
            cause = error.__cause__ or error
            if attempt == attempts:
                raise DownloadError(
                    f"could not download {url} after {attempts} attempt(s); last error: "
                    f"{cause!r}. To place the file by hand, download it elsewhere and copy it "
                    f"to {destination}"
                ) from cause
            delay = backoff * 2 ** (attempt - 1)
            log(f"attempt {attempt}/{attempts} for {url} failed ({cause!r}); "
                f"retrying in {delay:g} s")
            time.sleep(delay)
    raise AssertionError("unreachable")  # the loop either returns or raises


def _fetch_once(url: str, part: Path, timeout: float, log) -> str:
    """One attempt: stream ``url`` into ``part`` (truncating it), return the body's sha256.

    Network failures that a retry may fix are raised as :class:`_TransientError` (chained to the
    cause); permanent ones as :class:`DownloadError`. Errors writing ``part`` (disk full,
    permissions) propagate unchanged: retrying would not help and the cause should be visible.
    """
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code in _RETRYABLE_STATUS:
            raise _TransientError() from error
        raise DownloadError(
            f"download of {url} failed with HTTP status {error.code} ({error.reason}); not "
            "retrying, since this status does not change on a retry"
        ) from error
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        # URLError: DNS/connection refused; OSError covers socket timeouts and resets.
        raise _TransientError() from error

    with response:
        expected_bytes = _content_length(response)
        log(f"downloading {url}"
            + (f" ({expected_bytes:,} bytes)" if expected_bytes is not None else ""))
        digest = hashlib.sha256()
        received = 0
        started = last_report = time.monotonic()
        with open(part, "wb") as out:
            while True:
                try:
                    chunk = response.read(_CHUNK_BYTES)
                except (http.client.HTTPException, OSError) as error:
                    raise _TransientError() from error
                if not chunk:
                    break
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                now = time.monotonic()
                if now - last_report >= _PROGRESS_INTERVAL_S:
                    log(_progress_line(received, expected_bytes, now - started))
                    last_report = now
    # http.client does not raise when the connection closes early on a read of fixed size, so
    # the length check is ours: a short body would otherwise only show up as a checksum error.
    if expected_bytes is not None and received != expected_bytes:
        raise _TransientError() from ConnectionError(
            f"body ended after {received:,} of {expected_bytes:,} bytes (Content-Length)")
    log(_progress_line(received, expected_bytes, time.monotonic() - started) + ", done")
    return digest.hexdigest()


def _content_length(response) -> int | None:
    """The response's Content-Length as an int, or None when absent or malformed."""
    value = response.headers.get("Content-Length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _progress_line(received: int, total: int | None, elapsed_s: float) -> str:
    rate = received / 1e6 / elapsed_s if elapsed_s > 0 else float("inf")
    of_total = f" of {total:,} ({100 * received / total:.0f}%)" if total else ""
    return f"  {received:,} bytes{of_total}, {rate:.1f} MB/s"


def verify_archive(path: str | os.PathLike, sha256: str, *, key: str = "data.cifar10.sha256") -> str:
    """Check that the file at ``path`` has the sha256 ``sha256`` (the config's ``key``).

    For an archive read where it lies, e.g. placed by hand: the download rule is not in the DAG
    when the file exists, so this is the check that it is the file the config names.

    Returns:
        the verified hex digest.

    Raises:
        FileNotFoundError: no file at ``path``.
        ChecksumError: another sha256; the message names the file, both hashes and the two fixes
            (delete it to download it again, or set ``key`` for a deliberate other copy).
    """
    expected = _normalized_sha256(sha256)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"archive not found: {path}")
    actual = sha256_file(path)
    if actual != expected:
        raise ChecksumError(
            f"{path} has sha256 {actual}, but {key} is {expected}: it is not the file the config names "
            f"(another or an incomplete copy). Delete it and run again to download it afresh, or, if it is a "
            f"deliberate other copy, set {key}: {actual}"
        )
    return actual


def _normalized_sha256(sha256: str) -> str:
    value = sha256.strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    return value


# ================================================================================================
# Extraction
# ================================================================================================
CIFAR10_BATCH_FILES = CIFAR10_TRAIN_FILES + CIFAR10_TEST_FILES


def extract_cifar10(archive: str | os.PathLike, directory: str | os.PathLike) -> Path:
    """Unpack the CIFAR-10 binary archive to ``directory/cifar-10-batches-bin``, all-or-nothing.

    The archive is unpacked into a hidden temporary folder inside ``directory`` (same filesystem,
    so the final rename is atomic), with tarfile's ``"data"`` filter where available and, in any
    case, members with absolute paths or ``..`` components rejected. Then the six batch files
    (``data_batch_1.bin`` .. ``data_batch_5.bin``, ``test_batch.bin``) must be present with a
    nonzero size that is a multiple of the 3,073-byte record. Only then is the folder renamed to
    ``directory/cifar-10-batches-bin``; an existing folder of that name is replaced.

    Returns:
        the path ``directory/cifar-10-batches-bin``.

    Raises:
        FileNotFoundError: ``archive`` does not exist.
        ArchiveError: the archive is not a gzip'd tar or is truncated (message says to delete it
            and download again), holds an unsafe member, or lacks a batch file or has one of
            implausible size (message names the archive and the member). Nothing is left behind.
    """
    archive = Path(archive)
    directory = Path(directory)
    if not archive.is_file():
        raise FileNotFoundError(f"CIFAR-10 archive not found: {archive}")
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / CIFAR10_DIRNAME

    staging = Path(tempfile.mkdtemp(prefix=f".{CIFAR10_DIRNAME}.extract-", dir=directory))
    try:
        _unpack_tar_gz(archive, staging)
        unpacked = staging / CIFAR10_DIRNAME
        _check_cifar10_batches(archive, unpacked)
        _replace_directory(unpacked, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _unpack_tar_gz(archive: Path, into: Path) -> None:
    """Safely extract every member of a ``.tar.gz`` into ``into``; corrupt data -> ArchiveError."""
    corrupt = (tarfile.ReadError, tarfile.CompressionError, EOFError, zlib.error,
               gzip.BadGzipFile)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()  # reads the whole stream: truncation shows up here
            for member in members:
                _check_member_name(archive, member.name)
            if hasattr(tarfile, "data_filter"):
                # Also refuses links out of the tree, device files, and odd permissions.
                tar.extractall(into, members=members, filter="data")
            else:  # Python without PEP 706: names were checked above; skip links and devices
                tar.extractall(into, members=[m for m in members if m.isfile() or m.isdir()])
    except corrupt as error:
        raise ArchiveError(
            f"{archive} is not a readable .tar.gz archive ({error}); it is corrupt or truncated: "
            "delete it and download it again"
        ) from error
    except tarfile.TarError as error:  # FilterError and the like: an unsafe member
        raise ArchiveError(f"{archive}: refusing to extract unsafe member ({error})") from error


def _check_member_name(archive: Path, name: str) -> None:
    """Reject member names that would land outside the extraction folder."""
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or ".." in parts or (parts and parts[0].endswith(":")):
        raise ArchiveError(
            f"{archive}: refusing to extract member {name!r} (absolute path or '..' component)")


def _check_cifar10_batches(archive: Path, folder: Path) -> None:
    """All six batch files present in ``folder`` with a plausible size, else ArchiveError."""
    for name in CIFAR10_BATCH_FILES:
        path = folder / name
        member = f"{CIFAR10_DIRNAME}/{name}"
        if not path.is_file():
            raise ArchiveError(f"{archive} lacks member {member}; it is not the CIFAR-10 binary "
                               "version, or it is incomplete: delete it and download it again")
        size = path.stat().st_size
        if size == 0 or size % CIFAR10_RECORD_BYTES != 0:
            raise ArchiveError(
                f"{archive}: member {member} has {size:,} bytes, not a nonzero multiple of the "
                f"record length {CIFAR10_RECORD_BYTES:,}; delete the archive and download again")


def _replace_directory(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``, replacing an existing ``target`` folder.

    A folder cannot be renamed onto a non-empty folder, so an existing ``target`` is first moved
    aside (one rename) and deleted after the new one is in place: ``target`` is missing only for
    the instant between two renames, and never half-filled.
    """
    if not target.exists():
        os.rename(source, target)
        return
    aside = target.with_name(f".{target.name}.old-{os.getpid()}")
    shutil.rmtree(aside, ignore_errors=True)
    os.rename(target, aside)
    try:
        os.rename(source, target)
    except BaseException:
        os.rename(aside, target)  # put the old folder back
        raise
    shutil.rmtree(aside, ignore_errors=True)


# ================================================================================================
# Both steps
# ================================================================================================
def fetch_cifar10(
    directory: str | os.PathLike,
    *,
    url: str = CIFAR10_URL,
    sha256: str = CIFAR10_SHA256,
    log: Callable[[str], object] = print,
    **download_options,
) -> Path:
    """Download (if needed) and unpack CIFAR-10 into ``directory``.

    The archive is kept as ``directory/cifar-10-binary.tar.gz`` (so a rerun, or a copy placed
    there by hand, skips the download) and unpacked to ``directory/cifar-10-batches-bin``.
    ``download_options`` go to :func:`download` (``retries``, ``timeout``, ``backoff``).

    Returns:
        the ``cifar-10-batches-bin`` folder, ready for :func:`hessflow.data.load_cifar10`.
    """
    directory = Path(directory)
    archive = download(url, directory / "cifar-10-binary.tar.gz", sha256, log=log,
                       **download_options)
    folder = extract_cifar10(archive, directory)
    log(f"unpacked {archive} to {folder}")
    return folder
