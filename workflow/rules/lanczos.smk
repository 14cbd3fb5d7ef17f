# One job per (checkpoint step, draw): draws run in parallel across devices or
# nodes. One Lanczos run is never split across jobs (each step needs the last);
# inside a job, lanczos.strategy spreads its Hessian passes over local devices
# (mirrored) or worker processes on several hosts (multi_worker).
MULTI_WORKER = config["lanczos"]["strategy"] == "multi_worker" and config["lanczos"]["workers"] > 1


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
        strategy=config["lanczos"]["strategy"],
        workers=config["lanczos"]["workers"],
        # Preemption: the resumable state lives beside the outputs, undeclared,
        # so Snakemake does not delete it with an incomplete job's outputs.
        state_file=f"{RESULTS}/lanczos/step_{{step}}/.state_{{draw}}.npz",
    resources:
        gpu=config["resources"]["lanczos"]["gpu"],
        # Retries (the SLURM profile's `retries: 2`) ask for 1x, 2x, 3x the configured values.
        runtime=lambda wildcards, attempt: config["resources"]["lanczos"]["runtime"] * attempt,
        mem_mb=lambda wildcards, attempt: config["resources"]["lanczos"]["mem_mb"] * attempt,
        # A multi-worker job is one task per worker, which the job starts itself
        # through srun (the SLURM executor's `mpi` resource; the profile's
        # tasks_per_gpu: 1 makes that one worker per GPU).
        tasks=config["lanczos"]["workers"] if MULTI_WORKER else 1,
        **({"mpi": "srun"} if MULTI_WORKER else {}),
    log:
        f"{LOGS}/lanczos/step_{{step}}_draw_{{draw}}.log",
    benchmark:
        f"{BENCHMARKS}/lanczos/step_{{step}}_draw_{{draw}}.tsv"
    conda:
        "../../envs/hessflow.yaml"
    script:
        "../../scripts/lanczos.py"
