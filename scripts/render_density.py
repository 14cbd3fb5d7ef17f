"""Rule render_density: one checkpoint's density on a log axis, as in the paper's figures."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # hessflow from this checkout (also in conda envs)
sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

import json  # noqa: E402

import numpy as np  # noqa: E402

from hessflow.plots import density_figure, save_figure  # noqa: E402

grid, density = np.load(snakemake.input.density)
with open(snakemake.input.stats) as handle:
    stats = json.load(handle)
figure = density_figure(grid, density, title=f"Hessian eigenvalue density, step {snakemake.wildcards.step}", stats=stats)
save_figure(figure, snakemake.output[0], dpi=snakemake.params.dpi)
