"""Rule density: density.npy (2×grid_len: grid, density) and stats.json for one checkpoint."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # hessflow from this checkout (also in conda envs)
sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

import json  # noqa: E402

import numpy as np  # noqa: E402

from hessflow import artifacts  # noqa: E402
from hessflow.density import density_from_ritz, summarize  # noqa: E402

config = snakemake.params.density
all_values, all_weights = np.load(snakemake.input.ritz_values), np.load(snakemake.input.ritz_weights)
values = [v[~np.isnan(v)] for v in all_values]  # draws that stopped early are NaN-padded
weights = [w[~np.isnan(v)] for v, w in zip(all_values, all_weights)]
with open(snakemake.input.provenance) as handle:
    dim = json.load(handle)["dim"]
grid, density = density_from_ritz(
    values, weights, sigma_squared=config["sigma_squared"], grid_len=config["grid_len"], grid_expand=config["grid_expand"]
)
stats = summarize(values, weights, dim, negative_threshold=config["negative_threshold"])
stats["dim"] = dim
print(stats)
artifacts.save_npy(snakemake.output.density, np.stack([grid, density]))
artifacts.save_json(snakemake.output.stats, stats)
