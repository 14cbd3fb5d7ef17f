"""Lanczos tridiagonalization of a symmetric operator, with full reorthogonalization.

Given a symmetric linear operator ``A`` (only its action ``v -> A v`` is needed)
and a unit start vector ``v_1``, ``m`` Lanczos steps build an orthonormal basis
``V = [v_1, ..., v_m]`` of the Krylov space ``span{v_1, A v_1, ..., A^(m-1) v_1}``
and the symmetric tridiagonal ``T = V^T A V``::

        [a_1  b_1                ]
        [b_1  a_2  b_2           ]
    T = [     b_2  ...   ...     ]        A V = V T + b_m v_(m+1) e_m^T
        [          ...   ... b_(m-1)]
        [              b_(m-1) a_m]

The eigenvalues of ``T`` (Ritz values) and the squared first components of its
eigenvectors are the nodes and weights of the Gauss quadrature of the spectral
measure of ``A`` seen from ``v_1`` -- the basis of stochastic Lanczos
quadrature (Golub & Meurant; Ghorbani, Krishnan & Xiao, ICML 2019,
arXiv:1901.10159). See :mod:`hessflow.density`.

Algorithm (Golub & Van Loan, *Matrix Computations*, 4th ed., section 10.1,
with complete reorthogonalization as in 10.3.1):

    for j = 1, ..., m:
        w   = A v_j                              # the only operator application
        repeat twice:                            # classical Gram-Schmidt, "twice is enough"
            h = V_j^T w;  w = w - V_j h;  c += h   # against ALL of v_1 .. v_j
        a_j = c_j                                # = v_j^T A v_j
        b_j = ||w||
        if b_j <= tol: stop, T is j x j          # Krylov space is invariant
        v_(j+1) = w / b_j

Why full reorthogonalization: in floating point the plain three-term recurrence
loses orthogonality as soon as a Ritz value converges, and then produces
spurious copies ("ghosts") of converged eigenvalues, which would show up as
false outliers in a spectral density. Projecting ``w`` against every previous
vector keeps ``V`` orthonormal to working precision. One classical
Gram-Schmidt pass is not enough when ``||w||`` shrinks a lot during the
projection (a nearly invariant Krylov space, e.g. tight eigenvalue clusters):
the rounding error ``~ eps ||A v_j||`` left in ``w`` becomes ``eps ||A|| / b_j``
after normalization. A second pass reduces it to working precision (Giraud,
Langou, Rozloznik & van den Eshof, "Rounding error analysis of the classical
Gram-Schmidt orthogonalization process", Numer. Math. 2005). Classical rather
than modified Gram-Schmidt because each pass is two matrix-vector products
with ``V`` (BLAS-2) instead of ``j`` dot products.

Cost: exactly one operator application per step (``m`` for ``m`` steps -- the
paper's code spent one extra), ``O(dim * j)`` flops per step for the
reorthogonalization, and ``dim * m`` float64 numbers of memory for ``V``, which
full reorthogonalization needs in any case.

Vectors on disk (``vectors_file``): ``V`` can instead live in a ``.npy`` file, memory-mapped
(``np.lib.format.open_memmap``), when ``dim * m * 8`` bytes exceed the RAM (25 million
parameters at ``m = 90``: 18 GB). Each step writes its column there, and both Gram-Schmidt
passes stream over ``V`` in blocks of whole rows ``V_r`` of at most :data:`VECTOR_BLOCK_BYTES`:
``h = sum_r V_r^T w_r`` over all blocks, then ``w_r -= V_r h`` block by block -- the same
classical Gram-Schmidt, with the sums of ``V^T w`` grouped by block (so the numbers agree with
the in-memory run to rounding, ``~ 1e-15`` relative, and bit for bit when ``V`` fits in one
block), and the update of one pass fused with the sums of the next (see
:func:`_orthogonalize_streamed`). The process then allocates a few ``dim``-vectors; the mapped
file's pages are page cache, which the kernel writes back and evicts as it needs. Reading ``V``
three times a step from the file costs about as much as from memory while the file fits the page
cache, and ``3 j dim * 8`` bytes of disk reads at step ``j`` when it does not.

Runs side by side (:func:`lanczos_side_by_side`): several independent runs (draws of stochastic
Lanczos quadrature: other start vectors, the same operator) advance in lockstep, so that each round's
products come from one call ``matmat(V)`` on a (dim, k) block of their current vectors, for an operator
that shares an expensive pass (over the data, for a Hessian) between several products. Each run is still
exactly a :func:`lanczos` run (state file, breakdown, diagnostics, vector store of its own): the step loop
is a generator that yields the vector to multiply and receives its product (:func:`_lanczos_steps`), and
:func:`lanczos` and :func:`lanczos_side_by_side` differ only in how they answer it.

Health diagnostics: every run ends by measuring, on the ``m`` vectors it holds
(also with ``keep_vectors=False``, and identically after a resume),

- ``orthogonality_loss = max_ij |(V^T V - I)_ij|``, the largest entry, in absolute
  value, of the Gram matrix's departure from the identity: the worst cosine between two
  Lanczos vectors or the worst departure of a squared norm from 1 (Simon's semi-orthogonality
  is stated on these entries). It bounds the 2-norm within a factor ``m``:
  ``orthogonality_loss <= ||V^T V - I||_2 <= m * orthogonality_loss``. With two
  Gram-Schmidt passes it is rounding, about ``1e-16 * sqrt(m)`` to ``1e-15 * sqrt(m)``;
  the plain three-term recurrence drives it to ``O(1)`` as soon as a Ritz value converges.
  Cost: one pass over ``V`` computing the upper triangle of ``V^T V`` blockwise, about
  ``m^2 dim`` flops (a quarter of the ``~ 4 m^2 dim`` of the two-pass reorthogonalization, no
  operator application) and at most :data:`GRAM_BLOCK_ENTRIES` extra float64 numbers of memory;
- ``min_beta``, the smallest off-diagonal ``b_j`` of ``T`` (``inf`` when ``m == 1``), and
  its relative form ``relative_min_beta = min_beta / max(|a_i|, b_i)``, the denominator
  being the lower bound on ``||A||`` that the breakdown test uses. A ``b_j`` small relative
  to ``||A||`` but above the breakdown tolerance is a near-breakdown: the next vector
  ``w / b_j`` is dominated by rounding.

:func:`health_warnings` turns them into messages, with the thresholds
:data:`ORTHOGONALITY_LOSS_TOL` and :data:`NEAR_BREAKDOWN_TOL` (justified there).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import itertools
import json
import os
import warnings
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import scipy.sparse
from scipy.sparse.linalg import LinearOperator

from .artifacts import atomic_write

__all__ = [
    "NEAR_BREAKDOWN_TOL",
    "ORTHOGONALITY_LOSS_TOL",
    "PROBES",
    "LanczosResult",
    "health_warnings",
    "lanczos",
    "lanczos_side_by_side",
    "start_vector",
    "tridiagonal_matrix",
]

Seed = int | Sequence[int]
Matvec = Callable[[np.ndarray], np.ndarray]
#: ``V -> A V`` for a block ``V`` of shape (dim, k): what `lanczos_side_by_side` calls once a round.
Matmat = Callable[[np.ndarray], np.ndarray]
#: What `lanczos` accepts as the operator: ``v -> A v``, a LinearOperator, or a matrix.
Operator = Matvec | LinearOperator | np.ndarray | scipy.sparse.sparray | scipy.sparse.spmatrix

#: A dense matrix is refused as not symmetric when max|A - A^T| exceeds this times max|A|
#: (well above the rounding of products such as B @ B.T, far below any real asymmetry).
SYMMETRY_TOL = 1e-10

#: Default relative breakdown tolerance (see :func:`lanczos`).
DEFAULT_BREAKDOWN_TOL = 1e-10

#: Version of the resumable-state file layout; bump when its fields change.
#: 2: the operator's identity (``operator_identity``, JSON) is stored and compared.
#: (The run identity gained ``probe`` and ``start_sha256`` within version 2: a state file without
#: them was written by a seeded Gaussian run, and is read as one. Also within version 2, the state
#: of a run with ``vectors_file`` holds the fields ``vectors_file`` and ``vectors_sha256`` instead
#: of ``vectors``: see :func:`_save_state`.)
STATE_FORMAT_VERSION = 2

#: The start-vector distributions of :func:`start_vector` (its ``probe`` argument).
PROBES = ("gaussian", "rademacher")

#: An explicit ``start`` vector must have norm 1 within this (see :func:`lanczos`).
START_NORM_TOL = 1e-8

#: :func:`health_warnings` flags ``orthogonality_loss`` (``max |V^T V - I|``) above this.
#: It is ``~ sqrt(eps)`` (``eps = 2.2e-16``, ``sqrt(eps) = 1.5e-8``), Simon's semi-orthogonality
#: level (H. D. Simon, "The Lanczos algorithm with partial reorthogonalization", Math. Comp. 42,
#: 1984): while every ``|v_i^T v_j|`` stays below it, the computed ``T`` is, to working precision,
#: the projection of ``A`` onto an orthonormal basis of the Krylov space, so its Ritz values and
#: Gauss quadrature weights mean what they should. Above it nothing guarantees that, and the
#: typical failure is ghosts: spurious extra copies of converged eigenvalues, which split their
#: quadrature weight and look like extra outliers in a density. Full reorthogonalization sits
#: at ``~ 1e-15 sqrt(m)`` (below ``1e-13`` for ``m <= 10^4``), five orders lower, so exceeding
#: this is never rounding: the reorthogonalization failed (or the basis was corrupted).
ORTHOGONALITY_LOSS_TOL = 1e-8

#: :func:`health_warnings` flags a near-breakdown when ``relative_min_beta`` (the smallest
#: ``b_j`` over ``max(|a_i|, b_i)``, a lower bound on ``||A||``) is below this. The next vector
#: ``v_(j+1) = w / b_j`` then carries the rounding left in ``w`` magnified by ``||A|| / b_j``,
#: and the default Hessian-vector product computes in float32 (relative rounding ``~ 1.2e-7``):
#: below ``1e-6``, within a factor 10 of that rounding, the steps after ``j`` are driven largely
#: by the operator's rounding rather than by ``A`` acting on the start vector, so the Ritz values
#: the tail of ``T`` adds are not reproducible (they carry little quadrature weight, of order
#: ``(b_j / gap)^2``, so a smoothed density mostly survives). Four orders above the default
#: breakdown tolerance (``1e-10``), which ends a run on a cleanly invariant Krylov space: the band
#: in between is neither a clean stop nor a healthy continuation. For a float64 operator the
#: warning is conservative.
NEAR_BREAKDOWN_TOL = 1e-6

#: The orthogonality check computes ``V^T V`` in row blocks of at most this many float64 entries
#: (8 MiB), so that it never needs an ``m x m`` array for very long runs.
GRAM_BLOCK_ENTRIES = 2**20

#: With ``vectors_file`` (Lanczos vectors on disk), the reorthogonalization and the orthogonality
#: check read ``V`` in blocks of whole rows of at most this many bytes (at least one row): 64 MiB,
#: ``j`` contiguous runs of ``64 MiB / j`` each at step ``j`` (745 KB at ``j = 90``), large enough for
#: full-speed BLAS and efficient reads, small against the RAM. Read at every call (tests set it small).
VECTOR_BLOCK_BYTES = 64 * 2**20


@dataclass(frozen=True, eq=False)
class LanczosResult:
    """Output of :func:`lanczos` for ``m`` completed steps.

    Attributes:
        alpha: ndarray, shape (m,), float64: the diagonal of ``T``.
        beta: ndarray, shape (m - 1,), float64: the off-diagonal of ``T`` (all positive).
        vectors: ndarray, shape (dim, m), float64: the Lanczos vectors ``v_1 .. v_m`` as columns
            (orthonormal); ``None`` when ``keep_vectors=False``. With ``vectors_file``, an
            `numpy.memmap` view ``V[:, :m]`` of that file (Fortran order), valid while the file
            exists; the caller owns the file and deletes it.
        residual_norm: ``b_m = ||A v_m - V T e_m||``, the norm of the residual after the last
            step: Ritz value ``theta_i`` of ``T`` with eigenvector ``s_i`` lies within
            ``residual_norm * |s_i[-1]|`` of an eigenvalue of ``A``. Below the breakdown
            tolerance when the run stopped on an invariant subspace.
        stopped_early: True when a breakdown (invariant Krylov space) ended the run before
            ``num_steps`` steps, so that ``m < num_steps``.
        num_matvecs: operator applications made by this call: ``m`` for a fresh run,
            ``m - resumed_from`` after resuming.
        resumed_from: the number of steps loaded from the state file, or ``None`` for a fresh run.
        discarded_state: why a state file found at the start was not resumed (it belonged to
            another run or operator: the differing keys, old and new values), or ``None``.
        orthogonality_loss: float64, ``max_ij |(V^T V - I)_ij|`` over the ``m`` Lanczos vectors
            (the max-abs entry; ``||V^T V - I||_2`` lies between it and ``m`` times it). Measured
            at the end of every run, resumed or not, also with ``keep_vectors=False``. Healthy:
            ``~ 1e-15 sqrt(m)``; above :data:`ORTHOGONALITY_LOSS_TOL` (``1e-8``) the Ritz values
            may include ghosts and the quadrature weights are unreliable. ``nan`` only in a
            result built by hand without it.
        min_beta: float64, the smallest off-diagonal ``b_j`` of ``T`` (``beta.min()``); ``inf``
            when ``m == 1`` (no off-diagonal: nothing can nearly break down). See also
            ``relative_min_beta``. ``nan`` only in a result built by hand without it.
    """

    alpha: np.ndarray
    beta: np.ndarray
    vectors: np.ndarray | None
    residual_norm: float
    stopped_early: bool
    num_matvecs: int
    resumed_from: int | None
    discarded_state: str | None = None
    orthogonality_loss: float = float("nan")
    min_beta: float = float("nan")

    @property
    def relative_min_beta(self) -> float:
        """``min_beta / max(max|alpha|, max beta)``: the smallest ``b_j`` relative to the lower
        bound on ``||A||`` that the breakdown test uses; ``inf`` when ``m == 1``."""
        if self.beta.size == 0:
            return float("inf")
        return float(self.min_beta / max(np.max(np.abs(self.alpha)), np.max(self.beta)))

    @property
    def num_steps(self) -> int:
        """``m``, the number of completed Lanczos steps (the order of ``T``)."""
        return self.alpha.shape[0]

    @property
    def tridiag(self) -> np.ndarray:
        """``T``: ndarray, shape (m, m), float64, symmetric tridiagonal."""
        return tridiagonal_matrix(self.alpha, self.beta)


def tridiagonal_matrix(alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Dense symmetric tridiagonal matrix from its diagonals.

    ``alpha``: shape (m,); ``beta``: shape (m - 1,). Returns shape (m, m), float64.
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    if alpha.ndim != 1 or beta.shape != (max(alpha.shape[0] - 1, 0),):
        raise ValueError(f"need alpha of shape (m,) and beta of shape (m-1,); got {alpha.shape}, {beta.shape}")
    return np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)


def _seed_entropy(seed: Seed) -> np.ndarray:
    """The seed as a 1-D uint64 array: the form stored in state files.

    ``np.random.default_rng`` gives the same stream for ``s``, ``[s]`` and this
    array (all are ``SeedSequence`` entropy), so storing it loses nothing.
    """
    if isinstance(seed, (bool, np.bool_)):
        raise TypeError("seed must be a non-negative int or a sequence of them, not a bool")
    entropy = np.atleast_1d(np.asarray(seed))
    if entropy.ndim != 1 or entropy.size == 0 or entropy.dtype.kind not in "iu":
        raise TypeError(f"seed must be a non-negative int or a non-empty sequence of them; got {seed!r}")
    if np.any(entropy < 0):
        raise ValueError(f"seed entries must be non-negative; got {seed!r}")
    return entropy.astype(np.uint64)


def start_vector(dim: int, seed: Seed, probe: str = "gaussian") -> np.ndarray:
    """Unit-norm random probe vector, shape (dim,), float64.

    Args:
        dim: the dimension ``n``.
        seed: an int or a sequence of ints such as ``(run_seed, step, draw)``, fed to
            ``np.random.default_rng`` (i.e. :class:`numpy.random.SeedSequence` entropy), so distinct
            tuples give independent streams.
        probe: the distribution, one of :data:`PROBES`:

            - ``"gaussian"`` (the default; the paper's): a standard Gaussian vector ``g`` divided by
              its norm, i.e. uniform on the unit sphere;
            - ``"rademacher"``: independent entries ``+-1`` (equally likely, from the same seeded
              generator) divided by ``sqrt(dim)``, so every entry is ``+-1/sqrt(dim)``.

    Both are normalized and have ``E[v v^T] = I / n``, hence ``n * v^T f(A) v`` is an unbiased
    estimate of ``trace f(A)`` (Hutchinson's estimator) and the Lanczos quadrature from ``v`` an
    unbiased estimate of the spectral density of ``A`` -- in both cases.

    Why Rademacher can be better: for ``s`` with iid ``+-1`` entries,
    ``Var(s^T A s) = 2 sum_{i != j} a_ij^2``: the diagonal of ``A`` contributes nothing, since
    ``s_i^2 = 1``. For an unnormalized Gaussian ``g`` it is ``2 ||A||_F^2``, diagonal included; the
    normalized Gaussian here has ``Var(n v^T A v) = 2 n / (n + 2) * (||A||_F^2 - tr(A)^2 / n)``,
    which removes only the diagonal's mean. So Rademacher probes give a lower-variance estimate of
    ``tr f(A)`` when ``f(A)`` has a large, varying diagonal (e.g. a Hessian whose curvature differs
    widely between parameters), and no better one when ``A``'s eigenvectors are delocalized,
    where the diagonal is nearly constant. They are not rotation invariant: the Gaussian probe's spectral measure
    does not depend on the eigenbasis of ``A``, the Rademacher one's does.

    Raises:
        ValueError: ``probe`` is not one of :data:`PROBES`.
    """
    _check_probe(probe)
    rng = np.random.default_rng(_seed_entropy(seed))
    if probe == "rademacher":
        signs = 2.0 * rng.integers(0, 2, size=dim) - 1.0
        return signs / np.sqrt(dim)
    gaussian = rng.standard_normal(dim)
    return gaussian / np.linalg.norm(gaussian)


def _check_probe(probe: str) -> None:
    if not isinstance(probe, str) or probe not in PROBES:
        raise ValueError(f"probe must be one of {PROBES}; got {probe!r}")


def _check_start(start, dim: int) -> np.ndarray:
    """An explicit start vector as a fresh float64 (dim,) array, checked finite and of unit norm."""
    vector = np.asarray(start)
    if np.iscomplexobj(vector) or not np.issubdtype(vector.dtype, np.number):
        raise TypeError(f"start must be a real vector; got dtype {vector.dtype}")
    vector = np.array(vector, dtype=np.float64, copy=True)
    if vector.shape != (dim,):
        raise ValueError(f"start must have shape ({dim},); got {vector.shape}")
    if not np.isfinite(vector).all():
        raise ValueError("start has non-finite entries (NaN or Inf)")
    norm = np.linalg.norm(vector)
    if abs(norm - 1.0) > START_NORM_TOL:
        raise ValueError(f"start must be a unit vector; its norm is {norm:.12g}: pass start / np.linalg.norm(start)")
    return vector


def _vector_sha256(vector: np.ndarray) -> str:
    """sha256 of the little-endian float64 bytes of ``vector``: the identity of an explicit start."""
    return hashlib.sha256(np.ascontiguousarray(vector, dtype="<f8").tobytes()).hexdigest()


def _apply_operator(matvec: Matvec, vector: np.ndarray, dim: int, step: int) -> np.ndarray:
    """``matvec(vector)`` as a fresh float64 array, checked for shape, dtype, finiteness."""
    # A copy: the operator must not be able to alias or modify the basis.
    product = matvec(vector.copy())
    product = np.asarray(product)
    if product.shape != (dim,):
        raise ValueError(
            f"operator returned shape {product.shape} at Lanczos step {step}; expected ({dim},)"
        )
    if product.dtype != np.float64:
        raise TypeError(
            f"operator returned dtype {product.dtype} at Lanczos step {step}; expected float64 "
            "(convert inside the operator, e.g. .astype(np.float64))"
        )
    if not np.isfinite(product).all():
        raise FloatingPointError(
            f"operator returned non-finite values at Lanczos step {step}; check the loss/HVP for NaN"
        )
    return np.array(product, dtype=np.float64, copy=True)


def _orthogonalize(w: np.ndarray, basis: np.ndarray, passes: int) -> tuple[np.ndarray, np.ndarray]:
    """Project ``w`` (dim,) off the columns of ``basis`` (dim, j) by classical Gram-Schmidt.

    Returns the projected ``w`` and the accumulated coefficients ``basis^T w``
    (j,) summed over the passes.
    """
    coefficients = np.zeros(basis.shape[1])
    for _ in range(passes):
        h = basis.T @ w
        w -= basis @ h
        coefficients += h
    return w, coefficients


def _orthogonalize_streamed(
    w: np.ndarray, basis: np.ndarray, passes: int, block_bytes: int
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_orthogonalize` reading ``basis`` (dim, j) in blocks of whole rows of ``block_bytes``.

    The blocks are ``V_r = basis[r0:r1, :]`` with ``(r1 - r0) * j * 8 <= block_bytes`` (at least one
    row): ``j`` contiguous runs of the Fortran-ordered file each. Every pass is still one classical
    Gram-Schmidt step, ``h = basis^T w = sum_r V_r^T w_r`` complete before ``w_r -= V_r h``. Since
    ``w_r`` after the update of pass ``k`` depends on block ``r`` alone, the same sweep also sums
    pass ``k + 1``'s ``V_r^T w_r``: ``passes + 1`` sweeps over ``basis`` instead of ``2 * passes``
    (3 reads of the file a step, not 4). Sweeps alternate direction (by the parity of the sweep's
    count over the whole run, ``j * (passes + 1)`` plus its index), so that each starts on the blocks
    the previous one read last, which a page cache smaller than the file still holds. The process
    allocates one ``j``-vector and one block of ``w`` besides; with the whole ``basis`` within one block,
    this is :func:`_orthogonalize`, bit for bit.

    Why rows, not column blocks: a column of a large model exceeds a block (25 million parameters:
    200 MB a column), so that column blocks would be single columns, BLAS-1 products which read all of
    ``w`` once per column: 3.7 times slower at ``dim = 10^7`` than one product over ``basis``, whereas
    row blocks keep ``w_r`` in cache and run at the in-memory speed.

    Args:
        w: ndarray, shape (dim,), float64, projected in place.
        basis: ndarray (or memory map), shape (dim, j), float64, Fortran order.
        passes: the number of Gram-Schmidt passes, ``>= 1``.
        block_bytes: the most bytes of ``basis`` read at once.

    Returns:
        ``(w, coefficients)``: the projected ``w`` and ``basis^T w`` (j,) summed over the passes.
    """
    dim, columns = basis.shape
    rows = max(1, block_bytes // (8 * columns))
    if rows >= dim:
        return _orthogonalize(w, basis, passes)
    blocks = [(first, min(first + rows, dim)) for first in range(0, dim, rows)]
    coefficients = np.zeros(columns)
    partial = np.empty(columns)
    product = np.empty(rows)
    previous = None  # the coefficients of the pass whose update this sweep applies
    for sweep in range(passes + 1):
        current = np.zeros(columns) if sweep < passes else None  # the pass this sweep sums
        forward = (columns * (passes + 1) + sweep) % 2 == 0
        for first, last in blocks if forward else reversed(blocks):
            block, segment = basis[first:last], w[first:last]
            if previous is not None:
                update = product[: last - first]
                np.matmul(block, previous, out=update)
                segment -= update
            if current is not None:
                np.matmul(block.T, segment, out=partial)
                current += partial
        if previous is not None:
            coefficients += previous
        previous = current
    return w, coefficients


def _as_matvec(operator: Operator, dim: int | None) -> tuple[Matvec, int]:
    """``(v -> A v, dim)`` of a matvec function (``dim`` required), a square
    `scipy.sparse.linalg.LinearOperator` or a square symmetric real dense or
    sparse matrix (``dim`` inferred; if given, it must agree)."""
    if isinstance(operator, LinearOperator) or isinstance(operator, np.ndarray) or scipy.sparse.issparse(operator):
        shape = tuple(operator.shape)
        if len(shape) != 2 or shape[0] != shape[1]:
            raise ValueError(f"the operator must be square (n, n); got shape {shape}")
        if dim is not None and dim != shape[0]:
            raise ValueError(f"dim is {dim!r} but the operator has shape {shape}")
        if shape[0] == 0:
            raise ValueError("dim must be a positive int; the operator has shape (0, 0)")
        if isinstance(operator, LinearOperator):
            return operator.matvec, shape[0]
        if np.iscomplexobj(operator) or not np.issubdtype(operator.dtype, np.number):
            raise TypeError(f"the matrix must be real; got dtype {operator.dtype}")
        # (np.asarray: an np.matrix times a vector would be a (1, n) matrix.)
        matrix = operator.astype(np.float64) if scipy.sparse.issparse(operator) else np.asarray(operator, np.float64)
        asymmetry = abs(matrix - matrix.T).max()
        if asymmetry > SYMMETRY_TOL * abs(matrix).max():
            raise ValueError(
                f"the matrix is not symmetric (max |A - A^T| = {float(asymmetry):.3g}); "
                "Lanczos needs a symmetric operator"
            )
        return (lambda v: matrix @ v), shape[0]
    if callable(operator):
        if dim is None:
            raise TypeError("dim is required with a matvec function: lanczos(matvec, dim, num_steps)")
        return operator, dim
    raise TypeError(
        "the operator must be a function v -> A v, a scipy.sparse.linalg.LinearOperator or a square matrix; "
        f"got {type(operator).__name__}"
    )


def _as_matmat(operator: Operator | Matmat, dim: int | None) -> tuple[Matmat, int]:
    """``(V -> A V, dim)`` of a matmat function (``dim`` required), a square
    `scipy.sparse.linalg.LinearOperator` (its ``matmat``) or a square symmetric real dense or sparse
    matrix (``A @ V``; ``dim`` inferred, checked as in :func:`_as_matvec`)."""
    if isinstance(operator, LinearOperator):
        _, dim = _as_matvec(operator, dim)  # square, dim agrees
        return operator.matmat, dim
    if isinstance(operator, np.ndarray) or scipy.sparse.issparse(operator):
        # The float64 matrix's `matrix @ v` is also its product with a block: `matrix @ V`.
        return _as_matvec(operator, dim)
    if callable(operator):
        if dim is None:
            raise TypeError(
                "dim is required with a matmat function: lanczos_side_by_side(matmat, dim, num_steps, seeds)"
            )
        return operator, dim
    raise TypeError(
        "the operator must be a function V -> A V, a scipy.sparse.linalg.LinearOperator or a square matrix; "
        f"got {type(operator).__name__}"
    )


def lanczos(
    matvec: Operator,
    dim: int | None = None,
    num_steps: int | None = None,
    seed: Seed = 0,
    keep_vectors: bool = True,
    *,
    state_file: str | os.PathLike | None = None,
    save_every: int | None = None,
    operator_identity: Mapping | None = None,
    log: Callable[[str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    breakdown_tol: float = DEFAULT_BREAKDOWN_TOL,
    probe: str = "gaussian",
    start: np.ndarray | None = None,
    vectors_file: str | os.PathLike | None = None,
) -> LanczosResult:
    """Run ``num_steps`` steps of Lanczos with full reorthogonalization.

    Args:
        matvec: the symmetric operator ``A``, as one of:

            - ``v -> A v``: takes a float64 array of shape (dim,) and returns a float64 array of
              shape (dim,). It receives a copy of the Lanczos vector and may keep or modify it;
            - a square `scipy.sparse.linalg.LinearOperator` (its ``matvec``; e.g. a
              `hessflow.hvp.HessianOperator`), ``dim`` inferred;
            - a square, symmetric, real numpy array or scipy sparse matrix (used in float64 as
              ``A @ v``), ``dim`` inferred.

            The three give the same result bit for bit for the same products:
            ``lanczos(a, num_steps=m)`` is ``lanczos(lambda v: a @ v, n, m)``.
        dim: the dimension of the operator; required with a function, optional (and checked)
            otherwise.
        num_steps: ``m``, the number of Lanczos steps, ``1 <= num_steps <= dim``. Exactly one
            ``matvec`` call per step.
        seed: int or sequence of ints, the seed of the start vector (see :func:`start_vector`),
            e.g. ``(run_seed, checkpoint_step, draw)``.
        keep_vectors: return the Lanczos vectors. They are held either way (full
            reorthogonalization needs them: in memory, or in ``vectors_file``); ``False`` only
            drops them from the result.
        state_file: a checkpoint of the run, an ``.npz`` file written atomically every
            ``save_every`` steps. If it exists when ``lanczos`` starts and belongs to this run
            (the same ``dim``, ``num_steps``, ``seed``, ``probe``, ``start``, ``breakdown_tol`` and
            ``operator_identity``), the run resumes from it, and the result is bit-identical to an
            uninterrupted run with the same ``vectors_file`` setting. A state file of another
            run or operator is discarded: the run starts fresh (and overwrites it at its first
            save) after ``log`` has named every differing key with its old and new value.
            ``lanczos`` never deletes it: the caller removes it after its outputs are safely
            written, so that a kill between the return and the output write still resumes.
        save_every: steps between checkpoints; required with ``state_file``. The last step is saved
            too, so that a finished run resumes (a job killed before writing its outputs) with no product.
        operator_identity: what defines the operator beyond its dimension, as a JSON-able
            mapping (nested mappings allowed; tuples compare as lists), e.g. the sha256 of the
            weights and data and the loss settings of a Hessian. Stored in the state file and
            compared on resume: the only guard against resuming the Krylov basis of a different
            matrix, which the state file cannot detect by itself. ``None`` is the empty mapping.
        log: receives a one-line message when a state file is discarded; ``None``: the message
            is issued as a `RuntimeWarning`.
        progress: ``progress(steps_done, num_steps)``, called after each step.
        breakdown_tol: the relative breakdown tolerance. The run stops after step ``j`` when
            ``b_j <= breakdown_tol * max(|a_1|, ..., |a_j|, b_1, ..., b_(j-1))``, the right-hand
            side being a lower bound on ``||A||``. Then ``A V_j = V_j T_j`` up to that residual:
            the Krylov space is invariant and ``T_j`` already carries the start vector's whole
            spectral measure. The default ``1e-10`` sits well above the rounding floor of the
            reorthogonalized residual (``~ eps sqrt(dim) ||A||``, about ``1e-13`` for a million
            parameters), so an exhausted Krylov space is detected rather than continued with a
            noise vector, and far below any ``b_j`` that moves a quadrature node or weight
            visibly.
        probe: the start vector's distribution, one of :data:`PROBES` (``"gaussian"``, the
            default, or ``"rademacher"``); see :func:`start_vector` for when Rademacher lowers the
            variance. Part of the run's identity in the state file.
        start: an explicit start vector instead of the seeded one: shape (dim,), real, of norm 1
            within ``1e-8`` (e.g. :func:`hessflow.deflation.deflated_start_vector`); ``seed`` and
            ``probe`` then do not affect the run. Its sha256 is part of the run's identity in the
            state file, so a state begun from another start vector is not resumed.
        vectors_file: where the Lanczos vectors live. ``None`` (the default): in memory, an
            array of ``dim * num_steps * 8`` bytes (25 million parameters at ``num_steps = 90``:
            18 GB). A path ending in ``.npy``: in that file, a float64 ``.npy`` array of shape
            (dim, num_steps) in Fortran order, memory-mapped, so that the process allocates a few
            ``dim``-vectors and reads one block of :data:`VECTOR_BLOCK_BYTES` at a time (the mapped
            pages are page cache, written back and evicted by the kernel). A fresh run creates
            (or overwrites: an earlier result's ``vectors`` mapped from it are lost) it and
            reserves its disk space up front, so that a full disk fails here with an `OSError`
            rather than mid-run. The Ritz values agree with the in-memory
            run's to rounding (the sums over ``V`` are grouped by block), and bit for bit while
            ``V`` fits one block. The result's ``vectors`` is then a memory-map view of the
            file, valid while the file exists: the caller owns the file and deletes it (after
            its outputs, and the state file, since a state of a disk run refers to it).
            With ``state_file``, the state holds the file's name and the sha256 of its last saved
            column instead of the vectors, and a resume reuses the file in place; a state whose
            file is missing or holds other vectors is discarded (naming the file). Switching
            the store between runs keeps a saved run: an in-memory state resumes into a disk run
            (copied into the file) and a disk state into an in-memory run (read from its file).
            Not part of the run's identity.

    Returns:
        A `LanczosResult`: ``tridiag`` (m, m), ``alpha`` (m,), ``beta`` (m-1,), ``vectors``
        (dim, m) or None, ``residual_norm``, ``stopped_early``, ``num_matvecs``,
        ``resumed_from``, ``discarded_state``, and the health diagnostics ``orthogonality_loss``
        and ``min_beta`` (``relative_min_beta``; see :func:`health_warnings`), measured on all
        ``m`` vectors whatever ``keep_vectors`` is. ``m == num_steps`` unless ``stopped_early``.

    Raises:
        FloatingPointError: if ``matvec`` returns NaN or Inf (naming the step).
        ValueError: for invalid arguments (a non-square or non-symmetric matrix, a ``dim`` that
            disagrees with the operator's shape, an unknown ``probe``, a ``start`` of the wrong
            shape or not of unit norm, a ``vectors_file`` not ending in ``.npy`` or equal to
            ``state_file``), a wrongly shaped ``matvec`` output, an
            ``operator_identity`` that is not JSON-able, or an unreadable or inconsistent state
            file (naming it, and saying to delete it).
        TypeError: for arguments of the wrong type (no ``num_steps``, a complex matrix) and a
            ``matvec`` output that is not float64.
        OSError: ``vectors_file`` cannot be created or its disk space reserved (naming it).

    References:
        G. H. Golub and C. F. Van Loan, *Matrix Computations*, 4th ed., 10.1, 10.3.
        B. Ghorbani, S. Krishnan and Y. Xiao, "An Investigation into Neural Net Optimization via
        Hessian Eigenvalue Density", ICML 2019.
    """
    matvec, dim = _as_matvec(matvec, dim)
    if num_steps is None:
        raise TypeError("num_steps is required: lanczos(operator, num_steps=m) or lanczos(matvec, dim, m)")
    return _lanczos(
        matvec,
        dim,
        num_steps,
        seed,
        keep_vectors,
        state_file=state_file,
        save_every=save_every,
        operator_identity=operator_identity,
        log=log,
        progress=progress,
        breakdown_tol=breakdown_tol,
        gram_schmidt_passes=2,
        probe=probe,
        start=start,
        vectors_file=vectors_file,
    )


def _lanczos(
    matvec: Matvec,
    dim: int,
    num_steps: int,
    seed: Seed,
    keep_vectors: bool,
    *,
    state_file: str | os.PathLike | None,
    save_every: int | None,
    progress: Callable[[int, int], None] | None,
    breakdown_tol: float,
    gram_schmidt_passes: int,
    operator_identity: Mapping | None = None,
    log: Callable[[str], None] | None = None,
    probe: str = "gaussian",
    start: np.ndarray | None = None,
    vectors_file: str | os.PathLike | None = None,
) -> LanczosResult:
    """:func:`lanczos` with the number of Gram-Schmidt passes as a parameter.

    ``gram_schmidt_passes=1`` exists only to demonstrate (in the tests) why the
    public function uses two; ``gram_schmidt_passes=0`` is the plain three-term recurrence
    without any reorthogonalization (``w = A v_j - b_(j-1) v_(j-1)``, ``a_j = v_j^T w``,
    ``w -= a_j v_j``; Paige's variant), which exists only to show what the health
    diagnostics catch.
    """
    spec = _check_run(
        dim,
        num_steps,
        seed,
        keep_vectors,
        state_file=state_file,
        save_every=save_every,
        progress=progress,
        breakdown_tol=breakdown_tol,
        gram_schmidt_passes=gram_schmidt_passes,
        operator_identity=operator_identity,
        log=log,
        probe=probe,
        start=start,
        vectors_file=vectors_file,
    )
    # stacklevel 4 names the caller of `lanczos` in a discarded state's warning: the frames are
    # _open_run, this function, lanczos, its caller.
    run = _open_run(spec, stacklevel=4)
    answer = _advance(run, None)
    while not isinstance(answer, LanczosResult):
        step, vector = answer
        answer = _advance(run, _apply_operator(matvec, vector, spec.dim, step))
    return answer


@dataclass(frozen=True, eq=False)
class _RunSpec:
    """One Lanczos run's checked arguments (see :func:`_check_run`); no file has been touched yet.

    ``state_file`` and ``vectors_name`` are kept as given, for the messages and the state's
    ``vectors_file`` field; ``vectors_path`` is the checked path; ``run_identity`` is what the state
    file stores and compares (see :func:`_load_state`).
    """

    dim: int
    num_steps: int
    entropy: np.ndarray
    probe: str
    start: np.ndarray | None
    keep_vectors: bool
    state_file: str | os.PathLike | None
    save_every: int | None
    vectors_path: Path | None
    vectors_name: str | None
    breakdown_tol: float
    gram_schmidt_passes: int
    run_identity: dict
    log: Callable[[str], None] | None
    progress: Callable[[int, int], None] | None


def _check_breakdown_tol(breakdown_tol: float) -> None:
    if not breakdown_tol >= 0.0:
        raise ValueError(f"breakdown_tol must be >= 0; got {breakdown_tol!r}")


def _check_save_every(save_every: int | None) -> None:
    if save_every is not None and (not isinstance(save_every, (int, np.integer)) or save_every < 1):
        raise ValueError(f"save_every must be a positive int; got {save_every!r}")


def _check_run(
    dim: int,
    num_steps: int,
    seed: Seed,
    keep_vectors: bool,
    *,
    state_file: str | os.PathLike | None,
    save_every: int | None,
    progress: Callable[[int, int], None] | None,
    breakdown_tol: float,
    gram_schmidt_passes: int,
    operator_identity: Mapping | None,
    log: Callable[[str], None] | None,
    probe: str,
    start: np.ndarray | None,
    vectors_file: str | os.PathLike | None,
) -> _RunSpec:
    """Check the arguments of one run (those of :func:`_lanczos` but the operator); reads no file.

    Separate from :func:`_open_run` so that :func:`lanczos_side_by_side` checks every run before it
    loads any state or creates any vectors file.

    Raises:
        ValueError, TypeError: as :func:`lanczos` documents, in the same order.
    """
    dim, num_steps = _check_sizes(dim, num_steps)
    _check_breakdown_tol(breakdown_tol)
    if (state_file is None) != (save_every is None):
        raise ValueError("state_file and save_every go together: give both or neither")
    _check_save_every(save_every)
    vectors_path = _check_vectors_file(vectors_file, state_file)
    entropy = _seed_entropy(seed)
    _check_probe(probe)
    if start is not None:
        start = _check_start(start, dim)
    run_identity = {
        "dim": dim,
        "num_steps": num_steps,
        "seed": entropy.tolist(),
        "probe": probe,
        "start_sha256": None if start is None else _vector_sha256(start),
        "breakdown_tol": float(breakdown_tol),
        "gram_schmidt_passes": gram_schmidt_passes,
        "operator": _canonical_identity(operator_identity),
    }
    return _RunSpec(
        dim=dim,
        num_steps=num_steps,
        entropy=entropy,
        probe=probe,
        start=start,
        keep_vectors=keep_vectors,
        state_file=state_file,
        save_every=save_every,
        vectors_path=vectors_path,
        vectors_name=None if vectors_path is None else os.fsdecode(os.fspath(vectors_file)),
        breakdown_tol=breakdown_tol,
        gram_schmidt_passes=gram_schmidt_passes,
        run_identity=run_identity,
        log=log,
        progress=progress,
    )


def _open_run(spec: _RunSpec, stacklevel: int) -> Generator[tuple[int, np.ndarray], np.ndarray, LanczosResult]:
    """Allocate a run's arrays, resume its state file (or discard it) and return its step generator.

    All the file work of a run's start happens here, before the first product: an unreadable state
    file raises now, a discarded one is reported now (to ``spec.log``, or as a `RuntimeWarning` whose
    ``stacklevel`` counts from this function's frame), and a fresh disk run's vectors file is created
    now. See :func:`_lanczos_steps` for the generator.
    """
    dim, num_steps, vectors_path = spec.dim, spec.num_steps, spec.vectors_path
    # Preallocated; Fortran order so that every Lanczos vector (column) and
    # every leading block basis[:, :j] is contiguous for BLAS. With a vectors file, `store` is its
    # memory map (opened once the state file, if any, has been read) and `basis` a plain ndarray
    # view of it.
    store = None
    basis = np.zeros((dim, num_steps), order="F") if vectors_path is None else None
    alpha = np.zeros(num_steps)
    # residual_norms[j] = b_(j+1), the norm of the residual after step j+1;
    # T's off-diagonal is residual_norms[:m-1], the last entry is residual_norm.
    residual_norms = np.zeros(num_steps)

    steps_done = 0
    resumed_from = None
    next_vector = None
    discarded = None
    state_file = spec.state_file
    if state_file is not None and Path(state_file).exists():
        loaded = _load_state(Path(state_file), spec.run_identity, basis, alpha, residual_norms, vectors_path)
        if isinstance(loaded, str):
            discarded = loaded
            message = f"discarding the Lanczos state {str(state_file)!r}: {discarded}; starting fresh"
            if spec.log is None:
                warnings.warn(message, RuntimeWarning, stacklevel=stacklevel)
            else:
                spec.log(message)
        else:
            steps_done, next_vector, store = loaded
            resumed_from = steps_done
    if vectors_path is not None:
        if store is None:
            store = _create_vectors_file(vectors_path, dim, num_steps)
        basis = np.asarray(store)
    if next_vector is None:
        next_vector = start_vector(dim, spec.entropy, spec.probe) if spec.start is None else spec.start
    return _lanczos_steps(spec, basis, store, alpha, residual_norms, steps_done, next_vector, resumed_from, discarded)


def _lanczos_steps(
    spec: _RunSpec,
    basis: np.ndarray,
    store: np.memmap | None,
    alpha: np.ndarray,
    residual_norms: np.ndarray,
    steps_done: int,
    next_vector: np.ndarray,
    resumed_from: int | None,
    discarded: str | None,
) -> Generator[tuple[int, np.ndarray], np.ndarray, LanczosResult]:
    """The Lanczos steps of one run, as a generator that asks for each operator product.

    Each step yields ``(step, v_j)``: ``step`` the 1-based number of the Lanczos step, ``v_j`` the
    Lanczos vector to multiply, shape (dim,), float64, a view of the basis (the driver copies it
    before handing it to the operator). It then receives ``A v_j``: a fresh float64 array of shape
    (dim,), already checked for shape, dtype and finiteness, which the generator owns and projects
    in place. The generator returns the `LanczosResult` (as ``StopIteration.value``) after the last
    step: at once, with no request, for a state that is already finished.

    Why a generator: the driver decides how products are computed. :func:`_lanczos` answers each
    request with one ``matvec``; :func:`lanczos_side_by_side` collects the requests of several runs
    into one ``matmat``. The numbers depend only on the products received, so a run computes the
    same thing bit for bit whichever drives it.

    Args:
        spec: the run's checked arguments.
        basis: (dim, num_steps) float64, Fortran order: the in-memory basis, or the plain ndarray
            view of ``store``; its first ``steps_done`` columns filled (resumed).
        store: the `numpy.memmap` of the vectors file (disk runs), or ``None``.
        alpha, residual_norms: (num_steps,) float64, the first ``steps_done`` entries filled.
        steps_done: the steps already done (loaded from the state file), ``0`` for a fresh run.
        next_vector: (dim,) float64, ``v_(steps_done + 1)``.
        resumed_from, discarded: what the result reports (see `LanczosResult`).
    """
    num_steps, state_file, passes = spec.num_steps, spec.state_file, spec.gram_schmidt_passes
    num_matvecs = 0
    breakdown = False
    while steps_done < num_steps and not breakdown:
        j = steps_done  # 0-based index of the vector being expanded
        basis[:, j] = next_vector
        w = yield j + 1, basis[:, j]
        num_matvecs += 1
        if passes == 0:  # the plain recurrence (tests only; see _lanczos)
            if j > 0:
                w -= residual_norms[j - 1] * basis[:, j - 1]
            alpha[j] = basis[:, j] @ w
            w -= alpha[j] * basis[:, j]
        elif store is None:
            w, coefficients = _orthogonalize(w, basis[:, : j + 1], passes)
            alpha[j] = coefficients[j]
        else:
            w, coefficients = _orthogonalize_streamed(w, basis[:, : j + 1], passes, VECTOR_BLOCK_BYTES)
            alpha[j] = coefficients[j]
        residual_norms[j] = np.linalg.norm(w)
        steps_done = j + 1

        norm_estimate = max(np.max(np.abs(alpha[:steps_done])), np.max(residual_norms[:j], initial=0.0))
        breakdown = residual_norms[j] <= spec.breakdown_tol * norm_estimate
        if not breakdown:
            next_vector = w / residual_norms[j]
        if spec.progress is not None:
            spec.progress(steps_done, num_steps)
        # A breakdown step is never saved: resuming recomputes it and stops
        # there again, deterministically. The last step always is: a finished run's state then
        # yields its result with no product (a job killed before writing its outputs, or a draw
        # computed side by side in another job, `lanczos_side_by_side`).
        if not breakdown and state_file is not None and (steps_done % spec.save_every == 0
                                                         or steps_done == num_steps):
            _save_state(
                Path(state_file),
                spec.run_identity,
                steps_done,
                basis if store is None else store,
                alpha,
                residual_norms,
                next_vector,
                vectors_file=spec.vectors_name,
            )

    m = steps_done
    # The diagnostics use the whole basis, which is held whether or not it is returned, and
    # after a resume it is bit-identical to an uninterrupted run's: so are they.
    beta = residual_norms[: m - 1].copy()
    if store is None:
        orthogonality_loss = _orthogonality_loss(basis[:, :m])
        vectors = basis[:, :m]
    else:
        orthogonality_loss = _orthogonality_loss(basis[:, :m], row_block=max(1, VECTOR_BLOCK_BYTES // (8 * m)))
        store.flush()
        vectors = store[:, :m]
    return LanczosResult(
        alpha=alpha[:m].copy(),
        beta=beta,
        # A view, not a copy: the basis can be gigabytes, and nothing else holds it.
        vectors=vectors if spec.keep_vectors else None,
        residual_norm=float(residual_norms[m - 1]),
        stopped_early=m < num_steps,
        num_matvecs=num_matvecs,
        resumed_from=resumed_from,
        discarded_state=discarded,
        orthogonality_loss=orthogonality_loss,
        min_beta=float(np.min(beta, initial=np.inf)),
    )


def _advance(
    run: Generator[tuple[int, np.ndarray], np.ndarray, LanczosResult], product: np.ndarray | None
) -> tuple[int, np.ndarray] | LanczosResult:
    """``run.send(product)`` (``None`` to start it): its next request ``(step, v_j)``, or its result.

    Only the generator's own end is caught here, not a `StopIteration` of the operator's.
    """
    try:
        return run.send(product)
    except StopIteration as finished:
        return finished.value


def _apply_block_operator(matmat: Matmat, block: np.ndarray, dim: int, runs: list[int], steps: list[int]) -> np.ndarray:
    """``matmat(block)``, checked for shape (dim, k), dtype float64 and finiteness.

    Args:
        matmat: ``V -> A V``.
        block: (dim, k) float64, Fortran order, a fresh array (the operator may keep or modify it).
        dim: the dimension.
        runs, steps: for column ``c``, the index of its run and the 1-based Lanczos step of that
            run it is for; the errors name them.

    Returns:
        The product as the operator returned it (an ndarray, shape (dim, k), float64); the caller
        copies each column it keeps.
    """
    k = block.shape[1]

    def named(columns) -> str:
        return ", ".join(f"run {runs[c]} at Lanczos step {steps[c]}" for c in columns)

    product = np.asarray(matmat(block))
    if product.shape != (dim, k):
        raise ValueError(
            f"operator returned shape {product.shape} for the Lanczos vectors of {named(range(k))}; "
            f"expected ({dim}, {k})"
        )
    if product.dtype != np.float64:
        raise TypeError(
            f"operator returned dtype {product.dtype} for the Lanczos vectors of {named(range(k))}; "
            "expected float64 (convert inside the operator, e.g. .astype(np.float64))"
        )
    finite = np.isfinite(product).all(axis=0)
    if not finite.all():
        raise FloatingPointError(
            f"operator returned non-finite values for {named(np.flatnonzero(~finite))}; "
            "check the loss/HVP for NaN"
        )
    return product


def _one_per_run(name: str, values) -> list:
    """``values`` as a list, one entry per run; refused if it is no sequence (a str or path, a bare seed)."""
    if (
        isinstance(values, (str, bytes, os.PathLike, Mapping))
        or not hasattr(values, "__len__")
        or not hasattr(values, "__iter__")
        or isinstance(values, np.ndarray) and values.ndim == 0
    ):
        raise TypeError(
            f"{name} must be a sequence with one entry per run, e.g. {name}=[..., ...]; got {values!r}"
        )
    return list(values)


def lanczos_side_by_side(
    matmat: Operator | Matmat,
    dim: int | None = None,
    num_steps: int | None = None,
    seeds: Sequence[Seed] = (),
    keep_vectors: bool = True,
    *,
    state_files: Sequence[str | os.PathLike | None] | None = None,
    save_every: int | None = None,
    operator_identity: Mapping | None = None,
    log: Callable[[str], None] | None = None,
    progress: Callable[[int, int, int], None] | None = None,
    breakdown_tol: float = DEFAULT_BREAKDOWN_TOL,
    probe: str = "gaussian",
    starts: Sequence[np.ndarray | None] | None = None,
    vectors_files: Sequence[str | os.PathLike | None] | None = None,
) -> list[LanczosResult]:
    """Several independent :func:`lanczos` runs in lockstep, their products computed together.

    Run ``r`` is exactly ``lanczos(A, dim, num_steps, seeds[r], keep_vectors,
    state_file=state_files[r], save_every=save_every, operator_identity=operator_identity, log=log,
    breakdown_tol=breakdown_tol, probe=probe, start=starts[r], vectors_file=vectors_files[r])``:
    its own start vector, state file (resumed, or discarded with the same message), breakdown,
    health diagnostics and vector store. What changes is who asks for the products. The runs
    advance in rounds: in each, every run that has not finished contributes its current Lanczos
    vector, and ONE ``matmat`` call multiplies them all, as the columns of a (dim, k) block in run
    order (k the number of unfinished runs). An operator that computes several products in one
    pass (e.g. a Hessian that shares the expensive pass over the data between them) thus costs
    one pass per round instead of one per run and step. A run that stops early (a breakdown), or
    that was resumed further along, finishes earlier and drops out of the later rounds: in round
    ``t`` a run resumed at step 10 does its step ``10 + t``, a fresh one its step ``t``.

    Bit for bit: run ``r``'s numbers depend only on the products it receives, so they are those of
    the separate ``lanczos`` run when column ``c`` of ``matmat(V)`` equals, bit for bit, the
    product of a matvec with ``V[:, c]`` (e.g. a matmat that multiplies column by column). A
    BLAS-3 product (``A @ V``) rounds differently from ``A @ v`` (another summation order), so
    the runs then agree with separate ones to rounding (``~ 1e-13`` relative over tens of steps
    with full reorthogonalization), not bit for bit.

    Memory: the runs are held together, ``len(seeds)`` times one run's (``dim * num_steps * 8``
    bytes each in memory; see ``vectors_files``), plus the block and its product (``2 k dim * 8``
    bytes).

    Args:
        matmat: the symmetric operator ``A``, as one of:

            - ``V -> A V``: takes a float64 array of shape (dim, k), Fortran order (every column
              contiguous), ``1 <= k <= len(seeds)``, a fresh array each call that it may keep or
              modify, and returns a float64 array of shape (dim, k) (any order) whose column ``c``
              is ``A V[:, c]``;
            - a square `scipy.sparse.linalg.LinearOperator` (its ``matmat``; e.g. a
              `hessflow.hvp.HessianOperator`), ``dim`` inferred;
            - a square, symmetric, real numpy array or scipy sparse matrix (used in float64 as
              ``A @ V``), ``dim`` inferred.
        dim: the dimension; required with a function, optional (and checked) otherwise.
        num_steps: ``m``, the number of Lanczos steps of every run, ``1 <= num_steps <= dim``.
        seeds: one seed per run (an int or a sequence of ints each, see :func:`start_vector`), e.g.
            ``[(run_seed, checkpoint_step, draw) for draw in range(4)]``: the number of runs. May
            be empty (or hold ``None`` for a run) when ``starts`` gives that run's start vector (its
            seed is then ``0``, the default of :func:`lanczos`).
        keep_vectors: as in :func:`lanczos`, for every run.
        state_files: one state file (or ``None``) per run, as ``lanczos``'s ``state_file``; no two
            runs may share one. ``None``: no run has one.
        save_every: steps between checkpoints of the runs that have a state file; required with
            any state file.
        operator_identity, log, breakdown_tol, probe: as in :func:`lanczos`, for every run (a
            discarded state's message names its file).
        progress: ``progress(run, steps_done, num_steps)``, called after each step of each run,
            ``run`` its index.
        starts: one explicit start vector (or ``None``: the seeded one) per run, as ``lanczos``'s
            ``start``; ``None``: every run seeded.
        vectors_files: one vectors file (or ``None``: in memory) per run, as ``lanczos``'s
            ``vectors_file``; no two runs may share one, nor may one be another run's state file.

    Returns:
        list of `LanczosResult`, one per run, in run order, each what :func:`lanczos` returns
        (``num_matvecs`` counts the products of that run, i.e. the columns it had in the blocks).

    Raises:
        ValueError, TypeError: for invalid arguments, all checked before the first product (and
            before any state is loaded or vectors file created): those :func:`lanczos` refuses
            (a run's own prefixed with ``run r:``), no run at all, lists of different lengths,
            a run with neither seed nor start, a file shared between runs, ``save_every``
            without any state file; and for a ``matmat`` output of the wrong shape (ValueError)
            or dtype (TypeError), naming every run of the round and its Lanczos step.
        FloatingPointError: ``matmat`` returned NaN or Inf, naming the runs and the Lanczos
            steps of the affected columns.
        OSError: a vectors file cannot be created (naming it).
    """
    matmat, dim = _as_matmat(matmat, dim)
    if num_steps is None:
        raise TypeError(
            "num_steps is required: lanczos_side_by_side(operator, num_steps=m, seeds=seeds) or "
            "lanczos_side_by_side(matmat, dim, m, seeds)"
        )
    # Lists, one entry per run (None: not given); the seeds may be empty when starts gives every run.
    per_run = {"seeds": _one_per_run("seeds", seeds)}
    for name, values in (("starts", starts), ("state_files", state_files), ("vectors_files", vectors_files)):
        per_run[name] = None if values is None else _one_per_run(name, values)
    num_runs = len(per_run["seeds"]) or len(per_run["starts"] or ())
    if num_runs == 0:
        raise ValueError("no runs: give one seed per run (seeds) or one start vector per run (starts)")
    mismatched = [
        name
        for name, values in per_run.items()
        if values is not None and len(values) != num_runs and not (name == "seeds" and values == [])
    ]
    if mismatched:
        given = ", ".join(f"{len(values)} {name}" for name, values in per_run.items() if values is not None)
        raise ValueError(f"seeds, starts, state_files and vectors_files need one entry per run each; got {given}")
    seeds, starts, state_files, vectors_files = (per_run[name] or [None] * num_runs for name in per_run)

    # What all runs share, checked once (not in the name of run 0).
    dim, num_steps = _check_sizes(dim, num_steps)
    _check_breakdown_tol(breakdown_tol)
    has_state = any(path is not None for path in state_files)
    if has_state != (save_every is not None):
        raise ValueError("state_files and save_every go together: give save_every with any state file, else neither")
    _check_save_every(save_every)
    _check_probe(probe)
    _canonical_identity(operator_identity)

    specs = []
    for run in range(num_runs):
        if seeds[run] is None and starts[run] is None:
            raise ValueError(f"run {run} has neither a seed nor a start vector: give seeds, one per run")
        try:
            specs.append(
                _check_run(
                    dim,
                    num_steps,
                    0 if seeds[run] is None else seeds[run],
                    keep_vectors,
                    state_file=state_files[run],
                    save_every=None if state_files[run] is None else save_every,
                    progress=None if progress is None else functools.partial(progress, run),
                    breakdown_tol=breakdown_tol,
                    gram_schmidt_passes=2,
                    operator_identity=operator_identity,
                    log=log,
                    probe=probe,
                    start=starts[run],
                    vectors_file=vectors_files[run],
                )
            )
        except (TypeError, ValueError) as error:
            raise type(error)(f"run {run}: {error}") from error
    # A file written by two runs would hold whichever saved last: the other's resume would mix them.
    files = [
        *(("state file", run, Path(spec.state_file)) for run, spec in enumerate(specs) if spec.state_file is not None),
        *(("vectors file", run, spec.vectors_path) for run, spec in enumerate(specs) if spec.vectors_path is not None),
    ]
    for (kind, run, path), (other_kind, other_run, other_path) in itertools.combinations(files, 2):
        if run != other_run and _same_path(path, other_path):  # (a run's own pair: _check_vectors_file)
            raise ValueError(
                f"run {run}'s {kind} and run {other_run}'s {other_kind} are the same file {str(path)!r}: "
                "every run needs files of its own"
            )

    # Every run's state is loaded (or discarded) and its vectors file created before the first
    # product. stacklevel 3: _open_run, this function, its caller. (A loop, not a comprehension,
    # which is a frame of its own before Python 3.12.)
    generators = []
    for spec in specs:
        generators.append(_open_run(spec, stacklevel=3))
    results: list[LanczosResult | None] = [None] * num_runs
    requests = {}  # run -> (step, v_j) of the unfinished runs, in run order
    for run, generator in enumerate(generators):
        answer = _advance(generator, None)
        if isinstance(answer, LanczosResult):
            results[run] = answer  # a finished state: no product
        else:
            requests[run] = answer
    while requests:
        runs = list(requests)
        # A fresh block each round, Fortran order: every column contiguous, as the single run's
        # matvec receives its vector (a column-exact matmat then gives that run's products bit for bit).
        block = np.empty((dim, len(runs)), order="F")
        for column, run in enumerate(runs):
            block[:, column] = requests[run][1]
        product = _apply_block_operator(matmat, block, dim, runs, [requests[run][0] for run in runs])
        del block
        for column, run in enumerate(runs):
            # A fresh contiguous copy per column: the run projects it in place, and the operator may
            # keep its output.
            answer = _advance(generators[run], np.array(product[:, column], dtype=np.float64, copy=True))
            if isinstance(answer, LanczosResult):
                results[run] = answer
                del requests[run]
            else:
                requests[run] = answer
        del product
    return results


def _orthogonality_loss(vectors: np.ndarray, row_block: int | None = None) -> float:
    """``max_ij |(V^T V - I)_ij|`` of ``vectors`` (dim, m), from the upper triangle of ``V^T V``.

    Row blocks of the Gram matrix of at most :data:`GRAM_BLOCK_ENTRIES` entries:
    ``V[:, s:e]^T V[:, s:]``, about ``m^2 dim`` flops in all, no copy of ``V``.

    Args:
        vectors: ndarray (or memory map), shape (dim, m), float64.
        row_block: ``None``: each Gram block is one product over all of ``V`` (in memory).
            An int: each Gram block is summed over blocks of this many rows of ``V``
            (``V[r:r+row_block, s:e]^T V[r:r+row_block, s:]``), so that a memory-mapped ``V`` is
            read once per Gram block, in pieces of ``row_block * m`` numbers (``m`` contiguous
            runs of ``row_block``), and never held whole.

    Returns:
        The loss, a Python float.
    """
    dim, m = vectors.shape
    block = max(1, min(m, GRAM_BLOCK_ENTRIES // m))
    loss = 0.0
    for first in range(0, m, block):
        last = min(first + block, m)
        if row_block is None:
            gram = vectors[:, first:last].T @ vectors[:, first:]
        else:
            gram = np.zeros((last - first, m - first))
            partial = np.empty_like(gram)
            for row in range(0, dim, row_block):
                rows = slice(row, min(row + row_block, dim))
                np.matmul(vectors[rows, first:last].T, vectors[rows, first:], out=partial)
                gram += partial
        diagonal = np.arange(last - first)
        gram[diagonal, diagonal] -= 1.0
        loss = max(loss, float(np.max(np.abs(gram, out=gram))))
    return loss


def health_warnings(
    result: LanczosResult,
    *,
    orthogonality_tol: float = ORTHOGONALITY_LOSS_TOL,
    near_breakdown_tol: float = NEAR_BREAKDOWN_TOL,
) -> list[str]:
    """Human-readable warnings for a suspect Lanczos run; ``[]`` when it is healthy.

    Checks, with the thresholds justified at :data:`ORTHOGONALITY_LOSS_TOL` and
    :data:`NEAR_BREAKDOWN_TOL`:

    - ``result.orthogonality_loss > orthogonality_tol`` (or not finite, i.e. not measured): the
      Lanczos vectors are not orthonormal, so ``T`` is not the projection it stands for; its
      Ritz values may include ghosts and its quadrature weights are unreliable;
    - ``result.relative_min_beta < near_breakdown_tol``: a near-breakdown, after which the tail
      of ``T`` is driven by rounding.

    A run that ``stopped_early`` on an invariant Krylov space is healthy (its last ``b_m``, the
    ``residual_norm``, is not part of ``T``); so is a small ``residual_norm`` at the end of a full
    run, which means converged Ritz values.

    Args:
        result: a :class:`LanczosResult` from :func:`lanczos`.
        orthogonality_tol: the largest acceptable ``max |V^T V - I|``.
        near_breakdown_tol: the smallest acceptable ``min_j b_j / max(|a_i|, b_i)``.

    Returns:
        list of str, one message per problem found, each naming the diagnostic, its value and
        the threshold.
    """
    messages = []
    loss = result.orthogonality_loss
    if not np.isfinite(loss):
        messages.append(
            f"orthogonality_loss is {loss!r}: the orthogonality of the Lanczos vectors was not measured, "
            "so the Ritz values and quadrature weights cannot be trusted as they stand"
        )
    elif loss > orthogonality_tol:
        messages.append(
            f"Lanczos vectors lost orthogonality: orthogonality_loss = max|V^T V - I| = {loss:.3g} > "
            f"{orthogonality_tol:.3g} (full reorthogonalization keeps it near 1e-15 sqrt(m)); T is not the "
            "projection of the operator onto an orthonormal basis, so its Ritz values may include spurious "
            "copies (ghosts) of converged eigenvalues and the quadrature weights are unreliable"
        )
    relative = result.relative_min_beta
    if relative < near_breakdown_tol:
        step = int(np.argmin(result.beta)) + 1
        messages.append(
            f"near-breakdown at Lanczos step {step}: min_beta = b_{step} = {result.min_beta:.3g}, "
            f"{relative:.3g} times the norm estimate max(|a_i|, b_i), below {near_breakdown_tol:.3g}: the Krylov "
            f"space was nearly invariant, so the steps after {step} are driven by rounding (the operator's "
            "included: ~1e-7 relative for a float32 Hessian-vector product) and the Ritz values of the tail of T "
            "are not reproducible (they carry little quadrature weight)"
        )
    return messages


def _check_sizes(dim: int, num_steps: int) -> tuple[int, int]:
    for name, value in (("dim", dim), ("num_steps", num_steps)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}")
    if num_steps > dim:
        # More steps than dimensions cannot produce new orthonormal vectors.
        raise ValueError(f"num_steps ({num_steps}) must not exceed dim ({dim})")
    return int(dim), int(num_steps)


def _canonical_identity(operator_identity: Mapping | None) -> dict:
    """``operator_identity`` as it reads back from JSON (tuples as lists), checked JSON-able."""
    if operator_identity is None:
        return {}
    if not isinstance(operator_identity, Mapping):
        raise TypeError(f"operator_identity must be a mapping; got {type(operator_identity).__name__}")
    try:
        return json.loads(json.dumps(dict(operator_identity), sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise ValueError(f"operator_identity must be JSON-able (finite numbers, str keys): {error}") from None


def _flatten(identity: Mapping, prefix: str = "") -> dict:
    """Nested mappings as one level of dotted keys: ``{"hessian": {"dtype": ..}}`` -> ``hessian.dtype``."""
    flat = {}
    for key, value in identity.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):  # (an empty mapping adds no key)
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _identity_differences(saved: Mapping, current: Mapping) -> list[str]:
    """``"key: OLD in the state file, NEW now"`` for every dotted key whose value differs."""
    saved_flat, current_flat = _flatten(saved), _flatten(current)

    def shown(flat, key):
        return json.dumps(flat[key]) if key in flat else "absent"

    return [
        f"{key}: {shown(saved_flat, key)} in the state file, {shown(current_flat, key)} now"
        for key in sorted(saved_flat.keys() | current_flat.keys())
        if key not in saved_flat or key not in current_flat or saved_flat[key] != current_flat[key]
    ]


def _check_vectors_file(
    vectors_file: str | os.PathLike | None, state_file: str | os.PathLike | None
) -> Path | None:
    """``vectors_file`` as a Path, checked; ``None`` for in-memory vectors.

    Raises:
        TypeError: ``vectors_file`` is not a path.
        ValueError: its name does not end in ``.npy``, or it is the same file as ``state_file``.
    """
    if vectors_file is None:
        return None
    try:
        name = os.fsdecode(os.fspath(vectors_file))
    except TypeError:
        raise TypeError(
            f"vectors_file must be a path (str or os.PathLike); got {type(vectors_file).__name__}"
        ) from None
    if not name.endswith(".npy"):
        raise ValueError(f"vectors_file must name a .npy file; got {name!r}")
    path = Path(name)
    if state_file is not None and _same_path(path, Path(state_file)):
        raise ValueError(
            f"vectors_file {name!r} is the state file {os.fsdecode(os.fspath(state_file))!r}: "
            "the Lanczos vectors need a file of their own"
        )
    return path


def _same_path(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name the same file: the same inode if both exist, else the same resolved path."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


#: posix_fallocate errors that mean "not supported here" (the file then stays sparse).
_NO_FALLOCATE = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}


def _create_vectors_file(path: Path, dim: int, num_steps: int) -> np.memmap:
    """Create (or overwrite) the vectors file of a fresh disk run and map it.

    The file is a zero-filled float64 ``.npy`` array of shape (dim, num_steps) in Fortran order,
    mapped read-write. Its disk space is reserved with ``posix_fallocate`` where the platform has
    it, so that a full disk shows here as an `OSError`, not later as a SIGBUS when the kernel
    cannot write back a page of the map.

    Returns:
        `numpy.memmap`, shape (dim, num_steps), float64, Fortran order.

    Raises:
        OSError: the file cannot be created or its space reserved (naming it and its size).
    """
    size = dim * num_steps * 8
    try:
        store = np.lib.format.open_memmap(
            path, mode="w+", dtype=np.float64, shape=(dim, num_steps), fortran_order=True
        )
    except OSError as error:
        raise OSError(
            error.errno, f"cannot create the Lanczos vectors file {str(path)!r} ({size:,} bytes): {error.strerror}"
        ) from error
    if hasattr(os, "posix_fallocate"):
        try:
            with open(path, "r+b") as handle:
                os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
        except OSError as error:
            if error.errno not in _NO_FALLOCATE:
                del store
                path.unlink(missing_ok=True)
                raise OSError(
                    error.errno,
                    f"cannot reserve {size:,} bytes for the Lanczos vectors file {str(path)!r}: {error.strerror}",
                ) from error
    return store


def _open_saved_vectors(
    path: Path, dim: int, num_steps: int, steps_done: int, checksum: str, mode: str
) -> np.memmap | str:
    """Map the vectors file of a saved disk run, checked to hold this run's vectors.

    Checks that ``path`` is a float64 ``.npy`` array of shape (dim, num_steps) in Fortran order
    whose column ``steps_done - 1`` has the sha256 ``checksum`` saved with the state.

    Args:
        path: the file, resolved as given.
        dim, num_steps: this run's sizes.
        steps_done: the number of columns the state counts.
        checksum: the state's ``vectors_sha256``.
        mode: ``"r+"`` to resume in place, ``"r"`` to read the columns.

    Returns:
        The `numpy.memmap`, or why it is unusable: a str beginning with the file's name (quoted).
    """
    name = repr(str(path))
    try:
        store = np.lib.format.open_memmap(path, mode=mode)
    except FileNotFoundError:
        return f"{name} is missing"
    except (OSError, ValueError) as error:
        return f"{name} is unreadable ({error})"
    if store.shape != (dim, num_steps) or store.dtype != np.float64 or not store.flags.f_contiguous:
        order = "Fortran" if store.flags.f_contiguous else "C"
        return (
            f"{name} holds a {store.dtype} array of shape {store.shape} in {order} order, not this run's "
            f"({dim}, {num_steps}) float64 in Fortran order"
        )
    if _vector_sha256(store[:, steps_done - 1]) != checksum:
        return f"{name} holds other vectors (its column {steps_done} does not match the state's sha256)"
    return store


def _read_npy_header(member) -> tuple[tuple[int, ...], bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` from the header of an ``.npy`` stream, left at its data."""
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(member)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(member)
    raise ValueError(f"unsupported .npy format version {version}")


def _read_numbers(member, count: int, dtype: np.dtype) -> np.ndarray:
    data = member.read(count * dtype.itemsize)
    if len(data) != count * dtype.itemsize:
        raise ValueError("the vectors member is truncated")
    return np.frombuffer(data, dtype=dtype)


def _copy_state_vectors(path: Path, target: np.ndarray, steps_done: int) -> None:
    """Stream the ``vectors`` field (dim, steps_done) of the state ``path`` into ``target[:, :steps_done]``.

    A column at a time (a Fortran-ordered field, as :func:`_save_state` writes it) or a block of
    :data:`VECTOR_BLOCK_BYTES` of rows (a C-ordered one), so that the field is never held whole.
    """
    dim = target.shape[0]
    with np.load(path, allow_pickle=False) as state, state.zip.open("vectors.npy") as member:
        _, fortran_order, dtype = _read_npy_header(member)
        if fortran_order or steps_done == 1:
            for column in range(steps_done):
                target[:, column] = _read_numbers(member, dim, dtype)
        else:
            rows_per_block = max(1, VECTOR_BLOCK_BYTES // (8 * steps_done))
            for first in range(0, dim, rows_per_block):
                rows = min(rows_per_block, dim - first)
                block = _read_numbers(member, rows * steps_done, dtype).reshape(rows, steps_done)
                target[first : first + rows, :steps_done] = block


def _save_state(
    path: Path,
    run_identity: dict,
    steps_done: int,
    basis: np.ndarray,
    alpha: np.ndarray,
    residual_norms: np.ndarray,
    next_vector: np.ndarray,
    vectors_file: str | None = None,
) -> None:
    """Atomically write the resumable state (np.savez to a temporary file, then os.replace).

    The run's identity (sizes, seed, tolerance and the operator's identity) is one JSON string:
    a unicode array, which loads without pickle. Fields (format version 2):

    - ``format_version``: int64 scalar, :data:`STATE_FORMAT_VERSION`;
    - ``identity``: str scalar, the JSON of ``run_identity``;
    - ``steps_done``: int64 scalar, ``s``;
    - ``alpha``, ``residual_norms``: (s,) float64;
    - in-memory runs: ``vectors``: (dim, s) float64, Fortran order, the first ``s`` Lanczos vectors;
    - disk runs, instead: ``vectors_file``: str scalar, the vectors file's name as given to
      :func:`lanczos` (resolved as given on resume), and ``vectors_sha256``: str scalar, 64 hex
      digits, the sha256 of the little-endian bytes of column ``s - 1`` (a cheap check that the
      file holds this run's vectors). The map is flushed first, so that the file holds the ``s``
      columns before the state counts them;
    - ``next_vector``: (dim,) float64, ``v_(s+1)``.

    Args:
        path: the state file.
        run_identity: the run's identity.
        steps_done: ``s``.
        basis: (dim, num_steps) float64: the in-memory basis, or the `numpy.memmap` of the vectors
            file (disk runs).
        alpha, residual_norms: (num_steps,) float64; their first ``s`` entries are saved.
        next_vector: (dim,) float64.
        vectors_file: the vectors file's name (disk runs), or ``None`` (in-memory runs).
    """
    if vectors_file is None:
        vectors = {"vectors": basis[:, :steps_done]}
    else:
        basis.flush()
        vectors = {
            "vectors_file": np.array(vectors_file),
            "vectors_sha256": np.array(_vector_sha256(basis[:, steps_done - 1])),
        }
    with atomic_write(path) as tmp:
        # Through a file object: np.savez would append ".npz" to a bare name.
        with open(tmp, "wb") as f:
            np.savez(
                f,
                format_version=np.int64(STATE_FORMAT_VERSION),
                identity=np.array(json.dumps(run_identity, sort_keys=True)),
                steps_done=np.int64(steps_done),
                alpha=alpha[:steps_done],
                residual_norms=residual_norms[:steps_done],
                **vectors,
                next_vector=next_vector,
            )


def _is_str_scalar(value: np.ndarray) -> bool:
    return value.shape == () and value.dtype.kind == "U"


def _load_state(
    path: Path,
    run_identity: dict,
    basis: np.ndarray | None,
    alpha: np.ndarray,
    residual_norms: np.ndarray,
    vectors_file: Path | None = None,
) -> tuple[int, np.ndarray, np.memmap | None] | str:
    """Validate a state file against this run and load it (the fields: see :func:`_save_state`).

    The store of the state and of this run may differ; none loses the saved steps:

    - ``vectors`` in the state, in-memory run: copied into ``basis``;
    - ``vectors`` in the state, disk run: streamed, a column at a time, into a fresh
      ``vectors_file``;
    - ``vectors_file`` in the state, disk run: this run's ``vectors_file``, if it holds the
      state's vectors (see :func:`_open_saved_vectors`), is reused in place, unread; else, if the
      state names another file that does, that one is copied into a fresh ``vectors_file``;
      else the state is not resumed;
    - ``vectors_file`` in the state, in-memory run: its columns are read from the file the state
      names, if it holds the state's vectors; else the state is not resumed.

    Args:
        path: the state file.
        run_identity: this run's identity, compared with the saved one.
        basis: in-memory runs: the preallocated (dim, num_steps) float64 basis, whose first
            ``steps_done`` columns are filled; disk runs: unused (``None``).
        alpha, residual_norms: (num_steps,) float64, the first ``steps_done`` entries filled.
        vectors_file: this run's vectors file, or ``None`` (in-memory run).

    Returns:
        ``(steps_done, next_vector, store)``, ``store`` being the `numpy.memmap` of
        ``vectors_file`` (read-write, its first ``steps_done`` columns loaded) in a disk run and
        ``None`` in an in-memory run; or why the state is not resumed (a str: the differing keys,
        the older format, or the vectors file that is missing or holds other vectors, named): the
        caller starts fresh.

    Raises:
        ValueError: the file is unreadable or inconsistent in itself (corrupt, or not a state
            file): that is no stale state but damage, and is named.
    """
    advice = "delete the file to start this run from scratch"
    streamed = vectors_file is not None  # a disk run never loads a saved basis whole
    try:
        with np.load(path, allow_pickle=False) as state:
            fields = {name: state[name] for name in state.files if not (streamed and name == "vectors")}
            if streamed and "vectors" in state.files:
                with state.zip.open("vectors.npy") as member:
                    shape, _, dtype = _read_npy_header(member)
                fields["vectors"] = SimpleNamespace(shape=shape, dtype=dtype)  # streamed once resumable
    except Exception as error:  # a truncated or foreign file: say which one
        raise ValueError(f"Lanczos state file {str(path)!r} is unreadable ({error}); {advice}") from error

    def require(name):
        if name not in fields:
            raise ValueError(f"Lanczos state file {str(path)!r} lacks the field {name!r}; {advice}")
        return fields[name]

    version = require("format_version")
    if version.shape != () or version.dtype.kind not in "iu":
        raise ValueError(f"Lanczos state file {str(path)!r} has a malformed format_version; {advice}")
    if int(version) != STATE_FORMAT_VERSION:
        return f"it has format_version {int(version)} (an older hessflow), this hessflow writes {STATE_FORMAT_VERSION}"
    identity = require("identity")
    try:
        saved = json.loads(str(identity.item()))
        if not isinstance(saved, dict):
            raise ValueError("not a JSON object")
    except (ValueError, TypeError) as error:
        raise ValueError(f"Lanczos state file {str(path)!r} has a malformed identity ({error}); {advice}") from None
    # Written before probes and explicit start vectors existed: a seeded Gaussian run.
    saved = {"probe": "gaussian", "start_sha256": None, **saved}
    differences = _identity_differences(saved, run_identity)
    if differences:
        return "it belongs to another run or operator: " + "; ".join(differences)

    steps_done = int(require("steps_done"))
    dim, num_steps = run_identity["dim"], run_identity["num_steps"]
    # The vectors are in the state, or (a disk run's state) in the file it names.
    in_file = "vectors" not in fields and "vectors_file" in fields
    shapes = {
        "alpha": (steps_done,),
        "residual_norms": (steps_done,),
        "next_vector": (dim,),
    }
    if not in_file:
        shapes["vectors"] = (dim, steps_done)
    if (
        not 1 <= steps_done <= num_steps
        or any(require(name).shape != shape or require(name).dtype != np.float64 for name, shape in shapes.items())
        or in_file
        and not (_is_str_scalar(require("vectors_file")) and _is_str_scalar(require("vectors_sha256")))
    ):
        raise ValueError(f"Lanczos state file {str(path)!r} is inconsistent (steps_done={steps_done}); {advice}")

    store = None
    if not in_file and vectors_file is None:
        basis[:, :steps_done] = fields["vectors"]
    elif not in_file:
        store = _create_vectors_file(vectors_file, dim, num_steps)
        try:
            _copy_state_vectors(path, store, steps_done)
        except Exception as error:
            raise ValueError(f"Lanczos state file {str(path)!r} is unreadable ({error}); {advice}") from error
    else:
        saved_file = Path(str(fields["vectors_file"].item()))
        checksum = str(fields["vectors_sha256"].item())
        if vectors_file is None:
            source = _open_saved_vectors(saved_file, dim, num_steps, steps_done, checksum, "r")
            if isinstance(source, str):
                return f"its Lanczos vectors file {source}"
            basis[:, :steps_done] = source[:, :steps_done]
            del source
        else:
            store = _open_saved_vectors(vectors_file, dim, num_steps, steps_done, checksum, "r+")
            if isinstance(store, str):
                reason = f"its Lanczos vectors file {store}"
                if _same_path(saved_file, vectors_file):
                    return reason
                source = _open_saved_vectors(saved_file, dim, num_steps, steps_done, checksum, "r")
                if isinstance(source, str):
                    return f"{reason}, and the file the state names, {source}"
                store = _create_vectors_file(vectors_file, dim, num_steps)
                store[:, :steps_done] = source[:, :steps_done]
                del source

    alpha[:steps_done] = fields["alpha"]
    residual_norms[:steps_done] = fields["residual_norms"]
    return steps_done, fields["next_vector"].copy(), store
