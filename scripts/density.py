"""Rule density: density.npy (2×grid_len: grid, density) and stats.json for one checkpoint."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # hessflow from this checkout (also in conda envs)
from hessflow.jobs import start_job  # noqa: E402

start_job(snakemake)  # the log (file descriptors 1 and 2 too) and the rule's threads, first

import json  # noqa: E402

import numpy as np  # noqa: E402

from hessflow import artifacts  # noqa: E402
from hessflow.reproduce import density_and_stats  # noqa: E402  (the same function hessflow-reproduce rebuilds with)

with open(snakemake.input.provenance) as handle:
    dim = json.load(handle)["dim"]
try:
    # Refuses NaN or Inf in what it would write (density_and_stats): nothing non-finite is kept.
    density, stats = density_and_stats(
        np.load(snakemake.input.ritz_values), np.load(snakemake.input.ritz_weights), dim, snakemake.params.density
    )
except ValueError as error:
    sys.exit(f"hessflow: density of checkpoint step {snakemake.wildcards.step}: {error}; nothing written")
print(stats)
artifacts.save_npy(snakemake.output.density, density)
artifacts.save_json(snakemake.output.stats, stats)
