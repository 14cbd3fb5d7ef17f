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

Keras's `LayerNormalization` and `GroupNormalization` (and any layer that calls
``keras.ops.moments``) reach the same `tf.nn.moments` through Keras's TensorFlow
backend, so within the block that backend's moments are swapped as well
(`_exact_keras_moments`). Without it, the Hessian-vector product of a small
transformer (pre-norm, one block) was 4% off a central difference of gradients;
with it, 2e-10 (float64).

Precision in float32. The moments are two-pass (the mean, then the mean of
squared deviations) in the compute dtype. Where a channel's mean is r times its
spread, ``x − mean`` keeps about r · 6e-8 of float32 rounding (that of the
mean and of the layer that produced x), and moments computed in float64 and
cast back do not remove it: at r = 1000 the float32 gradient and HVP are 7e-5
and 1e-4 from float64 either way, where a one-pass E[x²] − E[x]² would be at
4e-2 and 1e-1. The larger float32 gap of ResNet-32 at init (HVP 5e-3 from
float64 at batch 100) is not the statistics at all: 26 of its 30 million
leaky-ReLU units have a pre-activation within float32 error of the kink and
land on the other side of it, so float32 computes the Hessian of a neighbouring
linear piece, to 4e-6 (`benchmarks/float32_batchnorm.py`).
"""

from __future__ import annotations

import contextlib
import functools
import threading

import keras
import tensorflow as tf

__all__ = ["exact_batch_statistics", "batch_norm_layers", "all_layers"]


def all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer inside ``model``, each once: its layers, the layers of nested
    models, and the sublayers that layers hold as attributes (a custom block's
    own layers, a `MultiHeadAttention`'s dense and dropout layers), breadth
    first. ``model`` itself is not included.
    """
    found, seen = [], set()
    queue = list(getattr(model, "layers", [])) + list(getattr(model, "_layers", []))
    while queue:
        layer = queue.pop(0)
        if id(layer) in seen or layer is model:
            continue
        seen.add(id(layer))
        found.append(layer)
        # Keras 3 tracks every sublayer a layer holds in `_layers` (`layers` on models).
        queue.extend(getattr(layer, "layers", []))
        queue.extend(getattr(layer, "_layers", []))
    return found


def batch_norm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every `BatchNormalization` layer of ``model``, nested models and layers included."""
    return [layer for layer in all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]


def _moments(layer, inputs, mask):
    """Mean and variance over the layer's reduction axes, differentiable to any order."""
    if mask is not None:  # Keras's masked path has no stop_gradient
        return type(layer)._moments(layer, inputs, mask)
    axes = layer._reduction_axes
    mean = tf.reduce_mean(inputs, axis=axes, keepdims=True)
    variance = tf.reduce_mean(tf.square(inputs - mean), axis=axes)
    return tf.squeeze(mean, axis=axes), variance


def _exact_compute_moments(x, axes, keepdims=False):
    """Keras's TF-backend ``_compute_moments`` without `tf.nn.moments`' stop_gradient."""
    mean = tf.reduce_mean(x, axis=axes, keepdims=True)
    variance = tf.reduce_mean(tf.square(x - mean), axis=axes, keepdims=keepdims)
    return (mean if keepdims else tf.squeeze(mean, axis=axes)), variance


_keras_moments_lock = threading.Lock()
_keras_moments_state = {"depth": 0, "original": None}


@contextlib.contextmanager
def _exact_keras_moments():
    """Within the block, ``keras.ops.moments`` (TensorFlow backend) is twice differentiable.

    Module-level, counted: nested or concurrent blocks (replica threads tracing at once) keep
    the swap until the last one exits.
    """
    from keras.src.backend.tensorflow import nn as backend_nn  # private: where Keras calls tf.nn.moments

    with _keras_moments_lock:
        if _keras_moments_state["depth"] == 0:
            if not hasattr(backend_nn, "_compute_moments"):
                raise RuntimeError(
                    f"this Keras version ({keras.__version__}) has no keras.src.backend.tensorflow.nn."
                    "_compute_moments: hessflow cannot make layer-norm statistics twice differentiable; "
                    "use a Keras version in the range pyproject.toml declares"
                )
            _keras_moments_state["original"] = backend_nn._compute_moments
            backend_nn._compute_moments = _exact_compute_moments
        _keras_moments_state["depth"] += 1
    try:
        yield
    finally:
        with _keras_moments_lock:
            _keras_moments_state["depth"] -= 1
            if _keras_moments_state["depth"] == 0:
                backend_nn._compute_moments = _keras_moments_state["original"]


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
        with _exact_keras_moments():
            yield
    finally:
        for layer in layers:
            del layer._moments
