"""Atomic artifact writes and sha256 manifests.

Every file hessflow produces is written through :func:`atomic_write`: the
content goes to a hidden temporary file in the destination directory, is
flushed to disk, and is then renamed over the destination with
:func:`os.replace`. A reader therefore sees either the previous complete file
or the new complete file, never a half-written one -- which matters when a job
is preempted or killed, and when a workflow engine decides from a file's
existence whether a job already ran.

The manifest (``manifest.tsv``) records, for every artifact of a run, its path
relative to the run's root, its size in bytes and its sha256, so a colleague
who receives the artifacts can check them with :func:`verify_manifest`.

Manifest format (stable interface), tab-separated, UTF-8, ``\\n`` line ends::

    path<TAB>size_bytes<TAB>sha256
    density/step_100/density.npy<TAB>160128<TAB>3f5a...   (64 lowercase hex digits)

Paths use ``/`` separators, are relative to the root, and are sorted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "MANIFEST_HEADER",
    "atomic_write",
    "fsync_file",
    "read_manifest",
    "save_json",
    "save_npy",
    "save_npz",
    "save_text",
    "sha256_file",
    "verify_manifest",
    "write_manifest",
]

MANIFEST_HEADER = ("path", "size_bytes", "sha256")

_HASH_CHUNK_BYTES = 1 << 20


def _temporary_sibling(path: Path, suffix: str = "") -> Path:
    """A fresh hidden name next to ``path``: ``.{name}.tmp-{pid}-{random}{suffix}``.

    Same directory so that :func:`os.replace` is a rename within one
    filesystem (atomic on POSIX); pid and random suffix so that concurrent
    writers of the same destination never share a temporary file.
    """
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}{suffix}")


def fsync_file(path: Path) -> None:
    """Flush a file's data to disk (before a rename makes it visible)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Context manager for writing ``path`` all-or-nothing.

    ``suffix`` ends the temporary name, for writers that insist on one
    (Keras's ``save_weights`` wants ``.weights.h5``).

    Yields the :class:`~pathlib.Path` of a temporary file in the same
    directory (not yet created; the body creates and writes it). When the body
    finishes normally the temporary file is flushed to disk and renamed onto
    ``path`` with :func:`os.replace`; if the body raises, the temporary file
    is removed and ``path`` is left exactly as it was.

    The temporary file is created by the body with the process umask (unlike
    :func:`tempfile.mkstemp`, whose 0600 mode would leak into the artifact).

    Example::

        with atomic_write("out/tridiag_0.npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, tridiag)
    """
    path = Path(path)
    tmp = _temporary_sibling(path, suffix)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(
                f"atomic_write({str(path)!r}): the body did not create the temporary file {str(tmp)!r}"
            )
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        # BaseException: a KeyboardInterrupt or SystemExit must not leave a
        # stray temporary file either.
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Atomically write ``array`` in ``.npy`` format to exactly ``path``.

    Writes through a file object, so :func:`numpy.save` never appends its own
    ``.npy`` suffix. Object arrays are refused (they would need pickle to
    load). Returns ``Path(path)``.
    """
    path = Path(path)
    array = np.asanyarray(array)
    if array.dtype.hasobject:
        raise TypeError(f"save_npy({str(path)!r}): object arrays are not a stable artifact format")
    with atomic_write(path) as tmp, _naming_write_errors(path):
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
    return path


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """Atomically write ``arrays`` (name -> array) as an uncompressed ``.npz`` to exactly ``path``.

    The same bytes for the same arrays (``numpy.savez`` dates every member 1980-01-01). Object
    arrays are refused, as by :func:`save_npy`.
    """
    path = Path(path)
    arrays = {name: np.asanyarray(array) for name, array in arrays.items()}
    for name, array in arrays.items():
        if array.dtype.hasobject:
            raise TypeError(f"save_npz({str(path)!r}): {name} is an object array, not a stable artifact format")
    with atomic_write(path) as tmp, _naming_write_errors(path):
        with open(tmp, "wb") as f:
            np.savez(f, allow_pickle=False, **arrays)
    return path


def save_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as JSON: sorted keys, indent 2, trailing newline.

    NaN/Infinity are refused (``allow_nan=False``): they are not JSON.
    Returns ``Path(path)``.
    """
    text = json.dumps(obj, sort_keys=True, indent=2, allow_nan=False) + "\n"
    return save_text(path, text)


def save_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write ``text`` (UTF-8, ``\\n`` line ends kept as given). Returns ``Path(path)``."""
    path = Path(path)
    with atomic_write(path) as tmp, _naming_write_errors(path):
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    return path


@contextlib.contextmanager
def _naming_write_errors(path: Path) -> Iterator[None]:
    """An OSError while writing ``path`` names it and the free space left (a full disk).

    Used inside :func:`atomic_write`, so the space is measured with the partial temporary file
    still there, as it was when the write failed.

    Neither ``np.save`` ("300000 requested and 131056 written") nor a file object's write
    ("[Errno 28] No space left on device") says which file failed. The errno is kept, so the
    exception's class (``FileNotFoundError``, ``PermissionError``, ...) is too.
    """
    try:
        yield
    except OSError as error:
        try:
            free = f"{shutil.disk_usage(path.parent).free:,} bytes free on its file system"
        except OSError:
            free = "free space unknown"
        message = f"could not write {str(path)!r}: {error.strerror or error} ({free}); the file is left as it was"
        raise (OSError(error.errno, message) if error.errno is not None else OSError(message)) from error


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes as 64 lowercase hex digits, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _relative_posix(path: str | os.PathLike, root: Path) -> str:
    """``path`` relative to ``root`` with ``/`` separators; it must lie under ``root``."""
    path = Path(path)
    absolute = path if path.is_absolute() else root / path
    try:
        relative = absolute.resolve().relative_to(root.resolve())
    except ValueError:
        raise ValueError(f"manifest entry {str(path)!r} is not inside the root {str(root)!r}") from None
    text = relative.as_posix()
    if "\t" in text or "\n" in text or "\r" in text:
        raise ValueError(f"manifest entry {text!r} contains a tab or newline")
    return text


def write_manifest(
    manifest_path: str | os.PathLike,
    paths: Iterable[str | os.PathLike],
    root: str | os.PathLike,
) -> list[dict[str, Any]]:
    """Hash ``paths`` and atomically write a manifest TSV to ``manifest_path``.

    Args:
        manifest_path: destination of the TSV (see the module docstring for the format).
        paths: files to record; absolute, or relative to ``root``. Each must lie under ``root``
            and must not be the manifest itself. Duplicates are recorded once.
        root: directory the recorded paths are relative to.

    Returns:
        the rows written, as dicts ``{"path": str, "size_bytes": int, "sha256": str}``, sorted
        by path.

    Raises:
        ValueError: a path lies outside ``root``, contains a tab or newline, or is the manifest
            itself (the path is named).
    """
    root = Path(root)
    manifest_relative = (
        _relative_posix(Path(manifest_path).absolute(), root) if _is_under(manifest_path, root) else None
    )
    relative_paths = sorted({_relative_posix(p, root) for p in paths})
    if manifest_relative is not None and manifest_relative in relative_paths:
        raise ValueError(f"the manifest {str(manifest_path)!r} cannot list itself")

    rows = []
    for relative in relative_paths:
        file_path = root / relative
        rows.append(
            {
                "path": relative,
                "size_bytes": file_path.stat().st_size,
                "sha256": sha256_file(file_path),
            }
        )
    lines = ["\t".join(MANIFEST_HEADER)]
    lines += [f"{row['path']}\t{row['size_bytes']}\t{row['sha256']}" for row in rows]
    save_text(manifest_path, "\n".join(lines) + "\n")
    return rows


def _is_under(path: str | os.PathLike, root: Path) -> bool:
    try:
        Path(path).absolute().resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def read_manifest(manifest_path: str | os.PathLike) -> list[dict[str, Any]]:
    """Parse a manifest TSV into rows ``{"path": str, "size_bytes": int, "sha256": str}``.

    Raises ``ValueError`` (naming the file and line) on a wrong header or a
    malformed row.
    """
    manifest_path = Path(manifest_path)
    lines = manifest_path.read_text(encoding="utf-8").splitlines()
    if not lines or tuple(lines[0].split("\t")) != MANIFEST_HEADER:
        raise ValueError(
            f"{str(manifest_path)!r} is not a hessflow manifest: the first line must be "
            f"{chr(9).join(MANIFEST_HEADER)!r} (tab-separated)"
        )
    rows = []
    for line_number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 3 or not fields[1].isdigit() or not _is_sha256_hex(fields[2]):
            raise ValueError(f"{str(manifest_path)!r} line {line_number}: malformed row {line!r}")
        rows.append({"path": fields[0], "size_bytes": int(fields[1]), "sha256": fields[2]})
    return rows


def _is_sha256_hex(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def verify_manifest(manifest_path: str | os.PathLike, root: str | os.PathLike) -> list[str]:
    """Check every file a manifest lists against its recorded size and sha256.

    Returns one human-readable problem per bad file, each naming the file
    (relative path as recorded); an empty list means everything matches::

        "missing: tridiags.npy"
        "size mismatch: density.npy (manifest 160128 bytes, found 160000)"
        "sha256 mismatch: summary.csv"

    The hash is only computed when the size matches (a size difference already
    proves the content changed).
    """
    root = Path(root)
    problems = []
    for row in read_manifest(manifest_path):
        file_path = root / row["path"]
        if not file_path.is_file():
            problems.append(f"missing: {row['path']}")
            continue
        size = file_path.stat().st_size
        if size != row["size_bytes"]:
            problems.append(
                f"size mismatch: {row['path']} (manifest {row['size_bytes']} bytes, found {size})"
            )
        elif sha256_file(file_path) != row["sha256"]:
            problems.append(f"sha256 mismatch: {row['path']}")
    return problems
