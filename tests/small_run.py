"""A small hessflow run in a temporary directory, shared by test_reruns.py and test_reproduce.py.

The run (digits, small CNN with batch norm, 20 SGD steps saving checkpoints at 10 and 20, the
spectrum at 20 only, 2 draws of 10 Lanczos steps, a 500-point grid: 6 TensorFlow jobs) is made once per test
session and copied (mtimes and Snakemake's metadata included) for each test that changes it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = ROOT / "workflow" / "Snakefile"
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
RUN = "small"

SMALL_CONFIG = yaml.safe_load((ROOT / ".test" / "config" / "small.yaml").read_text(encoding="utf-8"))
assert SMALL_CONFIG["run_name"] == RUN

_BASELINE: dict[str, Path] = {}


def results(workdir: Path) -> Path:
    return Path(workdir) / "results" / RUN


def write_config(workdir: Path, config: dict, name: str = "config.json") -> Path:
    """JSON, which Snakemake reads as a config file (and which keeps 1e-05 a number)."""
    path = Path(workdir) / name
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path


def snakemake(workdir: Path, config: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    configfile = write_config(workdir, config)
    command = [str(SNAKEMAKE), "--directory", str(workdir), "--snakefile", str(SNAKEFILE),
               "--configfile", str(configfile), "--cores", "2", *args]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=workdir)
    if check and done.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        )
    return done


def planned_jobs(workdir: Path, config: dict, *targets: str) -> dict[tuple[str, str], list[str]]:
    """The jobs a dry run plans, job by job: (rule, "block=.., draw=.., operator=.., step=..") -> its
    output paths (the job's wildcards in name order).

    Parsed from ``snakemake --dry-run``'s job blocks; the ``all`` target job is left out.
    """
    done = snakemake(workdir, config, "--dry-run", *targets)
    jobs, current = {}, None
    for line in done.stdout.splitlines():
        match = re.fullmatch(r"(?:local)?rule (\w+):", line.strip())
        if match:
            current = [match.group(1), "", []]
            if current[0] != "all":
                jobs[id(current)] = current
            continue
        if current is None:
            continue
        stripped = line.strip()
        if stripped.startswith("wildcards: "):
            current[1] = ", ".join(sorted(stripped.removeprefix("wildcards: ").split(", ")))
        elif stripped.startswith("output: "):
            current[2] = stripped.removeprefix("output: ").split(", ")
    planned = {}
    for rule, wildcards, outputs in jobs.values():
        key = (rule, wildcards)
        assert key not in planned, f"job {key} planned twice"
        planned[key] = outputs
    return planned


#: The rules that run once per curvature (their paths hold ``{operator}/{block}``).
CURVATURE_RULES = {"lanczos", "top_pairs", "aggregate", "density", "render_density", "render_trajectory"}


def job(rule: str, step: int | None = None, draw: int | None = None, operator: str = "hessian",
        block: str = "all") -> tuple[str, str]:
    """A planned-job key as :func:`planned_jobs` writes it (a curvature rule's of ``operator`` on
    ``block``)."""
    wildcards = {"step": step, "draw": draw}
    if rule in CURVATURE_RULES:
        wildcards |= {"operator": operator, "block": block}
    return rule, ", ".join(f"{name}={value}" for name, value in sorted(wildcards.items()) if value is not None)


def snapshot(workdir: Path) -> dict[str, tuple[int, str]]:
    """Every file of the run folder except logs and benchmarks: relative path -> (mtime_ns, sha256)."""
    root = results(workdir)
    state = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(workdir).as_posix()
        if path.is_file() and not relative.startswith((f"results/{RUN}/logs/", f"results/{RUN}/benchmarks/")):
            state[relative] = (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return state


def baseline(tmp_path_factory) -> Path:
    """A finished run of SMALL_CONFIG, made once per session; copy it before changing it."""
    if "dir" not in _BASELINE:
        workdir = tmp_path_factory.mktemp("small_baseline")
        snakemake(workdir, SMALL_CONFIG)
        _BASELINE["dir"] = workdir
    return _BASELINE["dir"]


def fresh_copy(tmp_path_factory, name: str) -> Path:
    """A copy of the baseline (mtimes and .snakemake metadata kept): Snakemake sees it up to date."""
    destination = tmp_path_factory.mktemp(name) / "work"
    shutil.copytree(baseline(tmp_path_factory), destination, symlinks=True)
    return destination


def changed(config: dict, dotted: str, value) -> dict:
    """A copy of ``config`` with the dotted key set to ``value``."""
    config = copy.deepcopy(config)
    *parents, last = dotted.split(".")
    target = config
    for part in parents:
        target = target.setdefault(part, {})
    target[last] = value
    return config
