"""Rule render_trajectory: every checkpoint's density, and λmax and negative mass over training."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # hessflow from this checkout (also in conda envs)
sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

import numpy as np  # noqa: E402

from hessflow.plots import save_figure  # noqa: E402
from hessflow.reproduce import trajectory_run_figure  # noqa: E402  (shared with hessflow-reproduce)

densities = [np.load(path) for path in snakemake.input.densities]
figure = trajectory_run_figure(snakemake.params.steps, densities, snakemake.input.summary)
save_figure(figure, snakemake.output[0], dpi=snakemake.params.dpi)
