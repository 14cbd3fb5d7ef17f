"""Rule train: Keras training with weights saved at the configured steps, and history.csv."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # hessflow from this checkout (also in conda envs)
sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

from hessflow.gpu_lock import claim_gpus  # noqa: E402

claim_gpus(snakemake.resources.gpu)  # before TensorFlow starts: distinct GPUs for concurrent jobs

import numpy as np  # noqa: E402

from hessflow import artifacts, models, training  # noqa: E402

params = snakemake.params
images = np.load(snakemake.input.images)
labels = np.load(snakemake.input.labels)
model = models.build_model(
    params.model["architecture"],
    input_shape=images.shape[1:],
    num_classes=int(labels.max()) + 1,
    seed=params.seed,
    **params.model["options"],
)
print(f"{model.name}: {models.count_trainable(model):,} trainable parameters")
checkpoint_for = dict(zip(params.checkpoint_steps, snakemake.output.checkpoints))
config = params.training
history = training.train(
    model,
    images,
    labels,
    num_steps=config["steps"],
    batch_size=config["batch_size"],
    learning_rate=config["learning_rate"],
    momentum=config["momentum"],
    lr_boundaries=config["lr_boundaries"],
    lr_decay_factor=config["lr_decay_factor"],
    weight_decay=config["weight_decay"],
    augment=config["augment"],
    checkpoint_steps=params.checkpoint_steps,
    checkpoint_path=checkpoint_for.__getitem__,
    seed=params.seed,
    log_every=config["log_every"],
)
artifacts.save_text(snakemake.output.history, history.to_csv(index=False))
