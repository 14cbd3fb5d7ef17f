"""Distinct GPUs for concurrent jobs on one machine.

Snakemake counts ``gpu`` resources (with ``--resources gpu=N``) but does not
say *which* GPU a local job gets, and TensorFlow takes every visible GPU. A
job therefore claims GPU ids itself: an exclusive, non-blocking `fcntl.flock`
on one lock file per GPU. The kernel drops a process's locks when it exits,
however it exits, so a crashed or killed job never leaves a GPU claimed.
The claim sets ``CUDA_VISIBLE_DEVICES``, so it must happen before TensorFlow
initializes its devices: this module imports no TensorFlow.

Where a scheduler already assigns GPUs (Slurm sets ``CUDA_VISIBLE_DEVICES``
for ``--gpus``), the claim is a no-op.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["claim_gpus", "gpu_count", "DEFAULT_LOCK_DIR"]

DEFAULT_LOCK_DIR = Path(tempfile.gettempdir()) / "hessflow-gpu-locks"


def gpu_count() -> int:
    """GPUs on this machine: ``HESSFLOW_GPU_COUNT`` if set, else ``nvidia-smi -L``'s lines."""
    if "HESSFLOW_GPU_COUNT" in os.environ:
        return int(os.environ["HESSFLOW_GPU_COUNT"])
    if shutil.which("nvidia-smi") is None:
        return 0
    listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    return sum(line.startswith("GPU ") for line in listing.stdout.splitlines())


def claim_gpus(count: int, *, lock_dir: str | os.PathLike = DEFAULT_LOCK_DIR, timeout: float = 600.0,
               poll: float = 1.0, log=print) -> list[int]:
    """Claim ``count`` free GPU ids for the rest of this process; set ``CUDA_VISIBLE_DEVICES``.

    Returns the claimed ids (empty when ``count`` is 0, when the scheduler
    already chose the GPUs, or on a machine without GPUs). A job that asks
    for no GPU is kept off them (``CUDA_VISIBLE_DEVICES=""``): TensorFlow would
    otherwise reserve memory on every GPU, under other jobs' feet. Waits up to
    ``timeout`` seconds for enough GPUs to be free, then raises TimeoutError.
    The lock file objects are kept open for the life of the process on purpose.
    """
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        log(f"GPUs chosen by the scheduler: CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r}")
        return []
    total = gpu_count()
    if total == 0:
        if count > 0:
            log("no GPU on this machine: running on the CPU")
        return []
    if count <= 0:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        return []
    if count > total:
        raise ValueError(f"a job asks for {count} GPUs but this machine has {total}")
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    while True:
        held = []
        for gpu in range(total):
            handle = open(lock_dir / f"gpu{gpu}.lock", "a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            held.append((gpu, handle))
            if len(held) == count:
                ids = [gpu for gpu, _ in held]
                _HELD.extend(handle for _, handle in held)
                os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, ids))
                log(f"claimed GPU(s) {ids} (locks in {lock_dir})")
                return ids
        for _, handle in held:  # not enough free: give back what we took, wait, retry
            handle.close()
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"no {count} free GPU(s) of {total} within {timeout:.0f} s (locks in {lock_dir}): run "
                f"snakemake with --resources gpu={total} so that it never starts more GPU jobs than GPUs"
            )
        time.sleep(poll)


_HELD: list = []  # open lock files: a claim lasts as long as the process
