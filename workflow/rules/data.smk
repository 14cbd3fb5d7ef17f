rule download_cifar10:
    output:
        archive=config["data"]["cifar10"]["archive"],
    log:
        log_file("download_cifar10"),
    benchmark:
        benchmark_file("download_cifar10")
    conda:
        "../../envs/analysis.yaml"
    params:
        url=config["data"]["cifar10"]["url"],
        sha256=config["data"]["cifar10"]["sha256"],
        retries=config["data"]["cifar10"]["retries"],
    script:
        "../../scripts/download_cifar10.py"


rule prepare_data:
    input:
        archive=rules.download_cifar10.output.archive if uses_cifar10() else [],
    output:
        **{f"train_{k}": v for k, v in data_files("train").items()},
        **{f"test_{k}": v for k, v in data_files("test").items()},
        card=LAYOUT.dataset_card,
    log:
        log_file("prepare_data"),
    benchmark:
        benchmark_file("prepare_data")
    conda:
        "../../envs/hessflow.yaml"
    threads: rule_threads("prepare_data")
    params:
        factory=config["data"]["factory"],
        options=config["data"]["options"],
        preprocess=config["data"]["preprocess"],
        seed=config["seed"],
    script:
        "../../scripts/prepare_data.py"
