"""Time of one Lanczos run (the demo model, 90 steps) with W = 1 and W = 2 replicas.

Each configuration runs in a process of its own (a strategy must exist before
TensorFlow initializes its devices), one after the other, on the demo's data:
the small batch-norm CNN on the 1,797 digits in 4 fixed batches of 500/500/500/297.
On a machine without GPUs, W = 2 means two logical CPU devices sharing the same
cores: a correctness configuration, not a speed-up. Prints a table and appends it
to benchmarks/RESULTS.md.

    python benchmarks/lanczos_workers.py
"""

import datetime
import json
import platform
import subprocess
import sys
from pathlib import Path

RUN = r"""
import json, sys, time
from hessflow import distribute
kind, workers = sys.argv[1], int(sys.argv[2])
strategy = distribute.make_strategy(kind, workers)
import keras, numpy as np
from hessflow import data, models
from hessflow.hvp import HessianOperator
from hessflow.lanczos import lanczos
images, labels = data.load_digits()
operator = HessianOperator(models.small_cnn(batch_norm=True),
                           data.fixed_batches(data.standardize_per_image(images), labels, 500),
                           keras.losses.SparseCategoricalCrossentropy(from_logits=True), weight_decay=5e-4,
                           strategy=strategy)
operator.matvec(np.ones(operator.dim))  # trace outside the timing
start = time.perf_counter()
result = lanczos(operator.matvec, operator.dim, 90, seed=(0, 0, 0), keep_vectors=False)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "lambda_max": float(np.linalg.eigvalsh(result.tridiag)[-1]),
                  "replicas": operator.num_replicas}))
"""


def main():
    rows = []
    for kind, workers in [("default", 1), ("mirrored", 1), ("mirrored", 2)]:
        done = subprocess.run([sys.executable, "-c", RUN, kind, str(workers)], capture_output=True, text=True,
                              check=True)
        rows.append({"strategy": kind, "W": workers, **json.loads(done.stdout.strip().splitlines()[-1])})
    base = rows[0]["seconds"]
    lines = [
        f"### Lanczos run with W workers — {platform.node()}, {platform.processor() or platform.machine()}, "
        f"{datetime.date.today()}",
        "",
        "Demo model (small CNN + batch norm, 3,842 parameters), 1,797 digits in batches of 500, 90 steps, float32.",
        "",
        "| strategy | W | seconds | ratio to default | λmax |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r['strategy']} | {r['W']} | {r['seconds']:.2f} | {r['seconds'] / base:.2f} | {r['lambda_max']:.6f} |"
              for r in rows]
    table = "\n".join(lines) + "\n"
    print(table)
    results = Path(__file__).with_name("RESULTS.md")
    with results.open("a") as handle:
        handle.write("\n" + table)


if __name__ == "__main__":
    main()
