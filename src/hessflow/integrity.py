"""Artifacts checked against what their producers recorded: refused when changed or malformed.

A job that writes an artifact records its sha256 where the artifact's readers look: a Lanczos job
in its provenance (``provenance_{d}.json``: ``outputs_sha256``, one entry per file it wrote),
prepare_data in the data card (``dataset.json``: ``arrays.{x,y}_{train,test}.sha256``, see
:func:`array_sha256`), the train job in ``train/checkpoints.json`` (``{step: sha256}`` of every
checkpoint it saved, :func:`checkpoint_record`; evaluation and Lanczos jobs check it). A reader
verifies before it uses the file, so a tridiagonal flipped by one byte after its job is refused by
aggregation (and by ``hessflow-reproduce``), never aggregated into a density and re-certified in
``manifest.tsv``.

Every refusal is an `IntegrityError` (a ValueError) whose message names the file and the fix. The
fix is always to delete the file: Snakemake then reruns the job that writes it (a missing output
is rerun; the jobs after it rerun because their input is newer), which rewrites the file and its
record together.

Pure numpy (no TensorFlow): ``hessflow-reproduce`` uses it on a machine with the base install.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hessflow import artifacts

#: :func:`array_sha256` hashes an array in leading-axis slices of at most this many bytes (16 MiB).
HASH_CHUNK_BYTES = 16 * 2**20

__all__ = [
    "check_recorded_output",
    "DeflationBasis",
    "OUTPUTS_SHA256",
    "IntegrityError",
    "array_sha256",
    "check_checkpoint",
    "check_data_arrays",
    "checkpoint_record",
    "load_deflation_basis",
    "load_tridiag",
    "load_tridiags",
    "outputs_sha256",
    "tridiag_problems",
]

#: The provenance key of a job's ``{output name: sha256}`` of every file it wrote.
OUTPUTS_SHA256 = "outputs_sha256"


class IntegrityError(ValueError):
    """An artifact that is not what its producer wrote, or not of the form its reader needs."""


def array_sha256(array: np.ndarray) -> str:
    """sha256 (64 hex digits) of an array: its dtype (with byte order), shape and C-order bytes.

    The data card's record of each array (:func:`hessflow.data.data_card`); equal for the array a
    data factory returned and the one ``np.load`` reads back from its ``.npy``.
    """
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    if array.ndim == 0:
        digest.update(array.tobytes())
        return digest.hexdigest()
    # Leading-axis slices of at most HASH_CHUNK_BYTES, whose bytes in order are the C-order bytes
    # of the whole: a memory-mapped data set (hessian.data: stream) is hashed without reading it
    # into memory at once.
    rows = max(1, HASH_CHUNK_BYTES // max(1, array[:1].nbytes))
    for first in range(0, array.shape[0], rows):
        digest.update(np.ascontiguousarray(array[first:first + rows]).data)
    return digest.hexdigest()


def outputs_sha256(outputs: Mapping[str, str | os.PathLike]) -> dict[str, str]:
    """``{name: sha256 of the file}`` of a job's written outputs, read back from disk."""
    return {name: artifacts.sha256_file(path) for name, path in outputs.items()}


def tridiag_problems(tridiag: np.ndarray) -> list[str]:
    """What keeps an array from being a Lanczos job's tridiagonal ``T`` (empty: none).

    A job writes ``T`` as a float64 (m, m) array, ``m >= 1``, finite, exactly symmetric (both
    off-diagonals are the same numbers) and zero beyond its three diagonals.
    """
    if tridiag.ndim != 2 or tridiag.shape[0] != tridiag.shape[1] or tridiag.shape[0] == 0:
        return [f"it has shape {tridiag.shape}, not that of a square (m, m) matrix with m >= 1"]
    problems = []
    if tridiag.dtype != np.float64:
        problems.append(f"it has dtype {tridiag.dtype}, not float64")
    if not np.issubdtype(tridiag.dtype, np.number) or np.iscomplexobj(tridiag):
        return problems
    if not np.isfinite(tridiag).all():
        problems.append(f"it has {int(np.sum(~np.isfinite(tridiag)))} non-finite entries (NaN or Inf)")
        return problems
    if not np.array_equal(tridiag, tridiag.T):
        problems.append(f"it is not symmetric (max |T - T^T| = {float(np.abs(tridiag - tridiag.T).max()):.3g})")
    if np.any(np.triu(tridiag, 2)) or np.any(np.tril(tridiag, -2)):
        problems.append("it has nonzero entries beyond its three diagonals")
    return problems


def _read_provenance(path: Path, fix: str) -> dict:
    try:
        provenance = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(provenance, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as error:
        raise IntegrityError(f"{path}: the Lanczos job's provenance is unreadable ({error}); {fix}") from None
    return provenance


def load_tridiag(path: str | os.PathLike, provenance: str | os.PathLike, draw: int | str) -> np.ndarray:
    """The tridiagonal ``path`` of draw ``draw``, verified against its job's ``provenance``.

    Args:
        path: a ``tridiag_{d}.npy``.
        provenance: the ``provenance_{d}.json`` its Lanczos job wrote with it.
        draw: the draw's number, for the message.

    Returns:
        ``T``: ndarray, shape (m, m), float64, symmetric tridiagonal.

    Raises:
        IntegrityError: naming the file, the draw, every problem found and the fix, when the file
            is unreadable (truncated, not ``.npy``), malformed (:func:`tridiag_problems`), or of
            another sha256 than its provenance records (changed after its job wrote it), or when
            the provenance is unreadable or records no sha256 for it.
    """
    path, provenance = Path(path), Path(provenance)
    fix = (f"delete {path} (and {provenance.name}) to recompute draw {draw}: Snakemake then reruns its "
           "Lanczos job, which writes both anew")
    record = _read_provenance(provenance, fix)
    problems = []
    tridiag = None
    try:
        tridiag = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise IntegrityError(f"{path} (draw {draw}) is missing; {fix}") from None
    except Exception as error:  # truncated, not .npy, pickled objects
        problems.append(f"it is unreadable as .npy (truncated or not an array: {error})")
    if tridiag is not None:
        problems += tridiag_problems(tridiag)
    recorded = record.get(OUTPUTS_SHA256, {}).get("tridiag")
    actual = artifacts.sha256_file(path)
    if recorded is None:
        problems.append(f"{provenance.name} records no sha256 for it (written by an older hessflow?)")
    elif recorded != actual:
        problems.append(f"it changed after its Lanczos job wrote it: sha256 {actual}, but {provenance.name} "
                        f"records {recorded}")
    if problems:
        raise IntegrityError(f"{path} (draw {draw}) is refused: {'; '.join(problems)}. Fix: {fix}")
    return tridiag


def check_recorded_output(path: str | os.PathLike, provenance: str | os.PathLike, name: str,
                          draw: int | str) -> None:
    """Refuse ``path``, the output ``name`` (e.g. ``"vectors"``) of a Lanczos job, unless its sha256
    is the one the job's ``provenance`` records.

    Raises:
        IntegrityError: naming the file, the draw and the fix, when the file is missing, changed
            after its job wrote it, or unrecorded.
    """
    path, provenance = Path(path), Path(provenance)
    fix = (f"delete {path} (and {provenance.name}) to recompute draw {draw}: Snakemake then reruns its "
           "Lanczos job, which writes both anew")
    recorded = _read_provenance(provenance, fix).get(OUTPUTS_SHA256, {}).get(name)
    if not path.is_file():
        raise IntegrityError(f"{path} (draw {draw}) is missing; {fix}")
    actual = artifacts.sha256_file(path)
    if recorded != actual:
        why = (f"{provenance.name} records no sha256 for it" if recorded is None else
               f"it changed after its Lanczos job wrote it: sha256 {actual}, but {provenance.name} records {recorded}")
        raise IntegrityError(f"{path} (draw {draw}) is refused: {why}. Fix: {fix}")


def load_tridiags(
    tridiags: Sequence[str | os.PathLike],
    provenances: Sequence[str | os.PathLike],
    draws: Sequence[int] | None = None,
) -> list[np.ndarray]:
    """:func:`load_tridiag` of every draw (``draws``: their numbers, default ``0, 1, ...``).

    Raises one `IntegrityError` listing every refused draw (one line each), so a run with several
    damaged draws is repaired in one go.
    """
    if len(tridiags) != len(provenances):
        raise ValueError(f"{len(tridiags)} tridiagonals but {len(provenances)} provenance files")
    draws = range(len(tridiags)) if draws is None else draws
    loaded, refused = [], []
    for path, provenance, draw in zip(tridiags, provenances, draws):
        try:
            loaded.append(load_tridiag(path, provenance, draw))
        except IntegrityError as error:
            refused.append(str(error))
    if refused:
        raise IntegrityError("\n".join(refused))
    return loaded


@dataclass(frozen=True)
class DeflationBasis:
    """What the deflated draws of one checkpoint and curvature share, verified (:func:`load_deflation_basis`).

    Attributes:
        tridiag: the basis run's ``T``, (k, k) float64: its Ritz values are the deflated atoms.
        dim: ``n``, the operator's dimension.
        complement_weights: (draws,) float64, each draw's recorded weight of its quadrature.
    """

    tridiag: np.ndarray
    dim: int
    complement_weights: np.ndarray


def load_deflation_basis(tridiag: str | os.PathLike, provenance: str | os.PathLike,
                         draw_provenances: Sequence[str | os.PathLike]) -> DeflationBasis:
    """The deflation basis run's tridiagonal, verified, with what its deflated draws recorded.

    Each draw's provenance must record a deflation on exactly this basis (the sha256 of the basis
    tridiagonal it projected out): draws of another basis run, or plain draws, are refused.

    Raises:
        IntegrityError: naming the file and the fix.
    """
    basis = load_tridiag(tridiag, provenance, "basis")
    recorded = _read_provenance(Path(provenance), f"delete {tridiag} to recompute the basis run")
    basis_sha256 = recorded.get(OUTPUTS_SHA256, {}).get("tridiag")
    weights, refused = [], []
    for draw, path in enumerate(draw_provenances):
        fix = f"delete {path} to recompute draw {draw} on the basis run {tridiag}"
        deflation = _read_provenance(Path(path), fix).get("deflation") or {}
        if deflation.get("basis_sha256", {}).get("tridiag") != basis_sha256 or "complement_weight" not in deflation:
            refused.append(f"{path}: draw {draw} was not deflated on the basis run {tridiag} (its recorded basis "
                           f"differs or is missing); {fix}")
        else:
            weights.append(float(deflation["complement_weight"]))
    if refused:
        raise IntegrityError("\n".join(refused))
    return DeflationBasis(tridiag=basis, dim=int(recorded["dim"]), complement_weights=np.asarray(weights))


def check_data_arrays(arrays: Mapping[str, tuple[str | os.PathLike, np.ndarray]], card: Mapping,
                      card_path: str | os.PathLike) -> dict[str, str]:
    """Verify data arrays against the sha256 the data card records; returns ``{name: sha256}``.

    Args:
        arrays: ``{card name ("x_train", ...): (the .npy file, its loaded array)}``.
        card: the data card (:func:`hessflow.data.data_card`); a card without ``arrays`` (not
            written by prepare_data) verifies nothing.
        card_path: the card's file, for the message.

    Raises:
        IntegrityError: naming the file, both hashes and the fix, when an array differs from the
            card's record (the file changed after prepare_data wrote it).
    """
    recorded = card.get("arrays") or {}
    digests = {}
    for name, (path, array) in arrays.items():
        digests[name] = array_sha256(array)
        expected = recorded.get(name, {}).get("sha256")
        if expected is not None and expected != digests[name]:
            raise IntegrityError(
                f"{path}: the array ({name}, shape {tuple(array.shape)}, {array.dtype}) has sha256 {digests[name]}, "
                f"but the data card {card_path} records {expected}: the file changed after prepare_data wrote it. "
                f"Fix: delete {path}: Snakemake then reruns prepare_data and every job after it"
            )
    return digests


def checkpoint_record(checkpoints: Mapping[int, str | os.PathLike]) -> dict[str, str]:
    """``{str(step): sha256}`` of the checkpoint files a training run saved (``train/checkpoints.json``)."""
    return {str(step): artifacts.sha256_file(path) for step, path in sorted(checkpoints.items())}


def check_checkpoint(path: str | os.PathLike, step: int | str, record: str | os.PathLike) -> str:
    """Verify checkpoint ``path`` of ``step`` against the train job's record; returns its sha256.

    Raises:
        IntegrityError: naming the file, both hashes and the fix, when the file differs from what
            the train job wrote, or the record has no entry for the step.
    """
    try:
        recorded = json.loads(Path(record).read_text(encoding="utf-8")).get(str(step))
    except (OSError, ValueError, AttributeError) as error:
        raise IntegrityError(
            f"{record}: the train job's checkpoint record is unreadable ({error}); delete it: Snakemake then "
            "reruns training"
        ) from None
    if recorded is None:
        raise IntegrityError(
            f"{record} records no checkpoint of step {step}; delete it: Snakemake then reruns training"
        )
    actual = artifacts.sha256_file(path)
    if actual != recorded:
        raise IntegrityError(
            f"{path}: the checkpoint has sha256 {actual}, but the train job recorded {recorded} in {record}: "
            f"the file changed after training wrote it. Fix: delete {path}: Snakemake then reruns training "
            "and every job after it"
        )
    return actual
