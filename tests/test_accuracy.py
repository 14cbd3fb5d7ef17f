"""End to end: SLQ on a trained digits MLP against its exact Hessian spectrum.

The model (2,410 parameters) is small enough for the explicit Hessian
(`reference.exact_hessian`, reverse-over-reverse) and `numpy.linalg.eigvalsh`;
everything hessflow computes — training, the forward-over-reverse operator,
Lanczos, Ritz quadrature, smoothing, statistics — is compared against it.
Measured here (m = 90, 40 draws): density L1 0.0027, W1/std 0.0065, negative
mass 0.036 vs 0.032 exact (the naive weight of negative Ritz values: 0.12 vs
an exact negative fraction of 0.26), trace 3.575 vs 3.581.
"""

import keras
import numpy as np
import pytest

from hessflow import data, models, training
from hessflow.density import (
    density_from_ritz,
    kernel_variance,
    pool_draws,
    ritz,
    smoothed_density_of_eigenvalues,
    spectral_wasserstein1,
    summarize,
)
from hessflow.hvp import HessianOperator
from hessflow.lanczos import lanczos
from reference import exact_hessian

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
NUM_STEPS, NUM_DRAWS = 90, 40

pytestmark = pytest.mark.slow  # trains 560 steps, then 40 draws of 90 float64 HVPs


@pytest.fixture(scope="module")
def spectra():
    images, labels = data.load_digits()
    model = models.mlp(hidden=(32,), activation="tanh", dtype="float64", seed=0)
    training.train(model, images, labels, num_steps=560, batch_size=64, learning_rate=0.1, momentum=0.9,
                   seed=0, log=lambda _: None)
    x = data.standardize_per_image(images, dtype=np.float64)
    batches = data.fixed_batches(x, labels, 500)
    op = HessianOperator(model, batches, LOSS, batch_norm="train", dtype="float64")
    eigenvalues = np.linalg.eigvalsh(exact_hessian(model, batches, LOSS.call, training=True))
    runs = [lanczos(op.matvec, op.dim, NUM_STEPS, seed=(0, 560, draw), keep_vectors=False) for draw in range(NUM_DRAWS)]
    values, weights = zip(*(ritz(run.tridiag) for run in runs))
    return {"dim": op.dim, "exact": eigenvalues, "values": values, "weights": weights}


def test_model_is_small_enough_for_an_exact_hessian(spectra):
    assert spectra["dim"] == 2410 == spectra["exact"].size


def test_extreme_ritz_values_match_the_exact_extreme_eigenvalues(spectra):
    exact = spectra["exact"]
    for values in spectra["values"]:
        assert values[-1] == pytest.approx(exact[-1], rel=1e-6)
        assert values[0] == pytest.approx(exact[0], rel=1e-6)


def test_slq_density_is_close_to_the_exact_spectrum_smoothed_with_the_same_kernel(spectra):
    grid, density = density_from_ritz(spectra["values"], spectra["weights"])
    exact_density = smoothed_density_of_eigenvalues(spectra["exact"], grid, kernel_variance(grid, 1e-5))
    l1_distance = np.sum(np.abs(density - exact_density)) * (grid[1] - grid[0])
    assert l1_distance < 0.004


def test_slq_spectral_measure_is_close_to_the_exact_one_in_wasserstein_distance(spectra):
    # Relative to the spectrum's standard deviation: outliers make the range
    # large and a W1/range figure meaninglessly small.
    exact = spectra["exact"]
    nodes, node_weights = pool_draws(spectra["values"], spectra["weights"])
    w1 = spectral_wasserstein1(nodes, node_weights, exact, np.full(exact.size, 1 / exact.size))
    assert w1 / exact.std() < 0.008


def test_thresholded_negative_mass_is_close_to_the_exact_mass_below_the_threshold(spectra):
    exact = spectra["exact"]
    stats = summarize(spectra["values"], spectra["weights"], spectra["dim"])
    exact_mass = np.mean(exact < -1e-3 * (exact[-1] - exact[0]))
    assert exact_mass > 0.01  # the test has something to resolve
    assert abs(stats["negative_mass"] - exact_mass) < 0.2 * exact_mass


def test_plain_weight_of_negative_ritz_values_misses_the_exact_negative_fraction(spectra):
    # Why summarize() thresholds: a third of the eigenvalues lie within
    # 1e-4·range of zero, where SLQ cannot resolve signs.
    exact = spectra["exact"]
    cutoff = 1e-3 * (exact[-1] - exact[0])
    assert np.mean(np.abs(exact) < 0.1 * cutoff) > 0.3
    naive = np.mean([w[v < 0].sum() for v, w in zip(spectra["values"], spectra["weights"])])
    naive_error = abs(naive - np.mean(exact < 0))
    thresholded_error = abs(summarize(spectra["values"], spectra["weights"], spectra["dim"])["negative_mass"]
                            - np.mean(exact < -cutoff))
    assert naive_error > 5 * thresholded_error


def test_trace_estimate_matches_the_exact_trace(spectra):
    stats = summarize(spectra["values"], spectra["weights"], spectra["dim"])
    assert stats["trace"] == pytest.approx(spectra["exact"].sum(), rel=0.03)
