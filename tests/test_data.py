"""Tests of hessflow.data: CIFAR-10 reader, offline datasets, preprocessing, batching, workers."""

import numpy as np
import pytest

from hessflow import data

RECORD = 1 + 3 * 32 * 32


def write_cifar_file(path, labels, seed):
    """Write CIFAR-10 binary records with random pixels; return the raw (N, 3073) uint8 records."""
    rng = np.random.default_rng(seed)
    records = rng.integers(0, 256, size=(len(labels), RECORD), dtype=np.uint8)
    records[:, 0] = labels
    path.write_bytes(records.tobytes())
    return records


def make_cifar_folder(root, files_and_labels):
    """Create root/cifar-10-batches-bin/ holding {file name: labels}; return the records."""
    folder = root / "cifar-10-batches-bin"
    folder.mkdir()
    return {name: write_cifar_file(folder / name, labels, seed=i)
            for i, (name, labels) in enumerate(files_and_labels.items())}


# --- CIFAR-10 reader -----------------------------------------------------------------------------
def test_record_length_constant_is_label_plus_three_32x32_planes():
    assert data.CIFAR10_RECORD_BYTES == 3073
    assert data.CIFAR10_IMAGE_BYTES == 3072


def test_read_cifar10_batch_converts_channel_major_records_to_nhwc_pixel_by_pixel(tmp_path):
    labels = np.array([3, 0, 9, 5, 1], dtype=np.uint8)
    records = write_cifar_file(tmp_path / "data_batch_1.bin", labels, seed=0)

    images, read_labels = data.read_cifar10_batch(tmp_path / "data_batch_1.bin")

    assert images.shape == (5, 32, 32, 3) and images.dtype == np.uint8
    assert read_labels.dtype == np.int64
    np.testing.assert_array_equal(read_labels, labels.astype(np.int64))
    # Independent index computation: byte of (channel c, row h, column w) in a record.
    for n in range(len(labels)):
        for h in range(32):
            for w in range(32):
                for c in range(3):
                    assert images[n, h, w, c] == records[n, 1 + c * 1024 + h * 32 + w]


def test_read_cifar10_batch_red_plane_comes_first(tmp_path):
    record = np.zeros(RECORD, dtype=np.uint8)
    record[0] = 7
    record[1:1 + 1024] = 200  # the first plane only
    (tmp_path / "one.bin").write_bytes(record.tobytes())

    images, labels = data.read_cifar10_batch(tmp_path / "one.bin")

    assert labels.tolist() == [7]
    assert np.all(images[0, :, :, 0] == 200)
    assert np.all(images[0, :, :, 1:] == 0)


def test_truncated_file_error_names_file_size_and_redownload(tmp_path):
    path = tmp_path / "data_batch_2.bin"
    path.write_bytes(bytes(2 * RECORD - 100))

    with pytest.raises(ValueError) as info:
        data.read_cifar10_batch(path)

    message = str(info.value)
    assert str(path) in message
    assert f"{2 * RECORD - 100:,}" in message
    assert "truncated" in message and "re-download" in message


def test_empty_file_is_rejected(tmp_path):
    path = tmp_path / "empty.bin"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.bin"):
        data.read_cifar10_batch(path)


def test_missing_batch_file_error_names_path(tmp_path):
    path = tmp_path / "nope.bin"
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        data.read_cifar10_batch(path)


def test_bad_label_error_names_file_and_record_index(tmp_path):
    path = tmp_path / "test_batch.bin"
    write_cifar_file(path, np.array([1, 2, 3, 10, 4, 200], dtype=np.uint8), seed=1)

    with pytest.raises(ValueError) as info:
        data.read_cifar10_batch(path)

    message = str(info.value)
    assert str(path) in message
    assert "record 3" in message


def test_load_cifar10_train_concatenates_batches_1_to_5_in_order(tmp_path):
    files = {f"data_batch_{i}.bin": np.full(i + 1, i, dtype=np.uint8) for i in range(1, 6)}
    records = make_cifar_folder(tmp_path, files)

    images, labels = data.load_cifar10(tmp_path, "train")

    expected_labels = np.concatenate([np.full(i + 1, i) for i in range(1, 6)])
    np.testing.assert_array_equal(labels, expected_labels)
    expected_first_pixels = np.concatenate(
        [records[f"data_batch_{i}.bin"][:, 1] for i in range(1, 6)])
    np.testing.assert_array_equal(images[:, 0, 0, 0], expected_first_pixels)


def test_load_cifar10_accepts_the_batches_folder_itself(tmp_path):
    make_cifar_folder(tmp_path, {"test_batch.bin": np.array([4, 2], dtype=np.uint8)})

    from_parent = data.load_cifar10(tmp_path, "test")
    from_folder = data.load_cifar10(tmp_path / "cifar-10-batches-bin", "test")

    np.testing.assert_array_equal(from_parent[1], [4, 2])
    np.testing.assert_array_equal(from_parent[0], from_folder[0])


def test_load_cifar10_missing_file_names_expected_path(tmp_path):
    files = {f"data_batch_{i}.bin": np.zeros(1, dtype=np.uint8) for i in (1, 2, 4, 5)}
    make_cifar_folder(tmp_path, files)

    with pytest.raises(FileNotFoundError) as info:
        data.load_cifar10(tmp_path, "train")

    assert str(tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin") in str(info.value)


def test_load_cifar10_rejects_unknown_split(tmp_path):
    with pytest.raises(ValueError, match="split"):
        data.load_cifar10(tmp_path, "validation")


# --- offline datasets ----------------------------------------------------------------------------
def test_digits_shape_dtype_and_classes():
    images, labels = data.load_digits()

    assert images.shape == (1797, 8, 8, 1) and images.dtype == np.uint8
    assert labels.shape == (1797,) and labels.dtype == np.int64
    assert sorted(np.unique(labels)) == list(range(10))
    assert images.min() == 0 and images.max() == 16


def test_synthetic_dataset_is_identical_for_the_same_seed():
    first = data.synthetic_dataset(50, image_shape=(8, 8, 3), num_classes=4, seed=7)
    second = data.synthetic_dataset(50, image_shape=(8, 8, 3), num_classes=4, seed=7)
    other = data.synthetic_dataset(50, image_shape=(8, 8, 3), num_classes=4, seed=8)

    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert not np.array_equal(first[0], other[0])


def test_synthetic_dataset_array_form_and_balanced_labels():
    images, labels = data.synthetic_dataset(103, image_shape=(32, 32, 3), num_classes=10, seed=0)

    assert images.shape == (103, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (103,) and labels.dtype == np.int64
    counts = np.bincount(labels, minlength=10)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 103


def test_synthetic_dataset_is_learnable_by_nearest_class_mean():
    images, labels = data.synthetic_dataset(400, image_shape=(8, 8, 3), num_classes=5, seed=1)
    x = data.standardize_per_image(images).reshape(400, -1)
    train, test = slice(0, 300), slice(300, 400)
    means = np.stack([x[train][labels[train] == k].mean(axis=0) for k in range(5)])
    predicted = np.argmin(((x[test][:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    assert np.mean(predicted == labels[test]) > 0.9


def test_train_test_split_is_fixed_by_seed_disjoint_and_stratified():
    labels = np.repeat(np.arange(4), 25)  # 25 per class
    images = np.arange(100)  # identify examples by value

    (x_train, y_train), (x_test, y_test) = data.train_test_split(images, labels, 0.2, seed=3)
    (x_train2, _), (x_test2, _) = data.train_test_split(images, labels, 0.2, seed=3)

    np.testing.assert_array_equal(x_test, x_test2)
    np.testing.assert_array_equal(x_train, x_train2)
    assert sorted(np.concatenate([x_train, x_test])) == list(range(100))
    np.testing.assert_array_equal(np.bincount(y_test), [5, 5, 5, 5])
    np.testing.assert_array_equal(y_test, labels[x_test])
    assert np.all(np.diff(x_test) > 0) and np.all(np.diff(x_train) > 0)  # original order kept


# --- preprocessing -------------------------------------------------------------------------------
def test_standardize_per_image_matches_tensorflow():
    import tensorflow as tf

    images, _ = data.synthetic_dataset(6, image_shape=(32, 32, 3), seed=2)
    images[0] = 77  # a constant image exercises the 1/sqrt(num_pixels) floor

    ours = data.standardize_per_image(images)
    theirs = tf.image.per_image_standardization(tf.constant(images)).numpy()

    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)


def test_standardize_per_image_float64_output_matches_tensorflow():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 16, size=(5, 8, 8, 1))
    images[1] = rng.uniform(0, 1e-4, size=(8, 8, 1))  # std below the floor 1/sqrt(64)

    ours = data.standardize_per_image(images, dtype=np.float64)
    # TensorFlow always computes (and returns) float32, so agreement is to float32 precision.
    theirs = tf.image.per_image_standardization(tf.constant(images)).numpy()

    assert ours.dtype == np.float64
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)


def test_standardize_per_image_floor_uses_all_pixels_and_channels():
    image = np.zeros((1, 4, 4, 3))
    image[0, 0, 0, 0] = 1e-3  # tiny std, so the floor 1/sqrt(48) applies
    out = data.standardize_per_image(image, dtype=np.float64)
    mean = 1e-3 / 48
    np.testing.assert_allclose(out[0, 0, 0, 0], (1e-3 - mean) * np.sqrt(48), rtol=1e-12)


# --- batching and partitions ---------------------------------------------------------------------
def test_fixed_batches_keep_order_and_last_batch_is_smaller():
    x = np.arange(23) * 10
    y = np.arange(23)

    batches = data.fixed_batches(x, y, 5)

    assert [len(xb) for xb, _ in batches] == [5, 5, 5, 5, 3]
    np.testing.assert_array_equal(np.concatenate([xb for xb, _ in batches]), x)
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in batches]), y)
    np.testing.assert_array_equal(batches[4][1], [20, 21, 22])


def test_fixed_batches_exact_multiple_has_equal_batches():
    batches = data.fixed_batches(np.zeros((12, 2)), np.zeros(12), 4)
    assert [len(xb) for xb, _ in batches] == [4, 4, 4]


@pytest.mark.parametrize("batch_size", [0, -3])
def test_fixed_batches_rejects_nonpositive_batch_size(batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        data.fixed_batches(np.zeros(4), np.zeros(4), batch_size)


def test_fixed_batches_rejects_length_mismatch():
    with pytest.raises(ValueError, match="same length"):
        data.fixed_batches(np.zeros(4), np.zeros(5), 2)


def test_worker_batch_indices_assign_batch_j_to_worker_j_mod_w():
    assert data.worker_batch_indices(10, 0, 3) == [0, 3, 6, 9]
    assert data.worker_batch_indices(10, 1, 3) == [1, 4, 7]
    assert data.worker_batch_indices(10, 2, 3) == [2, 5, 8]


@pytest.mark.parametrize("num_batches, num_workers", [(10, 3), (7, 7), (2, 5), (1, 1), (0, 2)])
def test_worker_partition_covers_every_batch_exactly_once(num_batches, num_workers):
    union = sorted(j for w in range(num_workers)
                   for j in data.worker_batch_indices(num_batches, w, num_workers))
    assert union == list(range(num_batches))


def test_worker_with_no_batch_gets_empty_list():
    assert data.worker_batch_indices(2, 4, 5) == []


@pytest.mark.parametrize("worker, num_workers", [(-1, 2), (2, 2), (0, 0)])
def test_worker_index_is_validated(worker, num_workers):
    with pytest.raises(ValueError):
        data.worker_batch_indices(4, worker, num_workers)


def test_worker_batches_returns_that_workers_batches_in_order():
    x = np.arange(11)
    batches = data.fixed_batches(x, x, 2)  # 6 batches, last of size 1

    mine = data.worker_batches(batches, 1, 2)

    np.testing.assert_array_equal(np.concatenate([xb for xb, _ in mine]), [2, 3, 6, 7, 10])


# --- augmentation --------------------------------------------------------------------------------
def test_augmentation_keeps_shape_and_dtype():
    images = np.random.default_rng(0).normal(size=(7, 32, 32, 3)).astype(np.float32)
    out = data.augment_pad_crop_flip(images, np.random.default_rng(1))
    assert out.shape == images.shape and out.dtype == np.float32


def test_augmentation_is_deterministic_for_a_fixed_rng():
    images = np.random.default_rng(0).normal(size=(16, 32, 32, 3))
    first = data.augment_pad_crop_flip(images, np.random.default_rng(5))
    second = data.augment_pad_crop_flip(images, np.random.default_rng(5))
    np.testing.assert_array_equal(first, second)


def test_augmentation_without_padding_gives_image_or_its_mirror():
    images = np.random.default_rng(0).normal(size=(40, 6, 6, 2))  # asymmetric almost surely

    out = data.augment_pad_crop_flip(images, np.random.default_rng(2), pad=0)

    flipped = [not np.array_equal(o, i) for o, i in zip(out, images)]
    for o, i, f in zip(out, images, flipped):
        np.testing.assert_array_equal(o, i[:, ::-1, :] if f else i)
    assert 0 < sum(flipped) < len(images)  # both outcomes occur in 40 draws


def test_augmentation_output_is_a_window_of_the_zero_padded_image():
    images = np.random.default_rng(0).normal(size=(10, 8, 8, 1)) + 5.0  # no zeros inside
    pad = 2

    out = data.augment_pad_crop_flip(images, np.random.default_rng(3), pad=pad)

    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets_seen = set()
    for n in range(len(images)):
        matches = [(i, j) for i in range(2 * pad + 1) for j in range(2 * pad + 1)
                   for crop in [padded[n, i:i + 8, j:j + 8]]
                   if np.array_equal(out[n], crop) or np.array_equal(out[n], crop[:, ::-1])]
        assert matches, f"image {n} is not a (mirrored) crop of its padded image"
        offsets_seen.update(matches)
    assert len(offsets_seen) > 1  # the offset is random
