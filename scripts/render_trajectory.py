"""Rule render_trajectory: every checkpoint's density, and λmax and negative mass over training."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # hessflow from this checkout (also in conda envs)
sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from hessflow.plots import save_figure, trajectory_figure  # noqa: E402

densities = [(step, *np.load(path)) for step, path in zip(snakemake.params.steps, snakemake.input.densities)]
figure = trajectory_figure(densities, pd.read_csv(snakemake.input.summary))
save_figure(figure, snakemake.output[0], dpi=snakemake.params.dpi)
