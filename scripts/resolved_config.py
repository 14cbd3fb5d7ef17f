"""Rule resolved_config: the run's config, defaults filled, as results/{run}/config.json."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # hessflow from this checkout (also in conda envs)
from hessflow.jobs import start_job  # noqa: E402

start_job(snakemake)  # the log (file descriptors 1 and 2 too) and the rule's threads, first

import json  # noqa: E402

from hessflow import artifacts  # noqa: E402

# In the config's own key order, not save_json's sorted one: hessflow-reproduce reads the
# curvatures (hessian.blocks) from it in that order, as the workflow does.
text = json.dumps(snakemake.params.config, indent=2, allow_nan=False) + "\n"
artifacts.save_text(snakemake.output[0], text)
print(f"wrote {snakemake.output[0]}")
