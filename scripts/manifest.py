"""Rule manifest: manifest.tsv with the size and sha256 of every artifact of the run."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # hessflow from this checkout (also in conda envs)
from hessflow.jobs import start_job  # noqa: E402

start_job(snakemake)  # the log (file descriptors 1 and 2 too) and the rule's threads, first

from pathlib import Path  # noqa: E402

from hessflow.artifacts import write_manifest  # noqa: E402

artifacts = [Path(path).absolute() for path in snakemake.input]  # recorded relative to the run folder
rows = write_manifest(snakemake.output[0], artifacts, root=Path(snakemake.output[0]).parent)
print(f"{len(rows)} artifacts")
