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

A pass runs in rounds (`replica_rounds`): in round r, replica k evaluates the
r-th of its batches; a replica whose batches are used up evaluates a stand-in
batch weighted by 0 (every replica must take part in the all-reduce, and a
0-example batch would make batch norm NaN). `ReplicaRounds` places each
replica's batches on its device once and yields the rounds' distributed
inputs; `replicated_sum` turns a per-batch kernel (`hessflow.kernels`) into the
weighted, all-reduced float64 sum of one round.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import tensorflow as tf

from hessflow.data import worker_batch_indices

__all__ = [
    "STRATEGIES",
    "make_strategy",
    "cluster_resolver",
    "is_chief",
    "check_same_weights",
    "WeightsMismatchError",
    "replica_rounds",
    "ReplicaRounds",
    "replicated_sum",
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


# -- the rounds of a Hessian pass over replicas ------------------------------------------------
def replica_rounds(num_batches: int, num_replicas: int) -> list[list[tuple[int, float]]]:
    """Which batch each replica evaluates in each round, and its weight.

    Replica k's batches are ``worker_batch_indices(num_batches, k, num_replicas)``
    (batch j goes to replica j mod W, whole batches only); round r gives each
    replica the r-th of them with weight 1.0, or, once a replica's batches are
    used up, the stand-in batch ``k mod num_batches`` with weight 0.0.

    Returns:
      ``ceil(num_batches / num_replicas)`` rounds, each a list of
      ``num_replicas`` pairs ``(batch_index, weight)``; over all rounds the
      weight-1 indices are ``range(num_batches)``, each once.
    """
    if num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches}")
    shards = [worker_batch_indices(num_batches, replica, num_replicas) for replica in range(num_replicas)]
    num_rounds = max(len(shard) for shard in shards)
    return [
        [(shard[r], 1.0) if r < len(shard) else (replica % num_batches, 0.0) for replica, shard in enumerate(shards)]
        for r in range(num_rounds)
    ]


class ReplicaRounds:
    """The distributed inputs ``(x, y, weight)`` of each round of a pass over ``batches``.

    Iterating yields, per round of `replica_rounds`, one distributed value
    whose component on replica k is that replica's batch (placed on its device
    the first time, then kept there) and its float64 weight.
    """

    def __init__(self, strategy: tf.distribute.Strategy, batches: Sequence[tuple[tf.Tensor, tf.Tensor]]):
        self.strategy = strategy
        self.batches = list(batches)
        self.num_replicas = int(strategy.num_replicas_in_sync)
        self.rounds = replica_rounds(len(self.batches), self.num_replicas)
        self._placed: dict[tuple[int, int], tuple[tf.Tensor, tf.Tensor]] = {}

    def _replica_inputs(self, context, round_index: int):
        replica = context.replica_id_in_sync_group
        index, weight = self.rounds[round_index][replica]
        key = (replica, index)
        if key not in self._placed:  # keep each replica's batches on its device
            devices = self.strategy.extended.worker_devices
            with tf.device(devices[replica % len(devices)]):
                self._placed[key] = tuple(tf.identity(t) for t in self.batches[index])
        return (*self._placed[key], tf.constant(weight, tf.float64))

    def __iter__(self) -> Iterator:
        for round_index in range(len(self.rounds)):
            yield self.strategy.experimental_distribute_values_from_function(
                lambda context, r=round_index: self._replica_inputs(context, r)
            )

    def __len__(self) -> int:
        return len(self.rounds)


def replicated_sum(strategy: tf.distribute.Strategy, kernel: Callable):
    """``(inputs, *args) -> Σ_replicas weight · kernel(x, y, *args)``, all-reduced.

    ``kernel`` is an untraced per-batch function returning float64 tensors (or
    a tuple of them), e.g. `hessflow.kernels.make_hvp_sum`; ``inputs`` one
    round of `ReplicaRounds`. Rounds differ only in the batch dimension, which
    ``reduce_retracing`` generalizes after one retrace.
    """
    total = tf.distribute.ReduceOp.SUM

    @tf.function(reduce_retracing=True)
    def round_sum(inputs, *args):
        def replica(inputs, *args):
            x, y, weight = inputs
            return tf.nest.map_structure(lambda t: weight * t, kernel(x, y, *args))

        per_replica = strategy.run(replica, args=(inputs, *args))
        return tf.nest.map_structure(lambda t: strategy.reduce(total, t, axis=None), per_replica)

    return round_sum
