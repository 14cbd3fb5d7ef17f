"""Top eigenpairs of a symmetric operator: Ritz pairs from a Lanczos run, and converged ones.

A Lanczos run of ``m`` steps (:func:`hessflow.lanczos.lanczos`) gives ``A V = V T + b_m v_(m+1) e_m^T``
with ``V`` (n, m) orthonormal. For an eigenpair ``(theta_i, s_i)`` of ``T``, the Ritz pair
``(theta_i, y_i = V s_i)`` has the residual

    A y_i - theta_i y_i = b_m s_(m,i) v_(m+1),   so   ||A y_i - theta_i y_i|| = |b_m s_(m,i)|

(``s_(m,i)``: the last component of ``s_i``), and some eigenvalue of ``A`` lies within that
distance of ``theta_i`` (Parlett, *The Symmetric Eigenvalue Problem*, 11.4; Golub & Van Loan,
*Matrix Computations*, 4th ed., 10.1.4). :func:`top_ritz_pairs` returns the top ``k`` pairs with
this a-posteriori bound and costs no operator application: the outliers of a Hessian spectrum,
well separated from the bulk, converge first, and their bound says so. With full
reorthogonalization the bound equals the true residual norm (:func:`residual_norms`, one
operator application per vector, checks it) down to a rounding floor of about
``1e-15 * sqrt(m) * ||A||``, below which the computed ``|b_m s_(m,i)|`` keeps shrinking while
the true residual does not: a bound under that floor means converged to working precision.

Converged eigenpairs (of pairs that are not yet converged after the SLQ run): use ARPACK's
implicitly restarted Lanczos, ``scipy.sparse.linalg.eigsh(op, k=k, which="LA")``, on any
`scipy.sparse.linalg.LinearOperator`, e.g. a `hessflow.hvp.HessianOperator`: one Hessian-vector
product (one pass over the data) per ARPACK operator application. It keeps a basis of
``ncv = max(2k + 1, 20)`` vectors, spends ``ncv`` applications on the first basis and
``ncv - k`` (about) per restart, and stops when every wanted Ritz value is accurate to ``tol``
relative (``tol=0``: machine precision). On a matrix of 203 eigenvalues with outliers at 10, 20
and 30 above a bulk in [-0.1, 1], ``k=3`` took 21 applications (the first basis already
converged the three outliers), ``k=5``, reaching into the bulk's clustered edge, 225: pairs
inside a dense part of the spectrum cost hundreds of passes, and mean little.
:func:`converged_top_eigenpairs` is that call with a seeded (hence deterministic) start vector,
returning the values descending, the vectors and their measured residual norms (``k`` more
applications), and the number of applications.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
from scipy.sparse.linalg import LinearOperator, eigsh

from .density import tridiagonal_bands
from .lanczos import Operator, Seed, _as_matvec, start_vector

__all__ = ["RitzPairs", "converged_top_eigenpairs", "residual_norms", "top_ritz_pairs"]


@dataclass(frozen=True, eq=False)
class RitzPairs:
    """The ``k`` largest approximate eigenpairs of a symmetric operator ``A`` (n x n).

    Attributes:
        values: ndarray, shape (k,), float64, descending: the approximate eigenvalues ``theta_i``.
        vectors: ndarray, shape (n, k), float64: the approximate unit eigenvectors ``y_i`` as
            columns, in the order of ``values``, signed so that ``y_i`` has a non-negative
            component along the start vector.
        residual_bounds: ndarray, shape (k,), float64: an eigenvalue of ``A`` lies within
            ``residual_bounds[i]`` of ``values[i]``; NaN where unknown. From
            :func:`top_ritz_pairs`: ``|b_m s_(m,i)|`` (equal to ``||A y_i - theta_i y_i||``, see
            the module docstring); from :func:`converged_top_eigenpairs`: the measured
            ``||A y_i - theta_i y_i||``.
        num_matvecs: operator applications spent computing the pairs (``0`` for
            :func:`top_ritz_pairs`, which reuses a Lanczos run).
    """

    values: np.ndarray
    vectors: np.ndarray
    residual_bounds: np.ndarray
    num_matvecs: int = 0


def _check_count(k, upper: int, name: str = "k") -> int:
    if not isinstance(k, (int, np.integer)) or isinstance(k, (bool, np.bool_)) or not 1 <= k <= upper:
        raise ValueError(f"{name} must be an int in [1, {upper}]; got {k!r}")
    return int(k)


def top_ritz_pairs(tridiag, vectors, k: int, *, next_beta: float | None = None) -> RitzPairs:
    """The ``k`` largest Ritz pairs of a Lanczos run, with their a-posteriori error bounds.

    Args:
        tridiag: array_like, shape (m, m): the Lanczos tridiagonal ``T`` (``LanczosResult.tridiag``
            or a ``tridiag_{draw}.npy`` artifact).
        vectors: array_like, shape (n, m), float64: the Lanczos vectors ``V``
            (``LanczosResult.vectors`` or ``lanczos_vec_{draw}.npy``).
        k: the number of pairs, ``1 <= k <= m``.
        next_beta: ``b_m``, the norm of the residual after the last step:
            ``LanczosResult.residual_norm`` (the artifacts do not store it). ``None``: the bounds
            are NaN.

    Returns:
        `RitzPairs`: ``values`` (k,) descending, ``vectors = V @ S[:, top]`` (n, k), unit columns
        to the orthogonality of ``V``, ``residual_bounds = |next_beta * S[m-1, top]|`` (k,) or
        NaN, ``num_matvecs = 0``.

    Raises:
        ValueError: ``tridiag`` is not a finite symmetric tridiagonal matrix, ``vectors`` does not
            have ``m`` columns, ``k`` is out of range, or ``next_beta`` is negative or not finite.
    """
    diagonal, off_diagonal = tridiagonal_bands(tridiag)
    m = diagonal.shape[0]
    basis = np.asarray(vectors, dtype=np.float64)
    if basis.ndim != 2 or basis.shape[1] != m:
        raise ValueError(f"vectors must have shape (n, {m}), one Lanczos vector per column of tridiag; "
                         f"got {basis.shape}")
    k = _check_count(k, m)
    if next_beta is not None and not (np.isfinite(next_beta) and next_beta >= 0):
        raise ValueError(f"next_beta must be a finite non-negative number (LanczosResult.residual_norm); "
                         f"got {next_beta!r}")
    theta, s = scipy.linalg.eigh_tridiagonal(diagonal, off_diagonal, select="i", select_range=(m - k, m - 1))
    theta, s = theta[::-1], s[:, ::-1]
    # eigh's sign is arbitrary: fix it so that y_i^T v_1 = s_(1,i) >= 0, the same on every LAPACK.
    s = s * np.where(s[0] < 0, -1.0, 1.0)
    bounds = np.full(k, np.nan) if next_beta is None else np.abs(float(next_beta) * s[-1])
    return RitzPairs(values=theta, vectors=basis @ s, residual_bounds=bounds, num_matvecs=0)


def residual_norms(operator: Operator, values, vectors) -> np.ndarray:
    """``||A y_i - theta_i y_i||`` for each pair, one operator application per vector.

    Args:
        operator: the symmetric ``A``, as :func:`hessflow.lanczos.lanczos` takes it: a function
            ``v -> A v`` on float64 (n,) arrays, a `scipy.sparse.linalg.LinearOperator`, or a
            symmetric dense or sparse matrix.
        values: array_like, shape (k,): ``theta_i``.
        vectors: array_like, shape (n, k): ``y_i`` as columns.

    Returns:
        ndarray, shape (k,), float64: the residual norms, in the units of ``A``.

    Raises:
        ValueError: shapes that disagree, or an operator output of the wrong shape.
    """
    theta = np.asarray(values, dtype=np.float64)
    y = np.asarray(vectors, dtype=np.float64)
    if y.ndim != 2 or theta.shape != (y.shape[1],):
        raise ValueError(f"need values of shape (k,) and vectors of shape (n, k); got {theta.shape}, {y.shape}")
    matvec, n = _as_matvec(operator, y.shape[0])
    norms = np.empty(theta.shape[0])
    for i in range(theta.shape[0]):
        product = np.asarray(matvec(y[:, i].copy()), dtype=np.float64)
        if product.shape != (n,):
            raise ValueError(f"operator returned shape {product.shape} for vector {i}; expected ({n},)")
        norms[i] = np.linalg.norm(product - theta[i] * y[:, i])
    return norms


def converged_top_eigenpairs(
    operator: Operator,
    k: int,
    *,
    dim: int | None = None,
    tol: float = 0.0,
    seed: Seed = 0,
    ncv: int | None = None,
    maxiter: int | None = None,
) -> RitzPairs:
    """The ``k`` largest eigenpairs to ``tol``, by ARPACK (``eigsh(which="LA")``) from a seeded start.

    Args:
        operator: the symmetric ``A`` (n x n), as :func:`hessflow.lanczos.lanczos` takes it.
        k: the number of eigenpairs, ``1 <= k < n`` (ARPACK's limit).
        dim: ``n``; required with a function, optional (and checked) otherwise.
        tol: ARPACK's relative accuracy of the eigenvalues; ``0``: machine precision.
        seed: seed of the Gaussian start vector ``v0`` (:func:`hessflow.lanczos.start_vector`):
            the same seed gives the same pairs, bit for bit, on the same machine.
        ncv, maxiter: passed to ``eigsh`` (defaults ``max(2k + 1, 20)`` and ``10 n``).

    Returns:
        `RitzPairs`: ``values`` (k,) descending, ``vectors`` (n, k) orthonormal columns signed
        so that ``y_i^T v0 >= 0``, ``residual_bounds`` the measured ``||A y_i - theta_i y_i||``
        (k,), ``num_matvecs`` the operator applications (ARPACK's plus ``k`` for the residuals).

    Raises:
        ValueError: ``k`` out of range or an invalid operator (as in ``lanczos``).
        scipy.sparse.linalg.ArpackNoConvergence: not converged within ``maxiter`` restarts.
    """
    matvec, n = _as_matvec(operator, dim)
    k = _check_count(k, n - 1)
    applications = 0

    def counted(v):
        nonlocal applications
        applications += 1
        return np.asarray(matvec(np.ravel(v).astype(np.float64)), dtype=np.float64)

    linear = LinearOperator((n, n), matvec=counted, dtype=np.float64)
    v0 = start_vector(n, seed)
    values, vectors = eigsh(linear, k=k, which="LA", v0=v0, tol=tol, ncv=ncv, maxiter=maxiter)
    order = np.argsort(values)[::-1]
    values, vectors = values[order], vectors[:, order]
    vectors = vectors * np.where(v0 @ vectors < 0, -1.0, 1.0)
    residuals = residual_norms(counted, values, vectors)
    return RitzPairs(values=values, vectors=vectors, residual_bounds=residuals, num_matvecs=applications)
