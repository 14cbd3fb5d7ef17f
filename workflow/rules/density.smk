# Per checkpoint step and curvature ({operator}/{block}): the draws aggregated, the density and
# its statistics; then the run's summary, one row per curvature and step.


rule aggregate:
    input:
        **{name: path for name, path in deflation_inputs().items() if name != "basis_vectors"},
        tridiags=[LAYOUT.tridiag("{step}", draw, "{operator}", "{block}") for draw in DRAWS],
        # Each draw's sha256 record: a tridiagonal changed after its job is refused.
        provenance=[LAYOUT.provenance("{step}", draw, "{operator}", "{block}") for draw in DRAWS],
        # With deflation, the basis run's Ritz values join each draw's measure as atoms.
    output:
        tridiags=spectrum_files("{step}")["tridiags"],
        ritz_values=spectrum_files("{step}")["ritz_values"],
        ritz_weights=spectrum_files("{step}")["ritz_weights"],
    log:
        log_file("aggregate/{operator}/{block}/step_{step}"),
    benchmark:
        benchmark_file("aggregate/{operator}/{block}/step_{step}")
    conda:
        "../../envs/analysis.yaml"
    script:
        "../../scripts/aggregate.py"


# The top Ritz pairs of every draw (spectrum.top_k), or of the basis run when deflating, from the
# tridiagonals and Lanczos vectors: no Hessian pass. Each pair's a-posteriori bound |b_m s_mi| (b_m
# from the provenance) is, with full reorthogonalization, its residual norm ||H y - theta y|| down
# to rounding (1e-15 sqrt(m) ||H||).
rule top_pairs:
    input:
        tridiags=top_pairs_inputs()["tridiag"],
        vectors=top_pairs_inputs()["vectors"],
        provenance=top_pairs_inputs()["provenance"],
    output:
        LAYOUT.top_pairs("{step}", "{operator}", "{block}"),
    log:
        log_file("top_pairs/{operator}/{block}/step_{step}"),
    benchmark:
        benchmark_file("top_pairs/{operator}/{block}/step_{step}")
    conda:
        "../../envs/analysis.yaml"
    params:
        top_k=TOP_K,
    script:
        "../../scripts/top_pairs.py"


rule density:
    input:
        ritz_values=spectrum_files("{step}")["ritz_values"],
        ritz_weights=spectrum_files("{step}")["ritz_weights"],
        # Every draw's (their gradient fractions and health), and the basis run's with deflation.
        provenance=run_provenances(),
    output:
        density=spectrum_files("{step}")["density"],
        stats=spectrum_files("{step}")["stats"],
    log:
        log_file("density/{operator}/{block}/step_{step}"),
    benchmark:
        benchmark_file("density/{operator}/{block}/step_{step}")
    conda:
        "../../envs/analysis.yaml"
    params:
        density=config["density"],
        gradient_k=config["spectrum"]["gradient_k"],
    script:
        "../../scripts/density.py"


rule summarize:
    input:
        stats=[spectrum_files(step, *curvature)["stats"] for curvature in CURVATURES for step in STEPS],
        evaluations=[LAYOUT.evaluation(step) for _ in CURVATURES for step in STEPS],
        provenance=[LAYOUT.provenance(step, 0, *curvature) for curvature in CURVATURES for step in STEPS],
        history=rules.train.output.history,
    output:
        csv=LAYOUT.summary,
        # The same table in HTML: the report shows it (CSV it offers only as a download).
        html=report(
            LAYOUT.summary_html,
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
        # One (operator, block, step) per row, in the order of the inputs.
        rows=[(*curvature, step) for curvature in CURVATURES for step in STEPS],
    script:
        "../../scripts/summarize.py"
