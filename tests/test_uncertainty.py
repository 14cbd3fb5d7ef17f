"""Uncertainty over draws: coverage against an exact spectrum, and the intervals' and bands' rules."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import scipy.stats

from hessflow.density import (
    density_from_ritz,
    kernel_variance,
    ritz,
    smoothed_density_of_eigenvalues,
    summarize,
)
from hessflow.lanczos import lanczos
from hessflow.uncertainty import (
    INTERVAL_METHODS,
    STATISTICS,
    bootstrap_resamples,
    density_band,
    per_draw_densities,
    per_draw_statistics,
    statistic_intervals,
)

# The coverage experiment: a 300 x 300 matrix with a bulk (standard normal quantiles) and three
# outliers in a fixed random eigenbasis; 60 Lanczos steps per draw, so the quadrature integrates
# the kernel (standard deviation ~0.48) almost exactly and the bulk density is unbiased (relative
# bias < 1e-3 measured, against a per-draw spread of 8-9 %). The outliers make the per-draw trace
# skewed (skewness ~1), as a network Hessian's few large eigenvalues do.
DIM, STEPS, SIGMA_SQUARED, GRID_LEN = 300, 60, 0.01, 200
REPETITIONS, LEVEL = 200, 0.95
# Nominal +- 3 binomial standard deviations of a coverage rate measured over REPETITIONS
# independent repetitions: [0.904, 0.996].
COVERAGE_TOLERANCE = 3 * math.sqrt(LEVEL * (1 - LEVEL) / REPETITIONS)


def outlier_matrix():
    bulk = scipy.stats.norm.ppf((np.arange(DIM - 3) + 0.5) / (DIM - 3))
    eigenvalues = np.concatenate([bulk, [8.0, 12.0, 20.0]])
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((DIM, DIM)))
    a = (q * eigenvalues) @ q.T
    return (a + a.T) / 2


@functools.cache
def coverage_runs(num_draws):
    """REPETITIONS independent checkpoints of ``num_draws`` draws each, and the exact eigenvalues."""
    a = outlier_matrix()
    runs = []
    for repetition in range(REPETITIONS):
        quadratures = [
            ritz(lanczos(a, num_steps=STEPS, seed=(num_draws, repetition, draw), keep_vectors=False).tridiag)
            for draw in range(num_draws)
        ]
        runs.append((np.array([v for v, _ in quadratures]), np.array([w for _, w in quadratures])))
    return runs, np.linalg.eigh(a)[0]


def trace_coverage(runs, exact_eigenvalues, method):
    covered = []
    for repetition, (values, weights) in enumerate(runs):
        lo, hi = statistic_intervals(values, weights, DIM, level=LEVEL, method=method, seed=repetition)["trace"]
        covered.append(lo <= exact_eigenvalues.sum() <= hi)
    return np.mean(covered)


@pytest.mark.parametrize("num_draws", [3, 5])
def test_t_interval_covers_the_exact_trace_at_the_stated_level(num_draws):
    runs, exact_eigenvalues = coverage_runs(num_draws)
    coverage = trace_coverage(runs, exact_eigenvalues, "t")
    assert abs(coverage - LEVEL) <= COVERAGE_TOLERANCE, coverage


@pytest.mark.parametrize("num_draws", [3, 5])
def test_t_band_covers_the_exact_smoothed_bulk_density_at_the_stated_level(num_draws):
    runs, exact_eigenvalues = coverage_runs(num_draws)
    covered = []
    for values, weights in runs:
        grid, densities = per_draw_densities(values, weights, sigma_squared=SIGMA_SQUARED, grid_len=GRID_LEN)
        exact = smoothed_density_of_eigenvalues(exact_eigenvalues, grid, kernel_variance(grid, SIGMA_SQUARED))
        # 25 points in the bulk, |t| <= 1.5, where the exact density is at least a third of its peak.
        bulk = np.flatnonzero(np.abs(grid) <= 1.5)
        points = bulk[np.linspace(0, bulk.size - 1, 25).astype(int)]
        lo, hi = density_band(densities, level=LEVEL)
        covered.append(np.mean((lo[points] <= exact[points]) & (exact[points] <= hi[points])))
    # The mean over correlated points of one repetition varies at most as one point does, so the
    # binomial range of REPETITIONS trials still bounds it.
    assert abs(np.mean(covered) - LEVEL) <= COVERAGE_TOLERANCE, np.mean(covered)


def test_percentile_bootstrap_under_covers_the_exact_trace_with_three_draws():
    # Why it is not the default: its 10 distinct resamples span the three draws' range, which holds
    # the mean 3/4 of the time for a symmetric per-draw distribution (0.74 over 3,333 checkpoints in
    # the study of hessflow.uncertainty; 0.67 over these 200).
    runs, exact_eigenvalues = coverage_runs(3)
    coverage = trace_coverage(runs, exact_eigenvalues, "percentile")
    assert coverage < LEVEL - COVERAGE_TOLERANCE, coverage


def random_draws(num_draws, steps=12, seed=0):
    """Ritz values and weights of ``num_draws`` Lanczos draws on a small random symmetric matrix."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((40, 40))
    a = (a + a.T) / 2
    quadratures = [
        ritz(lanczos(a, num_steps=steps, seed=(seed, draw), keep_vectors=False).tridiag) for draw in range(num_draws)
    ]
    return np.array([v for v, _ in quadratures]), np.array([w for _, w in quadratures])


def test_per_draw_statistics_are_the_summaries_of_single_draws():
    values, weights = random_draws(4)
    statistics = per_draw_statistics(values, weights, 40, negative_threshold=0.05)
    assert set(statistics) == set(STATISTICS)
    for draw in range(4):
        alone = summarize([values[draw]], [weights[draw]], 40, negative_threshold=0.05)
        for name in STATISTICS:
            assert statistics[name][draw] == alone[name]


def test_pooled_trace_and_extremes_are_means_of_the_per_draw_values():
    values, weights = random_draws(5)
    statistics, pooled = per_draw_statistics(values, weights, 40), summarize(values, weights, 40)
    for name in ("trace", "mean", "lambda_max", "lambda_min"):
        assert statistics[name].mean() == pytest.approx(pooled[name], rel=1e-12)
    np.testing.assert_allclose(statistics["trace"], 40 * np.sum(values * weights, axis=1), rtol=1e-12)


def test_nan_padding_of_an_early_stopped_draw_is_dropped():
    values, weights = random_draws(3)
    # aggregate()'s layout for a draw that stopped after 7 steps: a NaN tail with zero weights.
    off_diagonal = np.full(6, 0.5)
    short_values, short_weights = ritz(np.diag(np.arange(7.0)) + np.diag(off_diagonal, 1) + np.diag(off_diagonal, -1))
    padded_values = np.vstack([values, np.concatenate([short_values, np.full(5, np.nan)])])
    padded_weights = np.vstack([weights, np.concatenate([short_weights, np.zeros(5)])])
    ragged_values, ragged_weights = [*values, short_values], [*weights, short_weights]
    padded = per_draw_statistics(padded_values, padded_weights, 40)
    ragged = per_draw_statistics(ragged_values, ragged_weights, 40)
    for name in STATISTICS:
        np.testing.assert_array_equal(padded[name], ragged[name])
    padded_intervals = statistic_intervals(padded_values, padded_weights, 40)
    assert padded_intervals == statistic_intervals(ragged_values, ragged_weights, 40)


def test_t_interval_of_a_mean_statistic_is_mean_plus_minus_t_standard_error():
    values, weights = random_draws(5)
    traces = 40 * np.sum(values * weights, axis=1)
    half_width = scipy.stats.t.ppf(0.95, df=4) * traces.std(ddof=1) / math.sqrt(5)
    lo, hi = statistic_intervals(values, weights, 40, level=0.9, method="t")["trace"]
    assert lo == pytest.approx(traces.mean() - half_width, rel=1e-12)
    assert hi == pytest.approx(traces.mean() + half_width, rel=1e-12)


def test_percentile_interval_recomputes_the_pooled_statistic_on_each_resample():
    values, weights = random_draws(4)
    first_moments, second_moments = np.sum(values * weights, axis=1), np.sum(values**2 * weights, axis=1)
    resamples = np.random.default_rng(7).integers(0, 4, size=(500, 4))
    # The pooled std combines the resample's mean moments; it is not a mean of per-draw stds.
    stds = np.sqrt(second_moments[resamples].mean(axis=1) - first_moments[resamples].mean(axis=1) ** 2)
    intervals = statistic_intervals(values, weights, 40, method="percentile", num_resamples=500, seed=7)
    np.testing.assert_allclose(intervals["std"], np.quantile(stds, [0.025, 0.975]), rtol=1e-12)
    np.testing.assert_allclose(
        intervals["trace"], np.quantile(40 * first_moments[resamples].mean(axis=1), [0.025, 0.975]), rtol=1e-12
    )


def test_bca_interval_matches_efrons_formula_for_the_trace():
    values, weights = random_draws(6)
    traces = 40 * np.sum(values * weights, axis=1)
    # Sorted rows: the resamples that hold every draw once then equal the estimate exactly, a tie
    # that BCa counts half below and half above.
    resamples = np.sort(np.random.default_rng(3).integers(0, 6, size=(1000, 6)), axis=1)
    resampled = traces[resamples].mean(axis=1)
    estimate = traces.mean()
    bias = scipy.stats.norm.ppf(np.mean(resampled < estimate) + 0.5 * np.mean(resampled == estimate))
    jackknife = (traces.sum() - traces) / 5
    deviations = jackknife.mean() - jackknife
    acceleration = np.sum(deviations**3) / (6 * np.sum(deviations**2) ** 1.5)
    z = scipy.stats.norm.ppf([0.025, 0.975])
    probabilities = scipy.stats.norm.cdf(bias + (bias + z) / (1 - acceleration * (bias + z)))
    interval = statistic_intervals(values, weights, 40, method="bca", num_resamples=1000, seed=3)["trace"]
    np.testing.assert_allclose(interval, [np.quantile(resampled, p) for p in probabilities], rtol=1e-12)


@pytest.mark.parametrize("method", INTERVAL_METHODS)
def test_every_interval_contains_the_pooled_estimate(method):
    values, weights = random_draws(5)
    pooled = summarize(values, weights, 40)
    for name, (lo, hi) in statistic_intervals(values, weights, 40, method=method).items():
        assert lo <= pooled[name] <= hi, name


def densities_of(num_draws, seed=0):
    values, weights = random_draws(num_draws, seed=seed)
    return per_draw_densities(values, weights, sigma_squared=1e-3, grid_len=300)


def test_per_draw_densities_average_to_the_pooled_density():
    values, weights = random_draws(4)
    grid, densities = per_draw_densities(values, weights, sigma_squared=1e-3, grid_len=300)
    pooled_grid, pooled = density_from_ritz(values, weights, sigma_squared=1e-3, grid_len=300)
    np.testing.assert_array_equal(grid, pooled_grid)
    np.testing.assert_allclose(densities.mean(axis=0), pooled, rtol=0, atol=1e-13 * pooled.max())
    # Each row integrates to about 1: the draws' extreme Ritz values differ, so their mass outside
    # the grid of the draw-averaged extremes differs too.
    np.testing.assert_allclose(np.sum(densities, axis=1) * (grid[1] - grid[0]), 1.0, atol=0.05)


@pytest.mark.parametrize("method", ["t", "percentile"])
def test_band_contains_the_mean_density(method):
    _, densities = densities_of(4)
    lo, hi = density_band(densities, method=method)
    mean = densities.mean(axis=0)
    assert lo.shape == hi.shape == mean.shape
    assert np.all(lo <= mean + 1e-12 * mean.max()) and np.all(mean <= hi + 1e-12 * mean.max())


@pytest.mark.parametrize("method", INTERVAL_METHODS)
def test_band_of_identical_draws_has_zero_width(method):
    _, densities = densities_of(1)
    lo, hi = density_band(np.repeat(densities, 3, axis=0), method=method)
    np.testing.assert_array_equal(lo, densities[0])
    np.testing.assert_array_equal(hi, densities[0])


@pytest.mark.parametrize("method", INTERVAL_METHODS)
def test_higher_level_band_and_interval_contain_the_lower_level_ones(method):
    _, densities = densities_of(5)
    lo_90, hi_90 = density_band(densities, level=0.9, method=method)
    lo_99, hi_99 = density_band(densities, level=0.99, method=method)
    assert np.all(lo_99 <= lo_90) and np.all(hi_90 <= hi_99)
    values, weights = random_draws(5)
    narrow = statistic_intervals(values, weights, 40, level=0.9, method=method)
    wide = statistic_intervals(values, weights, 40, level=0.99, method=method)
    for name in STATISTICS:
        assert wide[name][0] <= narrow[name][0] and narrow[name][1] <= wide[name][1], name


def test_t_band_is_pointwise_mean_plus_minus_t_standard_error():
    _, densities = densities_of(3)
    half_width = scipy.stats.t.ppf(0.975, df=2) * densities.std(axis=0, ddof=1) / math.sqrt(3)
    lo, hi = density_band(densities)
    scale = densities.max()
    np.testing.assert_allclose(lo, densities.mean(axis=0) - half_width, rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(hi, densities.mean(axis=0) + half_width, rtol=0, atol=1e-12 * scale)


def test_seeded_bootstrap_is_reproducible_and_the_seed_matters():
    values, weights = random_draws(5)
    _, densities = densities_of(5)
    np.testing.assert_array_equal(bootstrap_resamples(5, 100, seed=1), bootstrap_resamples(5, 100, seed=1))
    first = statistic_intervals(values, weights, 40, method="percentile", seed=1)
    assert statistic_intervals(values, weights, 40, method="percentile", seed=1) == first
    assert statistic_intervals(values, weights, 40, method="percentile", seed=2) != first
    np.testing.assert_array_equal(
        density_band(densities, method="percentile", seed=1), density_band(densities, method="percentile", seed=1)
    )
    assert not np.array_equal(
        density_band(densities, method="percentile", seed=1), density_band(densities, method="percentile", seed=2)
    )


@pytest.mark.parametrize("level", [0.0, 1.0, 1.5, -0.1, math.nan, True, "0.95"])
def test_level_outside_the_open_unit_interval_is_refused(level):
    values, weights = random_draws(3)
    _, densities = densities_of(3)
    with pytest.raises(ValueError, match="level must be"):
        statistic_intervals(values, weights, 40, level=level)
    with pytest.raises(ValueError, match="level must be"):
        density_band(densities, level=level)


def test_fewer_than_two_draws_are_refused():
    values, weights = random_draws(1)
    _, densities = densities_of(1)
    with pytest.raises(ValueError, match="at least 2 draws; got 1"):
        statistic_intervals(values, weights, 40)
    with pytest.raises(ValueError, match="at least 2 draws; got 1"):
        density_band(densities)


def test_nan_is_refused_where_it_is_not_padding():
    values, weights = random_draws(3)
    _, densities = densities_of(3)
    broken = densities.copy()
    broken[1, 10] = np.nan
    with pytest.raises(ValueError, match="per_draw_density has NaN"):
        density_band(broken)
    inner_nan = values.copy()
    inner_nan[0, 3] = np.nan
    with pytest.raises(ValueError, match="draw 0: the values have NaN"):
        statistic_intervals(inner_nan, weights, 40)
    # A NaN tail that still carries weight is not padding either.
    weighted_tail = values.copy()
    weighted_tail[2, -1] = np.nan
    with pytest.raises(ValueError, match="draw 2: the values have NaN"):
        per_draw_statistics(weighted_tail, weights, 40)
    nan_weights = weights.copy()
    nan_weights[1, 0] = np.nan
    with pytest.raises(ValueError, match="draw 1: the weights have NaN"):
        per_draw_statistics(values, nan_weights, 40)


def test_unknown_method_and_bad_resample_counts_are_refused():
    values, weights = random_draws(3)
    with pytest.raises(ValueError, match="method must be one of 't', 'percentile', 'bca'; got 'studentized'"):
        statistic_intervals(values, weights, 40, method="studentized")
    with pytest.raises(ValueError, match="num_resamples must be a positive int"):
        statistic_intervals(values, weights, 40, method="percentile", num_resamples=0)
