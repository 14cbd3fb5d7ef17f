"""Keras 3 models: the paper's CIFAR-10 ResNet-32 and small models for exact-Hessian validation.

Conventions shared by every builder:

- returns an *uncompiled* ``keras.Model`` mapping float images (N, H, W, C) to **logits**
  (N, num_classes): no softmax; use a loss with ``from_logits=True``;
- ``dtype`` ("float32" or "float64") is given to the ``Input`` and to every layer, so a float64
  model is built without touching the global ``keras.config.floatx()``;
- ``seed`` fixes every random initializer (each layer gets its own seed derived from it), so the
  same seed gives identical weights, with no change to global random state;
- no ``kernel_regularizer``: weight decay is applied explicitly by the training loop and the
  Hessian operator, on the variables that :func:`decayed_variable_mask` marks. The objective is

      L(theta) = mean cross-entropy + (weight_decay / 2) * sum over kernels ||kernel||^2,

  the paper code's ``weight_decay * tf.nn.l2_loss(kernel)`` convention; its Hessian contribution
  is ``weight_decay * I`` on kernel coordinates and zero elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import keras
import numpy as np

RESNET32_NUM_PARAMS = 464_154
RESNET_UNITS_PER_STAGE = 5  # 6 * 5 + 2 = 32 layers
RESNET_STAGE_FILTERS = (16, 32, 64)
RESNET_STAGE_STRIDES = (1, 2, 2)
RESNET_INITIAL_FILTERS = 16
LEAKY_RELU_SLOPE = 0.1
BATCH_NORM_EPSILON = 1e-3
BATCH_NORM_MOMENTUM = 0.9  # moving = 0.9 * moving + 0.1 * batch statistic

# Layers whose ``kernel`` is weight-decayed.
_DECAYED_KERNEL_LAYERS = (
    keras.layers.Dense,
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.EinsumDense,  # the query/key/value/output projections of MultiHeadAttention
)


# ================================================================================================
# Building blocks
# ================================================================================================
class _SeedStream:
    """Distinct, reproducible integer seeds for successive initializers, derived from one seed.

    A Keras initializer with an integer seed draws the same values every call, so each layer needs
    its own seed (one shared seed would give equal-shaped layers equal weights).
    """

    def __init__(self, seed: int):
        self._sequence = np.random.SeedSequence(seed)

    def next(self) -> int:
        (child,) = self._sequence.spawn(1)
        return int(child.generate_state(1, dtype=np.uint32)[0] >> 1)  # non-negative int31


def _he_normal_fan_out(seed: int) -> keras.initializers.Initializer:
    """The paper code's conv init: normal(0, sqrt(2 / (k * k * out_filters))), not truncated."""
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_out", distribution="untruncated_normal", seed=seed)


def _uniform_unit_scaling(seed: int) -> keras.initializers.Initializer:
    """The paper code's dense init (TF1 ``uniform_unit_scaling_initializer(factor=1.0)``):
    uniform(-sqrt(3 / fan_in), sqrt(3 / fan_in))."""
    return keras.initializers.VarianceScaling(
        scale=1.0, mode="fan_in", distribution="uniform", seed=seed)


def _glorot_uniform(seed: int) -> keras.initializers.Initializer:
    return keras.initializers.GlorotUniform(seed=seed)


@keras.saving.register_keras_serializable(package="hessflow")
class ChannelZeroPad(keras.layers.Layer):
    """Zero-pad the channel axis of (N, H, W, C) to (N, H, W, C + before + after).

    The parameter-free shortcut of the paper's ResNet when a unit widens the channels.
    """

    def __init__(self, before: int, after: int, **kwargs):
        super().__init__(**kwargs)
        self.before = int(before)
        self.after = int(after)

    def call(self, inputs):
        return keras.ops.pad(inputs, [[0, 0], [0, 0], [0, 0], [self.before, self.after]])

    def compute_output_shape(self, input_shape):
        channels = input_shape[-1]
        padded = None if channels is None else channels + self.before + self.after
        return (*input_shape[:-1], padded)

    def get_config(self):
        return {**super().get_config(), "before": self.before, "after": self.after}


def _batch_norm(x, dtype: str, name: str):
    """Batch norm with the paper code's constants, trainable gamma and beta."""
    return keras.layers.BatchNormalization(
        momentum=BATCH_NORM_MOMENTUM, epsilon=BATCH_NORM_EPSILON, center=True, scale=True,
        dtype=dtype, name=name)(x)


def _leaky_relu(x, dtype: str, name: str):
    return keras.layers.LeakyReLU(negative_slope=LEAKY_RELU_SLOPE, dtype=dtype, name=name)(x)


def _conv3x3(x, filters: int, strides: int, seeds: _SeedStream, dtype: str, name: str):
    """3x3 convolution, 'same' padding, no bias (batch norm follows or precedes it)."""
    return keras.layers.Conv2D(
        filters, 3, strides=strides, padding="same", use_bias=False,
        kernel_initializer=_he_normal_fan_out(seeds.next()), dtype=dtype, name=name)(x)


def _check_common_args(input_shape, num_classes: int, dtype: str) -> None:
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if any(int(d) < 1 for d in input_shape):
        raise ValueError(f"input_shape must have positive sizes, got {tuple(input_shape)}")


# ================================================================================================
# ResNet-32 of the paper
# ================================================================================================
def _residual_unit(x, in_filters: int, out_filters: int, stride: int,
                   activate_before_residual: bool, seeds: _SeedStream, dtype: str, name: str):
    """Pre-activation residual unit of the paper code (tensorflow/models CIFAR ResNet).

    (N, H, W, in_filters) -> (N, H / stride, W / stride, out_filters).
    """
    if activate_before_residual:
        # First unit of the network: the shortcut also sees the activated input.
        x = _batch_norm(x, dtype, f"{name}_bn1")
        x = _leaky_relu(x, dtype, f"{name}_act1")
        shortcut = x
    else:
        shortcut = x
        x = _batch_norm(x, dtype, f"{name}_bn1")
        x = _leaky_relu(x, dtype, f"{name}_act1")
    x = _conv3x3(x, out_filters, stride, seeds, dtype, f"{name}_conv1")
    x = _batch_norm(x, dtype, f"{name}_bn2")
    x = _leaky_relu(x, dtype, f"{name}_act2")
    x = _conv3x3(x, out_filters, 1, seeds, dtype, f"{name}_conv2")
    if in_filters != out_filters:
        # Parameter-free projection: subsample by average pooling, zero-pad the new channels.
        shortcut = keras.layers.AveragePooling2D(
            pool_size=stride, strides=stride, padding="valid", dtype=dtype,
            name=f"{name}_shortcut_pool")(shortcut)
        half = (out_filters - in_filters) // 2
        shortcut = ChannelZeroPad(half, half, dtype=dtype, name=f"{name}_shortcut_pad")(shortcut)
    return keras.layers.Add(dtype=dtype, name=f"{name}_add")([x, shortcut])


def resnet32(input_shape=(32, 32, 3), num_classes: int = 10, dtype: str = "float32",
             seed: int = 0) -> keras.Model:
    """The CIFAR-10 ResNet-32 of Ghorbani et al. (2019), as in google/spectral-density.

    Layout: 3x3 conv (16 filters, no bias) -> 3 stages x 5 pre-activation residual units with
    16/32/64 filters and strides 1/2/2 -> batch norm + leaky ReLU(0.1) -> global average pool ->
    dense ``num_classes`` with bias (logits). Each unit is BN + leaky ReLU -> 3x3 conv (stride s) ->
    BN + leaky ReLU -> 3x3 conv, plus the shortcut (average pool + channel zero-pad when the width
    changes). Batch norm: epsilon 1e-3, momentum 0.9, trainable gamma and beta.
    Initializers as in the paper code: conv He-normal on fan-out, dense uniform unit scaling.

    Trainable parameters for (32, 32, 3) inputs and 10 classes: 464,154
    = 432 (initial conv) + 23,360 + 88,160 + 351,424 (stages) + 128 (final BN) + 650 (dense).

    Args:
        input_shape: (H, W, C) of one image.
        num_classes: logits per example.
        dtype: "float32" or "float64", for the input and every layer.
        seed: initializer seed; the same seed gives identical weights.

    Returns:
        uncompiled ``keras.Model``: (N, H, W, C) -> logits (N, num_classes).
    """
    _check_common_args(input_shape, num_classes, dtype)
    seeds = _SeedStream(seed)
    inputs = keras.Input(shape=tuple(input_shape), dtype=dtype, name="images")
    x = _conv3x3(inputs, RESNET_INITIAL_FILTERS, 1, seeds, dtype, "init_conv")
    in_filters = RESNET_INITIAL_FILTERS
    for stage, (filters, stride) in enumerate(zip(RESNET_STAGE_FILTERS, RESNET_STAGE_STRIDES), 1):
        for unit in range(RESNET_UNITS_PER_STAGE):
            first = unit == 0
            x = _residual_unit(
                x, in_filters, filters, stride if first else 1,
                activate_before_residual=(stage == 1 and first),
                seeds=seeds, dtype=dtype, name=f"unit_{stage}_{unit}")
            in_filters = filters
    x = _batch_norm(x, dtype, "final_bn")
    x = _leaky_relu(x, dtype, "final_act")
    x = keras.layers.GlobalAveragePooling2D(dtype=dtype, name="global_pool")(x)
    logits = keras.layers.Dense(
        num_classes, kernel_initializer=_uniform_unit_scaling(seeds.next()),
        bias_initializer="zeros", dtype=dtype, name="logits")(x)
    return keras.Model(inputs, logits, name="resnet32")


# ================================================================================================
# Small models (exact Hessian feasible)
# ================================================================================================
def _activation(x, activation: str, dtype: str, name: str):
    if activation == "tanh":
        return keras.layers.Activation("tanh", dtype=dtype, name=name)(x)
    if activation == "leaky_relu":
        return _leaky_relu(x, dtype, name)
    raise ValueError(f"activation must be 'tanh' or 'leaky_relu', got {activation!r}")


def mlp(input_shape=(8, 8, 1), num_classes: int = 10, hidden=(32,), batch_norm: bool = False,
        activation: str = "tanh", dtype: str = "float32", seed: int = 0) -> keras.Model:
    """Multilayer perceptron: flatten -> [dense -> (BN) -> activation] per hidden width -> dense.

    ``tanh`` is the default activation because it is smooth: the Hessian exists everywhere, with
    no ReLU kinks to blur the comparison of SLQ against the exact spectrum. With ``batch_norm`` the
    hidden dense layers have no bias (BN's beta replaces it; a bias before BN would be an exactly
    flat direction of the loss).

    Trainable parameters, with D = prod(input_shape), widths h_1..h_L, K classes:
    sum_l (h_{l-1} * h_l + h_l) + h_L * K + K without BN (h_0 = D), and
    sum_l (h_{l-1} * h_l + 2 * h_l) + h_L * K + K with BN.
    Digits (8, 8, 1), hidden (32,), 10 classes: 2,410 (2,442 with BN).

    Returns:
        uncompiled ``keras.Model``: (N, *input_shape) -> logits (N, num_classes).
    """
    _check_common_args(input_shape, num_classes, dtype)
    seeds = _SeedStream(seed)
    inputs = keras.Input(shape=tuple(input_shape), dtype=dtype, name="images")
    x = keras.layers.Flatten(dtype=dtype, name="flatten")(inputs)
    for i, width in enumerate(hidden, 1):
        x = keras.layers.Dense(
            width, use_bias=not batch_norm, kernel_initializer=_glorot_uniform(seeds.next()),
            dtype=dtype, name=f"dense_{i}")(x)
        if batch_norm:
            x = _batch_norm(x, dtype, f"bn_{i}")
        x = _activation(x, activation, dtype, f"act_{i}")
    logits = keras.layers.Dense(
        num_classes, kernel_initializer=_glorot_uniform(seeds.next()), dtype=dtype,
        name="logits")(x)
    return keras.Model(inputs, logits, name="mlp")


def small_cnn(input_shape=(8, 8, 1), num_classes: int = 10, filters=(8, 16), strides=(1, 2),
              batch_norm: bool = False, activation: str = "tanh", dtype: str = "float32",
              seed: int = 0) -> keras.Model:
    """Small CNN: [3x3 conv ('same', stride s_l) -> (BN) -> activation] per layer -> flatten ->
    dense logits. Strided convolutions downsample (no max-pool kinks); activation as in :func:`mlp`.
    With ``batch_norm`` the convolutions have no bias.

    Trainable parameters, with C_0 = input channels, filters f_1..f_L, the final feature map
    H_L x W_L (H_l = ceil(H_{l-1} / s_l)), K classes:
    sum_l (9 * C_{l-1} * f_l + f_l) + H_L * W_L * f_L * K + K without BN, and
    sum_l (9 * C_{l-1} * f_l + 2 * f_l) + H_L * W_L * f_L * K + K with BN.
    Digits (8, 8, 1), filters (8, 16), strides (1, 2), 10 classes:
    80 + 1,168 + 2,570 = 3,818 (3,842 with BN).

    Returns:
        uncompiled ``keras.Model``: (N, *input_shape) -> logits (N, num_classes).
    """
    _check_common_args(input_shape, num_classes, dtype)
    if len(filters) != len(strides):
        raise ValueError(
            f"filters and strides must have the same length, got {filters} and {strides}")
    seeds = _SeedStream(seed)
    inputs = keras.Input(shape=tuple(input_shape), dtype=dtype, name="images")
    x = inputs
    for i, (width, stride) in enumerate(zip(filters, strides), 1):
        x = keras.layers.Conv2D(
            width, 3, strides=stride, padding="same", use_bias=not batch_norm,
            kernel_initializer=_glorot_uniform(seeds.next()), dtype=dtype, name=f"conv_{i}")(x)
        if batch_norm:
            x = _batch_norm(x, dtype, f"bn_{i}")
        x = _activation(x, activation, dtype, f"act_{i}")
    x = keras.layers.Flatten(dtype=dtype, name="flatten")(x)
    logits = keras.layers.Dense(
        num_classes, kernel_initializer=_glorot_uniform(seeds.next()), dtype=dtype,
        name="logits")(x)
    return keras.Model(inputs, logits, name="small_cnn")


# ================================================================================================
# Registry and helpers
# ================================================================================================
MODEL_BUILDERS: dict[str, Callable[..., keras.Model]] = {
    "resnet32": resnet32,
    "mlp": mlp,
    "small_cnn": small_cnn,
}


def build_model(name: str, **kwargs) -> keras.Model:
    """Build a registered model by name (``"resnet32"``, ``"mlp"``, ``"small_cnn"``);
    ``kwargs`` go to its builder."""
    try:
        builder = MODEL_BUILDERS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; known models: {', '.join(sorted(MODEL_BUILDERS))}") from None
    return builder(**kwargs)


def count_trainable(model: keras.Model) -> int:
    """Number of trainable scalar parameters (the Hessian's dimension)."""
    return sum(math.prod(v.shape) for v in model.trainable_variables)


def _iter_layers(model: keras.Model):
    """All layers, descending into nested models and into layers made of layers (the
    projections inside ``MultiHeadAttention``, say)."""
    yield from model._flatten_layers(include_self=False, recursive=True)


def compute_dtype(model: keras.Model) -> str:
    """The dtype of the model's trainable variables ("float32" or "float64")."""
    return str(model.trainable_variables[0].dtype)


def decayed_variable_mask(model: keras.Model) -> list[bool]:
    """Which trainable variables weight decay applies to, aligned with
    ``model.trainable_variables``: True for convolution and dense kernels (``EinsumDense`` ones
    included, as in attention layers), False for biases, embeddings and normalization
    gamma/beta (the paper code decayed exactly its ``DW`` kernel variables).

    The objective is cross-entropy + (weight_decay / 2) * sum of ||kernel||^2 over the True
    entries; the Hessian gains weight_decay * I on their coordinates.
    """
    kernel_ids = {id(layer.kernel) for layer in _iter_layers(model)
                  if isinstance(layer, _DECAYED_KERNEL_LAYERS) and layer.trainable}
    return [id(v) in kernel_ids for v in model.trainable_variables]
