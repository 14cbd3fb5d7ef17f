# One job per (checkpoint step, draw): draws run in parallel across devices or
# nodes. One Lanczos run is never split across jobs (each step needs the last).
rule lanczos:
    input:
        checkpoint=checkpoint_file("{step}"),
        **data_files("train"),
    output:
        **lanczos_files("{step}", "{draw}"),
    params:
        model=model_params(),
        hessian=config["hessian"],
        weight_decay=config["training"]["weight_decay"],
        num_steps=config["lanczos"]["steps"],
        save_every=config["lanczos"]["save_every"],
        seed=config["seed"],
        # Preemption: the resumable state lives beside the outputs, undeclared,
        # so Snakemake does not delete it with an incomplete job's outputs.
        state_file=f"{RESULTS}/lanczos/step_{{step}}/.state_{{draw}}.npz",
    resources:
        gpu=config["resources"]["lanczos"]["gpu"],
        runtime=config["resources"]["lanczos"]["runtime"],
        mem_mb=config["resources"]["lanczos"]["mem_mb"],
    log:
        f"{LOGS}/lanczos/step_{{step}}_draw_{{draw}}.log",
    benchmark:
        f"{BENCHMARKS}/lanczos/step_{{step}}_draw_{{draw}}.tsv"
    conda:
        "../../envs/hessflow.yaml"
    script:
        "../../scripts/lanczos.py"
