"""Faults that already hold, kept holding (issue 12's matrix): each test provokes one fault and checks
what the user gets (the message names the file and the fix) and the state afterwards (no partial
or stale artifact, other artifacts untouched, a rerun after the fix completes).

The rows the rest of the suite already covers are not repeated here: config typos, wrong types and
out-of-range values (test_config.py), corrupt, truncated and wrongly sized CIFAR-10 files and a
checksum mismatch (test_data.py, test_download.py, test_workflow.py), a missing checkpoint and one
of another architecture (test_training.py), NaN weights (test_hvp.py), a non-finite loss at a
checkpoint (test_factories.py), a non-finite operator output (test_lanczos.py), a SIGKILLed
Lanczos job and Snakemake (test_preemption.py), a Lanczos job rerun bit for bit
(test_workflow.py), a tampered artifact before reproducing (test_reproduce.py). The whole list, row
by row, is in the README's "When things go wrong".

Signals and a full disk are real: the Lanczos run and the artifact write run in child processes
that are killed (a child blocks at a known point and says so on stdout, so the kill lands there,
not at a time guessed), and the full disk is a 1 MiB tmpfs mounted in a private mount namespace
(``unshare``; as a user without root, in a user namespace too), so no mount outlives the test.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from hessflow import artifacts
from hessflow.lanczos import lanczos
from small_run import (
    RUN,
    SMALL_CONFIG,
    SNAKEFILE,
    SNAKEMAKE,
    baseline,
    fresh_copy,
    results,
    snakemake,
    snapshot,
    write_config,
)

TIMEOUT = 300


def child(code: str, *args: str) -> subprocess.Popen:
    """``python -c code args`` with stdout piped (text), for a test to read its progress lines."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_line(process: subprocess.Popen, expected: str) -> None:
    line = process.stdout.readline().strip()
    if line != expected:
        process.kill()
        raise AssertionError(f"child said {line!r}, not {expected!r}: {process.communicate()[1][-3000:]}")


# ------------------------------------------------------------------------------------------------
# Interruptions: SIGTERM of a Lanczos run, a killed artifact write
# ------------------------------------------------------------------------------------------------
N, M, SAVE_EVERY, BLOCK_AT_CALL = 60, 20, 4, 11  # blocks during step 11: the state holds 8 steps

LANCZOS_CHILD = f"""
    import sys, time
    import numpy as np
    from hessflow.lanczos import lanczos
    a = np.random.default_rng(5).normal(size=({N}, {N}))
    a = (a + a.T) / 2
    calls = 0
    def matvec(v):
        global calls
        calls += 1
        if calls == {BLOCK_AT_CALL}:
            print("blocked", flush=True)
            time.sleep(600)
        return a @ v
    lanczos(matvec, {N}, {M}, seed=(0, 20, 1), state_file=sys.argv[1], save_every={SAVE_EVERY})
"""


def test_sigterm_during_lanczos_keeps_the_saved_state_and_the_resume_is_bit_identical(tmp_path):
    a = np.random.default_rng(5).normal(size=(N, N))
    a = (a + a.T) / 2
    uninterrupted = lanczos(lambda v: a @ v, N, M, seed=(0, 20, 1))
    state_file = tmp_path / ".state_1.npz"

    process = child(LANCZOS_CHILD, state_file)
    wait_for_line(process, "blocked")
    process.send_signal(signal.SIGTERM)  # what Slurm sends a job at preemption or its time limit
    assert process.wait(timeout=60) == -signal.SIGTERM
    assert sorted(p.name for p in tmp_path.iterdir()) == [state_file.name], "only the state, no temporary"
    saved = (BLOCK_AT_CALL - 1) // SAVE_EVERY * SAVE_EVERY
    with np.load(state_file) as state:
        assert int(state["steps_done"]) == saved

    calls = []
    resumed = lanczos(lambda v: calls.append(1) or a @ v, N, M, seed=(0, 20, 1), state_file=state_file,
                      save_every=SAVE_EVERY)
    assert resumed.resumed_from == saved and len(calls) == M - saved
    assert np.array_equal(resumed.tridiag, uninterrupted.tridiag)
    assert np.array_equal(resumed.vectors, uninterrupted.vectors)


WRITE_CHILD = """
    import sys, time
    import numpy as np
    from hessflow import artifacts
    real_save = np.save
    def stalling_save(handle, array, allow_pickle=False):  # half the array written, then it waits
        real_save(handle, array[: len(array) // 2], allow_pickle=allow_pickle)
        handle.flush()
        print("writing", flush=True)
        time.sleep(600)
    np.save = stalling_save
    artifacts.save_npy(sys.argv[1], np.arange(200_000, dtype=np.float64))
"""


@pytest.mark.parametrize("kill", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_artifact_write_leaves_the_previous_file_whole(tmp_path, kill):
    path = tmp_path / "tridiag_0.npy"
    previous = np.linspace(0.0, 1.0, 50)
    artifacts.save_npy(path, previous)
    content = path.read_bytes()

    process = child(WRITE_CHILD, path)
    wait_for_line(process, "writing")
    partial = [p for p in tmp_path.iterdir() if p != path]
    assert len(partial) == 1 and partial[0].stat().st_size > 100_000, "the kill lands mid-write"
    process.send_signal(kill)
    assert process.wait(timeout=60) == -kill

    assert path.read_bytes() == content, "the artifact's name holds the previous complete file"
    others = [p.name for p in tmp_path.iterdir() if p != path]
    assert all(name.startswith(f".{path.name}.tmp-") for name in others), others  # hidden, never the artifact
    artifacts.save_npy(path, np.arange(3.0))  # the rerun writes it whole
    assert np.array_equal(np.load(path), np.arange(3.0))


# ------------------------------------------------------------------------------------------------
# A full disk
# ------------------------------------------------------------------------------------------------
FULL_DISK_CHILD = """
    import json, os, sys
    import numpy as np
    from hessflow import artifacts
    disk = sys.argv[1]
    path = os.path.join(disk, "tridiag_0.npy")
    artifacts.save_npy(path, np.arange(10.0))              # an earlier, complete artifact
    with open(os.path.join(disk, "filler"), "wb") as f:    # the rest of the disk, taken
        f.write(b"x" * (1024 * 1024 - 64 * 1024))
    report = {}
    for name, write in [("npy", lambda: artifacts.save_npy(path, np.ones(20_000))),
                        ("json", lambda: artifacts.save_json(os.path.join(disk, "stats.json"),
                                                             {"values": list(range(20_000))}))]:
        try:
            write()
            report[name] = None
        except OSError as error:
            report[name] = {"message": str(error), "type": type(error).__name__}
    report["listing"] = sorted(os.listdir(disk))
    report["previous_intact"] = np.array_equal(np.load(path), np.arange(10.0))
    os.remove(os.path.join(disk, "filler"))                # the fix: free space, and rerun
    artifacts.save_npy(path, np.ones(20_000))
    report["rerun"] = np.array_equal(np.load(path), np.ones(20_000))
    print(json.dumps(report))
"""


def test_full_disk_write_raises_oserror_naming_the_file_and_leaves_nothing_partial(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    namespace = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--mount"]
    writer = tmp_path / "writer.py"
    writer.write_text(textwrap.dedent(FULL_DISK_CHILD))
    mount_and_write = (f"mount -t tmpfs -o size=1m tmpfs {shlex.quote(str(disk))} && "
                       f"exec {shlex.join([sys.executable, str(writer), str(disk)])}")
    done = subprocess.run([*namespace, "sh", "-c", mount_and_write], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    for name, file in (("npy", "tridiag_0.npy"), ("json", "stats.json")):
        assert report[name] is not None, f"the {name} write fitted on a full disk"
        assert report[name]["type"] == "OSError"
        message = report[name]["message"]
        assert f"could not write '{disk / file}'" in message, message
        assert re.search(r"\(\d[\d,]* bytes free on its file system\)", message), message
    assert report["listing"] == ["filler", "tridiag_0.npy"], "no temporary and no partial stats.json"
    assert report["previous_intact"], "the earlier tridiag_0.npy is unchanged"
    assert report["rerun"], "after freeing space the write succeeds"


# ------------------------------------------------------------------------------------------------
# Numbers: NaN in the gradient at a finite loss, in the HVP at a finite gradient
# ------------------------------------------------------------------------------------------------
def zero_output_operator(per_example_loss):
    """A one-layer model whose outputs are exactly 0 (zero weights) on targets 0, with ``loss``."""
    import keras

    from hessflow.data import fixed_batches
    from hessflow.hvp import HessianOperator

    model = keras.Sequential([keras.Input((3,)),
                              keras.layers.Dense(1, kernel_initializer="zeros", bias_initializer="zeros")])
    x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
    return HessianOperator(model, fixed_batches(x, np.zeros((8, 1), "float32"), 4), per_example_loss)


def test_nan_gradient_at_a_finite_loss_is_refused_not_passed_on():
    import tensorflow as tf

    # sqrt(r²) = |r| at r = 0: the loss is 0, its autodiff gradient 0 · ∞ = NaN.
    operator = zero_output_operator(lambda y, p: tf.sqrt(tf.square(p - y)))
    with pytest.raises(FloatingPointError, match=r"the loss \(0\.0\) or its gradient is not finite.*checkpoint"):
        operator.loss_and_gradient()


def test_non_finite_hvp_at_a_finite_gradient_stops_lanczos_before_any_state_is_saved(tmp_path):
    import tensorflow as tf

    # |r|^1.5 at r = 0: loss and gradient 0, curvature 0.75 |r|^-0.5 = ∞.
    operator = zero_output_operator(lambda y, p: tf.pow(tf.abs(p - y), 1.5))
    loss, gradient = operator.loss_and_gradient()
    assert loss == 0.0 and np.array_equal(gradient, np.zeros(operator.dim))
    with pytest.raises(FloatingPointError, match="Hessian-vector product has non-finite entries.*loss"):
        lanczos(operator.matvec, operator.dim, 3, seed=0, state_file=tmp_path / ".state_0.npz", save_every=1)
    assert list(tmp_path.iterdir()) == [], "no state and no tridiagonal from a non-finite product"


# ------------------------------------------------------------------------------------------------
# Checkpoints: truncated
# ------------------------------------------------------------------------------------------------
def test_truncated_checkpoint_is_refused_naming_the_file_and_nothing_is_loaded(tmp_path):
    from hessflow import checkpoints, models

    path = checkpoints.save_checkpoint(models.mlp(seed=0), tmp_path / "step_20.weights.h5")
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])  # a copy cut short, a disk that filled up
    model = models.mlp(seed=1)
    before = [v.numpy().copy() for v in model.weights]
    with pytest.raises(ValueError, match=re.escape(str(path)) + r".*not a readable HDF5 weights file"):
        checkpoints.load_checkpoint(model, path)
    assert all(np.array_equal(v.numpy(), b) for v, b in zip(model.weights, before)), "nothing half-loaded"


# ------------------------------------------------------------------------------------------------
# Concurrency and SIGTERM of Snakemake, on a copy of the session's small run
# ------------------------------------------------------------------------------------------------
STEP = SMALL_CONFIG["spectrum"]["steps"][-1]


class Interrupted:
    """A copy of the small run, its density deleted, after two Snakemake runs met on it."""

    def __init__(self, workdir, baseline_state, untouched, second, first_output, after_sigterm):
        self.workdir, self.baseline_state, self.untouched = workdir, baseline_state, untouched
        self.second, self.first_output, self.after_sigterm = second, first_output, after_sigterm


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A first Snakemake reruns the density and what follows from it (one job at a time); once its
    density job has started it is stopped (SIGSTOP, job included), a second Snakemake is started on
    the same folder, then the first gets SIGTERM, as ``kill PID`` sends, and continues."""
    workdir = fresh_copy(tmp_path_factory, "locked")
    run = results(workdir)
    baseline_state = {path: digest for path, (_, digest) in snapshot(workdir).items()}
    (run / f"spectrum/hessian/all/step_{STEP}/density.npy").unlink()  # density, render, summary, trajectory, manifest
    density_log = run / f"logs/density/hessian/all/step_{STEP}.log"
    density_log.unlink()
    untouched = {path: state for path, state in snapshot(workdir).items()
                 if path.endswith((f"density_step_{STEP}.png", "trajectory.png", "summary.csv", "manifest.tsv"))}
    assert len(untouched) == 4

    command = [str(SNAKEMAKE), "--directory", str(workdir), "--snakefile", str(SNAKEFILE),
               "--configfile", str(write_config(workdir, SMALL_CONFIG)), "--cores", "1"]
    first = subprocess.Popen(command, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not density_log.exists():  # the first job has started: the folder is locked
            assert first.poll() is None, first.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "timed out waiting for the density job"
            time.sleep(0.01)
        os.killpg(first.pid, signal.SIGSTOP)  # hold the first run (and its job) right there
        second = snakemake(workdir, SMALL_CONFIG, check=False)
        os.kill(first.pid, signal.SIGTERM)  # delivered when it continues, while its job runs
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    first_output = first.communicate(timeout=TIMEOUT)[0]
    return Interrupted(workdir, baseline_state, untouched, second, first_output, snapshot(workdir))


@pytest.mark.slow  # runs Snakemake
def test_second_snakemake_on_a_running_folder_is_refused_with_the_lock_message(interrupted):
    second = interrupted.second
    output = second.stdout + second.stderr
    assert second.returncode != 0
    assert "Directory cannot be locked" in output and "--unlock" in output, output[-3000:]
    assert str(interrupted.workdir) in output, "the message names the folder"
    assert not re.search(r"^(local)?rule \w+:", output, re.M), "the second run started no job"


@pytest.mark.slow  # runs Snakemake
def test_sigterm_of_snakemake_finishes_the_running_job_and_a_plain_rerun_completes_the_run(interrupted):
    assert "Will exit after finishing currently running jobs" in interrupted.first_output, (
        interrupted.first_output[-3000:])
    after = interrupted.after_sigterm
    assert f"results/small/spectrum/hessian/all/step_{STEP}/density.npy" in after, "the running job finished"
    assert {path: after[path] for path in interrupted.untouched} == interrupted.untouched, (
        "no job started after SIGTERM")
    locks = interrupted.workdir / ".snakemake" / "locks"
    assert not locks.exists() or list(locks.iterdir()) == [], "the first run released its lock"

    snakemake(interrupted.workdir, SMALL_CONFIG)  # no --unlock needed
    rerun = {path: digest for path, (_, digest) in snapshot(interrupted.workdir).items()}
    assert rerun == interrupted.baseline_state, "the run is, bit for bit, the one it was"


def test_sigterm_of_a_job_mid_write_removes_the_temporary_file_and_exits_143(tmp_path):
    # hessflow.jobs.start_job makes SIGTERM an exception, so atomic_write's clean-up runs.
    script = textwrap.dedent(f"""
        import os, signal, time
        from hessflow.artifacts import atomic_write
        from hessflow.jobs import exit_cleanly_on_sigterm

        exit_cleanly_on_sigterm()
        with atomic_write({str(tmp_path / "artifact.npy")!r}) as tmp:
            tmp.write_bytes(b"x" * 100_000)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)  # never reached: the handler raises SystemExit(143)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 143, done.stderr
    assert list(tmp_path.iterdir()) == []  # neither the artifact nor its temporary file


# ------------------------------------------------------------------------------------------------
# Training interrupted: a signal during a checkpoint write; Snakemake and its train job SIGKILLed
# ------------------------------------------------------------------------------------------------
TRAIN_CHILD = """
    import sys, time
    from hessflow import artifacts, data, jobs, models, training

    jobs.exit_cleanly_on_sigterm()  # as every workflow job does (hessflow.jobs.start_job)
    folder, block = sys.argv[1], sys.argv[2] == "block"
    save = training.save_checkpoint

    def save_or_block(model, path):
        if block and str(path).endswith("step_10.weights.h5"):  # half-way through writing step 10
            with artifacts.atomic_write(path, suffix=".weights.h5") as tmp:
                model.save_weights(tmp)
                print("blocked", flush=True)
                time.sleep(600)
        return save(model, path)

    training.save_checkpoint = save_or_block
    (x, y), _ = data.digits()
    training.train(models.mlp(seed=0), x[:200], y[:200], num_steps=10, batch_size=50, learning_rate=0.1,
                   checkpoint_steps=[0, 5, 10], checkpoint_path=lambda s: f"{folder}/step_{s}.weights.h5",
                   log=None)
    print("done", flush=True)
"""


@pytest.mark.parametrize("kill", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_signal_during_a_checkpoint_write_keeps_earlier_checkpoints_whole_and_a_rerun_gives_the_same_bits(
        tmp_path, kill):
    process = child(TRAIN_CHILD, tmp_path, "block")
    wait_for_line(process, "blocked")
    process.send_signal(kill)
    assert process.wait(timeout=60) == (143 if kill == signal.SIGTERM else -kill)

    files = sorted(path.name for path in tmp_path.iterdir())
    whole = ["step_0.weights.h5", "step_5.weights.h5"]
    if kill == signal.SIGTERM:  # the job unwinds: atomic_write removes its temporary file
        assert files == whole
    else:  # no clean-up can run: a hidden temporary stays, never under the checkpoint's name
        assert files[-2:] == whole and len(files) == 3 and files[0].startswith(".step_10.weights.h5.tmp-"), files
    before = {name: (tmp_path / name).read_bytes() for name in whole}

    rerun = child(TRAIN_CHILD, tmp_path, "run")
    wait_for_line(rerun, "done")
    assert rerun.wait(timeout=60) == 0
    assert (tmp_path / "step_10.weights.h5").is_file()
    assert {name: (tmp_path / name).read_bytes() for name in whole} == before, "training is deterministic"


VOLATILE = ("wall_seconds", "lanczos_seconds")  # what two runs of a job may differ in


def run_contents(workdir) -> dict[str, object]:
    """The run folder's files (logs, benchmarks and the resumable state aside) by path: the sha256
    of each, except what holds wall times: a provenance JSON less its timings; the manifest less
    the provenance files' lines (their hashes cover the timings)."""
    contents = {}
    for path, (_, digest) in snapshot(workdir).items():
        file = workdir / path
        if path.endswith(".json") and "/lanczos/" in path:
            contents[path] = {k: v for k, v in json.loads(file.read_text()).items() if k not in VOLATILE}
        elif path.endswith("manifest.tsv"):
            contents[path] = [line for line in file.read_text().splitlines() if "/provenance_" not in line]
        else:
            contents[path] = digest
    return contents


@pytest.mark.slow  # runs Snakemake
def test_sigkilled_train_job_and_snakemake_rerun_after_unlock_into_the_clean_runs_bits(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("train_killed")
    train_log = results(workdir) / "logs" / "train.log"
    command = [str(SNAKEMAKE), "--directory", str(workdir), "--snakefile", str(SNAKEFILE),
               "--configfile", str(write_config(workdir, SMALL_CONFIG)), "--cores", "1"]
    process = subprocess.Popen(command, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        # The job has built its model (hessflow's scripts print the parameter count first).
        while not (train_log.exists() and "trainable parameters" in train_log.read_text()):
            assert process.poll() is None, "Snakemake ended before the train job started"
            assert time.monotonic() < deadline, "timed out waiting for the train job"
            time.sleep(0.01)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # Snakemake and its job, as a preemption would
        process.wait(timeout=30)
    run = results(workdir)
    assert not (run / "train" / "history.csv").exists(), "the kill landed after the train job"
    assert not (run / "train" / "checkpoints.json").exists()

    locked = snakemake(workdir, SMALL_CONFIG, check=False)
    assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr, "the lock a kill leaves"
    snakemake(workdir, SMALL_CONFIG, "--unlock")
    snakemake(workdir, SMALL_CONFIG)  # rerun-incomplete (the profile): the killed job's outputs go first
    clean = run_contents(baseline(tmp_path_factory))
    assert run_contents(workdir) == clean, "two runs of one config, one of them killed, give the same bits"
    assert len(clean) > 20 and f"results/{RUN}/spectrum/hessian/all/step_20/density.npy" in clean
