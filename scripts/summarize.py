"""Rule summarize: summary.csv, one row per curvature and checkpoint step (spectrum, loss, accuracy)."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # hessflow from this checkout (also in conda envs)
from hessflow.jobs import start_job  # noqa: E402

start_job(snakemake)  # the log (file descriptors 1 and 2 too) and the rule's threads, first

import json  # noqa: E402

from hessflow import artifacts  # noqa: E402
from hessflow.reproduce import summary_html, summary_row, summary_table  # noqa: E402  (shared with hessflow-reproduce)


def load(path):
    with open(path) as handle:
        return json.load(handle)


rows = [
    summary_row(step, load(stats), load(evaluation), load(provenance), operator=operator, block=block)
    for (operator, block, step), stats, evaluation, provenance in zip(
        snakemake.params.rows, snakemake.input.stats, snakemake.input.evaluations, snakemake.input.provenance
    )
]
summary = summary_table(rows)
print(summary.to_string(index=False))
if summary["diverged"].any():
    steps = ", ".join(str(step) for step in sorted(set(summary["step"][summary["diverged"]])))
    print(f"hessflow: warning: training diverged by step {steps} (train loss not finite or over 10 times "
          "that of the earliest step; column `diverged` of summary.csv): lower training.learning_rate")
artifacts.save_text(snakemake.output.csv, summary.to_csv(index=False))
artifacts.save_text(snakemake.output.html, summary_html(summary))
