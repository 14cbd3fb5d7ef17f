"""The Hessian operator and Lanczos jobs across replicas, processes and GPUs.

Each strategy must exist before TensorFlow initializes its devices, so every
multi-replica run is a subprocess of its own (`distributed_worker.py`, or a
Lanczos job through `hessflow.lanczos_job`), bounded in time.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hessflow.lanczos_job import launch_workers, local_cluster

TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"
TIMEOUT = 240


def environment(**extra):
    return {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{TESTS}", "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def run_worker(out, *args, env=None):
    return subprocess.Popen(
        [sys.executable, str(TESTS / "distributed_worker.py"), "--out", str(out), *args],
        env=env or environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def finish(process):
    output, _ = process.communicate(timeout=TIMEOUT)
    return process.returncode, output


@pytest.fixture(scope="module")
def one_device_tridiagonal(tmp_path_factory):
    out = tmp_path_factory.mktemp("default") / "tridiag.npy"
    code, output = finish(run_worker(out, "--strategy", "default"))
    assert code == 0, output
    return np.load(out)


@pytest.mark.slow
@pytest.mark.parametrize("replicas", [2, 3])
def test_mirrored_replicas_give_the_one_device_tridiagonal_with_batch_norm_and_uneven_shards(
        tmp_path, one_device_tridiagonal, replicas):
    # 7 batches (the last smaller) over 2 or 3 replicas: shards of 4/3 or 3/2/2 batches.
    out = tmp_path / "tridiag.npy"
    code, output = finish(run_worker(out, "--strategy", "mirrored", "--workers", str(replicas)))
    assert code == 0, output
    assert f"replicas {replicas}" in output
    np.testing.assert_allclose(np.load(out), one_device_tridiagonal, rtol=0,
                               atol=1e-12 * np.abs(one_device_tridiagonal).max())


def multi_worker_processes(tmp_path, perturbed_worker=None):
    out = tmp_path / "tridiag.npy"
    processes = []
    for index, tf_config in enumerate(local_cluster(2)):
        args = ["--strategy", "multi_worker"] + (["--perturb-weights"] if index == perturbed_worker else [])
        processes.append(run_worker(out, *args, env=environment(TF_CONFIG=json.dumps(tf_config))))
    try:
        return out, [finish(process) for process in processes]
    finally:
        for process in processes:
            process.kill()


@pytest.mark.slow
def test_two_worker_processes_give_the_one_process_tridiagonal(tmp_path, one_device_tridiagonal):
    out, results = multi_worker_processes(tmp_path)
    for code, output in results:
        assert code == 0, output
    np.testing.assert_allclose(np.load(out), one_device_tridiagonal, rtol=0,
                               atol=1e-12 * np.abs(one_device_tridiagonal).max())


@pytest.mark.slow
def test_a_worker_on_a_different_checkpoint_fails_every_worker_with_a_message(tmp_path):
    out, results = multi_worker_processes(tmp_path, perturbed_worker=1)
    for code, output in results:
        assert code == 3
        assert "hold different weights" in output and "same checkpoint file" in output
    assert not out.exists()


@pytest.fixture(scope="module")
def lanczos_job_inputs(tmp_path_factory):
    """A checkpoint and data files as the workflow writes them, and a job spec for them."""
    from hessflow import models, training

    folder = tmp_path_factory.mktemp("job")
    rng = np.random.default_rng(1)
    np.save(folder / "images.npy", rng.integers(0, 17, size=(110, 8, 8, 1), dtype=np.uint8))
    np.save(folder / "labels.npy", rng.integers(0, 10, size=110).astype(np.int64))
    training.save_checkpoint(models.small_cnn(batch_norm=True, seed=0), folder / "step_0.weights.h5")
    card = {"input_shape": [8, 8, 1], "num_classes": 10, "output_shape": [10], "x_dtype": "uint8"}
    (folder / "dataset.json").write_text(json.dumps(card))
    return {
        "checkpoint": str(folder / "step_0.weights.h5"),
        "images": str(folder / "images.npy"),
        "labels": str(folder / "labels.npy"),
        "card": str(folder / "dataset.json"),
        "model": {"factory": "small_cnn", "options": {"batch_norm": True}},
        "objective": {"loss": {"name": "SparseCategoricalCrossentropy", "options": {"from_logits": True}},
                      "weight_decay": 5e-4, "preprocess": "auto"},
        "hessian": {"batch_size": 25, "batch_norm": "train", "dtype": "float32", "max_examples": None},
        "num_steps": 12, "save_every": 4, "run_seed": 0, "step": 0, "draw": 0,
        "strategy": "default", "workers": 1,
    }


def job_spec(base, folder, **changes):
    outputs = {name: str(folder / f"{name}.{'json' if name == 'provenance' else 'npy'}")
               for name in ("tridiag", "provenance", "vectors")}
    return {**base, "state_file": str(folder / ".state.npz"), "outputs": outputs, **changes}


@pytest.mark.slow
def test_a_multi_worker_lanczos_job_equals_the_one_process_job(tmp_path, lanczos_job_inputs, monkeypatch):
    single, multi = tmp_path / "single", tmp_path / "multi"
    single.mkdir(), multi.mkdir()
    spec_file = single / "spec.json"
    spec_file.write_text(json.dumps(job_spec(lanczos_job_inputs, single)))
    done = subprocess.run([sys.executable, "-m", "hessflow.lanczos_job", str(spec_file)], env=environment(),
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    spec_file = multi / "spec.json"
    spec_file.write_text(json.dumps(job_spec(lanczos_job_inputs, multi, strategy="multi_worker")))
    log = []
    monkeypatch.setenv("PYTHONPATH", environment()["PYTHONPATH"])  # for the workers it starts
    launch_workers(spec_file, 2, timeout=TIMEOUT, log=log.append)
    provenance = json.loads((multi / "provenance.json").read_text())
    assert provenance["replicas"] == 2 and provenance["strategy"] == "multi_worker"
    expected = np.load(single / "tridiag.npy")
    # float32 products, float64 sums in another order: equal to float32-HVP round-off.
    np.testing.assert_allclose(np.load(multi / "tridiag.npy"), expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    assert not (multi / ".state.npz").exists()


CLAIM = """
import sys, time
from hessflow.gpu_lock import claim_gpus
print(claim_gpus(1, lock_dir=sys.argv[1], timeout=60, poll=0.1, log=lambda _: None), flush=True)
time.sleep(float(sys.argv[2]))
"""


def claim(lock_dir, hold_seconds):
    env = environment(HESSFLOW_GPU_COUNT="2")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return subprocess.Popen([sys.executable, "-c", CLAIM, str(lock_dir), str(hold_seconds)], env=env,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)


def test_concurrent_jobs_get_distinct_gpus_and_a_killed_jobs_gpu_is_reclaimed(tmp_path):
    first, second = claim(tmp_path, 60), claim(tmp_path, 60)
    try:
        ids = {first.stdout.readline().strip(), second.stdout.readline().strip()}
        assert ids == {"[0]", "[1]"}
        third = claim(tmp_path, 0)  # both GPUs taken: it waits
        time.sleep(1.0)
        assert third.poll() is None
        os.killpg(first.pid, signal.SIGKILL)  # a crashed job: the kernel drops its lock
        output, _ = third.communicate(timeout=30)
        assert output.strip() in ids
    finally:
        for process in (first, second):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)


def test_a_scheduler_assigned_gpu_set_is_left_alone(monkeypatch, tmp_path):
    from hessflow.gpu_lock import claim_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.setenv("HESSFLOW_GPU_COUNT", "4")
    assert claim_gpus(1, lock_dir=tmp_path, log=lambda _: None) == []
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"


def test_a_job_that_asks_for_no_gpu_is_kept_off_the_gpus(monkeypatch, tmp_path):
    from hessflow.gpu_lock import claim_gpus

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("HESSFLOW_GPU_COUNT", "2")
    assert claim_gpus(0, lock_dir=tmp_path, log=lambda _: None) == []
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""


@pytest.mark.parametrize(
    "kind,devices,message",
    [("ring", 1, "lanczos.strategy must be one of"), ("default", 2, "runs on one device"),
     ("mirrored", 0, "lanczos.workers must be")],
)
def test_invalid_strategies_are_refused_by_config_key(kind, devices, message):
    from hessflow.distribute import make_strategy

    with pytest.raises(ValueError, match=message):
        make_strategy(kind, devices)


@pytest.mark.parametrize("num_batches,replicas", [(7, 2), (7, 3), (2, 5), (6, 3), (1, 1)])
def test_replica_rounds_follow_the_worker_partition_with_zero_weighted_stand_ins(num_batches, replicas):
    from hessflow.data import worker_batch_indices
    from hessflow.distribute import replica_rounds

    rounds = replica_rounds(num_batches, replicas)
    assert len(rounds) == -(-num_batches // replicas) and all(len(r) == replicas for r in rounds)
    for replica in range(replicas):
        weighted = [index for r in rounds for index, weight in [r[replica]] if weight == 1.0]
        assert weighted == worker_batch_indices(num_batches, replica, replicas)
        stand_ins = {index for r in rounds for index, weight in [r[replica]] if weight == 0.0}
        assert stand_ins <= {replica % num_batches}
    counted = sorted(index for r in rounds for index, weight in r if weight == 1.0)
    assert counted == list(range(num_batches))  # every batch exactly once


def test_replica_rounds_of_seven_batches_over_two_replicas():
    from hessflow.distribute import replica_rounds

    assert replica_rounds(7, 2) == [
        [(0, 1.0), (1, 1.0)], [(2, 1.0), (3, 1.0)], [(4, 1.0), (5, 1.0)], [(6, 1.0), (1, 0.0)]]
