"""Generated token sequences whose class is the marker token that occurs most often.

The task ("marker majority"): token ids ``0 .. num_classes - 1`` are *markers*, the others are
background. In every sequence exactly one marker occurs most often, strictly: the label is that
marker. A model has to count tokens over the whole sequence wherever they sit, which a mean-pooled
transformer learns well above chance (1 / num_classes) within a few hundred SGD steps.

Each example: the winning marker ``c`` (the label) occurs ``w`` times, ``w`` uniform in
``2 .. max_count``; every other marker occurs uniformly ``0 .. w - 1`` times; the remaining
positions hold background tokens drawn uniformly from ``num_classes .. vocab_size - 1``; then the
positions are shuffled. Labels are balanced (class counts differ by at most one) and shuffled.
"""

from __future__ import annotations

import numpy as np

TOKENS_DTYPE = np.int32
LABELS_DTYPE = np.int64


def marker_majority(
    num_train: int = 1600,
    num_test: int = 400,
    length: int = 16,
    vocab_size: int = 32,
    num_classes: int = 4,
    max_count: int = 4,
    seed: int = 0,
):
    """The marker-majority data set, fixed by ``seed`` (a hessflow data factory).

    Args:
        num_train, num_test: examples in each split (each split balanced on its own).
        length: tokens per sequence.
        vocab_size: token ids are ``0 .. vocab_size - 1``; the first ``num_classes`` are markers.
        num_classes: number of markers, hence of classes.
        max_count: the most times the winning marker occurs (>= 2).
        seed: the run seed (hessflow passes it); the same arguments give identical arrays.

    Returns:
        ``((x_train, y_train), (x_test, y_test))``: x ``int32`` (N, length) token ids,
        y ``int64`` (N,) labels in ``0 .. num_classes - 1``.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if vocab_size <= num_classes:
        raise ValueError(
            f"vocab_size ({vocab_size}) must exceed num_classes ({num_classes}): background tokens are needed"
        )
    if max_count < 2:
        raise ValueError(f"max_count must be >= 2, got {max_count}")
    most_markers = max_count + (num_classes - 1) * (max_count - 1)
    if most_markers > length:
        raise ValueError(
            f"length {length} is too short: up to {most_markers} markers (max_count={max_count}, "
            f"num_classes={num_classes}) must fit in a sequence"
        )
    if num_train < 1 or num_test < 1:
        raise ValueError(f"num_train and num_test must be >= 1, got {num_train} and {num_test}")
    rng = np.random.default_rng(seed)
    train = _split(rng, num_train, length, vocab_size, num_classes, max_count)
    test = _split(rng, num_test, length, vocab_size, num_classes, max_count)
    return train, test


def _split(rng, num_examples, length, vocab_size, num_classes, max_count):
    labels = rng.permutation(np.arange(num_examples) % num_classes).astype(LABELS_DTYPE)
    winning = rng.integers(2, max_count + 1, size=num_examples)
    # Other markers: uniform 0 .. w - 1 each (floor of a uniform draw scaled by w).
    counts = np.floor(rng.random((num_examples, num_classes)) * winning[:, None]).astype(np.int64)
    counts[np.arange(num_examples), labels] = winning
    tokens = rng.integers(num_classes, vocab_size, size=(num_examples, length))
    for i in range(num_examples):
        markers = np.repeat(np.arange(num_classes), counts[i])
        tokens[i, : markers.size] = markers
    tokens = rng.permuted(tokens, axis=1)
    return tokens.astype(TOKENS_DTYPE), labels


def majority_marker(tokens: np.ndarray, num_classes: int = 4) -> np.ndarray:
    """The label rule written out: the marker with the most occurrences in each row.

    ``tokens``: (N, length) ids → (N,) ``int64``. For the generated data it is strict (no ties).
    """
    counts = (np.asarray(tokens)[:, :, None] == np.arange(num_classes)).sum(axis=1)
    return counts.argmax(axis=1).astype(LABELS_DTYPE)
