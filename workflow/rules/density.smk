rule aggregate:
    input:
        tridiags=[LAYOUT.tridiag("{step}", draw) for draw in DRAWS],
        # Each draw's sha256 record: a tridiagonal changed after its job is refused.
        provenance=[LAYOUT.provenance("{step}", draw) for draw in DRAWS],
    output:
        tridiags=spectrum_files("{step}")["tridiags"],
        ritz_values=spectrum_files("{step}")["ritz_values"],
        ritz_weights=spectrum_files("{step}")["ritz_weights"],
    log:
        log_file("aggregate/step_{step}"),
    benchmark:
        benchmark_file("aggregate/step_{step}")
    conda:
        "../../envs/analysis.yaml"
    script:
        "../../scripts/aggregate.py"


rule density:
    input:
        ritz_values=spectrum_files("{step}")["ritz_values"],
        ritz_weights=spectrum_files("{step}")["ritz_weights"],
        provenance=LAYOUT.provenance("{step}", 0),
    output:
        density=spectrum_files("{step}")["density"],
        stats=spectrum_files("{step}")["stats"],
    log:
        log_file("density/step_{step}"),
    benchmark:
        benchmark_file("density/step_{step}")
    conda:
        "../../envs/analysis.yaml"
    params:
        density=config["density"],
    script:
        "../../scripts/density.py"


rule summarize:
    input:
        stats=[spectrum_files(step)["stats"] for step in STEPS],
        evaluations=[LAYOUT.evaluation(step) for step in STEPS],
        provenance=[LAYOUT.provenance(step, 0) for step in STEPS],
        history=rules.train.output.history,
    output:
        report(
            LAYOUT.summary,
            caption="../report/summary.rst",
            category="Summary",
        ),
    log:
        log_file("summarize"),
    benchmark:
        benchmark_file("summarize")
    conda:
        "../../envs/analysis.yaml"
    params:
        steps=STEPS,
    script:
        "../../scripts/summarize.py"
