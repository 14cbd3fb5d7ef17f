"""The top Ritz pairs artifact (``spectrum.top_k``) of the small run, against numpy.

``spectrum/hessian/all/step_20/top_pairs.npz`` holds each draw's top-k Ritz pairs from its
tridiagonal and Lanczos vectors: the values must be the top eigenvalues of ``T`` (numpy's
``eigvalsh``), the vectors ``V s_i`` for numpy's eigenvectors ``s_i`` (up to sign) and
orthonormal, and the bounds ``|b_m s_i[m-1]|`` with ``b_m`` from the draw's provenance.
"""

import json

import numpy as np
import pytest

from small_run import SMALL_CONFIG, baseline, results

pytestmark = pytest.mark.slow  # the small run (shared with test_reruns, test_reproduce)

STEP, K = SMALL_CONFIG["spectrum"]["steps"][-1], SMALL_CONFIG["spectrum"]["top_k"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return results(baseline(tmp_path_factory))


def test_top_pairs_are_the_top_eigenpairs_of_each_draws_tridiagonal(run):
    pairs = np.load(run / f"spectrum/hessian/all/step_{STEP}/top_pairs.npz")
    draws = SMALL_CONFIG["lanczos"]["draws"]
    assert pairs["values"].shape == (draws, K) and pairs["residual_bounds"].shape == (draws, K)
    for draw in range(draws):
        lanczos = run / f"lanczos/hessian/all/step_{STEP}"
        tridiag, basis = np.load(lanczos / f"tridiag_{draw}.npy"), np.load(lanczos / f"lanczos_vec_{draw}.npy")
        theta, s = np.linalg.eigh(tridiag)
        theta, s = theta[::-1][:K], s[:, ::-1][:, :K]
        np.testing.assert_allclose(pairs["values"][draw], theta, rtol=1e-12)
        vectors = pairs["vectors"][draw]
        assert vectors.shape == (basis.shape[0], K)
        np.testing.assert_allclose(np.abs(vectors.T @ (basis @ s)), np.eye(K), atol=1e-10)  # V s_i up to sign
        np.testing.assert_allclose(vectors.T @ vectors, np.eye(K), atol=1e-10)
        beta = json.loads((lanczos / f"provenance_{draw}.json").read_text())["residual_norm"]
        np.testing.assert_allclose(pairs["residual_bounds"][draw], np.abs(beta * s[-1]), rtol=1e-10)
