"""Checkpoints: Keras weight files written atomically, checked before loading, hashed for provenance.

Step numbering: the checkpoint of step ``s`` holds the weights after ``s`` updates (step 0: the
initialization), moving batch-norm statistics included.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np

from hessflow.artifacts import atomic_write

__all__ = [
    "WEIGHTS_SUFFIX",
    "check_checkpoint_steps",
    "checkpoint_file",
    "count_values",
    "load_checkpoint",
    "save_checkpoint",
    "weights_checksum",
]

WEIGHTS_SUFFIX = ".weights.h5"  # Keras 3 ``save_weights`` refuses any other file name ending


def check_checkpoint_steps(checkpoint_steps: Sequence[int], num_steps: int) -> list[int]:
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


def checkpoint_file(checkpoint_path: Callable[[int], str | os.PathLike], step: int) -> Path:
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
        if problem.startswith("it is not a readable HDF5"):
            raise ValueError(
                f"checkpoint {str(path)!r} cannot be read: {problem}; the file is truncated or corrupt: "
                "delete it, and Snakemake reruns the train rule that writes it")
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

