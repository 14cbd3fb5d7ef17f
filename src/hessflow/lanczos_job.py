"""One Lanczos job: one SLQ draw of the Hessian at one checkpoint, on one or many workers.

The workflow's ``lanczos`` rule runs `run_lanczos_job`; for a multi-worker
job it starts one process per worker (`launch_workers`: through ``srun``
inside a Slurm allocation, else as local processes with a ``TF_CONFIG`` on
127.0.0.1), each of which runs ``python -m hessflow.lanczos_job SPEC.json``.
Every worker computes the same Lanczos recurrence on the all-reduced
Hessian-vector products; only the chief writes artifacts. The job spec is a
plain JSON-able dict:

    checkpoint, images, labels          input paths (.weights.h5, uint8 NHWC .npy, int64 .npy)
    model: {architecture, options}      as in the config
    hessian: {batch_size, batch_norm, dtype, max_examples}
    weight_decay, num_steps, save_every, run_seed, step, draw
    strategy, workers                   `hessflow.distribute.STRATEGIES`, replicas per worker
    state_file                          resumable Lanczos state (undeclared, beside outputs)
    outputs: {tridiag, provenance, vectors (optional)}
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["run_lanczos_job", "launch_workers", "local_cluster"]


def _progress_logger(log, start: float):
    def report(done: int, total: int) -> None:
        elapsed = time.perf_counter() - start
        left = elapsed / done * (total - done)
        log(f"Lanczos step {done}/{total}, elapsed {elapsed:.1f} s, estimated time left {left:.1f} s")

    return report


def run_lanczos_job(spec: dict, log=print) -> dict | None:
    """Run the job ``spec`` in this process; returns the provenance on the chief, else None."""
    # The strategy must exist before TensorFlow initializes its devices.
    from hessflow import distribute

    strategy = distribute.make_strategy(spec["strategy"], spec["workers"])

    import keras
    import numpy as np
    import tensorflow as tf

    import hessflow
    from hessflow import artifacts, data, models, training
    from hessflow.hvp import HessianOperator
    from hessflow.lanczos import lanczos

    start = time.perf_counter()
    hessian = spec["hessian"]
    images, labels = np.load(spec["images"]), np.load(spec["labels"])
    if hessian["max_examples"] is not None:
        images, labels = images[: hessian["max_examples"]], labels[: hessian["max_examples"]]
    model = models.build_model(
        spec["model"]["architecture"],
        input_shape=images.shape[1:],
        num_classes=int(labels.max()) + 1,
        seed=spec["run_seed"],
        dtype=hessian["dtype"],
        **spec["model"]["options"],
    )
    training.load_checkpoint(model, spec["checkpoint"])
    checksum = training.weights_checksum(model)
    distribute.check_same_weights(strategy, checksum)
    operator = HessianOperator(
        model,
        data.fixed_batches(data.standardize_per_image(images, dtype=np.dtype(hessian["dtype"])), labels,
                           hessian["batch_size"]),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weight_decay=spec["weight_decay"],
        batch_norm=hessian["batch_norm"],
        dtype=hessian["dtype"],
        strategy=strategy,
    )
    loss, gradient = operator.loss_and_gradient()
    step, draw = spec["step"], spec["draw"]
    log(f"step {step}, draw {draw}: n = {operator.dim:,} parameters, {operator.num_examples:,} examples in "
        f"{operator.num_batches} batches over {operator.num_replicas} replica(s) ({spec['strategy']}); "
        f"loss {loss:.6g}, gradient norm {np.linalg.norm(gradient):.6g}")

    chief = distribute.is_chief(strategy)
    state_file = spec["state_file"] if chief else f"{spec['state_file']}.{distribute.task_description().replace(' ', '_')}"
    if os.path.exists(state_file):
        log(f"found resumable state {state_file}")
    lanczos_start = time.perf_counter()
    seed = (spec["run_seed"], step, draw)
    result = lanczos(
        operator.matvec,
        operator.dim,
        spec["num_steps"],
        seed=seed,
        keep_vectors="vectors" in spec["outputs"],
        state_file=state_file,
        save_every=spec["save_every"],
        progress=_progress_logger(log, lanczos_start),
    )
    if result.resumed_from is not None:
        log(f"resumed from Lanczos step {result.resumed_from}")
    if result.stopped_early:
        log(f"invariant subspace: stopped early after {result.tridiag.shape[0]} steps")
    if not chief:
        if os.path.exists(state_file):
            os.remove(state_file)
        return None

    outputs = spec["outputs"]
    artifacts.save_npy(outputs["tridiag"], result.tridiag)
    if "vectors" in outputs:
        artifacts.save_npy(outputs["vectors"], result.vectors)
    provenance = {
        "step": step,
        "draw": draw,
        "seed": list(seed),
        "num_steps": int(result.tridiag.shape[0]),
        "requested_steps": spec["num_steps"],
        "stopped_early": bool(result.stopped_early),
        "resumed_from": result.resumed_from,
        "dim": operator.dim,
        "num_examples": operator.num_examples,
        "batch_size": hessian["batch_size"],
        "batch_norm": hessian["batch_norm"],
        "dtype": hessian["dtype"],
        "weight_decay": spec["weight_decay"],
        "strategy": spec["strategy"],
        "replicas": operator.num_replicas,
        "loss": loss,
        "gradient_norm": float(np.linalg.norm(gradient)),
        "checkpoint": spec["checkpoint"],
        "weights_sha256": checksum,
        "wall_seconds": time.perf_counter() - start,
        "lanczos_seconds": time.perf_counter() - lanczos_start,
        "hessflow_version": hessflow.__version__,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "devices": [device.name for device in tf.config.list_logical_devices()],
        "host": platform.node(),
    }
    artifacts.save_json(outputs["provenance"], provenance)
    if os.path.exists(state_file):  # outputs are in place: the resumable state has served
        os.remove(state_file)
    return provenance


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def local_cluster(num_workers: int) -> list[dict]:
    """``TF_CONFIG`` of each of ``num_workers`` processes on this machine (127.0.0.1)."""
    workers = [f"127.0.0.1:{port}" for port in _free_ports(num_workers)]
    return [{"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}} for i in range(num_workers)]


def launch_workers(spec_file: str | os.PathLike, num_workers: int, *, timeout: float | None = None,
                   log=print) -> None:
    """Run ``python -m hessflow.lanczos_job spec_file`` as ``num_workers`` cooperating processes.

    Inside a Slurm allocation with several tasks, ``srun`` starts them (one per
    task; `tf.distribute.cluster_resolver.SlurmClusterResolver` wires them up).
    Elsewhere they are local processes with a ``TF_CONFIG`` each. The chief's
    output goes to this process's stdout (the job log); each other worker's is
    printed after it ends. Raises RuntimeError naming the failed workers.
    """
    command = [sys.executable, "-m", "hessflow.lanczos_job", str(spec_file)]
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        log(f"starting {os.environ['SLURM_NTASKS']} workers with srun")
        done = subprocess.run(["srun", "--kill-on-bad-exit=1", *command], timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"the Lanczos workers (srun) failed with exit status {done.returncode}")
        return
    log(f"starting {num_workers} local workers (TF_CONFIG on 127.0.0.1)")
    processes = []
    for index, tf_config in enumerate(local_cluster(num_workers)):
        env = {**os.environ, "TF_CONFIG": json.dumps(tf_config)}
        # The chief writes into this process's stdout (the job log, possibly a
        # Python-level redirection: hence the explicit file); the others are kept.
        output = sys.stdout if index == 0 else subprocess.PIPE
        processes.append(subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, text=True))
    failed = []
    try:
        for index, process in enumerate(processes):
            output, _ = process.communicate(timeout=timeout)
            if output:
                log(f"--- worker {index} ---\n{output}")
            if process.returncode != 0:
                failed.append((index, process.returncode))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    if failed:
        raise RuntimeError(f"Lanczos worker(s) failed (index, exit status): {failed}; see the job log")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m hessflow.lanczos_job SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    from hessflow.distribute import WeightsMismatchError

    try:
        run_lanczos_job(spec, log=lambda message: print(message, flush=True))
    except WeightsMismatchError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
