"""Outlier eigenvalues from SLQ draws, and the fraction of a gradient in their eigenspace.

A Hessian spectrum is typically a bulk plus a few outliers well above it (Ghorbani et al., ICML 2019;
Papyan 2019). In an SLQ draw (``m`` Lanczos steps from a random unit ``v``) a converged outlier
``lambda_i`` is one Ritz value, at the same place in every draw, with the Gauss weight
``(q_i^T v)^2`` (mean ``1/n``, random as ``chi^2_1 / n``); the bulk is covered by the other nodes.
Neither the density's height nor a weight threshold finds outliers: on 397 eigenvalues in [0, 1] plus
10, 20, 30 with ``m = 50``, the outliers' ``n w`` range over 0.01 .. 4 and those of the bulk's edge
nodes over 0.07 .. 7, since edge weights ~ ``1/m^2`` are ~ ``1/n`` unless ``n >> m^2``.
:func:`find_outliers` uses the nodes' positions, and their stability across draws, instead:

1. **Bulk** (:func:`bulk_edges`, per draw). Start from the middle half of the draw's Ritz values by
   count and grow the interval outward, absorbing the next Ritz value while its gap to the interval
   is at most ``gap_ratio`` times the interval's width; stop when both neighbours are farther.
   The result ``[b_-, b_+]`` (width ``W``) is the smallest interval containing that core whose
   outside nodes all lie more than ``gap_ratio * W`` beyond it. Why by count: each outlier takes
   exactly one node whatever its weight, and Gauss nodes fill the bulk's support whatever its mass
   distribution, so the core is in the bulk while fewer than ``m/4`` outliers lie on each side, and
   has a nonzero width even when most of the mass sits near 0 (where mass quantiles collapse, and
   a ``1 - c/n`` mass quantile moves into the outliers once there are more than ``c``). Why not the
   largest gap of the sorted nodes: outliers are often farther from each other than from the bulk
   (30 - 20 > 10 - 1). Why a gap relative to the width absorbed so far: inside a bulk, consecutive
   Gauss nodes are ~ ``W / m`` apart (~ ``W / m^2`` at its edges): at ``m = 20``, those of a uniform
   or Gaussian measure stay below 0.08 times the extent on their other side, even an exponential
   tail's below 0.2 (0.09 at ``m = 50``); so the default ``gap_ratio = 0.5`` keeps every node of a
   bulk, and an isolated-looking one inside or just beside it, in the bulk.
2. **Candidates**: the Ritz values of a draw outside its ``[b_-, b_+]`` (above: positive outliers;
   below: negative ones).
3. **Stable across draws**: candidates of all draws are clustered (single linkage: sorted values
   within ``match_rtol * max(|value|, W)`` of each other); a cluster is an outlier when it has a
   candidate in at least ``min_draws`` draws, by default a majority. Quadrature nodes move with the
   probe by a fraction of their spacing, far more than the tolerance, so they rarely match; a
   converged eigenvalue matches in every draw to its residual. Not *all* draws by default: one
   unlucky draw (``(q_i^T v)^2`` tiny, so that ``lambda_i`` is not yet converged, or an unconverged
   node bridging the gap) would veto an eigenvalue that every other draw resolves.

Eigenvalues closer than the tolerance (or degenerate: one Lanczos vector resolves a multiple
eigenvalue once) count as one; ``multiplicities = n * mean weight`` (about 1 per eigenvalue, relative
spread ``sqrt(2 / draws)``) flags them. The default ``match_rtol = 1e-3`` asks for 3 digits: converged
outliers agree to ~1e-10 between draws (the square of a residual over a gap); a node that is not an
eigenvalue yet moves between draws in the second or third digit.

Gradient in the outliers' eigenspace: :func:`gradient_fraction_in_span` is ``||Q^T g||^2 / ||g||^2``,
``Q`` an orthonormal basis of the span of the given vectors (e.g. the top ``k`` Ritz vectors,
``RitzPairs.vectors``); :func:`gradient_fractions_in_leading_spans` gives it for the first ``j``
vectors, ``j = 1 .. K``, at once (for ``k`` = the outlier count and for a fixed ``k``). With Ritz
vectors ``Y`` of residuals ``R = A Y - Y Theta``, it is within ``||R||_F / delta`` of the exact
eigenspace's, ``delta`` the distance of the Ritz values to the rest of the spectrum (Davis-Kahan
``sin Theta`` theorem: ``||P_Y - P_Q||_2 <= ||R||_F / delta``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .density import _check_ritz_lists, ritz

__all__ = [
    "Outliers",
    "bulk_edges",
    "find_outliers",
    "find_outliers_in_tridiags",
    "gradient_fraction_in_span",
    "gradient_fractions_in_leading_spans",
]

#: Default relative gap between the bulk and an outlier, in units of the bulk's width.
GAP_RATIO = 0.5
#: Default relative tolerance for one eigenvalue's Ritz values of different draws to match.
MATCH_RTOL = 1e-3
#: A column whose part orthogonal to the columns before it is at most this times its norm adds no direction.
RANK_RTOL = 1e-8


@dataclass(frozen=True, eq=False)
class Outliers:
    """Outlier eigenvalues found in SLQ draws (see the module docstring); ``k`` outliers, ``D`` draws.

    Attributes:
        values: ndarray, shape (k,), float64, descending: the median over matching draws of each
            outlier's Ritz values (eigenvalue units); above the bulk first, then below it.
        gap_ratios: ndarray, shape (k,), float64: the distance of each value to the nearer median bulk
            edge over the median bulk width (in each matching draw, the same with that draw's bulk is
            > ``gap_ratio``).
        multiplicities: ndarray, shape (k,), float64: ``n`` times the mean Gauss weight of the outlier's
            Ritz values over its matching draws: about 1 for a simple eigenvalue.
        draw_matches: ndarray, shape (k, D), bool: whether draw ``d`` has a Ritz value of outlier ``i``.
        draw_edges: ndarray, shape (D, 2), float64: each draw's bulk ``(b_-, b_+)``.
        lower_edge, upper_edge: the medians over draws of ``b_-`` and ``b_+``.
    """

    values: np.ndarray
    gap_ratios: np.ndarray
    multiplicities: np.ndarray
    draw_matches: np.ndarray
    draw_edges: np.ndarray
    lower_edge: float
    upper_edge: float

    @property
    def count(self) -> int:
        """``k``, the number of outliers, above and below the bulk."""
        return int(self.values.size)

    @property
    def above(self) -> np.ndarray:
        """The outliers above the bulk, shape (k_+,), descending."""
        return self.values[self.values > (self.lower_edge + self.upper_edge) / 2]

    @property
    def below(self) -> np.ndarray:
        """The outliers below the bulk (negative outliers), shape (k_-,), descending."""
        return self.values[self.values < (self.lower_edge + self.upper_edge) / 2]


def _check_positive(value, name: str) -> float:
    if not (isinstance(value, (int, float, np.floating, np.integer)) and np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0; got {value!r}")
    return float(value)


def _grow(x: np.ndarray, lo: int, hi: int, gap_ratio: float) -> tuple[int, int]:
    """Indices of the bulk in sorted ``x``, grown from ``x[lo:hi+1]`` (step 1 of the module docstring)."""
    grew = True
    while grew:
        grew = False
        while hi + 1 < x.size and x[hi + 1] - x[hi] <= gap_ratio * (x[hi] - x[lo]):
            hi, grew = hi + 1, True
        while lo > 0 and x[lo] - x[lo - 1] <= gap_ratio * (x[hi] - x[lo]):
            lo, grew = lo - 1, True
    return lo, hi


def bulk_edges(ritz_values, gap_ratio: float = GAP_RATIO) -> tuple[float, float]:
    """The bulk ``(b_-, b_+)`` of one draw's Ritz values (step 1 of the module docstring).

    Args:
        ritz_values: array_like, shape (m,), finite: one draw's Gauss nodes, in any order.
        gap_ratio: a node more than ``gap_ratio`` times the bulk's width beyond it is outside.

    Returns:
        ``(b_-, b_+)``: the smallest and largest Ritz value of the bulk (eigenvalue units).

    Raises:
        ValueError: ``ritz_values`` empty, not 1-D or not finite; ``gap_ratio`` not a finite number > 0.
    """
    x = np.sort(np.asarray(ritz_values, dtype=np.float64))
    if x.ndim != 1 or x.size == 0 or not np.isfinite(x).all():
        raise ValueError(f"ritz_values must be a non-empty finite 1-D array; got shape {x.shape}")
    gap_ratio = _check_positive(gap_ratio, "gap_ratio")
    lo, hi = _grow(x, (x.size - 1) // 4, -(-3 * (x.size - 1) // 4), gap_ratio)
    return float(x[lo]), float(x[hi])


def _clusters(values: np.ndarray, tol_floor: float, match_rtol: float) -> list[np.ndarray]:
    """Index arrays of the single-linkage clusters of ``values`` (sorted internally)."""
    order = np.argsort(values)
    if order.size == 0:
        return []
    x = values[order]
    tolerance = match_rtol * np.maximum(np.maximum(np.abs(x[1:]), np.abs(x[:-1])), tol_floor)
    breaks = np.flatnonzero(np.diff(x) > tolerance) + 1
    return np.split(order, breaks)


def find_outliers(
    ritz_values,
    ritz_weights,
    dim: int,
    *,
    gap_ratio: float = GAP_RATIO,
    min_draws: int | None = None,
    match_rtol: float = MATCH_RTOL,
) -> Outliers:
    """The outlier eigenvalues seen in SLQ draws, by the rule of the module docstring.

    Args:
        ritz_values, ritz_weights: sequences of ``D`` arrays of shape (m_d,) (ragged allowed): each
            draw's Gauss nodes and weights (:func:`hessflow.density.ritz`).
        dim: ``n``, the dimension of the operator (``m_d <= n``); the weights' unit for ``multiplicities``.
        gap_ratio: the least gap between the bulk and an outlier, in units of the bulk's width.
        min_draws: the least number of draws with a matching Ritz value; default ``D // 2 + 1``.
        match_rtol: Ritz values of two draws match within ``match_rtol * max(|value|, W)``.

    Returns:
        `Outliers`.

    Raises:
        ValueError: ragged lists that disagree, non-finite values, negative weights, ``m_d > dim``, or
            a parameter out of range (each naming the argument).
    """
    values, weights = _check_ritz_lists(ritz_values, ritz_weights)
    num_draws = len(values)
    if not isinstance(dim, (int, np.integer)) or max(v.size for v in values) > dim:
        raise ValueError(f"dim must be an int >= the number of Ritz values of every draw; got {dim!r}")
    if any(np.any(w < 0) for w in weights):
        raise ValueError("ritz_weights must be non-negative (squared first components)")
    gap_ratio = _check_positive(gap_ratio, "gap_ratio")
    match_rtol = _check_positive(match_rtol, "match_rtol")
    min_draws = num_draws // 2 + 1 if min_draws is None else min_draws
    if not isinstance(min_draws, (int, np.integer)) or not 1 <= min_draws <= num_draws:
        raise ValueError(f"min_draws must be an int in [1, {num_draws}]; got {min_draws!r}")

    edges = np.array([bulk_edges(v, gap_ratio) for v in values])
    lower, upper = np.median(edges, axis=0)
    width = upper - lower
    found = []  # (value, multiplicity, matching draws)
    for below in (True, False):  # each side on its own: a cluster never spans the bulk
        outside = [v < edges[d, 0] if below else v > edges[d, 1] for d, v in enumerate(values)]
        candidates = np.concatenate([v[s] for v, s in zip(values, outside)])
        masses = np.concatenate([w[s] for w, s in zip(weights, outside)])
        draws = np.concatenate([np.full(np.count_nonzero(s), d) for d, s in enumerate(outside)])
        for members in _clusters(candidates, width, match_rtol):
            matches = np.isin(np.arange(num_draws), draws[members])
            if np.count_nonzero(matches) >= min_draws:
                found.append((np.median(candidates[members]), dim * masses[members].sum() / matches.sum(), matches))
    found.sort(key=lambda item: -item[0])
    outlier_values = np.array([item[0] for item in found], dtype=np.float64)
    distance = np.maximum(outlier_values - upper, lower - outlier_values)
    with np.errstate(divide="ignore"):
        gaps = distance / width
    return Outliers(
        values=outlier_values,
        gap_ratios=gaps,
        multiplicities=np.array([item[1] for item in found], dtype=np.float64),
        draw_matches=np.array([item[2] for item in found], dtype=bool).reshape(len(found), num_draws),
        draw_edges=edges,
        lower_edge=float(lower),
        upper_edge=float(upper),
    )


def find_outliers_in_tridiags(tridiags, dim: int, **options) -> Outliers:
    """:func:`find_outliers` on the Gauss quadratures of ``D`` Lanczos tridiagonals, each (m_d, m_d)."""
    quadratures = [ritz(t) for t in tridiags]
    return find_outliers([q[0] for q in quadratures], [q[1] for q in quadratures], dim, **options)


def gradient_fractions_in_leading_spans(gradient, vectors, *, rank_rtol: float = RANK_RTOL) -> np.ndarray:
    """``||Q_j^T g||^2 / ||g||^2`` for ``j = 1 .. K``, ``Q_j`` an orthonormal basis of the first ``j`` columns.

    The basis is built by Gram-Schmidt in column order (classical, twice, as in :mod:`hessflow.lanczos`):
    a column whose part orthogonal to the basis so far is at most ``rank_rtol`` times its norm is
    nearly dependent on the columns before it, its direction rounding noise: it adds no direction, and
    the fraction stays that of ``j - 1`` columns. (Not Householder QR: its Q column for a dependent
    column is an arbitrary direction orthogonal to the previous ones, e.g. ``e_2`` for the columns
    ``e_1, e_1, e_2``, which would then leave no ``R_jj`` to a later column along it.)

    Args:
        gradient: array_like, shape (n,), finite, nonzero: ``g`` (e.g. the loss gradient).
        vectors: array_like, shape (n, K), ``1 <= K <= n``, finite, no zero column: e.g. the top
            Ritz vectors (``RitzPairs.vectors``) in descending order of their values.
        rank_rtol: the rank tolerance above.

    Returns:
        ndarray, shape (K,), float64, non-decreasing, in [0, 1] up to rounding (dimensionless).

    Raises:
        ValueError: wrong shapes, non-finite entries, a zero gradient or a zero column (naming it).
    """
    g = np.asarray(gradient, dtype=np.float64)
    y = np.asarray(vectors, dtype=np.float64)
    if g.ndim != 1 or g.size == 0:
        raise ValueError(f"gradient must have shape (n,); got {g.shape}")
    if y.ndim != 2 or y.shape[0] != g.size or not 1 <= y.shape[1] <= g.size:
        raise ValueError(f"vectors must have shape (n, K) = ({g.size}, K) with 1 <= K <= n; got {y.shape}")
    for array, name in ((g, "gradient"), (y, "vectors")):
        if not np.isfinite(array).all():
            raise ValueError(f"{name} has non-finite entries (NaN or Inf)")
    if not np.any(g):
        raise ValueError("gradient is zero: its fraction in a subspace is undefined")
    zero_columns = np.flatnonzero(~np.any(y, axis=0))
    if zero_columns.size:
        raise ValueError(f"vectors has zero columns: {zero_columns.tolist()}")
    rank_rtol = _check_positive(rank_rtol, "rank_rtol")
    # Unit vectors (scaled by the largest entry before the norm, whose squares could overflow), so that
    # the part of column j left after the projections is the sine of its angle to the span before it.
    u, y = g / np.max(np.abs(g)), y / np.max(np.abs(y), axis=0)
    u, y = u / np.linalg.norm(u), y / np.linalg.norm(y, axis=0)
    basis, kept = np.empty_like(y), np.zeros(y.shape[1], dtype=bool)
    for j in range(y.shape[1]):
        w, previous = y[:, j], basis[:, : np.count_nonzero(kept)]
        for _ in range(2):
            w = w - previous @ (previous.T @ w)
        remainder = np.linalg.norm(w)
        if remainder > rank_rtol:
            basis[:, previous.shape[1]], kept[j] = w / remainder, True
    gains = np.zeros(y.shape[1])
    gains[kept] = (basis[:, : np.count_nonzero(kept)].T @ u) ** 2
    return np.cumsum(gains)


def gradient_fraction_in_span(gradient, vectors, *, rank_rtol: float = RANK_RTOL) -> float:
    """``||Q^T g||^2 / ||g||^2``, ``Q`` an orthonormal basis of ``span(vectors)``, (n,) and (n, k) inputs.

    The last entry of :func:`gradient_fractions_in_leading_spans` (same arguments, rank tolerance and errors).
    """
    return float(gradient_fractions_in_leading_spans(gradient, vectors, rank_rtol=rank_rtol)[-1])
