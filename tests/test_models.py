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


# --- VGG of the paper (google/spectral-density experiments/vgg_model.py) --------------------------
DEMO_VGG = dict(widths=(8, "P", 16, "P", 32, "P"), dense=32)  # digits: 8 -> 4 -> 2 -> 1


@pytest.fixture(scope="module")
def paper_vgg():
    """The paper's two VGGs on CIFAR-10 inputs: batch norm on (the default) and off."""
    return {True: models.vgg(seed=0), False: models.vgg(batch_norm=False, seed=0)}


def vgg_hand_count(widths, channels, spatial, dense, classes, batch_norm, conv_bias=True):
    """Trainable parameters of vgg() by independent arithmetic: walk the widths list."""
    total, pools = 0, 0
    for w in widths:
        if w == "P":
            pools += 1
            continue
        total += 3 * 3 * channels * w + (w if conv_bias else 0) + (2 * w if batch_norm else 0)
        channels = w
    side = spatial // 2 ** pools
    return total + (side * side * channels * dense + dense) + (dense * classes + classes)


@pytest.mark.parametrize("batch_norm, expected", [(True, 9_359_882), (False, 9_354_378)])
def test_vgg_paper_parameter_count_matches_hand_count(paper_vgg, batch_norm, expected):
    conv_kernels = 9 * (3 * 64 + 64 * 128 + 128 * 256 + 256 * 256 + 256 * 512 + 3 * 512 * 512)
    conv_biases = 64 + 128 + 256 + 256 + 4 * 512
    bn = 2 * conv_biases if batch_norm else 0  # gamma, beta per conv channel
    fc_1 = 1 * 1 * 512 * 256 + 256  # five pools: 32 -> 1
    logits = 256 * 10 + 10
    assert (conv_kernels, conv_biases, fc_1, logits) == (9_217_728, 2_752, 131_328, 2_570)
    assert conv_kernels + conv_biases + bn + fc_1 + logits == expected
    assert vgg_hand_count(models.VGG_WIDTHS, 3, 32, 256, 10, batch_norm) == expected
    assert models.count_trainable(paper_vgg[batch_norm]) == expected
    assert expected == (models.VGG_NUM_PARAMS if batch_norm else models.VGG_NUM_PARAMS_NO_BN)


def test_vgg_defaults_are_the_paper_architecture():
    assert models.VGG_WIDTHS == (64, "P", 128, "P", 256, 256, "P", 512, 512, "P", 512, 512, "P")
    assert (models.VGG_DENSE, models.VGG_DROPOUT) == (256, 0.5)
    assert models.MODEL_BUILDERS["vgg"] is models.vgg


def test_vgg_outputs_logits_of_shape_batch_by_classes(paper_vgg):
    x = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype(np.float32)
    for model in paper_vgg.values():
        logits = model(x, training=False).numpy()
        assert logits.shape == (3, 10)
        assert not np.allclose(logits.sum(axis=1), 1.0)  # no softmax layer


def test_vgg_layers_follow_the_paper_code(paper_vgg):
    model = paper_vgg[True]
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [64, 128, 256, 256, 512, 512, 512, 512]
    for conv in convs:  # tf.layers.conv2d(net, f, [3, 3], [1, 1], padding='same'), bias kept
        assert conv.kernel_size == (3, 3) and conv.strides == (1, 1) and conv.padding == "same"
        assert conv.use_bias and conv.activation is keras.activations.linear
    pools = [layer for layer in model.layers if isinstance(layer, keras.layers.MaxPooling2D)]
    assert len(pools) == 5
    for pool in pools:  # tf.layers.max_pooling2d(net, [2, 2], 2, padding='valid')
        assert pool.pool_size == (2, 2) and pool.strides == (2, 2) and pool.padding == "valid"
    fc_1, dropout, logits = (model.get_layer(n) for n in ("fc_1", "dropout", "logits"))
    assert fc_1.units == 256 and fc_1.activation is keras.activations.relu
    assert isinstance(dropout, keras.layers.Dropout) and dropout.rate == 0.5
    assert input_layer_names(model, "dropout") == ["fc_1"]  # dropout sits before the last dense
    assert input_layer_names(model, "logits") == ["dropout"]
    assert logits.units == 10 and logits.activation is keras.activations.linear
    assert [type(layer) for layer in model.layers].count(keras.layers.Dense) == 2


def test_vgg_batch_norm_sits_between_each_conv_and_its_relu(paper_vgg):
    with_bn, without_bn = paper_vgg[True], paper_vgg[False]
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in without_bn.layers)
    for i in range(1, 9):
        assert input_layer_names(with_bn, f"bn_{i}") == [f"conv_{i}"]
        assert input_layer_names(with_bn, f"relu_{i}") == [f"bn_{i}"]
        assert input_layer_names(without_bn, f"relu_{i}") == [f"conv_{i}"]
        bn = with_bn.get_layer(f"bn_{i}")
        # tf.layers.batch_normalization's defaults (the paper's ResNet uses momentum 0.9).
        assert bn.epsilon == 1e-3 and bn.momentum == 0.99 and bn.center and bn.scale
    bns = [layer for layer in with_bn.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == 8


def test_vgg_init_is_glorot_uniform_with_zero_biases(paper_vgg):
    model = paper_vgg[False]
    kernel = to_numpy(model.get_layer("conv_5").kernel)  # 3x3x256x512
    limit = np.sqrt(6.0 / (9 * 256 + 9 * 512))
    assert np.abs(kernel).max() <= limit
    np.testing.assert_allclose(kernel.std(), limit / np.sqrt(3.0), rtol=0.02)
    for name in ("conv_5", "fc_1", "logits"):
        assert not np.any(to_numpy(model.get_layer(name).bias))


def test_vgg_decay_mask_marks_the_conv_and_dense_kernels(paper_vgg):
    model = paper_vgg[True]
    mask = models.decayed_variable_mask(model)
    decayed = sum(math.prod(v.shape) for v, m in zip(model.trainable_variables, mask) if m)
    assert sum(mask) == 8 + 2
    assert decayed == 9_217_728 + 512 * 256 + 256 * 10


@pytest.mark.parametrize("batch_norm, expected", [(False, 7_274), (True, 7_386)])
def test_vgg_demo_variant_builds_on_digits_with_its_hand_count(batch_norm, expected):
    model = models.vgg(DIGITS_SHAPE, 10, batch_norm=batch_norm, **DEMO_VGG)
    # conv 9 * (1*8 + 8*16 + 16*32) = 5,832 + biases 56 (+ BN 112), fc_1 32*32 + 32, logits 330
    assert expected == 5_832 + 56 + (112 if batch_norm else 0) + 1_056 + 330
    assert vgg_hand_count(DEMO_VGG["widths"], 1, 8, 32, 10, batch_norm) == expected
    assert models.count_trainable(model) == expected
    assert model(np.zeros((5, 8, 8, 1), np.float32)).shape == (5, 10)
    assert model.get_layer("pool_3").output.shape == (None, 1, 1, 32)


def test_vgg_without_conv_bias_drops_one_parameter_per_conv_channel():
    model = models.vgg(DIGITS_SHAPE, 10, conv_bias=False, **DEMO_VGG)
    assert models.count_trainable(model) == 7_386 - (8 + 16 + 32)
    assert vgg_hand_count(DEMO_VGG["widths"], 1, 8, 32, 10, True, conv_bias=False) == 7_386 - 56


def test_vgg_dropout_is_off_with_training_false_and_on_with_training_true():
    model = models.vgg(DIGITS_SHAPE, 10, batch_norm=False, **DEMO_VGG)
    x = np.random.default_rng(1).normal(size=(6, 8, 8, 1)).astype(np.float32)
    np.testing.assert_array_equal(model(x, training=False).numpy(), model(x, training=False).numpy())
    # Training mode: a fresh mask on each call (without batch norm, dropout is the only difference).
    assert not np.allclose(model(x, training=True).numpy(), model(x, training=True).numpy())


def test_vgg_weights_do_not_depend_on_dropout():
    with_dropout = models.vgg(DIGITS_SHAPE, 10, dropout=0.5, seed=4, **DEMO_VGG)
    without = models.vgg(DIGITS_SHAPE, 10, dropout=0.0, seed=4, **DEMO_VGG)
    assert not any(isinstance(layer, keras.layers.Dropout) for layer in without.layers)
    for a, b in zip(with_dropout.trainable_variables, without.trainable_variables):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    x = np.random.default_rng(2).normal(size=(4, 8, 8, 1)).astype(np.float32)
    np.testing.assert_array_equal(with_dropout(x, training=False).numpy(), without(x, training=False).numpy())


def _digit_batches(n=64, batch=32):
    from hessflow import data
    (x, y), _ = data.digits(test_fraction=0.2, seed=0)
    x = data.standardize_per_image(x[:n])
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


@pytest.mark.parametrize("batch_norm", ["train", "inference"])
def test_vgg_hessian_pass_runs_dropout_as_the_identity(batch_norm):
    """hessflow.noise switches dropout off in every curvature pass, whatever the batch-norm mode:
    the Hessian of the VGG with dropout is that of the same weights without the layer, and two
    products with the same vector agree bit for bit (no fresh or frozen mask)."""
    from hessflow.hvp import HessianOperator
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    batches = _digit_batches()
    with_dropout = models.vgg(DIGITS_SHAPE, 10, dropout=0.5, seed=3, **DEMO_VGG)
    without = models.vgg(DIGITS_SHAPE, 10, dropout=0.0, seed=3, **DEMO_VGG)
    op = HessianOperator(with_dropout, batches, loss, 5e-5, batch_norm=batch_norm)
    reference = HessianOperator(without, batches, loss, 5e-5, batch_norm=batch_norm)
    v = np.random.default_rng(0).normal(size=op.shape[0])
    first, second = op @ v, op @ v
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, reference @ v, rtol=1e-6, atol=1e-6 * np.abs(first).max())


def test_vgg_conv_biases_before_batch_norm_are_flat_directions_of_the_train_mode_hessian():
    from hessflow.hvp import HessianOperator
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model = models.vgg(DIGITS_SHAPE, 10, seed=3, **DEMO_VGG)
    op = HessianOperator(model, _digit_batches(), loss, 5e-5, batch_norm="train")
    rng = np.random.default_rng(5)
    v = np.concatenate([rng.normal(size=math.prod(var.shape)) * (var.path.startswith("conv_")
                                                                 and var.path.endswith("/bias"))
                        for var in model.trainable_variables])
    assert np.count_nonzero(v) == 8 + 16 + 32
    generic = np.linalg.norm(op @ rng.normal(size=v.size))
    assert np.linalg.norm(op @ v) < 1e-4 * generic * np.linalg.norm(v) / np.sqrt(v.size)


def test_vgg_float64_build_has_float64_weights_and_output():
    model = models.vgg(DIGITS_SHAPE, 10, dtype="float64", **DEMO_VGG)
    assert {v.dtype for v in model.trainable_variables} == {"float64"}
    assert {v.dtype for v in model.non_trainable_variables if "seed_generator" not in v.path} == {"float64"}
    assert model(np.zeros((2, 8, 8, 1))).dtype == "float64"


def test_vgg_same_seed_same_weights_different_seed_different_weights():
    first = weights(models.vgg(DIGITS_SHAPE, 10, seed=11, **DEMO_VGG))
    again = weights(models.vgg(DIGITS_SHAPE, 10, seed=11, **DEMO_VGG))
    other = weights(models.vgg(DIGITS_SHAPE, 10, seed=12, **DEMO_VGG))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])


def test_build_model_dispatches_vgg_by_name():
    model = models.build_model("vgg", input_shape=DIGITS_SHAPE, num_classes=10, batch_norm=False, **DEMO_VGG)
    assert models.count_trainable(model) == 7_274


@pytest.mark.parametrize("options, match", [
    (dict(widths=(8, "P", 16, "P", 32, "P", 64, "P")), "4 2x2 max pools do not fit 8x8"),
    (dict(widths=(8, "M", 16)), "widths entries"),
    (dict(widths=("P",)), "at least one convolution"),
    (dict(widths=(8, "P"), dropout=1.0), "dropout"),
    (dict(widths=(8, "P"), dense=0), "dense"),
])
def test_vgg_invalid_options_are_refused(options, match):
    with pytest.raises(ValueError, match=match):
        models.vgg(DIGITS_SHAPE, 10, **options)
