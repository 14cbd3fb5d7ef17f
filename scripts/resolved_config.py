"""Rule resolved_config: the run's config, defaults filled, as results/{run}/config.json."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # hessflow from this checkout (also in conda envs)
from hessflow.jobs import start_job  # noqa: E402

start_job(snakemake)  # the log (file descriptors 1 and 2 too) and the rule's threads, first

from hessflow import artifacts  # noqa: E402

artifacts.save_json(snakemake.output[0], snakemake.params.config)
print(f"wrote {snakemake.output[0]}")
