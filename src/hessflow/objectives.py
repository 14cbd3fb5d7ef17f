"""The objective a run trains and analyses: a loss named in the config, per example.

Training, evaluation and the Hessian all use one objective::

    L(θ) = (1/N) Σ_i ℓ(f(x_i; θ), y_i) + (weight_decay / 2) Σ_k ‖θ_k‖²

where ℓ is the configured loss evaluated per example: a Keras loss object's unreduced
``call`` (shape (batch,) or (batch, ...)), its non-batch axes averaged (so a per-token loss of a
sequence model counts each example once, as Keras's ``sum_over_batch_size`` does for examples of
equal size). The penalty runs over the kernels `hessflow.models.decayed_variable_mask` marks.

``loss: {name, options}`` in the config is either a ``keras.losses`` class name
(``SparseCategoricalCrossentropy``, ``MeanSquaredError``, ...; ``options`` are its constructor's
keyword arguments) or ``"module:function"``, a function of the options that returns a
``keras.losses.Loss`` or a callable ``(y_true, y_pred) -> per-example losses``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import keras

from hessflow.factories import FactoryError, call_factory, import_object

__all__ = [
    "DEFAULT_LOSS",
    "check_objective",
    "known_losses",
    "make_loss",
    "per_example_loss",
]

DEFAULT_LOSS = {"name": "SparseCategoricalCrossentropy", "options": {"from_logits": True}}


def known_losses() -> list[str]:
    """The ``keras.losses`` class names ``loss.name`` accepts."""
    names = []
    for name, value in vars(keras.losses).items():
        if (inspect.isclass(value) and issubclass(value, keras.losses.Loss)
                and value is not keras.losses.Loss and name[0].isupper() and "Wrapper" not in name):
            names.append(name)
    return sorted(names)


def make_loss(name: str = DEFAULT_LOSS["name"], options: Mapping[str, Any] | None = None, key: str = "loss"):
    """The loss ``loss.name`` and ``loss.options`` describe.

    Returns:
        a ``keras.losses.Loss`` instance, or the callable a ``"module:function"`` returned.

    Raises:
        FactoryError: an unknown class name (the known ones listed), options the class does not
            take, or a function that returns something that is not a loss.
    """
    options = dict(options or {})
    if ":" in str(name):
        made = call_factory(import_object(name, f"{key}.name"), options, {}, f"{key}.name")
        if not callable(made):
            raise FactoryError(
                f"config {key}.name: {name!r} returned a {type(made).__name__}; return a keras.losses.Loss "
                "or a function (y_true, y_pred) -> per-example losses"
            )
        return made
    known = known_losses()
    if name not in known:
        raise FactoryError(
            f"config {key}.name: unknown loss {name!r}; use a keras.losses class name ({', '.join(known)}) "
            "or 'module:function' returning a loss"
        )
    try:
        return getattr(keras.losses, name)(**options)
    except TypeError as error:
        raise FactoryError(
            f"config {key}.options: keras.losses.{name} does not take {sorted(options)}: {error}"
        ) from None


def per_example_loss(loss) -> Callable:
    """``(y_true, y_pred) -> (batch,)`` per-example losses of a Keras loss or loss function.

    A ``keras.losses.Loss`` contributes its unreduced ``call``; a plain function is used as it is.
    Axes after the first are averaged, so every example weighs the same whatever its shape: the
    same reduction as the Hessian's (`hessflow.kernels.example_losses`).
    """
    from hessflow import kernels

    function = kernels.per_example_loss(loss)

    def per_example(y_true, y_pred):
        values = function(y_true, y_pred)
        return kernels.example_losses(values, values.dtype)

    return per_example


def check_objective(model, loss, x, y, *, key: str = "loss") -> None:
    """Run ``model`` and ``loss`` on a few examples; raise a clear error if they do not fit.

    Checks that the model maps ``x`` (a batch of the data) to outputs the loss accepts together
    with ``y``, that integer labels are in range for the model's outputs, and that the losses are
    finite. Raises ValueError naming both shapes, the label range, or the non-finite value.
    """
    import numpy as np

    outputs = model(x, training=False)
    output_shape = tuple(outputs.shape)
    y = np.asarray(y)
    if np.issubdtype(y.dtype, np.integer) and isinstance(loss, keras.losses.SparseCategoricalCrossentropy):
        classes = output_shape[-1]
        if y.min() < 0 or y.max() >= classes:
            raise ValueError(
                f"labels range over {int(y.min())}..{int(y.max())} but the model outputs {classes} values per "
                f"example (output shape {output_shape}); the model's last layer needs max label + 1 = "
                f"{int(y.max()) + 1} units (use the num_classes hessflow passes to the factory)"
            )
    try:
        values = per_example_loss(loss)(keras.ops.convert_to_tensor(y), outputs)
    except Exception as error:  # noqa: BLE001 - re-raised with both shapes named
        raise ValueError(
            f"config {key}: the loss cannot compare the model's outputs of shape {output_shape} with "
            f"targets of shape {y.shape} ({y.dtype}): {type(error).__name__}: {error}. Choose a loss for "
            "these shapes (integer classes: SparseCategoricalCrossentropy with from_logits; float targets: "
            "MeanSquaredError) or change the model's output layer"
        ) from None
    values = np.asarray(keras.ops.convert_to_numpy(values))
    if values.shape[:1] != (len(y),):
        raise ValueError(
            f"config {key}: the loss returned shape {values.shape} for {len(y)} examples (model outputs "
            f"{output_shape}, targets {y.shape}); it must return one value per example"
        )
    if not np.all(np.isfinite(values)):
        raise ValueError(
            f"config {key}: the loss is not finite on the first examples (outputs {output_shape}, targets "
            f"{y.shape}); check that the model's outputs suit the loss (e.g. from_logits)"
        )
