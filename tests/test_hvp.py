"""HessianOperator against explicit Hessians, finite differences and closed forms."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from hessflow import models
from hessflow.data import fixed_batches
from hessflow.hvp import HessianOperator
from reference import batch_loss_sum, exact_hessian, flat_parameters, full_gradient, kernel_mask, set_flat_parameters

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
INPUT_SHAPE = (8, 8, 1)
NUM_EXAMPLES, BATCH_SIZE = 60, 25  # batches of 25, 25 and 10: the last one is smaller


def small_model(kind, batch_norm, dtype="float64", seed=3):
    if kind == "mlp":
        return models.mlp(INPUT_SHAPE, 10, hidden=(8,), batch_norm=batch_norm, dtype=dtype, seed=seed)
    return models.small_cnn(INPUT_SHAPE, 10, filters=(2, 4), batch_norm=batch_norm, dtype=dtype, seed=seed)


def perturb_moving_statistics(model, seed=0):
    """Moving statistics away from (0, 1), so that `inference` mode differs from identity."""
    rng = np.random.default_rng(seed)
    for v in model.non_trainable_variables:
        if "moving_mean" in v.path:
            v.assign(rng.normal(0, 0.3, v.shape).astype(v.dtype))
        elif "moving_variance" in v.path:
            v.assign(rng.uniform(0.5, 2.0, v.shape).astype(v.dtype))


@pytest.fixture(scope="module")
def examples():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(NUM_EXAMPLES, *INPUT_SHAPE))
    y = rng.integers(0, 10, NUM_EXAMPLES)
    return x, y


def relative_error(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


CASES = [
    ("mlp", False, "train"),
    ("mlp", True, "train"),
    ("mlp", True, "inference"),
    ("cnn", False, "train"),
    ("cnn", True, "train"),
    ("cnn", True, "inference"),
]


@pytest.mark.parametrize("kind,batch_norm,mode", CASES)
def test_hvp_equals_explicit_hessian_times_vector_in_float64(examples, kind, batch_norm, mode):
    model = small_model(kind, batch_norm)
    perturb_moving_statistics(model)
    batches = fixed_batches(*examples, BATCH_SIZE)
    weight_decay = 2e-4
    op = HessianOperator(model, batches, LOSS, weight_decay=weight_decay, batch_norm=mode, dtype="float64")
    hessian = exact_hessian(model, batches, LOSS.call, mode == "train", weight_decay)
    rng = np.random.default_rng(1)
    for _ in range(2):
        v = rng.normal(size=op.dim)
        assert relative_error(op.matvec(v), hessian @ v) < 1e-10


@pytest.mark.parametrize("kind,batch_norm,mode", [("mlp", True, "train"), ("cnn", True, "inference")])
def test_float32_hvp_matches_explicit_hessian_to_float32_accuracy(examples, kind, batch_norm, mode):
    model64 = small_model(kind, batch_norm)
    perturb_moving_statistics(model64)
    model32 = small_model(kind, batch_norm, dtype="float32")
    model32.set_weights([w.astype(np.float32) for w in model64.get_weights()])
    batches = fixed_batches(*examples, BATCH_SIZE)
    hessian = exact_hessian(model64, batches, LOSS.call, mode == "train")
    op = HessianOperator(model32, batches, LOSS, batch_norm=mode, dtype="float32")
    v = np.random.default_rng(2).normal(size=op.dim)
    error = relative_error(op.matvec(v), hessian @ v)
    assert error < 2e-5
    assert error > 1e-12  # really computed in float32


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("mode", ["train", "inference"])
def test_hvp_agrees_with_central_difference_of_gradients(examples, kind, mode):
    # Independent of every second-order autodiff path: in train mode this is
    # what catches tf.nn.moments' stop_gradient (0.6% off without the fix).
    model = small_model(kind, True)
    perturb_moving_statistics(model)
    op = HessianOperator(model, fixed_batches(*examples, BATCH_SIZE), LOSS, weight_decay=1e-3, batch_norm=mode, dtype="float64")
    theta = flat_parameters(model)
    v = np.random.default_rng(3).normal(size=op.dim)
    v /= np.linalg.norm(v)
    step = 1e-6  # truncation error O(step²) and round-off O(1e-16/step) both well under 1e-6
    set_flat_parameters(model, theta + step * v)
    _, gradient_plus = op.loss_and_gradient()
    set_flat_parameters(model, theta - step * v)
    _, gradient_minus = op.loss_and_gradient()
    set_flat_parameters(model, theta)
    finite_difference = (gradient_plus - gradient_minus) / (2 * step)
    assert relative_error(op.matvec(v), finite_difference) < 1e-7


def test_mean_over_an_uneven_last_batch_is_the_exact_mean_over_examples(examples):
    # Without batch statistics the loss does not depend on the batching, so
    # batches of 25/25/10 must give the same operator as one batch of 60.
    model = small_model("cnn", True)
    perturb_moving_statistics(model)
    uneven = HessianOperator(model, fixed_batches(*examples, BATCH_SIZE), LOSS, batch_norm="inference", dtype="float64")
    whole = HessianOperator(model, fixed_batches(*examples, NUM_EXAMPLES), LOSS, batch_norm="inference", dtype="float64")
    assert [len(x) for x, _ in fixed_batches(*examples, BATCH_SIZE)] == [25, 25, 10]
    v = np.random.default_rng(4).normal(size=uneven.dim)
    np.testing.assert_allclose(uneven.matvec(v), whole.matvec(v), rtol=1e-12, atol=1e-14)
    loss_uneven, gradient_uneven = uneven.loss_and_gradient()
    loss_whole, gradient_whole = whole.loss_and_gradient()
    assert loss_uneven == pytest.approx(loss_whole, rel=1e-13)
    np.testing.assert_allclose(gradient_uneven, gradient_whole, rtol=1e-12, atol=1e-14)


def test_loss_and_gradient_match_reverse_mode_reference_including_weight_decay(examples):
    model = small_model("mlp", True)
    batches = fixed_batches(*examples, BATCH_SIZE)
    weight_decay = 5e-3
    op = HessianOperator(model, batches, LOSS, weight_decay=weight_decay, batch_norm="train", dtype="float64")
    loss, gradient = op.loss_and_gradient()
    theta = flat_parameters(model)
    flat = tf.constant(theta)
    data_loss = sum(float(batch_loss_sum(model, x, y, LOSS.call, True, flat)) for x, y in batches) / NUM_EXAMPLES
    decay = 0.5 * weight_decay * np.sum((kernel_mask(model) * theta) ** 2)
    assert loss == pytest.approx(data_loss + decay, rel=1e-13)
    reference = full_gradient(model, batches, LOSS.call, True, weight_decay)
    np.testing.assert_allclose(gradient, reference, rtol=1e-12, atol=1e-15)


def test_weight_decay_adds_its_coefficient_on_kernel_coordinates_only(examples):
    model = small_model("cnn", True)
    batches = fixed_batches(*examples, BATCH_SIZE)
    plain = HessianOperator(model, batches, LOSS, dtype="float64")
    decayed = HessianOperator(model, batches, LOSS, weight_decay=0.25, dtype="float64")
    v = np.random.default_rng(5).normal(size=plain.dim)
    np.testing.assert_allclose(decayed.matvec(v) - plain.matvec(v), 0.25 * kernel_mask(model) * v, atol=1e-12)


def test_train_mode_hessian_pass_leaves_moving_statistics_untouched(examples):
    model = small_model("cnn", True, dtype="float32")
    perturb_moving_statistics(model)
    before = [v.numpy().copy() for v in model.non_trainable_variables]
    op = HessianOperator(model, fixed_batches(*examples, BATCH_SIZE), LOSS, batch_norm="train")
    op.matvec(np.ones(op.dim))
    op.loss_and_gradient()
    assert len(before) > 0
    for old, variable in zip(before, model.non_trainable_variables):
        np.testing.assert_array_equal(variable.numpy(), old)


def test_train_and_inference_modes_are_different_operators(examples):
    model = small_model("mlp", True)
    perturb_moving_statistics(model)
    batches = fixed_batches(*examples, BATCH_SIZE)
    v = np.random.default_rng(6).normal(size=HessianOperator(model, batches, LOSS, dtype="float64").dim)
    train = HessianOperator(model, batches, LOSS, batch_norm="train", dtype="float64").matvec(v)
    inference = HessianOperator(model, batches, LOSS, batch_norm="inference", dtype="float64").matvec(v)
    assert relative_error(train, inference) > 1e-3


def test_hvp_and_gradient_are_traced_once_across_passes_and_a_smaller_last_batch(examples):
    model = small_model("mlp", False, dtype="float32")
    op = HessianOperator(model, fixed_batches(*examples, BATCH_SIZE), LOSS)
    for seed in range(3):
        op.matvec(np.random.default_rng(seed).normal(size=op.dim))
        op.loss_and_gradient()
    assert op.num_traces == {"hvp": 1, "gradient": 1}


def test_a_finite_tf_data_dataset_gives_the_same_operator_as_numpy_batches(examples):
    model = small_model("mlp", True)
    x, y = examples
    from_numpy = HessianOperator(model, fixed_batches(x, y, BATCH_SIZE), LOSS, dtype="float64")
    from_dataset = HessianOperator(model, tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH_SIZE), LOSS, dtype="float64")
    v = np.random.default_rng(7).normal(size=from_numpy.dim)
    np.testing.assert_array_equal(from_dataset.matvec(v), from_numpy.matvec(v))
    assert from_dataset.num_examples == NUM_EXAMPLES


def test_dim_is_the_trainable_parameter_count(examples):
    model = small_model("cnn", True)
    op = HessianOperator(model, fixed_batches(*examples, BATCH_SIZE), LOSS, dtype="float64")
    assert op.dim == sum(int(np.prod(v.shape)) for v in model.trainable_variables)


def test_dtype_that_differs_from_the_model_is_refused_with_the_fix(examples):
    model = small_model("mlp", False, dtype="float32")
    with pytest.raises(ValueError, match="build the model with dtype='float64'"):
        HessianOperator(model, fixed_batches(*examples, BATCH_SIZE), LOSS, dtype="float64")


def test_non_finite_weights_raise_a_clear_error_instead_of_returning_nan(examples):
    model = small_model("mlp", False, dtype="float32")
    kernel = model.trainable_variables[0]
    kernel.assign(np.full(kernel.shape, np.nan, np.float32))
    op = HessianOperator(model, fixed_batches(*examples, BATCH_SIZE), LOSS)
    with pytest.raises(FloatingPointError, match="non-finite"):
        op.matvec(np.ones(op.dim))
    with pytest.raises(FloatingPointError, match="not finite"):
        op.loss_and_gradient()


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"batch_norm": "eval"}, "batch_norm must be one of"),
        ({"dtype": "float16"}, "dtype must be one of"),
        ({"weight_decay": -1.0}, "weight_decay must be"),
    ],
)
def test_invalid_arguments_are_refused_by_name(examples, kwargs, message):
    model = small_model("mlp", False, dtype="float32")
    with pytest.raises(ValueError, match=message):
        HessianOperator(model, fixed_batches(*examples, BATCH_SIZE), LOSS, **kwargs)


def test_vector_of_the_wrong_length_is_refused(examples):
    model = small_model("mlp", False, dtype="float32")
    op = HessianOperator(model, fixed_batches(*examples, BATCH_SIZE), LOSS)
    with pytest.raises(ValueError, match=rf"acts on \({op.dim},\)"):
        op.matvec(np.ones(op.dim + 1))
