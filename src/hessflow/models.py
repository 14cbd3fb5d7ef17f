"""Keras 3 models: the paper's CIFAR-10 ResNet-32 and VGG, and small models for exact-Hessian
validation.

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
# VGG of the paper
# ================================================================================================
VGG_POOL = "P"  # a 2x2 max pool (stride 2, 'valid') in a ``widths`` list
VGG_WIDTHS = (64, "P", 128, "P", 256, 256, "P", 512, 512, "P", 512, 512, "P")
VGG_DENSE = 256
VGG_DROPOUT = 0.5
VGG_BATCH_NORM_MOMENTUM = 0.99  # TF1 tf.layers.batch_normalization's default, as the paper's VGG
VGG_NUM_PARAMS = 9_359_882  # CIFAR-10, batch norm on
VGG_NUM_PARAMS_NO_BN = 9_354_378  # CIFAR-10, batch norm off


def _check_vgg_args(input_shape, widths, dense: int, dropout: float) -> None:
    if not widths or not any(w != VGG_POOL for w in widths):
        raise ValueError(f"widths must hold at least one convolution width, got {tuple(widths)}")
    for w in widths:
        if w != VGG_POOL and (isinstance(w, bool) or not isinstance(w, int | np.integer) or w < 1):
            raise ValueError(f"widths entries must be integers >= 1 or {VGG_POOL!r} (a 2x2 max pool), "
                             f"got {w!r} in {tuple(widths)}")
    pools = sum(1 for w in widths if w == VGG_POOL)
    height, width = (int(d) for d in input_shape[:2])
    if height >> pools < 1 or width >> pools < 1:
        raise ValueError(
            f"{pools} 2x2 max pools do not fit {height}x{width} inputs (each halves the size, rounding "
            f"down); use at most {min(height, width).bit_length() - 1}")
    if isinstance(dense, bool) or not isinstance(dense, int | np.integer) or dense < 1:
        raise ValueError(f"dense must be an integer >= 1, got {dense!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")


def vgg(input_shape=(32, 32, 3), num_classes: int = 10, widths=VGG_WIDTHS, dense: int = VGG_DENSE,
        dropout: float = VGG_DROPOUT, batch_norm: bool = True, conv_bias: bool = True,
        dtype: str = "float32", seed: int = 0) -> keras.Model:
    """The CIFAR-10 VGG of Ghorbani et al. (2019), as in google/spectral-density
    (``experiments/vgg_model.py``, ``VGG._build_model`` and ``_conv2d_bn``).

    Layout, for each entry of ``widths``: an integer f is a 3x3 convolution with f filters (stride 1,
    'same' padding, with bias) -> batch norm (if ``batch_norm``) -> ReLU; ``"P"`` is a 2x2 max pool,
    stride 2, 'valid' padding. Then flatten -> dense ``dense`` units with bias and ReLU (``fc_1``) ->
    dropout ``dropout`` -> dense ``num_classes`` with bias (``logits``). The defaults are the paper
    code's: conv 64-P-128-P-256-256-P-512-512-P-512-512-P (a VGG-11 / "VGG-A" feature stack), one
    256-unit hidden layer (its ``vgg_fc_size`` flag) instead of VGG's two 4096-unit ones, dropout 0.5
    (``vgg_use_dropout``), batch norm on (``vgg_use_batch_norm``); ``batch_norm=False`` is the
    paper's other VGG. Batch norm before the ReLU, epsilon 1e-3, momentum 0.99 (TF1
    ``tf.layers.batch_normalization``'s defaults; the ResNet's BN uses 0.9), trainable gamma and
    beta. Initializers as in the paper code (TF1 ``tf.layers`` defaults): Glorot-uniform kernels,
    zero biases. The paper trains it with weight decay 5e-5, momentum 0.9, batch 128, learning rate
    0.1 cut tenfold at steps 20,000 and 100,000 (``experiments/cifar_train.py``): the run's config.

    A narrow variant for demo scale comes from ``widths`` and ``dense``, e.g. scikit-learn's digits
    (8x8x1: at most 3 pools): ``widths=(8, "P", 16, "P", 32, "P"), dense=32``.

    Departures from the paper code, and why:

    - Dropout is active only in training (``model(x, training=True)`` in the training step, a new
      mask every step). Every Hessian and Gauss-Newton pass runs it as the identity, in both
      batch-norm modes (``hessflow.noise.noise_layers_off``), so the operator is that of a
      deterministic objective, equal to that of the same weights without the layer. The paper
      code's ``lanczos`` mode builds its graph in ``'train'`` mode (``is_train=True``), in which
      ``tf.layers.dropout`` would draw a fresh mask at every product (that branch builds the ResNet
      whatever ``--model`` says: no VGG Hessian path was published to compare with).
    - Weight decay: hessflow decays the conv and dense kernels only (:func:`decayed_variable_mask`,
      the ResNet code's convention); the paper's VGG adds ``weight_decay * tf.nn.l2_loss`` of every
      trainable variable, biases and batch-norm gamma/beta included. On the Hessian that is
      ``weight_decay`` (5e-5) less on those coordinates; ``HessianOperator(decay_mask=...)`` with all
      True gives the paper's objective.
    - Not a departure, a consequence: with batch norm, the conv bias the paper code keeps is
      cancelled by the mean subtraction in ``train`` mode, so its coordinates are exactly flat
      directions of the loss: a ``batch_norm: train`` Hessian has a zero eigenvalue for each conv
      channel (sum of the conv widths: 2,752 here, 56 for the digits variant; the paper's decay
      would put them at 5e-5). ``conv_bias=False`` drops them, as :func:`small_cnn` does with
      batch norm.
    - Logits out, no softmax (the package's convention); the paper applies softmax cross-entropy to
      the same logits. Layer names: ``conv_i``, ``bn_i``, ``relu_i``, ``pool_j``, ``fc_1``,
      ``dropout``, ``logits`` (the paper's ``conv2d_i``, ``bn_i``, ``fc_1``, ``fc_2``), so that
      ``hessian.blocks`` patterns such as ``^logits/`` mean the same as for the other models.

    Trainable parameters, with C_0 = input channels, the conv widths f_1..f_L (C_l = f_l), the final
    feature map H_P x W_P (H_P = floor(H / 2^P) for P pools), D = ``dense``, K classes and b = 1 with
    conv bias (0 without):
    sum_l (9 * C_{l-1} * f_l + b * f_l) + (H_P * W_P * f_L * D + D) + (D * K + K) without BN, plus
    2 * sum_l f_l with BN (gamma, beta).
    CIFAR-10 (32, 32, 3), the defaults: 9,217,728 (conv kernels) + 2,752 (conv biases) + 131,328
    (fc_1) + 2,570 (logits) = 9,354,378 without BN, 9,359,882 with BN (+5,504).
    Digits (8, 8, 1), widths (8, "P", 16, "P", 32, "P"), dense 32: 5,832 + 56 + 1,056 + 330 = 7,274
    without BN, 7,386 with BN (+112).

    Args:
        input_shape: (H, W, C) of one image.
        num_classes: logits per example.
        widths: conv widths and ``"P"`` (2x2 max pool) entries, in order.
        dense: units of the hidden dense layer.
        dropout: dropout rate before the last dense layer; 0 leaves the layer out.
        batch_norm: batch norm between each convolution and its ReLU.
        conv_bias: whether the convolutions have a bias (the paper code's do, with or without BN).
        dtype: "float32" or "float64", for the input and every layer.
        seed: initializer and dropout seed; the same seed gives identical weights, whatever
            ``dropout`` is (the dropout seed is drawn after every initializer's).

    Returns:
        uncompiled ``keras.Model``: (N, H, W, C) -> logits (N, num_classes).
    """
    _check_common_args(input_shape, num_classes, dtype)
    _check_vgg_args(input_shape, widths, dense, dropout)
    seeds = _SeedStream(seed)
    inputs = keras.Input(shape=tuple(input_shape), dtype=dtype, name="images")
    x = inputs
    conv_index = pool_index = 0
    for width in widths:
        if width == VGG_POOL:
            pool_index += 1
            x = keras.layers.MaxPooling2D(
                pool_size=2, strides=2, padding="valid", dtype=dtype, name=f"pool_{pool_index}")(x)
            continue
        conv_index += 1
        x = keras.layers.Conv2D(
            int(width), 3, strides=1, padding="same", use_bias=conv_bias,
            kernel_initializer=_glorot_uniform(seeds.next()), bias_initializer="zeros",
            dtype=dtype, name=f"conv_{conv_index}")(x)
        if batch_norm:
            x = keras.layers.BatchNormalization(
                momentum=VGG_BATCH_NORM_MOMENTUM, epsilon=BATCH_NORM_EPSILON, center=True, scale=True,
                dtype=dtype, name=f"bn_{conv_index}")(x)
        x = keras.layers.ReLU(dtype=dtype, name=f"relu_{conv_index}")(x)
    x = keras.layers.Flatten(dtype=dtype, name="flatten")(x)
    fc_initializer = _glorot_uniform(seeds.next())
    logits_initializer = _glorot_uniform(seeds.next())
    dropout_seed = seeds.next()  # last: the weights do not depend on whether there is dropout
    x = keras.layers.Dense(
        int(dense), activation="relu", kernel_initializer=fc_initializer, bias_initializer="zeros",
        dtype=dtype, name="fc_1")(x)
    if dropout > 0:
        x = keras.layers.Dropout(float(dropout), seed=dropout_seed, dtype=dtype, name="dropout")(x)
    logits = keras.layers.Dense(
        num_classes, kernel_initializer=logits_initializer, bias_initializer="zeros", dtype=dtype,
        name="logits")(x)
    return keras.Model(inputs, logits, name="vgg")


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
    "vgg": vgg,
    "mlp": mlp,
    "small_cnn": small_cnn,
}


def build_model(name: str, **kwargs) -> keras.Model:
    """Build a registered model by name (``"resnet32"``, ``"vgg"``, ``"mlp"``, ``"small_cnn"``);
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
