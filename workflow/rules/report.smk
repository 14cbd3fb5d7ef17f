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
        dpi=150,  # = hessflow.reproduce.FIGURE_DPI, so that a rebuild renders the same bytes
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
        dpi=150,  # = hessflow.reproduce.FIGURE_DPI, so that a rebuild renders the same bytes
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


# The resolved config (defaults filled) beside the results, in the manifest: what
# hessflow-reproduce reads the density parameters, steps and draws from, and what
# `snakemake --configfile results/{run}/config.json` reruns the study with. JSON,
# not YAML: no YAML reader is needed, and PyYAML would read 1e-05 as a string.
rule resolved_config:
    output:
        run_config_file(),
    params:
        config=config,
    log:
        f"{LOGS}/resolved_config.log",
    benchmark:
        f"{BENCHMARKS}/resolved_config.tsv"
    conda:
        "../../envs/analysis.yaml"
    script:
        "../../scripts/resolved_config.py"


# `snakemake export`: the run as one archive, to share (not part of `all`: a copy
# of the results, made when a study is handed on). hessflow-reproduce reads it.
rule export:
    input:
        manifest=rules.manifest.output[0],
        artifacts=exported_artifacts(),
    output:
        f"results/{RUN}.tar.gz",
    params:
        run_name=RUN,
        left_out=export_left_out(),
    log:
        f"{LOGS}/export.log",
    benchmark:
        f"{BENCHMARKS}/export.tsv"
    conda:
        "../../envs/hessflow.yaml"  # the software versions of the environment that computed the results
    script:
        "../../scripts/export.py"
