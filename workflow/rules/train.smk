rule train:
    input:
        **data_files("train"),
        card=LAYOUT.dataset_card,
    output:
        checkpoints=[checkpoint_file(step) for step in TRAIN_STEPS],
        history=LAYOUT.history,
        checkpoint_record=LAYOUT.checkpoint_record,
    log:
        log_file("train"),
    benchmark:
        benchmark_file("train")
    conda:
        "../../envs/hessflow.yaml"
    threads: rule_threads("train")
    resources:
        gpu=config["resources"]["train"]["gpu"],
        # Retries (the SLURM profile's `retries: 2`) ask for 1x, 2x, 3x the configured values.
        runtime=lambda wildcards, attempt: config["resources"]["train"]["runtime"] * attempt,
        mem_mb=lambda wildcards, attempt: config["resources"]["train"]["mem_mb"] * attempt,
    params:
        model=model_params(),
        objective=objective_params(),
        training=config["training"],
        checkpoint_steps=TRAIN_STEPS,
        seed=config["seed"],
    script:
        "../../scripts/train.py"


rule evaluate:
    input:
        checkpoint=checkpoint_file("{step}"),
        train_images=data_files("train")["images"],
        train_labels=data_files("train")["labels"],
        test_images=data_files("test")["images"],
        test_labels=data_files("test")["labels"],
        card=LAYOUT.dataset_card,
        checkpoint_record=LAYOUT.checkpoint_record,
    output:
        LAYOUT.evaluation("{step}"),
    log:
        log_file("evaluate/step_{step}"),
    benchmark:
        benchmark_file("evaluate/step_{step}")
    conda:
        "../../envs/hessflow.yaml"
    threads: rule_threads("evaluate")
    params:
        model=model_params(),
        objective=objective_params(),
        batch_size=config["evaluation"]["batch_size"],
        seed=config["seed"],
    script:
        "../../scripts/evaluate.py"
