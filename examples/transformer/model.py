"""A small transformer classifier for token sequences (a hessflow model factory).

Layout, for inputs of ``L`` token ids and model width ``d``::

    token ids (N, L) int
      -> Embedding(vocab_size, d) + learned positional embedding (L, d)
      -> depth x pre-norm block:
             x = x + MultiHeadAttention(LayerNorm(x))                 (heads, key_dim = d / heads)
             x = x + Dense(d) . GELU . Dense(ff_width) (LayerNorm(x))
      -> LayerNorm -> mean over the L positions -> Dense(num_classes)   logits (N, num_classes)

Everything is smooth (GELU, softmax attention, layer norm), so the Hessian exists everywhere.
No dropout (MultiHeadAttention's ``dropout`` stays 0) and no ``kernel_regularizer``: hessflow
applies weight decay itself, to the kernels of ``Dense`` layers and of the ``EinsumDense``
projections inside MultiHeadAttention (the embeddings and layer norms are not decayed).

Trainable parameters with V = vocab_size, L, d, F = ff_width, K classes, B = depth blocks:
``V d + L d + B (4 d² + 4 d + 4 d + 2 d F + F + d) + 2 d + d K + K``
(per block: attention 4 d² + 4 d with key_dim · heads = d, two layer norms 4 d, feed-forward
2 d F + F + d). The example config (V 32, L 16, d 32, F 64, K 4, B 1): 1,024 + 512 + 8,544 + 64 + 132 = 10,276.
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="hessflow_examples")
class PositionalEmbedding(keras.layers.Layer):
    """Adds a learned (length, width) table to (N, length, width) inputs."""

    def __init__(self, initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.initializer = keras.initializers.get(initializer)

    def build(self, input_shape):
        self.table = self.add_weight(
            name="table", shape=tuple(input_shape[1:]), initializer=self.initializer, trainable=True
        )

    def call(self, inputs):
        return inputs + keras.ops.cast(self.table, inputs.dtype)[None]

    def get_config(self):
        return {**super().get_config(), "initializer": keras.initializers.serialize(self.initializer)}


def transformer_classifier(
    input_shape,
    num_classes: int,
    dtype: str = "float32",
    seed: int = 0,
    vocab_size: int = 32,
    width: int = 32,
    heads: int = 2,
    depth: int = 1,
    ff_width: int = 64,
) -> keras.Model:
    """Build the classifier (uncompiled).

    Args:
        input_shape: ``(L,)``, the sequence length (hessflow passes ``x_train.shape[1:]``).
        num_classes: logits per example.
        dtype: ``"float32"`` or ``"float64"``, for every layer (the ids stay integers).
        seed: initializer seed. The factory calls ``keras.utils.set_random_seed(seed)`` (as
            hessflow does before calling it) and the layers use Keras's seeded default stream,
            so the same seed gives the same weights. (A fixed integer seed per initializer would
            give the equal-shaped query, key and value kernels of an attention layer equal
            values: MultiHeadAttention copies its initializer to each projection.)
        vocab_size: token ids are ``0 .. vocab_size - 1``.
        width: model width ``d`` (divisible by ``heads``).
        heads: attention heads; key_dim = width / heads.
        depth: number of transformer blocks.
        ff_width: hidden width of each block's feed-forward network.

    Returns:
        ``keras.Model``: int token ids (N, L) -> logits (N, num_classes).
    """
    if len(tuple(input_shape)) != 1:
        raise ValueError(f"input_shape must be (sequence_length,), got {tuple(input_shape)}")
    if width % heads:
        raise ValueError(f"width ({width}) must be divisible by heads ({heads})")
    keras.utils.set_random_seed(int(seed))
    (length,) = tuple(input_shape)
    tokens = keras.Input(shape=(length,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(
        vocab_size, width, embeddings_initializer="glorot_uniform", dtype=dtype, name="embedding")(tokens)
    x = PositionalEmbedding(dtype=dtype, name="positions")(x)
    for block in range(1, depth + 1):
        h = keras.layers.LayerNormalization(dtype=dtype, name=f"block{block}_norm1")(x)
        h = keras.layers.MultiHeadAttention(
            heads, key_dim=width // heads, dtype=dtype, name=f"block{block}_attention")(h, h)
        x = keras.layers.Add(dtype=dtype, name=f"block{block}_add1")([x, h])
        h = keras.layers.LayerNormalization(dtype=dtype, name=f"block{block}_norm2")(x)
        h = keras.layers.Dense(ff_width, activation="gelu", dtype=dtype, name=f"block{block}_ff1")(h)
        h = keras.layers.Dense(width, dtype=dtype, name=f"block{block}_ff2")(h)
        x = keras.layers.Add(dtype=dtype, name=f"block{block}_add2")([x, h])
    x = keras.layers.LayerNormalization(dtype=dtype, name="final_norm")(x)
    x = keras.layers.GlobalAveragePooling1D(dtype=dtype, name="mean_pool")(x)
    logits = keras.layers.Dense(num_classes, dtype=dtype, name="logits")(x)
    return keras.Model(tokens, logits, name="transformer_classifier")
