"""Batch statistics whose second derivatives are exact.

TensorFlow's `tf.nn.moments` (which Keras's `BatchNormalization` calls in
training mode) computes the variance as ``mean((x - stop_gradient(mean))²)``.
The first derivative is unaffected, because ∂var/∂mean = −2·mean(x − mean) = 0
identically; but the second derivative loses the term that runs through the
mean, so any Hessian of a batch-norm network in ``train`` mode built on it —
reverse-over-reverse or forward-over-reverse alike — is not the Hessian of the
loss. (On a small CNN with batch norm the Hessian-vector product was 0.6% off a
central difference of exact gradients.) The TF1 paper code used `tf.nn.moments`
in its ResNet, so its train-mode batch-norm Hessians carried the same error.

`exact_batch_statistics` swaps, for the duration of a ``with`` block (in
practice: while a `tf.function` is traced), every `BatchNormalization` layer's
moments for ``mean`` and ``mean((x − mean)²)`` with no gradient stopped. The
values are the same; only the derivatives change.
"""

from __future__ import annotations

import contextlib
import functools

import keras
import tensorflow as tf

__all__ = ["exact_batch_statistics", "batch_norm_layers"]


def batch_norm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every `BatchNormalization` layer of ``model``, nested models included."""
    found, stack = [], list(model.layers)
    while stack:
        layer = stack.pop(0)
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        stack.extend(getattr(layer, "layers", []))
    return found


def _moments(layer, inputs, mask):
    """Mean and variance over the layer's reduction axes, differentiable to any order."""
    if mask is not None:  # Keras's masked path has no stop_gradient
        return type(layer)._moments(layer, inputs, mask)
    axes = layer._reduction_axes
    mean = tf.reduce_mean(inputs, axis=axes, keepdims=True)
    variance = tf.reduce_mean(tf.square(inputs - mean), axis=axes)
    return tf.squeeze(mean, axis=axes), variance


@contextlib.contextmanager
def exact_batch_statistics(model: keras.Model):
    """Within the block, ``model``'s batch-norm layers use `_moments` above."""
    layers = batch_norm_layers(model)
    for layer in layers:
        if not (hasattr(type(layer), "_moments") and hasattr(layer, "_reduction_axes")):
            raise RuntimeError(
                f"this Keras version's BatchNormalization ({keras.__version__}) has no _moments/"
                "_reduction_axes: hessflow cannot make its batch statistics twice differentiable; "
                "use a Keras version in the range pyproject.toml declares"
            )
        layer._moments = functools.partial(_moments, layer)  # shadows the method on this instance
    try:
        yield
    finally:
        for layer in layers:
            del layer._moments
