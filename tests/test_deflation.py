"""Spectral deflation for SLQ, checked on explicit matrices against numpy traces and closed forms."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest

from hessflow.deflation import DeflatedOperator, deflated_ritz_measure, deflated_start_vector, project_out
from hessflow.density import ritz
from hessflow.eigenpairs import residual_norms, top_ritz_pairs
from hessflow.lanczos import lanczos
from operators import CountingOperator

NUM_DRAWS = 500
STEPS = 8
POWERS = (1, 2, 3)


@functools.cache
def planted_outliers():
    """203 x 203: a bulk of 200 eigenvalues uniform in [-0.1, 1] plus 10, 20, 30, random eigenbasis.

    Returns (a, spectrum, eigh(a)'s eigenvalues, its eigenvectors), read-only: built once per module,
    since LAPACK on a loaded 2-core machine takes seconds where it should take milliseconds.
    """
    rng = np.random.default_rng(0)
    spectrum = np.concatenate([rng.uniform(-0.1, 1.0, 200), [10.0, 20.0, 30.0]])
    q, _ = np.linalg.qr(rng.standard_normal((spectrum.size, spectrum.size)))
    a = (q * spectrum) @ q.T
    a = (a + a.T) / 2
    arrays = (a, spectrum, *np.linalg.eigh(a))
    for array in arrays:
        array.setflags(write=False)
    return arrays


def moments(nodes, weights):
    """sum_j w_j x_j^p for p in POWERS, shape (3,)."""
    return np.array([np.sum(weights * nodes**p) for p in POWERS])


def hutchinson_variance(eigenvalues):
    """Var(n v^T A v) for v uniform on the unit sphere of R^n: 2n/(n+2) (tr A^2 - tr(A)^2 / n)."""
    n = eigenvalues.size
    return 2 * n / (n + 2) * (np.sum(eigenvalues**2) - np.sum(eigenvalues) ** 2 / n)


@pytest.fixture(scope="module")
def draws():
    """NUM_DRAWS plain and deflated SLQ runs of STEPS steps each, with the exact top-3 eigenvectors.

    Returns n * moments per draw, (draws, 3) each, and the operator applications of each kind.
    """
    a, spectrum, eigenvalues, eigenvectors = planted_outliers()
    n = a.shape[0]
    top_values, top_vectors = eigenvalues[-3:], eigenvectors[:, -3:]
    plain_operator, deflated_counter = CountingOperator(a), CountingOperator(a)
    deflated_operator = DeflatedOperator(deflated_counter, top_vectors)
    plain, deflated = [], []
    for draw in range(NUM_DRAWS):
        run = lanczos(plain_operator, n, STEPS, seed=(1, draw), keep_vectors=False)
        plain.append(n * moments(*ritz(run.tridiag)))
        start = deflated_start_vector(n, (1, draw), top_vectors)
        run = lanczos(deflated_operator, num_steps=STEPS, start=start, keep_vectors=False)
        deflated.append(n * moments(*deflated_ritz_measure(run.tridiag, top_values, n)))
    return {"spectrum": spectrum, "plain": np.array(plain), "deflated": np.array(deflated),
            "plain_calls": plain_operator.calls, "deflated_calls": deflated_counter.calls}


def test_deflated_operator_is_p_a_p_with_one_application_per_product():
    a, _, _, eigenvectors = planted_outliers()
    y = eigenvectors[:, [0, 50, 202]]  # any orthonormal columns
    projector = np.eye(a.shape[0]) - y @ y.T
    counter = CountingOperator(a)
    operator = DeflatedOperator(counter, y)
    x = np.random.default_rng(2).standard_normal((a.shape[0], 4))
    np.testing.assert_allclose(operator @ x, projector @ a @ projector @ x, rtol=0, atol=1e-12)
    assert counter.calls == 4
    np.testing.assert_allclose(operator.T @ x[:, 0], operator @ x[:, 0], rtol=0, atol=0)


def test_a_block_reaches_a_linear_operators_matmat_in_one_call():
    from scipy.sparse.linalg import LinearOperator

    a, _, _, eigenvectors = planted_outliers()
    y = eigenvectors[:, [0, 50, 202]]
    projector = np.eye(a.shape[0]) - y @ y.T
    blocks = []

    def matmat(x):
        blocks.append(x.shape)
        return a @ x

    inner = LinearOperator(a.shape, matvec=lambda v: a @ v, matmat=matmat, dtype=np.float64)
    x = np.random.default_rng(3).standard_normal((a.shape[0], 3))
    np.testing.assert_allclose(DeflatedOperator(inner, y).matmat(x), projector @ a @ projector @ x,
                               rtol=0, atol=1e-12)
    assert blocks == [(a.shape[0], 3)]


def test_deflated_start_vector_is_unit_and_orthogonal_to_the_eigenvectors():
    a, _, _, eigenvectors = planted_outliers()
    y = eigenvectors[:, -3:]
    for probe in ("gaussian", "rademacher"):
        start = deflated_start_vector(a.shape[0], (4, 5), y, probe)
        assert np.linalg.norm(start) == pytest.approx(1.0, abs=1e-15)
        assert np.max(np.abs(y.T @ start)) < 1e-15
    np.testing.assert_array_equal(start, deflated_start_vector(a.shape[0], (4, 5), y, "rademacher"))


def test_eigenvectors_that_are_not_orthonormal_are_refused_with_the_departure():
    a, _, _, eigenvectors = planted_outliers()
    y = eigenvectors[:, -2:]
    with pytest.raises(ValueError, match=r"orthonormal columns: max \|Y\^T Y - I\| = 0\.21 > 1e-08.*qr"):
        DeflatedOperator(a, y * 1.1)
    with pytest.raises(ValueError, match=r"orthonormal columns: max \|Y\^T Y - I\| = 2e-07"):
        deflated_start_vector(a.shape[0], 0, y * (1 + 1e-7), "gaussian")
    with pytest.raises(ValueError, match=r"shape \(n, k\) with 1 <= k < n"):
        DeflatedOperator(a, y.T)


def test_deflated_measure_has_the_exact_atoms_and_total_weight_one():
    tridiag = np.array([[1.0, 0.5], [0.5, 2.0]])
    nodes, weights = deflated_ritz_measure(tridiag, [30.0, 10.0], dim=8)
    ritz_values, ritz_weights = ritz(tridiag)
    np.testing.assert_allclose(nodes, [*ritz_values, 10.0, 30.0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(weights, [*(ritz_weights * 6 / 8), 1 / 8, 1 / 8], rtol=0, atol=1e-15)
    assert np.sum(weights) == pytest.approx(1.0, abs=1e-15)
    with pytest.raises(ValueError, match="dim must be an int larger than the number of eigenvalues"):
        deflated_ritz_measure(tridiag, [1.0, 2.0], dim=2)


def test_deflated_and_plain_slq_moments_are_unbiased(draws):
    # Gauss quadrature of STEPS = 8 nodes is exact to degree 15, so each draw's p-th moment (times n)
    # is n v^T A^p v exactly: its mean over draws must be tr(A^p) within its standard error.
    exact = np.array([np.sum(draws["spectrum"] ** p) for p in POWERS])
    for kind in ("plain", "deflated"):
        samples = draws[kind]
        standard_error = samples.std(axis=0, ddof=1) / np.sqrt(NUM_DRAWS)
        assert np.all(np.abs(samples.mean(axis=0) - exact) <= 4 * standard_error), kind


def test_deflation_lowers_the_trace_variance_to_the_bulks_at_equal_operator_applications(draws):
    assert draws["plain_calls"] == draws["deflated_calls"] == NUM_DRAWS * STEPS
    spectrum = np.sort(draws["spectrum"])
    plain_variance, bulk_variance = hutchinson_variance(spectrum), hutchinson_variance(spectrum[:-3])
    # Closed forms: 2667 (plain, dominated by the outliers' 2 (10^2 + 20^2 + 30^2)) and 43.5 (the
    # bulk alone): a ratio of 0.016. The sample variances of 500 draws are within 20 % of them
    # (relative standard error about sqrt(2 / 500) = 6 %), so a bound of 0.05 is met by 3x.
    assert bulk_variance / plain_variance == pytest.approx(0.0163, abs=1e-4)
    plain_sample = draws["plain"][:, 0].var(ddof=1)
    deflated_sample = draws["deflated"][:, 0].var(ddof=1)
    assert plain_sample == pytest.approx(plain_variance, rel=0.2)
    assert deflated_sample == pytest.approx(bulk_variance, rel=0.2)
    assert deflated_sample / plain_sample < 0.05


def test_ritz_vectors_of_a_short_run_bias_deflation_as_documented():
    # Ritz pairs of 3 steps are far from converged (residuals 0.4 to 9): the deflated estimate is then of
    # sum theta_i^p + tr(P (P A P)^p P), whose p = 1 term is tr(A) (Ritz values are Rayleigh
    # quotients) and whose p = 2 term is tr(A^2) - 2 sum ||A y_i - theta_i y_i||^2.
    a, spectrum, _, _ = planted_outliers()
    n = a.shape[0]
    short = lanczos(a, num_steps=3, seed=7)
    pairs = top_ritz_pairs(short.tridiag, short.vectors, 3, next_beta=short.residual_norm)
    residuals = residual_norms(a, pairs.values, pairs.vectors)
    projector = np.eye(n) - pairs.vectors @ pairs.vectors.T
    compressed = projector @ a @ projector
    expected = np.array([np.sum(pairs.values**p) + np.trace(np.linalg.matrix_power(compressed, p))
                         for p in POWERS])
    exact = np.array([np.sum(spectrum**p) for p in POWERS])
    assert expected[0] == pytest.approx(exact[0], rel=1e-12)
    assert expected[1] - exact[1] == pytest.approx(-2 * np.sum(residuals**2), rel=1e-9)
    assert -2 * np.sum(residuals**2) < -100  # a bias far beyond the standard error below

    operator = DeflatedOperator(a, pairs.vectors)
    samples = []
    for draw in range(NUM_DRAWS):
        run = lanczos(operator, num_steps=STEPS, start=deflated_start_vector(n, (1, draw), pairs.vectors),
                      keep_vectors=False)
        samples.append(n * moments(*deflated_ritz_measure(run.tridiag, pairs.values, n)))
    samples = np.array(samples)
    standard_error = samples.std(axis=0, ddof=1) / np.sqrt(NUM_DRAWS)
    assert np.all(np.abs(samples.mean(axis=0) - expected) <= 4 * standard_error)
    assert np.abs(samples.mean(axis=0)[1] - exact[1]) > 10 * standard_error[1]


def test_rademacher_deflation_is_unbiased_with_the_projected_norm_as_complement_weight():
    # All 2^10 Rademacher vectors of R^10, so the expectation is exact: the default weight (n - k)/n
    # is biased for this probe, ||P v||^2 is not (module docstring).
    rng = np.random.default_rng(3)
    spectrum = np.concatenate([rng.uniform(-0.1, 1.0, 8), [10.0, 20.0]])
    q, _ = np.linalg.qr(rng.standard_normal((10, 10)))
    a = (q * spectrum) @ q.T
    a = (a + a.T) / 2
    y = q[:, -2:]
    operator = DeflatedOperator(a, y)
    default, projected = [], []
    for signs in itertools.product((-1.0, 1.0), repeat=10):
        v = project_out(np.array(signs) / np.sqrt(10), y)
        run = lanczos(operator, num_steps=3, start=v / np.linalg.norm(v), keep_vectors=False)
        default.append(moments(*deflated_ritz_measure(run.tridiag, spectrum[-2:], 10))[0])
        projected.append(moments(*deflated_ritz_measure(run.tridiag, spectrum[-2:], 10,
                                                         complement_weight=float(v @ v)))[0])
    assert np.mean(projected) == pytest.approx(np.sum(spectrum) / 10, rel=1e-12)
    assert abs(np.mean(default) - np.sum(spectrum) / 10) > 1e-3  # 2.7e-3 of a mean eigenvalue of 3.2


def test_aggregated_draws_on_a_basis_runs_krylov_space_estimate_the_trace_unbiasedly_with_less_variance():
    # The workflow's estimator (lanczos.deflation_steps): the whole Krylov space of one 20-step basis
    # run projected out of every draw, its 20 Ritz values as atoms (hessflow.reproduce.aggregate).
    from hessflow.integrity import DeflationBasis
    from hessflow.reproduce import aggregate

    a, spectrum, _, _ = planted_outliers()
    n = a.shape[0]
    basis = lanczos(a, num_steps=20, seed=(0, 0, 0, 1))
    deflated = DeflatedOperator(a, basis.vectors)
    tridiags = [lanczos(deflated, num_steps=STEPS, start=deflated_start_vector(n, (0, 0, d), basis.vectors)).tridiag
                for d in range(200)]
    _, values, weights = aggregate(tridiags, DeflationBasis(basis.tridiag, n, np.full(200, (n - 20) / n)))
    assert values.shape == weights.shape == (200, 20 + STEPS)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=0, atol=1e-13)
    traces = n * np.sum(values * weights, axis=1)
    assert abs(traces.mean() - spectrum.sum()) <= 4 * traces.std(ddof=1) / np.sqrt(200)
    assert traces.var(ddof=1) < 0.05 * hutchinson_variance(np.sort(spectrum))  # plain SLQ's closed form
