"""Outlier counts from SLQ draws and gradient fractions, checked on explicit matrices against numpy."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from hessflow.density import ritz
from hessflow.eigenpairs import top_ritz_pairs
from hessflow.lanczos import lanczos, start_vector
from hessflow.outliers import (
    find_outliers,
    find_outliers_in_tridiags,
    gradient_fraction_in_span,
    gradient_fractions_in_leading_spans,
)

N = 400
STEPS = 40
DRAWS = 5
PLANTED = (30.0, 20.0, 10.0)
BULK_SIZE = N - len(PLANTED)
# Ritz values of these runs are converged far below rounding (bounds ~1e-47): allow the rounding floor
# of the computed ones, ~1e-15 sqrt(m) ||A|| (see hessflow.eigenpairs), with a margin of 10.
ROUNDING_FLOOR = 1e-14 * np.sqrt(STEPS) * max(PLANTED)


@functools.cache
def eigenbasis():
    """A random orthogonal N x N matrix (QR of a Gaussian), read-only, shared by every planted spectrum."""
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((N, N)))
    q.setflags(write=False)
    return q


def bulk(size=BULK_SIZE):
    """``size`` eigenvalues uniform in [0, 1], the same stream for every size."""
    return np.random.default_rng(1).uniform(0.0, 1.0, size)


@functools.cache
def planted(spectrum: tuple):
    """(the matrix with eigenvalues ``spectrum`` in eigenbasis(), its STEPS-step Lanczos runs of DRAWS draws)."""
    q = eigenbasis()
    a = (q * np.array(spectrum)) @ q.T
    a = (a + a.T) / 2
    return a, [lanczos(a, num_steps=STEPS, seed=(0, d)) for d in range(DRAWS)]


def outliers_of(spectrum, **options):
    return find_outliers_in_tridiags([run.tridiag for run in planted(tuple(spectrum))[1]], N, **options)


def three_outliers():
    return tuple(bulk()) + PLANTED


@functools.cache
def three_outliers_eigh():
    """(a, eigh(a)'s eigenvalues ascending, its eigenvectors, the runs) for three_outliers()."""
    a, runs = planted(three_outliers())
    return (a, *np.linalg.eigh(a), runs)


def test_planted_outliers_are_counted_and_match_eigh_within_the_ritz_bounds():
    _, eigenvalues, _, runs = three_outliers_eigh()
    found = outliers_of(three_outliers())
    assert found.count == 3 and found.below.size == 0 and found.draw_matches.shape == (3, DRAWS)
    assert found.draw_matches.all() and np.all(found.gap_ratios > 9)
    bounds = np.max([top_ritz_pairs(r.tridiag, r.vectors, 3, next_beta=r.residual_norm).residual_bounds
                     for r in runs], axis=0)
    assert np.all(np.abs(found.values - eigenvalues[::-1][:3]) <= bounds + ROUNDING_FLOOR)
    quadratures = [ritz(r.tridiag) for r in runs]
    direct = find_outliers([v for v, _ in quadratures], [w for _, w in quadratures], N)
    np.testing.assert_array_equal(direct.values, found.values)


def test_bulk_edges_are_the_extreme_bulk_ritz_values_so_inside_the_bulk_by_interlacing():
    _, eigenvalues, _, runs = three_outliers_eigh()
    found = outliers_of(three_outliers())
    ritz_values = np.array([np.sort(ritz(r.tridiag)[0]) for r in runs])
    np.testing.assert_array_equal(found.draw_edges, ritz_values[:, [0, -4]])  # the 4th largest: under 10
    # Cauchy interlacing: the 4th largest Ritz value <= the 4th largest eigenvalue, the top of the bulk.
    assert eigenvalues[0] <= found.lower_edge < found.upper_edge <= eigenvalues[-4]
    assert found.upper_edge > eigenvalues[-4] - 0.01


def test_multiplicities_are_n_times_the_squared_components_of_the_start_vectors():
    _, _, eigenvectors, _ = three_outliers_eigh()
    probes = np.array([start_vector(N, (0, d)) for d in range(DRAWS)])
    squared = (probes @ eigenvectors[:, ::-1][:, :3]) ** 2  # (draws, 3): the Gauss weights of converged nodes
    np.testing.assert_allclose(outliers_of(three_outliers()).multiplicities, N * squared.mean(axis=0), rtol=1e-8)


def test_no_outliers_in_a_marchenko_pastur_bulk():
    x = np.random.default_rng(2).standard_normal((2 * N, N))
    spectrum = np.linalg.eigvalsh(x.T @ x / (2 * N))  # ratio 1/2: support [0.086, 2.91]
    found = outliers_of(spectrum)
    assert found.count == 0 and found.values.shape == (0,) and found.draw_matches.shape == (0, DRAWS)
    assert spectrum[0] <= found.lower_edge and found.upper_edge <= spectrum[-1]


@pytest.mark.parametrize("near_edge, counted", [(1.3, False), (1.8, True)])
def test_an_eigenvalue_beside_the_bulk_counts_only_beyond_half_its_width(near_edge, counted):
    found = outliers_of(tuple(bulk(size=N - 1)) + (near_edge,))
    assert found.count == int(counted)
    if counted:
        np.testing.assert_allclose(found.values, [near_edge], rtol=1e-12)
        assert found.gap_ratios[0] > 0.5 and found.upper_edge < 1
    else:
        assert found.upper_edge == pytest.approx(near_edge, rel=1e-12)  # absorbed into the bulk


def test_an_isolated_eigenvalue_between_two_bulk_parts_is_not_an_outlier():
    u = bulk(size=N - 4)
    spectrum = tuple(np.where(u < 0.5, 0.6 * u, 0.4 + 0.6 * u)) + (0.5,) + PLANTED  # [0, .3] + .5 + [.7, 1]
    runs = planted(spectrum)[1]
    nearest = [np.min(np.abs(ritz(r.tridiag)[0] - 0.5)) for r in runs]
    assert max(nearest) < 1e-9  # converged in every draw: stable, and still inside the bulk
    np.testing.assert_allclose(outliers_of(spectrum).values, PLANTED, rtol=1e-12)


def test_a_negative_outlier_is_counted_below_the_bulk():
    found = outliers_of(tuple(bulk(size=N - 2)) + (-5.0, 10.0))
    np.testing.assert_allclose(found.values, [10.0, -5.0], rtol=1e-12)
    np.testing.assert_allclose(found.below, [-5.0], rtol=1e-12)
    np.testing.assert_allclose(found.above, [10.0], rtol=1e-12)
    assert found.gap_ratios[1] == pytest.approx((found.lower_edge + 5.0) / (found.upper_edge - found.lower_edge))


def test_a_ritz_value_in_a_minority_of_draws_is_not_counted():
    quadratures = [ritz(r.tridiag) for r in planted(three_outliers())[1]]
    values, weights = [list(v) for v in zip(*quadratures)]
    for d in (1, 3):  # a node at 5 in 2 of 5 draws, as an unconverged Ritz value would be
        values[d], weights[d] = np.append(values[d], 5.0 + 1e-6 * d), np.append(weights[d], 1 / N)
    np.testing.assert_allclose(find_outliers(values, weights, N).values, PLANTED, rtol=1e-12)
    found = find_outliers(values, weights, N, min_draws=2)
    np.testing.assert_allclose(found.values, (*PLANTED, 5.0), rtol=1e-6)
    np.testing.assert_array_equal(found.draw_matches[3], [False, True, False, True, False])


@pytest.mark.parametrize(
    "arguments, message",
    [
        (([[0.0, 1.0]], [[0.5]], 4), "draw 0: values shape"),
        (([[0.0, np.nan]], [[0.5, 0.5]], 4), "non-finite"),
        (([[0.0, 1.0]], [[1.5, -0.5]], 4), "ritz_weights must be non-negative"),
        (([[0.0, 1.0, 2.0]], [[0.5, 0.25, 0.25]], 2), "dim must be an int >="),
        (([[0.0, 1.0]], [[0.5, 0.5]], 4, {"gap_ratio": 0.0}), "gap_ratio must be"),
        (([[0.0, 1.0]], [[0.5, 0.5]], 4, {"min_draws": 2}), r"min_draws must be an int in \[1, 1\]"),
        (([[0.0, 1.0]], [[0.5, 0.5]], 4, {"match_rtol": np.inf}), "match_rtol must be"),
    ],
)
def test_bad_ritz_input_is_refused_naming_the_argument(arguments, message):
    *positional, options = arguments if isinstance(arguments[-1], dict) else (*arguments, {})
    with pytest.raises(ValueError, match=message):
        find_outliers(*positional, **options)


def gradient_in_eigenbasis():
    """(exact eigenvectors, top 3 first, of the three-outlier matrix; coefficients c; g = Q c)."""
    _, _, eigenvectors, _ = three_outliers_eigh()
    q = eigenvectors[:, ::-1]
    c = np.random.default_rng(3).standard_normal(N) * np.where(np.arange(N) < 3, 10.0, 1.0)
    return q, c, q @ c


def test_gradient_fraction_in_the_exact_outlier_eigenvectors_is_the_closed_form():
    q, c, g = gradient_in_eigenbasis()
    expected = np.sum(c[:3] ** 2) / np.sum(c**2)
    assert gradient_fraction_in_span(g, q[:, :3]) == pytest.approx(expected, rel=1e-12)
    assert gradient_fraction_in_span(-1e200 * g, 3.0 * q[:, :3]) == pytest.approx(expected, rel=1e-12)


def test_leading_span_fractions_are_cumulative_and_end_at_the_scalar_form():
    q, c, g = gradient_in_eigenbasis()
    columns = q[:, [2, 0, 7, 1]] @ np.triu(np.ones((4, 4)))  # the same nested spans, not orthonormal
    fractions = gradient_fractions_in_leading_spans(g, columns)
    np.testing.assert_allclose(fractions, np.cumsum(c[[2, 0, 7, 1]] ** 2) / np.sum(c**2), rtol=1e-12)
    assert fractions[-1] == gradient_fraction_in_span(g, columns)


def test_a_nearly_dependent_column_adds_no_direction_below_the_rank_tolerance():
    q, c, g = gradient_in_eigenbasis()
    total = np.sum(c**2)
    dependent = np.column_stack([q[:, 0], q[:, 1], q[:, 0] + 1e-12 * q[:, 5]])
    np.testing.assert_allclose(gradient_fractions_in_leading_spans(g, dependent),
                               np.cumsum(c[[0, 1, 1]] ** 2 * [1, 1, 0]) / total, rtol=1e-12)
    duplicate_first = np.column_stack([q[:, 0], q[:, 0], q[:, 1]])  # Householder QR would lose q[:, 1] here
    np.testing.assert_allclose(gradient_fractions_in_leading_spans(g, duplicate_first),
                               np.cumsum(c[[0, 0, 1]] ** 2 * [1, 0, 1]) / total, rtol=1e-12)
    independent = np.column_stack([q[:, 0], q[:, 1], q[:, 0] + 1e-6 * q[:, 5]])
    assert gradient_fraction_in_span(g, independent) == pytest.approx(np.sum(c[[0, 1, 5]] ** 2) / total, rel=1e-6)


def test_fraction_in_ritz_vectors_matches_the_exact_one_within_the_davis_kahan_bound():
    a, eigenvalues, _, _ = three_outliers_eigh()
    q, c, g = gradient_in_eigenbasis()
    run = lanczos(a, num_steps=8, seed=4)  # short: residuals ~1e-5, far above rounding
    pairs = top_ritz_pairs(run.tridiag, run.vectors, 3, next_beta=run.residual_norm)
    # Davis-Kahan sin(Theta): ||P_Ritz - P_exact||_2 <= ||R||_F / (min Ritz value - top of the bulk).
    bound = np.linalg.norm(pairs.residual_bounds) / (pairs.values[-1] - eigenvalues[-4])
    difference = gradient_fraction_in_span(g, pairs.vectors) - np.sum(c[:3] ** 2) / np.sum(c**2)
    assert abs(difference) <= bound and bound < 1e-4


@pytest.mark.parametrize(
    "gradient, vectors, message",
    [
        (np.ones(4), np.eye(5)[:, :2], r"vectors must have shape \(n, K\) = \(4, K\)"),
        (np.ones(4), np.ones(4), r"vectors must have shape"),
        (np.ones((4, 1)), np.eye(4)[:, :1], r"gradient must have shape \(n,\)"),
        (np.zeros(4), np.eye(4)[:, :2], "gradient is zero"),
        (np.array([1.0, np.nan, 0, 0]), np.eye(4)[:, :2], "gradient has non-finite"),
        (np.ones(4), np.where(np.eye(4) == 1, np.nan, 0)[:, :2], "vectors has non-finite"),
        (np.ones(4), np.eye(4)[:, [0, 1]] * [1, 0], r"vectors has zero columns: \[1\]"),
    ],
)
def test_bad_gradient_input_is_refused_naming_the_problem(gradient, vectors, message):
    with pytest.raises(ValueError, match=message):
        gradient_fractions_in_leading_spans(gradient, vectors)
