"""HessianOperator against explicit Hessians, finite differences and closed forms."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from hessflow import models
from hessflow.data import fixed_batches
from hessflow.hvp import HessianOperator
from reference import (
    batch_loss_sum,
    central_difference_hvp,
    exact_hessian,
    flat_parameters,
    full_gradient,
    kernel_mask,
)

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
    op = HessianOperator(model, fixed_batches(*examples, BATCH_SIZE), LOSS, weight_decay=1e-3, batch_norm=mode,
                         dtype="float64")
    v = np.random.default_rng(3).normal(size=op.dim)
    v /= np.linalg.norm(v)
    step = 1e-6  # truncation error O(step²) and round-off O(1e-16/step) both well under 1e-6
    finite_difference = central_difference_hvp(op, model, v, step)
    assert relative_error(op.matvec(v), finite_difference) < 1e-7


def test_mean_over_an_uneven_last_batch_is_the_exact_mean_over_examples(examples):
    # Without batch statistics the loss does not depend on the batching, so
    # batches of 25/25/10 must give the same operator as one batch of 60.
    model = small_model("cnn", True)
    perturb_moving_statistics(model)
    uneven = HessianOperator(model, fixed_batches(*examples, BATCH_SIZE), LOSS, batch_norm="inference", dtype="float64")
    whole = HessianOperator(model, fixed_batches(*examples, NUM_EXAMPLES), LOSS, batch_norm="inference",
                            dtype="float64")
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
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH_SIZE)
    from_dataset = HessianOperator(model, dataset, LOSS, dtype="float64")
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


# -- the operator as a scipy LinearOperator ---------------------------------------------------------
def test_the_operator_is_a_scipy_linear_operator_on_vectors_and_matrices(examples):
    from scipy.sparse.linalg import LinearOperator, aslinearoperator

    model = small_model("mlp", True)
    op = HessianOperator(model, fixed_batches(*examples, BATCH_SIZE), LOSS, weight_decay=1e-3, dtype="float64")
    assert isinstance(op, LinearOperator) and aslinearoperator(op) is op
    assert op.shape == (op.dim, op.dim) and op.dtype == np.float64
    rng = np.random.default_rng(8)
    v, w, block = rng.normal(size=op.dim), rng.normal(size=op.dim), rng.normal(size=(op.dim, 3))
    product = op.matvec(v)
    assert product.shape == (op.dim,)
    np.testing.assert_array_equal(op.matvec(v[:, None]), product[:, None])
    np.testing.assert_array_equal(op @ v, product)
    np.testing.assert_array_equal(op(v), product)
    np.testing.assert_array_equal(op.rmatvec(v), product)  # symmetric
    np.testing.assert_array_equal(op.H @ v, product)
    columns = np.stack([op.matvec(block[:, k]) for k in range(3)], axis=1)
    np.testing.assert_array_equal(op.matmat(block), columns)
    np.testing.assert_array_equal(op @ block, columns)
    np.testing.assert_array_equal(op.matvec(v + 1j * w), product + 1j * op.matvec(w))  # by linearity


def test_eigsh_lanczos_and_the_exact_hessian_agree_on_the_top_eigenvalues(examples):
    from scipy.sparse.linalg import eigsh

    from hessflow.lanczos import lanczos

    model = small_model("mlp", True)
    batches = fixed_batches(*examples, BATCH_SIZE)
    op = HessianOperator(model, batches, LOSS, weight_decay=2e-4, dtype="float64")
    exact = np.linalg.eigvalsh(exact_hessian(model, batches, LOSS.call, True, 2e-4))
    top = np.sort(eigsh(op, k=3, which="LA", return_eigenvectors=False))
    np.testing.assert_allclose(top, exact[-3:], rtol=1e-9)
    largest_magnitude = np.sort(np.abs(eigsh(op, k=3, return_eigenvectors=False)))
    np.testing.assert_allclose(largest_magnitude, np.sort(np.abs(exact))[-3:], rtol=1e-9)
    ritz = np.linalg.eigvalsh(lanczos(op, num_steps=60, seed=(0, 0, 0), keep_vectors=False).tridiag)
    np.testing.assert_allclose(ritz[-3:], top, rtol=1e-6)


def test_lanczos_on_the_operator_equals_lanczos_on_its_matvec_bit_for_bit(examples):
    from hessflow.lanczos import lanczos

    op = HessianOperator(small_model("cnn", True), fixed_batches(*examples, BATCH_SIZE), LOSS, dtype="float64")
    by_operator = lanczos(op, num_steps=8, seed=(1, 2, 3))
    by_matvec = lanczos(op.matvec, op.dim, 8, seed=(1, 2, 3))
    np.testing.assert_array_equal(by_operator.tridiag, by_matvec.tridiag)
    np.testing.assert_array_equal(by_operator.vectors, by_matvec.vectors)


def test_a_column_vector_of_the_wrong_length_is_refused(examples):
    op = HessianOperator(small_model("mlp", False, dtype="float32"), fixed_batches(*examples, BATCH_SIZE), LOSS)
    with pytest.raises(ValueError, match=r"acts on"):
        op.matvec(np.ones((op.dim, 2)))


# -- noise layers are off in every pass --------------------------------------------------------------
class HalfDropout(keras.layers.Dropout):
    """A user's own Dropout subclass."""

    def __init__(self, **kwargs):
        super().__init__(0.5, **kwargs)


def glorot(seed):
    return keras.initializers.GlorotUniform(seed=seed)


def noisy_model(kind, noise=None, dtype="float64"):
    """MLP (dense, batch norm, [noise], dense) or CNN (conv, batch norm, ReLU, [noise], dense)."""
    layers = [keras.Input(INPUT_SHAPE, dtype=dtype)]
    if kind == "mlp":
        layers += [keras.layers.Flatten(dtype=dtype),
                   keras.layers.Dense(8, "tanh", kernel_initializer=glorot(1), dtype=dtype)]
    else:
        layers += [keras.layers.Conv2D(3, 3, padding="same", kernel_initializer=glorot(1), dtype=dtype)]
    layers += [keras.layers.BatchNormalization(dtype=dtype), keras.layers.Activation("relu", dtype=dtype)]
    if noise is not None:
        layers.append(noise)
    if kind == "cnn":
        layers.append(keras.layers.Flatten(dtype=dtype))
    layers.append(keras.layers.Dense(10, kernel_initializer=glorot(2), dtype=dtype))
    return keras.Sequential(layers)


def copy_weights(source, target):
    """Trainable weights and batch-norm moving statistics (noise layers have none)."""
    for a, b in zip(source.trainable_variables, target.trainable_variables, strict=True):
        b.assign(a)
    moving = [[v for v in m.non_trainable_variables if "moving" in v.path] for m in (source, target)]
    for a, b in zip(*moving, strict=True):
        b.assign(a)


def assert_same_operator(a, b, seed):
    v = np.random.default_rng(seed).normal(size=a.dim)
    np.testing.assert_allclose(a.matvec(v), b.matvec(v), rtol=1e-13, atol=1e-15)
    loss_a, gradient_a = a.loss_and_gradient()
    loss_b, gradient_b = b.loss_and_gradient()
    assert loss_a == pytest.approx(loss_b, rel=1e-14)
    np.testing.assert_allclose(gradient_a, gradient_b, rtol=1e-13, atol=1e-16)


@pytest.mark.parametrize("mode", ["train", "inference"])
def test_an_mlp_with_dropout_has_the_operator_of_the_mlp_without_it(examples, mode):
    with_dropout = noisy_model("mlp", keras.layers.Dropout(0.5, dtype="float64"))
    without = noisy_model("mlp")
    perturb_moving_statistics(with_dropout)
    copy_weights(with_dropout, without)
    batches = fixed_batches(*examples, BATCH_SIZE)
    assert_same_operator(HessianOperator(with_dropout, batches, LOSS, batch_norm=mode, dtype="float64"),
                         HessianOperator(without, batches, LOSS, batch_norm=mode, dtype="float64"), seed=9)


NOISE_LAYERS = {
    "Dropout": lambda: keras.layers.Dropout(0.5, dtype="float64"),
    "SpatialDropout2D": lambda: keras.layers.SpatialDropout2D(0.5, dtype="float64"),
    "GaussianDropout": lambda: keras.layers.GaussianDropout(0.5, dtype="float64"),
    "GaussianNoise": lambda: keras.layers.GaussianNoise(1.0, dtype="float64"),
    "AlphaDropout": lambda: keras.layers.AlphaDropout(0.5, dtype="float64"),
    "a Dropout subclass": lambda: HalfDropout(dtype="float64"),
    "RandomFlip": lambda: keras.layers.RandomFlip("horizontal", dtype="float64"),
}


@pytest.mark.parametrize("name", list(NOISE_LAYERS))
def test_a_train_mode_cnn_with_a_noise_layer_has_the_operator_of_the_cnn_without_it(examples, name):
    noisy = noisy_model("cnn", NOISE_LAYERS[name]())
    clean = noisy_model("cnn")
    copy_weights(noisy, clean)
    x = tf.constant(examples[0][:BATCH_SIZE])
    params, state = [v.value for v in noisy.trainable_variables], [v.value for v in noisy.non_trainable_variables]
    in_training, _ = noisy.stateless_call(params, state, x, training=True)
    clean_output, _ = clean.stateless_call(params, [v.value for v in clean.non_trainable_variables], x, training=True)
    assert np.max(np.abs(in_training - clean_output)) > 1e-3  # Keras itself does apply the noise
    batches = fixed_batches(*examples, BATCH_SIZE)
    assert_same_operator(HessianOperator(noisy, batches, LOSS, batch_norm="train", dtype="float64"),
                         HessianOperator(clean, batches, LOSS, batch_norm="train", dtype="float64"), seed=10)
    assert "call" not in vars(noisy.layers[3])  # the layer got its own call back


def test_dropout_inside_attention_is_off_too(examples):
    def attention_model(dropout):
        tokens = keras.Input((8, 8), dtype="float64")
        attended = keras.layers.MultiHeadAttention(2, 3, dropout=dropout, kernel_initializer=glorot(3),
                                                   dtype="float64")(tokens, tokens)
        pooled = keras.layers.GlobalAveragePooling1D(dtype="float64")(attended)
        return keras.Model(tokens, keras.layers.Dense(10, kernel_initializer=glorot(4), dtype="float64")(pooled))

    noisy, clean = attention_model(0.5), attention_model(0.0)
    copy_weights(noisy, clean)
    x, y = examples
    batches = fixed_batches(x.reshape(-1, 8, 8), y, BATCH_SIZE)
    assert_same_operator(HessianOperator(noisy, batches, LOSS, dtype="float64"),
                         HessianOperator(clean, batches, LOSS, dtype="float64"), seed=11)


def test_a_model_with_gaussian_noise_is_a_deterministic_operator(examples):
    model = keras.Sequential([keras.Input(INPUT_SHAPE, dtype="float64"), keras.layers.Flatten(dtype="float64"),
                              keras.layers.GaussianNoise(1.0, dtype="float64"),
                              keras.layers.Dense(6, "tanh", kernel_initializer=glorot(5), dtype="float64"),
                              keras.layers.Dense(10, kernel_initializer=glorot(6), dtype="float64")])
    batches = fixed_batches(*examples, BATCH_SIZE)
    first = HessianOperator(model, batches, LOSS, batch_norm="train", dtype="float64")
    second = HessianOperator(model, batches, LOSS, batch_norm="train", dtype="float64")
    inference = HessianOperator(model, batches, LOSS, batch_norm="inference", dtype="float64")
    v = np.random.default_rng(12).normal(size=first.dim)
    product = first.matvec(v)
    np.testing.assert_array_equal(first.matvec(v), product)
    np.testing.assert_array_equal(second.matvec(v), product)
    np.testing.assert_allclose(inference.matvec(v), product, rtol=1e-13)  # no batch norm: modes agree
    assert first.loss_and_gradient()[0] == second.loss_and_gradient()[0]


# -- your model, your loss, your inputs --------------------------------------------------------------
def nested_tape_hessian(objective, theta):
    """(n, n) Hessian of a scalar function of the flat parameters: a jacobian of a gradient."""
    flat = tf.constant(theta)
    with tf.GradientTape() as outer:
        outer.watch(flat)
        with tf.GradientTape() as inner:
            inner.watch(flat)
            value = objective(flat)
        gradient = inner.gradient(value, flat)
    hessian = outer.jacobian(gradient, flat).numpy()
    return 0.5 * (hessian + hessian.T)


def unflattened(model, flat):
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    return [tf.reshape(t, s) for t, s in zip(tf.split(flat, [int(np.prod(s)) for s in shapes]), shapes)]


class TanhMLP(keras.Model):
    """A user's own model: dense, tanh, layer normalization, dense to two outputs."""

    def __init__(self):
        super().__init__(dtype="float64")  # else Keras rounds the model's inputs to float32
        self.hidden = keras.layers.Dense(6, activation="tanh", kernel_initializer=glorot(7), dtype="float64")
        self.norm = keras.layers.LayerNormalization(dtype="float64")
        self.head = keras.layers.Dense(2, kernel_initializer=glorot(8), bias_initializer="ones", dtype="float64")

    def call(self, x):
        return self.head(self.norm(self.hidden(x)))


def softplus_regression_loss(y_true, y_pred):
    """A user's own per-output loss, shape (batch, 2): log(2 cosh(e)) written with softplus."""
    error = y_pred - y_true
    return tf.math.softplus(2.0 * error) - error


def test_a_user_model_and_user_loss_give_the_exact_hessian_with_outputs_averaged_per_example():
    rng = np.random.default_rng(13)
    x, y = rng.normal(size=(45, 5)), rng.normal(size=(45, 2))
    model = TanhMLP()
    model(x[:1])
    for variable in model.norm.trainable_variables:  # away from the (1, 0) initialization
        variable.assign(rng.uniform(0.5, 1.5, variable.shape))
    op = HessianOperator(model, fixed_batches(x, y, 20), softplus_regression_loss, dtype="float64")

    def network(flat):
        # The model written out by hand: Keras's LayerNormalization goes through tf.nn.moments,
        # whose stop_gradient would make nested tapes on the model itself 11% off here.
        kernel1, bias1, gamma, beta, kernel2, bias2 = unflattened(model, flat)
        hidden = tf.tanh(x @ kernel1 + bias1)
        mean = tf.reduce_mean(hidden, axis=-1, keepdims=True)
        variance = tf.reduce_mean(tf.square(hidden - mean), axis=-1, keepdims=True)
        normalized = (hidden - mean) / tf.sqrt(variance + model.norm.epsilon) * gamma + beta
        return normalized @ kernel2 + bias2

    def objective(flat):  # L = mean over examples of the mean over the two outputs
        return tf.reduce_mean(softplus_regression_loss(tf.constant(y), network(flat)))

    theta = flat_parameters(model)
    np.testing.assert_allclose(network(tf.constant(theta)), model(tf.constant(x)), rtol=1e-12, atol=1e-12)
    hessian = nested_tape_hessian(objective, theta)
    for seed in (14, 15):
        v = np.random.default_rng(seed).normal(size=op.dim)
        assert relative_error(op.matvec(v), hessian @ v) < 1e-10
    loss, _ = op.loss_and_gradient()
    error = model(tf.constant(x)).numpy() - y
    assert loss == pytest.approx(np.mean(np.logaddexp(0.0, 2 * error) - error), rel=1e-12)


class GatherEmbedding(keras.layers.Layer):
    """Rows of a table picked by integer token ids (tf.gather refuses float ids)."""

    def build(self, input_shape):
        self.table = self.add_weight(shape=(20, 3), initializer=keras.initializers.RandomNormal(seed=9), name="table")

    def call(self, tokens):
        return tf.gather(self.table, tokens)


def test_integer_token_ids_reach_the_model_as_integers():
    rng = np.random.default_rng(16)
    tokens, labels = rng.integers(0, 20, size=(30, 7)), rng.integers(0, 4, 30)
    inputs = keras.Input((7,), dtype="int64")
    pooled = keras.layers.GlobalAveragePooling1D(dtype="float64")(keras.layers.Activation("tanh", dtype="float64")(
        GatherEmbedding(dtype="float64")(inputs)))
    model = keras.Model(inputs, keras.layers.Dense(4, kernel_initializer=glorot(10), dtype="float64")(pooled))
    op = HessianOperator(model, fixed_batches(tokens, labels, 16), LOSS, dtype="float64")

    def objective(flat):
        logits, _ = model.stateless_call(unflattened(model, flat), [], tf.constant(tokens))
        return tf.reduce_mean(LOSS.call(tf.constant(labels), logits))

    hessian = nested_tape_hessian(objective, flat_parameters(model))
    v = np.random.default_rng(17).normal(size=op.dim)
    assert relative_error(op.matvec(v), hessian @ v) < 1e-10


def test_a_loss_that_reduces_over_the_batch_is_refused(examples):
    model = small_model("mlp", False)
    with pytest.raises(ValueError, match="per-example losses"):
        HessianOperator(model, fixed_batches(*examples, BATCH_SIZE), lambda y, p: tf.reduce_mean(LOSS.call(y, p)),
                        dtype="float64").loss_and_gradient()
