"""What a checkpoint's stats.json and density.npy hold besides the density: intervals and band over
draws, outliers, the gradient's share of the outliers' span, Lanczos health; and summary.csv's
columns of them. Checked on an explicit matrix with planted outliers against numpy."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from hessflow.lanczos import lanczos
from hessflow.reproduce import aggregate, density_and_stats, summary_html, summary_row, summary_table

DENSITY = {"sigma_squared": 1e-4, "grid_len": 400, "grid_expand": 0.01, "negative_threshold": 1e-3,
           "confidence_level": 0.9}
PLANTED = (12.0, 20.0, 30.0)


@functools.cache
def planted_draws(num_draws: int = 4):
    """200 bulk eigenvalues uniform in [-0.5, 1] and the outliers 12, 20, 30; 40-step draws."""
    rng = np.random.default_rng(3)
    spectrum = np.concatenate([rng.uniform(-0.5, 1.0, 200), PLANTED])
    q, _ = np.linalg.qr(rng.standard_normal((spectrum.size, spectrum.size)))
    a = (q * spectrum) @ q.T
    tridiags = [lanczos((a + a.T) / 2, num_steps=40, seed=(0, d)).tridiag for d in range(num_draws)]
    return spectrum, aggregate(tridiags)


def provenances(fractions):
    return [{"draw": d, "gradient_fractions": f, "health_warnings": []} for d, f in enumerate(fractions)]


def test_stats_count_the_planted_outliers_and_give_their_values():
    spectrum, (_, values, weights) = planted_draws()
    _, stats = density_and_stats(values, weights, spectrum.size, DENSITY)
    assert stats["outlier_count"] == 3
    np.testing.assert_allclose(stats["outliers"], sorted(PLANTED, reverse=True), rtol=1e-8)
    assert stats["bulk_edges"][1] < 1.0 + 1e-6 and stats["bulk_edges"][0] > -0.5 - 1e-6


def test_intervals_hold_the_estimate_and_are_student_t_over_the_draws_traces():
    spectrum, (_, values, weights) = planted_draws()
    _, stats = density_and_stats(values, weights, spectrum.size, DENSITY)
    traces = np.array(stats["per_draw"]["trace"])
    np.testing.assert_allclose(traces, spectrum.size * np.nansum(values * weights, axis=1), rtol=1e-12)
    from scipy import stats as scipy_stats
    half = scipy_stats.t.ppf(0.95, len(traces) - 1) * traces.std(ddof=1) / np.sqrt(len(traces))
    assert (stats["trace_lo"], stats["trace_hi"]) == pytest.approx((traces.mean() - half, traces.mean() + half))
    assert stats["confidence_level"] == 0.9
    for name in ("lambda_max", "lambda_min", "negative_mass"):
        assert stats[f"{name}_lo"] <= stats[name] <= stats[f"{name}_hi"], name


def test_density_carries_its_band_over_draws_around_it():
    spectrum, (_, values, weights) = planted_draws()
    density, _ = density_and_stats(values, weights, spectrum.size, DENSITY)
    grid, mean, lower, upper = density
    assert density.shape == (4, DENSITY["grid_len"])
    assert np.all(lower <= mean + 1e-12) and np.all(mean <= upper + 1e-12) and np.all(lower >= 0)
    assert np.any(upper - lower > 1e-3 * mean.max())  # four random draws do differ


def test_one_draw_gives_no_interval_and_a_band_of_the_density_itself():
    spectrum, (_, values, weights) = planted_draws()
    density, stats = density_and_stats(values[:1], weights[:1], spectrum.size, DENSITY)
    assert stats["trace_lo"] is None and stats["trace_hi"] is None
    np.testing.assert_array_equal(density[2], density[1])


def test_gradient_share_of_the_outliers_is_the_runs_fraction_at_the_outlier_count():
    spectrum, (_, values, weights) = planted_draws()
    fractions = [[0.5, 0.6, 0.7, 0.8], [0.3, 0.4, 0.5, 0.6]]
    _, stats = density_and_stats(values, weights, spectrum.size, DENSITY, provenances(fractions), gradient_k=10)
    assert stats["gradient_fraction_outliers"] == pytest.approx((0.7 + 0.5) / 2)  # k = 3 outliers
    assert stats["gradient_fraction_top_k"] == pytest.approx((0.8 + 0.6) / 2)  # k = 10, capped at 4 pairs
    _, stats = density_and_stats(values, weights, spectrum.size, DENSITY)
    assert stats["gradient_fraction_outliers"] is None


def test_health_warnings_of_every_run_are_gathered_by_run():
    spectrum, (_, values, weights) = planted_draws()
    runs = [{"draw": 0, "health_warnings": []}, {"draw": "basis", "health_warnings": ["orthogonality lost"]}]
    _, stats = density_and_stats(values, weights, spectrum.size, DENSITY, runs)
    assert stats["health_warnings"] == ["basis run: orthogonality lost"]


def test_summary_has_the_intervals_outliers_gradient_shares_and_warnings_and_renders_as_html():
    spectrum, (_, values, weights) = planted_draws()
    _, stats = density_and_stats(values, weights, spectrum.size, DENSITY, provenances([[0.5, 0.6, 0.7]]))
    evaluation = {"train_loss": 1.0, "test_loss": 1.1, "train_accuracy": 0.5, "test_accuracy": 0.4}
    row = summary_row(10, stats, evaluation, {"loss": 1.0, "gradient_norm": 0.1})
    assert (row["trace_lo"], row["trace_hi"], row["outlier_count"]) == (stats["trace_lo"], stats["trace_hi"], 3)
    assert row["gradient_fraction_outliers"] == pytest.approx(0.7) and row["lanczos_warnings"] == 0
    html = summary_html(summary_table([row]))
    assert html.count("<table") == 1 and "<th>trace_lo</th>" in html and "<th>gradient_fraction_top_k</th>" in html
