"""A Lanczos run on a small batch-norm CNN under a chosen strategy (run as a subprocess).

The strategy must be built before TensorFlow initializes its devices, so each
run is a process of its own. Writes the tridiagonal (and the weights checksum)
to --out; with --perturb-weights this process loads other weights.

    python distributed_worker.py --strategy mirrored --workers 2 --out t.npy
"""

import argparse
import sys

import numpy as np

from hessflow import distribute

parser = argparse.ArgumentParser()
parser.add_argument("--strategy", choices=distribute.STRATEGIES, default="default")
parser.add_argument("--workers", type=int, default=1)
parser.add_argument("--out", required=True)
parser.add_argument("--steps", type=int, default=20)
parser.add_argument("--perturb-weights", action="store_true")
args = parser.parse_args()

strategy = distribute.make_strategy(args.strategy, args.workers)

import keras  # noqa: E402

from hessflow import data, models, training  # noqa: E402
from hessflow.hvp import HessianOperator  # noqa: E402
from hessflow.lanczos import lanczos  # noqa: E402

# 7 fixed batches (6 of 25, one of 10): W = 2 takes 4 and 3 of them, uneven.
rng = np.random.default_rng(0)
x = rng.normal(size=(160, 8, 8, 1))
y = rng.integers(0, 10, 160)
model = models.small_cnn(filters=(4, 4), batch_norm=True, dtype="float64", seed=1)
if args.perturb_weights:
    kernel = model.trainable_variables[0]
    kernel.assign(kernel.numpy() * 1.01)
checksum = training.weights_checksum(model)
try:
    distribute.check_same_weights(strategy, checksum)
except distribute.WeightsMismatchError as error:
    print(error, file=sys.stderr)
    sys.exit(3)
operator = HessianOperator(
    model,
    data.fixed_batches(x, y, 25),
    keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    weight_decay=1e-3,
    batch_norm="train",
    dtype="float64",
    strategy=strategy,
)
result = lanczos(operator.matvec, operator.dim, args.steps, seed=(0, 0, 0), keep_vectors=False)
if distribute.is_chief(strategy):
    np.save(args.out, result.tridiag)
print(f"replicas {operator.num_replicas} traces {operator.num_traces}")
