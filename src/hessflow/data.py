"""Datasets as numpy arrays, deterministic batches, worker partitions, augmentation.

Array conventions used throughout hessflow:

- images: ``uint8`` array of shape ``(N, H, W, C)`` (NHWC), raw pixel values;
- labels: ``int64`` array of shape ``(N,)``, class indices ``0 .. num_classes - 1``.

Images are turned into network inputs by :func:`standardize_per_image` (the paper code's
preprocessing, ``tf.image.per_image_standardization``), which removes the pixel scale; so a
dataset's raw value range (0..255 for CIFAR-10, 0..16 for the digits) does not matter for training.

Everything here is pure numpy (scikit-learn only for the bundled digits), so it runs where
TensorFlow is not installed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .integrity import array_sha256  # the data card's digest of each array

# --- CIFAR-10 binary format ----------------------------------------------------------------------
# Each record is one label byte followed by a 32x32 colour image stored channel-major
# ("depth-major"): the 1,024 red bytes (row-major), then the 1,024 green, then the 1,024 blue.
CIFAR10_HEIGHT = 32
CIFAR10_WIDTH = 32
CIFAR10_CHANNELS = 3
CIFAR10_NUM_CLASSES = 10
CIFAR10_LABEL_BYTES = 1
CIFAR10_IMAGE_BYTES = CIFAR10_CHANNELS * CIFAR10_HEIGHT * CIFAR10_WIDTH  # 3,072
CIFAR10_RECORD_BYTES = CIFAR10_LABEL_BYTES + CIFAR10_IMAGE_BYTES  # 3,073
CIFAR10_RECORDS_PER_FILE = 10_000
CIFAR10_DIRNAME = "cifar-10-batches-bin"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST_FILES = ("test_batch.bin",)
CIFAR10_SPLIT_FILES = {"train": CIFAR10_TRAIN_FILES, "test": CIFAR10_TEST_FILES}

# --- scikit-learn digits -------------------------------------------------------------------------
DIGITS_NUM_EXAMPLES = 1_797
DIGITS_IMAGE_SHAPE = (8, 8, 1)
DIGITS_NUM_CLASSES = 10
DIGITS_MAX_VALUE = 16  # pixel values are integers 0..16 (kept as is, not rescaled)

IMAGES_DTYPE = np.uint8
LABELS_DTYPE = np.int64


# ================================================================================================
# CIFAR-10
# ================================================================================================
def read_cifar10_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 binary batch file (e.g. ``data_batch_1.bin``).

    Args:
        path: file of N records of ``CIFAR10_RECORD_BYTES`` (3,073) bytes each.

    Returns:
        images: ``uint8`` (N, 32, 32, 3), NHWC, pixel values 0..255.
        labels: ``int64`` (N,), values 0..9.

    Raises:
        FileNotFoundError: the file does not exist (message names the path).
        ValueError: the file size is zero or not a multiple of 3,073 bytes (truncated or corrupt
            download), or a label byte is outside 0..9 (message names the record index).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 batch file not found: {path}")
    size = path.stat().st_size
    if size == 0 or size % CIFAR10_RECORD_BYTES != 0:
        raise ValueError(
            f"CIFAR-10 batch file {path} has {size:,} bytes, which is not a nonzero multiple of "
            f"the record length {CIFAR10_RECORD_BYTES:,} bytes: the file is truncated or corrupt; "
            "delete it and re-download the CIFAR-10 binary version."
        )
    records = np.fromfile(path, dtype=np.uint8).reshape(-1, CIFAR10_RECORD_BYTES)

    labels = records[:, 0].astype(LABELS_DTYPE)
    bad = np.flatnonzero(labels >= CIFAR10_NUM_CLASSES)  # uint8 source: never negative
    if bad.size:
        index = int(bad[0])
        raise ValueError(
            f"CIFAR-10 batch file {path}: record {index} has label {int(labels[index])}, outside "
            f"0..{CIFAR10_NUM_CLASSES - 1} ({bad.size} bad records in all); the file is corrupt "
            "or not a CIFAR-10 binary batch."
        )

    channel_major = records[:, CIFAR10_LABEL_BYTES:].reshape(
        -1, CIFAR10_CHANNELS, CIFAR10_HEIGHT, CIFAR10_WIDTH
    )
    # (N, C, H, W) -> (N, H, W, C); copy so the result is C-contiguous, not a strided view.
    images = np.ascontiguousarray(channel_major.transpose(0, 2, 3, 1))
    return images, labels


def cifar10_directory(directory: str | os.PathLike) -> Path:
    """The folder holding the ``*.bin`` files: ``directory/cifar-10-batches-bin`` if it exists,
    else ``directory`` itself (so both the unpacked folder and its parent are accepted)."""
    directory = Path(directory)
    nested = directory / CIFAR10_DIRNAME
    return nested if nested.is_dir() else directory


def load_cifar10(directory: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Load a CIFAR-10 split from the binary version.

    Args:
        directory: the unpacked ``cifar-10-batches-bin/`` folder or its parent.
        split: ``"train"`` (``data_batch_1.bin`` .. ``data_batch_5.bin`` concatenated in that
            order: 50,000 examples) or ``"test"`` (``test_batch.bin``: 10,000 examples).

    Returns:
        images ``uint8`` (N, 32, 32, 3) and labels ``int64`` (N,), in file order.

    Raises:
        ValueError: unknown split, or a corrupt file (see :func:`read_cifar10_batch`).
        FileNotFoundError: a batch file is missing (message names the expected path).
    """
    if split not in CIFAR10_SPLIT_FILES:
        raise ValueError(
            f"unknown CIFAR-10 split {split!r}; expected one of {sorted(CIFAR10_SPLIT_FILES)}")
    folder = cifar10_directory(directory)
    paths = [folder / name for name in CIFAR10_SPLIT_FILES[split]]
    for path in paths:  # check all before reading any, so a missing file fails fast
        if not path.is_file():
            raise FileNotFoundError(
                f"CIFAR-10 {split} file not found: {path} (looked in {folder}; pass the "
                f"'{CIFAR10_DIRNAME}' folder or its parent)"
            )
    parts = [read_cifar10_batch(path) for path in paths]
    images = np.concatenate([images for images, _ in parts], axis=0)
    labels = np.concatenate([labels for _, labels in parts], axis=0)
    return images, labels


# ================================================================================================
# Offline datasets
# ================================================================================================
def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled handwritten digits (no download needed).

    Returns:
        images: ``uint8`` (1797, 8, 8, 1), NHWC, pixel values 0..16 as shipped (not rescaled;
            :func:`standardize_per_image` removes the scale anyway).
        labels: ``int64`` (1797,), values 0..9.
    """
    from sklearn.datasets import load_digits as _sklearn_load_digits

    bunch = _sklearn_load_digits()
    # sklearn stores the integer pixel values as float64; the cast is exact.
    images = bunch.images.astype(IMAGES_DTYPE)[..., np.newaxis]
    labels = bunch.target.astype(LABELS_DTYPE)
    return images, labels


def synthetic_dataset(
    num_examples: int,
    image_shape: tuple[int, int, int] = (32, 32, 3),
    num_classes: int = 10,
    seed: int = 0,
    noise_std: float = 48.0,
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded, learnable image classification dataset (for tests and demos).

    Each class has a fixed random prototype image (pixel values uniform in 64..192); an example is
    its class prototype plus independent Gaussian pixel noise of standard deviation ``noise_std``
    (pixel units), rounded and clipped to 0..255. Labels are balanced (counts differ by at most
    one) and shuffled. The same arguments give identical arrays.

    Returns:
        images ``uint8`` (num_examples, *image_shape) and labels ``int64`` (num_examples,).
    """
    if num_examples < 0:
        raise ValueError(f"num_examples must be >= 0, got {num_examples}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (height, width, channels), got {image_shape}")
    rng = np.random.default_rng(seed)
    prototypes = rng.uniform(64.0, 192.0, size=(num_classes, *image_shape))
    labels = rng.permutation(np.arange(num_examples) % num_classes).astype(LABELS_DTYPE)
    noisy = prototypes[labels] + rng.normal(0.0, noise_std, size=(num_examples, *image_shape))
    images = np.clip(np.rint(noisy), 0, 255).astype(IMAGES_DTYPE)
    return images, labels


def train_test_split(
    images: np.ndarray,
    labels: np.ndarray,
    test_fraction: float,
    seed: int = 0,
    stratify: bool = True,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Split a dataset into train and test parts, fixed by ``seed``.

    With ``stratify`` each class contributes ``round(test_fraction * class_count)`` examples to
    the test part (so the total can differ from ``round(test_fraction * N)`` by a few); without,
    ``round(test_fraction * N)`` examples are drawn at random. Both parts keep the original order
    of the examples (the chosen index sets are sorted), so batches over them are reproducible.

    Returns:
        ``((train_images, train_labels), (test_images, test_labels))``.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    _check_same_length(images, labels)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    if stratify:
        test_parts = []
        for cls in np.unique(labels):
            members = np.flatnonzero(labels == cls)
            count = int(round(test_fraction * members.size))
            test_parts.append(rng.permutation(members)[:count])
        test_index = np.concatenate(test_parts)
    else:
        count = int(round(test_fraction * len(labels)))
        test_index = rng.permutation(len(labels))[:count]
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[test_index] = True
    return (images[~is_test], labels[~is_test]), (images[is_test], labels[is_test])


# ================================================================================================
# Preprocessing
# ================================================================================================
def standardize_per_image(images: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Per-image standardization, with the semantics of ``tf.image.per_image_standardization``.

    For each image (all pixels and channels together, ``P = H * W * C`` values):
    ``(x - mean) / max(std, 1 / sqrt(P))``, where ``std`` is the population standard deviation.
    The lower bound keeps constant images finite (they map to zeros).

    Args:
        images: (N, H, W, C) or a single (H, W, C) image, any real dtype.
        dtype: result dtype, ``float32`` (default) or ``float64``. Computed in float64 either way
            (TensorFlow computes in float32, so the two agree to float32 rounding, about 1e-6).

    Returns:
        array of the input's shape and ``dtype``; every non-constant image has mean 0 and std 1.
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    x = np.asarray(images, dtype=np.float64)
    if x.ndim not in (3, 4):
        raise ValueError(f"images must be (N, H, W, C) or (H, W, C), got shape {x.shape}")
    pixel_axes = (-3, -2, -1)
    num_values = x.shape[-3] * x.shape[-2] * x.shape[-1]
    mean = x.mean(axis=pixel_axes, keepdims=True)
    std = x.std(axis=pixel_axes, keepdims=True)
    adjusted_std = np.maximum(std, 1.0 / np.sqrt(num_values))
    return ((x - mean) / adjusted_std).astype(dtype)


def augment_pad_crop_flip(
    images: np.ndarray, rng: np.random.Generator, pad: int = 4
) -> np.ndarray:
    """Training augmentation of the paper code: zero-pad, random crop, random horizontal flip.

    Each image is padded with ``pad`` zero pixels on every side, an ``H x W`` window is cropped at
    a uniformly random offset (``0 .. 2 * pad`` in each direction), and the crop is mirrored
    left-right with probability 1/2. As in the paper code, apply it to raw pixel values *before*
    :func:`standardize_per_image`, so the padding is black. Randomness comes only from ``rng``:
    first the (N, 2) offsets, then the N flip decisions; the same generator state gives the same
    output.

    Args:
        images: (N, H, W, C) real array (float or integer).
        rng: ``np.random.Generator``, advanced by the call.
        pad: padding in pixels on each side (>= 0).

    Returns:
        new array of the same shape and dtype.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    num, height, width, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = rng.integers(0, 2 * pad + 1, size=(num, 2))
    flips = rng.random(num) < 0.5
    # windows[n, i, j] is the (C, H, W) crop of image n whose top-left corner is (i, j).
    windows = np.lib.stride_tricks.sliding_window_view(padded, (height, width), axis=(1, 2))
    crops = windows[np.arange(num), offsets[:, 0], offsets[:, 1]]  # (N, C, H, W)
    out = np.ascontiguousarray(crops.transpose(0, 2, 3, 1))
    out[flips] = out[flips][:, :, ::-1, :]
    return out


# ================================================================================================
# Deterministic batching and worker partitions (the Hessian operator's data)
# ================================================================================================
def fixed_batches(
    x: np.ndarray, y: np.ndarray, batch_size: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cut a dataset into consecutive batches, in the original order, without shuffling.

    Batch ``j`` holds examples ``j * batch_size .. (j + 1) * batch_size - 1``; the last batch is
    smaller when N is not a multiple of ``batch_size``. The batches are views (numpy slices).
    A fixed batching makes the Hessian a fixed function: with batch norm in ``train`` mode the
    loss depends on which examples share a batch.

    Returns:
        list of ``ceil(N / batch_size)`` pairs ``(x_batch, y_batch)``.
    """
    _check_same_length(x, y)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size must be an integer, got {batch_size!r}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    if len(x) == 0:
        raise ValueError("cannot batch an empty dataset")
    return [(x[start:start + batch_size], y[start:start + batch_size])
            for start in range(0, len(x), batch_size)]


def worker_batch_indices(num_batches: int, worker: int, num_workers: int) -> list[int]:
    """Indices of the batches that ``worker`` evaluates: ``j`` with ``j % num_workers == worker``.

    The data are partitioned by *whole batches*, never by records. The paper code
    (``--partition_data_per_worker``) gave record ``i`` to worker ``i mod W`` and then batched each
    worker's records, so the examples that share a batch -- and with them the batch-norm batch
    statistics, hence the loss and its Hessian -- changed with the number of workers W. Assigning
    fixed batch ``j`` to worker ``j mod W`` keeps every batch intact, so the summed full-data
    Hessian is the same function for any W (equal to the one-worker result to float tolerance).

    Returns:
        increasing list; over ``worker = 0 .. num_workers - 1`` the lists partition
        ``range(num_batches)`` (a worker gets none when ``worker >= num_batches``).
    """
    if num_batches < 0:
        raise ValueError(f"num_batches must be >= 0, got {num_batches}")
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if not 0 <= worker < num_workers:
        raise ValueError(
            f"worker must satisfy 0 <= worker < num_workers={num_workers}, got {worker}")
    return list(range(worker, num_batches, num_workers))


def worker_batches(batches: list, worker: int, num_workers: int) -> list:
    """The batches of :func:`fixed_batches` that ``worker`` evaluates (see
    :func:`worker_batch_indices`), in their original order."""
    return [batches[j] for j in worker_batch_indices(len(batches), worker, num_workers)]


def check_examples(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``x`` (N, ...) and ``y`` (N, ...) as arrays, checked to have one row per example each."""
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim < 1 or y.ndim < 1:
        raise ValueError(f"x and y need one row per example, got shapes {x.shape} and {y.shape}")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)} (shapes {x.shape} and {y.shape})")
    return x, y


def _check_same_length(x, y) -> None:
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")


# ================================================================================================
# Built-in data factories (``data.factory: digits | synthetic | cifar10``)
# ================================================================================================
# Each returns ((x_train, y_train), (x_test, y_test)), the keras.datasets convention that a
# user's own data factory follows too (hessflow.factories.load_data).
def digits(test_fraction: float = 0.2, seed: int = 0):
    """scikit-learn's digits (:func:`load_digits`), split by :func:`train_test_split` (stratified).

    ``seed`` is the run seed (hessflow passes it): it fixes the split.
    """
    images, labels = load_digits()
    return train_test_split(images, labels, test_fraction, seed=seed)


def synthetic(num_examples: int = 2000, image_shape=(32, 32, 3), num_classes: int = 10,
              test_fraction: float = 0.2, seed: int = 0):
    """:func:`synthetic_dataset` of ``num_examples`` images, split by :func:`train_test_split`."""
    images, labels = synthetic_dataset(num_examples, tuple(image_shape), num_classes, seed=seed)
    return train_test_split(images, labels, test_fraction, seed=seed)


def cifar10(archive: str | os.PathLike, archive_sha256: str | None = None):
    """CIFAR-10 from its binary archive (the workflow's download rule passes its path).

    The archive's sha256 is checked first against ``archive_sha256`` (the config's
    ``data.cifar10.sha256``; default: the published archive's,
    :data:`hessflow.download.CIFAR10_SHA256`), so that a file placed by hand, which the download
    rule never saw, is verified too (:func:`hessflow.download.verify_archive` raises
    ``ChecksumError`` naming the file and both hashes). It is then unpacked into a temporary
    folder beside it, read, and the folder removed.
    """
    import tempfile

    from hessflow.download import CIFAR10_SHA256, extract_cifar10, verify_archive

    archive = Path(archive)
    verify_archive(archive, archive_sha256 or CIFAR10_SHA256)
    with tempfile.TemporaryDirectory(prefix=".cifar10-", dir=archive.parent) as scratch:
        folder = extract_cifar10(archive, scratch)
        return load_cifar10(folder, "train"), load_cifar10(folder, "test")


# ================================================================================================
# Network inputs and the data card
# ================================================================================================
PREPROCESS_CHOICES = ("auto", "standardize_per_image", "none")


def is_image_batch(x: np.ndarray) -> bool:
    """Whether ``x`` looks like raw images: (N, H, W, C) of an unsigned integer type."""
    return x.ndim == 4 and np.issubdtype(x.dtype, np.unsignedinteger)


def resolve_preprocess(preprocess: str, x_example_batch: np.ndarray):
    """The function ``data.preprocess`` names, as ``(x, dtype) -> network inputs``.

    ``standardize_per_image`` (:func:`standardize_per_image`, the paper's), ``none`` (floats
    cast to ``dtype``, integers such as token ids kept), ``auto`` (standardize raw uint8 images
    (N, H, W, C), else none), or ``"module:function"`` called as ``function(x, dtype)`` with
    ``dtype`` the compute dtype name ("float32" / "float64").
    """
    if preprocess == "auto":
        preprocess = "standardize_per_image" if is_image_batch(x_example_batch) else "none"
    if preprocess == "standardize_per_image":
        if np.asarray(x_example_batch).ndim != 4:
            raise ValueError(
                f"config data.preprocess: standardize_per_image needs images (N, H, W, C), but x has shape "
                f"{np.asarray(x_example_batch).shape}; use data.preprocess: none (or auto)"
            )
        return lambda x, dtype: standardize_per_image(x, dtype=np.dtype(dtype))
    if preprocess == "none":
        return _cast_floating
    from hessflow.factories import import_object

    function = import_object(preprocess, "data.preprocess")
    return lambda x, dtype: np.asarray(function(x, str(np.dtype(dtype))))


def _cast_floating(x: np.ndarray, dtype) -> np.ndarray:
    x = np.asarray(x)
    return x.astype(dtype) if np.issubdtype(x.dtype, np.floating) or x.dtype == bool else x


def data_card(train, test, *, source: dict) -> dict:
    """The data card of a prepared data set: what every later job builds the model from.

    Args:
        train, test: ``(x, y)`` pairs as the data factory returned them.
        source: the factory, its options and preprocessing (and any provenance to record).

    Returns:
        a JSON-able dict: ``task`` (``classification`` for integer labels, else ``regression``),
        ``input_shape`` (x's example shape), ``num_classes`` (max label + 1 over both splits, or
        None), ``output_shape`` (``[num_classes]``, or y's example shape, ``[1]`` for (N,) targets),
        dtypes and shapes of every array, example counts, class counts, and a sha256 of each array
        (over its dtype, shape and bytes).
    """
    (x_train, y_train), (x_test, y_test) = train, test
    classification = np.issubdtype(y_train.dtype, np.integer) and y_train.ndim == 1
    card = {**source, "task": "classification" if classification else "regression"}
    if classification:
        lowest = int(min(y_train.min(), y_test.min()))
        if lowest < 0:
            raise ValueError(f"data: integer labels must be class indices >= 0, found {lowest}")
        num_classes = int(max(y_train.max(), y_test.max())) + 1
        card.update(num_classes=num_classes, output_shape=[num_classes],
                    train_class_counts=np.bincount(y_train, minlength=num_classes).tolist(),
                    test_class_counts=np.bincount(y_test, minlength=num_classes).tolist())
    else:
        card.update(num_classes=None, output_shape=list(y_train.shape[1:]) or [1])
    card.update(input_shape=list(x_train.shape[1:]), num_train=int(len(x_train)), num_test=int(len(x_test)))
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    card["arrays"] = {}
    for name, array in arrays.items():
        card["arrays"][name] = {"shape": list(array.shape), "dtype": str(array.dtype), "sha256": array_sha256(array)}
    card["x_dtype"] = str(x_train.dtype)
    if is_image_batch(x_train):
        card["pixel_range"] = [int(x_train.min()), int(x_train.max())]
    return card
