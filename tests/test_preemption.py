"""A Lanczos job killed midway resumes from its saved state and gives the uninterrupted tridiagonal;
a state saved for another operator is never resumed.

The workflow's lanczos job passes its state file (``.state_{draw}.npz`` beside its outputs, from
hessflow.layout; undeclared, so Snakemake never deletes it as an incomplete output) and ``save_every`` to
``hessflow.lanczos.lanczos``. Here a small demo-like run trains once; then one copy computes the
Lanczos job uninterrupted, and another is SIGKILLed (Snakemake and its job, the whole process
group, as a preemption would) once the state holds at least ``save_every`` steps, then rerun after
``--unlock``: it must log ``resumed from Lanczos step k`` with k the saved step, produce the same
tridiagonal bit for bit, and remove the state file.

A state saved under another operator (here ``hessian.batch_size`` 25, rerun with 50: with batch
norm in train mode the batches define the Hessian) must not be resumed: the job logs which key
differs and starts fresh, giving the clean run's tridiagonal (library level, through
``run_lanczos_job``, in one process).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tiny_job import lanczos_job_spec

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = ROOT / "workflow" / "Snakefile"
RUN = "preemption"
STEP, STEPS, SAVE_EVERY = 10, 30, 5
BASE = f"results/{RUN}"
CHECKPOINT = f"{BASE}/checkpoints/step_{STEP}.weights.h5"
TRIDIAG = f"{BASE}/lanczos/hessian/all/step_{STEP}/tridiag_0.npy"
STATE = f"{BASE}/lanczos/hessian/all/step_{STEP}/.state_0.npz"
LOG = f"{BASE}/logs/lanczos/hessian/all/step_{STEP}_draw_0.log"
TIMEOUT = 300

pytestmark = pytest.mark.slow


def write_config(path: Path) -> Path:
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["run_name"] = RUN
    config["training"].update(steps=STEP, checkpoint_steps=[0, STEP], log_every=5)
    # Plain SLQ: the draw itself is preempted (the demo's deflation basis run would come first).
    config["lanczos"].update(steps=STEPS, draws=1, save_every=SAVE_EVERY, deflation_steps=0)
    # 29,162 parameters: a Lanczos step takes ~0.1-0.4 s on 2 cores, a window of seconds to kill in.
    config["model"]["options"].update(filters=[32, 64])
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake(workdir: Path, configfile: Path, *args: str) -> list[str]:
    return [
        sys.executable, "-m", "snakemake", *args,
        "--snakefile", str(SNAKEFILE), "--directory", str(workdir), "--configfile", str(configfile),
        "--cores", "2",
    ]


def run(workdir: Path, configfile: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        snakemake(workdir, configfile, *args), cwd=workdir, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def logged_steps(log: Path) -> list[int]:
    if not log.exists():
        return []
    return [int(i) for i in re.findall(rf"Lanczos step (\d+)/{STEPS}", log.read_text())]


def test_killed_lanczos_job_resumes_and_matches_an_uninterrupted_run(tmp_path):
    trained, whole, killed = tmp_path / "trained", tmp_path / "whole", tmp_path / "killed"
    trained.mkdir()
    configfile = write_config(tmp_path / "config.yaml")
    run(trained, configfile, CHECKPOINT)  # data and checkpoints once, then two copies
    shutil.copytree(trained, whole, symlinks=True)
    shutil.copytree(trained, killed, symlinks=True)

    run(whole, configfile, TRIDIAG)
    reference = np.load(whole / TRIDIAG)
    assert reference.shape == (STEPS, STEPS)
    assert not (whole / STATE).exists()

    process = subprocess.Popen(
        snakemake(killed, configfile, TRIDIAG), cwd=killed, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + TIMEOUT
    try:
        while not (killed / STATE).exists():
            assert process.poll() is None, "the Lanczos run ended before saving any state"
            assert time.monotonic() < deadline, "timed out waiting for the Lanczos state file"
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # Snakemake and the job's script: a preemption
        process.wait(timeout=30)
    steps_before_kill = logged_steps(killed / LOG)
    assert not (killed / TRIDIAG).exists(), "the job finished before the kill; make it slower"
    assert steps_before_kill and SAVE_EVERY <= max(steps_before_kill) < STEPS, steps_before_kill
    with np.load(killed / STATE) as state:
        saved = int(state["steps_done"])
    assert saved % SAVE_EVERY == 0 and SAVE_EVERY <= saved <= max(steps_before_kill)

    run(killed, configfile, "--unlock")  # a SIGKILLed Snakemake leaves its lock behind
    rerun = run(killed, configfile, TRIDIAG)
    text = (killed / LOG).read_text()
    assert f"resumed from Lanczos step {saved}" in text, text[-2000:]
    assert re.search(r"rule lanczos:", rerun.stdout + rerun.stderr)  # it did rerun the job
    resumed = np.load(killed / TRIDIAG)
    assert np.array_equal(resumed, reference), np.abs(resumed - reference).max()
    assert not (killed / STATE).exists(), "the state file should be removed once outputs are written"
    provenance = json.loads((killed / f"{BASE}/lanczos/hessian/all/step_{STEP}/provenance_0.json").read_text())
    assert provenance["resumed_from"] == saved
    # Only the steps after the saved one were recomputed.
    assert logged_steps(killed / LOG)[0] == saved + 1


class Interrupted(Exception):
    """Stands for a preemption: raised from the job's log once the state holds 8 steps."""


def test_state_of_another_batch_size_is_discarded_logged_and_the_job_gives_the_clean_run(tmp_path):
    from hessflow.lanczos_job import run_lanczos_job

    reused, clean = tmp_path / "reused", tmp_path / "clean"
    reused.mkdir(), clean.mkdir()

    def interrupt_at_step_9(line):
        if line.startswith("Lanczos step 9/"):
            raise Interrupted

    with pytest.raises(Interrupted):
        run_lanczos_job(lanczos_job_spec(reused, batch_size=25), log=interrupt_at_step_9)
    with np.load(reused / ".state_0.npz") as state:
        assert int(state["steps_done"]) == 8
    assert not (reused / "tridiag_0.npy").exists()

    log = []
    provenance = run_lanczos_job(lanczos_job_spec(reused, batch_size=50), log=log.append)
    shutil.copyfile(reused / "step_0.weights.h5", clean / "step_0.weights.h5")
    run_lanczos_job(lanczos_job_spec(clean, batch_size=50), log=lambda line: None)

    discarded = [line for line in log if line.startswith("discarding the Lanczos state")]
    assert len(discarded) == 1, log
    assert "hessian.batch_size: 25 in the state file, 50 now; starting fresh" in discarded[0]
    assert not any("resumed from" in line for line in log)
    assert provenance["resumed_from"] is None and provenance["batch_size"] == 50
    assert "hessian.batch_size: 25 in the state file, 50 now" in provenance["discarded_state"]
    tridiag, reference = np.load(reused / "tridiag_0.npy"), np.load(clean / "tridiag_0.npy")
    assert np.array_equal(tridiag, reference), np.abs(tridiag - reference).max()
    assert not (reused / ".state_0.npz").exists()
