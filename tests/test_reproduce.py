"""hessflow-reproduce, the export archive, and the paper code's files.

``hessflow.reproduce`` runs in a subprocess where TensorFlow and Keras cannot be imported (an
import hook refuses them), as on a machine with only the base install: it verifies the
small run of tests/small_run.py against its manifest and rebuilds every density, table and figure
identical to the workflow's. A one-byte change to a tridiagonal is named and nothing is rebuilt.
Files in the paper code's layout import into the same density as hessflow's own. A made-up run of
several curvatures (operators and blocks; random tridiagonals whose eigenvalues numpy computes; no
TensorFlow, no Snakemake) is verified and rebuilt in-process: its summary, order and figures.
"""

import json
import math
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hessflow import artifacts, papercode, reproduce
from hessflow.layout import RunLayout, curvatures
from small_run import ROOT, SMALL_CONFIG, baseline, fresh_copy, results, snakemake

# Runs the small workflow run (or a TensorFlow-free subprocess): the slow lane.
workflow = pytest.mark.slow

STEP = SMALL_CONFIG["spectrum"]["steps"][-1]
DRAWS = SMALL_CONFIG["lanczos"]["draws"]
# The small run's (first) curvature: the whole model's Hessian unless its config names others.
OPERATOR, BLOCK = curvatures(SMALL_CONFIG)[0]
LANCZOS = f"lanczos/{OPERATOR}/{BLOCK}/step_{STEP}"


def spectrum(step):
    return f"spectrum/{OPERATOR}/{BLOCK}/step_{step}"

# Runs a module as __main__ with tensorflow and keras made unimportable.
WITHOUT_TENSORFLOW = """
import runpy, sys
class NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "tf_keras"):
            raise ImportError(f"{name} is hidden: this process must not need TensorFlow")
        return None
sys.meta_path.insert(0, NoTensorFlow())
module = sys.argv[1]
sys.argv = [module] + sys.argv[2:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def without_tensorflow(module, *args, cwd=None):
    return subprocess.run([sys.executable, "-c", WITHOUT_TENSORFLOW, module, *map(str, args)],
                          capture_output=True, text=True, cwd=cwd)


def rebuilt_files(config):
    return reproduce.rebuilt_outputs(config)


def test_the_import_hook_hides_tensorflow():
    done = without_tensorflow("tensorflow")
    assert done.returncode != 0 and "is hidden" in done.stderr


@workflow
def test_reproduce_without_tensorflow_rebuilds_identical_results(tmp_path_factory, tmp_path):
    run = results(baseline(tmp_path_factory))
    out = tmp_path / "rebuilt"
    done = without_tensorflow("hessflow.reproduce", run, "--out", out, "--strict")
    assert done.returncode == 0, done.stdout + done.stderr
    config = json.loads((run / "config.json").read_text())
    written = rebuilt_files(config)
    assert f"rebuilt {len(written)} files in {out}: {len(written)} identical to the originals" in done.stdout
    for step in SMALL_CONFIG["spectrum"]["steps"]:
        for name in ("density", "tridiags", "ritz_values", "ritz_weights"):
            original = np.load(run / f"{spectrum(step)}/{name}.npy")
            assert np.array_equal(np.load(out / f"{spectrum(step)}/{name}.npy"), original, equal_nan=True), name
    for path in written:  # stats, summary and figures too, byte for byte
        assert (out / path).read_bytes() == (run / path).read_bytes(), path


@workflow
def test_export_archive_ships_what_reproduce_needs_and_reproduces(tmp_path_factory, tmp_path):
    workdir = fresh_copy(tmp_path_factory, "export")
    snakemake(workdir, SMALL_CONFIG, "export")
    archive = workdir / "results" / f"{SMALL_CONFIG['run_name']}.tar.gz"
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        versions = tar.extractfile("small/software_versions.txt").read().decode()
        export = json.loads(tar.extractfile("small/export.json").read())
    for required in ("manifest.tsv", "config.json", "software_versions.txt", "export.json",
                     f"{LANCZOS}/tridiag_0.npy", f"{spectrum(STEP)}/density.npy", "summary.csv"):
        assert f"small/{required}" in names, required
    for package in ("python", "numpy", "scipy", "tensorflow", "keras", "snakemake"):
        assert re.search(rf"^{package}==\d", versions, re.M), package
    assert not [name for name in names
                if "/checkpoints/" in name or "lanczos_vec" in name or name.endswith("_images.npy")]
    assert f"{LANCZOS}/lanczos_vec_0.npy" in export["left_out"]
    assert not list(archive.parent.glob(".*tmp*")), "a temporary file was left beside the archive"

    out = tmp_path / "from_archive"
    done = without_tensorflow("hessflow.reproduce", archive, "--out", out, "--strict")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "not shipped" in done.stdout
    original = np.load(results(workdir) / f"{spectrum(STEP)}/density.npy")
    assert np.array_equal(np.load(out / f"{spectrum(STEP)}/density.npy"), original)


def _copy_run(tmp_path_factory, tmp_path):
    run = tmp_path / "small"
    shutil.copytree(results(baseline(tmp_path_factory)), run)
    return run


@workflow
def test_one_byte_change_to_a_tridiagonal_is_named_and_nothing_is_rebuilt(tmp_path_factory, tmp_path):
    run = _copy_run(tmp_path_factory, tmp_path)
    tampered = run / f"{LANCZOS}/tridiag_1.npy"
    content = bytearray(tampered.read_bytes())
    content[-3] ^= 0x01  # one bit of one float64 of the data, same size
    tampered.write_bytes(bytes(content))
    out = tmp_path / "rebuilt"
    done = without_tensorflow("hessflow.reproduce", run, "--out", out)
    assert done.returncode == 1
    assert f"sha256 mismatch: {LANCZOS}/tridiag_1.npy" in done.stderr
    assert "nothing rebuilt" in done.stderr
    assert not out.exists()


@workflow
def test_missing_and_resized_artifacts_are_named(tmp_path_factory, tmp_path):
    run = _copy_run(tmp_path_factory, tmp_path)
    (run / f"{LANCZOS}/tridiag_0.npy").unlink()
    with open(run / "config.json", "a") as handle:
        handle.write(" ")
    verification = reproduce.verify_run(run)
    assert not verification.ok
    assert f"missing: {LANCZOS}/tridiag_0.npy" in verification.problems
    assert any(problem.startswith("size mismatch: config.json") for problem in verification.problems)
    assert verification.config is None  # nothing is read from an unverified config


def test_figures_are_rendered_at_the_rules_resolution():
    rules = (ROOT / "workflow" / "rules" / "report.smk").read_text()
    assert set(re.findall(r"dpi=(\d+)", rules)) == {str(reproduce.FIGURE_DPI)}


# ------------------------------------------------------------------------------------------------
# the paper code's files
# ------------------------------------------------------------------------------------------------
def paper_tridiag_to_density(tridiag_list, sigma_squared=1e-5, grid_len=10000, grid_expand=1e-2):
    """The paper code's density (google/spectral-density, density.py: tridiag_to_eigv, then
    eigv_to_density), step by step with its definitions: np.linalg.eigh per draw, a grid from the
    draw-averaged extreme nodes widened by grid_expand, kernel variance
    sigma_squared * max(1, range), a point-by-point Gaussian sum per draw, the mean over draws, and
    the Riemann-sum normalization."""
    num_draws, order = len(tridiag_list), tridiag_list[0].shape[0]
    nodes, weights = np.zeros((num_draws, order)), np.zeros((num_draws, order))
    for i in range(num_draws):
        values, vectors = np.linalg.eigh(tridiag_list[i])
        index = np.argsort(values)
        nodes[i], weights[i] = values[index], vectors[:, index][0] ** 2
    lambda_max = np.nanmean(np.max(nodes, axis=1), axis=0) + grid_expand
    lambda_min = np.nanmean(np.min(nodes, axis=1), axis=0) - grid_expand
    grids = np.linspace(lambda_min, lambda_max, num=grid_len)
    variance = sigma_squared * max(1, lambda_max - lambda_min)
    per_draw = np.zeros((num_draws, grid_len))
    for i in range(num_draws):
        for j in range(grid_len):
            kernel = np.exp(-((nodes[i] - grids[j]) ** 2) / (2.0 * variance)) / math.sqrt(2 * math.pi * variance)
            per_draw[i, j] = np.sum(kernel * weights[i])
    density = np.nanmean(per_draw, axis=0)
    return density / (np.sum(density) * (grids[1] - grids[0])), grids


@workflow
def test_hessflow_tridiags_are_the_papers_tridiag_list(tmp_path_factory):
    run = results(baseline(tmp_path_factory))
    tridiag_list = np.load(run / f"{spectrum(STEP)}/tridiags.npy")
    assert tridiag_list.shape == (DRAWS, SMALL_CONFIG["lanczos"]["steps"], SMALL_CONFIG["lanczos"]["steps"])
    density_config = json.loads((run / "config.json").read_text())["density"]
    density, grids = paper_tridiag_to_density(
        tridiag_list, density_config["sigma_squared"], density_config["grid_len"], density_config["grid_expand"])
    ours = np.load(run / f"{spectrum(STEP)}/density.npy")
    np.testing.assert_allclose(grids, ours[0], rtol=0, atol=1e-12 * np.abs(ours[0]).max())
    np.testing.assert_allclose(density, ours[1], rtol=1e-7, atol=1e-9 * ours[1].max())


def write_paper_files(folder, tridiag, vectors, suffix):
    """As the paper code's LanczosExperiment saved them: np.save into an open file named without
    .npy (suffix=""), or a renamed copy with it; tridiagonals with a trailing draws axis."""
    folder.mkdir(parents=True)
    with open(folder / f"tridiag_1{suffix}", "wb") as handle:
        np.save(handle, tridiag[:, :, None])
    with open(folder / f"lanczos_vec_1{suffix}", "wb") as handle:
        np.save(handle, vectors)


@workflow
def test_paper_files_import_into_the_same_density(tmp_path_factory, tmp_path):
    run = results(baseline(tmp_path_factory))
    lanczos = run / LANCZOS
    folders = []
    for draw, suffix in zip(range(DRAWS), ["", ".npy"]):  # one folder per draw; both spellings
        folder = tmp_path / f"paper.checkpoint_{STEP}.draw_{draw + 1}"
        write_paper_files(folder, np.load(lanczos / f"tridiag_{draw}.npy"),
                          np.load(lanczos / f"lanczos_vec_{draw}.npy"), suffix)
        folders.append(folder)
    imported = papercode.load_paper_draws(folders)
    assert np.array_equal(imported.tridiags, np.load(run / f"{spectrum(STEP)}/tridiags.npy"))
    assert imported.dim == json.loads((lanczos / "provenance_0.json").read_text())["dim"]

    density_config = json.loads((run / "config.json").read_text())["density"]
    out = tmp_path / "imported"
    papercode.render_paper_draws(imported, out, density_config, title_step=STEP, operator=OPERATOR, block=BLOCK)
    assert np.array_equal(np.load(out / "density.npy"), np.load(run / f"{spectrum(STEP)}/density.npy"))
    # The same statistics, less what only the Lanczos jobs' provenance gives (the paper files lack it).
    from_jobs = {"gradient_fraction_outliers", "gradient_fraction_top_k", "health_warnings"}
    def statistics(path):
        return {key: value for key, value in json.loads(path.read_text()).items() if key not in from_jobs}

    assert statistics(out / "stats.json") == statistics(run / f"{spectrum(STEP)}/stats.json")
    assert (out / "density.png").read_bytes() == (
        run / f"figures/{OPERATOR}/{BLOCK}/density_step_{STEP}.png").read_bytes()

    # The command line, without TensorFlow, on the two folders: the same density.
    cli_out = tmp_path / "cli"
    done = without_tensorflow("hessflow.papercode", *folders, "--out", cli_out, "--step", STEP,
                              *[arg for key, value in density_config.items()
                                for arg in (f"--{key.replace('_', '-')}", value)])
    assert done.returncode == 0, done.stderr
    assert np.array_equal(np.load(cli_out / "density.npy"), np.load(out / "density.npy"))


def test_paper_buffer_with_unfinished_draws_keeps_the_finished_ones(tmp_path):
    # tridiag_2 of a run with num_draws = 3: draws 0 and 1 done, draw 2 still zeros.
    rng = np.random.default_rng(0)
    tridiags = []
    for _ in range(2):
        diagonal, off = rng.normal(size=6), rng.uniform(0.5, 1.0, size=5)
        tridiags.append(np.diag(diagonal) + np.diag(off, 1) + np.diag(off, -1))
    buffer = np.zeros((6, 6, 3))
    buffer[:, :, 0], buffer[:, :, 1] = tridiags
    with open(tmp_path / "tridiag_2", "wb") as handle:
        np.save(handle, buffer)
    imported = papercode.load_paper_draws([tmp_path])
    assert np.array_equal(imported.tridiags, np.stack(tridiags))
    assert imported.dim is None
    with pytest.raises(ValueError, match="dimension n is unknown"):
        papercode.render_paper_draws(imported, tmp_path / "out")


# ------------------------------------------------------------------------------------------------
# a made-up run of several curvatures, rebuilt in-process
# ------------------------------------------------------------------------------------------------
# Operators and blocks in an order that is not alphabetical: the config's order must be kept.
CURVATURES_CONFIG = {
    "run_name": "curvatures",
    "training": {"checkpoint_steps": [10]},  # one step: each figure costs ~0.5 s
    "lanczos": {"draws": 1},
    "hessian": {"operator": ["ggn", "hessian"], "blocks": {"head": ["dense"], "all": [".*"]}},
    "density": {"sigma_squared": 1e-5, "grid_len": 200, "grid_expand": 0.01, "negative_threshold": 1e-3},
}
CURVATURES = [("ggn", "head"), ("ggn", "all"), ("hessian", "head"), ("hessian", "all")]
MADE_UP_DIM = 50
# The train loss: step 10 is above 10x that of step 0 (divergence, for summary_table).
TRAIN_LOSS = {0: 2.0, 10: 25.0}


def made_up_tridiag(index):
    """A random symmetric tridiagonal (6 x 6, float64), different for each (curvature, step) index."""
    rng = np.random.default_rng(index)
    off = rng.uniform(0.2, 1.0, size=5)
    return np.diag(rng.normal(scale=index + 1.0, size=6)) + np.diag(off, 1) + np.diag(off, -1)


def write_made_up_run(root):
    """The files a rebuild reads (tridiagonals, provenances, evaluations, config) and manifest.tsv;
    returns {(operator, block, step): tridiag}."""
    layout, tridiags = RunLayout(root.as_posix()), {}
    for index, ((operator, block), step) in enumerate(
            (pair, step) for pair in CURVATURES for step in CURVATURES_CONFIG["training"]["checkpoint_steps"]):
        tridiag = tridiags[operator, block, step] = made_up_tridiag(index)
        path = layout.tridiag(step, 0, operator, block)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        artifacts.save_npy(path, tridiag)
        artifacts.save_json(layout.provenance(step, 0, operator, block), {
            "dim": MADE_UP_DIM, "loss": 1.0, "gradient_norm": 0.5,
            "outputs_sha256": {"tridiag": artifacts.sha256_file(path)}})
    for step in CURVATURES_CONFIG["training"]["checkpoint_steps"]:
        Path(layout.evaluation(step)).parent.mkdir(parents=True, exist_ok=True)
        artifacts.save_json(layout.evaluation(step), {"train_loss": 2.0, "test_loss": 2.0, "test_accuracy": 0.5})
    # In the config's order, not sorted (save_json sorts keys): the blocks' order is the config's.
    artifacts.save_text(layout.config, json.dumps(CURVATURES_CONFIG, indent=2) + "\n")
    inputs = [layout.path(path) for path in reproduce.required_inputs(CURVATURES_CONFIG)]
    artifacts.write_manifest(layout.manifest, inputs, root)
    return tridiags


@pytest.fixture(scope="module")
def rebuilt_curvatures(tmp_path_factory):
    """(tridiags, out, written): the made-up run verified and rebuilt once for this module's tests."""
    root = tmp_path_factory.mktemp("curvatures") / "run"
    tridiags = write_made_up_run(root)
    verification = reproduce.verify_run(root)
    assert verification.ok, verification.problems
    out = root.parent / "rebuilt"
    return tridiags, out, reproduce.rebuild(root, out, verification.config)


def test_a_rebuild_of_several_curvatures_writes_every_curvatures_files_and_figures(rebuilt_curvatures):
    _, out, written = rebuilt_curvatures
    assert written == reproduce.rebuilt_outputs(CURVATURES_CONFIG)
    assert sorted(path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file()) == sorted(written)
    assert (out / "figures/curvatures_step_10.png").read_bytes()[:4] == b"\x89PNG"


def test_the_summary_has_one_row_per_curvature_in_config_order(rebuilt_curvatures):
    summary = pd.read_csv(rebuilt_curvatures[1] / "summary.csv")
    assert list(summary.columns[:3]) == ["operator", "block", "step"]
    assert list(zip(summary["operator"], summary["block"], summary["step"])) == [
        (operator, block, 10) for operator, block in CURVATURES]


def test_each_curvatures_summary_row_holds_its_own_spectrum(rebuilt_curvatures):
    tridiags, out, _ = rebuilt_curvatures
    summary = pd.read_csv(out / "summary.csv")
    for row in summary.itertuples():
        tridiag = tridiags[row.operator, row.block, row.step]
        eigenvalues = np.linalg.eigvalsh(tridiag)  # one draw of full order: the Ritz values
        np.testing.assert_allclose([row.lambda_max, row.lambda_min], [eigenvalues[-1], eigenvalues[0]], rtol=1e-12)
        # e1' T e1 = sum of weight * node: the trace estimate dim * T[0, 0]
        np.testing.assert_allclose(row.trace, MADE_UP_DIM * tridiag[0, 0], rtol=1e-10, atol=1e-12)
        density = np.load(out / f"spectrum/{row.operator}/{row.block}/step_{row.step}/density.npy")
        assert density[0, 0] < eigenvalues[0] < eigenvalues[-1] < density[0, -1]


def test_summary_table_sorts_by_curvature_as_given_then_step_and_judges_divergence_from_the_smallest_step():
    stats = {key: 0.0 for key in reproduce.SUMMARY_SPECTRUM_COLUMNS} | {"num_draws": 1, "num_steps": 6, "dim": 5}
    provenance = {"loss": 1.0, "gradient_norm": 0.5}
    rows = [reproduce.summary_row(step, stats, {"train_loss": TRAIN_LOSS[step], "test_loss": 1.0}, provenance,
                                  operator, block)
            for operator, block in [("hessian", "all"), ("ggn", "all")] for step in (10, 0)]
    table = reproduce.summary_table(rows)
    assert list(zip(table["operator"], table["step"], table["diverged"])) == [
        ("hessian", 0, False), ("hessian", 10, True), ("ggn", 0, False), ("ggn", 10, True)]


def test_a_trajectory_figure_shows_only_its_curvatures_rows(rebuilt_curvatures):
    tridiags, out, _ = rebuilt_curvatures
    arrays = [np.load(out / "spectrum/ggn/head/step_10/density.npy")]
    fig = reproduce.trajectory_run_figure([10], arrays, out / "summary.csv", "ggn", "head")
    (ax,) = [ax for ax in fig.axes if ax.get_label() == "extreme_eigenvalues"]
    (line,) = [line for line in ax.get_lines() if line.get_gid() == "lambda_max"]
    np.testing.assert_allclose(line.get_ydata(), [np.linalg.eigvalsh(tridiags["ggn", "head", 10])[-1]], rtol=1e-12)
    assert fig.get_suptitle() == "Gauss-Newton spectrum along training, block head"


def test_density_figure_titles_name_the_operator_and_a_block_other_than_all():
    array = np.stack([np.linspace(-1.0, 1.0, 50), np.ones(50)])
    titles = [reproduce.density_step_figure(array, {}, 10, operator, block).axes[0].get_title()
              for operator, block in [("hessian", "all"), ("ggn", "all"), ("ggn", "head")]]
    assert titles == ["Hessian eigenvalue density, step 10", "Gauss-Newton eigenvalue density, step 10",
                      "Gauss-Newton eigenvalue density, block head, step 10"]


def test_curvatures_run_figure_has_a_panel_per_block_with_each_operator(rebuilt_curvatures):
    out = rebuilt_curvatures[1]
    densities = [(pair, np.load(out / f"spectrum/{pair[0]}/{pair[1]}/step_10/density.npy")) for pair in CURVATURES]
    fig = reproduce.curvatures_run_figure(10, densities)
    assert [ax.get_title() for ax in fig.axes] == ["head", "all"]
    assert [[line.get_gid() for line in ax.get_lines()] for ax in fig.axes] == [["zero", "ggn", "hessian"]] * 2
    assert fig.get_suptitle() == "step 10"


def test_a_changed_tridiagonal_of_any_curvature_is_refused(tmp_path):
    root = tmp_path / "run"
    write_made_up_run(root)
    tampered = root / "lanczos/hessian/head/step_10/tridiag_0.npy"
    artifacts.save_npy(tampered, 2 * np.load(tampered))
    inputs = [root / path for path in reproduce.required_inputs(CURVATURES_CONFIG)]
    artifacts.write_manifest(root / "manifest.tsv", inputs, root)  # re-certified: the provenance still refuses it
    problems = reproduce.verify_run(root).problems
    assert len(problems) == 1 and problems[0].startswith("refused: lanczos/hessian/head/step_10/tridiag_0.npy")


def test_papercode_draws_render_with_the_curvature_in_the_title(tmp_path):
    draws = papercode.PaperDraws(tridiags=np.stack([made_up_tridiag(0)]), dim=MADE_UP_DIM, sources=["made up"])
    density_config = CURVATURES_CONFIG["density"]
    papercode.render_paper_draws(draws, tmp_path / "hessian", density_config, title_step=3)
    papercode.render_paper_draws(draws, tmp_path / "ggn", density_config, title_step=3, operator="ggn", block="head")
    same = ["tridiags.npy", "ritz_values.npy", "ritz_weights.npy", "density.npy", "stats.json"]
    for name in same:  # the curvature names the figure only
        assert (tmp_path / "hessian" / name).read_bytes() == (tmp_path / "ggn" / name).read_bytes(), name
    assert (tmp_path / "hessian" / "density.png").read_bytes() != (tmp_path / "ggn" / "density.png").read_bytes()
