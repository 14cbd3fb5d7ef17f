"""Rule resolved_config: the run's config, defaults filled, as results/{run}/config.json."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # hessflow from this checkout (also in conda envs)
sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

from hessflow import artifacts  # noqa: E402

artifacts.save_json(snakemake.output[0], snakemake.params.config)
print(f"wrote {snakemake.output[0]}")
