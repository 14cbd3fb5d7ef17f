"""Rule export: results/{run}.tar.gz with the artifacts, manifest, resolved config and software versions.

The archive's layout is hessflow.export's (one {run_name}/ folder laid out as results/{run_name}/
is, plus software_versions.txt and export.json); written atomically.
"""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # hessflow from this checkout (also in conda envs)
from hessflow.jobs import start_job  # noqa: E402

start_job(snakemake)  # the log (file descriptors 1 and 2 too) and the rule's threads, first

from pathlib import Path  # noqa: E402

from hessflow.export import export_run  # noqa: E402

shipped = export_run(
    snakemake.output[0],
    root=Path(snakemake.input.manifest).parent,  # results/{run_name}
    files=snakemake.input.artifacts,
    run_name=snakemake.params.run_name,
    left_out=snakemake.params.left_out,
)
print(f"{len(shipped)} files, {len(snakemake.params.left_out)} left out: {snakemake.output[0]}")
