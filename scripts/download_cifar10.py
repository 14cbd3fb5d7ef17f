"""Rule download_cifar10: the CIFAR-10 binary archive, checksum verified, retried, atomic."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # hessflow from this checkout (also in conda envs)
from hessflow.jobs import start_job  # noqa: E402

start_job(snakemake)  # the log (file descriptors 1 and 2 too) and the rule's threads, first

from hessflow.download import download  # noqa: E402

download(snakemake.params.url, snakemake.output.archive, snakemake.params.sha256, retries=snakemake.params.retries)
