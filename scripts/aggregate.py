"""Rule aggregate: one checkpoint's draws -> tridiags.npy (draws×m×m), ritz_values.npy, ritz_weights.npy.

With deflation (basis_* inputs), each draw's Ritz arrays hold the basis run's k Ritz values as
atoms of weight 1/n and the draw's own quadrature (hessflow.reproduce.aggregate): draws×(k+m).

Every tridiag_{d}.npy is first verified against the sha256 in its provenance_{d}.json and checked
for form (hessflow.integrity): a changed, truncated or malformed draw is refused, named with the fix.

Layouts follow the paper code (its density code reads tridiags as [draws, m, m]). A draw that
stopped early (invariant subspace, m_i < m) is zero-padded in tridiags.npy and NaN-padded
(weights 0) in the Ritz arrays, which are what the density rule reads.
"""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # hessflow from this checkout (also in conda envs)
from hessflow.jobs import start_job  # noqa: E402

start_job(snakemake)  # the log (file descriptors 1 and 2 too) and the rule's threads, first

import numpy as np  # noqa: E402

from hessflow import artifacts  # noqa: E402
from hessflow.integrity import IntegrityError, load_deflation_basis, load_tridiags  # noqa: E402
from hessflow.reproduce import aggregate  # noqa: E402  (the same function hessflow-reproduce rebuilds with)

try:
    # Each draw verified against the sha256 its Lanczos job recorded, and checked for form.
    tridiags = load_tridiags(snakemake.input.tridiags, snakemake.input.provenance)
    deflation = None
    if "basis_tridiag" in snakemake.input.keys():
        deflation = load_deflation_basis(snakemake.input.basis_tridiag, snakemake.input.basis_provenance,
                                         snakemake.input.provenance)
except IntegrityError as error:
    sys.exit(f"error: step {snakemake.wildcards.step}:\n{error}")  # the message and the fix, no traceback
stacked, values, weights = aggregate(tridiags, deflation)
if deflation is not None:
    print(f"deflated: {deflation.tridiag.shape[0]} atoms of the basis run, complement weights "
          f"{deflation.complement_weights}")
for draw in range(len(stacked)):
    size = int(np.sum(~np.isnan(values[draw])))
    print(f"draw {draw}: {size} nodes, Ritz values in [{values[draw, 0]:.6g}, {values[draw, size - 1]:.6g}]")
artifacts.save_npy(snakemake.output.tridiags, stacked)
artifacts.save_npy(snakemake.output.ritz_values, values)
artifacts.save_npy(snakemake.output.ritz_weights, weights)
