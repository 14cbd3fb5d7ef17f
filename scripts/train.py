"""Rule train: Keras training with weights saved at the configured steps, and history.csv."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # hessflow from this checkout (also in conda envs)
from hessflow.jobs import start_job  # noqa: E402

start_job(snakemake, gpus=snakemake.resources.gpu, tensorflow=True)
# ^ first: the log (file descriptors 1 and 2 too), then distinct GPUs for concurrent jobs and
# TensorFlow's thread pools sized to the rule's threads, before TensorFlow starts

import json  # noqa: E402

import numpy as np  # noqa: E402

from hessflow import artifacts, data, factories, integrity, models, objectives, training  # noqa: E402

params = snakemake.params
x, y = np.load(snakemake.input.images), np.load(snakemake.input.labels)
card = json.loads(open(snakemake.input.card).read())
# The arrays prepare_data wrote, by the data card's sha256 (a file replaced by hand is refused).
integrity.check_data_arrays(
    {"x_train": (snakemake.input.images, x), "y_train": (snakemake.input.labels, y)}, card, snakemake.input.card
)
model = factories.build_model(params.model["factory"], params.model["options"], card=card, seed=params.seed)
print(f"{model.name}: {models.count_trainable(model):,} trainable parameters")
objective = params.objective
loss = objectives.make_loss(objective["loss"]["name"], objective["loss"].get("options"))
# Model, loss and data must fit before hours of training: a clear error now, naming both shapes.
sample = min(len(x), 8)
preprocess = data.resolve_preprocess(objective["preprocess"], x[:sample])
objectives.check_objective(model, loss, preprocess(x[:sample], models.compute_dtype(model)), y[:sample])
checkpoint_for = dict(zip(params.checkpoint_steps, snakemake.output.checkpoints))
config = params.training
history = training.train(
    model,
    x,
    y,
    num_steps=config["steps"],
    batch_size=config["batch_size"],
    learning_rate=config["learning_rate"],
    momentum=config["momentum"],
    lr_boundaries=config["lr_boundaries"],
    lr_decay_factor=config["lr_decay_factor"],
    weight_decay=objective["weight_decay"],
    augment=config["augment"],
    checkpoint_steps=params.checkpoint_steps,
    checkpoint_path=checkpoint_for.__getitem__,
    seed=params.seed,
    log_every=config["log_every"],
    loss=loss,
    preprocess=objective["preprocess"],
)
artifacts.save_text(snakemake.output.history, history.to_csv(index=False))
# What evaluation and the Lanczos jobs check each checkpoint against (hessflow.integrity).
artifacts.save_json(snakemake.output.checkpoint_record, integrity.checkpoint_record(checkpoint_for))
