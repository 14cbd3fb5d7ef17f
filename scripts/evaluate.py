"""Rule evaluate: training- and test-set loss (and accuracy, for classes) of one checkpoint (moving statistics)."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # hessflow from this checkout (also in conda envs)
from hessflow.jobs import start_job  # noqa: E402

start_job(snakemake, gpus=0, tensorflow=True)
# ^ first: the log (file descriptors 1 and 2 too), then distinct GPUs for concurrent jobs and
# TensorFlow's thread pools sized to the rule's threads, before TensorFlow starts

import json  # noqa: E402

import numpy as np  # noqa: E402

from hessflow import artifacts, checkpoints, evaluation, factories, integrity, objectives  # noqa: E402

params = snakemake.params
inputs = snakemake.input
card = json.loads(open(inputs.card).read())
model = factories.build_model(params.model["factory"], params.model["options"], card=card, seed=params.seed)
integrity.check_checkpoint(inputs.checkpoint, snakemake.wildcards.step, inputs.checkpoint_record)
checkpoints.load_checkpoint(model, inputs.checkpoint)
objective = params.objective
loss = objectives.make_loss(objective["loss"]["name"], objective["loss"].get("options"))
result = {"step": int(snakemake.wildcards.step), "checkpoint": inputs.checkpoint}
for split, x, y in [
    ("train", np.load(inputs.train_images), np.load(inputs.train_labels)),
    ("test", np.load(inputs.test_images), np.load(inputs.test_labels)),
]:
    metrics = evaluation.evaluate(
        model, x, y, batch_size=params.batch_size, loss=loss, preprocess=objective["preprocess"]
    )
    result.update({f"{split}_{key}": value for key, value in metrics.items()})
print(result)
artifacts.save_json(snakemake.output[0], result)
