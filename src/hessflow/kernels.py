"""Per-batch kernels of a Hessian pass: one batch's loss sum, gradient and HVP.

Everything `hessflow.hvp.HessianOperator` computes on a device is one of two
functions of one batch ``(x, y)`` of ``B`` examples, at the model's current
weights θ (the trainable variables, flattened and concatenated in
``model.trainable_variables`` order, each in C order; ``n`` numbers):

- `make_loss_and_gradient_sum`: ``(x, y) -> (Σ_i ℓ_i, ∇_θ Σ_i ℓ_i)``,
  a float64 scalar and a float64 ``(n,)`` vector;
- `make_hvp_sum`: ``(x, y, v) -> ∇²_θ (Σ_i ℓ_i) v`` for ``v`` of shape
  ``(n,)`` in the compute dtype, a float64 ``(n,)`` vector; forward-over-reverse
  (a `tf.autodiff.ForwardAccumulator` around a `tf.GradientTape` gradient) or,
  for comparison, double backprop (reverse-over-reverse).

Sums, not means: the caller divides by the true example count, so that an
uneven last batch is weighted right. ``ℓ_i`` is the per-example loss: the
loss function's value for example ``i``, averaged over its non-batch axes when
it has any (a per-token loss of shape ``(B, T)`` gives, per example, the mean
over its ``T`` tokens; shape ``(B,)`` is used as is). Computed in the compute
dtype (the dtype of the model's variables), cast to float64 on the way out.

The model runs through `keras.Model.stateless_call`, so nothing it returns
(batch-norm moving statistics, seed states) is written back; with
``training=True`` its batch-norm layers use their batch's statistics; batch and
layer statistics are made twice differentiable by
`hessflow.batchnorm.exact_batch_statistics`; and its
noise layers (Dropout and friends) are off whatever ``training`` is
(`hessflow.noise.noise_layers_off`).

`make_*` return plain Python functions of tensors (to be traced inside another
`tf.function`, as `hessflow.distribute` does per replica); `traced_*` wrap them
in a `tf.function` whose ``input_signature`` has an unknown batch dimension,
so a smaller last batch does not retrace. The benchmarks import these too.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from hessflow.batchnorm import exact_batch_statistics
from hessflow.noise import noise_layers_off

__all__ = [
    "HVP_METHODS",
    "per_example_loss",
    "example_losses",
    "call_takes_training",
    "make_batch_loss_sum",
    "make_hvp_sum",
    "make_loss_and_gradient_sum",
    "traced_hvp_sum",
    "traced_loss_and_gradient_sum",
    "batch_specs",
    "flatten",
    "unflatten",
]

#: ``forward_over_reverse`` (hessflow's) or ``double_backprop`` (for comparison).
HVP_METHODS = ("forward_over_reverse", "double_backprop")


def per_example_loss(loss) -> Callable:
    """The unreduced form of a Keras loss object (its ``call``), or a loss function as is."""
    if isinstance(loss, keras.losses.Loss):
        return loss.call
    if callable(loss):
        return loss
    raise TypeError(f"loss must be a keras.losses.Loss or a callable, got {type(loss).__name__}")


def example_losses(values: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """A loss function's output ``(B,)`` or ``(B, ...)`` as ``(B,)`` per-example losses in ``dtype``.

    Non-batch axes are averaged (after the cast, so that a float32 loss of a
    float64 model is averaged in float64).
    """
    values = tf.cast(values, dtype)
    rank = values.shape.rank
    if rank == 0:
        raise ValueError(
            "the loss returned a scalar: hessflow needs per-example losses of shape (batch,) or "
            "(batch, ...) (use the unreduced loss; a keras.losses.Loss object is unreduced automatically)"
        )
    if rank is None:
        return tf.reduce_mean(tf.reshape(values, [tf.shape(values)[0], -1]), axis=1)
    if rank > 1:
        return tf.reduce_mean(values, axis=list(range(1, rank)))
    return values


def flatten(tensors) -> tf.Tensor:
    """Tensors of any shapes as one flat vector, each in C order, concatenated."""
    return tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)


def unflatten(vector: tf.Tensor, shapes) -> list[tf.Tensor]:
    """The inverse of `flatten` for tensors of ``shapes``."""
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    return [tf.reshape(t, s) for t, s in zip(tf.split(vector, sizes), shapes)]


def call_takes_training(model: keras.Model) -> bool:
    """Whether ``model.call`` accepts a ``training`` argument (a user's subclassed model may
    define ``call(self, x)`` only; then there is no mode to pass, and none is passed)."""
    try:
        parameters = inspect.signature(model.call).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == "training" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def make_batch_loss_sum(model: keras.Model, loss, training: bool) -> Callable:
    """``(params, x, y) -> Σ_i ℓ_i`` (compute dtype scalar) as a function of the trainable
    parameter tensors ``params`` (``model.trainable_variables`` order and shapes)."""
    per_example = per_example_loss(loss)
    non_trainable = list(model.non_trainable_variables)
    mode = {"training": training} if call_takes_training(model) else {}

    def batch_loss_sum(params, x, y):
        # stateless_call returns the batch-norm updates instead of applying
        # them: a Hessian pass must not move the checkpoint's statistics.
        with exact_batch_statistics(model), noise_layers_off(model):
            outputs, _ = model.stateless_call(params, [v.value for v in non_trainable], x, **mode)
        return tf.reduce_sum(example_losses(per_example(y, outputs), params[0].dtype))

    return batch_loss_sum


def _trainable(model: keras.Model):
    variables = list(model.trainable_variables)
    if not variables:
        raise ValueError("model has no trainable variables (is it built?)")
    return variables, [tuple(v.shape) for v in variables]


def _dense(gradients):
    """Gradients as dense tensors. An `Embedding`'s gradient is a `tf.IndexedSlices`, which
    ``ForwardAccumulator.jvp`` and elementwise products cannot take; densifying is linear, so
    derivatives through it are exact. Call it inside the outer accumulator or tape."""
    return [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in gradients]


def make_hvp_sum(
    model: keras.Model,
    loss,
    *,
    training: bool,
    method: str = "forward_over_reverse",
    on_trace: Callable[[], None] | None = None,
) -> Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]:
    """``(x, y, v) -> ∇²(Σ_i ℓ_i) v``, float64 ``(n,)``; ``v``: ``(n,)`` in the compute dtype.

    ``on_trace`` is called each time the function body runs in Python (i.e. is traced).
    """
    if method not in HVP_METHODS:
        raise ValueError(f"method must be one of {HVP_METHODS}, got {method!r}")
    trainable, shapes = _trainable(model)
    batch_loss_sum = make_batch_loss_sum(model, loss, training)
    zero = tf.UnconnectedGradients.ZERO  # a variable the loss does not use has zero curvature

    def hvp_sum(x, y, v):
        if on_trace is not None:
            on_trace()
        params = [var.value for var in trainable]
        tangents = unflatten(v, shapes)
        if method == "forward_over_reverse":
            with tf.autodiff.ForwardAccumulator(params, tangents) as acc:
                with tf.GradientTape() as tape:
                    tape.watch(params)
                    loss_sum = batch_loss_sum(params, x, y)
                gradient = _dense(tape.gradient(loss_sum, params, unconnected_gradients=zero))
            product = acc.jvp(gradient, unconnected_gradients=zero)
        else:
            with tf.GradientTape() as outer:
                outer.watch(params)
                with tf.GradientTape() as inner:
                    inner.watch(params)
                    loss_sum = batch_loss_sum(params, x, y)
                gradient = _dense(inner.gradient(loss_sum, params, unconnected_gradients=zero))
                projection = tf.add_n([tf.reduce_sum(g * t) for g, t in zip(gradient, tangents)])
            product = outer.gradient(projection, params, unconnected_gradients=zero)
        return tf.cast(flatten(product), tf.float64)

    return hvp_sum


def make_loss_and_gradient_sum(
    model: keras.Model,
    loss,
    *,
    training: bool,
    on_trace: Callable[[], None] | None = None,
) -> Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    """``(x, y) -> (Σ_i ℓ_i, ∇ Σ_i ℓ_i)``: a float64 scalar and a float64 ``(n,)`` vector."""
    trainable, _ = _trainable(model)
    batch_loss_sum = make_batch_loss_sum(model, loss, training)

    def loss_and_gradient_sum(x, y):
        if on_trace is not None:
            on_trace()
        params = [var.value for var in trainable]
        with tf.GradientTape() as tape:
            tape.watch(params)
            loss_sum = batch_loss_sum(params, x, y)
        gradient = tape.gradient(loss_sum, params, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return tf.cast(loss_sum, tf.float64), tf.cast(flatten(gradient), tf.float64)

    return loss_and_gradient_sum


def batch_specs(x, y) -> tuple[tf.TensorSpec, tf.TensorSpec]:
    """`tf.TensorSpec`s of batches shaped and typed like ``x`` and ``y``, batch dimension unknown."""
    return (tf.TensorSpec((None, *x.shape[1:]), tf.as_dtype(x.dtype)),
            tf.TensorSpec((None, *y.shape[1:]), tf.as_dtype(y.dtype)))


def traced_hvp_sum(
    model: keras.Model,
    loss,
    x_spec: tf.TensorSpec,
    y_spec: tf.TensorSpec,
    *,
    training: bool,
    method: str = "forward_over_reverse",
    jit_compile: bool = False,
    on_trace: Callable[[], None] | None = None,
):
    """`make_hvp_sum` as a `tf.function` of ``(x, y, v)`` with a fixed input signature."""
    dim = sum(int(np.prod(v.shape, dtype=np.int64)) for v in model.trainable_variables)
    v_spec = tf.TensorSpec((dim,), model.trainable_variables[0].dtype)
    function = make_hvp_sum(model, loss, training=training, method=method, on_trace=on_trace)
    return tf.function(function, input_signature=[x_spec, y_spec, v_spec], jit_compile=jit_compile)


def traced_loss_and_gradient_sum(
    model: keras.Model,
    loss,
    x_spec: tf.TensorSpec,
    y_spec: tf.TensorSpec,
    *,
    training: bool,
    jit_compile: bool = False,
    on_trace: Callable[[], None] | None = None,
):
    """`make_loss_and_gradient_sum` as a `tf.function` of ``(x, y)`` with a fixed input signature."""
    function = make_loss_and_gradient_sum(model, loss, training=training, on_trace=on_trace)
    return tf.function(function, input_signature=[x_spec, y_spec], jit_compile=jit_compile)
