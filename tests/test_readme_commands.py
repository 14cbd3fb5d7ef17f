"""The commands of README.md and config/README.md work as written.

Every line of every ```bash block is split into its commands (at ``&&``, comments dropped) and
each one must be classified in :data:`COMMANDS`, with the reason for the way it is checked here:

* ``run``: it runs as written, in a scratch checkout (a copy of what the workflow reads: ``workflow/``, ``config/``,
  ``scripts/``, ``envs/``, ``src/``, ``pyproject.toml``) with
  the inputs it names made first (the session's small run for ``hessflow-reproduce``, files in the
  paper code's layout for ``hessflow.papercode``);
* ``dry-run``: a Snakemake command, run as written plus ``--dry-run`` in the scratch checkout: the
  config validates, the profile loads, the target exists and the DAG builds;
* ``not run``: it installs software or needs what this machine lacks (the reason says what).

A command that appears in the READMEs and not in the table fails the test, as does a table entry
that no README holds any more. ``.venv/bin/``, ``venv/bin/`` and a bare ``snakemake`` all mean this
environment's executables. Snakemake's ``--configfile`` takes every name after it, so a target
written after it is read as a config file: a separate check refuses that order in inline code too.
"""

from __future__ import annotations

import itertools
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from small_run import baseline, results

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
READMES = [ROOT / "README.md", ROOT / "config" / "README.md"]
TIMEOUT = 120
CHECKOUT_FOLDERS = ("workflow", "config", "scripts", "envs", "src", "examples")

RUN, DRY, NOT_RUN = "run", "dry-run", "not run"

# Command (as shlex.join writes it) -> (how it is checked here, why).
COMMANDS = {
    "python3 -m venv .venv": (
        NOT_RUN, "creates a virtual environment; the suite runs inside the one it made"),
    "python3 -m venv venv": (
        NOT_RUN, "creates a virtual environment; the suite runs inside one made the same way"),
    ".venv/bin/pip install -e '.[workflow]'": (
        NOT_RUN, "installs from the package registry; .ci/run's fresh clone installs the 'test' extra, "
        "which contains it"),
    ".venv/bin/pip install -e '.[test]'": (
        NOT_RUN, "installs from the package registry; it is how .ci/run's fresh clone is made"),
    ".venv/bin/pip install -e '.[slurm]'": (
        NOT_RUN, "installs from the package registry; the 'test' extra contains the 'slurm' extra"),
    "venv/bin/pip install -e .": (
        NOT_RUN, "installs from the package registry; tests/test_boundary.py checks that the modules "
        "of the base install import without TensorFlow"),
    ".venv/bin/pip install 'hessflow[workflow] @ git+https://github.com/OWNER/hessflow@v0.1.0'": (
        NOT_RUN, "needs the network and a published tag (OWNER is a placeholder); "
        "tests/test_your_project.py installs nothing and uses this checkout"),
    ".venv/bin/python -m pytest": (
        NOT_RUN, "the whole suite: this test is part of it"),
    ".venv/bin/snakemake --cores 2": (
        DRY, "the demo takes 2.5 minutes; tests/test_workflow.py runs it end to end, and "
        "tests/test_your_project.py runs the same command in the project of 'Use it in your project'"),
    "snakemake --cores 2": (
        DRY, "the demo (config/README.md's spelling); tests/test_workflow.py runs it"),
    "snakemake --configfile config/cifar10_resnet32.yaml --cores 2": (
        DRY, "the CIFAR-10 study: a download and 110 GPU-hours of jobs"),
    ".venv/bin/snakemake --configfile config/cifar10_resnet32.yaml --cores 8 --resources gpu=1": (
        DRY, "the CIFAR-10 study on one GPU: a download and 110 GPU-hours of jobs"),
    ".venv/bin/snakemake --configfile config/cifar10_resnet32.yaml --cores 16 --resources gpu=4": (
        DRY, "the CIFAR-10 study on four GPUs"),
    ".venv/bin/snakemake --workflow-profile workflow/profiles/slurm --configfile config/cifar10_resnet32.yaml": (
        DRY, "submits to Slurm; a dry run loads the profile and the executor plugin (tests/test_slurm.py "
        "runs one job through a real sbatch)"),
    ".venv/bin/snakemake --cores 2 --configfile config/config.yaml config/curvatures.yaml": (
        DRY, "the demo's Hessian and Gauss-Newton spectra per block: 40 more Lanczos jobs; one Lanczos job of "
        "each operator and block kind runs in tests/test_lanczos_job.py"),
    ".venv/bin/snakemake --cores 2 --configfile examples/transformer/config.yaml examples/transformer/blocks.yaml": (
        DRY, "the transformer's six blocks: 56 Lanczos jobs, 16 minutes; tests/test_examples_workflow.py runs the "
        "example and tests/test_blocks.py the block operators"),
    ".venv/bin/snakemake --cores 2 --configfile config/config.yaml config/batchnorm_on.yaml": (
        DRY, "7 minutes; tests/test_batchnorm_pair.py runs the pair at two checkpoints"),
    ".venv/bin/snakemake --cores 2 --configfile config/config.yaml config/batchnorm_off.yaml": (
        DRY, "6 minutes; tests/test_batchnorm_pair.py runs the pair at two checkpoints"),
    ".venv/bin/hessflow-compare --run 'batch norm=results/vgg_bn' --run 'no batch norm=results/vgg_nobn' "
    "--out bn.png --csv bn.csv": (
        NOT_RUN, "needs both runs of the pair; tests/test_batchnorm_pair.py runs its main() with these options on its "
        "smaller pair"),
    ".venv/bin/snakemake export": (
        DRY, "needs the finished demo; tests/test_reproduce.py exports the small run and reproduces it"),
    ".venv/bin/snakemake export --configfile config/cifar10_resnet32.yaml": (
        DRY, "needs the finished CIFAR-10 study"),
    "venv/bin/hessflow-reproduce demo.tar.gz --out reproduced/demo": (
        RUN, "on the session's small run folder in place of demo.tar.gz (the README's 'or a folder'); "
        "reproducing an archive is tests/test_reproduce.py's"),
    ".venv/bin/python -m hessflow.papercode old_run/ckpt_1000.draw_1 old_run/ckpt_1000.draw_2 "
    "--out imported/step_1000": (
        RUN, "on two draw folders written here in the paper code's layout"),
}


def bash_commands(path: Path) -> list[str]:
    """Every command of the file's ```bash blocks, as shlex.join of its words, in order."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", path.read_text(encoding="utf-8"), re.M | re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            while words:
                end = words.index("&&") if "&&" in words else len(words)
                commands.append(shlex.join(words[:end]))
                words = words[end + 1:]
    return commands


def readme_commands() -> list[str]:
    commands = []
    for path in READMES:
        commands += [command for command in bash_commands(path) if command not in commands]
    return commands


def executable(word: str) -> str:
    """``.venv/bin/x``, ``venv/bin/x`` or a bare ``snakemake``: this environment's ``x``."""
    for prefix in (".venv/bin/", "venv/bin/"):
        if word.startswith(prefix):
            return str(BIN / word.removeprefix(prefix))
    return str(BIN / word) if word == "snakemake" else word


@pytest.fixture
def checkout(tmp_path):
    """A scratch checkout, where a user runs the commands: what the workflow reads of the repository."""
    for folder in CHECKOUT_FOLDERS:
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")  # the workflow's version check
    return tmp_path


def test_every_readme_command_is_classified_with_a_reason():
    commands = readme_commands()
    unclassified = [command for command in commands if command not in COMMANDS]
    assert unclassified == [], f"classify these README commands in COMMANDS: {unclassified}"
    stale = [command for command in COMMANDS if command not in commands]
    assert stale == [], f"no README holds these any more: {stale}"
    for command, (how, reason) in COMMANDS.items():
        assert how in (RUN, DRY, NOT_RUN) and reason, command
        assert (how == DRY) == ("snakemake" in shlex.split(command)[0]), f"{command}: every Snakemake command dry-runs"


def test_no_snakemake_command_puts_a_target_after_configfile():
    """In code blocks and inline code alike: after --configfile only config files (.yaml/.json),
    one or several (Snakemake merges them in order)."""
    paths = [*READMES, ROOT / "examples" / "README.md"]
    spans = [span for path in paths
             for span in re.findall(r"`([^`\n]*snakemake [^`\n]*)`", path.read_text(encoding="utf-8"))]
    checked = 0
    for text in spans + [command for path in paths for command in bash_commands(path)]:
        words = shlex.split(text)
        for i, word in enumerate(words):
            if word == "--configfile":
                files = list(itertools.takewhile(lambda w: not w.startswith("-"), words[i + 1:]))
                assert files, text
                targets = [name for name in files if not name.endswith((".yaml", ".json"))]
                assert not targets, (
                    f"{text!r}: {targets[0]!r} after --configfile is read as one more config file; "
                    "put targets before --configfile")
                checked += 1
    assert checked >= 5, "the check found too few --configfile uses to be checking anything"


def invocation(command: str) -> tuple[str, ...]:
    words = shlex.split(command)
    return (executable(words[0]), *words[1:])


# Once per distinct invocation: `.venv/bin/snakemake --cores 2` and `snakemake --cores 2` are one.
DRY_RUNS = list({invocation(command): command for command, (how, _) in COMMANDS.items() if how == DRY}.values())


@pytest.mark.slow  # runs Snakemake
@pytest.mark.parametrize("command", DRY_RUNS, ids=DRY_RUNS)
def test_snakemake_command_dry_runs_in_a_checkout(command, checkout):
    words = shlex.split(command)
    done = subprocess.run([*invocation(command), "--dry-run"], cwd=checkout,
                          capture_output=True, text=True, timeout=TIMEOUT)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{command} --dry-run failed:\n{output[-3000:]}"
    assert "This was a dry-run" in output, output[-2000:]
    assert re.search(r"^lanczos\s+\d+$", output, re.M), "the plan holds Lanczos jobs"
    if "export" in words:
        assert re.search(r"^export\s+1$", output, re.M), "the export job is planned"


@pytest.mark.slow  # needs the session's small run
def test_hessflow_reproduce_runs_as_written_on_a_run_folder(checkout, tmp_path_factory):
    words = shlex.split("venv/bin/hessflow-reproduce demo.tar.gz --out reproduced/demo")
    run = results(baseline(tmp_path_factory))
    done = subprocess.run([executable(words[0]), str(run), *words[2:]], cwd=checkout,
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"rebuilt (\d+) files in reproduced/demo: \1 identical to the originals", done.stdout), done.stdout
    assert np.array_equal(np.load(checkout / "reproduced/demo/spectrum/hessian/all/step_20/density.npy"),
                          np.load(run / "spectrum/hessian/all/step_20/density.npy"))


def test_papercode_import_runs_as_written_on_paper_layout_folders(checkout):
    command = (".venv/bin/python -m hessflow.papercode old_run/ckpt_1000.draw_1 old_run/ckpt_1000.draw_2 "
               "--out imported/step_1000")
    rng = np.random.default_rng(0)
    n, m = 40, 8
    expected = []
    for draw in (1, 2):
        folder = checkout / "old_run" / f"ckpt_1000.draw_{draw}"
        folder.mkdir(parents=True)
        alpha, beta = rng.normal(size=m), rng.uniform(0.5, 1.0, size=m - 1)
        tridiag = np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)
        expected.append(tridiag)
        with open(folder / "tridiag_1", "wb") as handle:  # the paper code's np.save into an open file
            np.save(handle, tridiag[:, :, None])
        with open(folder / "lanczos_vec_1", "wb") as handle:
            np.save(handle, np.linalg.qr(rng.normal(size=(n, m)))[0])
    words = shlex.split(command)
    done = subprocess.run([executable(words[0]), *words[1:]], cwd=checkout, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    out = checkout / "imported" / "step_1000"
    assert np.array_equal(np.load(out / "tridiags.npy"), np.stack(expected))
    grid, density = np.load(out / "density.npy")[:2]
    assert density.sum() * (grid[1] - grid[0]) == pytest.approx(1.0, abs=1e-6)
