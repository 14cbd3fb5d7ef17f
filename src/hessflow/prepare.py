"""The prepare_data step: a data factory's arrays, checked, with the data card that describes them.

Pure numpy (plus whatever the data factory imports): the arrays are stored as the factory
returned them, and turned into network inputs later, per minibatch (``data.preprocess``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from hessflow import data
from hessflow.factories import DATA_ALIASES, load_data, resolve_reference

__all__ = ["prepare_dataset"]


def prepare_dataset(
    factory: str,
    options: Mapping[str, Any] | None = None,
    *,
    preprocess: str = "auto",
    seed: int = 0,
    archive: str | None = None,
    archive_sha256: str | None = None,
):
    """Load ``factory``'s data set and describe it.

    Args:
        factory: ``data.factory`` (a built-in name or ``"module:function"``).
        options: ``data.options``.
        preprocess: ``data.preprocess``, recorded in the card and checked against x here (so a
            preprocessing that does not fit the data fails before training).
        seed: the run seed (passed to factories that declare ``seed``).
        archive: the CIFAR-10 archive path (passed to factories that declare ``archive``).
        archive_sha256: its expected sha256, ``data.cifar10.sha256`` (passed to factories that
            declare ``archive_sha256``; the cifar10 factory verifies the archive against it).

    Returns:
        ``(train, test, card)``: the ``(x, y)`` pairs as returned (integer labels as int64) and
        the data card (:func:`hessflow.data.data_card`), which records the factory, its options,
        the preprocessing and a sha256 of every array.
    """
    context: dict[str, Any] = {"seed": int(seed)}
    if archive is not None:
        context["archive"] = archive
    if archive_sha256 is not None:
        context["archive_sha256"] = archive_sha256
    (x_train, y_train), (x_test, y_test) = load_data(factory, options, context=context)
    if np.issubdtype(y_train.dtype, np.integer) != np.issubdtype(y_test.dtype, np.integer):
        raise ValueError(
            f"data from {factory!r}: y_train is {y_train.dtype} but y_test is {y_test.dtype}; "
            "both must be integer classes or both float targets"
        )
    if np.issubdtype(y_train.dtype, np.integer):
        y_train, y_test = y_train.astype(np.int64), y_test.astype(np.int64)
    to_inputs = data.resolve_preprocess(preprocess, x_train[:2])
    inputs = np.asarray(to_inputs(x_train[:2], "float32"))
    if inputs.shape[0] != min(2, len(x_train)) or not np.all(np.isfinite(inputs.astype(np.float64))):
        raise ValueError(
            f"config data.preprocess: {preprocess!r} gave inputs of shape {inputs.shape} with non-finite "
            f"entries or a different example count, from x of shape {x_train[:2].shape}"
        )
    source = {
        "factory": resolve_reference(factory, "data.factory", DATA_ALIASES),
        "options": dict(options or {}),
        "preprocess": preprocess,
        "seed": int(seed),
    }
    card = data.data_card((x_train, y_train), (x_test, y_test), source=source)
    return (x_train, y_train), (x_test, y_test), card
