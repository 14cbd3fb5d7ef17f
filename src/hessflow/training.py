"""The training loop: minibatch SGD with momentum on a run's objective, checkpoints at set steps.

This is what the workflow's ``train`` rule runs (its script only reads config and writes files).
It reproduces the paper code's CIFAR-10 recipe with Keras 3 pieces, for any model, data and loss:

- **Objective** (the function whose Hessian the rest of hessflow studies,
  :mod:`hessflow.objectives`)::

      L(theta) = mean_i loss(f(x_i; theta), y_i) + (weight_decay / 2) * sum_k ||kernel_k||^2

  with the configured per-example loss (default: softmax cross-entropy on the model's logits), and
  k over the conv/dense kernels that :func:`hessflow.models.decayed_variable_mask` marks (the paper
  code's ``weight_decay * tf.nn.l2_loss(kernel)``; the layers carry no ``kernel_regularizer``).
- **Optimizer**: ``keras.optimizers.SGD`` with heavy-ball momentum (not Nesterov) and a
  piecewise-constant learning rate (:func:`hessflow.schedule.learning_rate_schedule`; the paper:
  0.1, cut tenfold at steps 33,000 and 66,000). Keras's momentum form ``m <- mu m - lr g;
  w <- w + m`` equals the paper code's ``tf.train.MomentumOptimizer`` (``a <- mu a + g;
  w <- w - lr a``) while the rate is constant; right after a cut the two differ (Keras damps the
  velocity built up at the old rate over a few steps, TF1 rescaled it at once). Keras keeps the
  rate in a float32 variable, so a float64 model is updated with the float32-rounded rate (use
  e.g. 0.25, not 0.3, where an exact float64 update matters).
- **Input pipeline** per minibatch, on the data as the data factory returned them (e.g. raw
  ``uint8`` pixels, as the paper's CIFAR pipeline): optional random pad-crop-flip for images
  (:func:`hessflow.data.augment_pad_crop_flip`), then the configured preprocessing
  (:func:`hessflow.data.resolve_preprocess`; for raw images by default per-image standardization).
- **Batches**: each epoch is a fresh seeded permutation of the training set cut into
  ``floor(N / batch_size)`` minibatches of exactly ``batch_size`` examples; the last
  ``N mod batch_size`` examples of the permutation are dropped for that epoch (a different set each
  epoch). Every minibatch thus has the same size, so batch-norm statistics are always over
  ``batch_size`` examples, and the traced step is reused for every step.
- **Batch norm and dropout**: ``model(x, training=True)`` in the training step: batch statistics
  in the forward pass, moving statistics updated (momentum as built into the model), dropout on.

Step numbering: step ``s`` means "after ``s`` parameter updates"; step 0 is the initial weights.
A checkpoint for step ``s`` holds the weights after ``s`` updates (moving statistics included).

Determinism: on CPU, the same seed, data, model initialization and arguments give bit-identical
weights (the minibatch order and the augmentation come only from numpy generators derived from
``seed``; TensorFlow's CPU kernels are deterministic for a fixed thread configuration). GPU
kernels may not be bit-reproducible unless ``tf.config.experimental.enable_op_determinism()`` is
called by the user.

The schedule, checkpoints and evaluation live in :mod:`hessflow.schedule`,
:mod:`hessflow.checkpoints` and :mod:`hessflow.evaluation`; they are re-exported here.
"""

from __future__ import annotations

import math
import numbers
import os
import time
from collections.abc import Callable, Iterator, Sequence

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from hessflow import data
from hessflow.checkpoints import (
    WEIGHTS_SUFFIX,
    check_checkpoint_steps,
    checkpoint_file,
    count_values,
    load_checkpoint,
    save_checkpoint,
    weights_checksum,
)
from hessflow.data import check_examples
from hessflow.evaluation import evaluate, is_classification
from hessflow.models import compute_dtype, decayed_variable_mask
from hessflow.objectives import DEFAULT_LOSS, make_loss, per_example_loss
from hessflow.sanity import DIVERGENCE_FACTOR, diverged, non_negative_int
from hessflow.schedule import learning_rate_schedule, rate_of_update

__all__ = [
    "HISTORY_COLUMNS",
    "WEIGHTS_SUFFIX",
    "count_values",
    "evaluate",
    "learning_rate_schedule",
    "load_checkpoint",
    "save_checkpoint",
    "train",
    "weights_checksum",
]

#: ``data_loss`` is the mean per-example loss alone, ``loss`` adds the weight-decay term;
#: ``accuracy`` is NaN unless the task is classification (integer labels).
HISTORY_COLUMNS = ("step", "loss", "data_loss", "accuracy", "learning_rate")


# ================================================================================================
# Objective and input pipeline
# ================================================================================================
def weight_penalty(decayed_variables, weight_decay: float, dtype):
    """(weight_decay / 2) * sum of squared entries of the decayed variables (a scalar tensor)."""
    if weight_decay == 0.0 or not decayed_variables:
        return tf.constant(0.0, dtype)
    squares = [tf.reduce_sum(tf.square(tf.cast(v, dtype))) for v in decayed_variables]
    # tf.constant with the dtype, not tf.cast: tf.cast of a Python float rounds it to float32
    # first, which would perturb a float64 (validation) objective at the 1e-9 level.
    return tf.constant(0.5 * weight_decay, dtype) * tf.add_n(squares)


def _training_minibatches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    augment: bool,
    seed: int,
    prepare: Callable[[np.ndarray], np.ndarray],
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless stream of prepared minibatches: (batch_size, ...) network inputs, (batch_size, ...) y.

    Order: epoch ``e`` is the ``e``-th permutation drawn from ``np.random.default_rng(seed)``,
    cut into ``floor(N / batch_size)`` consecutive minibatches (remainder dropped). Augmentation
    draws from its own generator (derived from the same seed), so switching it on or off does not
    change which examples share a minibatch.
    """
    order_rng = np.random.default_rng(seed)
    augment_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
    batches_per_epoch = len(x) // batch_size
    while True:
        permutation = order_rng.permutation(len(x))
        for j in range(batches_per_epoch):
            index = permutation[j * batch_size:(j + 1) * batch_size]
            raw = x[index]
            if augment:
                raw = data.augment_pad_crop_flip(raw, augment_rng)
            yield prepare(raw), y[index]


def _make_train_step(model: keras.Model, optimizer, loss, weight_decay: float, x_spec, y_spec,
                     classification: bool):
    """One SGD update as a ``tf.function`` traced once (``None`` batch dimension in its signature).

    ``train_step(x, y)`` applies one update and returns ``(objective, mean data loss, number
    correct)`` of the minibatch (correct is 0 unless ``classification``), all evaluated at the
    weights *before* the update (the forward pass that gives the gradient).
    """
    mask = decayed_variable_mask(model)
    trainable = model.trainable_variables
    decayed = [v for v, is_decayed in zip(trainable, mask) if is_decayed]
    per_example = per_example_loss(loss)

    @tf.function(input_signature=[x_spec, y_spec])
    def train_step(x, y):
        with tf.GradientTape() as tape:
            outputs = model(x, training=True)  # batch statistics; moving statistics updated
            data_loss = tf.reduce_mean(tf.cast(per_example(y, outputs), trainable[0].dtype))
            objective = data_loss + weight_penalty(decayed, weight_decay, data_loss.dtype)
        gradients = tape.gradient(objective, trainable)
        optimizer.apply_gradients(zip(gradients, trainable))
        if classification:
            correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(outputs, axis=-1), tf.cast(y, tf.int64)), tf.int64))
        else:
            correct = tf.constant(0, tf.int64)
        return objective, data_loss, correct

    return train_step


def _format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def _raise_if_not_finite(value: float, step: int, learning_rate: float, what: str) -> None:
    if not math.isfinite(value):
        raise FloatingPointError(
            f"training diverged: {what} is {value} at step {step} (weights after {step} updates, "
            f"learning rate {learning_rate:g}); try a lower learning rate (or more warm-up, "
            "or less weight decay)")


def train(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    num_steps: int,
    batch_size: int,
    learning_rate: float,
    momentum: float = 0.9,
    lr_boundaries: Sequence[int] = (),
    lr_values: Sequence[float] | None = None,
    lr_decay_factor: float = 0.1,
    weight_decay: float = 0.0,
    augment: bool = False,
    checkpoint_steps: Sequence[int] = (),
    checkpoint_path: Callable[[int], str | os.PathLike] | None = None,
    seed: int = 0,
    log_every: int = 100,
    log: Callable[[str], None] | None = print,
    loss=None,
    preprocess: str = "auto",
) -> pd.DataFrame:
    """Train ``model`` in place with minibatch SGD + momentum on the objective of this module.

    Args:
        model: Keras model, network inputs (B, ...) -> outputs the loss takes; trained in place.
        x: (N, ...) examples as the data factory returned them (e.g. raw ``uint8`` pixels
            (N, H, W, C)); ``preprocess`` turns each minibatch into network inputs here (after
            augmentation), so do not standardize images beforehand.
        y: (N,) integer class indices 0..K-1, or float targets (N, ...).
        num_steps: number of parameter updates (>= 0).
        batch_size: examples per minibatch, 1..N (see the module docstring: remainder dropped).
        learning_rate, lr_boundaries, lr_values, lr_decay_factor: the piecewise-constant rate, see
            :func:`learning_rate_schedule` (boundaries count updates).
        momentum: heavy-ball momentum coefficient in [0, 1).
        weight_decay: coefficient of (weight_decay / 2) * sum ||kernel||^2 in the objective (>= 0).
        augment: random pad-4 crop + horizontal flip of raw images (N, H, W, C) before
            preprocessing.
        checkpoint_steps: strictly increasing integers in [0, num_steps]; the weights after that
            many updates are saved (0 = the initial weights, before any update).
        checkpoint_path: ``step -> path`` of that step's checkpoint, ending with ``.weights.h5``;
            written atomically (:func:`save_checkpoint`). Required when there are checkpoint steps.
        seed: seeds the minibatch order and the augmentation (not the model's initialization).
        log_every: a history row (and a log line) every ``log_every`` updates and after the last.
        log: receives one progress line per history row
            ("step s/n: loss ..., elapsed m:ss, estimated time left m:ss"), and one warning line
            the first time a row's data loss is over 10 times that of the first minibatch
            (:func:`hessflow.sanity.diverged`); None for silence.
        loss: a Keras loss object or per-example loss function (:mod:`hessflow.objectives`);
            default softmax cross-entropy on logits.
        preprocess: ``data.preprocess`` (:func:`hessflow.data.resolve_preprocess`): ``auto``
            standardizes raw uint8 images per image and passes anything else through.

    Returns:
        history, one row per logged step, columns ``HISTORY_COLUMNS``:
        ``step`` (int, updates done), ``loss`` (objective, including the weight-decay term) and
        ``data_loss`` (the mean per-example loss alone) and ``accuracy`` (fraction; NaN unless the
        labels are integer classes) -- each the mean over the minibatches
        of the updates since the previous row, evaluated in training mode at the weights *before*
        each of those updates, so on augmented minibatches -- and ``learning_rate``, the rate of
        the last update of the row. Empty (with these columns) when ``num_steps == 0``.

    Raises:
        ValueError / TypeError: invalid arguments, before any update or file write.
        FloatingPointError: a minibatch loss or the weights at a checkpoint are NaN or infinite
            (message names the step and suggests a lower learning rate).
    """
    x, y = check_examples(x, y)
    loss = make_loss(**DEFAULT_LOSS) if loss is None else loss
    classification = is_classification(y)
    num_steps = non_negative_int(num_steps, "num_steps")
    batch_size = non_negative_int(batch_size, "batch_size")
    if not 1 <= batch_size <= len(x):
        raise ValueError(
            f"batch_size must be in 1..N = 1..{len(x)} (training examples), got {batch_size}")
    if augment and not data.is_image_batch(x):
        raise ValueError(f"augment (pad-crop-flip) needs raw images (N, H, W, C) of uint8, got x of shape "
                         f"{x.shape} and dtype {x.dtype}; set training.augment: false")
    log_every = non_negative_int(log_every, "log_every")
    if log_every < 1:
        raise ValueError(f"log_every must be >= 1, got {log_every}")
    if not (isinstance(momentum, numbers.Real) and 0.0 <= momentum < 1.0):
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    if not (isinstance(weight_decay, numbers.Real) and math.isfinite(weight_decay)
            and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    schedule = learning_rate_schedule(learning_rate, lr_boundaries, lr_values, lr_decay_factor)
    steps_to_save = check_checkpoint_steps(checkpoint_steps, num_steps)
    if steps_to_save and checkpoint_path is None:
        raise ValueError("checkpoint_path (a function step -> file path) is required with checkpoint_steps")
    # Resolve every checkpoint name now, so a bad name fails before hours of training.
    checkpoint_files = {s: checkpoint_file(checkpoint_path, s) for s in steps_to_save}
    log = log or (lambda line: None)

    dtype = compute_dtype(model)
    to_inputs = data.resolve_preprocess(preprocess, x[:1])

    def prepare(raw):
        return to_inputs(raw, dtype)

    sample = prepare(x[:1])
    x_spec = tf.TensorSpec((None, *sample.shape[1:]), tf.as_dtype(sample.dtype))
    y_spec = tf.TensorSpec((None, *y.shape[1:]), tf.as_dtype(y.dtype))
    optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=float(momentum),
                                     nesterov=False)
    # Build the slot variables outside the traced function, so tracing creates no variables.
    optimizer.build(model.trainable_variables)
    train_step = _make_train_step(model, optimizer, loss, float(weight_decay), x_spec, y_spec, classification)
    minibatches = _training_minibatches(x, y, batch_size, augment, seed, prepare)

    def save_if_requested(step: int) -> None:
        if step in checkpoint_files:
            # The last update's loss was finite, yet it can still have made the weights
            # overflow: never save a diverged checkpoint.
            for variable in model.trainable_variables:
                if not np.all(np.isfinite(variable.numpy())):
                    raise FloatingPointError(
                        f"training diverged: variable {variable.path!r} has NaN or infinite "
                        f"entries at step {step}; try a lower learning rate")
            save_checkpoint(model, checkpoint_files[step])

    save_if_requested(0)
    rows = []
    window = _Window()
    start = time.perf_counter()
    after_first_update = None  # the first update includes tracing: excluded from the rate
    next_batch = next(minibatches) if num_steps else None
    start_loss = None  # data loss of the first minibatch at the initial weights
    warned = False
    for update in range(num_steps):
        x_batch, y_batch = next_batch
        objective, data_loss, correct = train_step(x_batch, y_batch)
        if update + 1 < num_steps:
            next_batch = next(minibatches)  # prepared on the CPU while the device works
        rate = rate_of_update(schedule, update)
        objective = float(objective)
        _raise_if_not_finite(objective, update, rate, "the minibatch loss")
        window.add(objective, float(data_loss), int(correct) if classification else math.nan, len(y_batch))
        if start_loss is None:
            start_loss = float(data_loss)

        step = update + 1
        if step == 1:
            after_first_update = time.perf_counter()
        save_if_requested(step)
        if step % log_every == 0 or step == num_steps:
            row = {"step": step, **window.means(), "learning_rate": rate}
            rows.append(row)
            window = _Window()
            log(_progress_line(row, num_steps, start, after_first_update))
            if not warned and diverged([row["data_loss"]], start=start_loss):
                warned = True
                log(_divergence_warning(row, start_loss))
    return _history_frame(rows)


def _divergence_warning(row: dict, start_loss: float) -> str:
    """The train log's one warning line when the data loss rises DIVERGENCE_FACTOR-fold (hessflow.sanity)."""
    return (f"hessflow: warning: training diverged: data loss {row['data_loss']:.4g} at step {row['step']} is "
            f"over {DIVERGENCE_FACTOR:g} times its value at the start ({start_loss:.4g}, the first minibatch at "
            f"the initial weights); the checkpoints from here on describe a diverged model: lower "
            f"training.learning_rate (summary.csv flags them in its `diverged` column)")


class _Window:
    """Sums over the minibatches since the last history row."""

    def __init__(self):
        self.objective = 0.0
        self.data_loss = 0.0
        self.correct = 0
        self.examples = 0
        self.minibatches = 0

    def add(self, objective: float, data_loss: float, correct: float, examples: int) -> None:
        self.objective += objective
        self.data_loss += data_loss
        self.correct += correct
        self.examples += examples
        self.minibatches += 1

    def means(self) -> dict[str, float]:
        # All minibatches have batch_size examples, so the mean of minibatch means is the mean
        # over examples.
        return {"loss": self.objective / self.minibatches,
                "data_loss": self.data_loss / self.minibatches,
                "accuracy": self.correct / self.examples}


def _progress_line(row: dict, num_steps: int, start: float, after_first_update: float) -> str:
    now = time.perf_counter()
    step = row["step"]
    if step > 1:
        seconds_per_update = (now - after_first_update) / (step - 1)
    else:
        seconds_per_update = now - start
    left = seconds_per_update * (num_steps - step)
    accuracy = "" if math.isnan(row["accuracy"]) else f", accuracy {row['accuracy']:.3f}"
    return (f"step {step}/{num_steps}: loss {row['loss']:.4f}, data loss "
            f"{row['data_loss']:.4f}{accuracy}, "
            f"lr {row['learning_rate']:g}, elapsed {_format_seconds(now - start)}, "
            f"estimated time left {_format_seconds(left)}")


def _history_frame(rows: list[dict]) -> pd.DataFrame:
    history = pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))
    return history.astype({"step": np.int64, "loss": np.float64, "data_loss": np.float64,
                           "accuracy": np.float64, "learning_rate": np.float64})
