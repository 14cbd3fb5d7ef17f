"""Rule density: density.npy (4×grid_len: grid, density, band) and stats.json for one checkpoint."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # hessflow from this checkout (also in conda envs)
from hessflow.jobs import start_job  # noqa: E402

start_job(snakemake)  # the log (file descriptors 1 and 2 too) and the rule's threads, first

import json  # noqa: E402

import numpy as np  # noqa: E402

from hessflow import artifacts  # noqa: E402
from hessflow.reproduce import density_and_stats  # noqa: E402  (the same function hessflow-reproduce rebuilds with)

provenances = []
for path in snakemake.input.provenance:  # every draw's, and the basis run's with deflation (a list)
    with open(path) as handle:
        provenances.append(json.load(handle))
try:
    # Refuses NaN or Inf in what it would write (density_and_stats): nothing non-finite is kept.
    density, stats = density_and_stats(
        np.load(snakemake.input.ritz_values), np.load(snakemake.input.ritz_weights), provenances[0]["dim"],
        snakemake.params.density, provenances, snakemake.params.gradient_k,
    )
except ValueError as error:
    sys.exit(f"hessflow: density of checkpoint step {snakemake.wildcards.step}: {error}; nothing written")
for warning in stats["health_warnings"]:
    print(f"warning: step {snakemake.wildcards.step}, {warning}")
print({key: value for key, value in stats.items() if key != "per_draw"})
artifacts.save_npy(snakemake.output.density, density)
artifacts.save_json(snakemake.output.stats, stats)
