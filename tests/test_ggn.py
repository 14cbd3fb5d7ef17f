"""GGNOperator against an explicit Jᵀ H J, the Hessian where the two coincide, and its sign.

The reference Gauss–Newton matrix is built here from its definition and shares no code with
`hessflow.kernels.make_ggn_sum`: the explicit Jacobian of each batch's flattened outputs
(`tf.GradientTape.jacobian`, reverse mode, Keras's own batch statistics), the closed-form
Hessian of softmax cross-entropy in logit space, diag(p) − p pᵀ, per example, and numpy products.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.sparse.linalg import eigsh

from hessflow.data import fixed_batches
from hessflow.hvp import GGNOperator, HessianOperator
from reference import exact_hessian, flat_parameters, full_gradient, kernel_mask

CROSS_ENTROPY = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
NUM_INPUTS, NUM_CLASSES = 4, 3
NUM_EXAMPLES, BATCH_SIZE = 40, 16  # batches of 16, 16 and 8


def tanh_mlp(batch_norm=False, seed=0):
    """Dense(6) [-> BatchNorm] -> tanh -> Dense(3), float64: 51 parameters (63 with batch norm)."""
    initializer = keras.initializers.GlorotUniform
    layers = [keras.Input((NUM_INPUTS,), dtype="float64"),
              keras.layers.Dense(6, kernel_initializer=initializer(seed), bias_initializer="ones",
                                 name="hidden", dtype="float64")]
    if batch_norm:
        layers.append(keras.layers.BatchNormalization(name="norm", dtype="float64"))
    layers += [keras.layers.Activation("tanh", dtype="float64"),
               keras.layers.Dense(NUM_CLASSES, kernel_initializer=initializer(seed + 1), name="head",
                                  dtype="float64")]
    model = keras.Sequential(layers)
    if batch_norm:  # gamma and beta away from (1, 0)
        rng = np.random.default_rng(seed)
        for variable in model.get_layer("norm").trainable_variables:
            variable.assign(rng.uniform(0.5, 1.5, variable.shape))
    return model


@pytest.fixture(scope="module")
def batches():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(NUM_EXAMPLES, NUM_INPUTS))
    y = rng.integers(0, NUM_CLASSES, NUM_EXAMPLES)
    return fixed_batches(x, y, BATCH_SIZE)


def unflattened(model, flat):
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    return [tf.reshape(t, s) for t, s in zip(tf.split(flat, [int(np.prod(s)) for s in shapes]), shapes)]


def explicit_ggn(model, batches, training, weight_decay=0.0):
    """(1/N) Σ_b J_bᵀ H_b J_b + wd · diag(kernel mask), J_b = ∂ vec(logits_b)/∂θ (B·C, n)."""
    theta = flat_parameters(model)
    flat = tf.constant(theta)
    state = [v.value for v in model.non_trainable_variables]
    ggn = np.zeros((theta.size, theta.size))
    for x, _ in batches:  # the logit-space Hessian of cross-entropy does not depend on y
        with tf.GradientTape() as tape:
            tape.watch(flat)
            logits, _ = model.stateless_call(unflattened(model, flat), state, tf.constant(x), training=training)
            outputs = tf.reshape(logits, [-1])
        jacobian = tape.jacobian(outputs, flat).numpy()
        p = tf.nn.softmax(logits).numpy()
        output_hessian = np.zeros((outputs.shape[0],) * 2)
        for i, p_i in enumerate(p):  # softmax cross-entropy: ∇²_z ℓ = diag(p) − p pᵀ
            rows = slice(i * NUM_CLASSES, (i + 1) * NUM_CLASSES)
            output_hessian[rows, rows] = np.diag(p_i) - np.outer(p_i, p_i)
        ggn += jacobian.T @ output_hessian @ jacobian
    ggn /= sum(len(x) for x, _ in batches)
    ggn[np.diag_indices_from(ggn)] += weight_decay * kernel_mask(model)
    return ggn


def relative_error(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("batch_norm", [False, True], ids=["tanh_mlp", "tanh_mlp_batch_norm_train"])
def test_ggn_product_equals_the_explicit_jacobian_transpose_output_hessian_jacobian(batches, batch_norm):
    model = tanh_mlp(batch_norm)
    op = GGNOperator(model, batches, CROSS_ENTROPY, weight_decay=3e-3, batch_norm="train", dtype="float64")
    reference = explicit_ggn(model, batches, training=True, weight_decay=3e-3)
    block = np.random.default_rng(1).normal(size=(op.dim, 2))
    assert relative_error(op.matmat(block), reference @ block) < 1e-12


def test_for_a_linear_model_with_squared_error_the_ggn_is_the_hessian(batches):
    # Outputs linear in θ: the Hessian's second term, Σ (∂ℓ/∂z) ∇²z, is identically zero.
    model = keras.Sequential([keras.Input((NUM_INPUTS,), dtype="float64"),
                              keras.layers.Dense(2, kernel_initializer=keras.initializers.GlorotUniform(2),
                                                 bias_initializer="ones", dtype="float64")])
    rng = np.random.default_rng(3)
    regression = [(x, rng.normal(size=(len(x), 2))) for x, _ in batches]
    mse = keras.losses.MeanSquaredError()
    settings = dict(weight_decay=1e-2, dtype="float64")
    ggn = GGNOperator(model, regression, mse, **settings).matmat(np.eye(10))
    hessian = HessianOperator(model, regression, mse, **settings).matmat(np.eye(10))
    assert np.abs(ggn - hessian).max() < 1e-12 * np.abs(hessian).max()
    x = np.concatenate([x for x, _ in regression])
    features = np.hstack([x, np.ones((len(x), 1))])  # closed form: (2/C) E[φ φᵀ] per output, C = 2 outputs
    per_output = features.T @ features / len(x) + 1e-2 * np.diag([1.0] * NUM_INPUTS + [0.0])
    # Coordinates: kernel (4, 2) in C order (input-major), then bias (2,).
    order = [0, 2, 4, 6, 8, 1, 3, 5, 7, 9]
    np.testing.assert_allclose(ggn[np.ix_(order, order)], np.kron(np.eye(2), per_output), atol=1e-13)


def test_the_ggn_of_cross_entropy_is_positive_semidefinite_where_the_hessian_is_not(batches):
    model = tanh_mlp(seed=4)
    op = GGNOperator(model, batches, CROSS_ENTROPY, dtype="float64")
    ggn = op.matmat(np.eye(op.dim))
    np.testing.assert_allclose(ggn, ggn.T, rtol=0, atol=1e-15)
    eigenvalues = np.linalg.eigvalsh(0.5 * (ggn + ggn.T))
    spread = eigenvalues[-1] - eigenvalues[0]
    assert eigenvalues[0] >= -1e-12 * spread
    hessian_eigenvalues = np.linalg.eigvalsh(exact_hessian(model, batches, CROSS_ENTROPY.call, True))
    assert hessian_eigenvalues[0] < -1e-2 * spread  # the second-derivative term makes it indefinite
    top = np.sort(eigsh(op, k=2, which="LA", return_eigenvectors=False))  # the LinearOperator at work
    np.testing.assert_allclose(top, eigenvalues[-2:], rtol=1e-10)


def test_a_ggn_block_equals_the_diagonal_block_of_the_explicit_ggn(batches):
    model = tanh_mlp(batch_norm=True, seed=5)
    op = GGNOperator(model, batches, CROSS_ENTROPY, weight_decay=3e-3, dtype="float64",
                     variables=["hidden/kernel", "head/"])
    sizes = [int(np.prod(v.shape)) for v in model.trainable_variables]
    starts = np.cumsum([0, *sizes])
    paths = [v.path for v in model.trainable_variables]
    selected = [paths.index(path) for path in op.variable_paths]
    coordinates = np.concatenate([np.arange(starts[k], starts[k + 1]) for k in selected])
    assert op.variable_paths == [p for p in paths if "hidden/kernel" in p or "head/" in p]
    assert op.dim == coordinates.size == 4 * 6 + 6 * 3 + 3
    block = explicit_ggn(model, batches, training=True, weight_decay=3e-3)[np.ix_(coordinates, coordinates)]
    v = np.random.default_rng(6).normal(size=op.dim)
    assert relative_error(op.matvec(v), block @ v) < 1e-12


def test_ggn_loss_and_gradient_are_the_objectives_and_it_traces_once_over_uneven_batches(batches):
    model = tanh_mlp(batch_norm=True, seed=7)
    op = GGNOperator(model, batches, CROSS_ENTROPY, weight_decay=3e-3, dtype="float64")
    rng = np.random.default_rng(8)
    for _ in range(3):
        op.matvec(rng.normal(size=op.dim))
        loss, gradient = op.loss_and_gradient()
    assert op.num_traces == {"ggn": 1, "gradient": 1}
    np.testing.assert_allclose(gradient, full_gradient(model, batches, CROSS_ENTROPY.call, True, 3e-3),
                               rtol=1e-12, atol=1e-15)
    hessian_loss, _ = HessianOperator(model, batches, CROSS_ENTROPY, weight_decay=3e-3,
                                      dtype="float64").loss_and_gradient()
    assert loss == pytest.approx(hessian_loss, rel=1e-14)


def test_the_ggn_operator_refuses_bad_input_as_the_hessian_operator_does(batches):
    model = tanh_mlp()
    infinite = tf.data.Dataset.from_tensor_slices(batches[0]).batch(4).repeat()
    with pytest.raises(ValueError, match="dataset is infinite"):
        GGNOperator(model, infinite, CROSS_ENTROPY, dtype="float64")
    with pytest.raises(ValueError, match="batch_norm must be one of"):
        GGNOperator(model, batches, CROSS_ENTROPY, batch_norm="eval", dtype="float64")
    with pytest.raises(ValueError, match="build the model with dtype='float32'"):
        GGNOperator(model, batches, CROSS_ENTROPY, dtype="float32")
    model.trainable_variables[0].assign(np.full((NUM_INPUTS, 6), np.nan))
    op = GGNOperator(model, batches, CROSS_ENTROPY, dtype="float64")
    with pytest.raises(FloatingPointError, match="Gauss-Newton-vector product has non-finite entries"):
        op.matvec(np.ones(op.dim))
