"""Top Ritz pairs and converged eigenpairs, checked against numpy.linalg.eigh on an explicit matrix."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from scipy.sparse.linalg import aslinearoperator

from hessflow.eigenpairs import converged_top_eigenpairs, residual_norms, top_ritz_pairs
from hessflow.lanczos import lanczos, start_vector
from operators import CountingOperator

# 6 steps: the outliers 30, 20, 10 are resolved to 1e-8 .. 1e-5 with residuals 4e-4 .. 1e-2, far above
# the rounding floor (~1e-14 here), so bound and true residual can be compared digit for digit.
STEPS = 6


@functools.cache
def planted_outliers():
    """203 x 203: a bulk of 200 eigenvalues uniform in [-0.1, 1] plus 10, 20, 30, random eigenbasis.

    Returns (a, eigh(a)'s eigenvalues, its eigenvectors), read-only, built once per module.
    """
    rng = np.random.default_rng(0)
    spectrum = np.concatenate([rng.uniform(-0.1, 1.0, 200), [10.0, 20.0, 30.0]])
    q, _ = np.linalg.qr(rng.standard_normal((spectrum.size, spectrum.size)))
    a = (q * spectrum) @ q.T
    a = (a + a.T) / 2
    arrays = (a, *np.linalg.eigh(a))
    for array in arrays:
        array.setflags(write=False)
    return arrays


@functools.cache
def short_run():
    a, _, _ = planted_outliers()
    run = lanczos(a, num_steps=STEPS, seed=1)
    return run, top_ritz_pairs(run.tridiag, run.vectors, 3, next_beta=run.residual_norm)


def test_top_ritz_values_match_eigh_within_their_residual_bounds():
    _, eigenvalues, _ = planted_outliers()
    _, pairs = short_run()
    top = eigenvalues[::-1][:3]
    assert pairs.values.shape == (3,) and np.all(np.diff(pairs.values) < 0)
    assert np.all(np.abs(pairs.values - top) <= pairs.residual_bounds)
    assert np.all(pairs.residual_bounds < 0.02) and np.all(pairs.residual_bounds > 1e-4)


def test_residual_norms_equal_the_direct_numpy_computation():
    a, _, _ = planted_outliers()
    _, pairs = short_run()
    direct = np.linalg.norm(a @ pairs.vectors - pairs.vectors * pairs.values, axis=0)
    counter = CountingOperator(a)
    np.testing.assert_allclose(residual_norms(counter, pairs.values, pairs.vectors), direct, rtol=1e-12)
    assert counter.calls == 3  # one application per vector
    np.testing.assert_allclose(residual_norms(aslinearoperator(a), pairs.values, pairs.vectors), direct, rtol=1e-12)


def test_residual_bound_equals_the_true_residual_norm_with_full_reorthogonalization():
    a, _, _ = planted_outliers()
    _, pairs = short_run()
    np.testing.assert_allclose(pairs.residual_bounds, residual_norms(a, pairs.values, pairs.vectors), rtol=1e-10)


def test_ritz_vectors_are_v_times_s_unit_and_signed_toward_the_start_vector():
    run, pairs = short_run()
    theta, s = np.linalg.eigh(run.tridiag)
    s = s[:, ::-1][:, :3] * np.sign(s[0, ::-1][:3])
    np.testing.assert_allclose(pairs.values, theta[::-1][:3], rtol=1e-13)
    np.testing.assert_allclose(pairs.vectors, run.vectors @ s, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(pairs.vectors, axis=0), 1.0, rtol=0, atol=1e-14)
    assert np.all(start_vector(203, 1) @ pairs.vectors > 0)
    assert pairs.num_matvecs == 0


def test_residual_bounds_are_nan_without_the_next_beta():
    run, _ = short_run()
    pairs = top_ritz_pairs(run.tridiag, run.vectors, 2)
    assert pairs.residual_bounds.shape == (2,) and np.all(np.isnan(pairs.residual_bounds))


def test_converged_top_eigenpairs_match_eigh_deterministically_and_count_applications():
    a, eigenvalues, eigenvectors = planted_outliers()
    counter = CountingOperator(a)
    pairs = converged_top_eigenpairs(counter, 3, dim=203, seed=(2, 3))
    np.testing.assert_allclose(pairs.values, eigenvalues[::-1][:3], rtol=1e-13)
    overlaps = np.abs(eigenvectors[:, ::-1][:, :3].T @ pairs.vectors)
    np.testing.assert_allclose(overlaps, np.eye(3), rtol=0, atol=1e-10)
    direct = np.linalg.norm(a @ pairs.vectors - pairs.vectors * pairs.values, axis=0)
    # Converged residuals sit at rounding level, where the direct product's own error decides:
    # |fl(A v) - A v| <= sqrt(n) * eps * |A| (the order of BLAS's sums, hence its threads, moves it).
    rounding = np.sqrt(a.shape[0]) * np.finfo(float).eps * np.linalg.norm(a, 2)
    np.testing.assert_allclose(pairs.residual_bounds, direct, rtol=1e-6, atol=rounding)
    assert np.all(pairs.residual_bounds < 1e-12 * 30)
    assert pairs.num_matvecs == counter.calls and 3 < pairs.num_matvecs < 100
    again = converged_top_eigenpairs(a, 3, seed=(2, 3))
    np.testing.assert_array_equal(again.values, pairs.values)
    np.testing.assert_array_equal(again.vectors, pairs.vectors)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda run: top_ritz_pairs(run.tridiag, run.vectors, 0), r"k must be an int in \[1, 6\]"),
        (lambda run: top_ritz_pairs(run.tridiag, run.vectors, 7), r"k must be an int in \[1, 6\]"),
        (lambda run: top_ritz_pairs(run.tridiag, run.vectors[:, :5], 2), r"vectors must have shape \(n, 6\)"),
        (lambda run: top_ritz_pairs(run.tridiag, run.vectors, 2, next_beta=-1.0), "next_beta must be"),
        (lambda run: top_ritz_pairs(np.triu(run.tridiag), run.vectors, 2), "not symmetric"),
        (lambda run: residual_norms(np.eye(203), np.ones(2), run.vectors), r"values of shape \(k,\)"),
        (lambda run: converged_top_eigenpairs(np.eye(4), 4), r"k must be an int in \[1, 3\]"),
    ],
)
def test_bad_input_is_refused_naming_the_argument(call, message):
    run, _ = short_run()
    with pytest.raises(ValueError, match=message):
        call(run)
