"""A tiny Lanczos job spec (small CNN with batch norm, 100 digit-like examples), for the tests
that run ``hessflow.lanczos_job.run_lanczos_job`` in-process (test_preemption, test_lanczos_job)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def lanczos_job_spec(folder: Path, batch_size: int) -> dict:
    """A tiny Lanczos job (small CNN with batch norm, 3,842 parameters, 100 digit-like examples)."""
    from hessflow import checkpoints, data, factories

    rng = np.random.default_rng(5)
    x, y = rng.integers(0, 17, size=(100, 8, 8, 1), dtype=np.uint8), rng.integers(0, 10, size=100)
    card = data.data_card((x, y), (x[:10], y[:10]), source={"factory": "test", "options": {}, "preprocess": "auto"})
    np.save(folder / "x.npy", x), np.save(folder / "y.npy", y)
    (folder / "card.json").write_text(json.dumps(card))
    model_config = {"factory": "small_cnn", "options": {"batch_norm": True}}
    if not (folder / "step_0.weights.h5").exists():
        model = factories.build_model(model_config["factory"], model_config["options"], card=card, seed=0)
        checkpoints.save_checkpoint(model, folder / "step_0.weights.h5")
    return {
        "checkpoint": str(folder / "step_0.weights.h5"), "images": str(folder / "x.npy"),
        "labels": str(folder / "y.npy"), "card": str(folder / "card.json"), "model": model_config,
        "objective": {"loss": {"name": "SparseCategoricalCrossentropy", "options": {"from_logits": True}},
                      "weight_decay": 5e-4, "preprocess": "auto"},
        "hessian": {"batch_size": batch_size, "batch_norm": "train", "dtype": "float64", "max_examples": None},
        "num_steps": 12, "save_every": 4, "run_seed": 0, "step": 0, "draw": 0,
        "state_file": str(folder / ".state_0.npz"),
        "outputs": {"tridiag": str(folder / "tridiag_0.npy"), "provenance": str(folder / "provenance_0.json")},
    }
