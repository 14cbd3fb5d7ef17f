"""Noise layers switched off for a Hessian pass.

The Hessian hessflow computes is that of a deterministic objective. A Keras
model called with ``training=True`` (which `hessflow.hvp.HessianOperator` does
in batch-norm ``train`` mode, through `keras.Model.stateless_call` too) runs its
Dropout layers with a random mask; since a Hessian pass discards the updated
seed state, the mask is the same frozen one on every call, and the operator is
silently the Hessian of one arbitrary sub-network. Batch-norm mode and noise
are therefore decoupled: within `noise_layers_off` every noise layer of the
model runs as in inference, whatever ``training`` the model was called with,
while batch norm still follows the model's ``training`` argument.

Noise layers (`NOISE_LAYER_TYPES`): Keras's `Dropout` and every subclass of it
(`SpatialDropout1D/2D/3D`, user subclasses), `GaussianDropout`,
`GaussianNoise`, `AlphaDropout`, and Keras's random data-augmentation layers
(``Random*``, `RandAugment`, `AugMix`, `CutMix`, `MixUp`). In inference they
are the identity (augmentation layers: their deterministic inference output,
e.g. a centre crop for `RandomCrop`).

Like `hessflow.batchnorm.exact_batch_statistics`, the switch shadows a method
on the layer instances for the duration of a ``with`` block (in practice: while
a `tf.function` is traced) and restores them afterwards.
"""

from __future__ import annotations

import contextlib
import functools
import inspect

import keras

from hessflow.batchnorm import all_layers

__all__ = ["NOISE_LAYER_TYPES", "noise_layers", "noise_layers_off"]

_AUGMENTATION_NAMES = ("RandAugment", "AugMix", "CutMix", "MixUp")

#: Layer classes that are random in training and deterministic in inference.
NOISE_LAYER_TYPES: tuple[type, ...] = tuple(
    {
        cls
        for name in dir(keras.layers)
        if name in ("Dropout", "GaussianDropout", "GaussianNoise", "AlphaDropout", *_AUGMENTATION_NAMES)
        or name.startswith("Random")
        for cls in [getattr(keras.layers, name)]
        if isinstance(cls, type) and issubclass(cls, keras.layers.Layer)
    }
)


def noise_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every noise layer of ``model`` (nested models and layers included, e.g. a
    `MultiHeadAttention`'s internal dropout), in `all_layers` order."""
    return [layer for layer in all_layers(model) if isinstance(layer, NOISE_LAYER_TYPES)]


def _inference_call(original, *args, **kwargs):
    """The layer's own call with ``training=False``, whatever the caller passed."""
    kwargs["training"] = False
    return original(*args, **kwargs)


def _takes_training(call) -> bool:
    try:
        return "training" in inspect.signature(call).parameters
    except (TypeError, ValueError):
        return False


@contextlib.contextmanager
def noise_layers_off(model: keras.Model):
    """Within the block, ``model``'s noise layers run in inference mode (identity)."""
    switched = []
    for layer in noise_layers(model):
        original = layer.call  # bound; an instance attribute if one was already set
        if not _takes_training(original):  # nothing to switch: not a training-dependent layer
            continue
        shadowed = vars(layer).get("call")
        layer.call = functools.partial(_inference_call, original)
        switched.append((layer, shadowed))
    try:
        yield
    finally:
        for layer, shadowed in switched:
            if shadowed is None:
                del layer.call
            else:
                layer.call = shadowed
