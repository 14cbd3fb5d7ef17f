"""Ritz quadrature, smoothed densities and summaries, against closed forms and the paper's formula."""

from __future__ import annotations

import math

import numpy as np
import pytest

import hessflow.density as density_module
from hessflow.density import (
    density_from_ritz,
    density_from_tridiags,
    kernel_variance,
    pool_draws,
    ritz,
    smoothed_density_of_eigenvalues,
    spectral_wasserstein1,
    summarize,
)
from hessflow.lanczos import lanczos, start_vector


def random_tridiag(m, seed):
    rng = np.random.default_rng(seed)
    off = rng.uniform(0.1, 1.0, m - 1)
    return np.diag(rng.standard_normal(m)) + np.diag(off, 1) + np.diag(off, -1)


def symmetric_with_spectrum(eigenvalues, seed=0):
    eigenvalues = np.asarray(eigenvalues, dtype=np.float64)
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((eigenvalues.size,) * 2))
    a = (q * eigenvalues) @ q.T
    return (a + a.T) / 2


def normal_pdf(x, mean, variance):
    return np.exp(-((x - mean) ** 2) / (2 * variance)) / np.sqrt(2 * np.pi * variance)


def paper_density_loop(tridiags, sigma_squared, grid_len, grid_expand=0.01):
    """The paper code's eigv_to_density, transcribed as plain Python loops (ragged allowed)."""
    eig_vals, all_weights = [], []
    for t in tridiags:
        nodes, evecs = np.linalg.eigh(t)
        index = np.argsort(nodes)
        eig_vals.append(nodes[index])
        all_weights.append(evecs[:, index][0] ** 2)
    lambda_max = np.mean([max(v) for v in eig_vals]) + grid_expand
    lambda_min = np.mean([min(v) for v in eig_vals]) - grid_expand
    grids = np.linspace(lambda_min, lambda_max, num=grid_len)
    sigma = sigma_squared * max(1, (lambda_max - lambda_min))
    density_each_draw = np.zeros((len(tridiags), grid_len))
    for i in range(len(tridiags)):
        for j in range(grid_len):
            total = 0.0
            for value, weight in zip(eig_vals[i], all_weights[i]):
                total += weight * math.exp(-((value - grids[j]) ** 2) / (2.0 * sigma)) / math.sqrt(
                    2 * math.pi * sigma
                )
            density_each_draw[i, j] = total
    density = density_each_draw.mean(axis=0)
    density = density / (np.sum(density) * (grids[1] - grids[0]))
    return grids, density


def test_ritz_values_are_eigenvalues_of_the_tridiagonal():
    t = random_tridiag(30, seed=0)
    values, _ = ritz(t)
    np.testing.assert_allclose(values, np.linalg.eigvalsh(t), rtol=0, atol=1e-12)
    assert np.all(np.diff(values) > 0)


def test_ritz_weights_are_squared_first_eigenvector_components_and_sum_to_one():
    t = random_tridiag(30, seed=1)
    _, weights = ritz(t)
    _, eigenvectors = np.linalg.eigh(t)
    np.testing.assert_allclose(weights, eigenvectors[0, :] ** 2, atol=1e-12)
    assert weights.sum() == pytest.approx(1.0, abs=1e-13)


def test_ritz_of_two_by_two_matches_closed_form():
    a, b, c = 1.0, 0.5, -2.0
    values, weights = ritz(np.array([[a, b], [b, c]]))
    mean, radius = (a + c) / 2, math.hypot((a - c) / 2, b)
    expected_values = np.array([mean - radius, mean + radius])
    # Eigenvector for lambda is proportional to (b, lambda - a).
    expected_weights = b**2 / (b**2 + (expected_values - a) ** 2)
    np.testing.assert_allclose(values, expected_values, rtol=1e-14)
    np.testing.assert_allclose(weights, expected_weights, rtol=1e-13)


@pytest.mark.parametrize(
    "matrix, message",
    [
        (np.ones((3, 3)), "not tridiagonal"),
        (np.array([[1.0, 2.0], [0.5, 1.0]]), "not symmetric"),
        (np.ones((2, 3)), "square"),
        (np.array([[np.nan]]), "non-finite"),
    ],
)
def test_ritz_refuses_matrices_that_are_not_symmetric_tridiagonal(matrix, message):
    with pytest.raises(ValueError, match=message):
        ritz(matrix)


def test_density_integrates_to_one():
    tridiags = np.stack([random_tridiag(20, seed) for seed in range(4)])
    grid, density = density_from_tridiags(tridiags, sigma_squared=1e-3, grid_len=2000, grid_expand=0.5)
    assert grid.shape == density.shape == (2000,)
    assert np.sum(density) * (grid[1] - grid[0]) == pytest.approx(1.0, abs=1e-12)
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-6)
    assert np.all(density >= 0)


def test_diagonal_tridiagonals_give_gaussians_at_their_first_entries():
    # For T = diag(d) the eigenvectors are the unit vectors, so all weight sits
    # on d[0]; two draws put weight 1/2 on 1.0 and on 3.0.
    tridiags = [np.diag([1.0, 5.0]), np.diag([3.0, 7.0])]
    grid, density = density_from_tridiags(tridiags, sigma_squared=1e-2, grid_len=801, grid_expand=0.01)
    # Grid: mean of smallest Ritz values (1, 3) and of largest (5, 7), expanded.
    np.testing.assert_allclose([grid[0], grid[-1]], [2.0 - 0.01, 6.0 + 0.01], rtol=1e-15)
    variance = 1e-2 * (6.01 - 1.99)
    expected = 0.5 * normal_pdf(grid, 1.0, variance) + 0.5 * normal_pdf(grid, 3.0, variance)
    expected /= expected.sum() * (grid[1] - grid[0])
    np.testing.assert_allclose(density, expected, rtol=1e-12, atol=1e-300)


def test_kernel_variance_scales_with_range_only_above_one():
    assert kernel_variance(np.linspace(-0.2, 0.3, 5), 1e-5) == 1e-5
    assert kernel_variance(np.linspace(-1.0, 3.0, 5), 1e-5) == pytest.approx(4e-5, rel=1e-15)


def test_vectorized_density_equals_the_paper_loop():
    tridiags = np.stack([random_tridiag(12, seed) for seed in range(3)])
    grid, density = density_from_tridiags(tridiags, sigma_squared=1e-3, grid_len=150)
    paper_grid, paper_density = paper_density_loop(tridiags, sigma_squared=1e-3, grid_len=150)
    np.testing.assert_allclose(grid, paper_grid, rtol=1e-15)
    np.testing.assert_allclose(density, paper_density, rtol=1e-12, atol=1e-12 * paper_density.max())


def test_grid_chunking_does_not_change_the_density(monkeypatch):
    tridiags = np.stack([random_tridiag(12, seed) for seed in range(3)])
    _, unchunked = density_from_tridiags(tridiags, grid_len=500)
    monkeypatch.setattr(density_module, "_KERNEL_CHUNK_BYTES", 36 * 8 * 7)  # 7 grid points per chunk
    _, chunked = density_from_tridiags(tridiags, grid_len=500)
    np.testing.assert_allclose(chunked, unchunked, rtol=1e-14, atol=0)


def test_ragged_draws_after_early_stops_match_the_paper_loop():
    tridiags = [random_tridiag(m, seed) for seed, m in enumerate((5, 8, 3))]
    _, density = density_from_tridiags(tridiags, sigma_squared=1e-3, grid_len=120)
    _, paper_density = paper_density_loop(tridiags, sigma_squared=1e-3, grid_len=120)
    np.testing.assert_allclose(density, paper_density, rtol=1e-12, atol=1e-12 * paper_density.max())


def test_density_from_ritz_on_an_explicit_grid_matches_the_exact_smoothed_density():
    # m = n Lanczos with uniform weights would be exact; here a single draw's
    # quadrature of a diagonal operator is compared with the smoothed exact
    # measure it represents: nodes = eigenvalues, weights = squared start-vector components.
    eigenvalues = np.array([-1.0, 0.0, 0.5, 2.0])
    u = start_vector(4, 3)
    result = lanczos(lambda v: eigenvalues * v, 4, 4, seed=3)
    values, weights = ritz(result.tridiag)
    grid = np.linspace(-2.0, 3.0, 1001)
    _, density = density_from_ritz([values], [weights], sigma_squared=1e-3, grid=grid)
    variance = kernel_variance(np.array([-1.01, 2.01]), 1e-3)
    exact = smoothed_density_of_eigenvalues(eigenvalues, grid, variance, weights=u**2)
    np.testing.assert_allclose(density, exact, rtol=1e-9, atol=1e-12 * exact.max())


def test_smoothed_density_of_eigenvalues_has_uniform_weights():
    grid = np.linspace(-1.0, 2.0, 301)
    smoothed = smoothed_density_of_eigenvalues([0.0, 1.0], grid, 0.01)
    expected = normal_pdf(grid, 0.0, 0.01) + normal_pdf(grid, 1.0, 0.01)
    expected /= expected.sum() * (grid[1] - grid[0])
    np.testing.assert_allclose(smoothed, expected, rtol=1e-13)


def test_summary_of_uniform_measure_on_exact_eigenvalues():
    rng = np.random.default_rng(4)
    spectrum = np.concatenate([[5.0, -0.5], rng.uniform(-0.1, 0.1, 40), rng.uniform(0.2, 1.0, 18)])
    a = symmetric_with_spectrum(spectrum, seed=5)
    eigenvalues = np.linalg.eigvalsh(a)
    stats = summarize([eigenvalues], [np.full(60, 1 / 60)], dim=60, negative_threshold=1e-2)
    assert stats["trace"] == pytest.approx(np.trace(a), abs=1e-8)
    assert stats["lambda_max"] == pytest.approx(5.0, abs=1e-12)
    assert stats["lambda_min"] == pytest.approx(-0.5, abs=1e-12)
    assert stats["mean"] == pytest.approx(np.mean(spectrum), abs=1e-12)
    assert stats["std"] == pytest.approx(np.std(spectrum), abs=1e-12)
    cutoff = 1e-2 * 5.5
    assert stats["negative_mass"] == pytest.approx(np.mean(spectrum < -cutoff), abs=1e-12)
    assert stats["positive_mass"] == pytest.approx(np.mean(spectrum > cutoff), abs=1e-12)
    assert stats["num_draws"] == 1 and stats["num_steps"] == 60


def test_summary_of_a_full_lanczos_run_is_the_start_vectors_measure():
    # m = n: the quadrature is exact, weights (q_i . u)^2 on the eigenvalues.
    rng = np.random.default_rng(6)
    spectrum = np.concatenate([[4.0, -1.0], rng.uniform(-1e-3, 1e-3, 30), rng.uniform(0.1, 2.0, 28)])
    a = symmetric_with_spectrum(spectrum, seed=7)
    result = lanczos(lambda v: a @ v, 60, 60, seed=8)
    values, weights = ritz(result.tridiag)
    stats = summarize([values], [weights], dim=60)

    u = start_vector(60, 8)
    exact_values, eigenvectors = np.linalg.eigh(a)
    exact_weights = (eigenvectors.T @ u) ** 2
    cutoff = 1e-3 * (exact_values[-1] - exact_values[0])
    assert stats["trace"] == pytest.approx(60 * u @ a @ u, rel=1e-10)
    assert stats["lambda_max"] == pytest.approx(exact_values[-1], abs=1e-10)
    assert stats["lambda_min"] == pytest.approx(exact_values[0], abs=1e-10)
    assert stats["negative_mass"] == pytest.approx(exact_weights[exact_values < -cutoff].sum(), abs=1e-10)
    # The near-zero cluster is excluded: it would add weight of either sign.
    naive_negative_weight = weights[values < 0].sum()
    assert naive_negative_weight > stats["negative_mass"] + 0.1


def test_summary_averages_draws():
    values = [np.array([-1.0, 1.0]), np.array([-3.0, 0.0, 3.0])]
    weights = [np.array([0.5, 0.5]), np.array([0.25, 0.5, 0.25])]
    stats = summarize(values, weights, dim=10, negative_threshold=0.1)
    assert stats["lambda_max"] == 2.0 and stats["lambda_min"] == -2.0
    assert stats["trace"] == 0.0
    assert stats["std"] == pytest.approx(math.sqrt((1.0 + 4.5) / 2))
    assert stats["negative_mass"] == pytest.approx((0.5 + 0.25) / 2)
    assert stats["num_draws"] == 2 and stats["num_steps"] == 3


def test_pool_draws_weights_each_draw_equally():
    values, weights = pool_draws([[1.0, 2.0], [3.0]], [[0.5, 0.5], [1.0]])
    np.testing.assert_array_equal(values, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(weights, [0.25, 0.25, 0.5])


def test_wasserstein_distance_of_shifted_measures_is_the_shift():
    values = np.array([-1.0, 0.0, 2.0])
    weights = np.array([0.2, 0.5, 0.3])
    assert spectral_wasserstein1(values, weights, values + 0.25, weights) == pytest.approx(0.25, rel=1e-12)
    assert spectral_wasserstein1(values, weights, values, weights) == 0.0


def test_slq_measure_approaches_the_exact_spectrum():
    # Validation as in the workflow: SLQ with a few draws vs eigvalsh.
    rng = np.random.default_rng(9)
    spectrum = np.concatenate([[20.0, 12.0], rng.normal(0.0, 0.3, 298)])
    a = symmetric_with_spectrum(spectrum, seed=10)
    quadratures = [ritz(lanczos(lambda v: a @ v, 300, 40, seed=(0, draw)).tridiag) for draw in range(8)]
    values, weights = pool_draws(*zip(*quadratures))
    exact = np.linalg.eigvalsh(a)
    distance = spectral_wasserstein1(values, weights, exact, np.full(300, 1 / 300))
    # 0.048 observed; an error as large as the bulk's std (0.3) would be 0.33.
    assert distance < 0.1
    stats = summarize(*zip(*quadratures), dim=300)
    assert stats["lambda_max"] == pytest.approx(exact[-1], abs=1e-8)
