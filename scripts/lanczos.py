"""Rules lanczos and deflation_basis: one SLQ draw of one curvature at one checkpoint, or the
deflation basis run of its draws (draw "basis"); a draw with basis_* inputs runs deflated on that
basis. Outputs: the tridiagonal, the provenance and, if kept, the Lanczos vectors."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # hessflow from this checkout (also in conda envs)
from hessflow.jobs import start_job  # noqa: E402

start_job(snakemake, gpus=snakemake.resources.gpu, tensorflow=True)
# ^ first: the log (file descriptors 1 and 2 too), then distinct GPUs for concurrent jobs and
# TensorFlow's thread pools sized to the rule's threads, before TensorFlow starts

from pathlib import Path  # noqa: E402

from hessflow import artifacts  # noqa: E402
from hessflow.lanczos_job import LanczosJobSpec, launch_workers, run_lanczos_job  # noqa: E402
from hessflow.layout import BASIS_DRAW, lanczos_state_beside  # noqa: E402

params = snakemake.params
multi_worker = params.strategy == "multi_worker"
draw = int(snakemake.wildcards.draw) if "draw" in snakemake.wildcards.keys() else BASIS_DRAW
basis = {name: snakemake.input[f"basis_{name}"] for name in ("tridiag", "vectors", "provenance")
         if f"basis_{name}" in snakemake.input.keys()}
spec = LanczosJobSpec(
    checkpoint=snakemake.input.checkpoint,
    images=snakemake.input.images,
    labels=snakemake.input.labels,
    card=snakemake.input.card,
    checkpoint_record=snakemake.input.checkpoint_record,
    model=params.model,
    objective=params.objective,
    hessian=params.hessian,
    num_steps=params.num_steps,
    save_every=params.save_every,
    run_seed=params.seed,
    step=int(snakemake.wildcards.step),
    draw=draw,
    operator=snakemake.wildcards.operator,
    block=snakemake.wildcards.block,
    variables=params.variables,
    probe=params.probe,
    vector_store=params.vector_store,
    strategy=params.strategy,
    # mirrored: replicas on this node's devices; multi_worker: one process per worker.
    workers=1 if multi_worker else params.workers,
    # Beside the declared outputs (so under a module's prefix too), from the one run layout.
    state_file=lanczos_state_beside(snakemake.output.tridiag, draw),
    # lanczos.draws_per_job > 1, the first draw of a group: the group's other draws, side by side;
    # their states lie beside this draw's, where their own jobs look for them.
    alongside=[{"draw": other, "state_file": lanczos_state_beside(snakemake.output.tridiag, other)}
               for other in params.alongside],
    outputs=dict(snakemake.output.items()),
    deflation=basis or None,
    # How the job reads the data, not what it computes (the same bits either way): read from the
    # config, not a param, so that switching it reruns nothing.
    data=snakemake.config["hessian"]["data"],
)
if multi_worker:
    spec_file = Path(spec.state_file).with_suffix(".job.json")
    artifacts.save_json(spec_file, spec.to_dict())
    launch_workers(spec_file, params.workers)
    spec_file.unlink()
else:
    run_lanczos_job(spec)
