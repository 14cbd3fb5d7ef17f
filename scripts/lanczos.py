"""Rule lanczos: one SLQ draw at one checkpoint: tridiag_{draw}.npy, lanczos_vec_{draw}.npy, provenance."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # hessflow from this checkout (also in conda envs)
sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

from pathlib import Path  # noqa: E402

from hessflow import artifacts  # noqa: E402
from hessflow.gpu_lock import claim_gpus  # noqa: E402

# Before TensorFlow starts: on a multi-GPU machine, concurrent jobs get distinct GPUs.
claim_gpus(snakemake.resources.gpu)

from hessflow.lanczos_job import launch_workers, run_lanczos_job  # noqa: E402

params = snakemake.params
multi_worker = params.strategy == "multi_worker"
spec = {
    "checkpoint": snakemake.input.checkpoint,
    "images": snakemake.input.images,
    "labels": snakemake.input.labels,
    "model": params.model,
    "hessian": params.hessian,
    "weight_decay": params.weight_decay,
    "num_steps": params.num_steps,
    "save_every": params.save_every,
    "run_seed": params.seed,
    "step": int(snakemake.wildcards.step),
    "draw": int(snakemake.wildcards.draw),
    "strategy": params.strategy,
    # mirrored: replicas on this node's devices; multi_worker: one process per worker.
    "workers": 1 if multi_worker else params.workers,
    "state_file": params.state_file,
    "outputs": dict(snakemake.output.items()),
}
if multi_worker:
    spec_file = Path(params.state_file).with_suffix(".job.json")
    artifacts.save_json(spec_file, spec)
    launch_workers(spec_file, params.workers)
    spec_file.unlink()
else:
    run_lanczos_job(spec)
