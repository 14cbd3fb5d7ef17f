"""Uncertainty over draws: per-draw statistics and densities, intervals and pointwise bands.

A checkpoint's SLQ estimate pools ``D`` independent draws (start vectors): each draw ``d`` gives a
Gauss quadrature ``(theta_dk, w_dk)`` of the spectral measure seen from its start vector, and the
density and the statistics of :mod:`hessflow.density` are computed from the pooled measure (each
draw weighted ``1/D``). This module gives the same quantities per draw, and intervals and bands
over the draws at a stated confidence level.

What the intervals cover: the variability from the random start vectors, that is, the value the
same computation would have with infinitely many draws of the same ``m`` steps. They do not
include the deterministic error of ``m``-step Lanczos: the extreme Ritz values lie inside the
spectrum (``lambda_max`` is biased low, ``lambda_min`` high, until they converge), and a kernel
narrower than the Ritz spacing gives a density that no number of draws makes exact. The trace and
the mean are unbiased for every ``m`` (Hutchinson's estimator, ``E[v^T A v] = trace(A) / dim`` for
``v`` uniform on the sphere); the density is unbiased where the kernel is wide enough that the
``m``-point quadrature integrates it exactly.

Methods (``method=``):

* ``"t"`` (default): Student-t on the jackknife standard error, ``estimate +- t_{D-1, (1+level)/2}
  * se_jack``, with ``se_jack^2 = (D-1)/D * sum_i (estimate_(i) - mean_i estimate_(i))^2`` over
  the leave-one-draw-out estimates. For a statistic that is a mean of per-draw values (trace,
  mean, lambda_max, lambda_min, and every density point) this is exactly ``mean +- t s/sqrt(D)``,
  exact when the per-draw values are normal.
* ``"percentile"``: the percentile bootstrap over draws: ``num_resamples`` resamples of the ``D``
  draws with replacement (numpy Generator, seeded), the statistic recomputed on each resample's
  pooled measure, and the ``(1-level)/2`` and ``(1+level)/2`` quantiles of the resampled
  statistics.
* ``"bca"``: the bias-corrected and accelerated bootstrap (Efron 1987) on the same resamples,
  acceleration from the jackknife.

Why ``"t"`` is the default: coverage at nominal level 0.95, measured on a 300 x 300 matrix (a
bulk of 297 eigenvalues, the standard normal quantiles, and outliers at 8, 12 and 20, in a fixed
random eigenbasis), 10,000 independent draws of :func:`hessflow.lanczos.lanczos` with 60 steps
split into disjoint checkpoints of D draws (5,000 / 3,333 / 2,000 / 1,000 checkpoints at D = 2 /
3 / 5 / 10, binomial standard error 0.003-0.007), 2,000 resamples. Trace: whether the interval
holds the exact trace; std: the exact standard deviation of the eigenvalues; density: the exact
smoothed density (kernel standard deviation 0.48, where the bulk estimate's relative bias is below
1e-3), pointwise at 25 bulk points; width: the trace interval's mean width relative to ``"t"``'s.
The per-draw traces are skewed (skewness 1.0: the outliers' weights are chi-squared), the
per-draw second moments more so (the outlier at 20 dominates them).

    D    trace coverage                 std coverage          density coverage      trace width / t
         t     pct.   BCa    stud.      t     pct.   BCa    t     pct.   BCa    pct.  BCa   stud.
    2    0.953 0.497  0.497  inf        0.924 0.454  0.454  0.950 0.501  0.501  0.08  0.08  inf
    3    0.948 0.737  0.708  inf        0.899 0.686  0.664  0.950 0.753  0.726  0.38  0.36  inf
    5    0.952 0.818  0.821  0.946      0.894 0.781  0.800  0.949 0.840  0.841  0.62  0.65  1.65
    10   0.945 0.887  0.880  0.936      0.900 0.858  0.874  0.952 0.904  0.904  0.81  0.84  1.12

(stud.: the studentized bootstrap of the mean per-draw trace, ``(mean* - mean) / (s*/sqrt(D))``,
measured but not offered; "inf": its interval is infinite.) On synthetic per-draw values (4,000
repetitions) ``"t"`` covers 0.946-0.954 for normal values at every D, and 0.82-0.91 for
exponential or chi-squared(1) ones (skewness 2-2.8), where the percentile bootstrap covers
0.43-0.84 and BCa 0.43-0.86.

The percentile bootstrap under-covers at every D the project uses: its resamples spread only
``sqrt((D-1)/D)`` times the standard error, it takes normal rather than t quantiles, and with
``D`` draws there are only ``C(2D-1, D)`` distinct resamples (3 at D = 2, 10 at D = 3, whose
2.5 % and 97.5 % quantiles are the smallest and largest draw: the interval is the draws' range).
BCa corrects for skewness but not for the width. The studentized bootstrap is undefined at small
D: a resample of one repeated draw has zero spread (probability ``D^(1-D)``, 11 % at D = 3), so its
quantiles are infinite for D <= 3, and at D = 5 and 10 it is 1.65 and 1.12 times as wide as
``"t"`` for no better coverage. ``"t"`` is exact for normal per-draw values and holds the nominal
level for the trace and the density here; for a statistic as skewed as ``std`` above it
under-covers (0.89-0.92) like every method, and least.
"""

from __future__ import annotations

import numpy as np
import scipy.stats

from hessflow.density import density_from_ritz, density_grid, gaussian_mixture, kernel_variance, summarize

__all__ = [
    "DEFAULT_LEVEL",
    "DEFAULT_METHOD",
    "DEFAULT_NUM_RESAMPLES",
    "INTERVAL_METHODS",
    "STATISTICS",
    "bootstrap_resamples",
    "density_band",
    "per_draw_densities",
    "per_draw_statistics",
    "statistic_intervals",
]

#: The confidence level of the intervals and bands unless stated otherwise.
DEFAULT_LEVEL = 0.95

#: The interval method unless stated otherwise; chosen by the coverage study in the module docstring.
DEFAULT_METHOD = "t"

#: The interval methods: Student-t on the jackknife standard error, percentile bootstrap, BCa bootstrap.
INTERVAL_METHODS = ("t", "percentile", "bca")

#: Bootstrap resamples of the draws unless stated otherwise.
DEFAULT_NUM_RESAMPLES = 2000

#: The statistics of :func:`hessflow.density.summarize` that vary over draws (the others, such as
#: ``num_draws`` or ``negative_threshold``, are settings or counts).
STATISTICS = ("lambda_max", "lambda_min", "trace", "mean", "std", "negative_mass", "positive_mass")

# Grid chunk of the bootstrap band, so the (resamples x chunk) matrix of resampled means stays
# under ~100 MB at the default 2,000 resamples.
_BAND_CHUNK_POINTS = 5000


def _check_level(level) -> float:
    if isinstance(level, (bool, np.bool_)) or not isinstance(level, (int, float, np.integer, np.floating)):
        raise ValueError(f"level must be a number in (0, 1); got {level!r}")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be in (0, 1), e.g. 0.95; got {level!r}")
    return float(level)


def _check_method(method) -> str:
    if method not in INTERVAL_METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, INTERVAL_METHODS))}; got {method!r}")
    return method


def _check_num_draws(num_draws: int) -> None:
    if num_draws < 2:
        raise ValueError(f"an interval over draws needs at least 2 draws; got {num_draws}")


def _check_num_resamples(num_resamples) -> int:
    if isinstance(num_resamples, (bool, np.bool_)) or not (
        isinstance(num_resamples, (int, np.integer)) and num_resamples >= 1
    ):
        raise ValueError(f"num_resamples must be a positive int; got {num_resamples!r}")
    return int(num_resamples)


def _ritz_draws(values, weights) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-draw Ritz values and weights as lists of 1-D float64 arrays, padding removed.

    Accepts :func:`hessflow.reproduce.aggregate`'s (D, m) arrays, where a draw that stopped early
    is NaN-padded at the end (values) with zero weights, or ragged lists of (m_i,) arrays.
    """
    if len(values) != len(weights):
        raise ValueError(f"{len(values)} draws of values but {len(weights)} of weights")
    draws_values, draws_weights = [], []
    for draw, (v, w) in enumerate(zip(values, weights)):
        v, w = np.asarray(v, dtype=np.float64), np.asarray(w, dtype=np.float64)
        if v.ndim != 1 or v.shape != w.shape:
            raise ValueError(f"draw {draw}: values shape {v.shape} and weights shape {w.shape} must be equal and 1-D")
        if not np.isfinite(w).all():
            raise ValueError(f"draw {draw}: the weights have NaN or Inf")
        size = int(np.isfinite(v).sum())
        # Padding is a NaN tail with zero weight; a NaN anywhere else is a broken quadrature.
        if size == 0 or not np.isfinite(v[:size]).all() or not np.isnan(v[size:]).all() or np.any(w[size:] != 0):
            raise ValueError(
                f"draw {draw}: the values have NaN or Inf other than a NaN tail with zero weights (padding)"
            )
        draws_values.append(v[:size])
        draws_weights.append(w[:size])
    return draws_values, draws_weights


def per_draw_statistics(values, weights, dim: int, *, negative_threshold: float = 1e-3) -> dict[str, np.ndarray]:
    """The statistics of :func:`hessflow.density.summarize`, one value per draw.

    Args:
        values: the Ritz values per draw: a (D, m) array, NaN-padded at the end of a draw that
            stopped early (as :func:`hessflow.reproduce.aggregate` writes), or a list of (m_i,)
            arrays; eigenvalue units.
        weights: the Ritz weights per draw, the same shapes (zero where ``values`` is padding).
        dim: int, the operator's dimension, for the trace.
        negative_threshold: ``eps`` of :func:`~hessflow.density.summarize`; each draw's cutoff
            ``eps * (lambda_max - lambda_min)`` uses that draw's own extremes.

    Returns:
        ``{name: float64 array of shape (D,)}`` for each name of :data:`STATISTICS`, in draw
        order: ``summarize`` of that draw alone (units of ``summarize``). For ``lambda_max``,
        ``lambda_min``, ``trace`` and ``mean`` the pooled statistic is their mean; ``std`` and
        the masses of the pooled measure are not (they combine moments or cutoffs first).

    Raises:
        ValueError: no draws, mismatched shapes, NaN or Inf other than padding, or what
            ``summarize`` refuses.
    """
    values, weights = _ritz_draws(values, weights)
    if not values:
        raise ValueError("values is empty: need at least one draw")
    rows = [summarize([v], [w], dim, negative_threshold=negative_threshold) for v, w in zip(values, weights)]
    return {name: np.array([row[name] for row in rows], dtype=np.float64) for name in STATISTICS}


def per_draw_densities(
    values,
    weights,
    *,
    sigma_squared: float = 1e-5,
    grid_len: int = 10_000,
    grid_expand: float = 0.01,
    grid: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each draw's term of the pooled smoothed density: rows that average to it exactly.

    Row ``d`` is draw ``d``'s Gaussian mixture ``sum_k w_dk N(t; theta_dk, variance)`` on the grid
    and with the absolute kernel variance of :func:`hessflow.density.density_from_ritz` over all
    draws (the paper grid from the draw-averaged extremes, variance ``sigma_squared * max(1,
    range)``), divided by the pooled density's normalization. So ``rows.mean(axis=0)`` is the
    pooled density of ``density.npy`` (to rounding), and a band over the rows is a band around
    it. A row integrates to 1 on the grid up to the difference between its own mass outside the
    grid and the pooled measure's.

    Args:
        values, weights: the Ritz values and weights per draw, as for :func:`per_draw_statistics`.
        sigma_squared, grid_len, grid_expand, grid: as for ``density_from_ritz``.

    Returns:
        grid: float64 (G,), eigenvalue units; densities: float64 (D, G), units 1/eigenvalue.

    Raises:
        ValueError: what :func:`per_draw_statistics` or ``density_from_ritz`` refuses.
    """
    values, weights = _ritz_draws(values, weights)
    # density_from_ritz checks the settings and the grid, and refuses a density that underflows.
    grid, _ = density_from_ritz(
        values, weights, sigma_squared=sigma_squared, grid_len=grid_len, grid_expand=grid_expand, grid=grid
    )
    variance = kernel_variance(density_grid(values, grid_len=grid_len, grid_expand=grid_expand), sigma_squared)
    mixtures = np.stack([gaussian_mixture(v, w, grid, variance) for v, w in zip(values, weights)])
    # The pooled mixture is the mean of the draws' (each weighted 1/D); normalize as density.py does.
    return grid, mixtures / (np.sum(mixtures.mean(axis=0)) * (grid[1] - grid[0]))


def bootstrap_resamples(num_draws: int, num_resamples: int = DEFAULT_NUM_RESAMPLES, seed=0) -> np.ndarray:
    """Draw indices of the bootstrap over draws: int64 (num_resamples, num_draws).

    Row ``b`` is resample ``b``: ``num_draws`` indices drawn uniformly with replacement by
    ``numpy.random.default_rng(seed).integers``; the same seed gives the same resamples.
    """
    _check_num_draws(num_draws)
    num_resamples = _check_num_resamples(num_resamples)
    return np.random.default_rng(seed).integers(0, num_draws, size=(num_resamples, num_draws))


def _pooled_statistics(values, weights, dim, negative_threshold, subsets: np.ndarray) -> dict[str, np.ndarray]:
    """``summarize`` of the pooled measure of each subset (row of draw indices): {name: (S,)}.

    The pooled statistics depend on the multiset of draws only, so each distinct sorted row is
    summarized once (at D = 3 the 2,000 resamples hold 10 distinct multisets).
    """
    distinct, inverse = np.unique(np.sort(subsets, axis=1), axis=0, return_inverse=True)
    rows = [
        summarize([values[i] for i in row], [weights[i] for i in row], dim, negative_threshold=negative_threshold)
        for row in distinct
    ]
    return {name: np.array([row[name] for row in rows])[inverse.ravel()] for name in STATISTICS}


def _leave_one_out(num_draws: int) -> np.ndarray:
    """(D, D-1) draw indices: row ``i`` leaves draw ``i`` out."""
    return np.array([[j for j in range(num_draws) if j != i] for i in range(num_draws)])


def _jackknife_se(leave_one_out: np.ndarray) -> np.ndarray:
    """Jackknife standard error from the leave-one-out estimates, (D, ...) -> (...)."""
    num_draws = leave_one_out.shape[0]
    deviations = leave_one_out - leave_one_out.mean(axis=0)
    return np.sqrt((num_draws - 1) / num_draws * np.sum(deviations**2, axis=0))


def _t_interval(estimate, standard_error, num_draws: int, level: float):
    half_width = scipy.stats.t.ppf((1 + level) / 2, df=num_draws - 1) * standard_error
    return estimate - half_width, estimate + half_width


def _bca_probabilities(resampled, estimate, leave_one_out, level: float):
    """BCa's lower and upper quantile probabilities, each of the shape of ``estimate``.

    ``resampled``: (B, ...); ``estimate``: (...); ``leave_one_out``: (D, ...).
    """
    num_resamples = resampled.shape[0]
    # Mid-rank proportion, clipped away from 0 and 1: the bootstrap distribution over few draws is
    # discrete, with ties at the estimate itself.
    below = (np.sum(resampled < estimate, axis=0) + 0.5 * np.sum(resampled == estimate, axis=0)) / num_resamples
    bias = scipy.stats.norm.ppf(np.clip(below, 0.5 / num_resamples, 1 - 0.5 / num_resamples))
    deviations = leave_one_out.mean(axis=0) - leave_one_out
    spread = np.sum(deviations**2, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        acceleration = np.where(spread > 0, np.sum(deviations**3, axis=0) / (6 * spread**1.5), 0.0)
    probabilities = []
    for z in scipy.stats.norm.ppf([(1 - level) / 2, (1 + level) / 2]):
        shifted = bias + z
        probabilities.append(scipy.stats.norm.cdf(bias + shifted / (1 - acceleration * shifted)))
    return probabilities


def _quantiles_along_first_axis(samples: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """``quantile(samples[:, j], probabilities[j])`` for each j; samples (B, J), probabilities (J,)."""
    ordered = np.sort(samples, axis=0)
    # numpy's default ("linear") quantile: position p * (B - 1), interpolated.
    position = np.clip(probabilities, 0.0, 1.0) * (samples.shape[0] - 1)
    below = np.floor(position).astype(int)
    above = np.minimum(below + 1, samples.shape[0] - 1)
    columns = np.arange(samples.shape[1])
    low, high = ordered[below, columns], ordered[above, columns]
    # low + (high - low) * f, not low * (1 - f) + high * f: exact when low == high.
    return low + (high - low) * (position - below)


def statistic_intervals(
    values,
    weights,
    dim: int,
    *,
    negative_threshold: float = 1e-3,
    level: float = DEFAULT_LEVEL,
    method: str = DEFAULT_METHOD,
    num_resamples: int = DEFAULT_NUM_RESAMPLES,
    seed=0,
) -> dict[str, tuple[float, float]]:
    """Confidence intervals over draws for each pooled statistic of ``summarize``.

    The estimate is ``summarize`` of all draws (the value in ``stats.json``); the interval is for
    the value that estimate would take with infinitely many draws of the same number of steps
    (see the module docstring: start-vector variability, not Lanczos bias).

    Args:
        values, weights: the Ritz values and weights per draw, as for :func:`per_draw_statistics`;
            at least 2 draws.
        dim, negative_threshold: as for :func:`hessflow.density.summarize`.
        level: the two-sided confidence level, in (0, 1); default 0.95.
        method: one of :data:`INTERVAL_METHODS`; default ``"t"`` (Student-t on the jackknife
            standard error, ``D - 1`` degrees of freedom), the best-covering method of the study in
            the module docstring. ``"percentile"`` and ``"bca"`` recompute ``summarize`` on the
            pooled measure of each resample of :func:`bootstrap_resamples`.
        num_resamples: int, bootstrap resamples (bootstrap methods only).
        seed: the seed of the resamples (bootstrap methods only), anything
            ``numpy.random.default_rng`` takes.

    Returns:
        ``{name: (lo, hi)}`` for each name of :data:`STATISTICS`, floats in the statistic's units,
        ``lo <= hi``.

    Raises:
        ValueError: fewer than 2 draws, ``level`` outside (0, 1), an unknown ``method``, NaN or
            Inf other than padding, or what ``summarize`` refuses.
    """
    level, method = _check_level(level), _check_method(method)
    values, weights = _ritz_draws(values, weights)
    num_draws = len(values)
    _check_num_draws(num_draws)
    estimate = summarize(values, weights, dim, negative_threshold=negative_threshold)
    estimates = np.array([estimate[name] for name in STATISTICS])
    leave_one_out = _pooled_statistics(values, weights, dim, negative_threshold, _leave_one_out(num_draws))
    leave_one_out = np.stack([leave_one_out[name] for name in STATISTICS], axis=1)
    if method == "t":
        lo, hi = _t_interval(estimates, _jackknife_se(leave_one_out), num_draws, level)
    else:
        resamples = bootstrap_resamples(num_draws, num_resamples, seed)
        resampled = _pooled_statistics(values, weights, dim, negative_threshold, resamples)
        resampled = np.stack([resampled[name] for name in STATISTICS], axis=1)
        if method == "percentile":
            lo, hi = np.quantile(resampled, [(1 - level) / 2, (1 + level) / 2], axis=0)
        else:
            p_lo, p_hi = _bca_probabilities(resampled, estimates, leave_one_out, level)
            lo = _quantiles_along_first_axis(resampled, p_lo)
            hi = _quantiles_along_first_axis(resampled, p_hi)
    return {name: (float(lo[i]), float(hi[i])) for i, name in enumerate(STATISTICS)}


def density_band(
    per_draw_density,
    *,
    level: float = DEFAULT_LEVEL,
    method: str = DEFAULT_METHOD,
    num_resamples: int = DEFAULT_NUM_RESAMPLES,
    seed=0,
) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise confidence band over draws for the mean of per-draw densities.

    At each grid point separately (a pointwise band, not a simultaneous one: at level 0.95 about
    5 % of the points of a band lie off the true curve), an interval for the mean over draws of
    the per-draw densities, by the same methods as :func:`statistic_intervals`; the density at a
    point is a mean of per-draw values, so ``"t"`` is ``mean +- t_{D-1, (1+level)/2} s / sqrt(D)``.

    Args:
        per_draw_density: array_like (D, G), D >= 2: each draw's density on a common grid, e.g.
            from :func:`per_draw_densities`; units 1/eigenvalue.
        level, method, num_resamples, seed: as for :func:`statistic_intervals`.

    Returns:
        lo, hi: float64 (G,), same units, ``lo <= mean <= hi`` for ``"t"`` and ``"percentile"``.
        Identical draws give ``lo == hi``.

    Raises:
        ValueError: not 2-D, fewer than 2 draws, NaN or Inf, ``level`` outside (0, 1), or an
            unknown ``method``.
    """
    level, method = _check_level(level), _check_method(method)
    densities = np.asarray(per_draw_density, dtype=np.float64)
    if densities.ndim != 2 or densities.shape[1] == 0:
        raise ValueError(f"per_draw_density must be a (draws, grid) array; got shape {densities.shape}")
    num_draws = densities.shape[0]
    _check_num_draws(num_draws)
    if not np.isfinite(densities).all():
        raise ValueError("per_draw_density has NaN or Inf")
    # Deviations from the first draw: identical draws then give exactly zero spread and lo == hi.
    # The standard error and BCa's acceleration do not change with the shift.
    reference = densities[0]
    deviations = densities - reference
    mean = reference + deviations.mean(axis=0)
    leave_one_out = (deviations.sum(axis=0) - deviations) / (num_draws - 1)
    if method == "t":
        return _t_interval(mean, _jackknife_se(leave_one_out), num_draws, level)
    # How often each draw occurs in each resample, (B, D): the resampled means are counts @ draws / D.
    resamples = bootstrap_resamples(num_draws, num_resamples, seed)
    counts = (resamples[:, :, None] == np.arange(num_draws)).sum(axis=1)
    lo, hi = np.empty_like(mean), np.empty_like(mean)
    for start in range(0, mean.size, _BAND_CHUNK_POINTS):
        part = slice(start, start + _BAND_CHUNK_POINTS)
        resampled = reference[part] + counts @ deviations[:, part] / num_draws
        if method == "percentile":
            lo[part], hi[part] = np.quantile(resampled, [(1 - level) / 2, (1 + level) / 2], axis=0)
        else:
            p_lo, p_hi = _bca_probabilities(resampled, mean[part], leave_one_out[:, part], level)
            lo[part] = _quantiles_along_first_axis(resampled, p_lo)
            hi[part] = _quantiles_along_first_axis(resampled, p_hi)
    return lo, hi
