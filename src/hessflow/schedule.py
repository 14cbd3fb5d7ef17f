"""The piecewise-constant learning rate of the paper's CIFAR-10 recipe (0.1, cut tenfold at steps
33,000 and 66,000), as a Keras schedule."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import keras
import numpy as np

__all__ = ["learning_rate_schedule", "rate_of_update"]


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


def rate_of_update(schedule, update: int) -> float:
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

