"""Rule download_cifar10: the CIFAR-10 binary archive, checksum verified, retried, atomic."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # hessflow from this checkout (also in conda envs)
sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

from hessflow.download import download  # noqa: E402

download(snakemake.params.url, snakemake.output.archive, snakemake.params.sha256, retries=snakemake.params.retries)
