"""Evaluation of a checkpoint: the mean loss over a data set, and the accuracy where it means one."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from hessflow import data
from hessflow.data import check_examples
from hessflow.models import compute_dtype
from hessflow.objectives import DEFAULT_LOSS, make_loss, per_example_loss
from hessflow.sanity import non_negative_int

__all__ = ["evaluate", "is_classification"]


def is_classification(y: np.ndarray) -> bool:
    """Whether targets ``y`` are class indices: a 1-D integer array (accuracy is then defined)."""
    y = np.asarray(y)
    return y.ndim == 1 and np.issubdtype(y.dtype, np.integer)


def evaluate(model, x: np.ndarray, y: np.ndarray, *, batch_size: int, loss=None,
             preprocess: str = "auto") -> dict:
    """Mean loss (and accuracy, for classification) of ``model`` on a data set, as the paper's
    ``cifar_eval``.

    Inputs are preprocessed (``preprocess``, :func:`hessflow.data.resolve_preprocess`; no
    augmentation) and the model runs in inference mode (batch norm uses its moving statistics,
    which are not changed; dropout off). Batches are consecutive
    (:func:`hessflow.data.fixed_batches`); per-example losses are summed in float64 and divided by
    N, so the result is the exact mean over all examples whatever the last batch size. The loss
    is the data loss alone: no weight-decay term (it is a property of the weights, not of the
    data; the training objective adds it).

    Args:
        model: Keras model, network inputs (B, ...) -> outputs the loss takes.
        x: (N, ...) examples as the data factory returned them; y: (N,) integer classes or float
            targets (N, ...).
        batch_size: examples per forward pass (memory only: the result does not depend on it).
        loss: Keras loss or per-example loss function; default softmax cross-entropy on logits.

    Returns:
        ``{"loss": float (mean per-example loss), "num_examples": int N}``, plus
        ``"accuracy"`` (fraction of argmax outputs equal to the label) for integer labels.
    """
    x, y = check_examples(x, y)
    batch_size = non_negative_int(batch_size, "batch_size")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(x) == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    per_example = per_example_loss(make_loss(**DEFAULT_LOSS) if loss is None else loss)
    classification = is_classification(y)
    dtype = compute_dtype(model)
    to_inputs = data.resolve_preprocess(preprocess, x[:1])
    sample = to_inputs(x[:1], dtype)
    signature = [tf.TensorSpec((None, *sample.shape[1:]), tf.as_dtype(sample.dtype)),
                 tf.TensorSpec((None, *y.shape[1:]), tf.as_dtype(y.dtype))]

    @tf.function(input_signature=signature)  # one trace for all batches, the last one included
    def batch_sums(x_batch, y_batch):
        outputs = model(x_batch, training=False)
        loss_sum = tf.reduce_sum(tf.cast(per_example(y_batch, outputs), tf.float64))
        if classification:
            predicted = tf.argmax(outputs, axis=-1)
            correct = tf.reduce_sum(tf.cast(tf.equal(predicted, tf.cast(y_batch, tf.int64)), tf.int64))
        else:
            correct = tf.constant(0, tf.int64)
        return loss_sum, correct

    total_loss = 0.0
    total_correct = 0
    for raw, y_batch in data.fixed_batches(x, y, batch_size):
        loss_sum, correct = batch_sums(to_inputs(raw, dtype), y_batch)
        total_loss += float(loss_sum)
        total_correct += int(correct)
    result = {"loss": total_loss / len(x), "num_examples": int(len(x))}
    if classification:
        result["accuracy"] = total_correct / len(x)
    return result
