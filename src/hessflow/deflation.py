"""Spectral deflation for stochastic Lanczos quadrature: outliers exactly, the bulk by SLQ.

A Hessian's spectrum is typically a bulk near zero plus a few large outliers (Ghorbani et al.,
ICML 2019; Papyan 2019). The outliers dominate the variance of SLQ: the Hutchinson variance of
the trace, ``2n/(n+2) (||A||_F^2 - tr(A)^2/n)`` for the normalized Gaussian probe, is mostly
``2 sum theta_i^2`` of the outliers, and each outlier's SLQ weight is the random ``(q_i^T v)^2``
(mean ``1/n``, standard deviation about ``sqrt(2)/n``) instead of ``1/n``. Deflation removes
them: with ``Y`` (n, k) orthonormal eigenvectors of the top ``k`` eigenvalues ``theta_i`` and
``P = I - Y Y^T``,

    tr f(A) = sum_i f(theta_i) + tr(P f(A) P),    and    P f(A) P = P f(P A P) P,

since ``range(Y)`` is invariant. The first term is exact; the second is estimated by SLQ on
``P A P`` (:class:`DeflatedOperator`, one application of ``A`` per product) from the start vector
``u = P v / ||P v||`` (:func:`deflated_start_vector`), which is uniform on the unit sphere of the
complement ``range(P)`` for the Gaussian probe, so ``E[u u^T] = P / (n - k)``. Its Gauss quadrature
``(nodes, weights)`` therefore estimates the complement's spectral measure, and
:func:`deflated_ritz_measure` joins the two:

    k atoms theta_i of weight 1/n   +   the deflated quadrature, weights times (n - k)/n,

a measure of total weight 1 whose expectation is the eigenvalue density ``(1/n) sum_j
delta(lambda_j)``, like plain SLQ's, with the variance of the bulk alone: for the trace,
``2(n-k)/(n-k+2) (||A_c||_F^2 - tr(A_c)^2/(n-k))`` with ``A_c`` the complement's part of ``A``
(on 200 eigenvalues in [-0.1, 1] plus outliers 10, 20, 30: 1.6 % of plain SLQ's variance, at the
same number of operator applications). The ``k`` eigenvectors cost memory ``n k``, and ``2 n k`` flops per product; Ritz
vectors of an SLQ draw that kept its Lanczos vectors (:func:`hessflow.eigenpairs.top_ritz_pairs`)
cost no further operator application.

Approximate eigenvectors (Ritz vectors of a short run) bias the estimate. ``range(Y)`` is then not
invariant, ``P f(A) P != P f(P A P) P``, and the deflated measure's expectation (times ``n``, for
``f``) is ``sum_i f(theta_i) + tr(P f(P A P) P)``, not ``tr f(A)``. For the trace (``f(x) = x``) the
two still agree when each ``theta_i = y_i^T A y_i`` (Ritz values are these Rayleigh quotients); for
``f(x) = x^2`` the estimate is low by ``2 sum_i ||A y_i - theta_i y_i||^2`` when the residuals are
orthogonal to ``Y`` (as Lanczos's are), i.e. second order in the residual norms -- check them
(``RitzPairs.residual_bounds``) before deflating: outliers converged to ``1e-6`` relative bias
nothing visible, unconverged pairs bias the bulk's shape and its moments.

Probes: the weight ``(n - k)/n`` makes the estimate exactly unbiased for the Gaussian probe, whose
``P v / ||P v||`` is isotropic in the complement. A Rademacher ``P v / ||P v||`` is not (its norm
and direction are dependent); exactly unbiased for it is ``complement_weight = ||P v||^2 =
1 - ||Y^T v||^2`` with ``v = start_vector(n, seed, "rademacher")`` (a measure of total weight 1
only in expectation).
"""

from __future__ import annotations

import numpy as np
from scipy.sparse.linalg import LinearOperator

from .density import ritz
from .lanczos import Operator, Seed, _as_matvec, start_vector

__all__ = ["ORTHONORMALITY_TOL", "DeflatedOperator", "complement_weight", "deflated_ritz_measure",
           "deflated_start_vector", "project_out"]

#: ``eigenvectors`` are refused when ``max |Y^T Y - I|`` exceeds this.
ORTHONORMALITY_TOL = 1e-8


def _orthonormal_columns(eigenvectors) -> np.ndarray:
    """``eigenvectors`` as float64 (n, k), 1 <= k < n, checked orthonormal to ORTHONORMALITY_TOL."""
    y = np.asarray(eigenvectors)
    if np.iscomplexobj(y) or not np.issubdtype(y.dtype, np.number):
        raise TypeError(f"eigenvectors must be a real (n, k) array; got dtype {y.dtype}")
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 2 or not 1 <= y.shape[1] < y.shape[0]:
        raise ValueError(f"eigenvectors must have shape (n, k) with 1 <= k < n (one vector per column); "
                         f"got {y.shape}")
    if not np.isfinite(y).all():
        raise ValueError("eigenvectors has non-finite entries (NaN or Inf)")
    departure = np.max(np.abs(y.T @ y - np.eye(y.shape[1])))
    if departure > ORTHONORMALITY_TOL:
        raise ValueError(
            f"eigenvectors must have orthonormal columns: max |Y^T Y - I| = {departure:.3g} > "
            f"{ORTHONORMALITY_TOL:g}; orthonormalize them first (e.g. np.linalg.qr(Y)[0])"
        )
    return y


def project_out(vector: np.ndarray, eigenvectors: np.ndarray) -> np.ndarray:
    """``P x = x - Y (Y^T x)`` for ``x`` of shape (n,), ``Y`` (n, k) orthonormal: a new (n,) array."""
    return vector - eigenvectors @ (eigenvectors.T @ vector)


class DeflatedOperator(LinearOperator):
    """``P A P`` with ``P = I - Y Y^T``, as a `scipy.sparse.linalg.LinearOperator` (n x n, float64).

    Each product is one application of ``A`` between two projections, so a Lanczos run of ``m``
    steps on it costs ``m`` applications of ``A``, like one on ``A``. On ``range(Y)`` the operator
    is 0; on the complement it is ``A`` when ``range(Y)`` is invariant (see the module docstring).

    Args:
        operator: the symmetric ``A``, as :func:`hessflow.lanczos.lanczos` takes it: a function
            ``v -> A v`` on float64 (n,) arrays, a `scipy.sparse.linalg.LinearOperator` (e.g. a
            `hessflow.hvp.HessianOperator`), or a symmetric dense or sparse matrix.
        eigenvectors: array_like, shape (n, k), ``1 <= k < n``: ``Y``, orthonormal columns (to
            ``max |Y^T Y - I| <= 1e-8``), e.g. ``RitzPairs.vectors``.

    Raises:
        ValueError: ``Y`` of the wrong shape or not orthonormal (the error gives the departure),
            or an operator of another dimension.
    """

    def __init__(self, operator: Operator, eigenvectors):
        self.eigenvectors = _orthonormal_columns(eigenvectors)
        n = self.eigenvectors.shape[0]
        self._apply, _ = _as_matvec(operator, n)
        # A block goes to the operator's own matmat where it has one (a Hessian operator with
        # probes_per_pass > 1 computes several products per data pass); else column by column.
        self._apply_block = operator.matmat if isinstance(operator, LinearOperator) else None
        super().__init__(dtype=np.float64, shape=(n, n))

    def _matvec(self, x):
        projected = project_out(np.ravel(np.asarray(x, dtype=np.float64)), self.eigenvectors)
        product = np.asarray(self._apply(projected), dtype=np.float64)
        if product.shape != (self.shape[0],):
            raise ValueError(f"operator returned shape {product.shape}; expected ({self.shape[0]},)")
        return project_out(product, self.eigenvectors)

    def _matmat(self, X):
        """``P A P X`` for a block ``X`` (n, k): one block product of ``A``, float64 (n, k)."""
        projected = project_out(np.asarray(X, dtype=np.float64), self.eigenvectors)
        if self._apply_block is None:
            product = np.stack([np.asarray(self._apply(projected[:, c].copy()), dtype=np.float64)
                                for c in range(projected.shape[1])], axis=1)
        else:
            product = np.asarray(self._apply_block(projected), dtype=np.float64)
        if product.shape != projected.shape:
            raise ValueError(f"operator returned shape {product.shape}; expected {projected.shape}")
        return project_out(product, self.eigenvectors)

    def _adjoint(self):
        return self  # P A P is symmetric when A is


def deflated_start_vector(dim: int, seed: Seed, eigenvectors, probe: str = "gaussian") -> np.ndarray:
    """``P v / ||P v||``, ``v = start_vector(dim, seed, probe)``: the start of a deflated run.

    Pass it to ``lanczos(DeflatedOperator(A, Y), num_steps=m, start=...)``.

    Args:
        dim: ``n``.
        seed: as for :func:`hessflow.lanczos.start_vector`.
        eigenvectors: array_like, shape (n, k): ``Y``, orthonormal columns.
        probe: one of :data:`hessflow.lanczos.PROBES` (see the module docstring on Rademacher).

    Returns:
        ndarray, shape (n,), float64, unit norm, orthogonal to the columns of ``Y`` to working
        precision (projected twice, as Lanczos reorthogonalizes).
    """
    y = _orthonormal_columns(eigenvectors)
    if dim != y.shape[0]:
        raise ValueError(f"dim is {dim!r} but eigenvectors has {y.shape[0]} rows")
    vector = project_out(project_out(start_vector(dim, seed, probe), y), y)
    return vector / np.linalg.norm(vector)


def complement_weight(dim: int, seed: Seed, eigenvectors, probe: str = "gaussian") -> float:
    """The weight of a deflated run's quadrature that makes :func:`deflated_ritz_measure` unbiased.

    ``(n - k)/n`` for the Gaussian probe (``P v / ||P v||`` is uniform on the complement's sphere);
    ``||P v||^2 = 1 - ||Y^T v||^2`` with ``v = start_vector(dim, seed, probe)`` for the others, whose
    projection's norm and direction are dependent (see the module docstring).

    Args:
        dim, seed, eigenvectors, probe: as for :func:`deflated_start_vector` of the same run.

    Returns:
        float in [0, 1].
    """
    y = _orthonormal_columns(eigenvectors)
    if dim != y.shape[0]:
        raise ValueError(f"dim is {dim!r} but eigenvectors has {y.shape[0]} rows")
    if probe == "gaussian":
        return (dim - y.shape[1]) / dim
    projected = project_out(start_vector(dim, seed, probe), y)
    return float(projected @ projected)


def deflated_ritz_measure(
    tridiag, eigenvalues, dim: int, *, complement_weight: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The spectral measure estimate of a deflated run: ``k`` exact atoms plus its quadrature.

    Args:
        tridiag: array_like, shape (m, m): the tridiagonal of a Lanczos run on
            ``DeflatedOperator(A, Y)`` from ``deflated_start_vector(n, seed, Y)``.
        eigenvalues: array_like, shape (k,): the deflated eigenvalues ``theta_i`` (of the columns
            of ``Y``), any order.
        dim: ``n``, the dimension of ``A``; ``k < n``.
        complement_weight: the total weight of the deflated quadrature; default ``(n - k)/n``
            (exactly unbiased for the Gaussian probe; for Rademacher see the module docstring).

    Returns:
        ``(nodes, weights)``, both shape (k + m,), float64, ascending in ``nodes``: the ``theta_i``
        with weight ``1/n`` each and the Ritz values of ``tridiag`` with their weights times
        ``complement_weight``; the weights sum to 1 (with the default ``complement_weight``).
        They go wherever :func:`hessflow.density.ritz`'s do (densities, moments, ``summarize``).

    Raises:
        ValueError: a malformed ``tridiag`` (as for ``ritz``), non-finite ``eigenvalues``, or
            ``k >= dim``.
    """
    theta = np.asarray(eigenvalues, dtype=np.float64)
    if theta.ndim != 1 or theta.size == 0 or not np.isfinite(theta).all():
        raise ValueError(f"eigenvalues must be a non-empty finite (k,) array; got shape {theta.shape}")
    k = theta.shape[0]
    if not isinstance(dim, (int, np.integer)) or isinstance(dim, (bool, np.bool_)) or not k < dim:
        raise ValueError(f"dim must be an int larger than the number of eigenvalues ({k}); got {dim!r}")
    if complement_weight is None:
        complement_weight = (dim - k) / dim
    elif not 0.0 <= complement_weight <= 1.0:
        raise ValueError(f"complement_weight must be in [0, 1]; got {complement_weight!r}")
    ritz_values, ritz_weights = ritz(tridiag)
    nodes = np.concatenate([theta, ritz_values])
    weights = np.concatenate([np.full(k, 1.0 / dim), complement_weight * ritz_weights])
    order = np.argsort(nodes, kind="stable")
    return nodes[order], weights[order]
