"""The batch-norm pair end to end at demo scale: config/batchnorm_on.yaml and config/batchnorm_off.yaml
(each merged over config/config.yaml) run through the workflow, then hessflow.compare on both.

Ghorbani, Krishnan & Xiao (ICML 2019): without batch norm, large isolated eigenvalues appear rapidly
in training; with batch norm they are almost absent. The pair's VGG on digits shows it early in
training: at step 100 (one of the pair's checkpoints) the Hessian's λmax without batch norm is about
5x that with it (measured 13.8 against 2.79), and it stands about 3x further out from the rest
(λ1/λ11, the eleventh eigenvalue being the top of what is left after the 10 class directions:
9.1 against 3.1); from initialization to step 100 λmax grows 5.6x without batch norm and falls 9x
with it (at initialization the batch-norm network is the sharper one: 25.2 against 2.44, with
λmin -30.8 against -0.68). With seed 1 instead of 0 (checked once, not run here): λmax 12.2 against
2.69 at step 100, grown 7.0x against fallen to 0.20x, λ1/λ11 7.4 against 4.2; the thresholds below
hold for both seeds with room. By the end of training (step 600, the rate cut at 400, train loss
~0.002) the two spectra are alike (λmax 0.60 with batch norm, 0.45 without): the end point is not
asserted on. Negative mass and trace are left alone too: at this Lanczos budget they move by more
than the runs differ (at step 0 without batch norm, 0.64 with the pair's deflated SLQ at 40 + 10
steps, 0.08 with the 50 plain steps below).

To keep each run near 1.2 minutes on 2 cores, a third overlay written here analyses steps 0 and 100
only, by plain SLQ: 1 draw of 50 Lanczos steps (its top Ritz values have converged: λmax and λ1/λ11
agree with a 40-step deflation basis's to 6 digits). The training is the pair's own (600 steps).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from hessflow import compare
from hessflow.layout import RunLayout
from test_workflow import DEMO_CONFIG, ROOT, load_json, run_snakemake, tail

pytestmark = pytest.mark.slow

PAIR = {"batch norm": ROOT / "config" / "batchnorm_on.yaml", "no batch norm": ROOT / "config" / "batchnorm_off.yaml"}
RUN_NAMES = {"batch norm": "vgg_bn", "no batch norm": "vgg_nobn"}
PARAMETERS = {"batch norm": 7_386, "no batch norm": 7_274}  # config/batchnorm_on.yaml, _off.yaml
STEPS = [0, 100]
SMALL = {
    "training": {"checkpoint_steps": STEPS},
    "spectrum": {"steps": STEPS},
    "lanczos": {"steps": 50, "draws": 1, "deflation_steps": 0},
    "density": {"grid_len": 500},
}
# Classes of digits: a softmax classifier's Hessian has up to this many outliers (the class
# directions); the eleventh Ritz value stands for the bulk's top.
CLASSES = 10


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Both runs, one after the other, in one working directory: label -> (run folder, wall seconds)."""
    workdir = tmp_path_factory.mktemp("batchnorm_pair")
    overlay = workdir / "small.yaml"
    overlay.write_text(yaml.safe_dump(SMALL), encoding="utf-8")
    runs = {}
    for label, configfile in PAIR.items():
        start = time.monotonic()
        # Snakemake's --configfile takes every name after it and merges them in order; a second
        # --configfile replaces (or extends) the first list, so this is config.yaml, the pair's
        # file, then the overlay (test_resolved_config_merges_the_three_files checks it).
        done = run_snakemake(workdir, DEMO_CONFIG, "--configfile", DEMO_CONFIG, configfile, overlay, timeout=600)
        assert done.returncode == 0, f"{label} run failed:\n{tail(done.stdout)}"
        runs[label] = (workdir / "results" / RUN_NAMES[label], time.monotonic() - start)
    return runs


def folders(pair):
    return {label: root for label, (root, _) in pair.items()}


def stats(root: Path, step: int) -> dict:
    return load_json(RunLayout(root.as_posix()).spectrum_files(step)["stats"])


def top_ritz_values(root: Path, step: int) -> np.ndarray:
    """The Ritz values of draw 0, descending (its top ones have converged to the top eigenvalues)."""
    return np.sort(np.linalg.eigvalsh(np.load(RunLayout(root.as_posix()).tridiag(step, 0))))[::-1]


def test_both_runs_finished_with_every_step(pair):
    for label, (root, seconds) in pair.items():
        layout = RunLayout(root.as_posix())
        assert Path(layout.manifest).is_file(), label
        for step in STEPS:
            assert Path(layout.spectrum_files(step)["density"]).is_file(), (label, step)
        print(f"{label}: {seconds:.0f} s")


def test_resolved_config_merges_the_three_files(pair):
    for label, root in folders(pair).items():
        config = load_json(RunLayout(root.as_posix()).config)
        assert config["run_name"] == RUN_NAMES[label]
        assert config["data"]["factory"] == "digits"  # config/config.yaml
        assert config["model"]["factory"] == "vgg"
        assert config["model"]["options"]["batch_norm"] is (label == "batch norm")  # the pair's file
        assert config["training"]["steps"] == 600 and config["training"]["lr_boundaries"] == [400]
        assert config["training"]["checkpoint_steps"] == STEPS and config["lanczos"]["steps"] == 50  # overlay


def test_each_run_has_its_models_parameter_count(pair):
    for label, root in folders(pair).items():
        layout = RunLayout(root.as_posix())
        for step in STEPS:
            assert load_json(layout.provenance(step, 0))["dim"] == PARAMETERS[label], (label, step)
            assert stats(root, step)["dim"] == PARAMETERS[label]


def test_comparison_figure_and_table_build_from_both_run_folders(pair, tmp_path):
    runs = folders(pair)
    fig = compare.comparison_figure(runs)
    panels = sorted(ax.get_label() for ax in fig.axes if ax.get_label().startswith("density_step_"))
    assert panels == [f"density_step_{step}" for step in STEPS]
    for ax in fig.axes:
        if ax.get_label().startswith("density_step_"):
            assert sorted(line.get_gid() for line in ax.get_lines() if line.get_gid().startswith("density:")) == [
                "density:batch norm", "density:no batch norm"]
    table = compare.comparison_table(runs)
    print("\n" + table.to_string(index=False))
    assert list(zip(table["run"], table["step"])) == [(label, step) for label in runs for step in STEPS]
    for _, row in table.iterrows():
        assert row["lambda_max"] == stats(runs[row["run"]], row["step"])["lambda_max"]
    argv = [arg for label, root in runs.items() for arg in ("--run", f"{label}={root}")]
    assert compare.main([*argv, "--out", str(tmp_path / "pair.png"), "--csv", str(tmp_path / "pair.csv")]) == 0
    assert (tmp_path / "pair.png").stat().st_size > 0 and (tmp_path / "pair.csv").stat().st_size > 0


def test_without_batch_norm_a_large_outlier_appears_early_in_training(pair):
    # The paper's observation: without batch norm, large isolated eigenvalues appear rapidly.
    # Measured (CPU, seed 0): lambda_max 13.8 vs 2.79 at step 100 (no BN vs BN); 2.44 vs 25.2 at step 0.
    runs = folders(pair)
    bn, plain = (stats(runs[label], 100)["lambda_max"] for label in ("batch norm", "no batch norm"))
    assert plain > 2.5 * bn, (plain, bn)  # measured ratio 4.96 (seed 1: 4.5)
    grown = {label: stats(root, 100)["lambda_max"] / stats(root, 0)["lambda_max"] for label, root in runs.items()}
    assert grown["no batch norm"] > 2.5 and grown["batch norm"] < 0.5, grown  # measured 5.65, 0.11 (seed 1: 7.0, 0.20)


def test_without_batch_norm_the_top_eigenvalue_stands_further_out_of_the_rest(pair):
    # lambda_1 / lambda_11 (Ritz values of the 50-step draw): how far the top outlier stands
    # from the top of the rest, the class directions left in. Measured at step 100: 9.1 vs 3.1
    # (ratio 2.9; seed 1: 7.4 vs 4.2, ratio 1.75).
    runs = folders(pair)
    isolation = {}
    for label, root in runs.items():
        ritz = top_ritz_values(root, 100)
        isolation[label] = ritz[0] / ritz[CLASSES]
    assert isolation["no batch norm"] > 1.4 * isolation["batch norm"], isolation
    print(json.dumps(isolation))
