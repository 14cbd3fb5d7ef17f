"""`snakedeploy deploy-workflow` (the Snakemake way to deploy a published workflow) gives a project
that runs.

No network here, so the source is a local copy of this repository: snakedeploy's local provider
then names the module's Snakefile by a path relative to the source ("workflow/Snakefile"), which
the test makes absolute; for a GitHub source it writes ``github("owner/hessflow", path=..., tag=...)``
(checked through snakedeploy's own provider). The rest of the project is snakedeploy's, unchanged:
its Snakefile, and hessflow's config/ copied for the user to edit; the demo config is shortened by
a second config file. The deployed project's whole run is planned and its first job run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SMALL = {"training": {"steps": 10, "checkpoint_steps": [10]}, "lanczos": {"steps": 5, "draws": 1},
         "density": {"grid_len": 200}}


def test_snakedeploy_names_a_github_source_by_tag():
    from snakedeploy.providers import Github

    declaration = Github("https://github.com/owner/hessflow").get_source_file_declaration(
        "workflow/Snakefile", "v0.1.0", None)
    assert declaration == 'github("owner/hessflow", path="workflow/Snakefile", tag="v0.1.0")'


def test_a_deployed_project_runs(tmp_path):
    source = tmp_path / "hessflow"
    for name in ("workflow", "scripts", "envs", "config", "src"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    project = tmp_path / "project"
    done = subprocess.run([str(BIN / "snakedeploy"), "deploy-workflow", str(source), str(project),
                           "--branch", "main", "--name", "hessflow"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    snakefile = (project / "workflow" / "Snakefile").read_text()
    assert "module hessflow:" in snakefile and "use rule * from hessflow" in snakefile
    assert (project / "config" / "config.yaml").read_text() == (ROOT / "config" / "config.yaml").read_text()
    (project / "workflow" / "Snakefile").write_text(
        snakefile.replace('"workflow/Snakefile"', f'"{source / "workflow" / "Snakefile"}"'))
    (project / "small.json").write_text(json.dumps(SMALL))
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}

    def snakemake(*args):
        done = subprocess.run([str(BIN / "snakemake"), *args, "--cores", "2", "--configfile", "config/config.yaml",
                               "small.json"], cwd=project, capture_output=True, text=True, env=env, timeout=900)
        assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
        return done.stdout

    # The whole run plans (the module's rules, schema, scripts and envs all found); its first job
    # runs for real. The rest of a module run is what tests/test_module_prefix.py and
    # tests/test_your_project.py run end to end.
    plan = snakemake("--dry-run")
    assert "rule lanczos:" in plan and "rule manifest:" in plan
    snakemake("results/demo/data/dataset.json")
    card = json.loads((project / "results" / "demo" / "data" / "dataset.json").read_text())
    assert card["factory"] == "hessflow.data:digits" and card["num_train"] == 1438
