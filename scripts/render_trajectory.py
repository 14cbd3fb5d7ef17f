"""Rule render_trajectory: one curvature's density at every checkpoint, and λmax and negative mass over training."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # hessflow from this checkout (also in conda envs)
from hessflow.jobs import start_job  # noqa: E402

start_job(snakemake)  # the log (file descriptors 1 and 2 too) and the rule's threads, first

import json  # noqa: E402

import numpy as np  # noqa: E402

from hessflow.plots import save_figure  # noqa: E402
from hessflow.reproduce import trajectory_run_figure  # noqa: E402  (shared with hessflow-reproduce)

densities = [np.load(path) for path in snakemake.input.densities]
wildcards = snakemake.wildcards
stats = []
for path in snakemake.input.stats:
    with open(path) as handle:
        stats.append(json.load(handle))
figure = trajectory_run_figure(snakemake.params.steps, densities, snakemake.input.summary,
                               operator=wildcards.operator, block=wildcards.block, stats=stats,
                               lr_boundaries=snakemake.params.lr_boundaries)
save_figure(figure, snakemake.output[0], dpi=snakemake.params.dpi)
