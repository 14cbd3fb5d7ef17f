"""Rule top_pairs: the top-k Ritz pairs of every draw of one step and curvature, top_pairs.npz.

No Hessian pass: the pairs come from each draw's tridiagonal ``T`` and Lanczos basis ``V`` (with
deflation, from the basis run alone: "draws" is then 1).
Arrays, draw d first: ``values`` (draws, k) float64, descending; ``vectors`` (draws, n, k) float64,
unit columns ``V s_i`` with ``s_i`` the eigenvector of ``T``; ``residual_bounds`` (draws, k)
float64, ``|b_m s_i[m-1]|`` with ``b_m`` the provenance's ``residual_norm``: with full
reorthogonalization, the residual norm ``||H y_i - theta_i y_i||``. k is ``spectrum.top_k``, or
fewer when a draw stopped early with fewer Lanczos steps.
"""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # hessflow from this checkout (also in conda envs)
from hessflow.jobs import start_job  # noqa: E402

start_job(snakemake)  # the log (file descriptors 1 and 2 too) and the rule's threads, first

import json  # noqa: E402

import numpy as np  # noqa: E402

from hessflow import artifacts  # noqa: E402
from hessflow.eigenpairs import top_ritz_pairs  # noqa: E402
from hessflow.integrity import IntegrityError, check_recorded_output, load_tridiags  # noqa: E402

inputs = snakemake.input
try:
    # Every file verified against the sha256 its Lanczos job recorded, as aggregation does.
    tridiags = load_tridiags(inputs.tridiags, inputs.provenance)
    for draw, (vectors, provenance) in enumerate(zip(inputs.vectors, inputs.provenance)):
        check_recorded_output(vectors, provenance, "vectors", draw)
except IntegrityError as error:
    sys.exit(f"error: step {snakemake.wildcards.step}:\n{error}")  # the message and the fix, no traceback
k = min(snakemake.params.top_k, *(len(tridiag) for tridiag in tridiags))
pairs = []
for draw, (tridiag, vectors, provenance) in enumerate(zip(tridiags, inputs.vectors, inputs.provenance)):
    with open(provenance) as handle:
        next_beta = json.load(handle)["residual_norm"]
    pairs.append(top_ritz_pairs(tridiag, np.load(vectors), k, next_beta=next_beta))
    print(f"draw {draw}: top Ritz values {np.array2string(pairs[-1].values, precision=6)}, "
          f"residual bounds {np.array2string(pairs[-1].residual_bounds, precision=2)}")
artifacts.save_npz(
    snakemake.output[0],
    values=np.stack([p.values for p in pairs]),
    vectors=np.stack([p.vectors for p in pairs]),
    residual_bounds=np.stack([p.residual_bounds for p in pairs]),
)
