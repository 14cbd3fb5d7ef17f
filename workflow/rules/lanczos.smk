# One job per (checkpoint step, curvature, draw), a curvature being an operator
# (Hessian or GGN) on a block of variables: draws run in parallel across devices or
# nodes. One Lanczos run is never split across jobs (each step needs the last);
# inside a job, lanczos.strategy spreads its Hessian passes over local devices
# (mirrored) or worker processes on several hosts (multi_worker). With
# lanczos.draws_per_job = B > 1, the job of each group's first draw runs the group's
# B draws side by side (B products per Hessian pass) and leaves the others' finished
# states; their own jobs wait for it and only write their outputs.
MULTI_WORKER = config["lanczos"]["strategy"] == "multi_worker" and config["lanczos"]["workers"] > 1


rule lanczos:
    input:
        # lanczos.draws_per_job > 1: a draw computed side by side with its group's first waits for it.
        unpack(group_leader_input),
        **data_files("train"),
        **deflation_inputs(),
        checkpoint=checkpoint_file("{step}"),
        card=LAYOUT.dataset_card,
        checkpoint_record=LAYOUT.checkpoint_record,
        # lanczos.deflation_steps > 0: the basis run whose Krylov space the draw projects out.
    # Preemption: the job keeps its resumable state beside these outputs, undeclared (so that
    # Snakemake does not delete it with an incomplete job's outputs), at the path that
    # hessflow.layout derives from the tridiag output: under a module's prefix too.
    output:
        **lanczos_files("{step}", "{draw}"),
    log:
        log_file("lanczos/{operator}/{block}/step_{step}_draw_{draw}"),
    benchmark:
        benchmark_file("lanczos/{operator}/{block}/step_{step}_draw_{draw}")
    conda:
        "../../envs/hessflow.yaml"
    threads: rule_threads("lanczos")
    resources:
        **({"mpi": "srun"} if MULTI_WORKER else {}),
        gpu=config["resources"]["lanczos"]["gpu"],
        # Retries (the SLURM profile's `retries: 2`) ask for 1x, 2x, 3x the configured values.
        runtime=lambda wildcards, attempt: config["resources"]["lanczos"]["runtime"] * attempt,
        mem_mb=lambda wildcards, attempt: config["resources"]["lanczos"]["mem_mb"] * attempt,
        # A multi-worker job is one task per worker, which the job starts itself
        # through srun (the SLURM executor's `mpi` resource; the profile's
        # tasks_per_gpu: 1 makes that one worker per GPU).
        tasks=config["lanczos"]["workers"] if MULTI_WORKER else 1,
    params:
        model=model_params(),
        objective=objective_params(),
        hessian=hessian_params(),
        variables=lambda wildcards: BLOCKS[wildcards.block],
        num_steps=config["lanczos"]["steps"],
        probe=config["lanczos"]["probe"],
        save_every=config["lanczos"]["save_every"],
        vector_store=config["lanczos"]["vector_store"],
        alongside=draws_alongside,
        seed=config["seed"],
        strategy=config["lanczos"]["strategy"],
        workers=config["lanczos"]["workers"],
    script:
        "../../scripts/lanczos.py"


# lanczos.deflation_steps > 0: the deflation basis run of a step and curvature, a Lanczos job of
# that many steps with its vectors kept (its own seed, independent of the draws'); the draws wait
# for it. The same job as a draw in every other respect.
use rule lanczos as deflation_basis with:
    input:
        **data_files("train"),
        checkpoint=checkpoint_file("{step}"),
        card=LAYOUT.dataset_card,
        checkpoint_record=LAYOUT.checkpoint_record,
    output:
        **basis_files("{step}"),
    log:
        log_file("deflation_basis/{operator}/{block}/step_{step}"),
    benchmark:
        benchmark_file("deflation_basis/{operator}/{block}/step_{step}")
    params:
        num_steps=DEFLATION_STEPS,
