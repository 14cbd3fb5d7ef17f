"""An MLP regressor (a hessflow model factory).

Layout: (N, *input_shape) float features -> flatten -> [Dense(h) -> tanh] per hidden width ->
Dense(prod(output_shape)) with no activation -> reshape to (N, *output_shape). A linear output
with mean squared error; tanh keeps the Hessian smooth everywhere. No ``kernel_regularizer``
(hessflow applies weight decay to the Dense kernels itself).

Trainable parameters with D = prod(input_shape) inputs, widths h_1..h_L and P = prod(output_shape)
outputs: ``sum_l (h_{l-1} h_l + h_l) + h_L P + P`` (h_0 = D). The example config (D 8,
hidden [64, 64], P 1): 576 + 4,160 + 65 = 4,801.
"""

from __future__ import annotations

import math

import keras
import numpy as np


def mlp_regressor(
    input_shape,
    output_shape,
    dtype: str = "float32",
    seed: int = 0,
    hidden=(64, 64),
    activation: str = "tanh",
) -> keras.Model:
    """Build the regressor (uncompiled).

    Args:
        input_shape: shape of one example's features (hessflow passes ``x_train.shape[1:]``).
        output_shape: shape of one target (hessflow passes ``y_train.shape[1:]``, or ``(1,)``).
        dtype: ``"float32"`` or ``"float64"``, for the input and every layer.
        seed: initializer seed; each Dense layer gets its own seed derived from it, so the same
            seed gives the same weights without touching global random state.
        hidden: widths of the hidden layers.
        activation: a Keras activation name for the hidden layers.

    Returns:
        ``keras.Model``: (N, *input_shape) -> predictions (N, *output_shape).
    """
    output_shape = tuple(int(d) for d in output_shape)
    seeds = np.random.SeedSequence(int(seed)).generate_state(len(hidden) + 1)
    inputs = keras.Input(shape=tuple(input_shape), dtype=dtype, name="features")
    x = keras.layers.Flatten(dtype=dtype, name="flatten")(inputs)
    for i, width in enumerate(hidden, 1):
        x = keras.layers.Dense(
            int(width), activation=activation,
            kernel_initializer=keras.initializers.GlorotUniform(int(seeds[i - 1] >> 1)),
            dtype=dtype, name=f"dense_{i}")(x)
    x = keras.layers.Dense(
        math.prod(output_shape), kernel_initializer=keras.initializers.GlorotUniform(int(seeds[-1] >> 1)),
        dtype=dtype, name="prediction")(x)
    outputs = keras.layers.Reshape(output_shape, dtype=dtype, name="to_target_shape")(x)
    return keras.Model(inputs, outputs, name="mlp_regressor")
