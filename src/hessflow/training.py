"""Training loop, checkpoints at configured steps, test evaluation.

This is what the workflow's ``train`` and ``evaluate`` rules run (their scripts only read config
and write files). It reproduces the paper code's CIFAR-10 recipe with Keras 3 pieces:

- **Objective** (the function whose Hessian the rest of hessflow studies)::

      L(theta) = mean_i CE(f(x_i; theta), y_i) + (weight_decay / 2) * sum_k ||kernel_k||^2

  with CE the softmax cross-entropy on the model's logits, and k over the conv/dense kernels that
  :func:`hessflow.models.decayed_variable_mask` marks (the paper code's
  ``weight_decay * tf.nn.l2_loss(kernel)``; the layers carry no ``kernel_regularizer``).
- **Optimizer**: ``keras.optimizers.SGD`` with heavy-ball momentum (not Nesterov) and a
  piecewise-constant learning rate (:func:`learning_rate_schedule`; the paper: 0.1, cut tenfold at
  steps 33,000 and 66,000). Keras's momentum form ``m <- mu m - lr g; w <- w + m`` equals the paper
  code's ``tf.train.MomentumOptimizer`` (``a <- mu a + g; w <- w - lr a``) while the rate is
  constant; right after a cut the two differ (Keras damps the velocity built up at the old rate
  over a few steps, TF1 rescaled it at once). Keras keeps the rate in a float32 variable, so
  a float64 model is updated with the float32-rounded rate (use e.g. 0.25, not 0.3, where an
  exact float64 update matters).
- **Input pipeline** per minibatch, on raw (e.g. ``uint8``) pixels as the paper's CIFAR pipeline:
  optional random pad-crop-flip (:func:`hessflow.data.augment_pad_crop_flip`), then per-image
  standardization (:func:`hessflow.data.standardize_per_image`).
- **Batches**: each epoch is a fresh seeded permutation of the training set cut into
  ``floor(N / batch_size)`` minibatches of exactly ``batch_size`` examples; the last
  ``N mod batch_size`` examples of the permutation are dropped for that epoch (a different set each
  epoch). Every minibatch thus has the same size, so batch-norm statistics are always over
  ``batch_size`` examples, and the traced step is reused for every step.
- **Batch norm**: ``model(x, training=True)`` in the training step: batch statistics in the
  forward pass, moving statistics updated (momentum as built into the model).

Step numbering: step ``s`` means "after ``s`` parameter updates"; step 0 is the initial weights.
A checkpoint for step ``s`` holds the weights after ``s`` updates (moving statistics included).

Determinism: on CPU, the same seed, data, model initialization and arguments give bit-identical
weights (the minibatch order and the augmentation come only from numpy generators derived from
``seed``; TensorFlow's CPU kernels are deterministic for a fixed thread configuration). GPU
kernels may not be bit-reproducible unless ``tf.config.experimental.enable_op_determinism()`` is
called by the user.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import os
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from hessflow import data
from hessflow.artifacts import atomic_write
from hessflow.models import decayed_variable_mask

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

HISTORY_COLUMNS = ("step", "loss", "cross_entropy", "accuracy", "learning_rate")
WEIGHTS_SUFFIX = ".weights.h5"  # Keras 3 ``save_weights`` refuses any other file name ending


# ================================================================================================
# Learning-rate schedule
# ================================================================================================
def learning_rate_schedule(
    learning_rate: float,
    lr_boundaries: Sequence[int] = (),
    lr_values: Sequence[float] | None = None,
    lr_decay_factor: float = 0.1,
) -> float | keras.optimizers.schedules.PiecewiseConstantDecay:
    """The piecewise-constant learning rate as a function of the update index.

    With boundaries ``b_1 < b_2 < ... < b_K`` (update indices) and values ``v_0 .. v_K``, update
    ``t`` (0-based: the update that takes the weights from step ``t`` to step ``t + 1``) uses
    ``v_0`` while ``t <= b_1``, ``v_k`` while ``b_k < t <= b_{k+1}``, and ``v_K`` after ``b_K``
    (the semantics of ``keras.optimizers.schedules.PiecewiseConstantDecay`` and of the paper
    code's ``tf.train.piecewise_constant``).

    Args:
        learning_rate: ``v_0``, the initial rate (> 0).
        lr_boundaries: increasing positive integers ``b_k``; empty for a constant rate.
        lr_values: all ``K + 1`` values; when given, ``lr_values[0]`` must equal
            ``learning_rate`` (so a config cannot say two different things).
        lr_decay_factor: used when ``lr_values`` is None: ``v_k = learning_rate * factor**k``
            (0.1 cuts the rate tenfold at each boundary).

    Returns:
        the float ``learning_rate`` when there are no boundaries, else a ``PiecewiseConstantDecay``.
    """
    learning_rate = _positive_finite(learning_rate, "learning_rate")
    boundaries = _check_boundaries(lr_boundaries)
    if lr_values is None:
        lr_decay_factor = _positive_finite(lr_decay_factor, "lr_decay_factor")
        values = [learning_rate * lr_decay_factor**k for k in range(len(boundaries) + 1)]
    else:
        values = [_positive_finite(v, "lr_values entry") for v in lr_values]
        if len(values) != len(boundaries) + 1:
            raise ValueError(
                f"lr_values needs one more entry than lr_boundaries: got {len(values)} values "
                f"{list(lr_values)} for {len(boundaries)} boundaries {boundaries}")
        if values[0] != learning_rate:
            raise ValueError(
                f"lr_values[0] = {values[0]!r} differs from learning_rate = {learning_rate!r}; "
                "they name the same initial rate: make them equal")
    if not boundaries:
        return learning_rate
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


def _rate_of_update(schedule, update: int) -> float:
    """The rate the optimizer uses for 0-based update ``update``."""
    if callable(schedule):
        return float(schedule(update))
    return float(schedule)


def _positive_finite(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_boundaries(lr_boundaries: Sequence[int]) -> list[int]:
    boundaries = []
    for b in lr_boundaries:
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1:
            raise ValueError(f"lr_boundaries must be positive integers (update steps), got {b!r}")
        if boundaries and b <= boundaries[-1]:
            raise ValueError(
                f"lr_boundaries must be strictly increasing, got {b} after {boundaries[-1]} "
                f"in {list(lr_boundaries)}")
        boundaries.append(int(b))
    return boundaries


# ================================================================================================
# Objective and input pipeline
# ================================================================================================
def _input_dtype(model: keras.Model) -> tf.DType:
    """Dtype the model's input expects (its ``Input`` dtype; else its variables' dtype)."""
    inputs = getattr(model, "inputs", None)
    if inputs:
        return tf.as_dtype(inputs[0].dtype)
    return tf.as_dtype(model.trainable_variables[0].dtype)


def _network_inputs(raw_images: np.ndarray, dtype: tf.DType) -> np.ndarray:
    """Raw pixels (B, H, W, C) -> standardized network inputs (B, H, W, C) of ``dtype``."""
    return data.standardize_per_image(raw_images, dtype=dtype.as_numpy_dtype)


def _cross_entropy_per_example(labels, logits):
    """Softmax cross-entropy (nats) of logits (B, K) against int labels (B,), shape (B,)."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)


def _weight_penalty(decayed_variables, weight_decay: float, dtype: tf.DType):
    """(weight_decay / 2) * sum of squared entries of the decayed variables (a scalar tensor)."""
    if weight_decay == 0.0 or not decayed_variables:
        return tf.constant(0.0, dtype)
    squares = [tf.reduce_sum(tf.square(tf.cast(v, dtype))) for v in decayed_variables]
    # tf.constant with the dtype, not tf.cast: tf.cast of a Python float rounds it to float32
    # first, which would perturb a float64 (validation) objective at the 1e-9 level.
    return tf.constant(0.5 * weight_decay, dtype) * tf.add_n(squares)


def _check_dataset(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}")
    if labels.shape != (len(images),):
        raise ValueError(
            f"labels must have shape (N,) = ({len(images)},) to match images, got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integer class indices, got dtype {labels.dtype}")
    return images, labels.astype(np.int64, copy=False)


def _training_minibatches(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    augment: bool,
    seed: int,
    dtype: tf.DType,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless stream of prepared minibatches: (batch_size, H, W, C) ``dtype``, (batch_size,) int64.

    Order: epoch ``e`` is the ``e``-th permutation drawn from ``np.random.default_rng(seed)``,
    cut into ``floor(N / batch_size)`` consecutive minibatches (remainder dropped). Augmentation
    draws from its own generator (derived from the same seed), so switching it on or off does not
    change which examples share a minibatch.
    """
    order_rng = np.random.default_rng(seed)
    augment_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
    batches_per_epoch = len(images) // batch_size
    while True:
        permutation = order_rng.permutation(len(images))
        for j in range(batches_per_epoch):
            index = permutation[j * batch_size:(j + 1) * batch_size]
            raw = images[index]
            if augment:
                raw = data.augment_pad_crop_flip(raw, augment_rng)
            yield _network_inputs(raw, dtype), labels[index]


def _make_train_step(model: keras.Model, optimizer, weight_decay: float, dtype: tf.DType,
                     image_shape: tuple[int, ...]):
    """One SGD update as a ``tf.function`` traced once (``None`` batch dimension in its signature).

    ``train_step(x, y)`` with x (B, H, W, C) ``dtype`` and y (B,) int64 applies one update and
    returns ``(objective, mean cross-entropy, number correct)`` of the minibatch, all evaluated at
    the weights *before* the update (the forward pass that gives the gradient).
    """
    mask = decayed_variable_mask(model)
    trainable = model.trainable_variables
    decayed = [v for v, is_decayed in zip(trainable, mask) if is_decayed]
    signature = [tf.TensorSpec((None, *image_shape), dtype), tf.TensorSpec((None,), tf.int64)]

    @tf.function(input_signature=signature)
    def train_step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)  # batch statistics; moving statistics updated
            cross_entropy = tf.reduce_mean(_cross_entropy_per_example(y, logits))
            objective = cross_entropy + _weight_penalty(decayed, weight_decay, cross_entropy.dtype)
        gradients = tape.gradient(objective, trainable)
        optimizer.apply_gradients(zip(gradients, trainable))
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, axis=-1), y), tf.int64))
        return objective, cross_entropy, correct

    return train_step


# ================================================================================================
# Checkpoints
# ================================================================================================
def _check_checkpoint_steps(checkpoint_steps: Sequence[int], num_steps: int) -> list[int]:
    """Validated checkpoint steps: integers in [0, num_steps], strictly increasing."""
    steps = []
    for s in checkpoint_steps:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
            raise ValueError(f"checkpoint_steps must be integers, got {s!r} in {list(checkpoint_steps)}")
        if not 0 <= s <= num_steps:
            raise ValueError(
                f"checkpoint step {s} is outside 0..num_steps={num_steps} "
                f"(step 0 = initial weights, step {num_steps} = final weights)")
        if steps and s <= steps[-1]:
            raise ValueError(
                f"checkpoint_steps must be sorted without repeats, got {s} after {steps[-1]} "
                f"in {list(checkpoint_steps)}")
        steps.append(int(s))
    return steps


def _checkpoint_file(checkpoint_path: Callable[[int], str | os.PathLike], step: int) -> Path:
    path = Path(checkpoint_path(step))
    if not path.name.endswith(WEIGHTS_SUFFIX) or path.name == WEIGHTS_SUFFIX:
        raise ValueError(
            f"checkpoint_path({step}) = {str(path)!r}: Keras 3 weight files must be named "
            f"'<name>{WEIGHTS_SUFFIX}'")
    return path


def save_checkpoint(model: keras.Model, path: str | os.PathLike) -> Path:
    """Atomically write ``model.save_weights`` to ``path`` (which must end with ``.weights.h5``).

    The weights go to a hidden temporary file in the same folder (its name also ends with
    ``.weights.h5``, as Keras requires), are flushed to disk, and are renamed onto ``path`` with
    ``os.replace``: a reader (or Snakemake) never sees a half-written checkpoint. On failure the
    temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    if not path.name.endswith(WEIGHTS_SUFFIX) or path.name == WEIGHTS_SUFFIX:
        raise ValueError(f"checkpoint file name must end with {WEIGHTS_SUFFIX!r}, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, suffix=WEIGHTS_SUFFIX) as tmp:
        model.save_weights(tmp)
    return path


def load_checkpoint(model: keras.Model, path: str | os.PathLike) -> None:
    """Load a checkpoint written by :func:`train` into ``model`` (all weights, moving statistics
    included).

    The file's variables are checked against the model's before anything is assigned (count and
    shapes); if Keras still fails to load, the model's previous weights are restored, so a failed
    load never leaves a half-loaded model.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message says which rule writes it).
        ValueError: the file's variables do not fit ``model`` (message names the file, the model
            and the mismatch).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint file {str(path)!r} not found: checkpoints are written by the 'train' rule "
            "(hessflow.training.train) only for the steps in the config's checkpoint steps; check "
            "that this step is listed there and that training ran to it")
    problem = _checkpoint_mismatch(model, path)
    if problem is None:
        saved = [v.numpy() for v in model.weights]
        try:
            model.load_weights(path)
        except Exception as error:  # Keras reports mismatches as various exception types
            for variable, value in zip(model.weights, saved):
                variable.assign(value)
            problem = f"Keras could not load it ({type(error).__name__}: {error})"
    if problem is not None:
        raise ValueError(
            f"checkpoint {str(path)!r} does not match model {model.name!r} "
            f"({len(model.weights)} variables, {count_values(model):,} values): {problem}. "
            "Was it trained with a different model config?")


def count_values(model: keras.Model) -> int:
    """Number of scalar values in all of the model's variables (trainable and not)."""
    return sum(math.prod(v.shape) for v in model.weights)


def _checkpoint_mismatch(model: keras.Model, path: Path) -> str | None:
    """Compare the file's variable shapes with the model's; a description of the first
    difference, or None when the count and the multiset of shapes agree."""
    import h5py  # a Keras dependency; imported here because only this check needs it

    file_shapes = []
    try:
        with h5py.File(path, "r") as f:
            f.visititems(lambda _, obj: file_shapes.append(tuple(obj.shape))
                         if isinstance(obj, h5py.Dataset) else None)
    except OSError as error:
        return f"it is not a readable HDF5 weights file ({error})"
    model_shapes = [tuple(v.shape) for v in model.weights]
    if len(file_shapes) != len(model_shapes):
        return f"the file has {len(file_shapes)} variables, the model {len(model_shapes)}"
    if sorted(file_shapes) != sorted(model_shapes):
        only_file = sorted(set(file_shapes) - set(model_shapes)) or sorted(file_shapes)
        only_model = sorted(set(model_shapes) - set(file_shapes)) or sorted(model_shapes)
        return (f"shape mismatch: the file has variables of shapes {only_file[:4]} where the "
                f"model has {only_model[:4]}")
    return None


def weights_checksum(model: keras.Model) -> str:
    """sha256 (64 lowercase hex digits) of all of ``model.weights`` (trainable and non-trainable,
    in ``model.weights`` order), each as its C-order little-endian bytes; for provenance records.
    Equal weights give equal checksums on any machine."""
    digest = hashlib.sha256()
    for variable in model.weights:
        value = np.asarray(variable.numpy())
        digest.update(np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<")).tobytes())
    return digest.hexdigest()


# ================================================================================================
# Training
# ================================================================================================
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
    images: np.ndarray,
    labels: np.ndarray,
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
) -> pd.DataFrame:
    """Train ``model`` in place with minibatch SGD + momentum on the objective of this module.

    Args:
        model: Keras model, raw-image batches (B, H, W, C) -> logits (B, K); trained in place.
        images: raw pixels, (N, H, W, C) (e.g. ``uint8`` 0..255); standardized per minibatch
            here (after augmentation), so do not standardize them beforehand.
        labels: (N,) integer class indices 0..K-1.
        num_steps: number of parameter updates (>= 0).
        batch_size: examples per minibatch, 1..N (see the module docstring: remainder dropped).
        learning_rate, lr_boundaries, lr_values, lr_decay_factor: the piecewise-constant rate, see
            :func:`learning_rate_schedule` (boundaries count updates).
        momentum: heavy-ball momentum coefficient in [0, 1).
        weight_decay: coefficient of (weight_decay / 2) * sum ||kernel||^2 in the objective (>= 0).
        augment: random pad-4 crop + horizontal flip of the raw pixels before standardization.
        checkpoint_steps: strictly increasing integers in [0, num_steps]; the weights after that
            many updates are saved (0 = the initial weights, before any update).
        checkpoint_path: ``step -> path`` of that step's checkpoint, ending with ``.weights.h5``;
            written atomically (:func:`save_checkpoint`). Required when there are checkpoint steps.
        seed: seeds the minibatch order and the augmentation (not the model's initialization).
        log_every: a history row (and a log line) every ``log_every`` updates and after the last.
        log: receives one progress line per history row
            ("step s/n: loss ..., elapsed m:ss, estimated time left m:ss"); None for silence.

    Returns:
        history, one row per logged step, columns ``HISTORY_COLUMNS``:
        ``step`` (int, updates done), ``loss`` (objective, including the weight-decay term) and
        ``cross_entropy`` (nats) and ``accuracy`` (fraction) -- each the mean over the minibatches
        of the updates since the previous row, evaluated in training mode at the weights *before*
        each of those updates, so on augmented minibatches -- and ``learning_rate``, the rate of
        the last update of the row. Empty (with these columns) when ``num_steps == 0``.

    Raises:
        ValueError / TypeError: invalid arguments, before any update or file write.
        FloatingPointError: a minibatch loss or the weights at a checkpoint are NaN or infinite
            (message names the step and suggests a lower learning rate).
    """
    images, labels = _check_dataset(images, labels)
    num_steps = _non_negative_int(num_steps, "num_steps")
    batch_size = _non_negative_int(batch_size, "batch_size")
    if not 1 <= batch_size <= len(images):
        raise ValueError(
            f"batch_size must be in 1..N = 1..{len(images)} (training examples), got {batch_size}")
    log_every = _non_negative_int(log_every, "log_every")
    if log_every < 1:
        raise ValueError(f"log_every must be >= 1, got {log_every}")
    if not (isinstance(momentum, numbers.Real) and 0.0 <= momentum < 1.0):
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    if not (isinstance(weight_decay, numbers.Real) and math.isfinite(weight_decay)
            and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    schedule = learning_rate_schedule(learning_rate, lr_boundaries, lr_values, lr_decay_factor)
    steps_to_save = _check_checkpoint_steps(checkpoint_steps, num_steps)
    if steps_to_save and checkpoint_path is None:
        raise ValueError("checkpoint_path (a function step -> file path) is required with checkpoint_steps")
    # Resolve every checkpoint name now, so a bad name fails before hours of training.
    checkpoint_files = {s: _checkpoint_file(checkpoint_path, s) for s in steps_to_save}
    log = log or (lambda line: None)

    dtype = _input_dtype(model)
    optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=float(momentum),
                                     nesterov=False)
    # Build the slot variables outside the traced function, so tracing creates no variables.
    optimizer.build(model.trainable_variables)
    train_step = _make_train_step(model, optimizer, float(weight_decay), dtype, images.shape[1:])
    minibatches = _training_minibatches(images, labels, batch_size, augment, seed, dtype)

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
    for update in range(num_steps):
        x, y = next_batch
        objective, cross_entropy, correct = train_step(x, y)
        if update + 1 < num_steps:
            next_batch = next(minibatches)  # prepared on the CPU while the device works
        rate = _rate_of_update(schedule, update)
        objective = float(objective)
        _raise_if_not_finite(objective, update, rate, "the minibatch loss")
        window.add(objective, float(cross_entropy), int(correct), len(y))

        step = update + 1
        if step == 1:
            after_first_update = time.perf_counter()
        save_if_requested(step)
        if step % log_every == 0 or step == num_steps:
            row = {"step": step, **window.means(), "learning_rate": rate}
            rows.append(row)
            window = _Window()
            log(_progress_line(row, num_steps, start, after_first_update))
    return _history_frame(rows)


class _Window:
    """Sums over the minibatches since the last history row."""

    def __init__(self):
        self.objective = 0.0
        self.cross_entropy = 0.0
        self.correct = 0
        self.examples = 0
        self.minibatches = 0

    def add(self, objective: float, cross_entropy: float, correct: int, examples: int) -> None:
        self.objective += objective
        self.cross_entropy += cross_entropy
        self.correct += correct
        self.examples += examples
        self.minibatches += 1

    def means(self) -> dict[str, float]:
        # All minibatches have batch_size examples, so the mean of minibatch means is the mean
        # over examples.
        return {"loss": self.objective / self.minibatches,
                "cross_entropy": self.cross_entropy / self.minibatches,
                "accuracy": self.correct / self.examples}


def _progress_line(row: dict, num_steps: int, start: float, after_first_update: float) -> str:
    now = time.perf_counter()
    step = row["step"]
    if step > 1:
        seconds_per_update = (now - after_first_update) / (step - 1)
    else:
        seconds_per_update = now - start
    left = seconds_per_update * (num_steps - step)
    return (f"step {step}/{num_steps}: loss {row['loss']:.4f}, cross-entropy "
            f"{row['cross_entropy']:.4f}, accuracy {row['accuracy']:.3f}, "
            f"lr {row['learning_rate']:g}, elapsed {_format_seconds(now - start)}, "
            f"estimated time left {_format_seconds(left)}")


def _history_frame(rows: list[dict]) -> pd.DataFrame:
    history = pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))
    return history.astype({"step": np.int64, "loss": np.float64, "cross_entropy": np.float64,
                           "accuracy": np.float64, "learning_rate": np.float64})


def _non_negative_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


# ================================================================================================
# Evaluation
# ================================================================================================
def evaluate(model: keras.Model, images: np.ndarray, labels: np.ndarray, *,
             batch_size: int) -> dict:
    """Test loss and accuracy of ``model`` on raw images, as the paper's ``cifar_eval``.

    Images are standardized per image (no augmentation) and the model runs in inference mode
    (batch norm uses its moving statistics; they are not changed). Batches are consecutive
    (:func:`hessflow.data.fixed_batches`); per-example cross-entropies are summed in float64 and
    divided by N, so the result is the exact mean over all examples whatever the last batch size.
    The loss is the cross-entropy alone: no weight-decay term (it is a property of the weights,
    not of the test data; the training objective adds it).

    Args:
        model: Keras model, (B, H, W, C) -> logits (B, K).
        images: (N, H, W, C) raw pixels; labels: (N,) integer class indices.
        batch_size: examples per forward pass (memory only: the result does not depend on it).

    Returns:
        ``{"loss": float (mean cross-entropy, nats), "accuracy": float (fraction correct),
        "num_examples": int N}``.
    """
    images, labels = _check_dataset(images, labels)
    batch_size = _non_negative_int(batch_size, "batch_size")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(images) == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    dtype = _input_dtype(model)
    signature = [tf.TensorSpec((None, *images.shape[1:]), dtype), tf.TensorSpec((None,), tf.int64)]

    @tf.function(input_signature=signature)  # one trace for all batches, the last one included
    def batch_sums(x, y):
        logits = model(x, training=False)
        cross_entropy_sum = tf.reduce_sum(tf.cast(_cross_entropy_per_example(y, logits), tf.float64))
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, axis=-1), y), tf.int64))
        return cross_entropy_sum, correct

    total_cross_entropy = 0.0
    total_correct = 0
    for raw, y in data.fixed_batches(images, labels, batch_size):
        cross_entropy_sum, correct = batch_sums(_network_inputs(raw, dtype), y)
        total_cross_entropy += float(cross_entropy_sum)
        total_correct += int(correct)
    return {"loss": total_cross_entropy / len(images),
            "accuracy": total_correct / len(images),
            "num_examples": int(len(images))}
