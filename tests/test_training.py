"""Tests of hessflow.training: the training loop, checkpoints, evaluation.

References are computed independently here: cross-entropy and accuracy with numpy from logits,
the weight-decay term with numpy from the kernels (found by variable name, not by
`decayed_variable_mask`), one SGD step's update from a separate GradientTape with Keras's own loss
object, and the learning-rate schedule in closed form.
"""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from hessflow import data, models, training


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    """((train_images, train_labels), (test_images, test_labels)) of the digits, raw uint8."""
    images, labels = data.load_digits()
    return data.train_test_split(images, labels, test_fraction=0.25, seed=0)


def weight_values(model):
    return [np.array(v.numpy()) for v in model.weights]


def assert_weights_equal(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_array_equal(a, e)


def checkpoint_namer(folder):
    return lambda step: folder / f"step_{step}.weights.h5"


def numpy_cross_entropy(logits, labels):
    """Per-example softmax cross-entropy in float64 from (N, K) logits and (N,) labels."""
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -log_probs[np.arange(len(labels)), labels]


def quick_train(model, images, labels, **kwargs):
    settings = dict(num_steps=10, batch_size=64, learning_rate=0.1, log=None)
    settings.update(kwargs)
    return training.train(model, images, labels, **settings)


# ------------------------------------------------------------------------------------------------
# training does its job
# ------------------------------------------------------------------------------------------------
def test_training_on_digits_lowers_loss_and_beats_chance(digits):
    (x_train, y_train), (x_test, y_test) = digits
    model = models.small_cnn(seed=0)
    before = training.evaluate(model, x_train, y_train, batch_size=256)

    history = training.train(model, x_train, y_train, num_steps=100, batch_size=64,
                             learning_rate=0.1, log_every=20, log=None)

    after = training.evaluate(model, x_train, y_train, batch_size=256)
    test = training.evaluate(model, x_test, y_test, batch_size=256)
    assert after["loss"] < 0.5 * before["loss"]
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    assert test["accuracy"] > 0.5  # chance is 0.1
    assert test["num_examples"] == len(y_test)


def test_history_has_a_row_every_log_every_steps_and_at_the_last(digits):
    (x_train, y_train), _ = digits
    history = quick_train(models.mlp(seed=0), x_train, y_train, num_steps=10, log_every=4)
    assert list(history.columns) == list(training.HISTORY_COLUMNS)
    assert history["step"].tolist() == [4, 8, 10]


def test_history_rows_are_means_over_the_updates_since_the_previous_row(digits):
    (x_train, y_train), _ = digits
    every_step = quick_train(models.mlp(seed=0), x_train, y_train, num_steps=6, log_every=1)
    grouped = quick_train(models.mlp(seed=0), x_train, y_train, num_steps=6, log_every=3)
    for column in ("loss", "data_loss", "accuracy"):
        expected = every_step[column].to_numpy().reshape(2, 3).mean(axis=1)
        np.testing.assert_allclose(grouped[column].to_numpy(), expected, rtol=1e-12)


def test_progress_lines_report_step_elapsed_and_time_left(digits):
    (x_train, y_train), _ = digits
    lines = []
    quick_train(models.mlp(seed=0), x_train, y_train, num_steps=6, log_every=3, log=lines.append)
    assert len(lines) == 2
    assert lines[0].startswith("step 3/6")
    assert all("loss" in line and "elapsed" in line and "estimated time left" in line
               for line in lines)


# ------------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------------
def test_checkpoints_exist_for_exactly_the_configured_steps_and_no_temporaries(digits, tmp_path):
    (x_train, y_train), _ = digits
    quick_train(models.mlp(seed=0), x_train, y_train, num_steps=7,
                checkpoint_steps=[0, 3, 7], checkpoint_path=checkpoint_namer(tmp_path))
    names = sorted(p.name for p in tmp_path.iterdir())  # hidden temporaries would show here
    assert names == ["step_0.weights.h5", "step_3.weights.h5", "step_7.weights.h5"]


def test_step_zero_checkpoint_is_initial_weights_and_last_is_final(digits, tmp_path):
    (x_train, y_train), _ = digits
    model = models.small_cnn(batch_norm=True, seed=0)  # moving statistics are saved too
    initial = weight_values(model)
    quick_train(model, x_train, y_train, num_steps=5, checkpoint_steps=[0, 5],
                checkpoint_path=checkpoint_namer(tmp_path))
    final = weight_values(model)

    reloaded = models.small_cnn(batch_norm=True, seed=1)
    training.load_checkpoint(reloaded, tmp_path / "step_0.weights.h5")
    assert_weights_equal(weight_values(reloaded), initial)
    training.load_checkpoint(reloaded, tmp_path / "step_5.weights.h5")
    assert_weights_equal(weight_values(reloaded), final)
    assert not all(np.array_equal(a, b) for a, b in zip(initial, final))


def test_checkpoint_at_step_s_holds_the_weights_after_s_updates(digits, tmp_path):
    (x_train, y_train), _ = digits
    quick_train(models.mlp(seed=0), x_train, y_train, num_steps=8, checkpoint_steps=[3],
                checkpoint_path=checkpoint_namer(tmp_path))
    three_updates = models.mlp(seed=0)
    quick_train(three_updates, x_train, y_train, num_steps=3)

    reloaded = models.mlp(seed=5)
    training.load_checkpoint(reloaded, tmp_path / "step_3.weights.h5")
    assert_weights_equal(weight_values(reloaded), weight_values(three_updates))


@pytest.mark.parametrize("steps, bad", [([0, 11], "11"), ([-1, 2], "-1"), ([3, 2], "2"),
                                        ([2, 2], "2"), ([1.5], "1.5")])
def test_invalid_checkpoint_steps_raise_naming_the_value(digits, tmp_path, steps, bad):
    (x_train, y_train), _ = digits
    with pytest.raises(ValueError, match=re.escape(bad)):
        quick_train(models.mlp(seed=0), x_train, y_train, num_steps=10, checkpoint_steps=steps,
                    checkpoint_path=checkpoint_namer(tmp_path))
    assert list(tmp_path.iterdir()) == []  # rejected before anything was written


# ------------------------------------------------------------------------------------------------
# determinism
# ------------------------------------------------------------------------------------------------
def test_same_seed_gives_identical_weights_and_another_seed_different(digits):
    (x_train, y_train), _ = digits

    def trained(seed):
        model = models.small_cnn(batch_norm=True, seed=0)
        quick_train(model, x_train, y_train, num_steps=8, augment=True, seed=seed)
        return weight_values(model)

    first, again, other = trained(seed=0), trained(seed=0), trained(seed=1)
    assert_weights_equal(again, first)
    assert not all(np.array_equal(a, b) for a, b in zip(other, first))


# ------------------------------------------------------------------------------------------------
# learning-rate schedule
# ------------------------------------------------------------------------------------------------
def closed_form_rate(update, initial, boundaries, factor):
    """Rate of 0-based update t: initial * factor ** (number of boundaries b with t > b)."""
    return initial * factor ** sum(update > b for b in boundaries)


def test_history_learning_rate_is_piecewise_constant_with_decay_factor(digits):
    (x_train, y_train), _ = digits
    history = quick_train(models.mlp(seed=0), x_train, y_train, num_steps=12, log_every=1,
                          learning_rate=0.05, lr_boundaries=[4, 8], lr_decay_factor=0.1)
    # Row `step` s reports update s - 1 (the one that produced the weights of step s).
    expected = [closed_form_rate(s - 1, 0.05, [4, 8], 0.1) for s in history["step"]]
    np.testing.assert_allclose(history["learning_rate"], expected, rtol=1e-6)
    assert history["learning_rate"].iloc[4] == pytest.approx(0.05)  # update 4: still before the cut
    assert history["learning_rate"].iloc[5] == pytest.approx(0.005)


def test_history_learning_rate_follows_explicit_values(digits):
    (x_train, y_train), _ = digits
    history = quick_train(models.mlp(seed=0), x_train, y_train, num_steps=6, log_every=1,
                          learning_rate=0.05, lr_boundaries=[2], lr_values=[0.05, 0.02])
    np.testing.assert_allclose(history["learning_rate"], [0.05] * 3 + [0.02] * 3, rtol=1e-6)


def test_inconsistent_learning_rate_values_are_rejected():
    with pytest.raises(ValueError, match="one more entry"):
        training.learning_rate_schedule(0.1, [10, 20], lr_values=[0.1, 0.01])
    with pytest.raises(ValueError, match="differs from learning_rate"):
        training.learning_rate_schedule(0.1, [10], lr_values=[0.2, 0.01])
    with pytest.raises(ValueError, match="increasing"):
        training.learning_rate_schedule(0.1, [20, 10])


# ------------------------------------------------------------------------------------------------
# weight decay
# ------------------------------------------------------------------------------------------------
def test_reported_loss_minus_data_loss_is_the_weight_decay_term(digits, tmp_path):
    (x_train, y_train), _ = digits
    weight_decay = 0.01
    history = quick_train(models.small_cnn(batch_norm=True, seed=0), x_train, y_train,
                          num_steps=3, log_every=1, weight_decay=weight_decay,
                          checkpoint_steps=[0, 1, 2], checkpoint_path=checkpoint_namer(tmp_path))
    for row in history.itertuples():
        # The row of step s is evaluated at the weights before its update: step s - 1.
        model = models.small_cnn(batch_norm=True, seed=7)
        model.load_weights(tmp_path / f"step_{row.step - 1}.weights.h5")
        kernels = [v.numpy().astype(np.float64) for v in model.trainable_variables
                   if v.path.endswith("/kernel")]
        assert len(kernels) == 3  # two convolutions and the dense layer; not gamma/beta/bias
        penalty = 0.5 * weight_decay * sum(float(np.sum(k**2)) for k in kernels)
        assert row.loss - row.data_loss == pytest.approx(penalty, rel=1e-5, abs=1e-6)
        assert row.loss > row.data_loss


def test_one_plain_sgd_step_moves_weights_by_minus_lr_times_gradient_plus_decay(digits):
    (x_train, y_train), _ = digits
    x, y = x_train[:200], y_train[:200]
    # 0.25: exact in float32, the dtype of Keras's learning-rate variable even for float64 models.
    learning_rate, weight_decay = 0.25, 0.05
    model = models.mlp(dtype="float64", seed=0)  # no batch norm: the minibatch order is irrelevant
    before = [v.numpy() for v in model.trainable_variables]

    # Independent gradient of the cross-entropy over the whole set (the single minibatch).
    inputs = tf.constant(data.standardize_per_image(x, dtype=np.float64))
    with tf.GradientTape() as tape:
        logits = model(inputs, training=True)
        mean_cross_entropy = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, dtype="float64")  # Keras losses default to float32
        cross_entropy = mean_cross_entropy(y, logits)
    gradients = [g.numpy() for g in tape.gradient(cross_entropy, model.trainable_variables)]

    training.train(model, x, y, num_steps=1, batch_size=len(y), learning_rate=learning_rate,
                   momentum=0.0, weight_decay=weight_decay, log=None)

    for variable, w0, g in zip(model.trainable_variables, before, gradients):
        decay = weight_decay * w0 if variable.path.endswith("/kernel") else 0.0
        np.testing.assert_allclose(variable.numpy(), w0 - learning_rate * (g + decay),
                                   rtol=0, atol=1e-12, err_msg=variable.path)


# ------------------------------------------------------------------------------------------------
# evaluation
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def model_with_moving_statistics():
    """A batch-norm CNN whose moving statistics differ clearly from any batch's statistics."""
    model = models.small_cnn(batch_norm=True, seed=0)
    rng = np.random.default_rng(3)
    for variable in model.non_trainable_variables:
        if variable.path.endswith("moving_mean"):
            variable.assign(rng.normal(0.0, 0.5, variable.shape).astype(np.float32))
        elif variable.path.endswith("moving_variance"):
            variable.assign(rng.uniform(0.5, 2.0, variable.shape).astype(np.float32))
    return model


def test_evaluate_equals_numpy_reference_in_inference_mode(digits, model_with_moving_statistics):
    _, (x_test, y_test) = digits
    model = model_with_moving_statistics
    assert len(y_test) % 64 != 0  # an uneven last batch
    inputs = data.standardize_per_image(x_test)
    logits = model.predict(inputs, batch_size=len(y_test), verbose=0)  # inference mode
    expected_loss = numpy_cross_entropy(logits, y_test).mean()
    expected_accuracy = np.mean(logits.argmax(axis=1) == y_test)

    result = training.evaluate(model, x_test, y_test, batch_size=64)

    assert result["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert result["accuracy"] == pytest.approx(expected_accuracy, abs=1e-12)
    assert result["num_examples"] == len(y_test)
    # The reference discriminates: batch statistics (training mode) would give another loss.
    training_mode_logits, _ = model.stateless_call(
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables], inputs, training=True)
    assert abs(numpy_cross_entropy(training_mode_logits, y_test).mean() - expected_loss) > 1e-3


def test_evaluate_leaves_moving_statistics_unchanged(digits, model_with_moving_statistics):
    _, (x_test, y_test) = digits
    model = model_with_moving_statistics
    before = weight_values(model)
    training.evaluate(model, x_test, y_test, batch_size=64)
    assert_weights_equal(weight_values(model), before)


def test_evaluate_does_not_depend_on_batch_size(digits):
    _, (x_test, y_test) = digits
    model = models.mlp(seed=0)
    whole = training.evaluate(model, x_test, y_test, batch_size=len(y_test))
    uneven = training.evaluate(model, x_test, y_test, batch_size=17)
    assert uneven["loss"] == pytest.approx(whole["loss"], rel=1e-6)
    assert uneven["accuracy"] == whole["accuracy"]


# ------------------------------------------------------------------------------------------------
# load_checkpoint errors, checksum
# ------------------------------------------------------------------------------------------------
def test_load_checkpoint_of_missing_file_names_it_and_the_train_rule(tmp_path):
    missing = tmp_path / "step_100.weights.h5"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))) as raised:
        training.load_checkpoint(models.mlp(seed=0), missing)
    assert "train" in str(raised.value)


def test_load_checkpoint_into_another_architecture_names_file_and_model(tmp_path):
    path = tmp_path / "cnn.weights.h5"
    training.save_checkpoint(models.small_cnn(seed=0), path)
    other = models.mlp(seed=0)
    before = weight_values(other)
    with pytest.raises(ValueError, match=re.escape(str(path))) as raised:
        training.load_checkpoint(other, path)
    assert "'mlp'" in str(raised.value) and "different model config" in str(raised.value)
    assert_weights_equal(weight_values(other), before)  # nothing half-loaded


def test_load_checkpoint_with_same_layers_but_other_widths_is_rejected(tmp_path):
    path = tmp_path / "wide.weights.h5"
    training.save_checkpoint(models.mlp(hidden=(32,), seed=0), path)
    with pytest.raises(ValueError, match="shape mismatch"):
        training.load_checkpoint(models.mlp(hidden=(16,), seed=0), path)


def test_weights_checksum_is_stable_and_sensitive():
    model = models.mlp(seed=0)
    checksum = training.weights_checksum(model)
    assert re.fullmatch(r"[0-9a-f]{64}", checksum)
    assert training.weights_checksum(models.mlp(seed=0)) == checksum
    variable = model.trainable_variables[-1]
    variable.assign(variable.numpy() + np.float32(1e-3))
    assert training.weights_checksum(model) != checksum


# ------------------------------------------------------------------------------------------------
# divergence
# ------------------------------------------------------------------------------------------------
def test_huge_learning_rate_raises_floating_point_error_naming_the_step(digits, tmp_path):
    (x_train, y_train), _ = digits
    model = models.mlp(activation="leaky_relu", seed=0)  # unbounded activations overflow
    with pytest.raises(FloatingPointError, match=r"step \d+.*lower learning rate"):
        quick_train(model, x_train, y_train, num_steps=50, learning_rate=1e6,
                    checkpoint_steps=[50], checkpoint_path=checkpoint_namer(tmp_path))
    assert list(tmp_path.iterdir()) == []
