"""Independent references for the Hessian tests.

`exact_hessian` builds the explicit Hessian matrix by reverse-over-reverse
differentiation (a `GradientTape.jacobian` of a gradient) of the loss written
out here from its definition, so it shares no code path with
`hessflow.hvp.HessianOperator` (which is forward-over-reverse and
matrix-free) beyond Keras's own `stateless_call`.
"""

import numpy as np
import tensorflow as tf

from hessflow.batchnorm import exact_batch_statistics


def flat_parameters(model) -> np.ndarray:
    return np.concatenate([np.asarray(v.numpy(), np.float64).ravel() for v in model.trainable_variables])


def set_flat_parameters(model, flat) -> None:
    offset = 0
    for variable in model.trainable_variables:
        size = int(np.prod(variable.shape))
        variable.assign(np.asarray(flat[offset : offset + size]).reshape(variable.shape).astype(variable.dtype))
        offset += size


def kernel_mask(model) -> np.ndarray:
    """Flat bool mask of the conv/dense kernel coordinates, from variable names."""
    return np.concatenate(
        [np.full(int(np.prod(v.shape)), v.path.endswith("kernel")) for v in model.trainable_variables]
    )


def _unflatten(model, flat):
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    sizes = [int(np.prod(s)) for s in shapes]
    return [tf.reshape(p, s) for p, s in zip(tf.split(flat, sizes), shapes)]


def batch_loss_sum(model, x, y, per_example_loss, training, flat):
    """Σ_{i in batch} ℓ_i as a function of the flat parameters (a tf tensor)."""
    non_trainable = [v.value for v in model.non_trainable_variables]
    # TensorFlow's own batch statistics have wrong second derivatives (see
    # hessflow.batchnorm); the finite-difference tests check this independently.
    with exact_batch_statistics(model):
        logits, _ = model.stateless_call(_unflatten(model, flat), non_trainable, tf.cast(x, flat.dtype),
                                         training=training)
    return tf.reduce_sum(tf.cast(per_example_loss(y, logits), flat.dtype))


def exact_hessian(model, batches, per_example_loss, training, weight_decay=0.0) -> np.ndarray:
    """The (n, n) Hessian matrix of L(θ) = (1/N) Σ_b Σ_{i∈b} ℓ_i + (wd/2)‖kernels‖².

    Reverse-over-reverse, one explicit Jacobian of the gradient per batch (so
    that memory stays at n × one batch), in the model's dtype (use float64).
    """
    flat = tf.constant(flat_parameters(model), dtype=model.trainable_variables[0].dtype)
    hessian = np.zeros((flat.shape[0], flat.shape[0]))
    count = 0
    for x, y in batches:
        with tf.GradientTape() as outer:
            outer.watch(flat)
            with tf.GradientTape() as inner:
                inner.watch(flat)
                loss_sum = batch_loss_sum(model, x, y, per_example_loss, training, flat)
            gradient = inner.gradient(loss_sum, flat)
        hessian += np.asarray(outer.jacobian(gradient, flat).numpy(), np.float64)
        count += len(x)
    hessian /= count
    hessian[np.diag_indices_from(hessian)] += weight_decay * kernel_mask(model)
    return 0.5 * (hessian + hessian.T)


def full_gradient(model, batches, per_example_loss, training, weight_decay=0.0) -> np.ndarray:
    """∇L(θ) by plain reverse mode, (n,) float64."""
    flat = tf.constant(flat_parameters(model), dtype=model.trainable_variables[0].dtype)
    gradient = np.zeros(flat.shape[0])
    count = 0
    for x, y in batches:
        with tf.GradientTape() as tape:
            tape.watch(flat)
            loss_sum = batch_loss_sum(model, x, y, per_example_loss, training, flat)
        gradient += tape.gradient(loss_sum, flat).numpy()
        count += len(x)
    return gradient / count + weight_decay * kernel_mask(model) * flat.numpy()


def central_difference_hvp(op, model, v: np.ndarray, step: float) -> np.ndarray:
    """(∇L(θ + step·v) − ∇L(θ − step·v)) / (2·step): H v from first derivatives only.

    ``op.loss_and_gradient`` gives ∇L at the model's current weights; θ is restored afterwards.
    Independent of every second-order autodiff path (truncation error O(step²)).
    """
    theta = flat_parameters(model)
    try:
        set_flat_parameters(model, theta + step * v)
        _, gradient_plus = op.loss_and_gradient()
        set_flat_parameters(model, theta - step * v)
        _, gradient_minus = op.loss_and_gradient()
    finally:
        set_flat_parameters(model, theta)
    return (gradient_plus - gradient_minus) / (2 * step)
