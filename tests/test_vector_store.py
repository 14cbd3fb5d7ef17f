"""Lanczos vectors on disk (``lanczos(..., vectors_file=...)``): the same numbers as in memory, in bounded memory.

The operator is an explicit symmetric matrix with a known spectrum (a random orthogonal ``Q``), so that
every result is checked against an independent computation: ``numpy.linalg.eigvalsh``, ``V^T A V`` and
``V^T V`` computed here, and the in-memory store. ``VECTOR_BLOCK_BYTES`` is set to 7 columns' worth, so
that from step 8 on ``V`` is read in several blocks of whole rows, the last one short (at step 50: 56 rows
a block, 8 blocks, the last of 8 rows).
"""

from __future__ import annotations

import os
import shutil
import tracemalloc

import numpy as np
import pytest
from scipy.stats import ortho_group

import hessflow.lanczos
from hessflow.lanczos import lanczos

DIM = 400
STEPS = 50
#: Four outliers well above a bulk in [0, 1]: Lanczos converges them within STEPS steps.
OUTLIERS = (4.0, 6.0, 9.0, 14.0)
SEED = (3, 1, 4)


@pytest.fixture(scope="module")
def matrix():
    eigenvalues = np.concatenate([np.linspace(0.0, 1.0, DIM - len(OUTLIERS)), OUTLIERS])
    q = ortho_group.rvs(DIM, random_state=0)
    a = (q * eigenvalues) @ q.T
    return (a + a.T) / 2


@pytest.fixture(autouse=True)
def seven_column_blocks(monkeypatch):
    """Blocks of 7 columns' worth of bytes: 22400 / (8 j) rows at step j (56 rows at j = 50: 400 = 7 * 56 + 8)."""
    monkeypatch.setattr(hessflow.lanczos, "VECTOR_BLOCK_BYTES", 7 * DIM * 8)


@pytest.fixture(scope="module")
def memory_run(matrix):
    return lanczos(matrix, num_steps=STEPS, seed=SEED)


class FailingOperator:
    """``v -> a @ v`` that raises (a simulated preemption) on call ``fail_on_call``, counting calls."""

    def __init__(self, a, fail_on_call=None):
        self.a, self.calls, self.fail_on_call = a, 0, fail_on_call

    def __call__(self, v):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise KeyboardInterrupt("simulated preemption")
        return self.a @ v


def interrupt(a, fail_on_call=23, **store):
    """A run killed during step ``fail_on_call`` (checkpoint every 5 steps: the state has 20)."""
    with pytest.raises(KeyboardInterrupt):
        lanczos(FailingOperator(a, fail_on_call), DIM, STEPS, seed=SEED, save_every=5, **store)


def max_gram_departure(vectors):
    """max |V^T V - I|, computed whole."""
    vectors = np.asarray(vectors)
    return np.max(np.abs(vectors.T @ vectors - np.eye(vectors.shape[1])))


def test_disk_store_gives_the_memory_store_tridiagonal_ritz_values_and_vectors(tmp_path, matrix, memory_run):
    disk = lanczos(matrix, num_steps=STEPS, seed=SEED, vectors_file=tmp_path / "v.npy")
    np.testing.assert_allclose(disk.alpha, memory_run.alpha, rtol=1e-12, atol=0)
    np.testing.assert_allclose(disk.beta, memory_run.beta, rtol=1e-12, atol=0)
    norm = np.max(OUTLIERS)
    ritz_disk, ritz_memory = np.linalg.eigvalsh(disk.tridiag), np.linalg.eigvalsh(memory_run.tridiag)
    assert np.max(np.abs(ritz_disk - ritz_memory)) < 1e-12 * norm
    assert isinstance(disk.vectors, np.memmap) and disk.vectors.shape == (DIM, STEPS)
    assert max_gram_departure(disk.vectors) < 1e-12
    assert np.max(np.abs(disk.vectors - memory_run.vectors)) < 1e-10
    # And T is the projection of A onto them, computed here.
    vectors = np.asarray(disk.vectors)
    assert np.max(np.abs(vectors.T @ matrix @ vectors - disk.tridiag)) < 1e-12 * norm


def test_disk_run_ritz_values_match_the_extreme_eigenvalues(tmp_path, matrix):
    disk = lanczos(matrix, num_steps=STEPS, seed=SEED, vectors_file=tmp_path / "v.npy")
    exact = np.linalg.eigvalsh(matrix)
    ritz = np.linalg.eigvalsh(disk.tridiag)
    np.testing.assert_allclose(exact[-4:], OUTLIERS, rtol=1e-12)  # the matrix is what it should be
    assert np.max(np.abs(ritz[-4:] - exact[-4:])) < 1e-8 * exact[-1]
    assert abs(ritz[0] - exact[0]) < 1e-2  # the bulk's edge, converging more slowly


def test_disk_store_is_bit_identical_to_memory_when_the_vectors_fit_one_block(tmp_path, matrix, memory_run,
                                                                               monkeypatch):
    monkeypatch.setattr(hessflow.lanczos, "VECTOR_BLOCK_BYTES", DIM * STEPS * 8)
    disk = lanczos(matrix, num_steps=STEPS, seed=SEED, vectors_file=tmp_path / "v.npy")
    assert np.array_equal(disk.tridiag, memory_run.tridiag)
    assert np.array_equal(disk.vectors, memory_run.vectors)
    assert disk.orthogonality_loss == memory_run.orthogonality_loss


def test_both_streamed_gram_schmidt_passes_keep_orthogonality_on_a_nearly_invariant_krylov_space(tmp_path):
    # Four eigenvalues repeated 40 times and five clusters of 28 spread over 1e-8 (n = 300): the Krylov
    # space is invariant up to ~1e-8 after 9 steps, where one Gram-Schmidt pass is not enough.
    rng = np.random.default_rng(0)
    clusters = [c + 1e-8 * rng.uniform(-0.5, 0.5, 28) for c in (-0.5, 0.1, 1.0, 1.5, 2.5)]
    eigenvalues = np.concatenate([np.repeat([-1.0, 0.5, 2.0, 3.0], 40), *clusters])
    q = ortho_group.rvs(300, random_state=1)
    a = (q * eigenvalues) @ q.T
    a = (a + a.T) / 2

    def run(passes, name):
        return hessflow.lanczos._lanczos(
            lambda v: a @ v, 300, 40, 12, True, state_file=None, save_every=None, progress=None,
            breakdown_tol=1e-10, gram_schmidt_passes=passes, vectors_file=tmp_path / name,
        )

    one_pass, two_passes = run(1, "one.npy"), run(2, "two.npy")
    assert np.min(two_passes.beta) < 1e-7  # the near-invariance
    assert max_gram_departure(one_pass.vectors) > 1e-3
    assert max_gram_departure(two_passes.vectors) < 1e-12
    assert two_passes.orthogonality_loss < 1e-12 < 1e-3 < one_pass.orthogonality_loss


def test_vectors_file_is_a_fortran_ordered_float64_npy_of_all_steps(tmp_path, matrix):
    path = tmp_path / "v.npy"
    disk = lanczos(matrix, num_steps=STEPS, seed=SEED, vectors_file=path, keep_vectors=False)
    assert disk.vectors is None and path.exists()  # deleting it is the caller's job
    with open(path, "rb") as f:
        assert np.lib.format.read_magic(f) == (1, 0)
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
    assert (shape, fortran_order, dtype) == ((DIM, STEPS), True, np.float64)
    saved = np.load(path)
    assert max_gram_departure(saved) < 1e-12
    assert np.max(np.abs(saved.T @ matrix @ saved - disk.tridiag)) < 1e-12 * np.max(OUTLIERS)


def test_orthogonality_loss_on_disk_is_the_whole_gram_matrix_departure(tmp_path, matrix, monkeypatch):
    # Row blocks of 3 rows (VECTOR_BLOCK_BYTES // (8 m)), Gram blocks of 8 rows: both uneven.
    monkeypatch.setattr(hessflow.lanczos, "VECTOR_BLOCK_BYTES", 3 * STEPS * 8)
    monkeypatch.setattr(hessflow.lanczos, "GRAM_BLOCK_ENTRIES", 8 * STEPS)
    disk = lanczos(matrix, num_steps=STEPS, seed=SEED, vectors_file=tmp_path / "v.npy")
    whole = max_gram_departure(disk.vectors)
    assert 0 < whole < 1e-13
    assert abs(disk.orthogonality_loss - whole) < 1e-15


def test_interrupted_disk_run_resumes_in_place_bit_for_bit(tmp_path, matrix):
    uninterrupted = lanczos(matrix, num_steps=STEPS, seed=SEED, vectors_file=tmp_path / "clean.npy")
    state_file, vectors_file = tmp_path / "run.state.npz", tmp_path / "run.vectors.npy"
    interrupt(matrix, state_file=state_file, vectors_file=vectors_file)
    inode = os.stat(vectors_file).st_ino

    with np.load(state_file) as state:
        assert "vectors" not in state.files
        assert int(state["steps_done"]) == 20
        assert str(state["vectors_file"]) == str(vectors_file)
        assert str(state["vectors_sha256"]) == hessflow.lanczos._vector_sha256(uninterrupted.vectors[:, 19])
    assert state_file.stat().st_size < DIM * 20 * 8 / 4  # (next_vector alone is DIM * 8 bytes)

    rerun = FailingOperator(matrix)
    resumed = lanczos(rerun, DIM, STEPS, seed=SEED, state_file=state_file, save_every=5, vectors_file=vectors_file)
    assert resumed.resumed_from == 20 and resumed.discarded_state is None
    assert rerun.calls == resumed.num_matvecs == STEPS - 20
    assert np.array_equal(resumed.tridiag, uninterrupted.tridiag)
    assert np.array_equal(resumed.vectors, uninterrupted.vectors)
    assert resumed.orthogonality_loss == uninterrupted.orthogonality_loss
    assert os.stat(vectors_file).st_ino == inode  # reused, not copied


def test_memory_store_state_resumes_into_a_disk_run(tmp_path, matrix, memory_run):
    state_file = tmp_path / "run.state.npz"
    interrupt(matrix, state_file=state_file)
    with np.load(state_file) as state:
        assert "vectors" in state.files  # an in-memory run's state
    resumed = lanczos(matrix, num_steps=STEPS, seed=SEED, state_file=state_file, save_every=5,
                      vectors_file=tmp_path / "v.npy")
    assert resumed.resumed_from == 20 and resumed.num_matvecs == STEPS - 20
    assert isinstance(resumed.vectors, np.memmap)
    assert np.max(np.abs(resumed.tridiag - memory_run.tridiag)) < 1e-12 * np.max(OUTLIERS)
    assert max_gram_departure(resumed.vectors) < 1e-12


def test_c_ordered_vectors_field_of_a_state_streams_into_a_disk_run(tmp_path, matrix, memory_run):
    # _save_state writes Fortran order; a C-ordered field (written by hand) is copied by row blocks.
    state_file = tmp_path / "run.state.npz"
    interrupt(matrix, state_file=state_file)
    with np.load(state_file) as state:
        fields = {name: state[name] for name in state.files}
    fields["vectors"] = np.ascontiguousarray(fields["vectors"])
    with open(state_file, "wb") as f:
        np.savez(f, **fields)
    resumed = lanczos(matrix, num_steps=STEPS, seed=SEED, state_file=state_file, save_every=5,
                      vectors_file=tmp_path / "v.npy")
    assert resumed.resumed_from == 20
    assert np.array_equal(resumed.vectors[:, :20], memory_run.vectors[:, :20])
    assert np.max(np.abs(resumed.tridiag - memory_run.tridiag)) < 1e-12 * np.max(OUTLIERS)


def test_disk_store_state_resumes_into_a_memory_run(tmp_path, matrix, memory_run):
    state_file, vectors_file = tmp_path / "run.state.npz", tmp_path / "run.vectors.npy"
    interrupt(matrix, state_file=state_file, vectors_file=vectors_file)
    resumed = lanczos(matrix, num_steps=STEPS, seed=SEED, state_file=state_file, save_every=5)
    assert resumed.resumed_from == 20 and resumed.num_matvecs == STEPS - 20
    assert not isinstance(resumed.vectors, np.memmap)
    assert np.max(np.abs(resumed.tridiag - memory_run.tridiag)) < 1e-12 * np.max(OUTLIERS)
    assert max_gram_departure(resumed.vectors) < 1e-12
    with np.load(state_file) as state:
        assert "vectors" in state.files  # its saves are in-memory states again


def test_disk_state_resumes_into_another_vectors_file_by_copying_the_named_one(tmp_path, matrix):
    uninterrupted = lanczos(matrix, num_steps=STEPS, seed=SEED, vectors_file=tmp_path / "clean.npy")
    state_file, old_file, new_file = tmp_path / "run.state.npz", tmp_path / "old.npy", tmp_path / "new.npy"
    interrupt(matrix, state_file=state_file, vectors_file=old_file)
    resumed = lanczos(matrix, num_steps=STEPS, seed=SEED, state_file=state_file, save_every=5,
                      vectors_file=new_file)
    assert resumed.resumed_from == 20
    assert np.array_equal(resumed.tridiag, uninterrupted.tridiag)
    with np.load(state_file) as state:
        assert str(state["vectors_file"]) == str(new_file)


@pytest.mark.parametrize("damage", ["deleted", "another run's file"])
def test_disk_state_without_its_vectors_is_discarded_naming_the_file(tmp_path, matrix, damage):
    uninterrupted = lanczos(matrix, num_steps=STEPS, seed=SEED, vectors_file=tmp_path / "clean.npy")
    state_file, vectors_file = tmp_path / "run.state.npz", tmp_path / "run.vectors.npy"
    interrupt(matrix, state_file=state_file, vectors_file=vectors_file)
    if damage == "deleted":
        vectors_file.unlink()
    else:  # the same shape, other vectors
        lanczos(matrix, num_steps=STEPS, seed=(9, 9), vectors_file=tmp_path / "other.npy")
        shutil.copyfile(tmp_path / "other.npy", vectors_file)
    messages = []
    restarted = lanczos(matrix, num_steps=STEPS, seed=SEED, state_file=state_file, save_every=5,
                        vectors_file=vectors_file, log=messages.append)
    assert restarted.resumed_from is None and restarted.num_matvecs == STEPS
    assert "run.vectors.npy" in restarted.discarded_state
    assert ("is missing" if damage == "deleted" else "holds other vectors") in restarted.discarded_state
    assert len(messages) == 1 and "run.vectors.npy" in messages[0] and "starting fresh" in messages[0]
    assert np.array_equal(restarted.tridiag, uninterrupted.tridiag)


def test_disk_state_without_its_vectors_is_discarded_by_a_memory_run(tmp_path, matrix, memory_run):
    state_file, vectors_file = tmp_path / "run.state.npz", tmp_path / "run.vectors.npy"
    interrupt(matrix, state_file=state_file, vectors_file=vectors_file)
    vectors_file.unlink()
    with pytest.warns(RuntimeWarning, match=r"run\.vectors\.npy' is missing; starting fresh"):
        restarted = lanczos(matrix, num_steps=STEPS, seed=SEED, state_file=state_file, save_every=5)
    assert restarted.resumed_from is None
    assert np.array_equal(restarted.tridiag, memory_run.tridiag)


@pytest.mark.parametrize("name", ["vectors.dat", "vectors.npz", "vectors"])
def test_vectors_file_without_npy_suffix_is_refused_naming_it(tmp_path, matrix, name):
    with pytest.raises(ValueError, match=f"must name a .npy file; got '.*{name}'"):
        lanczos(matrix, num_steps=5, vectors_file=tmp_path / name)
    assert not (tmp_path / name).exists()


def test_vectors_file_equal_to_the_state_file_is_refused_naming_it(tmp_path, matrix):
    path = tmp_path / "run.npy"
    with pytest.raises(ValueError, match=r"vectors_file '.*run\.npy' is the state file"):
        lanczos(matrix, num_steps=5, state_file=path, save_every=2, vectors_file=tmp_path / "." / "run.npy")


def test_disk_run_peak_memory_stays_far_below_the_vectors_size(tmp_path, monkeypatch):
    dim, steps = 200_000, 30
    vectors_bytes = dim * steps * 8  # 48 MB
    monkeypatch.setattr(hessflow.lanczos, "VECTOR_BLOCK_BYTES", 4 * 2**20)  # 2 columns a block
    d = np.linspace(1.0, 2.0, dim)

    def peak_bytes(**store):
        tracemalloc.start()
        try:
            result = lanczos(lambda v: d * v, dim, steps, seed=0, keep_vectors=False, **store)
            return tracemalloc.get_traced_memory()[1], result
        finally:
            tracemalloc.stop()

    disk_peak, disk = peak_bytes(vectors_file=tmp_path / "v.npy")
    memory_peak, memory = peak_bytes()
    assert disk_peak < 15e6 < vectors_bytes <= memory_peak
    np.testing.assert_allclose(disk.alpha, memory.alpha, rtol=1e-12, atol=0)
    assert disk.orthogonality_loss < 1e-13
