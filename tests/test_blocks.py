"""Diagonal blocks of the curvature operators (``variables=[regex, ...]``).

References: the explicit Hessian of tests/reference.py sliced to the block's coordinates, and a
model whose Hessian is block diagonal by construction, whose blocks' spectra must add up to it.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from hessflow.data import fixed_batches
from hessflow.hvp import GGNOperator, HessianOperator
from reference import exact_hessian, full_gradient

CROSS_ENTROPY = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
NUM_INPUTS = 4


def dense(units, name, seed, activation=None):
    return keras.layers.Dense(units, activation, kernel_initializer=keras.initializers.GlorotUniform(seed),
                              bias_initializer="ones", name=name, dtype="float64")


def tanh_mlp(activation="tanh", seed=0):
    """Dense(6) -> activation -> Dense(3), float64: 51 parameters."""
    return keras.Sequential([keras.Input((NUM_INPUTS,), dtype="float64"), dense(6, "hidden", seed),
                             keras.layers.Activation(activation, dtype="float64"), dense(3, "head", seed + 1)])


@pytest.fixture(scope="module")
def batches():
    rng = np.random.default_rng(0)
    return fixed_batches(rng.normal(size=(40, NUM_INPUTS)), rng.integers(0, 3, 40), 16)


def block_coordinates(model, paths):
    """Indices into the full flat parameter vector of the variables with these paths."""
    sizes = [int(np.prod(v.shape)) for v in model.trainable_variables]
    starts = np.cumsum([0, *sizes])
    every = [v.path for v in model.trainable_variables]
    return np.concatenate([np.arange(starts[every.index(p)], starts[every.index(p) + 1]) for p in paths])


def test_a_hessian_block_equals_the_diagonal_block_of_the_exact_hessian(batches):
    model = tanh_mlp()
    # Not contiguous in the flat vector: the first layer's kernel and the last layer's bias.
    op = HessianOperator(model, batches, CROSS_ENTROPY, weight_decay=3e-3, dtype="float64",
                         variables=["hidden/kernel", "head/bias$"])
    assert op.variable_paths == [model.get_layer("hidden").kernel.path, model.get_layer("head").bias.path]
    assert op.dim == op.shape[0] == NUM_INPUTS * 6 + 3
    coordinates = block_coordinates(model, op.variable_paths)
    block = exact_hessian(model, batches, CROSS_ENTROPY.call, True, 3e-3)[np.ix_(coordinates, coordinates)]
    v = np.random.default_rng(1).normal(size=(op.dim, 2))
    np.testing.assert_allclose(op @ v, block @ v, rtol=0, atol=1e-13 * np.abs(block).max())


def test_a_blocks_loss_is_the_whole_objective_and_its_gradient_the_blocks_part(batches):
    model = tanh_mlp(seed=2)
    settings = dict(weight_decay=3e-3, dtype="float64")
    op = HessianOperator(model, batches, CROSS_ENTROPY, variables=["head/"], **settings)
    loss, gradient = op.loss_and_gradient()
    full_loss, _ = HessianOperator(model, batches, CROSS_ENTROPY, **settings).loss_and_gradient()
    assert loss == pytest.approx(full_loss, rel=1e-14)
    reference = full_gradient(model, batches, CROSS_ENTROPY.call, True, 3e-3)
    np.testing.assert_allclose(gradient, reference[block_coordinates(model, op.variable_paths)], rtol=1e-12,
                               atol=1e-15)


def two_branch_model():
    """Two tanh sub-networks of the same input, one output unit each.

    With the squared error averaged over the two outputs, the loss is a sum of one term per branch,
    each a function of that branch's weights only: the Hessian (and the GGN) is block diagonal.
    """
    inputs = keras.Input((NUM_INPUTS,), dtype="float64")
    outputs = [dense(1, f"branch_{b}_out", seed + 1)(dense(3, f"branch_{b}_in", seed, "tanh")(inputs))
               for b, seed in (("a", 3), ("b", 5))]
    return keras.Model(inputs, keras.layers.Concatenate(dtype="float64")(outputs))


@pytest.mark.parametrize("operator", [HessianOperator, GGNOperator])
def test_the_blocks_of_a_block_diagonal_operator_together_have_its_spectrum(operator):
    model = two_branch_model()
    rng = np.random.default_rng(4)
    batches = fixed_batches(rng.normal(size=(40, NUM_INPUTS)), rng.normal(size=(40, 2)), 16)
    mse = keras.losses.MeanSquaredError()
    settings = dict(weight_decay=1e-2, dtype="float64")
    blocks = [operator(model, batches, mse, variables=[f"branch_{b}_"], **settings) for b in "ab"]
    assert [op.dim for op in blocks] == [19, 19]
    if operator is HessianOperator:
        full = exact_hessian(model, batches, mse.call, True, 1e-2)
    else:
        full = operator(model, batches, mse, **settings).matmat(np.eye(38))
    a, b = (block_coordinates(model, op.variable_paths) for op in blocks)
    assert np.abs(full[np.ix_(a, b)]).max() < 1e-14 * np.abs(full).max()  # block diagonal indeed
    together = np.sort(np.concatenate([np.linalg.eigvalsh(op.matmat(np.eye(op.dim))) for op in blocks]))
    whole = np.linalg.eigvalsh(full)
    np.testing.assert_allclose(together, whole, rtol=0, atol=1e-12 * (whole[-1] - whole[0]))


class TanhWithoutDerivatives(keras.layers.Layer):
    """tanh whose derivative raises: any pass that differentiates through this layer fails."""

    def call(self, inputs):
        @tf.custom_gradient
        def tanh(t):
            def gradient(upstream):
                raise RuntimeError("differentiated through a layer the block holds constant")

            return tf.tanh(t), gradient

        return tanh(inputs)


@pytest.mark.parametrize("operator", [HessianOperator, GGNOperator])
def test_a_block_differentiates_only_through_what_depends_on_its_variables(batches, operator):
    # The head's block never needs a derivative of the layers below the head: it runs without one.
    guarded = keras.Sequential([keras.Input((NUM_INPUTS,), dtype="float64"), dense(6, "hidden", 6),
                                TanhWithoutDerivatives(dtype="float64"), dense(3, "head", 7)])
    plain = tanh_mlp(seed=6)
    with pytest.raises(RuntimeError, match="differentiated through a layer"):
        operator(guarded, batches, CROSS_ENTROPY, dtype="float64").matvec(np.ones(51))
    head, reference = (operator(m, batches, CROSS_ENTROPY, dtype="float64", variables=["head/"])
                       for m in (guarded, plain))
    v = np.random.default_rng(8).normal(size=head.dim)
    np.testing.assert_allclose(head.matvec(v), reference.matvec(v), rtol=1e-14, atol=1e-16)
    np.testing.assert_allclose(head.loss_and_gradient()[1], reference.loss_and_gradient()[1], rtol=1e-14)


def test_a_regex_that_matches_no_variable_is_refused_naming_it_and_the_available_paths(batches):
    model = tanh_mlp()
    with pytest.raises(ValueError, match="'hiden/' matches none") as refused:
        GGNOperator(model, batches, CROSS_ENTROPY, dtype="float64", variables=["head", "hiden/"])
    for variable in model.trainable_variables:
        assert variable.path in str(refused.value)
    with pytest.raises(ValueError, match=r"write \['head'\]"):
        HessianOperator(model, batches, CROSS_ENTROPY, dtype="float64", variables="head")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        HessianOperator(model, batches, CROSS_ENTROPY, dtype="float64", variables=["head("])
