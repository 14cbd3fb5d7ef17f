"""Spectral densities from Lanczos tridiagonals (stochastic Lanczos quadrature).

For a symmetric ``A`` (dim x dim) with eigenpairs ``(lambda_i, q_i)`` and a unit
start vector ``v``, the *spectral measure seen from v* is
``mu_v = sum_i (q_i^T v)^2 delta(lambda_i)``. ``m`` Lanczos steps from ``v``
give ``T`` (m x m); its eigenvalues ``theta_k`` (Ritz values) and the squared
first components ``w_k = s_k[0]^2`` of its eigenvectors are the nodes and
weights of the ``m``-point Gauss quadrature of ``mu_v``: exact for polynomials
of degree ``< 2m``. With ``v`` uniform on the sphere, ``E[mu_v]`` is the
eigenvalue density ``(1/dim) sum_i delta(lambda_i)``; averaging several draws
reduces the variance. The smoothed density is

    phi(t) = mean over draws of  sum_k w_k N(t; theta_k, variance),

evaluated on a uniform grid and normalized to integrate to 1.

Definitions follow the paper code (google/spectral-density, ``density.py``:
``tridiag_to_eigv`` and ``eigv_to_density``) so that densities compare:

* grid: ``grid_len`` points, ``linspace(lambda_min, lambda_max)``, where
  ``lambda_max`` is the mean over draws of each draw's largest Ritz value plus
  ``grid_expand`` and ``lambda_min`` the mean of the smallest minus it;
* kernel: Gaussian of **variance** (not standard deviation)
  ``sigma_squared * max(1, lambda_max - lambda_min)`` (the expanded range);
* normalization: ``density / (sum(density) * (grid[1] - grid[0]))``.

The only deliberate difference: draws of different length (after an early
Lanczos stop) are accepted as ragged lists.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.stats

__all__ = [
    "density_from_ritz",
    "density_from_tridiags",
    "density_grid",
    "gaussian_mixture",
    "kernel_variance",
    "pool_draws",
    "ritz",
    "smoothed_density_of_eigenvalues",
    "spectral_wasserstein1",
    "summarize",
    "tridiagonal_bands",
]

#: Largest temporary (nodes x grid chunk) float64 kernel matrix, in bytes.
_KERNEL_CHUNK_BYTES = 100 * 2**20

# Relative tolerance for sub- vs super-diagonal in ritz(): tridiagonals written
# by hessflow are exactly symmetric; this admits ones assembled elsewhere
# (e.g. the paper code's float32 -> float64 round trips).
_SYMMETRY_RTOL = 1e-12


def tridiagonal_bands(tridiag: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The diagonal and the off-diagonal of a Lanczos tridiagonal, checked.

    Args:
        tridiag: array_like, shape (m, m), m >= 1.

    Returns:
        diagonal: float64 (m,); off_diagonal: float64 (m - 1,).

    Raises:
        ValueError: ``tridiag`` is not a finite, square, symmetric tridiagonal matrix.
    """
    t = np.asarray(tridiag, dtype=np.float64)
    if t.ndim != 2 or t.shape[0] != t.shape[1] or t.shape[0] == 0:
        raise ValueError(f"tridiag must be a non-empty square matrix; got shape {t.shape}")
    if not np.isfinite(t).all():
        raise ValueError("tridiag has non-finite entries (NaN or Inf)")
    diagonal, upper, lower = np.diag(t), np.diag(t, 1), np.diag(t, -1)
    outside_band = t - np.diag(diagonal) - np.diag(upper, 1) - np.diag(lower, -1)
    if np.any(outside_band != 0.0):
        raise ValueError("tridiag is not tridiagonal: it has nonzero entries outside the three central diagonals")
    if np.any(np.abs(upper - lower) > _SYMMETRY_RTOL * np.max(np.abs(t))):
        raise ValueError("tridiag is not symmetric: its sub- and super-diagonals differ")
    return diagonal, upper


def ritz(tridiag: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gauss quadrature nodes and weights of a Lanczos tridiagonal.

    Args:
        tridiag: array_like, shape (m, m); the symmetric tridiagonal ``T`` from ``m`` Lanczos
            steps.

    Returns:
        ritz_values: float64 (m,), the eigenvalues of ``T``, ascending.
        ritz_weights: float64 (m,), the squared first components of the corresponding unit
            eigenvectors of ``T`` (the start vector's weight on each Ritz pair); non-negative,
            summing to 1 up to rounding.

    Raises:
        ValueError: ``tridiag`` is not a finite, square, symmetric tridiagonal matrix.
    """
    diagonal, upper = tridiagonal_bands(tridiag)
    ritz_values, eigenvectors = scipy.linalg.eigh_tridiagonal(diagonal, upper)
    ritz_weights = eigenvectors[0, :] ** 2
    return ritz_values, ritz_weights


def _as_draw_list(arrays, name: str) -> list[np.ndarray]:
    """A (draws, m) array or a list of (m_i,) arrays, as a list of finite 1-D float64 arrays."""
    draws = [np.asarray(a, dtype=np.float64) for a in arrays]
    if not draws:
        raise ValueError(f"{name} is empty: need at least one draw")
    for i, a in enumerate(draws):
        if a.ndim != 1 or a.size == 0:
            raise ValueError(f"{name}[{i}] must be a non-empty 1-D array; got shape {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError(f"{name}[{i}] has non-finite values")
    return draws


def _check_ritz_lists(values_list, weights_list) -> tuple[list[np.ndarray], list[np.ndarray]]:
    values = _as_draw_list(values_list, "values_list")
    weights = _as_draw_list(weights_list, "weights_list")
    if len(values) != len(weights):
        raise ValueError(f"{len(values)} draws of values but {len(weights)} of weights")
    for i, (v, w) in enumerate(zip(values, weights)):
        if v.shape != w.shape:
            raise ValueError(f"draw {i}: values shape {v.shape} != weights shape {w.shape}")
    return values, weights


def pool_draws(values_list, weights_list) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate per-draw quadratures into one measure, each draw weighted 1/draws.

    ``values_list``, ``weights_list``: sequences of (m_i,) arrays (ragged
    allowed). Returns ``(values, weights)``, both shape (sum m_i,), float64;
    the pooled weights sum to the mean of the per-draw weight sums (1).
    """
    values, weights = _check_ritz_lists(values_list, weights_list)
    num_draws = len(values)
    return np.concatenate(values), np.concatenate(weights) / num_draws


def density_grid(values_list, grid_len: int = 10_000, grid_expand: float = 0.01) -> np.ndarray:
    """The paper's evaluation grid: shape (grid_len,), float64, uniform.

    From ``mean_d(min_k theta_dk) - grid_expand`` to
    ``mean_d(max_k theta_dk) + grid_expand`` (means over draws of each draw's
    extreme Ritz values; eigenvalue units).
    """
    values = _as_draw_list(values_list, "values_list")
    if not (isinstance(grid_len, (int, np.integer)) and grid_len >= 2):
        raise ValueError(f"grid_len must be an int >= 2; got {grid_len!r}")
    if not np.isfinite(grid_expand):
        raise ValueError(f"grid_expand must be finite; got {grid_expand!r}")
    lambda_max = np.mean([v.max() for v in values]) + grid_expand
    lambda_min = np.mean([v.min() for v in values]) - grid_expand
    if not lambda_max > lambda_min:
        raise ValueError(
            f"empty grid range [{lambda_min}, {lambda_max}]: all Ritz values coincide; use grid_expand > 0"
        )
    return np.linspace(lambda_min, lambda_max, num=grid_len)


def kernel_variance(grid: np.ndarray, sigma_squared: float) -> float:
    """Absolute Gaussian-kernel variance of the paper: ``sigma_squared * max(1, grid range)``.

    The range is ``grid[-1] - grid[0]`` (= ``lambda_max - lambda_min`` including
    ``grid_expand``, as in the paper code); eigenvalue units squared.
    """
    if not (sigma_squared > 0 and np.isfinite(sigma_squared)):
        raise ValueError(f"sigma_squared must be finite and > 0; got {sigma_squared!r}")
    return float(sigma_squared * max(1.0, grid[-1] - grid[0]))


def gaussian_mixture(nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, variance: float) -> np.ndarray:
    """``sum_k weights[k] * N(grid; nodes[k], variance)``, unnormalized, shape (grid_len,).

    ``nodes``, ``weights``: shape (K,); ``grid``: shape (G,); ``variance`` > 0
    (absolute). Vectorized as a (K, chunk) kernel matrix times the weights,
    with grid chunks sized so the matrix stays under ~100 MB.
    """
    nodes = np.asarray(nodes, dtype=np.float64).ravel()
    weights = np.asarray(weights, dtype=np.float64).ravel()
    grid = np.asarray(grid, dtype=np.float64)
    if nodes.shape != weights.shape:
        raise ValueError(f"nodes shape {nodes.shape} != weights shape {weights.shape}")
    if not variance > 0:
        raise ValueError(f"variance must be > 0; got {variance!r}")
    normalization = 1.0 / np.sqrt(2.0 * np.pi * variance)
    chunk = max(1, _KERNEL_CHUNK_BYTES // (8 * max(1, nodes.size)))
    mixture = np.empty(grid.shape)
    for start in range(0, grid.size, chunk):
        points = grid[start : start + chunk]
        kernel = np.exp(-((points[None, :] - nodes[:, None]) ** 2) / (2.0 * variance))
        mixture[start : start + chunk] = normalization * (weights @ kernel)
    return mixture


def _normalize_on_grid(density: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Scale to unit Riemann sum ``sum(density) * dx``, as the paper code does."""
    spacing = grid[1] - grid[0]
    return density / (np.sum(density) * spacing)


def _check_uniform_grid(grid) -> np.ndarray:
    grid = np.asarray(grid, dtype=np.float64)
    if grid.ndim != 1 or grid.size < 2:
        raise ValueError(f"grid must be 1-D with at least 2 points; got shape {grid.shape}")
    steps = np.diff(grid)
    if not (steps > 0).all() or not np.allclose(steps, steps[0], rtol=1e-6, atol=0.0):
        raise ValueError("grid must be increasing and uniformly spaced (the normalization uses its spacing)")
    return grid


def density_from_ritz(
    values_list,
    weights_list,
    sigma_squared: float = 1e-5,
    grid_len: int = 10_000,
    grid_expand: float = 0.01,
    *,
    grid: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-smoothed SLQ density from per-draw Ritz values and weights.

    Args:
        values_list: a (draws, m) array or a list of (m_i,) arrays; the Ritz values (eigenvalue
            units) per draw, as from :func:`ritz`; ragged draws allowed.
        weights_list: the Ritz weights per draw, same shapes as ``values_list``.
        sigma_squared: float, the relative kernel variance; the absolute variance is
            :func:`kernel_variance` of the grid.
        grid_len: int, number of points of the grid of :func:`density_grid`; ignored when
            ``grid`` is given.
        grid_expand: float, the margin (eigenvalue units) of the grid of :func:`density_grid`;
            ignored when ``grid`` is given.
        grid: optional explicit uniform grid, ndarray of shape (G,) (e.g. to compare two
            densities point by point); the kernel variance is then still computed from the Ritz
            values' range, as in the paper code.

    Returns:
        grid: float64 (grid_len,), or (G,) when ``grid`` is given.
        density: float64, same shape as ``grid``; the mean over draws of the weighted Gaussian
            mixtures, normalized so that ``sum(density) * (grid[1] - grid[0]) == 1``; units
            1/eigenvalue.

    Raises:
        ValueError: the draws are empty, non-finite or mismatched between values and weights;
            ``grid_len`` is not an int >= 2 or the grid range is empty; ``sigma_squared`` is
            not positive; or ``grid`` is not 1-D, increasing and uniformly spaced.
    """
    values, weights = _check_ritz_lists(values_list, weights_list)
    paper_grid = density_grid(values, grid_len=grid_len, grid_expand=grid_expand)
    variance = kernel_variance(paper_grid, sigma_squared)
    grid = paper_grid if grid is None else _check_uniform_grid(grid)
    nodes, node_weights = pool_draws(values, weights)
    mixture = gaussian_mixture(nodes, node_weights, grid, variance)
    if not (np.all(np.isfinite(mixture)) and np.sum(mixture) > 0):
        # exp underflows to 0 at every grid point when the kernel is far narrower than the grid
        # spacing and no node sits on a grid point; normalizing would then divide 0 by 0.
        raise ValueError(
            f"the smoothed density is zero or not finite at every grid point: kernel variance {variance:g} "
            f"against grid spacing {grid[1] - grid[0]:g}; raise sigma_squared or grid_len"
        )
    return grid, _normalize_on_grid(mixture, grid)


def density_from_tridiags(
    tridiags,
    sigma_squared: float = 1e-5,
    grid_len: int = 10_000,
    grid_expand: float = 0.01,
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-smoothed SLQ density from Lanczos tridiagonals.

    ``tridiags``: a (draws, m, m) array (the ``tridiags.npy`` layout the
    paper's density code reads) or a list of (m_i, m_i) arrays (ragged after
    early stops). Returns ``(grid, density)``, both shape (grid_len,), float64;
    see :func:`density_from_ritz`.
    """
    if len(tridiags) == 0:
        raise ValueError("tridiags is empty: need at least one draw")
    quadratures = [ritz(t) for t in tridiags]
    return density_from_ritz(
        [values for values, _ in quadratures],
        [weights for _, weights in quadratures],
        sigma_squared=sigma_squared,
        grid_len=grid_len,
        grid_expand=grid_expand,
    )


def smoothed_density_of_eigenvalues(
    eigenvalues: np.ndarray,
    grid: np.ndarray,
    variance: float,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Smooth an explicit spectrum with the same kernel and normalization as the SLQ density.

    For validation: compare ``density_from_ritz(...)`` against the exact
    eigenvalues (``numpy.linalg.eigvalsh``) on the same grid with the same
    **absolute** variance (``kernel_variance(grid, sigma_squared)``).

    ``eigenvalues``: shape (n,); ``weights``: shape (n,), default uniform
    ``1/n``; ``grid``: shape (G,), uniform. Returns shape (G,), float64,
    normalized to unit Riemann sum on ``grid``.
    """
    eigenvalues = np.asarray(eigenvalues, dtype=np.float64).ravel()
    if weights is None:
        weights = np.full(eigenvalues.shape, 1.0 / eigenvalues.size)
    grid = _check_uniform_grid(grid)
    return _normalize_on_grid(gaussian_mixture(eigenvalues, weights, grid, variance), grid)


def spectral_wasserstein1(values_a, weights_a, values_b, weights_b) -> float:
    """1-Wasserstein distance between two discrete spectral measures (eigenvalue units).

    Each measure is given by nodes (n,) and non-negative weights (n,), e.g. a
    draw's Ritz quadrature, a :func:`pool_draws` of several draws, or exact
    eigenvalues with weights ``1/n``. Weights are normalized by
    :func:`scipy.stats.wasserstein_distance`. Unlike a density comparison,
    this needs no kernel width.
    """
    return float(
        scipy.stats.wasserstein_distance(
            np.asarray(values_a, dtype=np.float64),
            np.asarray(values_b, dtype=np.float64),
            np.asarray(weights_a, dtype=np.float64),
            np.asarray(weights_b, dtype=np.float64),
        )
    )


def summarize(values_list, weights_list, dim: int, negative_threshold: float = 1e-3) -> dict:
    """Summary statistics of the spectrum that SLQ can resolve.

    Do not report the plain total weight of negative Ritz values as "negative
    mass". Most eigenvalues of a network Hessian sit very close to zero, where
    a few dozen Gauss nodes cannot resolve signs: a Ritz value at
    ``-1e-6 * ||A||`` stands for a lump of eigenvalues on both sides of zero.
    On a digits MLP with an exact Hessian, the naive figure was 0.49-0.61
    against an exact 0.30, while the mass below ``-1e-3 * range`` was 0.027
    against 0.023 exact.

    Args:
        values_list: a (draws, m) array or a list of (m_i,) arrays; the Ritz values per draw
            (from :func:`ritz`).
        weights_list: the Ritz weights per draw, same shapes as ``values_list``.
        dim: int, dimension of the operator (number of parameters), for the trace.
        negative_threshold: float ``eps``; only Ritz mass below ``-eps * (lambda_max -
            lambda_min)`` counts as negative (and above ``+eps * (...)`` as positive).

    Returns:
        a dict with float values unless noted; all means are over draws:

        - ``lambda_max``, ``lambda_min``: mean of each draw's largest / smallest Ritz value
          (extreme Ritz values converge fastest, so these estimate the extreme eigenvalues).
        - ``trace``: ``dim * sum_k w_k theta_k``, Hutchinson's estimator of ``trace(A)``
          (exact per draw: ``dim * v^T A v``).
        - ``mean``, ``std``: mean ``sum_k w_k theta_k`` and standard deviation
          ``sqrt(sum_k w_k theta_k^2 - mean^2)`` of the eigenvalue density (both moments
          averaged over draws before combining).
        - ``negative_mass``, ``positive_mass``: quadrature weight strictly below
          ``-eps * (lambda_max - lambda_min)`` / strictly above ``+eps * (...)``, with the
          draw-averaged extremes.
        - ``negative_threshold``: ``eps`` as given; ``negative_cutoff``: the absolute cutoff
          ``eps * (lambda_max - lambda_min)``.
        - ``num_draws`` (int), ``num_steps`` (int): number of draws; largest number of Lanczos
          steps among them.

    Raises:
        ValueError: the draws are empty, non-finite or mismatched between values and weights,
            ``dim`` is not a positive int, or ``negative_threshold`` is negative.
    """
    values, weights = _check_ritz_lists(values_list, weights_list)
    if not (isinstance(dim, (int, np.integer)) and dim >= 1):
        raise ValueError(f"dim must be a positive int; got {dim!r}")
    if not (negative_threshold >= 0 and np.isfinite(negative_threshold)):
        raise ValueError(f"negative_threshold must be finite and >= 0; got {negative_threshold!r}")

    lambda_max = float(np.mean([v.max() for v in values]))
    lambda_min = float(np.mean([v.min() for v in values]))
    cutoff = negative_threshold * (lambda_max - lambda_min)
    first_moment = float(np.mean([w @ v for v, w in zip(values, weights)]))
    second_moment = float(np.mean([w @ v**2 for v, w in zip(values, weights)]))
    negative_mass = float(np.mean([w[v < -cutoff].sum() for v, w in zip(values, weights)]))
    positive_mass = float(np.mean([w[v > cutoff].sum() for v, w in zip(values, weights)]))
    return {
        "lambda_max": lambda_max,
        "lambda_min": lambda_min,
        "trace": dim * first_moment,
        "mean": first_moment,
        # max(0, .): the variance can round to a tiny negative for a point mass.
        "std": float(np.sqrt(max(0.0, second_moment - first_moment**2))),
        "negative_mass": negative_mass,
        "positive_mass": positive_mass,
        "negative_threshold": float(negative_threshold),
        "negative_cutoff": float(cutoff),
        "num_draws": len(values),
        "num_steps": max(v.size for v in values),
    }
