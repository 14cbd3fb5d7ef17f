"""Your model, your data, your loss: the importable factories a run is built from.

A run names three things by reference, ``"package.module:function"`` (a dotted attribute path
after the colon is allowed, ``"pkg.mod:Class.build"``), or by the short name of a built-in:

- ``model.factory`` returns an uncompiled ``keras.Model`` (:func:`build_model`);
- ``data.factory`` returns ``((x_train, y_train), (x_test, y_test))`` numpy arrays, the
  ``keras.datasets.*.load_data()`` convention (:func:`load_data`);
- ``loss.name`` is a ``keras.losses`` class name or a reference to a function returning a loss
  (:func:`hessflow.objectives.make_loss`).

The built-in models and data sets go through exactly the same path: their short names are
aliases (``small_cnn`` is ``hessflow.models:small_cnn``). A factory receives, as keyword
arguments, the options of its config section plus those of the run's context that its signature
declares (:func:`call_factory`): a model factory may ask for ``input_shape``, ``num_classes``,
``output_shape``, ``dtype`` and ``seed``; a data factory for ``seed`` (and ``archive``, for
CIFAR-10). So ``def build(input_shape, num_classes, width=64)`` works as it is.

References are imported as ``python -m`` would: the working directory (the folder Snakemake runs
in) comes first on ``sys.path``, so a checkout's ``examples.transformer.model:build`` imports
without installing anything; a package installed with pip imports from anywhere.

Pure Python: importing this module imports neither TensorFlow nor Keras (:func:`build_model`
imports Keras when called).
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "DATA_ALIASES",
    "MODEL_ALIASES",
    "FactoryError",
    "build_model",
    "call_factory",
    "check_importable",
    "import_object",
    "load_data",
    "resolve_reference",
]

MODEL_ALIASES = {
    "small_cnn": "hessflow.models:small_cnn",
    "mlp": "hessflow.models:mlp",
    "resnet32": "hessflow.models:resnet32",
    "vgg": "hessflow.models:vgg",
}
DATA_ALIASES = {
    "digits": "hessflow.data:digits",
    "synthetic": "hessflow.data:synthetic",
    "cifar10": "hessflow.data:cifar10",
}

#: What a model factory may declare and hessflow then passes (see the module docstring).
MODEL_CONTEXT = ("input_shape", "num_classes", "output_shape", "dtype", "seed")

_REFERENCE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


class FactoryError(ValueError):
    """A factory named in the config cannot be imported, called, or returned the wrong thing.

    The message names the config key and says how to fix it.
    """


def resolve_reference(reference: str, key: str, aliases: Mapping[str, str] | None = None) -> str:
    """The ``module:attribute`` reference a config value stands for (aliases expanded).

    Raises FactoryError naming ``key`` when ``reference`` is neither an alias nor of the form
    ``package.module:function``.
    """
    aliases = aliases or {}
    if not isinstance(reference, str):
        raise FactoryError(f"config {key}: expected a string 'package.module:function', got {reference!r}")
    if reference in aliases:
        return aliases[reference]
    if not _REFERENCE.match(reference):
        builtin = f" or one of the built-in names {', '.join(sorted(aliases))}" if aliases else ""
        raise FactoryError(
            f"config {key}: {reference!r} is not a reference of the form 'package.module:function'{builtin}"
        )
    return reference


def check_importable(reference: str, key: str, aliases: Mapping[str, str] | None = None) -> None:
    """Check, without running it, that the module ``reference`` names can be found.

    For the workflow's start: a misspelt or uninstalled module fails before any job runs (the
    attribute is checked when a job imports it). Raises FactoryError as :func:`import_object`.
    """
    import importlib.util

    module_name = resolve_reference(reference, key, aliases).partition(":")[0]
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        found = importlib.util.find_spec(module_name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        found = False
    if not found:
        raise FactoryError(
            f"config {key}: cannot find module {module_name!r} (from {reference!r}) in this environment. "
            f"Install the package that provides it (e.g. `pip install -e .` in your project) or run "
            f"snakemake from the folder that contains {module_name.split('.')[0]!r}"
        )


def import_object(reference: str, key: str, aliases: Mapping[str, str] | None = None) -> Any:
    """Import the object ``reference`` (``"package.module:attr.path"`` or an alias) names.

    The working directory is put first on ``sys.path`` (as ``python -m`` does), so modules of
    the folder Snakemake runs in import without installation.

    Raises FactoryError naming ``key``, the module or attribute that is missing, and the fix.
    """
    module_name, _, attributes = resolve_reference(reference, key, aliases).partition(":")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if not (module_name == missing or module_name.startswith(missing + ".")):
            raise  # the module exists but one of *its* imports is missing: the user's own traceback
        raise FactoryError(
            f"config {key}: cannot import module {module_name!r} (from {reference!r}): {error}. "
            f"Install the package that provides it in this environment (e.g. `pip install -e .` in your "
            f"project) or run snakemake from the folder that contains {module_name.split('.')[0]!r}"
        ) from error
    target: Any = module
    for depth, attribute in enumerate(attributes.split(".")):
        try:
            target = getattr(target, attribute)
        except AttributeError:
            where = module_name if depth == 0 else f"{module_name}:{'.'.join(attributes.split('.')[:depth])}"
            raise FactoryError(
                f"config {key}: {where!r} has no attribute {attribute!r} (from {reference!r}); "
                f"check the spelling after the ':'"
            ) from None
    return target


def call_factory(
    factory: Callable, options: Mapping[str, Any], context: Mapping[str, Any], key: str
) -> Any:
    """Call ``factory(**declared_context, **options)``.

    ``declared_context`` is the part of ``context`` whose names the factory's signature declares
    (all of it when it takes ``**kwargs``). An option that repeats a context name is refused:
    hessflow sets those from the run (the data's shapes, the run seed, the compute dtype).

    Raises FactoryError naming ``key`` when the factory is not callable or its signature does not
    accept the options.
    """
    if not callable(factory):
        raise FactoryError(f"config {key}: {factory!r} is not callable; name a function that builds it")
    options = dict(options or {})
    clashes = sorted(set(options) & set(context))
    if clashes:
        raise FactoryError(
            f"config {key.rsplit('.', 1)[0]}.options: {', '.join(clashes)} is set by hessflow from the run "
            f"(data shapes, run seed, compute dtype); remove it from the options"
        )
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin without a signature: pass options only
        declared = {}
    else:
        takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
        declared = {name: value for name, value in context.items() if takes_all or name in signature.parameters}
        try:
            signature.bind(**declared, **options)
        except TypeError as error:
            raise FactoryError(
                f"config {key}: {_name(factory)} cannot be called with options {sorted(options)} "
                f"(hessflow also passes {sorted(declared) or 'nothing'}): {error}. Its signature is "
                f"{_name(factory)}{signature}"
            ) from None
    return factory(**declared, **options)


def _name(factory: Callable) -> str:
    return f"{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', repr(factory))}"


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------
def load_data(
    factory: str, options: Mapping[str, Any] | None = None, *, context: Mapping[str, Any] | None = None,
    key: str = "data.factory",
):
    """The data set ``factory`` returns, checked: ``((x_train, y_train), (x_test, y_test))``.

    Args:
        factory: ``"module:function"`` or a built-in name (:data:`DATA_ALIASES`).
        options: keyword arguments (``data.options``).
        context: what the factory may declare: ``seed`` (the run seed), ``archive`` (CIFAR-10).

    Returns:
        the four arrays as numpy arrays, unchanged otherwise.

    Raises:
        FactoryError: the factory cannot be imported, or returns something else than two
            (x, y) pairs of arrays (what it returned is named).
        ValueError: x and y of a split differ in length, a split is empty, or an array holds
            NaN or Inf (the split and array are named).
    """
    import numpy as np

    function = import_object(factory, key, DATA_ALIASES)
    returned = call_factory(function, options or {}, context or {}, key)
    try:
        (x_train, y_train), (x_test, y_test) = returned
    except (TypeError, ValueError):
        raise FactoryError(
            f"config {key}: {factory!r} returned {_describe(returned)}; a data factory returns "
            "((x_train, y_train), (x_test, y_test)), as keras.datasets.*.load_data() does"
        ) from None
    arrays = {}
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        for name, array in (("x", x), ("y", y)):
            try:
                array = np.asarray(array)
            except Exception as error:  # noqa: BLE001 - anything numpy cannot take is the factory's fault
                raise FactoryError(f"config {key}: {name}_{split} is not an array: {error}") from None
            if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
                raise FactoryError(
                    f"config {key}: {name}_{split} has dtype {array.dtype}; return numeric numpy arrays"
                )
            if array.ndim == 0:
                raise FactoryError(f"config {key}: {name}_{split} is a scalar; return one row per example")
            if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
                bad = int(np.count_nonzero(~np.isfinite(array)))
                raise ValueError(
                    f"data from {factory!r}: {name}_{split} has {bad} NaN or infinite entries; "
                    "clean or impute them in the data factory"
                )
            arrays[f"{name}_{split}"] = array
        if len(arrays[f"x_{split}"]) != len(arrays[f"y_{split}"]):
            raise ValueError(
                f"data from {factory!r}: x_{split} has {len(arrays[f'x_{split}'])} examples but y_{split} "
                f"has {len(arrays[f'y_{split}'])}; they must have one row per example each"
            )
        if len(arrays[f"x_{split}"]) == 0:
            section = key.rsplit(".", 1)[0]
            change = "raise" if split == "test" else "lower"
            raise ValueError(
                f"data from {factory!r}: the {split} split is empty; {change} {section}.options.test_fraction "
                f"(the built-in factories), or make your factory return {split} examples"
            )
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise ValueError(
            f"data from {factory!r}: x_train examples have shape {arrays['x_train'].shape[1:]} but x_test "
            f"examples {arrays['x_test'].shape[1:]}"
        )
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


def _describe(value: Any) -> str:
    if isinstance(value, tuple | list):
        return f"a {type(value).__name__} of {len(value)} ({', '.join(type(v).__name__ for v in value)})"
    return f"a {type(value).__name__}"


# ------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------
def build_model(
    factory: str,
    options: Mapping[str, Any] | None,
    *,
    card: Mapping[str, Any],
    dtype: str = "float32",
    seed: int = 0,
    key: str = "model.factory",
):
    """Build the run's model from ``model.factory`` and the data card, the same way everywhere.

    Training, evaluation and every Lanczos job call this with the run's data card (never with
    the labels at hand, which a truncated data set may not cover), so they build one network.
    Before the factory runs, Keras is seeded with ``seed`` (``keras.utils.set_random_seed``, for
    factories whose initializers take no seed) and its float type is set to ``dtype``
    (``keras.config.set_floatx`` and ``set_dtype_policy``, restored afterwards), so that float64 Hessians work for
    factories that build with the default dtype.

    Args:
        factory: ``"module:function"`` or a built-in name (:data:`MODEL_ALIASES`).
        options: keyword arguments (``model.options``).
        card: the data card (:func:`hessflow.datacard.data_card`): ``input_shape``,
            ``num_classes``, ``output_shape``.
        dtype: compute dtype, ``"float32"`` or ``"float64"``.
        seed: the run seed.

    Returns:
        the built, uncompiled ``keras.Model``; its variables have dtype ``dtype``.

    Raises:
        FactoryError: not importable, not a Keras model, not buildable on the data's input shape,
            or its variables are not of ``dtype`` (each with the fix).
    """
    import keras
    import numpy as np

    function = import_object(factory, key, MODEL_ALIASES)
    context = {
        "input_shape": tuple(card["input_shape"]),
        "num_classes": card.get("num_classes"),
        "output_shape": tuple(card["output_shape"]),
        "dtype": dtype,
        "seed": int(seed),
    }
    keras.utils.set_random_seed(int(seed))
    previous_floatx, previous_policy = keras.config.floatx(), keras.config.dtype_policy()
    # Both: Keras caches its global dtype policy from floatx when the first layer is made, after
    # which set_floatx alone no longer changes what new layers get.
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)
    try:
        model = call_factory(function, options or {}, context, key)
        if not isinstance(model, keras.Model):
            raise FactoryError(
                f"config {key}: {factory!r} returned {_describe(model)}, not a keras.Model; return the "
                "(uncompiled) model, e.g. keras.Model(inputs, outputs) or keras.Sequential([...])"
            )
        if not model.built or not model.trainable_variables:
            # A subclassed or input-less Sequential model builds on its first call.
            x_dtype = np.dtype(card.get("x_dtype", dtype))
            sample = np.zeros((1, *context["input_shape"]), dtype=x_dtype if x_dtype.kind in "iub" else dtype)
            try:
                model(sample, training=False)
            except Exception as error:  # noqa: BLE001 - re-raised with the data's shape named
                raise FactoryError(
                    f"config {key}: the model from {factory!r} fails on inputs of shape (batch, "
                    f"{', '.join(map(str, context['input_shape']))}): {type(error).__name__}: {error}"
                ) from None
    finally:
        # The layers keep the dtype they were built with; the global setting goes back.
        keras.config.set_floatx(previous_floatx)
        keras.config.set_dtype_policy(previous_policy)
    if not model.trainable_variables:
        raise FactoryError(f"config {key}: the model from {factory!r} has no trainable variables")
    wrong = sorted({str(v.dtype) for v in model.trainable_variables} - {dtype})
    if wrong:
        raise FactoryError(
            f"config {key}: the model from {factory!r} has {', '.join(wrong)} variables where the compute "
            f"dtype is {dtype}; build the layers with the default dtype (hessflow sets "
            f"keras.config.floatx) or with the `dtype` argument hessflow passes"
        )
    return model
