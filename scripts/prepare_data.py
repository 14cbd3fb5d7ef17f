"""Rule prepare_data: the data factory's train/test arrays as .npy, plus the data card."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # hessflow from this checkout (also in conda envs)
from hessflow.jobs import start_job  # noqa: E402

start_job(snakemake)  # the log (file descriptors 1 and 2 too) and the rule's threads, first

from hessflow import artifacts  # noqa: E402
from hessflow.prepare import prepare_dataset  # noqa: E402

params = snakemake.params
archive = snakemake.input.archive or None
# The archive's expected sha256 is read from the config, not passed as a param: it decides only
# whether the archive is accepted, not what is computed (a changed archive reruns by its mtime).
# The cifar10 factory verifies it, so an archive placed by hand, which the download rule never
# saw, is checked too.
archive_sha256 = snakemake.config["data"]["cifar10"]["sha256"] if archive else None
train, test, card = prepare_dataset(
    params.factory,
    params.options,
    preprocess=params.preprocess,
    seed=params.seed,
    archive=archive,
    archive_sha256=archive_sha256,
)
if card["factory"] == "hessflow.data:cifar10":
    card["archive"] = archive
    card["archive_sha256"] = archive_sha256  # verified by the factory

out = snakemake.output
for (x, y), split in [(train, "train"), (test, "test")]:
    artifacts.save_npy(out[f"{split}_images"], x)
    artifacts.save_npy(out[f"{split}_labels"], y)
    print(f"{split}: x {x.shape} {x.dtype}, y {y.shape} {y.dtype}")
artifacts.save_json(out.card, card)
