rule train:
    input:
        **data_files("train"),
    output:
        checkpoints=[checkpoint_file(step) for step in TRAIN_STEPS],
        history=f"{RESULTS}/train/history.csv",
    params:
        model=model_params(),
        training=config["training"],
        checkpoint_steps=TRAIN_STEPS,
        seed=config["seed"],
    resources:
        gpu=config["resources"]["train"]["gpu"],
        # Retries (the SLURM profile's `retries: 2`) ask for 1x, 2x, 3x the configured values.
        runtime=lambda wildcards, attempt: config["resources"]["train"]["runtime"] * attempt,
        mem_mb=lambda wildcards, attempt: config["resources"]["train"]["mem_mb"] * attempt,
    log:
        f"{LOGS}/train.log",
    benchmark:
        f"{BENCHMARKS}/train.tsv"
    conda:
        "../../envs/hessflow.yaml"
    script:
        "../../scripts/train.py"


rule evaluate:
    input:
        checkpoint=checkpoint_file("{step}"),
        train_images=data_files("train")["images"],
        train_labels=data_files("train")["labels"],
        test_images=data_files("test")["images"],
        test_labels=data_files("test")["labels"],
    output:
        f"{RESULTS}/evaluation/step_{{step}}.json",
    params:
        model=model_params(),
        batch_size=config["evaluation"]["batch_size"],
        seed=config["seed"],
    log:
        f"{LOGS}/evaluate/step_{{step}}.log",
    benchmark:
        f"{BENCHMARKS}/evaluate/step_{{step}}.tsv"
    conda:
        "../../envs/hessflow.yaml"
    script:
        "../../scripts/evaluate.py"
