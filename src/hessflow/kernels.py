"""Per-batch kernels of a curvature pass: one batch's loss sum, gradient, HVP and GGN product.

Everything `hessflow.hvp.HessianOperator` and `hessflow.hvp.GGNOperator`
compute on a device is one of three functions of one batch ``(x, y)`` of ``B``
examples, at the model's current weights θ (the trainable variables, flattened
and concatenated in ``model.trainable_variables`` order, each in C order; ``n``
numbers):

- `make_loss_and_gradient_sum`: ``(x, y) -> (Σ_i ℓ_i, ∇_θ Σ_i ℓ_i)``,
  a float64 scalar and a float64 ``(n,)`` vector;
- `make_hvp_sum`: ``(x, y, v) -> ∇²_θ (Σ_i ℓ_i) v`` for ``v`` of shape
  ``(n,)`` in the compute dtype, a float64 ``(n,)`` vector; forward-over-reverse
  (a `tf.autodiff.ForwardAccumulator` around a `tf.GradientTape` gradient) or,
  for comparison, double backprop (reverse-over-reverse);
- `make_ggn_sum`: ``(x, y, v) -> Jᵀ H_z J v``, the generalized Gauss–Newton
  product, with ``z = f(x; θ)`` the batch's outputs, ``J = ∂z/∂θ`` and
  ``H_z = ∇²_z Σ_i ℓ_i(z)`` the loss's Hessian in output space: ``J v`` by
  forward mode, ``H_z (J v)`` by forward-over-reverse in output space, ``Jᵀ(·)``
  by reverse mode (``output_gradients``), one forward pass of the network;
- `make_hvp_matmat_sum`, `make_ggn_matmat_sum`: the same products for k tangents
  at once, ``(x, y, V) -> (k, n)`` for ``V`` of shape ``(k, n)``, sharing one
  primal pass (several Lanczos runs side by side, `hessflow.lanczos.lanczos_side_by_side`).

Every kernel takes ``variables=``: the trainable variables θ_S to
differentiate with respect to (a subset of ``model.trainable_variables``; all
by default). The others are read as constants, so no tape or accumulator
runs through them: the kernel returns the ``(n_S,)`` block part (the gradient
with respect to θ_S, or the diagonal block ``∇²_{θ_S}`` of the curvature
times a ``(n_S,)`` ``v``), at the cost of a pass that stops where θ_S ends.

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
    "make_forward",
    "make_batch_loss_sum",
    "make_hvp_sum",
    "make_ggn_sum",
    "make_hvp_matmat_sum",
    "make_ggn_matmat_sum",
    "make_loss_and_gradient_sum",
    "traced_product_sum",
    "traced_hvp_sum",
    "traced_ggn_sum",
    "traced_matmat_sum",
    "traced_loss_and_gradient_sum",
    "batch_specs",
    "selected_dim",
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


def make_forward(model: keras.Model, training: bool) -> Callable:
    """``(params, x) -> outputs``: the model's outputs as a function of the trainable parameter
    tensors ``params`` (``model.trainable_variables`` order and shapes), in a curvature pass's
    mode: batch statistics twice differentiable, noise layers off, model state untouched."""
    non_trainable = list(model.non_trainable_variables)
    mode = {"training": training} if call_takes_training(model) else {}

    def forward(params, x):
        # stateless_call returns the batch-norm updates instead of applying
        # them: a curvature pass must not move the checkpoint's statistics.
        with exact_batch_statistics(model), noise_layers_off(model):
            outputs, _ = model.stateless_call(params, [v.value for v in non_trainable], x, **mode)
        return outputs

    return forward


def make_batch_loss_sum(model: keras.Model, loss, training: bool) -> Callable:
    """``(params, x, y) -> Σ_i ℓ_i`` (compute dtype scalar) as a function of the trainable
    parameter tensors ``params`` (``model.trainable_variables`` order and shapes)."""
    per_example = per_example_loss(loss)
    forward = make_forward(model, training)

    def batch_loss_sum(params, x, y):
        return tf.reduce_sum(example_losses(per_example(y, forward(params, x)), params[0].dtype))

    return batch_loss_sum


def _selection(model: keras.Model, variables) -> tuple[list, list[int]]:
    """``model.trainable_variables`` and the positions among them of ``variables`` (None: all),
    in model order."""
    trainable = list(model.trainable_variables)
    if not trainable:
        raise ValueError("model has no trainable variables (is it built?)")
    if variables is None:
        return trainable, list(range(len(trainable)))
    position = {id(v): k for k, v in enumerate(trainable)}
    unknown = [getattr(v, "path", repr(v)) for v in variables if id(v) not in position]
    if unknown:
        raise ValueError(f"variables {unknown} are not among the model's trainable variables")
    positions = sorted({position[id(v)] for v in variables})
    if not positions:
        raise ValueError("variables is empty: select at least one trainable variable (or None for all)")
    return trainable, positions


def selected_dim(model: keras.Model, variables=None) -> int:
    """Total size of ``variables`` (None: of all trainable variables): the kernels' ``n``."""
    trainable, positions = _selection(model, variables)
    return sum(int(np.prod(tuple(trainable[k].shape), dtype=np.int64)) for k in positions)


def _parameters(trainable, positions) -> tuple[list, list]:
    """Every trainable parameter (model order) for the forward pass, and the selected ones.

    The selected are the variables themselves, which the caller watches; the
    others are read into plain tensors, which no tape or accumulator watches:
    they are constants of the pass, and its derivatives stop where they begin.
    """
    chosen = set(positions)
    params = [var.value if k in chosen else tf.convert_to_tensor(var.value) for k, var in enumerate(trainable)]
    return params, [params[k] for k in positions]


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
    variables=None,
) -> Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]:
    """``(x, y, v) -> ∇²(Σ_i ℓ_i) v``, float64 ``(n,)``; ``v``: ``(n,)`` in the compute dtype.

    ``on_trace`` is called each time the function body runs in Python (i.e. is traced).
    ``variables``: differentiate with respect to these trainable variables only (default all);
    then ``n`` is their total size and the product is their diagonal block's.
    """
    if method not in HVP_METHODS:
        raise ValueError(f"method must be one of {HVP_METHODS}, got {method!r}")
    trainable, positions = _selection(model, variables)
    shapes = [tuple(trainable[k].shape) for k in positions]
    batch_loss_sum = make_batch_loss_sum(model, loss, training)
    zero = tf.UnconnectedGradients.ZERO  # a variable the loss does not use has zero curvature

    def hvp_sum(x, y, v):
        if on_trace is not None:
            on_trace()
        params, selected = _parameters(trainable, positions)
        tangents = unflatten(v, shapes)
        if method == "forward_over_reverse":
            with tf.autodiff.ForwardAccumulator(selected, tangents) as acc:
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(selected)
                    loss_sum = batch_loss_sum(params, x, y)
                gradient = _dense(tape.gradient(loss_sum, selected, unconnected_gradients=zero))
            product = acc.jvp(gradient, unconnected_gradients=zero)
        else:
            with tf.GradientTape(watch_accessed_variables=False) as outer:
                outer.watch(selected)
                with tf.GradientTape(watch_accessed_variables=False) as inner:
                    inner.watch(selected)
                    loss_sum = batch_loss_sum(params, x, y)
                gradient = _dense(inner.gradient(loss_sum, selected, unconnected_gradients=zero))
                projection = tf.add_n([tf.reduce_sum(g * t) for g, t in zip(gradient, tangents)])
            product = outer.gradient(projection, selected, unconnected_gradients=zero)
        return tf.cast(flatten(product), tf.float64)

    return hvp_sum


def _output_space_hvp(per_example, y, outputs, output_tangents, dtype) -> list[tf.Tensor]:
    """``H_z u``, ``H_z = ∇²_z Σ_i ℓ_i(z)`` at the outputs ``z`` (a nest), for ``u`` the list of
    ``output_tangents`` (one per flattened output): forward-over-reverse of the loss in output
    space, with z held as a fresh primal (no derivative flows back into the network)."""
    zero = tf.UnconnectedGradients.ZERO
    z = [tf.stop_gradient(t) for t in tf.nest.flatten(outputs)]
    with tf.autodiff.ForwardAccumulator(z, output_tangents) as output_acc:
        with tf.GradientTape(watch_accessed_variables=False) as output_tape:
            output_tape.watch(z)
            values = per_example(y, tf.nest.pack_sequence_as(outputs, z))
            loss_sum = tf.reduce_sum(example_losses(values, dtype))
        output_gradient = output_tape.gradient(loss_sum, z, unconnected_gradients=zero)
    return output_acc.jvp(output_gradient, unconnected_gradients=zero)


def make_ggn_sum(
    model: keras.Model,
    loss,
    *,
    training: bool,
    on_trace: Callable[[], None] | None = None,
    variables=None,
) -> Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]:
    """``(x, y, v) -> Jᵀ H_z J v``, float64 ``(n,)``; ``v``: ``(n,)`` in the compute dtype.

    ``z`` is the model's output on the batch (any nest of tensors, e.g. logits
    ``(B, C)`` or per-token logits ``(B, T, C)``), ``J = ∂z/∂θ`` (with batch norm
    in train mode, every example's output depends on the whole batch: J is the
    batch's), and ``H_z = ∇²_z Σ_i ℓ_i`` with ``ℓ_i`` reduced per example as in
    `example_losses`. ``variables`` as in `make_hvp_sum`.
    """
    trainable, positions = _selection(model, variables)
    shapes = [tuple(trainable[k].shape) for k in positions]
    per_example = per_example_loss(loss)
    forward = make_forward(model, training)
    zero = tf.UnconnectedGradients.ZERO

    def ggn_sum(x, y, v):
        if on_trace is not None:
            on_trace()
        params, selected = _parameters(trainable, positions)
        tangents = unflatten(v, shapes)
        # One forward pass, seen by the accumulator (J v) and recorded by the tape (for Jᵀ).
        with tf.autodiff.ForwardAccumulator(selected, tangents) as acc:
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(selected)
                outputs = forward(params, x)
            output_tensors = tf.nest.flatten(outputs)
            jv = acc.jvp(output_tensors, unconnected_gradients=zero)
        hjv = _output_space_hvp(per_example, y, outputs, jv, selected[0].dtype)
        # Jᵀ (H_z J v): reverse mode through the recorded forward pass, H_z J v as the seed.
        product = tape.gradient(output_tensors, selected, output_gradients=hjv, unconnected_gradients=zero)
        return tf.cast(flatten(_dense(product)), tf.float64)

    return ggn_sum


def _tangent_rows(tangents: tf.Tensor) -> int:
    """The static number of tangents k of a ``(k, n)`` block (the kernels unroll over it)."""
    count = tangents.shape[0]
    if tangents.shape.rank != 2 or count is None:
        raise ValueError(f"tangents must be a (k, n) block with a known k; got shape {tangents.shape}")
    return int(count)


def make_hvp_matmat_sum(
    model: keras.Model,
    loss,
    *,
    training: bool,
    on_trace: Callable[[], None] | None = None,
    variables=None,
) -> Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]:
    """``(x, y, V) -> (∇²(Σ_i ℓ_i) V^T)^T``: k Hessian-vector products of one batch at once.

    ``V``: ``(k, n)`` in the compute dtype, one tangent per row, k known when traced;
    returns ``(k, n)`` float64, row r the product with row r. One forward and one reverse
    pass (the gradient g, recorded by a persistent tape) are shared by the k products, each
    of which is then one reverse pass through the gradient's graph, ``∇_θ ⟨g, v_r⟩``
    (reverse-over-reverse), one after the other. Against k calls of `make_hvp_sum`'s
    forward-over-reverse this saves k - 1 primal passes: at k = 4 on a 2-core CPU 0.76x the time
    per product for ResNet-32 at a batch of 256, 0.38x for an MLP (benchmarks/probes_per_pass.py).
    ``pfor`` (`tf.vectorized_map`)
    over the tangent is no alternative for convolutional networks: it cannot batch a
    ``Conv2D`` whose filter varies, which a tangent of the kernels does. The products agree
    with `make_hvp_sum`'s to rounding (another order of the same sums), not bit for bit.
    ``variables`` as in `make_hvp_sum`.
    """
    trainable, positions = _selection(model, variables)
    shapes = [tuple(trainable[k].shape) for k in positions]
    batch_loss_sum = make_batch_loss_sum(model, loss, training)
    zero = tf.UnconnectedGradients.ZERO

    def hvp_matmat_sum(x, y, tangents):
        if on_trace is not None:
            on_trace()
        count = _tangent_rows(tangents)
        params, selected = _parameters(trainable, positions)
        with tf.GradientTape(persistent=True, watch_accessed_variables=False) as outer:
            outer.watch(selected)
            with tf.GradientTape(watch_accessed_variables=False) as inner:
                inner.watch(selected)
                loss_sum = batch_loss_sum(params, x, y)
            gradient = _dense(inner.gradient(loss_sum, selected, unconnected_gradients=zero))
        products = []
        for r in range(count):
            # One product at a time: left to itself the executor runs the k independent reverse
            # passes at once, each with its own temporaries (ResNet-32, a batch of 256, k = 8: over
            # 17 GB here, against a few for one).
            with tf.control_dependencies(products[-1:]):
                product = outer.gradient(gradient, selected, output_gradients=unflatten(tangents[r], shapes),
                                         unconnected_gradients=zero)
                products.append(flatten(_dense(product)))
        return tf.cast(tf.stack(products), tf.float64)

    return hvp_matmat_sum


def make_ggn_matmat_sum(
    model: keras.Model,
    loss,
    *,
    training: bool,
    on_trace: Callable[[], None] | None = None,
    variables=None,
) -> Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]:
    """``(x, y, V) -> (Jᵀ H_z J Vᵀ)ᵀ``: k Gauss–Newton products of one batch from one forward pass.

    ``V``: ``(k, n)`` in the compute dtype (k known when traced); returns ``(k, n)``
    float64. The forward pass is recorded once by a persistent tape; ``J v_r`` comes from
    reverse mode twice (the vector-Jacobian product ``u -> Jᵀ u`` is linear in u, and its
    gradient with respect to u along ``v_r`` is ``J v_r``), so no forward-mode pass per
    tangent is needed; then ``H_z (J v_r)`` in output space and ``Jᵀ(·)`` through the
    recorded pass, as in `make_ggn_sum`, whose products these equal to rounding.
    """
    trainable, positions = _selection(model, variables)
    shapes = [tuple(trainable[k].shape) for k in positions]
    per_example = per_example_loss(loss)
    forward = make_forward(model, training)
    zero = tf.UnconnectedGradients.ZERO

    def ggn_matmat_sum(x, y, tangents):
        if on_trace is not None:
            on_trace()
        count = _tangent_rows(tangents)
        params, selected = _parameters(trainable, positions)
        with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
            tape.watch(selected)
            outputs = forward(params, x)
        output_tensors = tf.nest.flatten(outputs)
        # u -> Jᵀ u at u = 0, recorded, so that its gradient in u along v is J v.
        seeds = [tf.zeros_like(t) for t in output_tensors]
        with tf.GradientTape(persistent=True, watch_accessed_variables=False) as linear:
            linear.watch(seeds)
            vjp = _dense(tape.gradient(output_tensors, selected, output_gradients=seeds, unconnected_gradients=zero))
        products = []
        for r in range(count):
            with tf.control_dependencies(products[-1:]):  # one at a time, as in make_hvp_matmat_sum
                jv = linear.gradient(vjp, seeds, output_gradients=unflatten(tangents[r], shapes),
                                     unconnected_gradients=zero)
                hjv = _output_space_hvp(per_example, y, outputs, jv, selected[0].dtype)
                product = tape.gradient(output_tensors, selected, output_gradients=hjv, unconnected_gradients=zero)
                products.append(flatten(_dense(product)))
        return tf.cast(tf.stack(products), tf.float64)

    return ggn_matmat_sum


def make_loss_and_gradient_sum(
    model: keras.Model,
    loss,
    *,
    training: bool,
    on_trace: Callable[[], None] | None = None,
    variables=None,
) -> Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    """``(x, y) -> (Σ_i ℓ_i, ∇ Σ_i ℓ_i)``: a float64 scalar and a float64 ``(n,)`` vector.

    ``variables`` as in `make_hvp_sum`: the gradient with respect to those only.
    """
    trainable, positions = _selection(model, variables)
    batch_loss_sum = make_batch_loss_sum(model, loss, training)

    def loss_and_gradient_sum(x, y):
        if on_trace is not None:
            on_trace()
        params, selected = _parameters(trainable, positions)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(selected)
            loss_sum = batch_loss_sum(params, x, y)
        gradient = tape.gradient(loss_sum, selected, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return tf.cast(loss_sum, tf.float64), tf.cast(flatten(_dense(gradient)), tf.float64)

    return loss_and_gradient_sum


def batch_specs(x, y) -> tuple[tf.TensorSpec, tf.TensorSpec]:
    """`tf.TensorSpec`s of batches shaped and typed like ``x`` and ``y``, batch dimension unknown."""
    return (tf.TensorSpec((None, *x.shape[1:]), tf.as_dtype(x.dtype)),
            tf.TensorSpec((None, *y.shape[1:]), tf.as_dtype(y.dtype)))


def _vector_spec(model: keras.Model, variables) -> tf.TensorSpec:
    return tf.TensorSpec((selected_dim(model, variables),), model.trainable_variables[0].dtype)


def traced_product_sum(make_product: Callable, model: keras.Model, loss, x_spec: tf.TensorSpec,
                       y_spec: tf.TensorSpec, *, jit_compile: bool = False, variables=None, **options):
    """``make_product(model, loss, variables=variables, **options)`` (`make_hvp_sum`,
    `make_ggn_sum`) as a `tf.function` of ``(x, y, v)`` with a fixed input signature: traced once."""
    function = make_product(model, loss, variables=variables, **options)
    return tf.function(function, input_signature=[x_spec, y_spec, _vector_spec(model, variables)],
                       jit_compile=jit_compile)


def traced_hvp_sum(model: keras.Model, loss, x_spec: tf.TensorSpec, y_spec: tf.TensorSpec, **options):
    """`make_hvp_sum` traced once (`traced_product_sum`); ``options``: its keywords and ``jit_compile``."""
    return traced_product_sum(make_hvp_sum, model, loss, x_spec, y_spec, **options)


def traced_ggn_sum(model: keras.Model, loss, x_spec: tf.TensorSpec, y_spec: tf.TensorSpec, **options):
    """`make_ggn_sum` traced once (`traced_product_sum`); ``options``: its keywords and ``jit_compile``."""
    return traced_product_sum(make_ggn_sum, model, loss, x_spec, y_spec, **options)


def traced_matmat_sum(make_matmat: Callable, model: keras.Model, loss, x_spec: tf.TensorSpec,
                      y_spec: tf.TensorSpec, num_tangents: int, *, jit_compile: bool = False, variables=None,
                      **options):
    """``make_matmat(model, loss, variables=variables, **options)`` (`make_hvp_matmat_sum`,
    `make_ggn_matmat_sum`) as a `tf.function` of ``(x, y, V)``, ``V`` of shape
    ``(num_tangents, n)``: traced once."""
    function = make_matmat(model, loss, variables=variables, **options)
    vector = _vector_spec(model, variables)
    return tf.function(function, input_signature=[x_spec, y_spec, tf.TensorSpec((num_tangents, *vector.shape),
                                                                                  vector.dtype)],
                       jit_compile=jit_compile)


def traced_loss_and_gradient_sum(
    model: keras.Model,
    loss,
    x_spec: tf.TensorSpec,
    y_spec: tf.TensorSpec,
    *,
    training: bool,
    jit_compile: bool = False,
    on_trace: Callable[[], None] | None = None,
    variables=None,
):
    """`make_loss_and_gradient_sum` as a `tf.function` of ``(x, y)`` with a fixed input signature."""
    function = make_loss_and_gradient_sum(model, loss, training=training, on_trace=on_trace, variables=variables)
    return tf.function(function, input_signature=[x_spec, y_spec], jit_compile=jit_compile)
