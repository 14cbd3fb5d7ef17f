"""Rule aggregate: one checkpoint's draws -> tridiags.npy (draws×m×m), ritz_values.npy, ritz_weights.npy.

Layouts follow the paper code (its density code reads tridiags as [draws, m, m]). A draw that
stopped early (invariant subspace, m_i < m) is zero-padded in tridiags.npy and NaN-padded
(weights 0) in the Ritz arrays, which are what the density rule reads.
"""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # hessflow from this checkout (also in conda envs)
sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

import numpy as np  # noqa: E402

from hessflow import artifacts  # noqa: E402
from hessflow.density import ritz  # noqa: E402

tridiags = [np.load(path) for path in snakemake.input.tridiags]
m = max(t.shape[0] for t in tridiags)
stacked = np.zeros((len(tridiags), m, m))
values = np.full((len(tridiags), m), np.nan)
weights = np.zeros((len(tridiags), m))
for draw, tridiag in enumerate(tridiags):
    size = tridiag.shape[0]
    stacked[draw, :size, :size] = tridiag
    values[draw, :size], weights[draw, :size] = ritz(tridiag)
    print(f"draw {draw}: m = {size}, Ritz values in [{values[draw, 0]:.6g}, {values[draw, size - 1]:.6g}]")
artifacts.save_npy(snakemake.output.tridiags, stacked)
artifacts.save_npy(snakemake.output.ritz_values, values)
artifacts.save_npy(snakemake.output.ritz_weights, weights)
