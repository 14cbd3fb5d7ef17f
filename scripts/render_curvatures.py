"""Rule render_curvatures: every curvature's density at one checkpoint step, side by side."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # hessflow from this checkout (also in conda envs)
from hessflow.jobs import start_job  # noqa: E402

start_job(snakemake)  # the log (file descriptors 1 and 2 too) and the rule's threads, first

import numpy as np  # noqa: E402

from hessflow.plots import save_figure  # noqa: E402
from hessflow.reproduce import curvatures_run_figure  # noqa: E402  (shared with hessflow-reproduce)

densities = [(tuple(curvature), np.load(path))
             for curvature, path in zip(snakemake.params.curvatures, snakemake.input.densities)]
figure = curvatures_run_figure(int(snakemake.wildcards.step), densities)
save_figure(figure, snakemake.output[0], dpi=snakemake.params.dpi)
