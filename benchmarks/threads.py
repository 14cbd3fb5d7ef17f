"""Item 6 of issue 10 -- two concurrent Lanczos jobs, with and without the thread limit.

Snakemake counts a job as its rule's ``threads:`` (default 1). Before hessflow declared them,
every TensorFlow job also sized its thread pools (and numpy's BLAS) to every core of the machine,
so ``--cores C`` ran C jobs of C threads each. This script runs the demo's Lanczos job (small CNN
with batch norm, n = 3,842, the 1,438 training digits in batches of 500, float32) as separate
processes, the way the workflow's ``lanczos`` jobs run, in three schedules on this machine:

- ``unlimited``: 2 jobs at once, each with TensorFlow's and the BLAS's default pools (every core):
  what ``--cores 2`` did before rules declared threads;
- ``threads=1``: 2 jobs at once, each limited to 1 thread (``hessflow.jobs.start_job``'s limits):
  ``resources.lanczos.threads: 1`` under ``--cores 2``;
- ``threads=2``: the 2 jobs one after the other, each with 2 threads: ``threads: 2`` under
  ``--cores 2`` (Snakemake then starts one at a time).

Each job times its Lanczos run alone (``--steps`` steps, after building the operator and one
untimed HVP that traces the graph); the makespan is the wall time from starting the first job to
the end of the last, process start-up (TensorFlow import, model build) included. The schedules
run in interleaved rounds; medians are reported. Usage:

    .venv/bin/python benchmarks/threads.py [--steps 30] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SCHEDULES = {  # name: (jobs at once, threads per job; 0 = no limit)
    "unlimited": (2, 0),
    "threads=1": (2, 1),
    "threads=2": (1, 2),
}


def child(threads: int, steps: int, draw: int) -> None:
    """One Lanczos job in this process; prints one JSON line."""
    if threads:
        from hessflow.jobs import limit_threads, set_tensorflow_threads

        limit_threads(threads)
        set_tensorflow_threads(threads)
    import keras
    import numpy as np

    from hessflow import data, models
    from hessflow.hvp import HessianOperator
    from hessflow.lanczos import lanczos

    images, labels = data.load_digits()
    train, _ = data.train_test_split(images, labels, 0.2, seed=0)
    x = data.standardize_per_image(train[0])
    model = models.small_cnn(input_shape=x.shape[1:], num_classes=10, batch_norm=True, seed=0)
    operator = HessianOperator(model, data.fixed_batches(x, train[1], 500),
                               loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                               weight_decay=5e-4, batch_norm="train")
    operator.matvec(np.ones(operator.dim))  # trace the HVP graph, untimed
    start = time.perf_counter()
    result = lanczos(operator.matvec, operator.dim, steps, seed=(0, 0, draw))
    seconds = time.perf_counter() - start
    print(json.dumps({"lanczos_seconds": seconds, "dim": operator.dim, "steps": int(result.tridiag.shape[0]),
                      "os_threads": len(os.listdir("/proc/self/task"))}), flush=True)


def run_schedule(name: str, steps: int) -> dict:
    at_once, threads = SCHEDULES[name]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                     "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        env.pop(variable, None)  # "unlimited" means the libraries' defaults
    command = [sys.executable, __file__, "--child", str(threads), "--steps", str(steps)]
    start = time.perf_counter()
    outputs = []
    for group in ([0, 1],) if at_once == 2 else ([0], [1]):
        processes = [subprocess.Popen([*command, "--draw", str(draw)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True) for draw in group]
        for process in processes:
            out, err = process.communicate(timeout=1800)
            if process.returncode != 0:
                raise RuntimeError(f"{name}: child failed ({process.returncode}):\n{err[-3000:]}")
            outputs.append(json.loads(out.strip().splitlines()[-1]))
    return {"makespan": time.perf_counter() - start, "jobs": outputs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--draw", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.steps, args.draw)
        return

    load_before = common.load_average()
    started = time.perf_counter()
    names = list(SCHEDULES)
    runs = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            runs[name].append(run_schedule(name, args.steps))
            print(f"round {r + 1}/{args.rounds} {name}: makespan {runs[name][-1]['makespan']:.1f} s", flush=True)

    baseline = common.median([run["makespan"] for run in runs["unlimited"]])
    rows = []
    for name in names:
        at_once, threads = SCHEDULES[name]
        makespan = common.median([run["makespan"] for run in runs[name]])
        per_job = common.median([job["lanczos_seconds"] for run in runs[name] for job in run["jobs"]])
        os_threads = max(job["os_threads"] for run in runs[name] for job in run["jobs"])
        rows.append([name, at_once, threads or f"every core ({os.cpu_count()})", per_job,
                     per_job / args.steps, makespan, makespan / baseline, os_threads])
    headers = ["schedule", "jobs at once", "TF/BLAS threads per job", "Lanczos s per job",
               "s per Lanczos step", "makespan s (2 jobs)", "/ unlimited", "OS threads per job (max)"]
    table = common.markdown_table(headers, rows)
    dim = runs["unlimited"][0]["jobs"][0]["dim"]
    body = (f"### Two Lanczos jobs of the demo ({args.steps} steps, n = {dim:,}): schedules by thread limit\n\n"
            f"{table}\n\n"
            f"Medians of {args.rounds} interleaved rounds. *Lanczos s per job*: the Lanczos run alone, inside "
            "each job; *makespan*: first job's start to last job's end, process start-up (TensorFlow import, "
            "model build, graph tracing) included. `unlimited` is what `--cores 2` did before rules declared "
            "`threads:`; `threads=1` and `threads=2` are `resources.lanczos.threads` 1 and 2 under `--cores 2`.\n\n"
            f"Script wall time: {time.perf_counter() - started:.0f} s.")
    common.append_results("threads.py: concurrent Lanczos jobs and thread limits", body,
                          common.versions("numpy", "tensorflow", "keras"), load_before,
                          command=" ".join(["benchmarks/threads.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
