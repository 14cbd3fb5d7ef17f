"""The examples/ folder: its factories, its data, and the Hessians of its models.

Library-level (no workflow): each example's factories are imported the way a run imports them
(`hessflow.factories.import_object` on the config's references) and checked against references
computed independently: central differences of gradients, explicit Hessians by nested tapes,
the label rule written out in numpy.
"""

import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml

from hessflow.data import fixed_batches, load_digits, standardize_per_image
from hessflow.factories import DATA_ALIASES, import_object
from hessflow.hvp import HessianOperator
from hessflow.models import count_trainable
from reference import central_difference_hvp, exact_hessian

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # as a run from the checkout imports examples.<name>.<module>
    sys.path.insert(0, str(ROOT))

from examples.dropout_cnn.model import dropout_cnn  # noqa: E402
from examples.regression.data import smooth_function, target_function  # noqa: E402
from examples.regression.model import mlp_regressor  # noqa: E402
from examples.transformer.data import majority_marker, marker_majority  # noqa: E402
from examples.transformer.model import transformer_classifier  # noqa: E402

EXAMPLES = ("transformer", "regression", "dropout_cnn")
CROSS_ENTROPY = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def relative_error(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def config(name):
    return yaml.safe_load((ROOT / "examples" / name / "config.yaml").read_text())


# ------------------------------------------------------------------------------------------------
# The configs name factories that import and build the documented models
# ------------------------------------------------------------------------------------------------
# Parameter counts as the model modules' docstrings state them for the example configs.
DOCUMENTED_PARAMETERS = {"transformer": 10_276, "regression": 4_801, "dropout_cnn": 9_802}


@pytest.mark.parametrize("name", EXAMPLES)
def test_each_config_names_importable_factories_that_build_the_documented_model(name):
    run = config(name)
    assert run["run_name"] == f"example_{name}"
    data_factory = import_object(run["data"]["factory"], "data.factory", DATA_ALIASES)
    (x_train, y_train), (x_test, _) = data_factory(**run["data"]["options"], seed=run["seed"])
    model_factory = import_object(run["model"]["factory"], "model.factory")
    classification = np.issubdtype(y_train.dtype, np.integer)
    context = {"input_shape": x_train.shape[1:], "dtype": "float32", "seed": run["seed"]}
    context.update({"num_classes": int(y_train.max()) + 1} if classification else {"output_shape": y_train.shape[1:]})
    model = model_factory(**context, **run["model"]["options"])
    assert isinstance(model, keras.Model)
    assert count_trainable(model) == DOCUMENTED_PARAMETERS[name]
    outputs = model(x_test[:5] if name != "dropout_cnn" else standardize_per_image(x_test[:5]), training=False)
    assert tuple(outputs.shape) == ((5, int(y_train.max()) + 1) if classification else (5, *y_train.shape[1:]))
    loss = getattr(keras.losses, run["loss"]["name"])(**run["loss"]["options"])
    assert np.isfinite(float(keras.ops.mean(loss.call(y_train[:5], outputs))))


# ------------------------------------------------------------------------------------------------
# Data factories
# ------------------------------------------------------------------------------------------------
def test_marker_majority_has_the_documented_shapes_and_is_deterministic_for_a_seed():
    (x, y), (x_test, y_test) = marker_majority(num_train=400, num_test=100, seed=7)
    assert x.shape == (400, 16) and x.dtype == np.int32
    assert y.shape == (400,) and y.dtype == np.int64
    assert x_test.shape == (100, 16) and y_test.shape == (100,)
    assert x.min() >= 0 and x.max() <= 31
    (again, y_again), (again_test, _) = marker_majority(num_train=400, num_test=100, seed=7)
    np.testing.assert_array_equal(again, x)
    np.testing.assert_array_equal(y_again, y)
    np.testing.assert_array_equal(again_test, x_test)
    (other, _), _ = marker_majority(num_train=400, num_test=100, seed=8)
    assert np.mean(other != x) > 0.5


def test_marker_majority_labels_are_the_strict_majority_marker_and_balanced():
    (x, y), (x_test, y_test) = marker_majority(num_train=1000, num_test=200, seed=0)
    for tokens, labels in ((x, y), (x_test, y_test)):
        counts = (tokens[:, :, None] == np.arange(4)).sum(axis=1)  # (N, 4) marker counts
        winner = counts[np.arange(len(labels)), labels]
        runner_up = np.sort(counts, axis=1)[:, -2]
        assert np.all(winner > runner_up)  # strict: no ties, the label is well defined
        np.testing.assert_array_equal(majority_marker(tokens), labels)
        assert np.bincount(labels, minlength=4).max() - np.bincount(labels, minlength=4).min() <= 1
    # Not a giveaway: the winning marker occurs only 2-4 times among 16 tokens.
    assert set(np.unique(winner)) == {2, 3, 4}


def test_smooth_function_has_the_documented_shapes_noise_and_is_deterministic():
    (x, y), (x_test, y_test) = smooth_function(num_train=2000, num_test=300, noise_std=0.1, seed=3)
    assert x.shape == (2000, 8) and x.dtype == np.float32
    assert y.shape == (2000, 1) and y.dtype == np.float32
    assert x_test.shape == (300, 8) and y_test.shape == (300, 1)
    residual = y - target_function(x)
    assert np.std(residual) == pytest.approx(0.1, rel=0.05)
    assert np.var(target_function(x)) > 1.0  # the signal dominates the noise
    (again, y_again), _ = smooth_function(num_train=2000, num_test=300, noise_std=0.1, seed=3)
    np.testing.assert_array_equal(again, x)
    np.testing.assert_array_equal(y_again, y)
    (other, _), _ = smooth_function(num_train=2000, num_test=300, noise_std=0.1, seed=4)
    assert not np.array_equal(other, x)


@pytest.mark.slow
def test_the_transformer_learns_the_marker_task_well_above_chance():
    (x, y), (x_test, y_test) = marker_majority(seed=0)
    model = transformer_classifier((16,), 4, seed=0)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss=CROSS_ENTROPY)
    rng = np.random.default_rng(0)
    for _ in range(150):
        batch = rng.integers(0, len(x), 64)
        model.train_on_batch(x[batch], y[batch])
    accuracy = np.mean(np.argmax(model.predict(x_test, verbose=0), axis=1) == y_test)
    assert accuracy > 0.8  # chance is 0.25


# ------------------------------------------------------------------------------------------------
# Hessians of the example models
# ------------------------------------------------------------------------------------------------
def test_transformer_hvp_agrees_with_central_differences_of_the_gradient_in_float64():
    # LayerNormalization's statistics come from tf.nn.moments, whose stop_gradient loses a
    # second-derivative term: without hessflow.batchnorm's exact moments this is 4e-2 off.
    # float64, step 1e-5: truncation O(step² ‖∇³L‖) and round-off O(1e-16 ‖∇L‖ / step) are both
    # about 1e-10 relative to ‖Hv‖ (measured: 2e-10), so 1e-7 leaves a wide margin.
    (x, y), _ = marker_majority(num_train=64, num_test=4, seed=1)
    model = transformer_classifier((16,), 4, dtype="float64", seed=1)
    op = HessianOperator(model, fixed_batches(x, y, 32), CROSS_ENTROPY, weight_decay=1e-3, dtype="float64")
    assert op.dim == count_trainable(model) == 10_276
    v = np.random.default_rng(2).normal(size=op.dim)
    v /= np.linalg.norm(v)
    step = 1e-5
    finite_difference = central_difference_hvp(op, model, v, step)
    assert relative_error(op.matvec(v), finite_difference) < 1e-7


def test_regression_hvp_equals_the_explicit_hessian_times_v_in_float64():
    (x, y), _ = smooth_function(num_train=60, num_test=4, seed=5)
    model = mlp_regressor((8,), (1,), dtype="float64", seed=5, hidden=(16, 16))
    batches = fixed_batches(x, y, 25)  # 25, 25, 10: an uneven last batch
    mse = keras.losses.MeanSquaredError()
    op = HessianOperator(model, batches, mse, weight_decay=2e-4, dtype="float64")
    hessian = exact_hessian(model, batches, mse.call, False, weight_decay=2e-4)  # nested tapes, (433, 433)
    assert hessian.shape == (op.dim, op.dim) == (433, 433)
    rng = np.random.default_rng(6)
    for _ in range(2):
        v = rng.normal(size=op.dim)
        assert relative_error(op.matvec(v), hessian @ v) < 1e-10


def _without_dropout(model):
    """The same network (the same layer objects, hence weights) with its Dropout layers left out."""
    inputs = keras.Input(shape=model.input_shape[1:], dtype=model.inputs[0].dtype)
    x = inputs
    for layer in model.layers[1:]:
        if not isinstance(layer, keras.layers.Dropout):
            x = layer(x)
    return keras.Model(inputs, x)


def test_dropout_is_off_in_train_mode_hessian_passes_of_the_dropout_cnn():
    images, labels = load_digits()
    x, y = standardize_per_image(images[:120], dtype=np.float64), labels[:120]
    model = dropout_cnn((8, 8, 1), 10, dtype="float64", seed=2, dropout=0.5)
    assert sum(isinstance(layer, keras.layers.Dropout) for layer in model.layers) == 2
    # Dropout really is active when the model itself runs in training mode:
    assert not np.allclose(model(x, training=True), model(x, training=False))
    plain = _without_dropout(model)
    assert not any(isinstance(layer, keras.layers.Dropout) for layer in plain.layers)
    batches = fixed_batches(x, y, 50)
    settings = {"weight_decay": 1e-3, "batch_norm": "train", "dtype": "float64"}
    with_dropout = HessianOperator(model, batches, CROSS_ENTROPY, **settings)
    reference = HessianOperator(plain, batches, CROSS_ENTROPY, **settings)
    assert with_dropout.dim == reference.dim == count_trainable(model)
    v = np.random.default_rng(3).normal(size=with_dropout.dim)
    np.testing.assert_allclose(with_dropout.matvec(v), reference.matvec(v), rtol=1e-12, atol=1e-14)
    loss, gradient = with_dropout.loss_and_gradient()
    reference_loss, reference_gradient = reference.loss_and_gradient()
    assert loss == pytest.approx(reference_loss, rel=1e-13)
    np.testing.assert_allclose(gradient, reference_gradient, rtol=1e-12, atol=1e-14)
