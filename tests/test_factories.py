"""Your model, your data, your loss: factories named in the config, and the errors bad ones get.

Each factory here lives in a module written into a temporary folder that is made the working
directory, as a user's project folder is when Snakemake runs in it.
"""

from __future__ import annotations

import importlib
import json
import sys
import textwrap

import keras
import numpy as np
import pytest

from hessflow import checkpoints, data, factories, objectives
from hessflow.factories import FactoryError

CARD = {"input_shape": [6], "num_classes": 3, "output_shape": [3], "x_dtype": "float32"}

USER_MODULE = '''
import keras
import numpy as np


def tanh_net(input_shape, num_classes, width=5):
    inputs = keras.Input(input_shape)
    hidden = keras.layers.Dense(width, activation="tanh")(inputs)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(hidden))


def regression_net(input_shape, output_shape):
    return keras.Sequential([keras.Input(input_shape), keras.layers.Dense(output_shape[0])])


def with_everything(**context):
    global SEEN
    SEEN = context
    return tanh_net(context["input_shape"], context["num_classes"])


def not_a_model(input_shape):
    return "a string"


def blobs(n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = (np.arange(n) % 3).astype(np.int64)
    return (x[: n // 2], y[: n // 2]), (x[n // 2 :], y[n // 2 :])


def with_nan():
    (x, y), test = blobs()
    x[3, 1] = np.nan
    return (x, y), test


def ragged():
    (x, y), test = blobs()
    return (x, y[:-1]), test


def three_things():
    return 1, 2, 3


def squared_error(scale=1.0):
    def per_example(y_true, y_pred):
        return scale * keras.ops.mean(keras.ops.square(y_true - y_pred), axis=-1)
    return per_example


NOT_CALLABLE = 3
'''


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A folder with a user module `mylab.nets`, as the working directory."""
    package = tmp_path / "mylab"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [name for name in sys.modules if name.split(".")[0] == "mylab"]:
        monkeypatch.delitem(sys.modules, name)  # each test imports its own folder's mylab
    importlib.invalidate_caches()
    yield tmp_path


# ------------------------------------------------------------------------------------------------
# references and imports
# ------------------------------------------------------------------------------------------------
def test_a_short_name_is_an_alias_of_the_builtin_factory():
    assert factories.resolve_reference("small_cnn", "model.factory", factories.MODEL_ALIASES) == (
        "hessflow.models:small_cnn")
    assert factories.import_object("digits", "data.factory", factories.DATA_ALIASES) is data.digits


def test_a_reference_that_is_no_module_function_pair_is_refused_with_the_builtins_listed():
    with pytest.raises(FactoryError, match=r"config model.factory: 'resnet' is not a reference "
                                           r".*mlp, resnet32, small_cnn"):
        factories.resolve_reference("resnet", "model.factory", factories.MODEL_ALIASES)


def test_a_missing_module_is_named_with_the_fix(project):
    with pytest.raises(FactoryError, match=r"config model.factory: cannot import module 'mylab.netz'.*pip install -e"):
        factories.import_object("mylab.netz:tanh_net", "model.factory")


def test_a_missing_module_is_found_before_any_job_without_importing_it(project):
    with pytest.raises(FactoryError, match=r"config data.factory: cannot find module 'nolab.data'"):
        factories.check_importable("nolab.data:load", "data.factory")
    factories.check_importable("mylab.nets:blobs", "data.factory")  # exists: no error


def test_a_missing_attribute_is_named(project):
    with pytest.raises(FactoryError, match=r"'mylab.nets' has no attribute 'tanh_nett'"):
        factories.import_object("mylab.nets:tanh_nett", "model.factory")


def test_a_module_whose_own_import_fails_shows_the_users_error(project):
    (project / "mylab" / "broken.py").write_text("import numpyy\n")
    with pytest.raises(ModuleNotFoundError, match="numpyy"):
        factories.import_object("mylab.broken:f", "model.factory")


def test_the_working_directory_is_importable_as_with_python_dash_m(tmp_path, monkeypatch):
    (tmp_path / "here_only.py").write_text("def f():\n    return 42\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", str(tmp_path))])
    assert factories.import_object("here_only:f", "data.factory")() == 42


# ------------------------------------------------------------------------------------------------
# model factories
# ------------------------------------------------------------------------------------------------
def test_a_model_factory_gets_the_context_it_declares_and_its_options(project):
    model = factories.build_model("mylab.nets:tanh_net", {"width": 7}, card=CARD)
    assert model.layers[1].units == 7
    assert tuple(model.output.shape) == (None, 3)


def test_a_model_factory_with_kwargs_gets_the_whole_context(project):
    factories.build_model("mylab.nets:with_everything", {}, card=CARD, dtype="float64", seed=5)
    import mylab.nets

    assert mylab.nets.SEEN == {"input_shape": (6,), "num_classes": 3, "output_shape": (3,),
                               "dtype": "float64", "seed": 5}


def test_a_model_factory_builds_in_float64_without_a_dtype_argument(project):
    model = factories.build_model("mylab.nets:tanh_net", {}, card=CARD, dtype="float64")
    assert {str(v.dtype) for v in model.trainable_variables} == {"float64"}
    assert keras.config.floatx() == "float32"  # the global setting is restored


def test_the_run_seed_makes_a_seedless_factory_reproducible(project):
    first = factories.build_model("mylab.nets:tanh_net", {}, card=CARD, seed=3)
    again = factories.build_model("mylab.nets:tanh_net", {}, card=CARD, seed=3)
    other = factories.build_model("mylab.nets:tanh_net", {}, card=CARD, seed=4)
    kernel = [m.layers[1].kernel.numpy() for m in (first, again, other)]
    np.testing.assert_array_equal(kernel[0], kernel[1])
    assert not np.array_equal(kernel[0], kernel[2])


def test_the_model_is_built_from_the_card_not_from_the_labels_at_hand():
    # A Hessian over the first examples may see classes 0..3 only; the model still has 10 outputs.
    card = {"input_shape": [8, 8, 1], "num_classes": 10, "output_shape": [10], "x_dtype": "uint8"}
    model = factories.build_model("small_cnn", {"batch_norm": True}, card=card)
    assert tuple(model.output.shape) == (None, 10)


def test_a_builtin_factory_built_through_the_card_equals_the_direct_builder():
    from hessflow import models

    card = {"input_shape": [8, 8, 1], "num_classes": 10, "output_shape": [10], "x_dtype": "uint8"}
    via_card = factories.build_model("small_cnn", {"batch_norm": True}, card=card, seed=2)
    direct = models.small_cnn(batch_norm=True, seed=2)
    assert checkpoints.weights_checksum(via_card) == checkpoints.weights_checksum(direct)


def test_a_factory_that_returns_no_model_is_refused_by_name(project):
    with pytest.raises(FactoryError, match=r"returned a str, not a keras.Model"):
        factories.build_model("mylab.nets:not_a_model", {}, card=CARD)


def test_an_option_the_factory_does_not_take_is_refused_with_its_signature(project):
    with pytest.raises(FactoryError, match=r"cannot be called with options \['depth'\]"
                                           r".*tanh_net\(input_shape, num_classes, width=5\)"):
        factories.build_model("mylab.nets:tanh_net", {"depth": 2}, card=CARD)


def test_an_option_that_hessflow_sets_is_refused(project):
    with pytest.raises(FactoryError, match=r"model.options: num_classes is set by hessflow"):
        factories.build_model("mylab.nets:tanh_net", {"num_classes": 4}, card=CARD)


def test_a_factory_that_is_not_callable_is_refused(project):
    with pytest.raises(FactoryError, match="is not callable"):
        factories.build_model("mylab.nets:NOT_CALLABLE", {}, card=CARD)


# ------------------------------------------------------------------------------------------------
# data factories
# ------------------------------------------------------------------------------------------------
def test_a_data_factory_gets_its_options_and_the_run_seed(project):
    (x, y), (x_test, y_test) = factories.load_data("mylab.nets:blobs", {"n": 10}, context={"seed": 1})
    expected = np.random.default_rng(1).normal(size=(10, 6)).astype(np.float32)
    np.testing.assert_array_equal(np.concatenate([x, x_test]), expected)


def test_data_with_nan_are_refused_naming_the_array(project):
    with pytest.raises(ValueError, match=r"x_train has 1 NaN or infinite entries"):
        factories.load_data("mylab.nets:with_nan", {})


def test_x_and_y_of_different_lengths_are_refused_with_both_lengths(project):
    with pytest.raises(ValueError, match=r"x_train has 20 examples but y_train has 19"):
        factories.load_data("mylab.nets:ragged", {})


def test_a_data_factory_that_returns_the_wrong_tuple_is_refused(project):
    with pytest.raises(FactoryError, match=r"returned a tuple of 3 .*\(\(x_train, y_train\), \(x_test, y_test\)\)"):
        factories.load_data("mylab.nets:three_things", {})


def test_the_builtin_digits_factory_is_the_split_of_the_bundled_digits():
    (x, y), (x_test, y_test) = factories.load_data("digits", {"test_fraction": 0.25}, context={"seed": 0})
    images, labels = data.load_digits()
    (expected_x, expected_y), _ = data.train_test_split(images, labels, 0.25, seed=0)
    np.testing.assert_array_equal(x, expected_x)
    np.testing.assert_array_equal(y, expected_y)
    assert len(x) + len(x_test) == data.DIGITS_NUM_EXAMPLES


def test_the_data_card_of_a_regression_set_has_no_classes():
    rng = np.random.default_rng(0)
    train = (rng.normal(size=(30, 4)).astype(np.float32), rng.normal(size=(30, 2)).astype(np.float32))
    test = (rng.normal(size=(10, 4)).astype(np.float32), rng.normal(size=(10, 2)).astype(np.float32))
    card = data.data_card(train, test, source={"factory": "x:y"})
    assert card["task"] == "regression" and card["num_classes"] is None
    assert card["input_shape"] == [4] and card["output_shape"] == [2]
    assert card["arrays"]["y_test"] == {"shape": [10, 2], "dtype": "float32",
                                        "sha256": card["arrays"]["y_test"]["sha256"]}


def test_the_data_card_counts_classes_over_both_splits():
    train = (np.zeros((4, 2)), np.array([0, 1, 1, 0]))
    test = (np.zeros((2, 2)), np.array([4, 0]))
    card = data.data_card(train, test, source={})
    assert card["num_classes"] == 5 and card["output_shape"] == [5]
    assert card["train_class_counts"] == [2, 2, 0, 0, 0] and card["test_class_counts"] == [1, 0, 0, 0, 1]


def test_the_data_card_checksum_changes_with_one_value():
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    y = np.arange(6) % 2
    before = data.data_card((x, y), (x, y), source={})["arrays"]["x_train"]["sha256"]
    x[2, 1] += 1
    assert data.data_card((x, y), (x, y), source={})["arrays"]["x_train"]["sha256"] != before


def test_preprocess_none_keeps_token_ids_integer_and_casts_floats():
    tokens = np.arange(6, dtype=np.int32).reshape(2, 3)
    assert data.resolve_preprocess("none", tokens)(tokens, "float64").dtype == np.int32
    assert data.resolve_preprocess("auto", tokens)(tokens, "float64").dtype == np.int32
    floats = np.ones((2, 3), np.float32)
    assert data.resolve_preprocess("auto", floats)(floats, "float64").dtype == np.float64


def test_preprocess_auto_standardizes_raw_images():
    images = np.random.default_rng(0).integers(0, 255, size=(3, 4, 4, 1), dtype=np.uint8)
    np.testing.assert_array_equal(data.resolve_preprocess("auto", images)(images, "float32"),
                                  data.standardize_per_image(images))


def test_standardize_per_image_on_tabular_data_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="data.preprocess: standardize_per_image needs images"
                                         ".*use data.preprocess: none"):
        data.resolve_preprocess("standardize_per_image", np.zeros((4, 3)))


# ------------------------------------------------------------------------------------------------
# losses and the objective
# ------------------------------------------------------------------------------------------------
def test_a_keras_loss_is_made_by_class_name_with_its_options():
    loss = objectives.make_loss("Huber", {"delta": 0.5})
    assert isinstance(loss, keras.losses.Huber)
    y_true, y_pred = np.array([[0.0], [2.0]]), np.array([[0.2], [0.0]])
    expected = [0.5 * 0.2**2, 0.5 * (2.0 - 0.25)]  # quadratic inside delta, linear beyond
    np.testing.assert_allclose(objectives.per_example_loss(loss)(y_true, y_pred), expected, rtol=1e-6)


def test_an_unknown_loss_name_lists_the_known_ones():
    with pytest.raises(FactoryError,
                       match=r"unknown loss 'CrossEntropy'.*MeanSquaredError.*SparseCategoricalCrossentropy"):
        objectives.make_loss("CrossEntropy")


def test_a_loss_option_the_class_does_not_take_is_refused():
    with pytest.raises(FactoryError,
                       match=r"loss.options: keras.losses.MeanSquaredError does not take \['from_logits'\]"):
        objectives.make_loss("MeanSquaredError", {"from_logits": True})


def test_a_loss_function_from_a_module_gets_its_options(project):
    loss = objectives.make_loss("mylab.nets:squared_error", {"scale": 2.0})
    values = objectives.per_example_loss(loss)(np.array([[1.0, 3.0]]), np.array([[0.0, 0.0]]))
    np.testing.assert_allclose(values, [2.0 * 5.0])


def test_per_token_losses_are_averaged_per_example():
    def per_token(y_true, y_pred):
        return keras.ops.square(y_true - y_pred)  # (batch, tokens)

    values = objectives.per_example_loss(per_token)(np.array([[1.0, 3.0], [0.0, 2.0]]), np.zeros((2, 2)))
    np.testing.assert_allclose(values, [5.0, 2.0])


def test_outputs_that_the_loss_cannot_take_are_refused_with_both_shapes(project):
    model = factories.build_model("mylab.nets:regression_net", {}, card={**CARD, "output_shape": [2]})
    x = np.zeros((4, 6), np.float32)
    y = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"outputs of shape \(4, 2\) with targets of shape \(4, 3\)"):
        objectives.check_objective(model, objectives.make_loss("MeanSquaredError"), x, y)


def test_labels_out_of_range_for_the_outputs_are_refused_with_the_count_needed(project):
    model = factories.build_model("mylab.nets:tanh_net", {}, card=CARD)
    x = np.zeros((4, 6), np.float32)
    with pytest.raises(ValueError, match=r"labels range over 0..4 but the model outputs 3 values"
                                         r".*needs max label \+ 1 = 5 units"):
        objectives.check_objective(model, objectives.make_loss(**objectives.DEFAULT_LOSS), x, np.array([0, 1, 4, 2]))


def test_a_fitting_model_and_loss_pass_the_check(project):
    model = factories.build_model("mylab.nets:tanh_net", {}, card=CARD)
    objectives.check_objective(model, objectives.make_loss(**objectives.DEFAULT_LOSS),
                               np.zeros((4, 6), np.float32), np.array([0, 1, 2, 2]))


# ------------------------------------------------------------------------------------------------
# a non-finite loss at a checkpoint
# ------------------------------------------------------------------------------------------------
def test_a_checkpoint_with_a_non_finite_loss_fails_the_lanczos_job_naming_the_checkpoint(project, tmp_path):
    from hessflow.lanczos_job import run_lanczos_job

    (x, y), _ = factories.load_data("mylab.nets:blobs", {})
    model = factories.build_model("mylab.nets:tanh_net", {}, card=CARD)
    model.layers[-1].kernel.assign(np.full((5, 3), np.inf, np.float32))  # a diverged run's weights
    checkpoint = checkpoints.save_checkpoint(model, tmp_path / "step_7.weights.h5")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    (tmp_path / "card.json").write_text(json.dumps(CARD))
    spec = {
        "checkpoint": str(checkpoint), "images": str(tmp_path / "x.npy"), "labels": str(tmp_path / "y.npy"),
        "card": str(tmp_path / "card.json"), "model": {"factory": "mylab.nets:tanh_net", "options": {}},
        "objective": {"loss": objectives.DEFAULT_LOSS, "weight_decay": 0.0, "preprocess": "none"},
        "hessian": {"batch_size": 8, "batch_norm": "train", "dtype": "float32", "max_examples": None},
        "num_steps": 3, "save_every": 10, "run_seed": 0, "step": 7, "draw": 0,
        "state_file": str(tmp_path / ".state_0.npz"),
        "outputs": {"tridiag": str(tmp_path / "t.npy"), "provenance": str(tmp_path / "p.json")},
    }
    with pytest.raises(FloatingPointError,
                       match=r"checkpoint .*step_7.weights.h5: .*not finite.*lower training.learning_rate"):
        run_lanczos_job(spec, log=lambda line: None)
    assert not (tmp_path / "t.npy").exists()


# ------------------------------------------------------------------------------------------------
# before any job runs
# ------------------------------------------------------------------------------------------------
def test_a_factory_module_that_cannot_be_found_stops_the_workflow_before_any_job(tmp_path):
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "config.json").write_text(json.dumps(
        {"run_name": "x", "model": {"factory": "nolab.models:build"}}))
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run([str(Path(sys.executable).with_name("snakemake")), "--snakefile",
                           str(root / "workflow" / "Snakefile"), "--configfile", "config.json", "--cores", "1",
                           "--dry-run"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode != 0
    assert "config model.factory: cannot find module 'nolab.models'" in done.stdout + done.stderr
    assert not (tmp_path / "results").exists()
