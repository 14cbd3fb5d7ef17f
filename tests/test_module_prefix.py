"""hessflow used as a Snakemake module with ``prefix:``, from another project's folder.

The project's Snakefile is the one the Snakemake documentation gives for a module::

    module hessflow:
        snakefile: "<this checkout>/workflow/Snakefile"
        config: config
        prefix: "sub"
    use rule * from hessflow as hessflow_*

A tiny config (1 checkpoint, 1 draw of 5 Lanczos steps, a 200-point grid) runs to completion; every
output, the Lanczos job's resumable state included, lies under ``sub/``. The same run checks the
console: Snakemake's output holds no TensorFlow C++ log line, which went to the job logs instead.
"""

from __future__ import annotations

import json
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
STEP = 5
TINY_CONFIG = {
    "run_name": "tiny",
    "seed": 0,
    "training": {"steps": STEP, "checkpoint_steps": [STEP]},
    "hessian": {"max_examples": 300},
    "lanczos": {"steps": 5, "draws": 1},
    "density": {"grid_len": 200},
    "resources": {"lanczos": {"threads": 1}},
}
CPP_LOG_LINE = re.compile(r"^[IWEF]\d{4} ", re.M)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    folder = tmp_path_factory.mktemp("project")
    (folder / "config.json").write_text(json.dumps(TINY_CONFIG, indent=2))
    (folder / "Snakefile").write_text(
        'configfile: "config.json"\n\n\n'
        "module hessflow:\n"
        f'    snakefile: "{ROOT / "workflow" / "Snakefile"}"\n'
        "    config: config\n"
        '    prefix: "sub"\n\n\n'
        "use rule * from hessflow as hessflow_*\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("TF_")}
    done = subprocess.run([str(SNAKEMAKE), "--cores", "2"], cwd=folder, capture_output=True, text=True,
                          env=env, timeout=900)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return folder, done.stdout + done.stderr


def test_every_output_lies_under_the_prefix(project):
    folder, _ = project
    run = folder / "sub" / "results" / "tiny"
    for relative in ["manifest.tsv", "config.json", "summary.csv", f"lanczos/hessian/all/step_{STEP}/tridiag_0.npy",
                     f"spectrum/hessian/all/step_{STEP}/density.npy", "figures/hessian/all/trajectory.png"]:
        assert (run / relative).is_file(), relative
    assert not (folder / "results").exists()
    assert not list((run / "lanczos").rglob(".state_*")), "the resumable state was left behind"


def test_the_tridiagonal_is_symmetric_tridiagonal(project):
    folder, _ = project
    tridiag = np.load(folder / f"sub/results/tiny/lanczos/hessian/all/step_{STEP}/tridiag_0.npy")
    assert tridiag.shape == (5, 5) and tridiag.dtype == np.float64
    np.testing.assert_array_equal(tridiag, tridiag.T)
    assert not np.any(np.triu(tridiag, 2)), "entries beyond the first off-diagonal"
    assert np.all(np.diag(tridiag, 1) > 0)  # Lanczos's beta_j = ||r_j|| > 0 before an invariant subspace


def test_the_density_integrates_to_one_on_the_configured_grid(project):
    folder, _ = project
    grid, density = np.load(folder / f"sub/results/tiny/spectrum/hessian/all/step_{STEP}/density.npy")[:2]
    assert grid.shape == (200,)
    assert np.sum(density) * (grid[1] - grid[0]) == pytest.approx(1.0, rel=1e-9)


def test_the_provenance_records_the_configured_threads(project):
    folder, _ = project
    provenance_file = folder / f"sub/results/tiny/lanczos/hessian/all/step_{STEP}/provenance_0.json"
    provenance = json.loads(provenance_file.read_text())
    assert provenance["threads"] == TINY_CONFIG["resources"]["lanczos"]["threads"]


def test_the_console_shows_no_tensorflow_log_lines(project):
    _, console = project
    assert not CPP_LOG_LINE.search(console), CPP_LOG_LINE.findall(console)
    for text in ("cuInit", "oneDNN", "cuda_platform", "absl::InitializeLog"):
        assert text not in console, text


def test_the_tensorflow_lines_are_in_the_job_logs(project):
    folder, _ = project
    logs = folder / "sub/results/tiny/logs"
    for name in ["train.log", f"evaluate/step_{STEP}.log", f"lanczos/hessian/all/step_{STEP}_draw_0.log"]:
        assert (logs / name).is_file(), name
    lanczos_log = (logs / f"lanczos/hessian/all/step_{STEP}_draw_0.log").read_text()
    assert CPP_LOG_LINE.search(lanczos_log), "no TensorFlow C++ line in the job log: nothing was redirected"
    assert "TensorFlow thread pools: 1 intra-op, 1 inter-op" in lanczos_log
