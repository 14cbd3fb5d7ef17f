"""The workflow refuses to run on a hessflow package of another version, and says how to fix it.

Used as a module of your project, the workflow comes from one place (a tag of the repository)
and the package its jobs import from another (pip): the two must be one version, because the
config keys and the artifacts' formats belong to it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def test_a_workflow_of_another_version_than_the_installed_package_stops_with_both_named(tmp_path):
    import hessflow

    source = tmp_path / "hessflow-9.9.9"  # the workflow of another release, without its src/
    for name in ("workflow", "scripts", "envs", "config"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    (source / "pyproject.toml").write_text(re.sub(r'(?m)^version = "[^"]+"$', 'version = "9.9.9"', pyproject, count=1))
    (tmp_path / "config.yaml").write_text("run_name: x\n")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run([str(SNAKEMAKE), "--snakefile", str(source / "workflow" / "Snakefile"), "--configfile",
                           "config.yaml", "--cores", "1", "--dry-run"], cwd=tmp_path, capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert (f"this workflow is version 9.9.9 but the installed hessflow is {hessflow.__version__}") in output
    assert "pip install 'hessflow[workflow]==9.9.9'" in output


def test_the_workflow_and_the_package_of_this_checkout_are_one_version():
    import hessflow

    assert hessflow.pyproject_version((ROOT / "pyproject.toml").read_text(encoding="utf-8")) == hessflow.__version__
