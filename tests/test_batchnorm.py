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
