rule render_density:
    input:
        density=spectrum_files("{step}")["density"],
        stats=spectrum_files("{step}")["stats"],
    output:
        report(
            f"{RESULTS}/figures/density_step_{{step}}.png",
            caption="../report/density.rst",
            category="Hessian spectrum",
            subcategory="Density per checkpoint",
            labels={"step": "{step}"},
        ),
    params:
        dpi=150,
    log:
        f"{LOGS}/render_density/step_{{step}}.log",
    benchmark:
        f"{BENCHMARKS}/render_density/step_{{step}}.tsv"
    conda:
        "../../envs/analysis.yaml"
    script:
        "../../scripts/render_density.py"


rule render_trajectory:
    input:
        densities=[spectrum_files(step)["density"] for step in STEPS],
        summary=rules.summarize.output[0],
    output:
        report(
            f"{RESULTS}/figures/trajectory.png",
            caption="../report/trajectory.rst",
            category="Hessian spectrum",
            subcategory="Along training",
        ),
    params:
        steps=STEPS,
        dpi=150,
    log:
        f"{LOGS}/render_trajectory.log",
    benchmark:
        f"{BENCHMARKS}/render_trajectory.tsv"
    conda:
        "../../envs/analysis.yaml"
    script:
        "../../scripts/render_trajectory.py"


rule manifest:
    input:
        artifacts(),
    output:
        f"{RESULTS}/manifest.tsv",
    log:
        f"{LOGS}/manifest.log",
    benchmark:
        f"{BENCHMARKS}/manifest.tsv"
    conda:
        "../../envs/analysis.yaml"
    script:
        "../../scripts/manifest.py"
