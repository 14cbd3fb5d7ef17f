"""Rule render_density: one checkpoint's density on a log axis, as in the paper's figures."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # hessflow from this checkout (also in conda envs)
from hessflow.jobs import start_job  # noqa: E402

start_job(snakemake)  # the log (file descriptors 1 and 2 too) and the rule's threads, first

import json  # noqa: E402

import numpy as np  # noqa: E402

from hessflow.plots import save_figure  # noqa: E402
from hessflow.reproduce import density_step_figure  # noqa: E402  (shared with hessflow-reproduce)

with open(snakemake.input.stats) as handle:
    stats = json.load(handle)
wildcards = snakemake.wildcards
figure = density_step_figure(np.load(snakemake.input.density), stats, int(wildcards.step),
                             operator=wildcards.operator, block=wildcards.block)
save_figure(figure, snakemake.output[0], dpi=snakemake.params.dpi)
