"""Streaming data (hessian.data: stream): .npy files read batch by batch, every pass inside one traced
function; the same operator as the in-memory one, bit for bit."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from hessflow import data, models, streaming
from hessflow.hvp import GGNOperator, HessianOperator
from reference import exact_hessian

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
IMAGE_SHAPE = (8, 8, 3)
NUM_EXAMPLES, BATCH_SIZE = 70, 32  # batches of 32, 32 and 6


@pytest.fixture(scope="module")
def arrays(tmp_path_factory):
    """Raw uint8 images and integer labels, as prepare_data writes them, and their files."""
    folder = tmp_path_factory.mktemp("stream")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(NUM_EXAMPLES, *IMAGE_SHAPE), dtype=np.uint8)
    y = rng.integers(0, 10, NUM_EXAMPLES).astype(np.int64)
    np.save(folder / "x_train.npy", x)
    np.save(folder / "y_train.npy", y)
    return x, y, str(folder / "x_train.npy"), str(folder / "y_train.npy")


def standardize(x, dtype="float32"):
    return data.standardize_per_image(x, dtype=np.dtype(dtype))


def cnn(dtype="float32", batch_norm=True):
    return models.small_cnn(IMAGE_SHAPE, 10, filters=(2, 4), batch_norm=batch_norm, dtype=dtype, seed=5)


def operators(arrays, cls=HessianOperator, dtype="float32", num_examples=None, **options):
    """The same operator twice: from the preprocessed arrays in memory and streamed from the files."""
    x, y, x_path, y_path = arrays
    model = options.pop("model", None) or cnn(dtype)
    stop = NUM_EXAMPLES if num_examples is None else num_examples
    in_memory = cls(model, data.fixed_batches(standardize(x[:stop], dtype), y[:stop], BATCH_SIZE), LOSS,
                    dtype=dtype, **options)
    pipeline = streaming.npy_batches(x_path, y_path, BATCH_SIZE, num_examples=num_examples,
                                     to_inputs=lambda batch: standardize(batch, dtype))
    streamed = cls(model, pipeline, LOSS, dtype=dtype, data="stream", **options)
    return in_memory, streamed


def test_npy_batches_are_the_fixed_batches_of_the_preprocessed_arrays(arrays):
    x, y, x_path, y_path = arrays
    expected = data.fixed_batches(standardize(x), y, BATCH_SIZE)
    streamed = list(streaming.npy_batches(x_path, y_path, BATCH_SIZE, to_inputs=standardize).as_numpy_iterator())
    assert len(streamed) == len(expected) == 3
    for (x_read, y_read), (x_expected, y_expected) in zip(streamed, expected):
        assert np.array_equal(x_read, x_expected) and x_read.dtype == np.float32
        assert np.array_equal(y_read, y_expected) and y_read.dtype == np.int64


def test_npy_batches_stop_at_num_examples(arrays):
    x, y, x_path, y_path = arrays
    streamed = list(streaming.npy_batches(x_path, y_path, BATCH_SIZE, num_examples=40).as_numpy_iterator())
    assert [len(b) for b, _ in streamed] == [32, 8]
    assert np.array_equal(np.concatenate([b for b, _ in streamed]), x[:40])


@pytest.mark.parametrize("cls", [HessianOperator, GGNOperator])
def test_streamed_operator_equals_the_in_memory_one_bit_for_bit(arrays, cls):
    # Batch norm in train mode, an uneven last batch, uint8 images standardized batch by batch.
    in_memory, streamed = operators(arrays, cls, weight_decay=5e-4)
    assert (streamed.num_examples, streamed.num_batches) == (NUM_EXAMPLES, 3)
    rng = np.random.default_rng(1)
    for _ in range(2):
        v = rng.normal(size=in_memory.dim)
        assert np.array_equal(streamed.matvec(v), in_memory.matvec(v))
    loss_memory, gradient_memory = in_memory.loss_and_gradient()
    loss_streamed, gradient_streamed = streamed.loss_and_gradient()
    assert loss_streamed == loss_memory and np.array_equal(gradient_streamed, gradient_memory)


def test_streamed_operator_over_the_first_examples_equals_the_in_memory_one(arrays):
    in_memory, streamed = operators(arrays, num_examples=45)
    v = np.random.default_rng(2).normal(size=in_memory.dim)
    assert streamed.num_examples == 45
    assert np.array_equal(streamed.matvec(v), in_memory.matvec(v))


def test_streamed_hessian_is_the_exact_hessian(arrays):
    # Independent of the memory mode: reverse-over-reverse on the explicit parameter vector, float64.
    x, y, _, _ = arrays
    model = models.mlp(IMAGE_SHAPE, 10, hidden=(4,), batch_norm=True, dtype="float64", seed=2)
    _, streamed = operators(arrays, dtype="float64", model=model, weight_decay=1e-3)
    batches = data.fixed_batches(standardize(x, "float64"), y, BATCH_SIZE)
    hessian = exact_hessian(model, batches, LOSS.call, True, 1e-3)
    columns = np.stack([streamed.matvec(e) for e in np.eye(streamed.dim)[:: max(1, streamed.dim // 12)]], axis=1)
    np.testing.assert_allclose(columns, hessian[:, :: max(1, streamed.dim // 12)], rtol=1e-9, atol=1e-12)


def test_streamed_passes_trace_each_kernel_once(arrays):
    _, streamed = operators(arrays)
    for seed in range(3):
        streamed.matvec(np.random.default_rng(seed).normal(size=streamed.dim))
        streamed.loss_and_gradient()
    assert streamed.num_traces == {"hvp": 1, "gradient": 1}


def test_stream_mode_needs_a_tf_data_dataset(arrays):
    x, y, _, _ = arrays
    with pytest.raises(ValueError, match="needs a finite tf.data.Dataset"):
        HessianOperator(cnn(), data.fixed_batches(standardize(x), y, BATCH_SIZE), LOSS, data="stream")


def test_stream_mode_refuses_an_infinite_dataset(arrays):
    x, y, _, _ = arrays
    endless = tf.data.Dataset.from_tensor_slices((standardize(x), y)).batch(BATCH_SIZE).repeat()
    with pytest.raises(ValueError, match="infinite"):
        HessianOperator(cnn(), endless, LOSS, data="stream")


def test_stream_mode_names_a_batch_with_more_x_than_y(arrays):
    x, y, _, _ = arrays
    uneven = tf.data.Dataset.from_tensor_slices(np.arange(3)).map(
        lambda j: (tf.zeros((4 - tf.cast(j, tf.int32) // 2, *IMAGE_SHAPE)), tf.zeros((3,), tf.int64)))
    with pytest.raises(ValueError, match="batch 0 is empty or has more x than y"):
        HessianOperator(cnn(), uneven, LOSS, data="stream")


def test_an_unknown_data_mode_is_refused(arrays):
    x, y, _, _ = arrays
    with pytest.raises(ValueError, match=r"data must be one of \('memory', 'stream'\)"):
        HessianOperator(cnn(), data.fixed_batches(standardize(x), y, BATCH_SIZE), LOSS, data="disk")


def test_a_truncated_npy_file_is_named_when_streamed(arrays, tmp_path):
    x, y, _, y_path = arrays
    damaged = tmp_path / "x_train.npy"
    np.save(damaged, x)
    damaged.write_bytes(damaged.read_bytes()[:-500])
    with pytest.raises(ValueError, match="x_train.npy"):
        list(streaming.npy_batches(damaged, y_path, BATCH_SIZE).as_numpy_iterator())


def test_a_fortran_order_npy_file_is_refused_with_the_fix(arrays, tmp_path):
    x, y, _, y_path = arrays
    np.save(tmp_path / "x.npy", np.asfortranarray(x))
    with pytest.raises(ValueError, match="Fortran order.*np.ascontiguousarray"):
        streaming.npy_batches(tmp_path / "x.npy", y_path, BATCH_SIZE)


def test_files_of_different_lengths_are_refused_naming_both(arrays, tmp_path):
    x, y, x_path, _ = arrays
    np.save(tmp_path / "y.npy", y[:-1])
    with pytest.raises(ValueError, match=r"x_train.npy has 70 examples but .*y.npy has 69"):
        streaming.npy_batches(x_path, tmp_path / "y.npy", BATCH_SIZE)
