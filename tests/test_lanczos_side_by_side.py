"""lanczos_side_by_side: several Lanczos runs in lockstep, one matmat per round, each run exactly a lanczos run."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.sparse.linalg import aslinearoperator

import hessflow.lanczos
from hessflow.lanczos import lanczos, lanczos_side_by_side, start_vector


def symmetric_with_spectrum(eigenvalues, seed=0):
    """``(Q diag(eigenvalues) Q^T, Q)`` with a random orthogonal Q, the matrix exactly symmetrized."""
    eigenvalues = np.asarray(eigenvalues, dtype=np.float64)
    n = eigenvalues.size
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    a = (q * eigenvalues) @ q.T
    return (a + a.T) / 2, q


def random_symmetric(n, seed=0):
    g = np.random.default_rng(seed).standard_normal((n, n))
    return (g + g.T) / np.sqrt(2 * n)


def column_by_column(a):
    """A matmat whose column c is ``a @ V[:, c]``: the product a single run's matvec computes, bit for bit."""
    return lambda block: np.stack([a @ block[:, c] for c in range(block.shape[1])], axis=1)


class RecordingMatmat:
    """Column-exact ``V -> A V`` that records each call's block and can fail on a given call."""

    def __init__(self, a, fail_on_call=None):
        self.multiply = column_by_column(a)
        self.blocks = []
        self.fail_on_call = fail_on_call

    @property
    def columns(self):
        return [block.shape[1] for block in self.blocks]

    def __call__(self, block):
        self.blocks.append(block)
        if len(self.blocks) == self.fail_on_call:
            raise KeyboardInterrupt("simulated preemption")
        return self.multiply(block)


class KilledMatvec:
    """``v -> A v`` for a single lanczos run, raising KeyboardInterrupt on a given call."""

    def __init__(self, a, fail_on_call):
        self.a = a
        self.calls = 0
        self.fail_on_call = fail_on_call

    def __call__(self, v):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise KeyboardInterrupt("simulated preemption")
        return self.a @ v


def assert_same_numbers(actual, expected):
    """Bit-identical T, vectors, residual and diagnostics (the counts of a resumed run differ)."""
    assert np.array_equal(actual.alpha, expected.alpha)
    assert np.array_equal(actual.beta, expected.beta)
    assert (actual.vectors is None) == (expected.vectors is None)
    if expected.vectors is not None:
        assert np.array_equal(actual.vectors, expected.vectors)
    assert actual.residual_norm == expected.residual_norm
    assert actual.stopped_early == expected.stopped_early
    assert actual.orthogonality_loss == expected.orthogonality_loss
    assert actual.min_beta == expected.min_beta


def assert_same_run(actual, expected):
    """Bit-identical results: T, vectors, residual, diagnostics and counts."""
    assert np.array_equal(actual.alpha, expected.alpha)
    assert np.array_equal(actual.beta, expected.beta)
    assert (actual.vectors is None) == (expected.vectors is None)
    if expected.vectors is not None:
        assert np.array_equal(actual.vectors, expected.vectors)
    assert actual.residual_norm == expected.residual_norm
    assert actual.stopped_early == expected.stopped_early
    assert actual.num_matvecs == expected.num_matvecs
    assert actual.orthogonality_loss == expected.orthogonality_loss
    assert actual.min_beta == expected.min_beta


def invariant_start(q, columns):
    """A unit start vector in the span of the eigenvectors ``q[:, columns]``: Lanczos from it breaks
    down after ``len(columns)`` steps (the Krylov space is that span)."""
    v = q[:, columns].sum(axis=1)
    return v / np.linalg.norm(v)


SEEDS = [(7, 0), (7, 1), (7, 2), (7, 3)]


# -- the same runs as separate lanczos calls --------------------------------------------------------
def test_column_exact_matmat_gives_runs_bit_identical_to_separate_lanczos_runs():
    a = random_symmetric(80, seed=1)
    together = lanczos_side_by_side(column_by_column(a), 80, 30, SEEDS)
    assert len(together) == len(SEEDS)
    for seed, result in zip(SEEDS, together):
        assert_same_run(result, lanczos(lambda v: a @ v, 80, 30, seed))
        np.testing.assert_array_equal(result.vectors[:, 0], start_vector(80, seed))
    assert not np.array_equal(together[0].alpha, together[1].alpha)  # independent draws


@pytest.mark.parametrize("form", ["gemm function", "matrix", "LinearOperator"])
def test_blas3_matmat_agrees_with_separate_runs_to_rounding_and_finds_the_extreme_eigenvalues(form):
    # Outliers 10, 8, 6 above a bulk in [-1, 1] (as in test_lanczos.py): a @ V rounds unlike a @ v,
    # so the runs agree with the separate ones to 1e-12, not bit for bit.
    rng = np.random.default_rng(3)
    a, _ = symmetric_with_spectrum(np.concatenate([[10.0, 8.0, 6.0], rng.uniform(-1, 1, 197)]), seed=4)
    operator = {"gemm function": lambda block: a @ block, "matrix": a, "LinearOperator": aslinearoperator(a)}[form]
    together = lanczos_side_by_side(operator, 200 if form == "gemm function" else None, 40, SEEDS[:3])
    exact = np.linalg.eigvalsh(a)
    for seed, result in zip(SEEDS, together):
        separate = lanczos(a, num_steps=40, seed=seed)
        np.testing.assert_allclose(result.alpha, separate.alpha, rtol=0, atol=1e-12)
        np.testing.assert_allclose(result.beta, separate.beta, rtol=0, atol=1e-12)
        np.testing.assert_allclose(result.vectors, separate.vectors, rtol=0, atol=1e-12)
        ritz_values = np.linalg.eigvalsh(result.tridiag)
        assert ritz_values[-1] == pytest.approx(exact[-1], abs=1e-8)
        assert ritz_values[-2] == pytest.approx(exact[-2], abs=1e-8)
        assert result.orthogonality_loss < 1e-13


# -- rounds: one matmat each, the unfinished runs' columns ---------------------------------------------
def test_one_matmat_call_per_round_with_one_column_per_unfinished_run():
    # Run 1 starts in a 2-dimensional invariant subspace (breakdown after step 2), run 2 in a
    # 5-dimensional one (after step 5); runs 0 and 3 do all 12 steps.
    a, q = symmetric_with_spectrum(np.arange(1.0, 61.0), seed=5)
    starts = [None, invariant_start(q, [0, 1]), invariant_start(q, [3, 10, 20, 30, 40]), None]
    matmat = RecordingMatmat(a)
    together = lanczos_side_by_side(matmat, 60, 12, SEEDS, starts=starts)
    assert matmat.columns == [4, 4, 3, 3, 3] + [2] * 7  # 12 rounds, one call each
    assert [r.num_steps for r in together] == [12, 2, 5, 12]
    assert [r.stopped_early for r in together] == [False, True, True, False]
    assert [r.num_matvecs for r in together] == [12, 2, 5, 12]
    for seed, start, result in zip(SEEDS, starts, together):
        assert_same_run(result, lanczos(lambda v: a @ v, 60, 12, seed, start=start))
    # Each call's block is its own float64 array in Fortran order (every column contiguous), in run order.
    assert all(b.dtype == np.float64 and b.flags.f_contiguous and b.flags.owndata for b in matmat.blocks)
    assert len({id(b) for b in matmat.blocks}) == len(matmat.blocks)
    np.testing.assert_array_equal(matmat.blocks[0][:, 1], starts[1])
    np.testing.assert_array_equal(matmat.blocks[-1][:, 1], together[3].vectors[:, -1])


def test_the_matmat_may_modify_its_block_and_return_it():
    a = random_symmetric(30, seed=6)

    def in_place(block):  # overwrites the block with the product and returns it
        block[...] = column_by_column(a)(block)
        return block

    for seed, result in zip(SEEDS, lanczos_side_by_side(in_place, 30, 10, SEEDS)):
        assert_same_run(result, lanczos(lambda v: a @ v, 30, 10, seed))


def test_progress_receives_run_steps_done_and_num_steps_for_each_step_of_each_run():
    a, q = symmetric_with_spectrum(np.arange(1.0, 21.0), seed=7)
    calls = []
    lanczos_side_by_side(
        column_by_column(a), 20, 5, SEEDS[:3], starts=[None, invariant_start(q, [2, 9]), None],
        progress=lambda *args: calls.append(args),
    )
    # Round by round, in run order; run 1 stops after its step 2.
    expected = [(run, step, 5) for step in range(1, 6) for run in range(3) if run != 1 or step <= 2]
    assert calls == expected


# -- state files: resume, each run on its own ------------------------------------------------------
def test_interrupted_runs_resume_from_their_state_files_bit_for_bit(tmp_path):
    a = random_symmetric(50, seed=8)
    state_files = [tmp_path / f"draw_{d}.state.npz" for d in range(3)]
    # Killed in round 11 (step 11 of every run); the last checkpoints were after step 8.
    with pytest.raises(KeyboardInterrupt):
        lanczos_side_by_side(RecordingMatmat(a, fail_on_call=11), 50, 20, SEEDS[:3], state_files=state_files,
                             save_every=4)
    for path in state_files:
        with np.load(path) as state:
            assert int(state["steps_done"]) == 8
    rerun = RecordingMatmat(a)
    resumed = lanczos_side_by_side(rerun, 50, 20, SEEDS[:3], state_files=state_files, save_every=4)
    assert rerun.columns == [3] * 12
    assert [r.resumed_from for r in resumed] == [8, 8, 8]
    assert [r.num_matvecs for r in resumed] == [12, 12, 12]
    uninterrupted = lanczos_side_by_side(column_by_column(a), 50, 20, SEEDS[:3])
    for seed, result, clean in zip(SEEDS, resumed, uninterrupted):
        assert_same_numbers(result, clean)
        assert_same_numbers(result, lanczos(lambda v: a @ v, 50, 20, seed))


def test_runs_resumed_at_different_steps_advance_together_and_finish_in_turn(tmp_path):
    # Run 0 has a state at step 10, run 1 a finished one (16 of 16), run 2 a state file not yet
    # written, run 3 none at all: in round t, run 0 does step 11 + t, runs 2 and 3 step 1 + t.
    a = random_symmetric(40, seed=9)
    state_files = [tmp_path / "r0.state.npz", tmp_path / "r1.state.npz", tmp_path / "r2.state.npz", None]
    with pytest.raises(KeyboardInterrupt):
        lanczos(KilledMatvec(a, fail_on_call=12), 40, 16, SEEDS[0], state_file=state_files[0], save_every=5)
    lanczos(a, num_steps=16, seed=SEEDS[1], state_file=state_files[1], save_every=4)
    matmat = RecordingMatmat(a)
    calls = []
    together = lanczos_side_by_side(matmat, 40, 16, SEEDS, state_files=state_files, save_every=5,
                                    progress=lambda *args: calls.append(args))
    assert matmat.columns == [3] * 6 + [2] * 10
    assert calls[:3] == [(0, 11, 16), (2, 1, 16), (3, 1, 16)]
    assert calls[15:18] == [(0, 16, 16), (2, 6, 16), (3, 6, 16)]
    assert [r.resumed_from for r in together] == [10, 16, None, None]
    assert [r.num_matvecs for r in together] == [6, 0, 16, 16]
    for seed, result in zip(SEEDS, together):
        assert_same_numbers(result, lanczos(lambda v: a @ v, 40, 16, seed))


def test_a_foreign_state_is_discarded_with_the_message_lanczos_gives(tmp_path):
    a = random_symmetric(20, seed=10)
    state_files = [tmp_path / "d0.state.npz", tmp_path / "d1.state.npz"]
    lanczos(a, num_steps=6, seed=SEEDS[1], state_file=state_files[1], save_every=2, operator_identity={"loss": "mse"})
    messages = []
    together = lanczos_side_by_side(column_by_column(a), 20, 6, SEEDS[:2], state_files=state_files, save_every=2,
                                    operator_identity={"loss": "hinge"}, log=messages.append)
    assert messages == [
        f"discarding the Lanczos state {str(state_files[1])!r}: it belongs to another run or operator: "
        'operator.loss: "mse" in the state file, "hinge" now; starting fresh'
    ]
    assert together[0].discarded_state is None and together[1].resumed_from is None
    assert 'operator.loss: "mse"' in together[1].discarded_state
    assert_same_run(together[1], lanczos(lambda v: a @ v, 20, 6, SEEDS[1]))
    # Without a log: a RuntimeWarning attributed to the caller's line, as lanczos does.
    state_files[1].unlink()
    lanczos(a, num_steps=6, seed=SEEDS[1], state_file=state_files[1], save_every=2, operator_identity={"loss": "mse"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lanczos_side_by_side(a, num_steps=6, seeds=SEEDS[:2], state_files=state_files, save_every=2,
                             operator_identity={"loss": "hinge"})
    assert [w.category for w in caught] == [RuntimeWarning] and caught[0].filename == __file__


# -- a disk vector store for one run ------------------------------------------------------------------
def test_a_disk_vector_store_for_one_run_agrees_with_the_in_memory_runs(tmp_path, monkeypatch):
    a = random_symmetric(60, seed=11)
    monkeypatch.setattr(hessflow.lanczos, "VECTOR_BLOCK_BYTES", 7 * 25 * 8)  # blocks of a few rows: streamed
    path = tmp_path / "draw_1.npy"
    disk = lanczos_side_by_side(column_by_column(a), 60, 25, SEEDS[:3], vectors_files=[None, path, None])
    memory = lanczos_side_by_side(column_by_column(a), 60, 25, SEEDS[:3])
    assert isinstance(disk[1].vectors, np.memmap) and path.exists()
    np.testing.assert_array_equal(np.load(path), disk[1].vectors)
    np.testing.assert_allclose(disk[1].alpha, memory[1].alpha, rtol=0, atol=1e-12)
    np.testing.assert_allclose(disk[1].beta, memory[1].beta, rtol=0, atol=1e-12)
    np.testing.assert_allclose(disk[1].vectors, memory[1].vectors, rtol=0, atol=1e-12)
    assert disk[1].orthogonality_loss < 1e-13
    for run in (0, 2):
        assert_same_run(disk[run], memory[run])
    # And exactly the separate disk run.
    separate = lanczos(lambda v: a @ v, 60, 25, SEEDS[1], vectors_file=tmp_path / "separate.npy")
    assert_same_run(disk[1], separate)


# -- invalid arguments and operator outputs ------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"seeds": ()}, ValueError, "no runs"),
        ({"seeds": SEEDS[:3], "starts": [None, None]}, ValueError, "one entry per run each; got 3 seeds, 2 starts"),
        ({"seeds": SEEDS[:2], "vectors_files": [None]}, ValueError, "got 2 seeds, 1 vectors_files"),
        ({"seeds": SEEDS[:2], "state_files": ["a.npz"] * 3, "save_every": 2}, ValueError, "2 seeds, 3 state_files"),
        ({"seeds": 5}, TypeError, "seeds must be a sequence with one entry per run"),
        ({"seeds": SEEDS[:2], "state_files": "a.npz", "save_every": 2}, TypeError, "state_files must be a sequence"),
        ({"seeds": [1, None]}, ValueError, "run 1 has neither a seed nor a start vector"),
        ({"seeds": [1, -2]}, ValueError, "run 1: seed entries must be non-negative"),
        ({"seeds": [1, 2], "starts": [None, np.ones(10)]}, ValueError, "run 1: start must be a unit vector"),
        ({"seeds": [1, 2], "save_every": 3}, ValueError, "state_files and save_every go together"),
        ({"seeds": [1, 2], "state_files": [None, "b.npz"]}, ValueError, "state_files and save_every go together"),
        ({"seeds": [1, 2], "num_steps": 11}, ValueError, r"num_steps \(11\) must not exceed dim \(10\)"),
    ],
)
def test_invalid_arguments_are_refused_before_the_first_product(tmp_path, kwargs, error, message):
    matmat = RecordingMatmat(np.eye(10))
    kwargs = {"num_steps": 4} | kwargs
    with pytest.raises(error, match=message):
        lanczos_side_by_side(matmat, 10, **kwargs)
    assert matmat.blocks == []


def test_no_file_is_touched_when_a_later_run_is_invalid(tmp_path):
    matmat = RecordingMatmat(np.eye(10))
    with pytest.raises(ValueError, match="run 2: start must have shape"):
        lanczos_side_by_side(matmat, 10, 4, [1, 2, 3], vectors_files=[tmp_path / "v0.npy", None, None],
                             starts=[None, None, np.ones(3) / np.sqrt(3)])
    assert matmat.blocks == [] and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["state", "vectors", "state and vectors"])
def test_a_file_shared_by_two_runs_is_refused(tmp_path, kind):
    shared = tmp_path / "shared.npy"
    files = {
        "state": {"state_files": [shared, tmp_path / "b.npz", shared], "save_every": 2},
        "vectors": {"vectors_files": [None, shared, shared]},
        "state and vectors": {"state_files": [shared, None, None], "save_every": 2,
                              "vectors_files": [None, None, tmp_path / "x" / ".." / "shared.npy"]},
    }[kind]
    first, second = {"state": (0, 2), "vectors": (1, 2), "state and vectors": (0, 2)}[kind]
    with pytest.raises(ValueError, match=rf"run {first}'s .* and run {second}'s .* are the same file"):
        lanczos_side_by_side(np.eye(10), num_steps=4, seeds=[1, 2, 3], **files)
    assert list(tmp_path.iterdir()) == []


def test_a_wrongly_shaped_matmat_output_is_refused_naming_the_runs_and_steps():
    with pytest.raises(ValueError, match=r"shape \(10, 1\) for the Lanczos vectors of run 0 at Lanczos step 1, "
                                         r"run 1 at Lanczos step 1; expected \(10, 2\)"):
        lanczos_side_by_side(lambda block: block[:, :1], 10, 4, [1, 2])


def test_a_matmat_output_that_is_not_float64_is_refused_naming_the_runs_and_steps():
    with pytest.raises(TypeError, match=r"dtype float32 for the Lanczos vectors of run 0 at Lanczos step 1, "
                                        "run 1 at Lanczos step 1; expected float64"):
        lanczos_side_by_side(lambda block: block.astype(np.float32), 10, 4, [1, 2])


def test_a_non_finite_matmat_output_names_the_run_and_its_step(tmp_path):
    # Run 0 resumed at step 3, run 1 fresh: the NaN in run 1's column of round 2 is at its step 2.
    a = random_symmetric(10, seed=12)
    state = tmp_path / "r0.state.npz"
    with pytest.raises(KeyboardInterrupt):
        lanczos(KilledMatvec(a, fail_on_call=4), 10, 6, 1, state_file=state, save_every=3)
    calls = []

    def nan_in_run_1_of_round_2(block):
        calls.append(block.shape[1])
        out = a @ block
        if len(calls) == 2:
            out[4, 1] = np.nan
        return out

    with pytest.raises(FloatingPointError, match=r"non-finite values for run 1 at Lanczos step 2; check"):
        lanczos_side_by_side(nan_in_run_1_of_round_2, 10, 6, [1, 2], state_files=[state, None], save_every=3)
