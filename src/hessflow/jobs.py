"""What every workflow job does first: its log, the console, its GPUs and its threads.

A rule's script calls :func:`start_job` before anything else (before numpy or TensorFlow is
imported)::

    start_job(snakemake)                                         # a numpy/pandas rule
    start_job(snakemake, gpus=snakemake.resources.gpu, tensorflow=True)   # a TensorFlow rule

1. **The log.** Python's ``sys.stdout``/``sys.stderr`` *and* the process's file descriptors 1
   and 2 go to the job's log (``snakemake.log[0]``). TensorFlow's C++ runtime writes its lines
   (oneDNN notices, ``cuInit`` errors on a machine without a GPU) straight to descriptor 2, which a
   Python-level redirection misses: they would reach the console that shows Snakemake's progress.
   Child processes (the multi-worker Lanczos workers, ``srun``) inherit the redirection.
2. **TensorFlow's own log level.** ``TF_CPP_MIN_LOG_LEVEL`` defaults to ``1`` (no INFO lines;
   warnings and errors stay in the log); a value already set is kept.
3. **GPUs** (``gpus`` given): :func:`hessflow.gpu_lock.claim_gpus`, before TensorFlow starts.
4. **Threads.** Snakemake counts a job as ``snakemake.threads`` cores (the rule's ``threads:``,
   from config ``resources.<rule>.threads``), but TensorFlow and the BLAS under numpy would each
   take every core of the machine. The thread count goes to the BLAS/OpenMP variables (read when
   numpy loads), to ``TF_NUM_INTRAOP_THREADS``/``TF_NUM_INTEROP_THREADS`` (read by TensorFlow in
   processes this job starts) and, with ``tensorflow=True``, to
   ``tf.config.threading``'s intra- and inter-op pools, before TensorFlow initializes.

This module imports neither Snakemake (the ``snakemake`` object is only read: ``log``,
``threads``) nor, until step 4 asks for it, TensorFlow.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any, TextIO

__all__ = [
    "THREAD_VARIABLES",
    "TF_LOG_LEVEL",
    "limit_threads",
    "redirect_output",
    "set_tensorflow_threads",
    "start_job",
    "tensorflow_threads",
]

#: Environment variables that cap a library's thread pool, each set to the job's thread count.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
)
#: ``TF_CPP_MIN_LOG_LEVEL`` unless set: 1 drops TensorFlow's INFO lines, keeps warnings and errors.
TF_LOG_LEVEL = "1"


def redirect_output(log_path: str | os.PathLike) -> TextIO:
    """Send ``sys.stdout``, ``sys.stderr`` and file descriptors 1 and 2 to ``log_path`` (truncated).

    Returns the log's (line-buffered) file object, which is also the new ``sys.stdout`` and
    ``sys.stderr``. Whatever was buffered before is flushed to the old destinations first.
    """
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    log = open(log_path, "w", buffering=1)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    return log


def limit_threads(threads: int) -> None:
    """Cap OpenMP, the BLAS libraries and TensorFlow (in later processes) at ``threads`` threads.

    Environment only: it must run before numpy (its BLAS) is imported.
    """
    if threads < 1:
        raise ValueError(f"threads must be at least 1, not {threads}")
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)


def set_tensorflow_threads(threads: int) -> None:
    """Size TensorFlow's intra-op and inter-op thread pools to ``threads`` (imports TensorFlow).

    Must run before TensorFlow initializes its runtime (its first op, device list or strategy):
    TensorFlow refuses later changes.
    """
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def tensorflow_threads() -> int:
    """TensorFlow's intra-op thread count as set for this process (0: TensorFlow's default, every core).

    ``tf.config.threading``'s value, else ``TF_NUM_INTRAOP_THREADS`` (how a worker process started
    by a job inherits the job's count), else 0.
    """
    import tensorflow as tf

    return tf.config.threading.get_intra_op_parallelism_threads() or int(os.environ.get("TF_NUM_INTRAOP_THREADS", 0))


def exit_cleanly_on_sigterm() -> None:
    """Turn SIGTERM (Snakemake cancelling a job, a scheduler's preemption) into ``SystemExit``.

    Python's default is to die at once; as an exception, it unwinds the job: an artifact being
    written (`hessflow.artifacts.atomic_write`) removes its temporary file, and the exit status
    is still 128 + 15. Python handles the signal between bytecodes, so a running TensorFlow op
    finishes first.
    """
    def leave(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, leave)


def start_job(job: Any, *, gpus: int | None = None, tensorflow: bool = False) -> TextIO:
    """The set-up of one workflow job (see the module docstring); returns the log file object.

    ``job``: a script's ``snakemake`` object (``job.log[0]`` the log, ``job.threads`` the
    threads). ``gpus``: GPUs to claim (None: leave ``CUDA_VISIBLE_DEVICES`` alone; 0 keeps the
    job off the GPUs). ``tensorflow``: size TensorFlow's thread pools (imports TensorFlow).
    """
    log = redirect_output(job.log[0])
    exit_cleanly_on_sigterm()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", TF_LOG_LEVEL)
    threads = int(job.threads)
    limit_threads(threads)
    if gpus is not None:
        from hessflow.gpu_lock import claim_gpus

        claim_gpus(gpus)
    if tensorflow:
        set_tensorflow_threads(threads)
        print(f"TensorFlow thread pools: {threads} intra-op, {threads} inter-op")
    return log
