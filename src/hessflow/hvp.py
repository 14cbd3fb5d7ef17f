"""The Hessian and the Gauss–Newton matrix of a Keras model's training loss, as operators.

The loss is the mean of a per-example loss over every example of a finite,
fixed-order data set, plus an L2 penalty on the decayed variables::

    L(θ) = (1/N) Σ_b Σ_{i ∈ b} ℓ(f(x_i; θ, batch b), y_i) + (weight_decay / 2) Σ_k ‖θ_k‖²

where b runs over the batches and k over the decayed variables (conv and dense
kernels, `hessflow.models.decayed_variable_mask`). The per-example loss ℓ_i is
what the loss function returns for example i, averaged over its non-batch axes
when it has any: a loss of shape ``(batch,)`` is used as is, a per-token loss
of shape ``(batch, seq)`` counts each example as the mean over its tokens
(`hessflow.kernels.example_losses`). With batch norm in ``train`` mode, f
depends on the statistics of the whole batch b, so the batching is part of the
definition of L: it is fixed at construction and never shuffled. Dropout and
the other noise layers (`hessflow.noise`) are off in every pass, whatever the
batch-norm mode: L is a deterministic function of θ.

Two curvature matrices of L, both ``(n, n)``, symmetric:

`HessianOperator`
    the Hessian ∇²L(θ).
`GGNOperator`
    the generalized Gauss–Newton matrix ``G = (1/N) Σ_b J_bᵀ H_b J_b +
    weight_decay · D``: ``z_b = f(x_b; θ)`` are batch b's outputs (logits),
    ``J_b = ∂z_b/∂θ`` their Jacobian, ``H_b = ∇²_z Σ_{i∈b} ℓ_i`` the loss's
    Hessian in output space, and D the diagonal 0/1 matrix of the decayed
    coordinates (the penalty is quadratic: its Gauss–Newton part is its
    Hessian). The Hessian is ``G`` plus ``(1/N) Σ_i Σ_c (∂ℓ_i/∂z_ic) ∇²_θ
    z_ic``, the term with the network's own second derivatives, so ``G``
    equals the Hessian when the outputs are linear in θ (a linear model) or
    the residuals ∂ℓ/∂z vanish. When ℓ is convex in z (cross-entropy from
    logits, squared error) every H_b is positive semidefinite and so is ``G``:
    its spectrum has no negative mass, unlike the Hessian's, and the
    difference between the two densities is the contribution of that second
    term. (With batch norm in ``train`` mode ``J_b`` is the Jacobian of the
    whole batch's outputs, each of which depends on every example of it.)

Blocks: ``variables=[regex, ...]`` restricts either operator to the diagonal
block of the selected trainable variables, ``∇²_{θ_S} L`` (or ``G_{SS}``), the
others held at their values; derivatives are taken with respect to the
selected variables only, so a block's product costs less than a full one
(`select_variables`).

Inputs: x is cast to the compute dtype only when it is floating (integer token
ids for an `Embedding` stay integers); y likewise only when floating (integer
class labels stay integers).

Both operators are `scipy.sparse.linalg.LinearOperator` s (shape ``(n, n)``,
dtype float64, symmetric), so ``scipy.sparse.linalg.eigsh(op, k=3)``,
``op @ v``, ``op.matmat(V)`` and `hessflow.lanczos.lanczos` ``(op, num_steps=m)``
all work on them. Each product is one full-data pass of the per-batch kernels
of `hessflow.kernels` (the Hessian's forward-over-reverse, the Gauss–Newton
product's forward, output-space forward-over-reverse and reverse; traced
once), accumulated in float64 inside one traced function per pass that loops
over the batches (a `tf.data` pipeline: the in-memory batches, or with
``data="stream"`` one that reads them from disk as it goes); over several
replicas the passes run in the rounds of `hessflow.distribute`. Model state is never changed: the model runs
through `keras.Model.stateless_call`, so batch-norm moving statistics stay as
loaded.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence

import keras
import numpy as np
import tensorflow as tf
from scipy.sparse.linalg import LinearOperator

from hessflow import distribute, kernels
from hessflow.models import decayed_variable_mask

__all__ = ["HessianOperator", "GGNOperator", "select_variables", "BATCH_NORM_MODES", "COMPUTE_DTYPES", "DATA_MODES"]

#: ``train``: batch statistics of each fixed batch (what the paper's CIFAR runs
#: used); ``inference``: the moving statistics stored in the model.
BATCH_NORM_MODES = ("train", "inference")
COMPUTE_DTYPES = ("float32", "float64")
#: ``memory``: the batches are read once into tensors; ``stream``: every pass iterates the
#: `tf.data` pipeline it was given, inside one traced function (`hessflow.streaming`).
DATA_MODES = ("memory", "stream")


def select_variables(model: keras.Model, patterns: Sequence[str] | None) -> list:
    """The trainable variables a curvature block is taken over.

    Args:
      model: a built Keras model.
      patterns: None (every trainable variable) or a non-empty list of
        regular expressions, each matched with `re.search` against the
        variables' ``path`` (e.g. ``"sequential/dense_1/kernel"``; ``"dense_1/"``
        selects both of that layer's variables, ``"kernel$"`` every kernel).
        A variable is selected when any pattern matches it.

    Returns:
      The selected variables of ``model.trainable_variables``, in that order.

    Raises:
      ValueError: ``patterns`` is not a list of strings, a pattern is not a
        valid regular expression, or one matches no trainable variable (the
        message lists the available paths).
    """
    variables = list(model.trainable_variables)
    if patterns is None:
        return variables
    if isinstance(patterns, str) or not isinstance(patterns, (list, tuple)):
        raise ValueError(
            f"variables must be None or a list of regular expressions, got {patterns!r}"
            + (f": write [{patterns!r}]" if isinstance(patterns, str) else "")
        )
    if not patterns:
        raise ValueError("variables is an empty list: give at least one regular expression, or None for all")
    paths = [v.path for v in variables]
    matched = set()
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise ValueError(f"variables: each entry must be a regular expression (a str), got {pattern!r}")
        try:
            compiled = re.compile(pattern)
        except re.error as error:
            raise ValueError(f"variables: {pattern!r} is not a valid regular expression ({error})") from None
        hits = {k for k, path in enumerate(paths) if compiled.search(path)}
        if not hits:
            raise ValueError(
                f"variables: the regular expression {pattern!r} matches none of the model's trainable "
                f"variables (re.search against v.path); their paths are: {', '.join(paths)}"
            )
        matched |= hits
    return [variables[k] for k in sorted(matched)]


def _materialize(dataset, compute_dtype: tf.DType) -> list[tuple[tf.Tensor, tf.Tensor]]:
    """Reads a finite data set of (x, y) batches once into a list of tensors.

    Floating x and y are cast to ``compute_dtype``; integer (or other) ones are
    kept as they are. Iterating a `tf.data` pipeline from Python on every
    Hessian pass stalls (about 2 s a pass on CPU); pre-sliced tensors do not.
    """
    if isinstance(dataset, tf.data.Dataset):
        if dataset.cardinality() == tf.data.INFINITE_CARDINALITY:
            raise ValueError(
                "dataset is infinite (did it .repeat()?): a curvature operator needs a finite, fixed set of batches"
            )
        dataset = dataset.as_numpy_iterator()
    batches = []
    for index, batch in enumerate(dataset):
        try:
            x, y = batch
        except (TypeError, ValueError):
            raise ValueError(f"dataset batch {index} is not an (x, y) pair") from None
        x = tf.convert_to_tensor(x)
        y = tf.convert_to_tensor(y)
        if x.shape.rank == 0 or y.shape.rank == 0:
            raise ValueError(
                f"dataset batch {index}: x and y need a batch dimension (got shapes {x.shape}, {y.shape})"
            )
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"dataset batch {index}: x has {x.shape[0]} examples but y has {y.shape[0]}")
        if x.shape[0] == 0:
            raise ValueError(f"dataset batch {index} is empty")
        if x.dtype.is_floating:
            x = tf.cast(x, compute_dtype)
        if y.dtype.is_floating:
            y = tf.cast(y, compute_dtype)
        batches.append((x, y))
    if not batches:
        raise ValueError("dataset has no batches")
    shapes = {(tuple(x.shape[1:]), x.dtype, tuple(y.shape[1:]), y.dtype) for x, y in batches}
    if len(shapes) != 1:
        raise ValueError(f"dataset batches differ in example shape or dtype: {sorted(map(str, shapes))}")
    return batches


def _batches_dataset(batches: list[tuple[tf.Tensor, tf.Tensor]]) -> tf.data.Dataset:
    """The in-memory batches as a `tf.data.Dataset` in the same order, batch dimension unknown.

    Consecutive batches of one size are stacked into one `from_tensor_slices` (typically all but the
    last), and the runs concatenated: a handful of datasets whatever the number of batches.
    """
    runs: list[list[tuple[tf.Tensor, tf.Tensor]]] = []
    for batch in batches:
        if runs and runs[-1][0][0].shape[0] == batch[0].shape[0]:
            runs[-1].append(batch)
        else:
            runs.append([batch])
    dataset = None
    for run in runs:
        part = tf.data.Dataset.from_tensor_slices((tf.stack([x for x, _ in run]), tf.stack([y for _, y in run])))
        dataset = part if dataset is None else dataset.concatenate(part)
    return dataset


def _survey_stream(dataset, compute_dtype: tf.DType) -> tuple[tf.data.Dataset, int, int]:
    """Checks a finite `tf.data.Dataset` of (x, y) batches for streaming; counts batches and examples.

    Returns the pipeline with floating x and y cast to ``compute_dtype`` (as `_materialize` casts),
    the number of batches and of examples. The count is one pass over the data inside a traced
    reduction (no model); it also checks that every batch is non-empty with as many x as y.
    """
    if not isinstance(dataset, tf.data.Dataset):
        raise ValueError(
            f"data='stream' needs a finite tf.data.Dataset of (x, y) batches, got {type(dataset).__name__} "
            "(hessflow.streaming.npy_batches reads .npy files batch by batch); or use data='memory'"
        )
    if dataset.cardinality() == tf.data.INFINITE_CARDINALITY:
        raise ValueError(
            "dataset is infinite (did it .repeat()?): a curvature operator needs a finite, fixed set of batches"
        )
    spec = dataset.element_spec
    if not (isinstance(spec, tuple) and len(spec) == 2 and all(isinstance(s, tf.TensorSpec) for s in spec)):
        raise ValueError(f"dataset elements must be (x, y) pairs of tensors, got {spec}")
    if spec[0].shape.rank == 0 or spec[1].shape.rank == 0:
        raise ValueError(
            f"dataset batches: x and y need a batch dimension (got shapes {spec[0].shape}, {spec[1].shape})")

    def cast(x, y):
        return (tf.cast(x, compute_dtype) if x.dtype.is_floating else x,
                tf.cast(y, compute_dtype) if y.dtype.is_floating else y)

    def count(state, batch):
        batches, examples, bad = state
        x, y = batch
        size = tf.shape(x, out_type=tf.int64)[0]
        wrong = tf.logical_or(tf.equal(size, 0), tf.not_equal(size, tf.shape(y, out_type=tf.int64)[0]))
        return batches + 1, examples + size, tf.where(tf.logical_and(bad < 0, wrong), batches, bad)

    zero = tf.constant(0, tf.int64)
    num_batches, num_examples, bad = (int(t) for t in dataset.reduce((zero, zero, zero - 1), count))
    if bad >= 0:
        raise ValueError(f"dataset batch {bad} is empty or has more x than y (or fewer)")
    if num_batches == 0:
        raise ValueError("dataset has no batches")
    return dataset.map(cast), num_batches, num_examples


def _summed_over_batches(kernel, dataset: tf.data.Dataset, num_batches: int, vector_spec: tf.TensorSpec):
    """``v -> Σ_b kernel(x_b, y_b, v)`` over the batches of ``dataset``, one traced function: a
    pass on one device. The float64 sum has ``vector_spec``'s shape, added to in batch order."""

    # A loop over an iterator, not `for x, y in dataset` (which becomes a tf.data reduction, whose
    # function runs the kernels on tf.data's threads: other float32 reduction splits, other bits).
    @tf.function(input_signature=[vector_spec])
    def summed(v):
        total = tf.zeros(vector_spec.shape, tf.float64)
        batches = iter(dataset)
        for _ in tf.range(num_batches):
            # One batch at a time: by default a while loop runs up to 10 iterations at once,
            # each with its batch's activations (twice the memory, no faster).
            tf.autograph.experimental.set_loop_options(parallel_iterations=1)
            x, y = next(batches)
            total += kernel(x, y, v)
        return total

    return summed


class _CurvatureOperator(LinearOperator):
    """What the Hessian and the Gauss–Newton operator share: inputs, checks, passes, blocks.

    A subclass names its per-batch product kernel (``_make_product``,
    ``_traced_product``, from `hessflow.kernels`), the ``num_traces`` key of
    that kernel, and the product's name in messages.
    """

    _make_product = None
    _traced_product = None
    _make_matmat = None
    _product_key = "product"
    _product_name = "curvature-vector product"
    _curvature = "curvature"  # what ``matvec`` multiplies by, in its docstring

    @property
    def _matmat_key(self) -> str:
        return f"{self._product_key}_matmat"

    def __init__(
        self,
        model: keras.Model,
        dataset: Iterable,
        loss,
        weight_decay: float = 0.0,
        batch_norm: str = "train",
        dtype: str = "float32",
        decay_mask: Sequence[bool] | None = None,
        strategy: tf.distribute.Strategy | None = None,
        variables: Sequence[str] | None = None,
        data: str = "memory",
        probes_per_pass: int = 1,
    ):
        if data not in DATA_MODES:
            raise ValueError(f"data must be one of {DATA_MODES}, got {data!r}")
        if data == "stream" and strategy is not None:
            raise ValueError("data='stream' runs on one device (strategy=None); over several replicas use "
                             "data='memory'")
        if batch_norm not in BATCH_NORM_MODES:
            raise ValueError(f"batch_norm must be one of {BATCH_NORM_MODES}, got {batch_norm!r}")
        if dtype not in COMPUTE_DTYPES:
            raise ValueError(f"dtype must be one of {COMPUTE_DTYPES}, got {dtype!r}")
        if isinstance(probes_per_pass, bool) or not isinstance(probes_per_pass, (int, np.integer)) \
                or probes_per_pass < 1:
            raise ValueError(f"probes_per_pass must be an int >= 1, got {probes_per_pass!r}")
        if not (isinstance(weight_decay, (int, float)) and np.isfinite(weight_decay) and weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
        self.model = model
        self.batch_norm = batch_norm
        self.compute_dtype = dtype
        self.weight_decay = float(weight_decay)

        all_variables = list(model.trainable_variables)
        if not all_variables:
            raise ValueError("model has no trainable variables (is it built?)")
        wrong = [v.path for v in all_variables if v.dtype != dtype]
        if wrong:
            raise ValueError(
                f"dtype={dtype!r} but the model's variables {wrong[:3]} are {all_variables[0].dtype}: "
                f"build the model with dtype={dtype!r} (hessflow.models builders take a dtype argument)"
            )
        mask = decayed_variable_mask(model) if decay_mask is None else list(decay_mask)
        if len(mask) != len(all_variables):
            raise ValueError(f"decay_mask has {len(mask)} entries for {len(all_variables)} trainable variables")
        selected = select_variables(model, variables)
        chosen = {id(v) for v in selected}
        self._all_variables = all_variables
        self._variables = selected
        #: The ``path`` of each variable the operator acts on, in vector order.
        self.variable_paths = [v.path for v in selected]
        # A block of every variable (the workflow's default block, `.*`) is the whole operator:
        # the same kernels, so the same bits.
        self._kernel_variables = None if len(selected) == len(all_variables) else selected

        def sizes(variable_list):
            return [int(np.prod(tuple(v.shape), dtype=np.int64)) for v in variable_list]

        self.dim = int(sum(sizes(selected)))
        super().__init__(dtype=np.float64, shape=(self.dim, self.dim))
        # Decayed coordinates of every trainable variable (the loss's penalty) and of the selected ones.
        self._all_decay_coordinates = np.concatenate(
            [np.full(size, bool(m)) for size, m in zip(sizes(all_variables), mask)])
        selected_mask = [bool(m) for v, m in zip(all_variables, mask) if id(v) in chosen]
        self._decay_coordinates = np.concatenate(
            [np.full(size, m) for size, m in zip(sizes(selected), selected_mask)])

        self._compute_dtype = tf.as_dtype(dtype)
        #: ``"memory"`` or ``"stream"`` (`DATA_MODES`): how each pass reads the data set.
        self.data = data
        if data == "stream":
            self._pipeline, self.num_batches, self.num_examples = _survey_stream(dataset, self._compute_dtype)
        else:
            self._batches = _materialize(dataset, self._compute_dtype)
            self.num_examples = int(sum(int(x.shape[0]) for x, _ in self._batches))
            self.num_batches = len(self._batches)
            if strategy is None:
                # One device: the batches go through the same in-graph pass as a stream (and so
                # give the same bits); over replicas they are dealt out in rounds.
                self._pipeline = _batches_dataset(self._batches)
                del self._batches
        #: At most this many products per data pass in ``matmat`` (`kernels.make_hvp_matmat_sum`).
        self.probes_per_pass = int(probes_per_pass)
        #: How often the traced functions were traced; stays at one each
        #: however many passes run (a test checks it). With ``probes_per_pass > 1`` also the
        #: several-product pass's, once per number of columns it meets.
        self.num_traces = {self._product_key: 0, "gradient": 0}
        if self.probes_per_pass > 1:
            self.num_traces[self._matmat_key] = 0
        self._loss = loss
        self._matmat_fns = {}
        #: Wall seconds of the last full-data pass (diagnostic).
        self.last_pass_seconds = float("nan")
        self.strategy = strategy
        self.num_replicas = 1 if strategy is None else int(strategy.num_replicas_in_sync)
        self._product_fn, self._gradient_fn, self._rounds = self._pass_functions(loss)

    def _pass_functions(self, loss):
        """The per-round product and loss-and-gradient functions, and a function returning an
        iterator over the rounds' arguments (one (x, y) batch per round on one device)."""
        training = self.batch_norm == "train"
        counts = self.num_traces
        variables = self._kernel_variables

        def counter(name):
            def count():  # runs at trace time only
                counts[name] += 1

            return count

        product_options = dict(training=training, on_trace=counter(self._product_key), variables=variables)
        gradient_options = dict(training=training, on_trace=counter("gradient"), variables=variables)
        if self.strategy is None:
            return self._looped_pass_functions(loss, product_options, gradient_options)
        product = type(self)._make_product(self.model, loss, **product_options)
        gradient = kernels.make_loss_and_gradient_sum(self.model, loss, **gradient_options)
        rounds = distribute.ReplicaRounds(self.strategy, self._batches)
        # Each round's arguments: one distributed (x, y, weight) value.
        return (distribute.replicated_sum(self.strategy, product), distribute.replicated_sum(self.strategy, gradient),
                lambda: ((inputs,) for inputs in rounds))

    def _looped_pass_functions(self, loss, product_options, gradient_options):
        """Whole-pass functions over the pipeline: ``v -> Σ_b product_b`` and ``() -> (Σ loss, Σ gradient)``.

        On one device, for either data mode: the pipeline is the in-memory batches or the stream.
        The loop over the batches runs inside one `tf.function` (a Python loop over a `tf.data`
        iterator stalled 1.3-2.5 s a pass here), and each batch's float64 result is added to the
        float64 total in batch order. Only the pipeline differs between the modes, so the traced
        graphs, and the sums, are the same bit for bit. (Calling the per-batch kernel from Python
        instead gives other float32 bits: TensorFlow's arithmetic optimizer rewrites a function
        called from another one differently.)
        """
        x_spec, y_spec = (tf.TensorSpec((None, *spec.shape[1:]), spec.dtype) for spec in self._pipeline.element_spec)
        product = type(self)._traced_product(self.model, loss, x_spec, y_spec, **product_options)
        gradient = kernels.traced_loss_and_gradient_sum(self.model, loss, x_spec, y_spec, **gradient_options)
        dataset, dim, num_batches = self._pipeline, self.dim, self.num_batches

        product_pass = _summed_over_batches(product, dataset, num_batches, tf.TensorSpec((dim,), self._compute_dtype))

        @tf.function(input_signature=[])
        def gradient_pass():
            loss_sum, gradient_sum = tf.constant(0.0, tf.float64), tf.zeros((dim,), tf.float64)
            batches = iter(dataset)
            for _ in tf.range(num_batches):
                tf.autograph.experimental.set_loop_options(parallel_iterations=1)
                x, y = next(batches)
                batch_loss, batch_gradient = gradient(x, y)
                loss_sum += batch_loss
                gradient_sum += batch_gradient
            return loss_sum, gradient_sum

        # One "round" with no arguments: the whole pass is one call (added to zeros: the same bits).
        return product_pass, gradient_pass, lambda: iter([()])

    def _matmat_function(self, count: int):
        """The pass function of ``count`` products at once, ``V (count, dim) -> Σ_b (count, dim)``,
        built on first use (one trace per ``count``; over replicas one function for every count)."""
        if count in self._matmat_fns:
            return self._matmat_fns[count]
        counts = self.num_traces

        def on_trace():
            counts[self._matmat_key] += 1

        options = dict(training=self.batch_norm == "train", on_trace=on_trace, variables=self._kernel_variables)
        if self.strategy is not None:
            if None not in self._matmat_fns:
                kernel = type(self)._make_matmat(self.model, self._loss, **options)
                self._matmat_fns[None] = distribute.replicated_sum(self.strategy, kernel)
            function = self._matmat_fns[None]
        else:
            x_spec, y_spec = (tf.TensorSpec((None, *spec.shape[1:]), spec.dtype)
                              for spec in self._pipeline.element_spec)
            kernel = kernels.traced_matmat_sum(type(self)._make_matmat, self.model, self._loss, x_spec, y_spec,
                                               count, **options)
            function = _summed_over_batches(kernel, self._pipeline, self.num_batches,
                                            tf.TensorSpec((count, self.dim), self._compute_dtype))

        self._matmat_fns[count] = function
        return function

    # -- the product -----------------------------------------------------------------
    def _products(self, block: np.ndarray) -> np.ndarray:
        """The operator times a real (dim, k) float64 ``block``, 2 <= k <= probes_per_pass: one pass."""
        start = time.perf_counter()
        count = block.shape[1]
        function = self._matmat_function(count)
        tangents = tf.constant(np.ascontiguousarray(block.T), dtype=self._compute_dtype)
        total = np.zeros((count, self.dim), dtype=np.float64)
        for batch in self._rounds():
            total += function(*batch, tangents).numpy()
        result = total.T / self.num_examples
        if self.weight_decay:
            result += self.weight_decay * np.where(self._decay_coordinates[:, None], block, 0.0)
        self.last_pass_seconds = time.perf_counter() - start
        if not np.all(np.isfinite(result)):
            bad = sorted({int(c) for c in np.nonzero(~np.isfinite(result))[1]})
            raise FloatingPointError(
                f"the {self._product_name} has non-finite entries (columns {bad}): the loss or its curvature "
                "overflowed at these weights (check the checkpoint for NaN/Inf and the loss for log(0))"
            )
        return result

    def _apply_block(self, block: np.ndarray) -> np.ndarray:
        """The products of a real (dim, k) float64 block: passes of ``probes_per_pass`` columns."""
        if self.probes_per_pass == 1:
            return np.stack([self._product(np.ascontiguousarray(block[:, k])) for k in range(block.shape[1])], axis=1)
        columns = []
        for first in range(0, block.shape[1], self.probes_per_pass):
            chunk = block[:, first:first + self.probes_per_pass]
            # One column alone takes the one-product kernel: cheaper than the shared pass for one.
            columns.append(self._product(np.ascontiguousarray(chunk[:, 0]))[:, None] if chunk.shape[1] == 1
                           else self._products(chunk))
        return np.concatenate(columns, axis=1)

    def _product(self, v: np.ndarray) -> np.ndarray:
        """The operator times a real (dim,) float64 ``v``: one full-data pass."""
        start = time.perf_counter()
        v_compute = tf.constant(v, dtype=self._compute_dtype)
        total = np.zeros(self.dim, dtype=np.float64)
        for batch in self._rounds():
            total += self._product_fn(*batch, v_compute).numpy()
        result = total / self.num_examples
        if self.weight_decay:
            result += self.weight_decay * np.where(self._decay_coordinates, v, 0.0)
        self.last_pass_seconds = time.perf_counter() - start
        if not np.all(np.isfinite(result)):
            raise FloatingPointError(
                f"the {self._product_name} has non-finite entries: the loss or its curvature overflowed "
                "at these weights (check the checkpoint for NaN/Inf and the loss for log(0))"
            )
        return result

    def _apply(self, v: np.ndarray) -> np.ndarray:
        """The product of a (dim,) vector of any real or complex dtype (by linearity)."""
        if np.iscomplexobj(v):
            return self._product(np.ascontiguousarray(v.real, np.float64)) + 1j * self._product(
                np.ascontiguousarray(v.imag, np.float64))
        return self._product(np.asarray(v, dtype=np.float64))

    def matvec(self, v) -> np.ndarray:
        """The operator (∇²L(θ), or the Gauss–Newton matrix; a block of it with ``variables=``)
        times ``v``. ``v``: (dim,) or (dim, 1) → the same shape, float64.

        Raises FloatingPointError if the product is not finite.
        """
        v = np.asarray(v)
        if v.shape not in ((self.dim,), (self.dim, 1)):
            raise ValueError(f"vector has shape {v.shape}, the operator acts on ({self.dim},) or ({self.dim}, 1)")
        return self._apply(v.reshape(self.dim)).reshape(v.shape)

    # LinearOperator hooks (matmat, @, rmatvec, adjoint, eigsh go through these).
    def _matvec(self, x):
        return self._apply(np.asarray(x).reshape(self.dim))

    def _matmat(self, X):
        X = np.asarray(X)
        if np.iscomplexobj(X):
            return self._matmat(X.real) + 1j * self._matmat(X.imag)
        return self._apply_block(np.asarray(X, dtype=np.float64))

    _rmatvec = _matvec  # symmetric
    _rmatmat = _matmat

    def _adjoint(self):
        return self

    def _transpose(self):
        return self

    def __call__(self, v):
        """``op(v)``: ``op @ v``, so for a vector the same as `matvec`."""
        return self @ v

    def __repr__(self) -> str:
        block = ""
        if self._kernel_variables is not None:
            block = f", block of {len(self._variables)} of {len(self._all_variables)} variables"
        return (f"<{self.dim}x{self.dim} {type(self).__name__} of {self.model.name!r}: {self.num_examples} examples "
                f"in {self.num_batches} batches, batch_norm={self.batch_norm!r}, compute {self.compute_dtype}"
                f"{block}>")

    # -- loss and gradient ------------------------------------------------------------
    @staticmethod
    def _flat_values(variable_list) -> np.ndarray:
        return np.concatenate([np.asarray(var.numpy(), np.float64).ravel() for var in variable_list])

    def _parameters(self) -> np.ndarray:
        """The selected variables' values, flat (dim,) float64."""
        return self._flat_values(self._variables)

    def loss_and_gradient(self) -> tuple[float, np.ndarray]:
        """Full-data loss L(θ) (a float) and its gradient (dim,) float64.

        On a block, the loss is still the whole objective (its penalty over
        every decayed variable) and the gradient that of the block's variables.
        """
        start = time.perf_counter()
        loss_sum = 0.0
        gradient = np.zeros(self.dim, dtype=np.float64)
        for batch in self._rounds():
            batch_loss, batch_gradient = self._gradient_fn(*batch)
            loss_sum += float(batch_loss)
            gradient += batch_gradient.numpy()
        loss = loss_sum / self.num_examples
        gradient /= self.num_examples
        if self.weight_decay:
            decayed = np.where(self._all_decay_coordinates, self._flat_values(self._all_variables), 0.0)
            loss += 0.5 * self.weight_decay * float(decayed @ decayed)
            gradient += self.weight_decay * np.where(self._decay_coordinates, self._parameters(), 0.0)
        self.last_pass_seconds = time.perf_counter() - start
        if not (np.isfinite(loss) and np.all(np.isfinite(gradient))):
            raise FloatingPointError(
                f"the loss ({loss}) or its gradient is not finite at these weights: "
                "check the checkpoint for NaN/Inf"
            )
        return loss, gradient


_ARGS = """
    Args:
      model: a built Keras model returning what ``loss`` expects (logits for
        ``from_logits=True`` losses). Its weights are read, never changed.
      dataset: a finite, fixed-order iterable of ``(x, y)`` batches (numpy
        arrays, tensors, or a finite `tf.data.Dataset`), read once. The last
        batch may be smaller; the mean is over the true example count.
      loss: a Keras loss object (its unreduced ``call`` is used) or a function
        ``(y_true, y_pred) -> (batch,)`` or ``(batch, ...)`` of per-example
        losses (non-batch axes are averaged).
      weight_decay: coefficient of ``(weight_decay / 2) Σ‖kernel‖²`` in the
        objective (the paper code's ``weight_decay · tf.nn.l2_loss``); it adds
        ``weight_decay`` to the operator on the decayed coordinates.
      batch_norm: ``"train"`` (each batch's own statistics; moving statistics
        untouched) or ``"inference"`` (the stored moving statistics). Noise
        layers are off in both.
      dtype: compute dtype, ``"float32"`` (default) or ``"float64"``; it must be
        the dtype of the model's variables (build the model with
        ``dtype="float64"`` for the float64 mode). Results are accumulated over
        batches in float64 either way. (The operator's own ``dtype``, as a
        LinearOperator, is float64: that of its vectors; this one is
        ``compute_dtype``.)
      decay_mask: which of ``model.trainable_variables`` are decayed (one
        entry per trainable variable, blocks included); default
        `hessflow.models.decayed_variable_mask` (conv and dense kernels).
      strategy: a `tf.distribute` strategy (`hessflow.distribute.make_strategy`)
        or None for one device. With W replicas, batch j goes to replica
        j mod W, each replica sums its batches' products and the sums are
        all-reduced in float64: the same operator as one device, batch norm in
        ``train`` mode included (no batch is ever split).
      variables: None (every trainable variable) or a list of regular
        expressions, each matched with `re.search` against ``v.path`` of
        ``model.trainable_variables`` (`select_variables`): the operator is
        then the diagonal block of the selected variables, in
        ``model.trainable_variables`` order, the others held constant (and
        not differentiated: a block's product costs less). ``dim`` is their
        total size, ``variable_paths`` their paths. A pattern that matches no
        variable is a ValueError listing the available paths.
      data: ``"memory"`` (default): ``dataset`` is read once into tensors;
        ``"stream"``: ``dataset`` must be a finite `tf.data.Dataset`, which
        every pass iterates anew (`hessflow.streaming.npy_batches` reads
        ``.npy`` files batch by batch: data sets beyond RAM; prefetch in the
        pipeline). One device only (``strategy=None``). Either way a pass is one
        traced function looping over the batches, and the two modes give the
        same operator bit for bit. Construction in stream mode makes one pass
        over the pipeline (no model) to count the batches and examples.
      probes_per_pass: ``matmat`` (and ``@``) of a ``(dim, k)`` block computes
        up to this many products per data pass, sharing the pass's primal
        forward and reverse computation (`hessflow.kernels.make_hvp_matmat_sum`,
        `hessflow.kernels.make_ggn_matmat_sum`): several Lanczos runs side by
        side (`hessflow.lanczos.lanczos_side_by_side`). Default 1: one pass per
        column, each the same bits as ``matvec``. With more, the columns agree
        with ``matvec`` to rounding (another order of the same sums), and a
        lone column still takes the one-product pass.

    Vectors in and out are float64 numpy arrays of length ``dim`` (``(dim,)``
    or ``(dim, 1)``; ``(dim, k)`` through ``matmat`` or ``@``), the selected
    (by default all) trainable variables concatenated in
    ``model.trainable_variables`` order, each flattened in C order.
"""


class HessianOperator(_CurvatureOperator):
    __doc__ = """The Hessian ∇²L(θ) of a Keras model's training loss over a data set.

    Each product is forward-over-reverse (`hessflow.kernels.make_hvp_sum`).
""" + _ARGS

    _make_product = staticmethod(kernels.make_hvp_sum)
    _traced_product = staticmethod(kernels.traced_hvp_sum)
    _make_matmat = staticmethod(kernels.make_hvp_matmat_sum)
    _product_key = "hvp"
    _product_name = "Hessian-vector product"


class GGNOperator(_CurvatureOperator):
    __doc__ = """The generalized Gauss–Newton matrix G of a Keras model's training loss over a data set.

    ``G v = (1/N) Σ_b J_bᵀ H_b J_b v + weight_decay · (v on the decayed
    coordinates)``, with ``J_b`` the Jacobian of batch b's outputs and ``H_b``
    the loss's Hessian with respect to them (see the module docstring): the
    Hessian without the term of the network's second derivatives, positive
    semidefinite for a loss convex in the outputs. Each product is a forward-
    mode J v, an output-space forward-over-reverse H_b (J v) and a reverse-mode
    Jᵀ(·) (`hessflow.kernels.make_ggn_sum`), from one forward pass.
    ``num_traces`` counts ``"ggn"`` and ``"gradient"``; ``loss_and_gradient``
    is the same as `HessianOperator`'s.
""" + _ARGS

    _make_product = staticmethod(kernels.make_ggn_sum)
    _traced_product = staticmethod(kernels.traced_ggn_sum)
    _make_matmat = staticmethod(kernels.make_ggn_matmat_sum)
    _product_key = "ggn"
    _product_name = "Gauss-Newton-vector product"
