# Paths and config values shared by the rules. Everything a rule computes with
# reaches it through `params`, so Snakemake's params trigger reruns exactly
# what a config change affects.

import os

RUN = config["run_name"]
RESULTS = f"results/{RUN}"
LOGS = f"{RESULTS}/logs"
BENCHMARKS = f"{RESULTS}/benchmarks"
# Two lists of checkpoint steps: the ones training saves (changing it reruns
# training) and the ones analysed (Lanczos, densities, summary, figures), a
# subset; adding a saved step to the analysis runs no training job.
TRAIN_STEPS = sorted(config["training"]["checkpoint_steps"])
STEPS = sorted(config["spectrum"]["steps"] if config["spectrum"]["steps"] is not None else TRAIN_STEPS)
DRAWS = list(range(config["lanczos"]["draws"]))
SAVE_VECTORS = config["lanczos"]["save_vectors"]

if TRAIN_STEPS[-1] > config["training"]["steps"]:
    raise ValueError(
        f"config training.checkpoint_steps: step {TRAIN_STEPS[-1]} is after the last training step "
        f"{config['training']['steps']}; raise training.steps or drop the checkpoint"
    )
_unsaved = [step for step in STEPS if step not in TRAIN_STEPS]
if _unsaved:
    raise ValueError(
        f"config spectrum.steps: step {', '.join(map(str, _unsaved))} is not in training.checkpoint_steps "
        f"{TRAIN_STEPS}, so no checkpoint is saved there; add it to training.checkpoint_steps "
        f"(which retrains) or drop it from spectrum.steps"
    )
if config["lanczos"]["strategy"] == "default" and config["lanczos"]["workers"] != 1:
    raise ValueError(
        f"config lanczos.workers is {config['lanczos']['workers']} but lanczos.strategy is default (one "
        "device): set lanczos.strategy to mirrored (GPUs of one node) or multi_worker (several hosts)"
    )


wildcard_constraints:
    step=r"\d+",
    draw=r"\d+",


def checkpoint_file(step):
    return f"{RESULTS}/checkpoints/step_{step}.weights.h5"


def data_files(split):
    return {
        "images": f"{RESULTS}/data/{split}_images.npy",
        "labels": f"{RESULTS}/data/{split}_labels.npy",
    }


def model_params():
    return {"architecture": config["model"]["architecture"], "options": config["model"]["options"]}


def spectrum_files(step):
    base = f"{RESULTS}/spectrum/step_{step}"
    return {
        "tridiags": f"{base}/tridiags.npy",
        "ritz_values": f"{base}/ritz_values.npy",
        "ritz_weights": f"{base}/ritz_weights.npy",
        "density": f"{base}/density.npy",
        "stats": f"{base}/stats.json",
    }


def lanczos_files(step, draw):
    base = f"{RESULTS}/lanczos/step_{step}"
    files = {"tridiag": f"{base}/tridiag_{draw}.npy", "provenance": f"{base}/provenance_{draw}.json"}
    if SAVE_VECTORS:
        files["vectors"] = f"{base}/lanczos_vec_{draw}.npy"
    return files


def run_config_file():
    """The resolved config (defaults filled), beside the results it produced."""
    return f"{RESULTS}/config.json"


def artifacts():
    """Every artifact the manifest covers: data, checkpoints, numbers, figures, resolved config.

    Each saved checkpoint is evaluated (cheap), so analysing another one needs no TensorFlow
    job but its Lanczos draws.
    """
    files = [*data_files("train").values(), *data_files("test").values(), f"{RESULTS}/data/dataset.json"]
    files += [checkpoint_file(step) for step in TRAIN_STEPS] + [f"{RESULTS}/train/history.csv"]
    files += [f"{RESULTS}/evaluation/step_{step}.json" for step in TRAIN_STEPS]
    for step in STEPS:
        for draw in DRAWS:
            files += lanczos_files(step, draw).values()
        files += spectrum_files(step).values()
        files.append(f"{RESULTS}/figures/density_step_{step}.png")
    files += [f"{RESULTS}/summary.csv", f"{RESULTS}/figures/trajectory.png", run_config_file()]
    return files


def exported_artifacts():
    """The artifacts the export archive ships: all but the large inputs `export.*` leaves out."""
    left_out = set()
    if not config["export"]["data"]:
        left_out |= {*data_files("train").values(), *data_files("test").values()}
    if not config["export"]["checkpoints"]:
        left_out |= {checkpoint_file(step) for step in TRAIN_STEPS}
    if not config["export"]["lanczos_vectors"]:
        left_out |= {lanczos_files(step, draw).get("vectors") for step in STEPS for draw in DRAWS}
    return [path for path in artifacts() if path not in left_out]


def export_left_out():
    """What the export leaves out, relative to the run folder (recorded in the archive)."""
    return sorted(os.path.relpath(path, RESULTS) for path in set(artifacts()) - set(exported_artifacts()))


def final_outputs():
    return artifacts() + [f"{RESULTS}/manifest.tsv"]
