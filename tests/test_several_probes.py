"""Several curvature products per data pass (``probes_per_pass``), against explicit matrices."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from hessflow import kernels, models
from hessflow.data import fixed_batches
from hessflow.hvp import GGNOperator, HessianOperator
from hessflow.streaming import npy_batches
from reference import exact_hessian

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
INPUT_SHAPE = (8, 8, 1)
NUM_EXAMPLES, BATCH_SIZE = 60, 25  # batches of 25, 25 and 10


def small_model(kind, dtype="float64", seed=3):
    if kind == "mlp":
        return models.mlp(INPUT_SHAPE, 10, hidden=(8,), batch_norm=True, dtype=dtype, seed=seed)
    return models.small_cnn(INPUT_SHAPE, 10, filters=(2, 4), batch_norm=True, dtype=dtype, seed=seed)


@pytest.fixture(scope="module")
def examples():
    rng = np.random.default_rng(0)
    return rng.normal(size=(NUM_EXAMPLES, *INPUT_SHAPE)), rng.integers(0, 10, NUM_EXAMPLES)


def relative_error(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("kind,mode", [("mlp", "train"), ("cnn", "train"), ("cnn", "inference")])
def test_a_pass_of_several_hessian_products_equals_the_explicit_hessian_times_the_block(examples, kind, mode):
    model = small_model(kind)
    batches = fixed_batches(*examples, BATCH_SIZE)
    op = HessianOperator(model, batches, LOSS, weight_decay=2e-4, batch_norm=mode, dtype="float64",
                         probes_per_pass=3)
    hessian = exact_hessian(model, batches, LOSS.call, mode == "train", 2e-4)
    block = np.random.default_rng(1).normal(size=(op.dim, 3))
    assert relative_error(op.matmat(block), hessian @ block) < 1e-10


def test_columns_beyond_probes_per_pass_go_in_further_passes_a_lone_one_through_matvec(examples):
    model = small_model("mlp")
    batches = fixed_batches(*examples, BATCH_SIZE)
    op = HessianOperator(model, batches, LOSS, dtype="float64", probes_per_pass=3)
    hessian = exact_hessian(model, batches, LOSS.call, True)
    block = np.random.default_rng(2).normal(size=(op.dim, 7))  # passes of 3, 3 and 1 columns
    product = op @ block
    assert relative_error(product, hessian @ block) < 1e-10
    np.testing.assert_array_equal(product[:, 6], op.matvec(block[:, 6]))
    assert (op.num_traces["hvp"], op.num_traces["hvp_matmat"]) == (1, 1)  # passes of 3 and 3: one trace


def test_a_pass_of_several_ggn_products_equals_the_forward_mode_ggn_products(examples):
    # The several-product pass gets J v by reverse mode twice; the one-product pass by forward mode.
    model = small_model("cnn")
    batches = fixed_batches(*examples, BATCH_SIZE)
    single = GGNOperator(model, batches, LOSS, weight_decay=1e-3, dtype="float64")
    several = GGNOperator(model, batches, LOSS, weight_decay=1e-3, dtype="float64", probes_per_pass=4)
    block = np.random.default_rng(3).normal(size=(single.dim, 4))
    columns = np.stack([single.matvec(block[:, k]) for k in range(4)], axis=1)
    assert relative_error(several.matmat(block), columns) < 1e-12
    assert several.num_traces["ggn_matmat"] == 1


def test_in_float32_the_shared_pass_agrees_with_separate_products_to_rounding(examples):
    model = small_model("cnn", dtype="float32")
    batches = fixed_batches(*examples, BATCH_SIZE)
    single = HessianOperator(model, batches, LOSS)
    several = HessianOperator(model, batches, LOSS, probes_per_pass=2)
    block = np.random.default_rng(4).normal(size=(single.dim, 2))
    columns = np.stack([single.matvec(block[:, k]) for k in range(2)], axis=1)
    error = relative_error(several.matmat(block), columns)
    assert 0 < error < 1e-5  # computed anew in float32, in another order


def test_the_kernel_traces_once_for_k_tangents_and_each_row_is_its_product(examples):
    model = small_model("mlp")
    x, y = (tf.constant(a[:BATCH_SIZE]) for a in examples)
    hvp = kernels.traced_hvp_sum(model, LOSS, *kernels.batch_specs(x, y), training=True)
    several = kernels.traced_matmat_sum(kernels.make_hvp_matmat_sum, model, LOSS, *kernels.batch_specs(x, y), 3,
                                        training=True)
    tangents = np.random.default_rng(5).normal(size=(3, kernels.selected_dim(model)))
    rows = several(x, y, tf.constant(tangents)).numpy()
    assert rows.shape == (3, tangents.shape[1]) and rows.dtype == np.float64
    for r in range(3):
        np.testing.assert_allclose(rows[r], hvp(x, y, tf.constant(tangents[r])).numpy(), rtol=1e-12, atol=1e-14)


def test_a_stream_gives_the_memory_operators_several_products_bit_for_bit(examples, tmp_path):
    x, y = examples
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    model = small_model("cnn", dtype="float32")
    block = np.random.default_rng(6).normal(size=(kernels.selected_dim(model), 2))
    x32 = x.astype(np.float32)
    memory = HessianOperator(model, fixed_batches(x32, y, BATCH_SIZE), LOSS, probes_per_pass=2)
    stream = HessianOperator(model, npy_batches(tmp_path / "x.npy", tmp_path / "y.npy", BATCH_SIZE,
                                                to_inputs=lambda a: a.astype(np.float32)),
                             LOSS, data="stream", probes_per_pass=2)
    np.testing.assert_array_equal(stream.matmat(block), memory.matmat(block))


def test_over_a_strategy_the_several_products_are_the_one_device_ones(examples):
    model = small_model("mlp")
    batches = fixed_batches(*examples, BATCH_SIZE)
    one = HessianOperator(model, batches, LOSS, dtype="float64", probes_per_pass=2)
    mirrored = HessianOperator(model, batches, LOSS, dtype="float64", probes_per_pass=2,
                               strategy=tf.distribute.MirroredStrategy(["/cpu:0"]))
    block = np.random.default_rng(7).normal(size=(one.dim, 2))
    np.testing.assert_allclose(mirrored.matmat(block), one.matmat(block), rtol=1e-12, atol=1e-15)


def test_a_non_finite_product_names_its_columns(examples):
    model = small_model("mlp", dtype="float32")
    kernel = model.trainable_variables[0]
    kernel.assign(np.full(kernel.shape, np.nan, np.float32))
    op = HessianOperator(model, fixed_batches(*examples, BATCH_SIZE), LOSS, probes_per_pass=2)
    with pytest.raises(FloatingPointError, match=r"non-finite entries \(columns \[0, 1\]\)"):
        op.matmat(np.ones((op.dim, 2)))


@pytest.mark.parametrize("value", [0, -2, 1.5, True, "4"])
def test_probes_per_pass_must_be_a_positive_int(examples, value):
    with pytest.raises(ValueError, match="probes_per_pass must be an int >= 1"):
        HessianOperator(small_model("mlp", dtype="float32"), fixed_batches(*examples, BATCH_SIZE), LOSS,
                        probes_per_pass=value)
