"""The sbatch options the SLURM executor plugin builds for hessflow's jobs, through its own code.

No Slurm needed: the plugin's ``get_submit_command`` and ``set_gres_string`` (what its
``run_job`` concatenates into the ``sbatch`` call) are called on a stand-in job whose resources are
what the lanczos rule declares (``gpu``, ``runtime``, ``mem_mb`` from the config; ``tasks`` and
``mpi`` for a multi-worker job) merged with the SLURM profile's ``set-resources`` for the rule, as
Snakemake merges them. ``tests/cluster/slurm_test.py`` runs the same profile on a real Slurm.
"""

import os
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

pytest.importorskip("snakemake_executor_plugin_slurm")

from snakemake.resources import Resource  # noqa: E402
from snakemake_executor_plugin_slurm.submit_string import get_submit_command  # noqa: E402
from snakemake_executor_plugin_slurm.utils import set_gres_string  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "workflow" / "profiles" / "slurm" / "config.yaml"


class Resources(dict):
    """``job.resources`` as the plugin reads it: ``.get(name)`` and ``.name``."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def profile() -> dict:
    return yaml.safe_load(PROFILE.read_text())


def lanczos_job(**rule_resources) -> SimpleNamespace:
    """A lanczos job: the rule's resources, then the profile's set-resources over them."""
    resources = Resources(runtime=720, mem_mb=32000, **rule_resources)
    resources.update(profile()["set-resources"]["lanczos"])
    return SimpleNamespace(
        name="lanczos", threads=1, resources=resources, is_group=lambda: False,
        wildcards={"step": "0", "draw": "0"},
    )


def sbatch_options(job) -> list[str]:
    """The sbatch call run_job builds (without --wrap), split into options."""
    params = {
        "run_uuid": "run-uuid",
        "slurm_logfile": "/tmp/slurm_logs/%j.log",
        "comment_str": "rule_lanczos_wildcards_0_0",
        "account": "",
        "partition": "",
        "workdir": "/work",
    }
    call = get_submit_command(job, params) + set_gres_string(job)
    return shlex.split(call)


def options_named(options: list[str], prefix: str) -> list[str]:
    return [o for o in options if o.startswith(prefix)]


def test_profile_asks_for_one_task_per_gpu_for_the_gpu_rules():
    sets = profile()["set-resources"]
    assert sets["lanczos"]["tasks_per_gpu"] == 1
    assert sets["train"]["tasks_per_gpu"] == 1
    assert profile()["executor"] == "slurm"


def test_one_gpu_lanczos_job():
    options = sbatch_options(lanczos_job(gpu=1))
    assert options[0] == "sbatch"
    assert options_named(options, "--gpus") == ["--gpus=1"]
    assert options_named(options, "--ntasks-per-gpu") == ["--ntasks-per-gpu=1"]
    assert options_named(options, "--ntasks=") == []  # one GPU, one task: nothing more to say
    assert options[options.index("-t") + 1] == "720"
    assert options[options.index("--mem") + 1] == "32000"
    assert "--cpus-per-task=1" in options


def test_four_gpus_four_workers_lanczos_job():
    """4 GPUs x 4 workers under srun: 4 tasks in all, one per GPU -- not 4 per GPU."""
    options = sbatch_options(lanczos_job(gpu=4, tasks=4, mpi="srun"))
    assert options_named(options, "--gpus") == ["--gpus=4"]
    assert options_named(options, "--ntasks-per-gpu") == ["--ntasks-per-gpu=1"]
    assert options_named(options, "--ntasks=") == ["--ntasks=4"]


def test_without_tasks_per_gpu_the_plugin_would_ask_for_tasks_per_gpu():
    """The trap the profile's tasks_per_gpu=1 avoids (plugin 2.8): tasks becomes the per-GPU count."""
    job = lanczos_job(gpu=4, tasks=4, mpi="srun")
    del job.resources["tasks_per_gpu"]
    assert options_named(sbatch_options(job), "--ntasks-per-gpu") == ["--ntasks-per-gpu=4"]


def test_gpu_model_goes_into_the_gpus_option():
    job = lanczos_job(gpu=2)
    job.resources["gpu_model"] = "a100"
    assert options_named(sbatch_options(job), "--gpus") == ["--gpus=a100:2"]


def test_cpu_lanczos_job_asks_for_no_gpu():
    """The demo (resources.lanczos.gpu: 0): one task, no GPU option, tasks_per_gpu ignored."""
    options = sbatch_options(lanczos_job(gpu=0))
    assert options_named(options, "--gpus") == []
    assert options_named(options, "--ntasks-per-gpu") == []
    assert options_named(options, "--ntasks=") == ["--ntasks=1"]


@pytest.mark.parametrize("name", ["runtime", "mem_mb"])
def test_default_resources_grow_with_attempt(name):
    """The profile's default-resources are expressions in `attempt`, as Snakemake evaluates them."""
    expression = str(profile()["default-resources"][name])
    values = [
        Resource.cli_evaluator(name, expression, wildcards={}, input=[], attempt=attempt, async_run=None)
        for attempt in (1, 2, 3)
    ]
    assert values[0] > 0 and values == [values[0], 2 * values[0], 3 * values[0]]


@pytest.mark.slow
def test_profile_loads_and_plans_the_demo(tmp_path):
    """snakemake --dry-run with the SLURM profile: Snakemake and the plugin accept every key."""
    env = {**os.environ, "SNAKEMAKE_SLURM_PARTITIONS": ""}
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--dry-run", "--quiet", "rules",
         "--snakefile", str(ROOT / "workflow" / "Snakefile"), "--directory", str(tmp_path),
         "--configfile", str(ROOT / "config" / "config.yaml"),
         "--workflow-profile", str(PROFILE.parent)],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "lanczos" in result.stdout + result.stderr
