# The figures (per step and curvature, per curvature along training, and with several
# curvatures one per step of them all), the manifest, the resolved config, the export.


rule render_density:
    input:
        density=spectrum_files("{step}")["density"],
        stats=spectrum_files("{step}")["stats"],
    output:
        report(
            LAYOUT.density_figure("{step}", "{operator}", "{block}"),
            caption="../report/density.rst",
            category="Spectrum per checkpoint",
            subcategory="{operator} {block}",
            labels=density_labels,
        ),
    log:
        log_file("render_density/{operator}/{block}/step_{step}"),
    benchmark:
        benchmark_file("render_density/{operator}/{block}/step_{step}")
    conda:
        "../../envs/analysis.yaml"
    params:
        dpi=150,  # = hessflow.reproduce.FIGURE_DPI, so that a rebuild renders the same bytes
    script:
        "../../scripts/render_density.py"


rule render_trajectory:
    input:
        densities=[spectrum_files(step)["density"] for step in STEPS],
        stats=[spectrum_files(step)["stats"] for step in STEPS],
        summary=rules.summarize.output.csv,
    output:
        report(
            LAYOUT.trajectory_figure("{operator}", "{block}"),
            caption="../report/trajectory.rst",
            category="Along training",
            labels={"operator": "{operator}", "block": "{block}"},
        ),
    log:
        log_file("render_trajectory/{operator}/{block}"),
    benchmark:
        benchmark_file("render_trajectory/{operator}/{block}")
    conda:
        "../../envs/analysis.yaml"
    params:
        steps=STEPS,
        lr_boundaries=config["training"]["lr_boundaries"],
        dpi=150,  # = hessflow.reproduce.FIGURE_DPI, so that a rebuild renders the same bytes
    script:
        "../../scripts/render_trajectory.py"


rule render_curvatures:
    input:
        densities=[spectrum_files("{step}", *curvature)["density"] for curvature in CURVATURES],
    output:
        report(
            LAYOUT.curvatures_figure("{step}"),
            caption="../report/curvatures.rst",
            category="Curvatures side by side",
            labels=lambda wildcards: {"step": step_label(wildcards)},
        ),
    log:
        log_file("render_curvatures/step_{step}"),
    benchmark:
        benchmark_file("render_curvatures/step_{step}")
    conda:
        "../../envs/analysis.yaml"
    params:
        curvatures=CURVATURES,
        dpi=150,  # = hessflow.reproduce.FIGURE_DPI, so that a rebuild renders the same bytes
    script:
        "../../scripts/render_curvatures.py"


rule manifest:
    input:
        artifacts(),
    output:
        LAYOUT.manifest,
    log:
        log_file("manifest"),
    benchmark:
        benchmark_file("manifest")
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
    log:
        log_file("resolved_config"),
    benchmark:
        benchmark_file("resolved_config")
    conda:
        "../../envs/analysis.yaml"
    params:
        config=config,
    script:
        "../../scripts/resolved_config.py"


# `snakemake export`: the run as one archive, to share (not part of `all`: a copy
# of the results, made when a study is handed on). hessflow-reproduce reads it.
rule export:
    input:
        manifest=rules.manifest.output[0],
        artifacts=exported_artifacts(),
    output:
        LAYOUT.archive,
    log:
        log_file("export"),
    benchmark:
        benchmark_file("export")
    conda:
        "../../envs/hessflow.yaml"  # the software versions of the environment that computed the results
    params:
        run_name=RUN,
        left_out=export_left_out(),
    script:
        "../../scripts/export.py"
