"""Rule lanczos: one SLQ draw at one checkpoint: tridiag_{draw}.npy, lanczos_vec_{draw}.npy, provenance."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # hessflow from this checkout (also in conda envs)
sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

import os  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import hessflow  # noqa: E402
from hessflow import artifacts, data, models, training  # noqa: E402
from hessflow.hvp import HessianOperator  # noqa: E402
from hessflow.lanczos import lanczos  # noqa: E402

params = snakemake.params
hessian = params.hessian
step, draw = int(snakemake.wildcards.step), int(snakemake.wildcards.draw)
start = time.perf_counter()

images, labels = np.load(snakemake.input.images), np.load(snakemake.input.labels)
if hessian["max_examples"] is not None:
    images, labels = images[: hessian["max_examples"]], labels[: hessian["max_examples"]]
model = models.build_model(
    params.model["architecture"],
    input_shape=images.shape[1:],
    num_classes=int(labels.max()) + 1,
    seed=params.seed,
    dtype=hessian["dtype"],
    **params.model["options"],
)
training.load_checkpoint(model, snakemake.input.checkpoint)
inputs = data.standardize_per_image(images, dtype=np.dtype(hessian["dtype"]))
operator = HessianOperator(
    model,
    data.fixed_batches(inputs, labels, hessian["batch_size"]),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    weight_decay=params.weight_decay,
    batch_norm=hessian["batch_norm"],
    dtype=hessian["dtype"],
)
loss, gradient = operator.loss_and_gradient()
print(f"step {step}, draw {draw}: n = {operator.dim:,} parameters, {operator.num_examples:,} examples "
      f"in {operator.num_batches} batches; loss {loss:.6g}, gradient norm {np.linalg.norm(gradient):.6g}")

lanczos_start = time.perf_counter()


def report_progress(done, total):
    elapsed = time.perf_counter() - lanczos_start
    left = elapsed / done * (total - done)
    print(f"Lanczos step {done}/{total}, elapsed {elapsed:.1f} s, estimated time left {left:.1f} s")


seed = (params.seed, step, draw)
if os.path.exists(params.state_file):
    print(f"found resumable state {params.state_file}")
result = lanczos(
    operator.matvec,
    operator.dim,
    params.num_steps,
    seed=seed,
    keep_vectors="vectors" in snakemake.output.keys(),
    state_file=params.state_file,
    save_every=params.save_every,
    progress=report_progress,
)
if result.resumed_from is not None:
    print(f"resumed from Lanczos step {result.resumed_from}")
if result.stopped_early:
    print(f"invariant subspace: stopped early after {result.tridiag.shape[0]} steps")

out = snakemake.output
artifacts.save_npy(out.tridiag, result.tridiag)
if "vectors" in out.keys():
    artifacts.save_npy(out.vectors, result.vectors)
artifacts.save_json(
    out.provenance,
    {
        "step": step,
        "draw": draw,
        "seed": list(seed),
        "num_steps": int(result.tridiag.shape[0]),
        "requested_steps": params.num_steps,
        "stopped_early": bool(result.stopped_early),
        "resumed_from": result.resumed_from,
        "dim": operator.dim,
        "num_examples": operator.num_examples,
        "batch_size": hessian["batch_size"],
        "batch_norm": hessian["batch_norm"],
        "dtype": hessian["dtype"],
        "weight_decay": params.weight_decay,
        "loss": loss,
        "gradient_norm": float(np.linalg.norm(gradient)),
        "checkpoint": snakemake.input.checkpoint,
        "weights_sha256": training.weights_checksum(model),
        "wall_seconds": time.perf_counter() - start,
        "lanczos_seconds": time.perf_counter() - lanczos_start,
        "hessflow_version": hessflow.__version__,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "devices": [device.name for device in tf.config.list_logical_devices()],
        "host": platform.node(),
    },
)
if os.path.exists(params.state_file):  # outputs are in place: the resumable state has served
    os.remove(params.state_file)
