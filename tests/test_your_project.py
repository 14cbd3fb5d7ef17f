"""README "Use it in your project", run as written: a project of its own uses hessflow as a module.

The project is built in a temporary folder from the README's code blocks (its model, data and loss
exist only there). Its Snakefile's ``github(...)`` source is replaced by this checkout's path (no
network here); the training run is shortened and the Hessian computed in float64 through a second
config file, merged over the project's own. The workflow's extreme eigenvalues are then compared
with those of the exact Hessian of the same objective (nested gradient tapes, numpy's eigvalsh).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
STEP = 100
OVERRIDE = {
    "training": {"steps": STEP, "checkpoint_steps": [STEP]},
    "spectrum": {"steps": [STEP]},
    "hessian": {"dtype": "float64"},
    "lanczos": {"draws": 1},
    "density": {"grid_len": 1000},
}


def readme_files() -> dict[str, str]:
    """The README's "Use it in your project" files: ``**`path`**`` then a fenced block."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Use it in your project"):]
    section = section[: section.index("\n## ", 10)]
    blocks = re.findall(r"^\*\*`([^`]+)`\*\*[^\n]*\n```[a-z]*\n(.*?)^```", section, re.M | re.S)
    return dict(blocks)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    folder = tmp_path_factory.mktemp("your-project")
    files = readme_files()
    assert set(files) == {"mylab/models.py", "mylab/data.py", "mylab/losses.py", "config/config.yaml",
                          "workflow/Snakefile"}
    snakefile = files["workflow/Snakefile"]
    github = re.search(r'github\("[^"]+", path="workflow/Snakefile", tag="v[^"]+"\)', snakefile)
    assert github, "the README's Snakefile takes hessflow from GitHub"
    files["workflow/Snakefile"] = snakefile.replace(github.group(0), f'"{ROOT / "workflow" / "Snakefile"}"')
    files["mylab/__init__.py"] = ""
    for relative, content in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(content, encoding="utf-8")
    (folder / "ci.json").write_text(json.dumps(OVERRIDE))
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run([str(SNAKEMAKE), "--cores", "2", "--configfile", "config/config.yaml", "ci.json"],
                          cwd=folder, capture_output=True, text=True, env=env, timeout=1200)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return folder


def load_function(path: Path, name: str):
    """A function of the project's file ``path``, imported under a name of its own (other tests
    have their own ``mylab``)."""
    spec = importlib.util.spec_from_file_location(f"your_project_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def exact_hessian(folder: Path) -> np.ndarray:
    """∇² of mean pseudo-Huber + (wd/2)·Σ‖kernel‖² at the checkpoint, float64, by nested tapes."""
    import keras
    import tensorflow as tf

    pseudo_huber = load_function(folder / "mylab" / "losses.py", "pseudo_huber")
    mlp_regressor = load_function(folder / "mylab" / "models.py", "mlp_regressor")
    run = folder / "results" / "surface"
    card = json.loads((run / "data" / "dataset.json").read_text())
    config = json.loads((run / "config.json").read_text())
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        model = mlp_regressor(tuple(card["input_shape"]), tuple(card["output_shape"]),
                              **config["model"]["options"])
    finally:
        keras.config.set_floatx("float32")
        keras.config.set_dtype_policy("float32")
    model.load_weights(run / "checkpoints" / f"step_{STEP}.weights.h5")
    x = tf.constant(np.load(run / "data" / "train_images.npy"), tf.float64)
    y = tf.constant(np.load(run / "data" / "train_labels.npy"), tf.float64)
    loss = pseudo_huber(**config["loss"]["options"])
    decay = config["training"]["weight_decay"]
    variables = model.trainable_variables
    with tf.GradientTape(persistent=True) as outer:
        with tf.GradientTape() as inner:
            objective = tf.reduce_mean(loss(y, model(x)))
            objective += 0.5 * decay * sum(tf.reduce_sum(v * v) for v in variables if v.path.endswith("kernel"))
        gradient = tf.concat([tf.reshape(g, [-1]) for g in inner.gradient(objective, variables)], 0)
    rows = outer.jacobian(gradient, variables)
    hessian = np.concatenate([np.reshape(r.numpy(), (gradient.shape[0], -1)) for r in rows], axis=1)
    return 0.5 * (hessian + hessian.T)


def test_the_project_gets_densities_summary_and_figures_of_its_own_model(project):
    run = project / "results" / "surface"
    for relative in ["summary.csv", "manifest.tsv", f"spectrum/hessian/all/step_{STEP}/density.npy",
                     f"figures/hessian/all/density_step_{STEP}.png", "figures/hessian/all/trajectory.png"]:
        assert (run / relative).is_file(), relative


def test_the_data_card_records_the_users_factory_and_a_regression_task(project):
    card = json.loads((project / "results" / "surface" / "data" / "dataset.json").read_text())
    assert card["factory"] == "mylab.data:noisy_surface" and card["options"] == {"num_examples": 600}
    assert card["task"] == "regression" and card["input_shape"] == [3] and card["output_shape"] == [1]


def test_evaluation_reports_the_loss_but_no_accuracy_for_regression(project):
    evaluation = json.loads((project / "results" / "surface" / "evaluation" / f"step_{STEP}.json").read_text())
    assert "test_accuracy" not in evaluation and math.isfinite(evaluation["test_loss"])
    with open(project / "results" / "surface" / "summary.csv", newline="") as handle:
        (row,) = csv.DictReader(handle)
    assert row["test_accuracy"] == ""  # NaN: no accuracy for float targets


def test_training_lowers_the_users_loss(project):
    with open(project / "results" / "surface" / "train" / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert float(rows[-1]["data_loss"]) < 0.8 * float(rows[0]["data_loss"])


def test_the_workflows_extreme_eigenvalues_are_the_exact_hessians(project):
    eigenvalues = np.linalg.eigvalsh(exact_hessian(project))
    stats_file = project / "results" / "surface" / "spectrum" / "hessian" / "all" / f"step_{STEP}" / "stats.json"
    stats = json.loads(stats_file.read_text())
    assert stats["dim"] == eigenvalues.size == 81
    scale = np.abs(eigenvalues).max()
    assert stats["lambda_max"] == pytest.approx(eigenvalues[-1], abs=1e-8 * scale)
    assert stats["lambda_min"] == pytest.approx(eigenvalues[0], abs=1e-8 * scale)
