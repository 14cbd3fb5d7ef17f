"""A small CNN with Dropout (a hessflow model factory), for 8x8 digits or other small images.

Layout: (N, H, W, C) standardized images -> [3x3 conv ('same', stride s_l) -> tanh] per layer ->
flatten -> Dropout(rate) -> Dense(dense, tanh) -> Dropout(rate) -> Dense(num_classes) logits.

Dropout is active in training only. The Hessian hessflow computes is that of the deterministic
objective: dropout is off in every Hessian pass, whatever ``hessian.batch_norm`` says, so the
spectrum is that of the same network without its Dropout layers (a test checks exactly this).
With ``dropout: 0`` the Dropout layers are left out altogether.

Trainable parameters with C_0 input channels, filters f_1..f_L, final map H_L x W_L
(H_l = ceil(H_{l-1} / s_l)), dense width U, K classes:
``sum_l (9 C_{l-1} f_l + f_l) + H_L W_L f_L U + U + U K + K``. Digits (8, 8, 1), filters [8, 16],
strides [1, 2], dense 32, 10 classes: 80 + 1,168 + 8,224 + 330 = 9,802.
"""

from __future__ import annotations

import keras
import numpy as np


def dropout_cnn(
    input_shape,
    num_classes: int,
    dtype: str = "float32",
    seed: int = 0,
    filters=(8, 16),
    strides=(1, 2),
    dense: int = 32,
    dropout: float = 0.3,
) -> keras.Model:
    """Build the CNN (uncompiled).

    Args:
        input_shape: (H, W, C) of one image (hessflow passes ``x_train.shape[1:]``).
        num_classes: logits per example.
        dtype: ``"float32"`` or ``"float64"``, for the input and every layer.
        seed: seeds every initializer and the dropout masks (each its own seed derived from it),
            so the same seed gives the same weights without touching global random state.
        filters, strides: per convolution layer.
        dense: width of the hidden dense layer.
        dropout: dropout rate in [0, 1); 0 leaves the Dropout layers out.

    Returns:
        ``keras.Model``: (N, H, W, C) -> logits (N, num_classes).
    """
    if len(filters) != len(strides):
        raise ValueError(f"filters and strides must have the same length, got {filters} and {strides}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    # Initializer seeds first, dropout seeds after them: the weights do not depend on the rate.
    state = [int(s >> 1) for s in np.random.SeedSequence(int(seed)).generate_state(len(filters) + 4)]
    kernel_seeds, dropout_seeds = iter(state[: len(filters) + 2]), iter(state[len(filters) + 2 :])

    def glorot():
        return keras.initializers.GlorotUniform(next(kernel_seeds))

    def maybe_dropout(x, name):
        if dropout == 0.0:
            return x
        return keras.layers.Dropout(dropout, seed=next(dropout_seeds), dtype=dtype, name=name)(x)

    inputs = keras.Input(shape=tuple(input_shape), dtype=dtype, name="images")
    x = inputs
    for i, (width, stride) in enumerate(zip(filters, strides), 1):
        x = keras.layers.Conv2D(
            int(width), 3, strides=int(stride), padding="same", activation="tanh",
            kernel_initializer=glorot(), dtype=dtype, name=f"conv_{i}")(x)
    x = keras.layers.Flatten(dtype=dtype, name="flatten")(x)
    x = maybe_dropout(x, "dropout_1")
    x = keras.layers.Dense(int(dense), activation="tanh", kernel_initializer=glorot(), dtype=dtype, name="dense")(x)
    x = maybe_dropout(x, "dropout_2")
    logits = keras.layers.Dense(num_classes, kernel_initializer=glorot(), dtype=dtype, name="logits")(x)
    return keras.Model(inputs, logits, name="dropout_cnn")
