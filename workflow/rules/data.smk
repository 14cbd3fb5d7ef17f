rule download_cifar10:
    output:
        archive=config["data"]["cifar10"]["archive"],
    params:
        url=config["data"]["cifar10"]["url"],
        sha256=config["data"]["cifar10"]["sha256"],
        retries=config["data"]["cifar10"]["retries"],
    log:
        f"{LOGS}/download_cifar10.log",
    benchmark:
        f"{BENCHMARKS}/download_cifar10.tsv"
    conda:
        "../../envs/analysis.yaml"
    script:
        "../../scripts/download_cifar10.py"


rule prepare_data:
    input:
        archive=rules.download_cifar10.output.archive if config["data"]["dataset"] == "cifar10" else [],
    output:
        **{f"train_{k}": v for k, v in data_files("train").items()},
        **{f"test_{k}": v for k, v in data_files("test").items()},
        card=f"{RESULTS}/data/dataset.json",
    params:
        dataset=config["data"]["dataset"],
        test_fraction=config["data"]["test_fraction"],
        synthetic=config["data"]["synthetic"],
        seed=config["seed"],
    log:
        f"{LOGS}/prepare_data.log",
    benchmark:
        f"{BENCHMARKS}/prepare_data.tsv"
    conda:
        "../../envs/hessflow.yaml"
    script:
        "../../scripts/prepare_data.py"
