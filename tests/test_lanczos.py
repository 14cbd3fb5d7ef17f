"""Lanczos with full reorthogonalization, checked against numpy.linalg.eigvalsh on explicit matrices."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import hessflow.lanczos
from hessflow.lanczos import NEAR_BREAKDOWN_TOL, _lanczos, health_warnings, lanczos, start_vector


def symmetric_with_spectrum(eigenvalues, seed=0):
    """Dense Q diag(eigenvalues) Q^T with a random orthogonal Q, exactly symmetrized."""
    eigenvalues = np.asarray(eigenvalues, dtype=np.float64)
    n = eigenvalues.size
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    a = (q * eigenvalues) @ q.T
    return (a + a.T) / 2


def random_symmetric(n, seed=0):
    g = np.random.default_rng(seed).standard_normal((n, n))
    return (g + g.T) / np.sqrt(2 * n)


def orthogonality_loss(vectors):
    """||V^T V - I||_2."""
    m = vectors.shape[1]
    return np.linalg.norm(vectors.T @ vectors - np.eye(m), 2)


def clustered_matrix(seed=0):
    """n = 300: four eigenvalues repeated 40 times each, five clusters of 28 with spread 1e-8.

    Seen from a start vector, the Krylov space is invariant up to ~1e-8 after
    nine steps: b_9 ~ 1e-8 ||A||, which is what breaks one Gram-Schmidt pass.
    """
    rng = np.random.default_rng(seed)
    repeated = np.repeat([-1.0, 0.5, 2.0, 3.0], 40)
    clusters = np.concatenate([c + 1e-8 * rng.uniform(-0.5, 0.5, 28) for c in (-0.5, 0.1, 1.0, 1.5, 2.5)])
    return symmetric_with_spectrum(np.concatenate([repeated, clusters]), seed=seed + 1)


class CountingOperator:
    """``v -> A v`` that counts its calls and can fail on a given call."""

    def __init__(self, a, fail_on_call=None):
        self.a = a
        self.calls = 0
        self.fail_on_call = fail_on_call

    def __call__(self, v):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise KeyboardInterrupt("simulated preemption")
        return self.a @ v


@pytest.mark.parametrize("n, seed", [(50, 0), (120, 1), (200, 2)])
def test_full_run_recovers_every_eigenvalue(n, seed):
    a = random_symmetric(n, seed)
    result = lanczos(lambda v: a @ v, n, n, seed=seed)
    exact = np.linalg.eigvalsh(a)
    ritz_values = np.linalg.eigvalsh(result.tridiag)
    assert np.max(np.abs(ritz_values - exact)) <= 1e-10 * np.linalg.norm(a, 2)


def test_extreme_ritz_values_converge_before_m_equals_n():
    # Top eigenvalues 10, 8, 6 well separated from a bulk in [-1, 1].
    rng = np.random.default_rng(3)
    spectrum = np.concatenate([[10.0, 8.0, 6.0], rng.uniform(-1, 1, 397)])
    a = symmetric_with_spectrum(spectrum, seed=4)
    result = lanczos(lambda v: a @ v, 400, 40, seed=5)
    ritz_values = np.linalg.eigvalsh(result.tridiag)
    exact = np.linalg.eigvalsh(a)
    assert ritz_values[-1] == pytest.approx(exact[-1], abs=1e-8)
    assert ritz_values[-2] == pytest.approx(exact[-2], abs=1e-8)
    assert ritz_values[0] == pytest.approx(exact[0], abs=1e-2)  # the bulk edge converges more slowly


def test_tridiag_is_symmetric_tridiagonal_with_positive_off_diagonal():
    a = random_symmetric(60, seed=6)
    result = lanczos(lambda v: a @ v, 60, 25, seed=7)
    t = result.tridiag
    assert t.shape == (25, 25) and t.dtype == np.float64
    np.testing.assert_array_equal(t, t.T)
    np.testing.assert_array_equal(np.triu(t, 2), 0.0)
    np.testing.assert_array_equal(np.diag(t), result.alpha)
    np.testing.assert_array_equal(np.diag(t, 1), result.beta)
    assert np.all(result.beta > 0)


def test_tridiag_is_projection_of_operator_onto_lanczos_vectors():
    a = random_symmetric(80, seed=8)
    result = lanczos(lambda v: a @ v, 80, 30, seed=9)
    v = result.vectors
    assert v.shape == (80, 30) and v.dtype == np.float64
    np.testing.assert_allclose(v.T @ a @ v, result.tridiag, atol=1e-12)
    np.testing.assert_allclose(v[:, 0], start_vector(80, 9), rtol=0, atol=0)


def test_lanczos_vectors_are_orthonormal():
    a = random_symmetric(150, seed=10)
    result = lanczos(lambda v: a @ v, 150, 100, seed=11)
    assert orthogonality_loss(result.vectors) < 1e-10


def test_two_gram_schmidt_passes_keep_orthogonality_on_clustered_spectrum():
    a = clustered_matrix()
    result = lanczos(lambda v: a @ v, 300, 40, seed=12)
    assert not result.stopped_early
    assert orthogonality_loss(result.vectors) < 1e-10


def test_one_gram_schmidt_pass_loses_orthogonality_on_clustered_spectrum():
    # The same run with a single classical Gram-Schmidt pass: rounding of order
    # eps ||A|| divided by b_9 ~ 1e-8 destroys orthogonality. This is why the
    # public lanczos() makes two passes.
    a = clustered_matrix()
    one_pass = _lanczos(
        lambda v: a @ v, 300, 40, 12, True,
        state_file=None, save_every=None, progress=None, breakdown_tol=1e-10, gram_schmidt_passes=1,
    )
    two_pass = lanczos(lambda v: a @ v, 300, 40, seed=12)
    assert np.min(two_pass.beta) < 1e-7  # the near-invariance that triggers the failure
    assert orthogonality_loss(one_pass.vectors) > 1e-3
    assert orthogonality_loss(two_pass.vectors) < 1e-10


def test_exactly_one_matvec_per_step():
    operator = CountingOperator(random_symmetric(70, seed=13))
    result = lanczos(operator, 70, 33, seed=14)
    assert operator.calls == 33
    assert result.num_matvecs == 33


def test_repeated_eigenvalues_stop_early_with_their_values():
    # Three distinct eigenvalues: the Krylov space from any start vector has
    # dimension 3, so b_3 = 0 and T is 3 x 3 with exactly those eigenvalues.
    a = symmetric_with_spectrum(np.repeat([-1.0, 0.5, 2.0], 20), seed=15)
    operator = CountingOperator(a)
    result = lanczos(operator, 60, 10, seed=16)
    assert result.stopped_early
    assert result.tridiag.shape == (3, 3)
    assert operator.calls == 3 and result.num_matvecs == 3
    np.testing.assert_allclose(np.linalg.eigvalsh(result.tridiag), [-1.0, 0.5, 2.0], atol=1e-12)
    assert result.vectors.shape == (60, 3)


def test_zero_operator_stops_after_one_step():
    result = lanczos(lambda v: np.zeros_like(v), 10, 5, seed=0)
    assert result.stopped_early
    np.testing.assert_array_equal(result.tridiag, [[0.0]])


def test_full_length_run_is_not_early_stop():
    a = random_symmetric(20, seed=17)
    result = lanczos(lambda v: a @ v, 20, 20, seed=18)
    assert not result.stopped_early
    assert result.tridiag.shape == (20, 20)
    assert result.residual_norm < 1e-10  # the Krylov space is all of R^20


def test_residual_norm_bounds_ritz_value_errors():
    # |theta_i - lambda| <= b_m |s_i[-1]| for some eigenvalue lambda of A.
    a = random_symmetric(100, seed=19)
    result = lanczos(lambda v: a @ v, 100, 30, seed=20)
    theta, s = np.linalg.eigh(result.tridiag)
    exact = np.linalg.eigvalsh(a)
    distance_to_spectrum = np.min(np.abs(theta[:, None] - exact[None, :]), axis=1)
    assert np.all(distance_to_spectrum <= result.residual_norm * np.abs(s[-1, :]) + 1e-12)


def test_keep_vectors_false_drops_only_the_vectors():
    a = random_symmetric(40, seed=21)
    with_vectors = lanczos(lambda v: a @ v, 40, 15, seed=22)
    without = lanczos(lambda v: a @ v, 40, 15, seed=22, keep_vectors=False)
    assert without.vectors is None
    np.testing.assert_array_equal(without.tridiag, with_vectors.tridiag)


def test_resume_after_kill_is_bit_identical(tmp_path):
    a = random_symmetric(90, seed=23)
    state_file = tmp_path / "lanczos_0.state.npz"
    uninterrupted = lanczos(lambda v: a @ v, 90, 30, seed=(1, 2, 3))

    # Killed during step 17; the last checkpoint was after step 15.
    killed = CountingOperator(a, fail_on_call=17)
    with pytest.raises(KeyboardInterrupt):
        lanczos(killed, 90, 30, seed=(1, 2, 3), state_file=state_file, save_every=5)
    assert state_file.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left

    rerun = CountingOperator(a)
    resumed = lanczos(rerun, 90, 30, seed=(1, 2, 3), state_file=state_file, save_every=5)
    assert resumed.resumed_from == 15
    assert rerun.calls == 15 and resumed.num_matvecs == 15
    assert np.array_equal(resumed.tridiag, uninterrupted.tridiag)
    assert np.array_equal(resumed.vectors, uninterrupted.vectors)
    assert resumed.residual_norm == uninterrupted.residual_norm
    assert state_file.exists()  # removing it is the caller's job


def test_state_file_keeps_its_given_name(tmp_path):
    a = random_symmetric(30, seed=24)
    state_file = tmp_path / "draw_3.state.npz"
    lanczos(lambda v: a @ v, 30, 10, seed=0, state_file=state_file, save_every=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["draw_3.state.npz"]
    with np.load(state_file) as state:
        assert int(state["steps_done"]) == 10  # saved at 4, 8 and the last step


def test_a_finished_runs_state_gives_its_result_with_no_product(tmp_path):
    a = random_symmetric(30, seed=25)
    state_file = tmp_path / "state.npz"
    first = lanczos(lambda v: a @ v, 30, 10, seed=0, state_file=state_file, save_every=4)
    rerun = CountingOperator(a)
    again = lanczos(rerun, 30, 10, seed=0, state_file=state_file, save_every=4)
    assert rerun.calls == 0 and again.resumed_from == 10
    np.testing.assert_array_equal(again.tridiag, first.tridiag)
    np.testing.assert_array_equal(again.vectors, first.vectors)


@pytest.mark.parametrize(
    "field, changed",
    [
        ("dim", {"dim": 31}),
        ("num_steps", {"num_steps": 12}),
        ("seed", {"seed": (1, 2, 4)}),
        ("breakdown_tol", {"breakdown_tol": 1e-8}),
    ],
)
def test_state_file_of_another_run_is_discarded_naming_the_field(tmp_path, field, changed):
    state_file = tmp_path / "run.state.npz"
    a = random_symmetric(31, seed=25)
    lanczos(lambda v: a[:30, :30] @ v, 30, 10, seed=(1, 2, 3), state_file=state_file, save_every=2)
    args = {"dim": 30, "num_steps": 10, "seed": (1, 2, 3), "breakdown_tol": 1e-10} | changed
    n = args.pop("dim")
    messages = []
    rerun = lanczos(lambda v: a[:n, :n] @ v, n, state_file=state_file, save_every=2, log=messages.append, **args)
    clean = lanczos(lambda v: a[:n, :n] @ v, n, **args)
    assert rerun.resumed_from is None and rerun.num_matvecs == rerun.num_steps
    assert np.array_equal(rerun.tridiag, clean.tridiag)
    assert len(messages) == 1 and "run.state.npz" in messages[0] and "starting fresh" in messages[0]
    assert f"{field}: " in messages[0] and field in rerun.discarded_state


def shifted_operator(a, shift):
    return lambda v: a @ v + shift * v


def test_state_of_another_operator_restarts_naming_the_key_and_gives_the_clean_run(tmp_path):
    # The same sizes and seed, another matrix (a + 0.3 I, as a changed batch size changes the
    # Hessian): resuming would mix 8 vectors of the old Krylov space into the new run.
    a = random_symmetric(40, seed=30)
    state_file = tmp_path / "draw.state.npz"
    old = {"weights_sha256": "aa", "hessian": {"batch_size": 25, "dtype": "float64"}}
    new = {"weights_sha256": "aa", "hessian": {"batch_size": 50, "dtype": "float64"}}
    killed = CountingOperator(a, fail_on_call=10)
    with pytest.raises(KeyboardInterrupt):
        lanczos(killed, 40, 12, seed=7, state_file=state_file, save_every=4, operator_identity=old)
    with np.load(state_file) as state:
        assert int(state["steps_done"]) == 8

    stale_copy = tmp_path / "copy.state.npz"
    shutil.copyfile(state_file, stale_copy)

    messages = []
    restarted = lanczos(shifted_operator(a, 0.3), 40, 12, seed=7, state_file=state_file, save_every=4,
                        operator_identity=new, log=messages.append)
    clean = lanczos(shifted_operator(a, 0.3), 40, 12, seed=7)
    # What resuming would have given (the identity left unchanged): another tridiagonal.
    mixed = lanczos(shifted_operator(a, 0.3), 40, 12, seed=7, state_file=stale_copy, save_every=4,
                    operator_identity=old)
    assert mixed.resumed_from == 8 and np.abs(mixed.tridiag - clean.tridiag).max() > 1e-3
    assert restarted.resumed_from is None and restarted.num_matvecs == 12
    assert np.array_equal(restarted.tridiag, clean.tridiag)
    assert np.array_equal(restarted.vectors, clean.vectors)
    assert messages == [
        f"discarding the Lanczos state {str(state_file)!r}: it belongs to another run or operator: "
        "operator.hessian.batch_size: 25 in the state file, 50 now; starting fresh"
    ]
    assert "operator.hessian.batch_size: 25 in the state file, 50 now" in restarted.discarded_state


def test_state_of_the_same_operator_identity_resumes_bit_for_bit(tmp_path):
    a = random_symmetric(40, seed=31)
    identity = {"weights_sha256": "ab" * 32, "loss": {"name": "MSE", "options": {}}, "workers": (1, 2)}
    state_file = tmp_path / "same.state.npz"
    with pytest.raises(KeyboardInterrupt):
        lanczos(CountingOperator(a, fail_on_call=7), 40, 12, seed=2, state_file=state_file, save_every=3,
                operator_identity=identity)
    messages = []
    resumed = lanczos(a, num_steps=12, seed=2, state_file=state_file, save_every=3, operator_identity=identity,
                      log=messages.append)
    assert resumed.resumed_from == 6 and resumed.discarded_state is None and messages == []
    assert np.array_equal(resumed.tridiag, lanczos(a, num_steps=12, seed=2).tridiag)


def test_state_without_a_log_is_discarded_with_a_warning(tmp_path):
    a = random_symmetric(20, seed=32)
    state_file = tmp_path / "w.state.npz"
    lanczos(a, num_steps=6, seed=0, state_file=state_file, save_every=2, operator_identity={"loss": "mse"})
    with pytest.warns(RuntimeWarning, match=r'loss: "mse" in the state file, "hinge" now'):
        lanczos(a, num_steps=6, seed=0, state_file=state_file, save_every=2, operator_identity={"loss": "hinge"})


def test_state_of_an_older_format_is_discarded_and_an_unreadable_one_refused(tmp_path):
    a = random_symmetric(20, seed=33)
    old = tmp_path / "old.state.npz"
    with open(old, "wb") as handle:  # format 1: no identity, fields of its own
        np.savez(handle, format_version=np.int64(1), dim=np.int64(20), steps_done=np.int64(2))
    messages = []
    result = lanczos(a, num_steps=4, seed=0, state_file=old, save_every=2, log=messages.append)
    assert result.resumed_from is None and "format_version 1" in messages[0]
    truncated = tmp_path / "cut.state.npz"
    truncated.write_bytes(old.read_bytes()[:40])
    with pytest.raises(ValueError, match=r"cut\.state\.npz.*unreadable.*delete the file"):
        lanczos(a, num_steps=4, seed=0, state_file=truncated, save_every=2)


def test_an_operator_identity_that_is_not_json_is_refused():
    with pytest.raises(ValueError, match="operator_identity must be JSON-able"):
        lanczos(np.eye(3), num_steps=2, operator_identity={"x": object()})


def test_resume_from_a_finished_state_makes_no_matvecs(tmp_path):
    a = random_symmetric(40, seed=29)
    state_file = tmp_path / "done.state.npz"
    first = lanczos(lambda v: a @ v, 40, 12, seed=1, state_file=state_file, save_every=4)
    operator = CountingOperator(a)
    again = lanczos(operator, 40, 12, seed=1, state_file=state_file, save_every=4)
    assert operator.calls == 0 and again.resumed_from == 12
    assert np.array_equal(again.tridiag, first.tridiag)
    assert np.array_equal(again.vectors, first.vectors)


def test_non_finite_operator_output_names_the_step():
    a = random_symmetric(10, seed=28)
    calls = []

    def nan_on_fourth_call(v):
        calls.append(1)
        out = a @ v
        if len(calls) == 4:
            out[0] = np.nan
        return out

    with pytest.raises(FloatingPointError, match="non-finite values at Lanczos step 4"):
        lanczos(nan_on_fourth_call, 10, 6, seed=0)


def test_wrong_operator_output_shape_and_dtype_are_refused():
    with pytest.raises(ValueError, match=r"shape \(9,\) at Lanczos step 1"):
        lanczos(lambda v: v[:-1], 10, 3)
    with pytest.raises(TypeError, match="float32 at Lanczos step 1"):
        lanczos(lambda v: v.astype(np.float32), 10, 3)


def test_progress_is_called_after_each_step():
    calls = []
    a = random_symmetric(20, seed=26)
    lanczos(lambda v: a @ v, 20, 6, progress=lambda step, total: calls.append((step, total)))
    assert calls == [(i, 6) for i in range(1, 7)]


def test_start_vector_is_reproducible_per_seed_tuple():
    v = start_vector(1000, (7, 100, 0))
    np.testing.assert_array_equal(v, start_vector(1000, (7, 100, 0)))
    assert np.linalg.norm(v) == pytest.approx(1.0, abs=1e-15)
    other_draw = start_vector(1000, (7, 100, 1))
    # Independent unit vectors in R^1000 have |cosine| ~ 1/sqrt(1000).
    assert abs(v @ other_draw) < 0.2


def test_same_seed_gives_identical_runs():
    a = random_symmetric(50, seed=27)
    first = lanczos(lambda v: a @ v, 50, 20, seed=(3, 4))
    second = lanczos(lambda v: a @ v, 50, 20, seed=(3, 4))
    assert np.array_equal(first.tridiag, second.tridiag)


def test_invalid_arguments_are_refused(tmp_path):
    identity = lambda v: v  # noqa: E731
    with pytest.raises(ValueError, match="num_steps"):
        lanczos(identity, 5, 6)
    with pytest.raises(ValueError, match="state_file and save_every"):
        lanczos(identity, 5, 3, save_every=2)
    with pytest.raises(ValueError, match="non-negative"):
        lanczos(identity, 5, 3, seed=-1)


# -- the operator as a LinearOperator or a matrix ------------------------------------------------
def assert_same_run(a, b):
    np.testing.assert_array_equal(a.alpha, b.alpha)
    np.testing.assert_array_equal(a.beta, b.beta)
    np.testing.assert_array_equal(a.vectors, b.vectors)
    assert a.residual_norm == b.residual_norm and a.num_matvecs == b.num_matvecs


def test_a_dense_array_and_a_linear_operator_give_the_matvec_run_bit_for_bit():
    from scipy.sparse.linalg import LinearOperator, aslinearoperator

    a = random_symmetric(80, seed=30)
    reference = lanczos(lambda v: a @ v, 80, 25, seed=(1, 2))
    assert_same_run(lanczos(a, num_steps=25, seed=(1, 2)), reference)
    assert_same_run(lanczos(a, 80, 25, seed=(1, 2)), reference)  # the positional form, dim checked
    assert_same_run(lanczos(aslinearoperator(a), num_steps=25, seed=(1, 2)), reference)
    custom = LinearOperator((80, 80), matvec=lambda v: a @ v, dtype=np.float64)
    assert_same_run(lanczos(custom, num_steps=25, seed=(1, 2)), reference)


def test_a_sparse_matrix_gives_the_eigenvalues_of_its_dense_form():
    import scipy.sparse

    diagonal = np.linspace(-1.0, 2.0, 40)
    a = scipy.sparse.diags([diagonal, np.full(39, 0.3), np.full(39, 0.3)], [0, 1, -1], format="csr")
    result = lanczos(a, num_steps=40, seed=3)
    np.testing.assert_allclose(np.linalg.eigvalsh(result.tridiag), np.linalg.eigvalsh(a.toarray()), atol=1e-12)


def test_an_integer_matrix_is_used_in_float64():
    a = np.array([[2, 1], [1, 3]])
    result = lanczos(a, num_steps=2, seed=0)
    np.testing.assert_allclose(np.linalg.eigvalsh(result.tridiag), np.linalg.eigvalsh(a.astype(float)), atol=1e-14)


@pytest.mark.parametrize(
    "operator,kwargs,error,message",
    [
        (np.ones((3, 4)), {"num_steps": 2}, ValueError, "must be square"),
        (np.triu(np.ones((4, 4))), {"num_steps": 2}, ValueError, "not symmetric"),
        (np.eye(4), {"dim": 5, "num_steps": 2}, ValueError, "dim is 5 but the operator has shape"),
        (np.eye(4) * 1j, {"num_steps": 2}, TypeError, "must be real"),
        (np.eye(4), {}, TypeError, "num_steps is required"),
        (lambda v: v, {"num_steps": 2}, TypeError, "dim is required with a matvec function"),
        ("not an operator", {"dim": 3, "num_steps": 2}, TypeError, "must be a function"),
    ],
)
def test_operators_lanczos_cannot_use_are_refused_with_the_reason(operator, kwargs, error, message):
    with pytest.raises(error, match=message):
        lanczos(operator, **kwargs)


# -- probe vectors and explicit start vectors ----------------------------------------------------
def test_rademacher_start_vector_has_entries_plus_minus_one_over_sqrt_n_reproducibly():
    v = start_vector(1000, (7, 100, 0), probe="rademacher")
    assert v.shape == (1000,) and v.dtype == np.float64
    np.testing.assert_array_equal(np.abs(v), np.full(1000, 1 / np.sqrt(1000)))
    assert np.linalg.norm(v) == pytest.approx(1.0, abs=1e-14)
    assert 400 < np.sum(v > 0) < 600
    np.testing.assert_array_equal(v, start_vector(1000, (7, 100, 0), probe="rademacher"))
    assert abs(v @ start_vector(1000, (7, 100, 1), probe="rademacher")) < 0.2


def test_gaussian_start_vector_is_unchanged_bit_for_bit():
    # Pinned from the code before probes existed: the normalized np.random.default_rng(seed) normal.
    v = start_vector(7, (1, 2, 3))
    gaussian = np.random.default_rng([1, 2, 3]).standard_normal(7)
    np.testing.assert_array_equal(v, gaussian / np.linalg.norm(gaussian))
    np.testing.assert_array_equal(start_vector(7, (1, 2, 3), probe="gaussian"), v)
    assert v[0] == -0.14640703285825768 and v[-1] == -0.3672567572791175


def test_rademacher_trace_estimate_has_the_lower_closed_form_variance():
    # A strong, varying diagonal (1 .. 10) and small off-diagonal entries: the normalized Gaussian
    # probe has Var(n v^T A v) = 2n/(n+2) (||A||_F^2 - tr(A)^2/n), which keeps the diagonal's spread;
    # the Rademacher one 2 sum_{i != j} a_ij^2, which has no diagonal term at all.
    n, num_draws = 30, 2000
    gaussian = np.random.default_rng(40).standard_normal((n, n))
    off_diagonal = 0.05 * (gaussian + gaussian.T) / np.sqrt(2)  # entries N(0, 0.05^2)
    np.fill_diagonal(off_diagonal, 0.0)
    a = np.diag(np.linspace(1.0, 10.0, n)) + off_diagonal
    trace = np.trace(a)
    closed_form = {
        "gaussian": 2 * n / (n + 2) * (np.sum(a**2) - trace**2 / n),
        "rademacher": 2 * np.sum(off_diagonal**2),
    }
    assert closed_form["rademacher"] < 0.1 * closed_form["gaussian"]  # 4.54 vs 410
    for probe, variance in closed_form.items():
        estimates = np.array([n * v @ a @ v for v in (start_vector(n, (40, d), probe) for d in range(num_draws))])
        assert abs(estimates.mean() - trace) <= 4 * np.sqrt(variance / num_draws), probe
        # Standard error of a sample variance: sqrt((mu_4 - sigma^4) / N), mu_4 from the sample.
        centered = estimates - estimates.mean()
        variance_error = np.sqrt((np.mean(centered**4) - estimates.var() ** 2) / num_draws)
        assert abs(estimates.var(ddof=1) - variance) <= 4 * variance_error, probe


def test_a_state_saved_with_one_probe_is_not_resumed_with_another(tmp_path):
    a = random_symmetric(30, seed=41)
    state_file = tmp_path / "probe.state.npz"
    with pytest.raises(KeyboardInterrupt):
        lanczos(CountingOperator(a, fail_on_call=9), 30, 10, seed=3, state_file=state_file, save_every=4,
                probe="rademacher")
    messages = []
    rerun = lanczos(a, num_steps=10, seed=3, state_file=state_file, save_every=4, log=messages.append)
    assert rerun.resumed_from is None and rerun.num_matvecs == 10
    assert np.array_equal(rerun.tridiag, lanczos(a, num_steps=10, seed=3).tridiag)
    assert len(messages) == 1 and 'probe: "rademacher" in the state file, "gaussian" now' in messages[0]
    assert "probe: " in rerun.discarded_state


def test_an_explicit_start_vector_starts_the_run_and_its_hash_is_part_of_the_state(tmp_path):
    a = random_symmetric(30, seed=42)
    start = start_vector(30, 99, "rademacher")
    run = lanczos(a, num_steps=8, start=start)
    np.testing.assert_array_equal(run.vectors[:, 0], start)
    assert_same_run(run, lanczos(a, num_steps=8, seed=99, probe="rademacher"))

    state_file = tmp_path / "start.state.npz"
    lanczos(a, num_steps=8, start=start, state_file=state_file, save_every=4)
    assert lanczos(a, num_steps=8, start=start, state_file=state_file, save_every=4).resumed_from == 8
    messages = []
    other = lanczos(a, num_steps=8, start=start_vector(30, 5), state_file=state_file, save_every=4,
                    log=messages.append)
    assert other.resumed_from is None and "start_sha256: " in messages[0]


def test_a_state_written_before_probes_existed_resumes_as_a_gaussian_run(tmp_path):
    import json

    a = random_symmetric(30, seed=43)
    state_file = tmp_path / "old.state.npz"
    with pytest.raises(KeyboardInterrupt):
        lanczos(CountingOperator(a, fail_on_call=7), 30, 10, seed=4, state_file=state_file, save_every=3)
    with np.load(state_file) as state:
        fields = {name: state[name] for name in state.files}
    identity = json.loads(str(fields["identity"]))
    del identity["probe"], identity["start_sha256"]  # what the previous hessflow wrote
    fields["identity"] = np.array(json.dumps(identity, sort_keys=True))
    with open(state_file, "wb") as handle:
        np.savez(handle, **fields)
    resumed = lanczos(a, num_steps=10, seed=4, state_file=state_file, save_every=3)
    assert resumed.resumed_from == 6
    assert np.array_equal(resumed.tridiag, lanczos(a, num_steps=10, seed=4).tridiag)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"probe": "sphere"}, ValueError, r"probe must be one of \('gaussian', 'rademacher'\); got 'sphere'"),
        ({"start": np.ones(5)}, ValueError, r"start must be a unit vector; its norm is 2\.236"),
        ({"start": np.ones(4) / 2}, ValueError, r"start must have shape \(5,\)"),
        ({"start": np.eye(5)[0] * 1j}, TypeError, "start must be a real vector"),
    ],
)
def test_invalid_probe_or_start_is_refused_naming_it(kwargs, error, message):
    with pytest.raises(error, match=message):
        lanczos(np.eye(5), num_steps=2, **kwargs)
    if "probe" in kwargs:
        with pytest.raises(error, match=message):
            start_vector(5, 0, **kwargs)


# -- health diagnostics: orthogonality loss and near-breakdown ----------------------------------
def max_abs_orthogonality_loss(vectors):
    """max |V^T V - I|, the entry-wise form LanczosResult.orthogonality_loss reports."""
    return np.max(np.abs(vectors.T @ vectors - np.eye(vectors.shape[1])))


def outliers_matrix():
    """n = 103: eigenvalues 1, 2, .., 100 and the well-separated outliers 150, 200, 300."""
    return symmetric_with_spectrum(np.concatenate([np.arange(1.0, 101.0), [150.0, 200.0, 300.0]]), seed=50)


def plain_recurrence(a, num_steps, seed):
    """The three-term recurrence without reorthogonalization (gram_schmidt_passes=0)."""
    return _lanczos(
        lambda v: a @ v, a.shape[0], num_steps, seed, True,
        state_file=None, save_every=None, progress=None, breakdown_tol=1e-10, gram_schmidt_passes=0,
    )


def test_orthogonality_loss_is_the_max_abs_entry_of_gram_minus_identity():
    a = random_symmetric(120, seed=44)
    result = lanczos(a, num_steps=60, seed=45)
    assert isinstance(result.orthogonality_loss, float)
    assert result.orthogonality_loss == max_abs_orthogonality_loss(result.vectors)
    assert 0 < result.orthogonality_loss < 1e-14


def test_orthogonality_loss_in_row_blocks_matches_the_whole_gram_matrix(monkeypatch):
    # Blocks of 7 rows of V^T V (the path of very long runs) instead of one: the same maximum, up to
    # the rounding of a differently ordered BLAS product (~1e-16 per entry).
    plain = plain_recurrence(outliers_matrix(), 40, seed=51)  # a loss of O(1), on off-diagonal entries
    healthy = lanczos(random_symmetric(120, seed=44), num_steps=60, seed=45)
    monkeypatch.setattr(hessflow.lanczos, "GRAM_BLOCK_ENTRIES", 7 * 60)
    for result in (plain, healthy):
        blockwise = hessflow.lanczos._orthogonality_loss(result.vectors)
        assert blockwise == pytest.approx(result.orthogonality_loss, rel=1e-12, abs=1e-15)


def test_min_beta_is_the_smallest_off_diagonal_and_relative_to_the_norm_estimate():
    a = random_symmetric(80, seed=46)
    result = lanczos(a, num_steps=30, seed=47)
    assert result.min_beta == result.beta.min()
    norm_estimate = max(np.abs(result.alpha).max(), result.beta.max())
    assert result.relative_min_beta == result.min_beta / norm_estimate
    assert norm_estimate <= np.linalg.norm(a, 2)


def test_a_one_step_run_has_infinite_min_beta_and_no_warning():
    result = lanczos(np.diag([2.0, 1.0, -1.0]), num_steps=1, seed=0)
    assert result.beta.size == 0
    assert result.min_beta == np.inf and result.relative_min_beta == np.inf
    assert health_warnings(result) == []


def test_diagnostics_do_not_need_keep_vectors():
    a = random_symmetric(60, seed=48)
    with_vectors = lanczos(a, num_steps=25, seed=49)
    without = lanczos(a, num_steps=25, seed=49, keep_vectors=False)
    assert without.vectors is None
    assert without.orthogonality_loss == with_vectors.orthogonality_loss
    assert without.min_beta == with_vectors.min_beta


def test_healthy_runs_have_no_health_warnings():
    for n, m, seed in [(50, 50, 0), (200, 60, 2)]:
        assert health_warnings(lanczos(random_symmetric(n, seed), num_steps=m, seed=seed)) == []
    # A breakdown on an invariant Krylov space is a clean stop, not a warning.
    stopped = lanczos(symmetric_with_spectrum(np.repeat([-1.0, 0.5, 2.0], 20), seed=15), num_steps=10, seed=16)
    assert stopped.stopped_early and health_warnings(stopped) == []


def test_run_without_reorthogonalization_is_caught_by_orthogonality_loss():
    # The plain recurrence loses orthogonality as soon as the outliers' Ritz values converge (it then
    # reports 300 four times: ghosts); two Gram-Schmidt passes keep V orthonormal to rounding.
    a = outliers_matrix()
    plain = plain_recurrence(a, 80, seed=51)
    default = lanczos(a, num_steps=80, seed=51)
    assert plain.orthogonality_loss > 1e-3
    assert default.orthogonality_loss < 1e-12
    warnings_found = health_warnings(plain)
    assert len(warnings_found) == 1 and "lost orthogonality" in warnings_found[0]
    assert f"{plain.orthogonality_loss:.3g}" in warnings_found[0]
    assert health_warnings(default) == []


def test_near_breakdown_gives_tiny_min_beta_and_a_warning_naming_the_step():
    # Few distinct eigenvalues, tightly clustered (see clustered_matrix): b_9 ~ 1e-8 ||A||, above
    # the breakdown tolerance, so the run goes on, past a nearly invariant Krylov space.
    result = lanczos(clustered_matrix(), num_steps=40, seed=12)
    assert not result.stopped_early
    assert result.relative_min_beta < 1e-7 < NEAR_BREAKDOWN_TOL
    assert result.min_beta == result.beta[8]  # b_9
    warnings_found = health_warnings(result)
    assert len(warnings_found) == 1 and "near-breakdown at Lanczos step 9" in warnings_found[0]
    assert health_warnings(result, near_breakdown_tol=1e-9) == []


def test_resumed_run_reports_the_diagnostics_of_an_uninterrupted_one(tmp_path):
    a = clustered_matrix()  # a non-trivial min_beta (b_9) and orthogonality loss
    state_file = tmp_path / "health.state.npz"
    uninterrupted = lanczos(a, num_steps=30, seed=(5, 6))
    with pytest.raises(KeyboardInterrupt):
        lanczos(CountingOperator(a, fail_on_call=23), 300, 30, seed=(5, 6), state_file=state_file, save_every=10)
    resumed = lanczos(a, num_steps=30, seed=(5, 6), state_file=state_file, save_every=10, keep_vectors=False)
    assert resumed.resumed_from == 20
    assert resumed.orthogonality_loss == uninterrupted.orthogonality_loss
    assert resumed.min_beta == uninterrupted.min_beta
    assert resumed.relative_min_beta == uninterrupted.relative_min_beta
    assert health_warnings(resumed) == health_warnings(uninterrupted)
