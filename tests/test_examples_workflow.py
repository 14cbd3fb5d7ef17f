"""Each example of examples/ runs through the workflow end to end, at a small scale.

The examples' configs as shipped, shortened by a second config file (a few SGD steps, one
checkpoint analysed, one short Lanczos draw); the factories are imported from this checkout,
as when the README's command runs from the repository root.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
STEP = 20
SMALL = {
    "training": {"steps": STEP, "checkpoint_steps": [STEP], "log_every": 10},
    "spectrum": {"steps": [STEP]},
    "lanczos": {"steps": 8, "draws": 1},
    "density": {"grid_len": 300},
}


@pytest.mark.parametrize("example, task", [("transformer", "classification"), ("regression", "regression"),
                                           ("dropout_cnn", "classification")])
def test_the_example_runs_end_to_end(example, task, tmp_path):
    config = ROOT / "examples" / example / "config.yaml"
    (tmp_path / "small.json").write_text(json.dumps(SMALL))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [str(SNAKEMAKE), "--snakefile", str(ROOT / "workflow" / "Snakefile"), "--directory", str(tmp_path),
         "--cores", "2", "--configfile", str(config), str(tmp_path / "small.json")],
        capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    run = tmp_path / "results" / f"example_{example}"
    card = json.loads((run / "data" / "dataset.json").read_text())
    assert card["task"] == task
    tridiag = np.load(run / "lanczos" / "hessian" / "all" / f"step_{STEP}" / "tridiag_0.npy")
    assert tridiag.shape == (8, 8) and np.all(np.isfinite(tridiag))
    with open(run / "summary.csv", newline="") as handle:
        (row,) = csv.DictReader(handle)
    assert float(row["lambda_max"]) > 0 and np.isfinite(float(row["hessian_loss"]))
    assert (row["test_accuracy"] != "") == (task == "classification")
    assert (run / "figures" / "hessian" / "all" / "trajectory.png").is_file()
