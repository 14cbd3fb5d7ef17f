# Paths and config values shared by the rules. Everything a rule computes with
# reaches it through `params`, so Snakemake's params trigger reruns exactly
# what a config change affects.

RUN = config["run_name"]
RESULTS = f"results/{RUN}"
LOGS = f"{RESULTS}/logs"
BENCHMARKS = f"{RESULTS}/benchmarks"
STEPS = sorted(config["training"]["checkpoint_steps"])
DRAWS = list(range(config["lanczos"]["draws"]))
SAVE_VECTORS = config["lanczos"]["save_vectors"]

if STEPS[-1] > config["training"]["steps"]:
    raise ValueError(
        f"config training.checkpoint_steps: step {STEPS[-1]} is after the last training step "
        f"{config['training']['steps']}; raise training.steps or drop the checkpoint"
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


def artifacts():
    """Every artifact the manifest covers: data, checkpoints, numbers, figures."""
    files = [*data_files("train").values(), *data_files("test").values(), f"{RESULTS}/data/dataset.json"]
    files += [checkpoint_file(step) for step in STEPS] + [f"{RESULTS}/train/history.csv"]
    for step in STEPS:
        files.append(f"{RESULTS}/evaluation/step_{step}.json")
        for draw in DRAWS:
            files += lanczos_files(step, draw).values()
        files += spectrum_files(step).values()
        files.append(f"{RESULTS}/figures/density_step_{step}.png")
    files += [f"{RESULTS}/summary.csv", f"{RESULTS}/figures/trajectory.png"]
    return files


def final_outputs():
    return artifacts() + [f"{RESULTS}/manifest.tsv"]
