"""Rule summarize: summary.csv, one row per checkpoint step (spectrum, loss, accuracy)."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # hessflow from this checkout (also in conda envs)
sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

import json  # noqa: E402

import pandas as pd  # noqa: E402

from hessflow import artifacts  # noqa: E402

SPECTRUM = ["lambda_max", "lambda_min", "negative_mass", "positive_mass", "trace", "mean", "std", "negative_cutoff"]
rows = []
for step, stats_path, evaluation_path, provenance_path in zip(
    snakemake.params.steps, snakemake.input.stats, snakemake.input.evaluations, snakemake.input.provenance
):
    stats, evaluation, provenance = (json.load(open(path)) for path in (stats_path, evaluation_path, provenance_path))
    rows.append(
        {
            "step": step,
            **{key: stats[key] for key in SPECTRUM},
            "num_draws": stats["num_draws"],
            "lanczos_steps": stats["num_steps"],
            "dim": stats["dim"],
            "hessian_loss": provenance["loss"],
            "gradient_norm": provenance["gradient_norm"],
            "train_loss": evaluation["train_loss"],
            "train_accuracy": evaluation["train_accuracy"],
            "test_loss": evaluation["test_loss"],
            "test_accuracy": evaluation["test_accuracy"],
        }
    )
summary = pd.DataFrame(rows)
print(summary.to_string(index=False))
artifacts.save_text(snakemake.output[0], summary.to_csv(index=False))
