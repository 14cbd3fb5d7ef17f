"""Tests of hessflow.models: parameter counts, output shapes, dtypes, seeds, weight-decay mask."""

import math

import keras
import numpy as np
import pytest

from hessflow import models

DIGITS_SHAPE = (8, 8, 1)


@pytest.fixture(scope="module")
def resnet():
    return models.resnet32(seed=0)


def to_numpy(variable):
    """Value of a Keras variable (via its tf.Variable: Keras' own conversion warns on numpy 2)."""
    return variable.value.numpy()


def weights(model):
    return [to_numpy(v) for v in model.variables]


# --- ResNet-32 -----------------------------------------------------------------------------------
def test_resnet32_has_464154_trainable_parameters(resnet):
    assert models.count_trainable(resnet) == 464_154


def test_resnet32_parameter_count_matches_per_part_hand_count(resnet):
    conv = lambda cin, cout: 9 * cin * cout  # noqa: E731  (3x3, no bias)
    bn = lambda c: 2 * c  # noqa: E731  (gamma, beta)
    stage1 = 5 * (bn(16) + conv(16, 16) + bn(16) + conv(16, 16))
    stage2 = (bn(16) + conv(16, 32) + bn(32) + conv(32, 32)) + 4 * (2 * bn(32) + 2 * conv(32, 32))
    stage3 = (bn(32) + conv(32, 64) + bn(64) + conv(64, 64)) + 4 * (2 * bn(64) + 2 * conv(64, 64))
    total = conv(3, 16) + stage1 + stage2 + stage3 + bn(64) + (64 * 10 + 10)
    assert (stage1, stage2, stage3) == (23_360, 88_160, 351_424)
    assert models.count_trainable(resnet) == total


def test_resnet32_outputs_logits_of_shape_batch_by_classes(resnet):
    x = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype(np.float32)
    logits = resnet(x, training=False).numpy()
    assert logits.shape == (3, 10)
    assert not np.allclose(logits.sum(axis=1), 1.0)  # no softmax layer
    assert not any(isinstance(layer, keras.layers.Softmax) for layer in resnet.layers)


def test_resnet32_has_31_conv_31_batchnorm_and_one_dense_layer(resnet):
    kinds = [type(layer) for layer in resnet.layers]
    assert kinds.count(keras.layers.Conv2D) == 31
    assert kinds.count(keras.layers.BatchNormalization) == 31
    assert kinds.count(keras.layers.Dense) == 1


def input_layer_names(model, layer_name):
    inputs = model.get_layer(layer_name).input
    return [t._keras_history[0].name for t in (inputs if isinstance(inputs, list) else [inputs])]


def test_resnet32_first_unit_shortcut_takes_the_activated_input(resnet):
    assert input_layer_names(resnet, "unit_1_0_add") == ["unit_1_0_conv2", "unit_1_0_act1"]


def test_resnet32_other_units_shortcut_takes_the_unactivated_input(resnet):
    assert input_layer_names(resnet, "unit_1_1_add") == ["unit_1_1_conv2", "unit_1_0_add"]
    assert input_layer_names(resnet, "unit_3_0_shortcut_pool") == ["unit_2_4_add"]


def test_resnet32_widening_shortcut_pools_then_zero_pads_channels_evenly(resnet):
    pool = resnet.get_layer("unit_2_0_shortcut_pool")
    pad = resnet.get_layer("unit_2_0_shortcut_pad")
    assert pool.pool_size == (2, 2) and pool.strides == (2, 2) and pool.padding == "valid"
    assert (pad.before, pad.after) == (8, 8)
    x = np.arange(2 * 4 * 4 * 16, dtype=np.float32).reshape(2, 4, 4, 16)
    out = pad(x).numpy()
    np.testing.assert_array_equal(out[..., 8:24], x)
    assert np.all(out[..., :8] == 0) and np.all(out[..., 24:] == 0)


def test_resnet32_batch_norm_constants(resnet):
    for layer in resnet.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            assert layer.epsilon == 1e-3 and layer.momentum == 0.9
            assert layer.center and layer.scale


def test_resnet32_decay_mask_marks_exactly_the_kernel_entries(resnet):
    mask = models.decayed_variable_mask(resnet)
    decayed = sum(math.prod(v.shape) for v, m in zip(resnet.trainable_variables, mask) if m)
    # 464,154 minus 1,136 batch-norm channels x (gamma, beta) minus the 10 dense biases.
    assert len(mask) == len(resnet.trainable_variables)
    assert sum(mask) == 32  # 31 conv kernels + 1 dense kernel
    assert decayed == 464_154 - 2 * 1_136 - 10


def test_resnet32_float64_build_has_float64_variables_and_output():
    model = models.resnet32(input_shape=(8, 8, 3), dtype="float64")
    assert {v.dtype for v in model.variables} == {"float64"}
    assert model(np.zeros((2, 8, 8, 3))).dtype == "float64"
    assert keras.config.floatx() == "float32"  # the global default is untouched


# --- small models --------------------------------------------------------------------------------
@pytest.mark.parametrize("hidden, batch_norm, expected", [
    ((32,), False, 64 * 32 + 32 + 32 * 10 + 10),          # 2,410
    ((32,), True, 64 * 32 + 2 * 32 + 32 * 10 + 10),       # 2,442: no hidden bias, BN gamma/beta
    ((16, 8), False, 64 * 16 + 16 + 16 * 8 + 8 + 8 * 10 + 10),
])
def test_mlp_parameter_count_matches_hand_formula(hidden, batch_norm, expected):
    model = models.mlp(DIGITS_SHAPE, 10, hidden=hidden, batch_norm=batch_norm)
    assert models.count_trainable(model) == expected


@pytest.mark.parametrize("batch_norm, expected", [
    (False, (9 * 1 * 8 + 8) + (9 * 8 * 16 + 16) + (4 * 4 * 16 * 10 + 10)),  # 3,818
    (True, (9 * 1 * 8 + 2 * 8) + (9 * 8 * 16 + 2 * 16) + (4 * 4 * 16 * 10 + 10)),  # 3,842
])
def test_small_cnn_parameter_count_matches_hand_formula(batch_norm, expected):
    model = models.small_cnn(DIGITS_SHAPE, 10, batch_norm=batch_norm)
    assert models.count_trainable(model) == expected


def test_default_small_models_on_digits_allow_an_exact_hessian():
    for builder in (models.mlp, models.small_cnn):
        for batch_norm in (False, True):
            count = models.count_trainable(builder(DIGITS_SHAPE, 10, batch_norm=batch_norm))
            assert 2_000 <= count <= 6_000


@pytest.mark.parametrize("builder", [models.mlp, models.small_cnn])
def test_small_models_output_logits_shape(builder):
    model = builder((8, 8, 1), 7)
    assert model(np.zeros((5, 8, 8, 1), np.float32)).shape == (5, 7)


def test_mlp_decay_mask_marks_exactly_the_dense_kernels():
    model = models.mlp(DIGITS_SHAPE, 10, hidden=(32,), batch_norm=True)
    mask = models.decayed_variable_mask(model)
    decayed = sum(math.prod(v.shape) for v, m in zip(model.trainable_variables, mask) if m)
    assert decayed == 64 * 32 + 32 * 10  # kernels only: no bias, no gamma/beta
    assert sum(mask) == 2


def test_small_cnn_decay_mask_excludes_biases():
    model = models.small_cnn(DIGITS_SHAPE, 10)
    mask = models.decayed_variable_mask(model)
    decayed = sum(math.prod(v.shape) for v, m in zip(model.trainable_variables, mask) if m)
    assert decayed == 9 * 8 + 9 * 8 * 16 + 4 * 4 * 16 * 10


@pytest.mark.parametrize("builder", [models.mlp, models.small_cnn])
def test_float64_small_models_have_float64_variables(builder):
    model = builder(DIGITS_SHAPE, 10, batch_norm=True, dtype="float64")
    assert {v.dtype for v in model.variables} == {"float64"}
    assert model(np.zeros((2, 8, 8, 1))).dtype == "float64"


@pytest.mark.parametrize("builder", [models.mlp, models.small_cnn])
def test_same_seed_gives_identical_weights(builder):
    first = weights(builder(DIGITS_SHAPE, 10, batch_norm=True, seed=11))
    second = weights(builder(DIGITS_SHAPE, 10, batch_norm=True, seed=11))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("builder", [models.mlp, models.small_cnn])
def test_different_seeds_give_different_weights(builder):
    first = weights(builder(DIGITS_SHAPE, 10, seed=1))
    second = weights(builder(DIGITS_SHAPE, 10, seed=2))
    assert not np.array_equal(first[0], second[0])


def test_resnet32_same_seed_gives_identical_weights(resnet):
    again = models.resnet32(seed=0)
    for a, b in zip(weights(resnet), weights(again)):
        np.testing.assert_array_equal(a, b)


def test_equal_shaped_layers_get_different_initial_weights(resnet):
    conv_kernels = [to_numpy(layer.kernel) for layer in resnet.layers
                    if isinstance(layer, keras.layers.Conv2D)
                    and layer.kernel.shape == (3, 3, 16, 16)]
    assert len(conv_kernels) == 10
    assert not np.array_equal(conv_kernels[0], conv_kernels[1])


def test_resnet32_conv_init_has_paper_fan_out_std(resnet):
    kernel = to_numpy(resnet.get_layer("unit_3_1_conv1").kernel)  # 3x3x64x64
    np.testing.assert_allclose(kernel.std(), np.sqrt(2.0 / (9 * 64)), rtol=0.05)


def test_seeded_build_does_not_change_global_random_state():
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    models.mlp(DIGITS_SHAPE, 10, seed=5)
    assert np.random.rand() == expected


# --- registry and helpers ------------------------------------------------------------------------
def test_build_model_dispatches_by_name():
    model = models.build_model("mlp", input_shape=DIGITS_SHAPE, num_classes=10, hidden=(4,))
    assert models.count_trainable(model) == 64 * 4 + 4 + 4 * 10 + 10


def test_build_model_unknown_name_lists_known_models():
    with pytest.raises(ValueError) as info:
        models.build_model("vgg11")
    for name in ("resnet32", "mlp", "small_cnn"):
        assert name in str(info.value)


def test_count_trainable_ignores_batch_norm_moving_statistics():
    model = models.mlp(DIGITS_SHAPE, 10, hidden=(32,), batch_norm=True)
    total = sum(math.prod(v.shape) for v in model.variables)
    assert models.count_trainable(model) == total - 2 * 32  # moving mean and variance


# Keras' own saving converts variables with np.array(), which warns under numpy 2.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_model_with_shortcut_padding_saves_and_loads(tmp_path):
    model = models.resnet32(input_shape=(8, 8, 3), seed=3)
    path = tmp_path / "resnet.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-6, atol=1e-6)


def test_invalid_dtype_is_rejected():
    with pytest.raises(ValueError, match="dtype"):
        models.mlp(DIGITS_SHAPE, 10, dtype="float16")


def test_weight_decay_covers_the_kernels_inside_attention_layers_but_not_embeddings():
    tokens = keras.Input((5,), dtype="int32")
    embedded = keras.layers.Embedding(7, 4)(tokens)
    attended = keras.layers.MultiHeadAttention(num_heads=2, key_dim=3)(embedded, embedded)
    model = keras.Model(tokens, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(attended)))
    decayed = {v.path for v, is_decayed in zip(model.trainable_variables, models.decayed_variable_mask(model))
               if is_decayed}
    kernels = {v.path for v in model.trainable_variables if v.path.endswith("kernel")}
    assert decayed == kernels and len(kernels) == 5  # query, key, value, output projections, dense
