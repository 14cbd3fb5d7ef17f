"""Twice-differentiable batch statistics: same values as Keras, exact curvature."""

import keras
import numpy as np
import tensorflow as tf

from hessflow import models
from hessflow.batchnorm import batch_norm_layers, exact_batch_statistics


def test_batch_norm_layers_are_found_in_the_resnet():
    assert len(batch_norm_layers(models.resnet32())) == 31


def test_exact_statistics_give_the_same_outputs_as_keras_in_train_mode():
    model = models.small_cnn(batch_norm=True, dtype="float64", seed=1)
    x = tf.constant(np.random.default_rng(0).normal(size=(20, 8, 8, 1)))
    params = [v.value for v in model.trainable_variables]
    state = [v.value for v in model.non_trainable_variables]
    keras_logits, keras_state = model.stateless_call(params, state, x, training=True)
    with exact_batch_statistics(model):
        exact_logits, exact_state = model.stateless_call(params, state, x, training=True)
    np.testing.assert_allclose(exact_logits, keras_logits, rtol=1e-12, atol=1e-12)
    for a, b in zip(exact_state, keras_state):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_variance_curvature_matches_the_closed_form():
    # var(x) = mean((x - mean x)^2) has Hessian (2/n)(I - 11ᵀ/n): the mean term
    # is what tf.nn.moments' stop_gradient drops.
    n = 6
    layer = keras.layers.BatchNormalization(dtype="float64", center=False, scale=False)
    model = keras.Sequential([keras.Input((1,), dtype="float64"), layer])
    x = tf.constant(np.random.default_rng(1).normal(size=(n, 1)))
    with exact_batch_statistics(model):
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                _, variance = layer._moments(x, None)
                variance = tf.reduce_sum(variance)
            gradient = inner.gradient(variance, x)
        hessian = tf.reshape(outer.jacobian(gradient, x), (n, n)).numpy()
    np.testing.assert_allclose(hessian, (2 / n) * (np.eye(n) - np.ones((n, n)) / n), atol=1e-14)


def test_layers_get_their_own_moments_back_after_the_block():
    model = models.mlp(batch_norm=True)
    (layer,) = batch_norm_layers(model)
    with exact_batch_statistics(model):
        assert "_moments" in vars(layer)
    assert "_moments" not in vars(layer)


def test_batch_norm_held_inside_a_custom_layer_is_found():
    class Block(keras.layers.Layer):  # a user's block: its batch norm is not in model.layers
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense = keras.layers.Dense(3)
            self.norm = keras.layers.BatchNormalization()

        def call(self, x, training=False):
            return self.norm(self.dense(x), training=training)

    block = Block()
    model = keras.Sequential([keras.Input((4,)), block, keras.layers.Dense(2)])
    assert batch_norm_layers(model) == [block.norm]


# -- float32 where batch norm is sharp ----------------------------------------------------------
# benchmarks/float32_batchnorm.py: at init, ResNet-32's float32 HVP is 5e-3 from float64 because 26
# leaky-ReLU units land on the other side of their kink; in the float32 pass's own activation region
# the float64 HVP agrees with it to 4e-6. The two tests below are that finding and the statistics'
# own ill-conditioned case, on models small enough for a second each.
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
FLOAT32_EPS = 2.0**-23


class RegionLeakyReLU(keras.layers.Layer):
    """Leaky ReLU with each unit's linear piece fixed (one batch): slope 1 where ``positive``."""

    def __init__(self, positive, slope, **kwargs):
        super().__init__(**kwargs)
        self.positive = np.asarray(positive, bool)
        self.slope = float(slope)

    def call(self, z):
        return z * tf.where(self.positive, tf.ones((), z.dtype), tf.constant(self.slope, z.dtype))


def dense_bn_model(dtype, activation, num_features=8, width=16, num_classes=3, seed=0):
    """Dense (no bias) -> batch norm -> ``activation`` layer -> dense logits: 211 parameters."""
    inputs = keras.Input((num_features,), dtype=dtype)
    h = keras.layers.Dense(width, use_bias=False, dtype=dtype,
                           kernel_initializer=keras.initializers.GlorotUniform(seed))(inputs)
    h = keras.layers.BatchNormalization(epsilon=1e-3, dtype=dtype, name="bn")(h)
    h = activation(h)
    logits = keras.layers.Dense(num_classes, dtype=dtype,
                                kernel_initializer=keras.initializers.GlorotUniform(seed + 1))(h)
    return keras.Model(inputs, logits)


def float32_and_float64_gaps(model32, models64, x, y):
    """[(gradient gap, HVP gap)] of ``model32`` against each float64 model: relative norms, one
    batch, one fixed v."""
    from hessflow.hvp import HessianOperator

    def gap(a, b):
        return np.linalg.norm(a - b) / np.linalg.norm(b)

    op32 = HessianOperator(model32, [(x, y)], LOSS, dtype="float32")
    v = np.random.default_rng(1).standard_normal(op32.dim)
    gradient32, hvp32 = op32.loss_and_gradient()[1], op32.matvec(v)
    gaps = []
    for model64 in models64:
        op64 = HessianOperator(model64, [(x.astype(np.float64), y)], LOSS, dtype="float64")
        gaps.append((gap(gradient32, op64.loss_and_gradient()[1]), gap(hvp32, op64.matvec(v))))
    return gaps


def test_float32_hvp_at_batch_norm_kinks_is_the_float64_hvp_of_the_float32_activation_region():
    # The 4th example is the batch mean, so every unit of it normalizes to 0 (beta = 0 at init):
    # exactly on the leaky ReLU's kink, where rounding alone picks the linear piece.
    x = np.random.default_rng(0).standard_normal((3, 8))
    x = np.concatenate([x, x.mean(axis=0, keepdims=True)]).astype(np.float32)
    y = np.array([0, 1, 2, 0])
    model32 = dense_bn_model("float32", keras.layers.LeakyReLU(0.1, dtype="float32"))
    model64 = dense_bn_model("float64", keras.layers.LeakyReLU(0.1, dtype="float64"))
    model64.set_weights([w.astype(np.float64) for w in model32.get_weights()])

    def pre_activations(model, inputs):
        probe = keras.Model(model.input, model.get_layer("bn").output)
        with exact_batch_statistics(model):
            return probe(inputs, training=True).numpy()

    positive32 = pre_activations(model32, x) > 0
    flipped = int(np.sum(positive32 != (pre_activations(model64, x.astype(np.float64)) > 0)))
    region64 = dense_bn_model("float64", RegionLeakyReLU(positive32, 0.1, dtype="float64"))
    region64.set_weights(model64.get_weights())

    (gradient_gap, region_gap), (_, plain_gap) = float32_and_float64_gaps(model32, [region64, model64], x, y)
    floor = max(gradient_gap, FLOAT32_EPS)  # what float32 costs the gradient of the same function
    assert flipped > 0  # the construction does put units across the kink
    assert region_gap < 10 * floor  # same piece: the HVP is as accurate as the gradient (6e-7 here)
    assert plain_gap > 1000 * floor  # other piece: a different Hessian (2e-2 here), not float32 error


def test_float32_hvp_where_batch_norm_statistics_are_ill_conditioned_is_as_accurate_as_the_gradient():
    # Inputs 1000 ± 1: each channel's mean is 1000 times its spread, so x - mean cancels 3 digits.
    # The two-pass moments lose what float32 rounding of the mean costs (1e3 · 6e-8 ≈ 6e-5); a
    # one-pass E[x²] - E[x]² would lose 1e6 · 6e-8 of the variance (gaps 4e-2 and 1e-1 measured).
    rng = np.random.default_rng(0)
    x = (1000 + rng.standard_normal((32, 8))).astype(np.float32)
    y = rng.integers(0, 3, 32)
    model32 = dense_bn_model("float32", keras.layers.Activation("tanh", dtype="float32"))
    model64 = dense_bn_model("float64", keras.layers.Activation("tanh", dtype="float64"))
    model64.set_weights([w.astype(np.float64) for w in model32.get_weights()])

    ((gradient_gap, hvp_gap),) = float32_and_float64_gaps(model32, [model64], x, y)
    assert hvp_gap < 10 * max(gradient_gap, FLOAT32_EPS)  # 1.0e-4 against 7e-5 measured
    assert hvp_gap < 1e-3
