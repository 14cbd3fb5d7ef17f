"""Strategies for a Hessian pass over several devices or hosts, and their checks.

A Lanczos job's Hessian-vector product is a sum over fixed batches. With W
replicas, batch j goes to replica j mod W (`hessflow.data.worker_batch_indices`),
each replica sums its batches' products, and the sums are all-reduced: the
operator is the one-replica operator for any W, batch norm in ``train`` mode
included, because no batch is ever split.

Three kinds, chosen by config (``lanczos.strategy``):

``default``
    one device, no `tf.distribute` (the operator's own loop).
``mirrored``
    `tf.distribute.MirroredStrategy` over the local GPUs (the paper code had
    no such "multi-tower" mode), or, on a machine without GPUs, over logical
    CPU devices (for tests; no speed-up on CPU).
``multi_worker``
    `tf.distribute.MultiWorkerMirroredStrategy` over hosts (or processes), the
    cluster taken from ``TF_CONFIG`` or, inside a Slurm job step, from Slurm's
    environment (`tf.distribute.cluster_resolver.SlurmClusterResolver`).
"""

from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf

__all__ = [
    "STRATEGIES",
    "make_strategy",
    "cluster_resolver",
    "is_chief",
    "check_same_weights",
    "WeightsMismatchError",
]

STRATEGIES = ("default", "mirrored", "multi_worker")


class WeightsMismatchError(RuntimeError):
    """Replicas of one Hessian pass hold different weights."""


def _local_devices(num_devices: int) -> list[str]:
    """``num_devices`` local devices: GPUs if there are enough, else logical CPUs.

    Logical CPU devices must be configured before TensorFlow initializes its
    runtime, so call this (through `make_strategy`) before any other TF op.
    """
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        if num_devices > len(gpus):
            raise ValueError(
                f"lanczos.workers = {num_devices} but this machine shows {len(gpus)} GPU(s) "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): ask for "
                f"{num_devices} GPUs (resources.lanczos.gpu) or lower lanczos.workers"
            )
        return [f"/gpu:{i}" for i in range(num_devices)]
    (cpu,) = tf.config.list_physical_devices("CPU")
    # (list_logical_devices would initialize the runtime; the configuration does not.)
    configured = tf.config.get_logical_device_configuration(cpu) or [None]
    if len(configured) < num_devices:
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices)
        except RuntimeError as error:
            raise RuntimeError(
                f"cannot split the CPU into {num_devices} logical devices after TensorFlow has "
                "initialized: build the strategy first"
            ) from error
    return [f"/cpu:{i}" for i in range(num_devices)]


def cluster_resolver() -> tf.distribute.cluster_resolver.ClusterResolver:
    """The cluster of a multi-worker job: ``TF_CONFIG`` if set, else Slurm's job step."""
    if os.environ.get("TF_CONFIG"):
        return tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if "SLURM_STEP_ID" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        # One task per worker (tasks_per_gpu=1 in the SLURM profile); the
        # resolver reads SLURM_PROCID, SLURM_STEP_NODELIST and friends.
        return tf.distribute.cluster_resolver.SlurmClusterResolver(
            port_base=int(os.environ.get("HESSFLOW_PORT_BASE", "28888")),
            gpus_per_task=int(os.environ.get("SLURM_GPUS_PER_TASK", "0") or 0),
            auto_set_gpu=False,
        )
    raise RuntimeError(
        "lanczos.strategy is multi_worker but neither TF_CONFIG nor a Slurm job step describes the "
        "cluster: run the job through the SLURM profile (mpi: srun) or set TF_CONFIG"
    )


def make_strategy(kind: str, num_devices: int = 1) -> tf.distribute.Strategy | None:
    """The `tf.distribute` strategy of ``kind`` (one of `STRATEGIES`); None for ``default``.

    ``num_devices``: replicas for ``mirrored`` (local devices). For
    ``multi_worker`` each worker process uses its local GPUs (or its CPU); the
    number of workers comes from the cluster.
    """
    if kind not in STRATEGIES:
        raise ValueError(f"lanczos.strategy must be one of {STRATEGIES}, got {kind!r}")
    if not (isinstance(num_devices, int) and num_devices >= 1):
        raise ValueError(f"lanczos.workers must be an int >= 1, got {num_devices!r}")
    if kind == "default":
        if num_devices != 1:
            raise ValueError(f"lanczos.strategy default runs on one device; lanczos.workers is {num_devices}")
        return None
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy(_local_devices(num_devices))
    return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=cluster_resolver())


def is_chief(strategy: tf.distribute.Strategy | None) -> bool:
    """Whether this process writes the job's artifacts (task 0 of a multi-worker cluster)."""
    resolver = getattr(getattr(strategy, "extended", None), "_cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type is None:
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "chief" or (not has_chief and task_type == "worker" and task_id == 0)


def task_description() -> str:
    """This process's place in the cluster, for messages."""
    config = os.environ.get("TF_CONFIG")
    if config:
        task = json.loads(config).get("task", {})
        return f"{task.get('type', 'worker')} {task.get('index', 0)}"
    if "SLURM_PROCID" in os.environ:
        return f"Slurm task {os.environ['SLURM_PROCID']}"
    return "this process"


def check_same_weights(strategy: tf.distribute.Strategy | None, checksum: str) -> None:
    """Fail on every replica if any replica's weights checksum (sha256 hex) differs.

    Each replica contributes its digest; the digests are all-gathered, so
    every worker sees which replicas disagree and stops with the same message
    (a worker on other weights would silently compute another operator).
    """
    if strategy is None:
        return
    digest = np.frombuffer(bytes.fromhex(checksum), dtype=np.uint8).astype(np.float64)

    @tf.function
    def gather():
        local = strategy.run(lambda: tf.constant(digest[None, :]))
        return strategy.gather(local, axis=0)

    digests = np.asarray(gather().numpy(), dtype=np.uint8)
    distinct = {bytes(row).hex() for row in digests}
    if len(distinct) > 1:
        differing = [i for i, row in enumerate(digests) if bytes(row).hex() != checksum]
        raise WeightsMismatchError(
            f"the workers of this Lanczos job hold different weights ({len(distinct)} distinct checkpoint "
            f"checksums over {len(digests)} replicas; replicas {differing} differ from {task_description()}'s "
            f"{checksum[:12]}…): every worker must load the same checkpoint file — check that the results "
            "folder is on a file system all nodes share and that no job rewrote it"
        )
