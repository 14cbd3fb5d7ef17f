"""The Hessian of a Keras model's training loss over a data set, as an operator.

The loss is the mean of a per-example loss over every example of a finite,
fixed-order data set, plus an L2 penalty on the decayed variables::

    L(θ) = (1/N) Σ_b Σ_{i ∈ b} ℓ(f(x_i; θ, batch b), y_i) + (weight_decay / 2) Σ_k ‖θ_k‖²

where b runs over the batches and k over the decayed variables (conv and dense
kernels, `hessflow.models.decayed_variable_mask`). With batch norm in ``train``
mode, f depends on the statistics of the whole batch b, so the batching is part
of the definition of L: it is fixed at construction and never shuffled.

The Hessian-vector product is computed forward-over-reverse (a
`tf.autodiff.ForwardAccumulator` around a `tf.GradientTape` gradient): one
traced `tf.function` per operator, called once per batch, its results
accumulated in float64. Model state is never changed: the model runs through
`keras.Model.stateless_call`, so batch-norm moving statistics stay as loaded;
and batch statistics are computed twice-differentiably
(`hessflow.batchnorm.exact_batch_statistics`: TensorFlow's own are not).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

import keras
import numpy as np
import tensorflow as tf

from hessflow.batchnorm import exact_batch_statistics
from hessflow.models import decayed_variable_mask

__all__ = ["HessianOperator", "BATCH_NORM_MODES", "COMPUTE_DTYPES"]

#: ``train``: batch statistics of each fixed batch (what the paper's CIFAR runs
#: used); ``inference``: the moving statistics stored in the model.
BATCH_NORM_MODES = ("train", "inference")
COMPUTE_DTYPES = ("float32", "float64")


def _per_example_loss(loss) -> Callable:
    """The unreduced form of a Keras loss object or loss function.

    The operator sums per-example losses itself, so that the mean is over the
    true example count even when the last batch is smaller.
    """
    if isinstance(loss, keras.losses.Loss):
        return loss.call
    if callable(loss):
        return loss
    raise TypeError(f"loss must be a keras.losses.Loss or a callable, got {type(loss).__name__}")


def _materialize(dataset, compute_dtype: tf.DType) -> list[tuple[tf.Tensor, tf.Tensor]]:
    """Reads a finite data set of (x, y) batches once into a list of tensors.

    Iterating a `tf.data` pipeline from Python on every Hessian pass stalls
    (about 2 s a pass on CPU, see FIELD-NOTES); pre-sliced tensors do not.
    """
    if isinstance(dataset, tf.data.Dataset):
        if dataset.cardinality() == tf.data.INFINITE_CARDINALITY:
            raise ValueError("dataset is infinite (did it .repeat()?): the Hessian needs a finite, fixed set of batches")
        dataset = dataset.as_numpy_iterator()
    batches = []
    for index, batch in enumerate(dataset):
        try:
            x, y = batch
        except (TypeError, ValueError):
            raise ValueError(f"dataset batch {index} is not an (x, y) pair") from None
        x = tf.convert_to_tensor(x)
        y = tf.convert_to_tensor(y)
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"dataset batch {index}: x has {x.shape[0]} examples but y has {y.shape[0]}")
        if x.shape[0] == 0:
            raise ValueError(f"dataset batch {index} is empty")
        x = tf.cast(x, compute_dtype)
        if y.dtype.is_floating:
            y = tf.cast(y, compute_dtype)
        batches.append((x, y))
    if not batches:
        raise ValueError("dataset has no batches")
    shapes = {(tuple(x.shape[1:]), tuple(y.shape[1:]), y.dtype) for x, y in batches}
    if len(shapes) != 1:
        raise ValueError(f"dataset batches differ in example shape or label dtype: {sorted(map(str, shapes))}")
    return batches


class HessianOperator:
    """The Hessian ∇²L(θ) of a Keras model's training loss over a data set.

    Args:
      model: a built Keras model returning what ``loss`` expects (logits for
        ``from_logits=True`` losses). Its weights are read, never changed.
      dataset: a finite, fixed-order iterable of ``(x, y)`` batches (numpy
        arrays, tensors, or a finite `tf.data.Dataset`), read once. The last
        batch may be smaller; the mean is over the true example count.
      loss: a Keras loss object (its unreduced ``call`` is used) or a function
        ``(y_true, y_pred) -> (batch,)`` of per-example losses.
      weight_decay: coefficient of ``(weight_decay / 2) Σ‖kernel‖²`` in the
        objective (the paper code's ``weight_decay · tf.nn.l2_loss``); it adds
        ``weight_decay`` to the Hessian on the decayed coordinates.
      batch_norm: ``"train"`` (each batch's own statistics; moving statistics
        untouched) or ``"inference"`` (the stored moving statistics).
      dtype: compute dtype, ``"float32"`` (default) or ``"float64"``; it must be
        the dtype of the model's variables (build the model with
        ``dtype="float64"`` for the float64 mode). Results are accumulated over
        batches in float64 either way.
      decay_mask: which of ``model.trainable_variables`` are decayed; default
        `hessflow.models.decayed_variable_mask` (conv and dense kernels).
      strategy: a `tf.distribute` strategy (`hessflow.distribute.make_strategy`)
        or None for one device. With W replicas, batch j goes to replica
        j mod W, each replica sums its batches' products and the sums are
        all-reduced in float64: the same operator as one device, batch norm in
        ``train`` mode included (no batch is ever split).

    Vectors in and out are flat float64 numpy arrays of length ``dim``, the
    trainable variables concatenated in ``model.trainable_variables`` order,
    each flattened in C order.
    """

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
    ):
        if batch_norm not in BATCH_NORM_MODES:
            raise ValueError(f"batch_norm must be one of {BATCH_NORM_MODES}, got {batch_norm!r}")
        if dtype not in COMPUTE_DTYPES:
            raise ValueError(f"dtype must be one of {COMPUTE_DTYPES}, got {dtype!r}")
        if not (isinstance(weight_decay, (int, float)) and np.isfinite(weight_decay) and weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
        self.model = model
        self.batch_norm = batch_norm
        self.dtype = dtype
        self.weight_decay = float(weight_decay)

        variables = list(model.trainable_variables)
        if not variables:
            raise ValueError("model has no trainable variables (is it built?)")
        wrong = [v.path for v in variables if v.dtype != dtype]
        if wrong:
            raise ValueError(
                f"dtype={dtype!r} but the model's variables {wrong[:3]} are {variables[0].dtype}: "
                f"build the model with dtype={dtype!r} (hessflow.models builders take a dtype argument)"
            )
        self._variables = variables
        self._non_trainable = list(model.non_trainable_variables)
        self._shapes = [tuple(v.shape) for v in variables]
        self._sizes = [int(np.prod(s, dtype=np.int64)) for s in self._shapes]
        self.dim = int(sum(self._sizes))

        mask = decayed_variable_mask(model) if decay_mask is None else list(decay_mask)
        if len(mask) != len(variables):
            raise ValueError(f"decay_mask has {len(mask)} entries for {len(variables)} trainable variables")
        self._decay_coordinates = np.concatenate(
            [np.full(size, bool(m)) for size, m in zip(self._sizes, mask)]
        )

        self._compute_dtype = tf.as_dtype(dtype)
        self._batches = _materialize(dataset, self._compute_dtype)
        self.num_examples = int(sum(int(x.shape[0]) for x, _ in self._batches))
        self.num_batches = len(self._batches)
        self._per_example_loss = _per_example_loss(loss)
        #: How often the traced functions were traced; stays at one each
        #: however many passes run (a test checks it).
        self.num_traces = {"hvp": 0, "gradient": 0}
        #: Wall seconds of the last full-data pass (diagnostic).
        self.last_pass_seconds = float("nan")
        self.strategy = strategy
        self.num_replicas = 1 if strategy is None else int(strategy.num_replicas_in_sync)
        self._hvp_fn, self._gradient_fn = self._trace_functions()
        self._placed: dict[tuple[int, int], tuple[tf.Tensor, tf.Tensor]] = {}

    # -- traced per-batch functions -------------------------------------------------
    def _trace_functions(self):
        x0, y0 = self._batches[0]
        x_spec = tf.TensorSpec((None, *x0.shape[1:]), x0.dtype)
        y_spec = tf.TensorSpec((None, *y0.shape[1:]), y0.dtype)
        v_spec = tf.TensorSpec((self.dim,), self._compute_dtype)
        training = self.batch_norm == "train"
        model = self.model
        per_example_loss = self._per_example_loss
        trainable, non_trainable = self._variables, self._non_trainable
        shapes, sizes = self._shapes, self._sizes
        counts = self.num_traces

        def batch_loss_sum(params, x, y):
            # stateless_call returns the batch-norm updates instead of applying
            # them: a Hessian pass must not move the checkpoint's statistics.
            with exact_batch_statistics(model):
                logits, _ = model.stateless_call(params, [v.value for v in non_trainable], x, training=training)
            return tf.reduce_sum(tf.cast(per_example_loss(y, logits), params[0].dtype))

        def flat(tensors):
            return tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)

        def hvp_sum(x, y, v):
            counts["hvp"] += 1  # runs at trace time only
            params = [var.value for var in trainable]
            tangents = [tf.reshape(t, s) for t, s in zip(tf.split(v, sizes), shapes)]
            with tf.autodiff.ForwardAccumulator(params, tangents) as acc:
                with tf.GradientTape() as tape:
                    tape.watch(params)
                    loss_sum = batch_loss_sum(params, x, y)
                gradient = tape.gradient(loss_sum, params)
            return tf.cast(flat(acc.jvp(gradient)), tf.float64)

        def loss_and_gradient_sum(x, y):
            counts["gradient"] += 1
            params = [var.value for var in trainable]
            with tf.GradientTape() as tape:
                tape.watch(params)
                loss_sum = batch_loss_sum(params, x, y)
            gradient = tape.gradient(loss_sum, params)
            return tf.cast(loss_sum, tf.float64), tf.cast(flat(gradient), tf.float64)

        if self.strategy is None:
            batch_hvp_sum = tf.function(hvp_sum, input_signature=[x_spec, y_spec, v_spec])
            batch_loss_and_gradient_sum = tf.function(loss_and_gradient_sum, input_signature=[x_spec, y_spec])
        else:
            strategy = self.strategy
            total = tf.distribute.ReduceOp.SUM

            # One round: every replica takes one batch (weight 1) or, once its
            # batches are used up, a stand-in batch weighted by 0; the weighted
            # float64 sums are all-reduced. Shapes differ only in the batch
            # dimension, which reduce_retracing generalizes after one retrace.
            @tf.function(reduce_retracing=True)
            def batch_hvp_sum(inputs, v):
                def replica(inputs, v):
                    x, y, weight = inputs
                    return weight * hvp_sum(x, y, v)

                return strategy.reduce(total, strategy.run(replica, args=(inputs, v)), axis=None)

            @tf.function(reduce_retracing=True)
            def batch_loss_and_gradient_sum(inputs):
                def replica(inputs):
                    x, y, weight = inputs
                    loss_sum, gradient = loss_and_gradient_sum(x, y)
                    return weight * loss_sum, weight * gradient

                loss_sum, gradient = strategy.run(replica, args=(inputs,))
                return strategy.reduce(total, loss_sum, axis=None), strategy.reduce(total, gradient, axis=None)

        return batch_hvp_sum, batch_loss_and_gradient_sum

    # -- public operator ---------------------------------------------------------------
    def _check_vector(self, v) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64)
        if v.shape != (self.dim,):
            raise ValueError(f"vector has shape {v.shape}, the operator acts on ({self.dim},)")
        return v

    def _rounds(self):
        """Per round, what each replica sums: (x, y) batch tensors, or distributed inputs."""
        if self.strategy is None:
            yield from self._batches
            return
        replicas, devices = self.num_replicas, self.strategy.extended.worker_devices
        for first in range(0, self.num_batches, replicas):

            def replica_inputs(context, first=first):
                replica = context.replica_id_in_sync_group
                index = first + replica
                weight = 1.0 if index < self.num_batches else 0.0
                # A replica past the last batch computes on a stand-in and is
                # weighted out (a 0-example batch would make batch norm NaN).
                index = index if index < self.num_batches else replica % self.num_batches
                key = (replica, index)
                if key not in self._placed:  # keep each replica's batches on its device
                    with tf.device(devices[replica % len(devices)]):
                        self._placed[key] = tuple(tf.identity(t) for t in self._batches[index])
                return (*self._placed[key], tf.constant(weight, tf.float64))

            yield (self.strategy.experimental_distribute_values_from_function(replica_inputs),)

    def _parameters(self) -> np.ndarray:
        return np.concatenate([np.asarray(var.numpy(), np.float64).ravel() for var in self._variables])

    def matvec(self, v) -> np.ndarray:
        """∇²L(θ) v. ``v``: (dim,) float64 → (dim,) float64.

        Raises FloatingPointError if the product is not finite.
        """
        v = self._check_vector(v)
        start = time.perf_counter()
        v_compute = tf.constant(v, dtype=self._compute_dtype)
        total = np.zeros(self.dim, dtype=np.float64)
        for batch in self._rounds():
            total += self._hvp_fn(*batch, v_compute).numpy()
        result = total / self.num_examples
        if self.weight_decay:
            result += self.weight_decay * np.where(self._decay_coordinates, v, 0.0)
        self.last_pass_seconds = time.perf_counter() - start
        if not np.all(np.isfinite(result)):
            raise FloatingPointError(
                "the Hessian-vector product has non-finite entries: the loss or its curvature overflowed "
                "at these weights (check the checkpoint for NaN/Inf and the loss for log(0))"
            )
        return result

    __call__ = matvec

    def loss_and_gradient(self) -> tuple[float, np.ndarray]:
        """Full-data loss L(θ) (a float) and its gradient (dim,) float64."""
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
            theta = np.where(self._decay_coordinates, self._parameters(), 0.0)
            loss += 0.5 * self.weight_decay * float(theta @ theta)
            gradient += self.weight_decay * theta
        self.last_pass_seconds = time.perf_counter() - start
        if not (np.isfinite(loss) and np.all(np.isfinite(gradient))):
            raise FloatingPointError(
                f"the loss ({loss}) or its gradient is not finite at these weights: "
                "check the checkpoint for NaN/Inf"
            )
        return loss, gradient
