rule aggregate:
    input:
        tridiags=expand(f"{RESULTS}/lanczos/step_{{{{step}}}}/tridiag_{{draw}}.npy", draw=DRAWS),
    output:
        tridiags=spectrum_files("{step}")["tridiags"],
        ritz_values=spectrum_files("{step}")["ritz_values"],
        ritz_weights=spectrum_files("{step}")["ritz_weights"],
    log:
        f"{LOGS}/aggregate/step_{{step}}.log",
    benchmark:
        f"{BENCHMARKS}/aggregate/step_{{step}}.tsv"
    conda:
        "../../envs/analysis.yaml"
    script:
        "../../scripts/aggregate.py"


rule density:
    input:
        ritz_values=spectrum_files("{step}")["ritz_values"],
        ritz_weights=spectrum_files("{step}")["ritz_weights"],
        provenance=f"{RESULTS}/lanczos/step_{{step}}/provenance_0.json",
    output:
        density=spectrum_files("{step}")["density"],
        stats=spectrum_files("{step}")["stats"],
    params:
        density=config["density"],
    log:
        f"{LOGS}/density/step_{{step}}.log",
    benchmark:
        f"{BENCHMARKS}/density/step_{{step}}.tsv"
    conda:
        "../../envs/analysis.yaml"
    script:
        "../../scripts/density.py"


rule summarize:
    input:
        stats=[spectrum_files(step)["stats"] for step in STEPS],
        evaluations=[f"{RESULTS}/evaluation/step_{step}.json" for step in STEPS],
        provenance=[f"{RESULTS}/lanczos/step_{step}/provenance_0.json" for step in STEPS],
        history=rules.train.output.history,
    output:
        report(
            f"{RESULTS}/summary.csv",
            caption="../report/summary.rst",
            category="Summary",
        ),
    params:
        steps=STEPS,
    log:
        f"{LOGS}/summarize.log",
    benchmark:
        f"{BENCHMARKS}/summarize.tsv"
    conda:
        "../../envs/analysis.yaml"
    script:
        "../../scripts/summarize.py"
