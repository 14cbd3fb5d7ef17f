"""Rule evaluate: training- and test-set loss and accuracy of one checkpoint (moving statistics)."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # hessflow from this checkout (also in conda envs)
sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

from hessflow.gpu_lock import claim_gpus  # noqa: E402

claim_gpus(0)  # before TensorFlow starts: distinct GPUs for concurrent jobs; none for this one

import numpy as np  # noqa: E402

from hessflow import artifacts, models, training  # noqa: E402

params = snakemake.params
inputs = snakemake.input
train_images, train_labels = np.load(inputs.train_images), np.load(inputs.train_labels)
model = models.build_model(
    params.model["architecture"],
    input_shape=train_images.shape[1:],
    num_classes=int(train_labels.max()) + 1,
    seed=params.seed,
    **params.model["options"],
)
training.load_checkpoint(model, inputs.checkpoint)
result = {"step": int(snakemake.wildcards.step), "checkpoint": inputs.checkpoint}
for split, images, labels in [
    ("train", train_images, train_labels),
    ("test", np.load(inputs.test_images), np.load(inputs.test_labels)),
]:
    metrics = training.evaluate(model, images, labels, batch_size=params.batch_size)
    result.update({f"{split}_{key}": value for key, value in metrics.items()})
print(result)
artifacts.save_json(snakemake.output[0], result)
