"""hessflow-reproduce, the export archive, and the paper code's files.

``hessflow.reproduce`` runs in a subprocess where TensorFlow and Keras cannot be imported (an
import hook refuses them), as on a machine with only the base install: it verifies the
small run of tests/small_run.py against its manifest and rebuilds every density, table and figure
identical to the workflow's. A one-byte change to a tridiagonal is named and nothing is rebuilt.
Files in the paper code's layout import into the same density as hessflow's own.
"""

import json
import math
import re
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from hessflow import papercode, reproduce
from small_run import ROOT, SMALL_CONFIG, baseline, fresh_copy, results, snakemake

pytestmark = pytest.mark.slow

STEP = SMALL_CONFIG["spectrum"]["steps"][-1]
DRAWS = SMALL_CONFIG["lanczos"]["draws"]

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
            original = np.load(run / f"spectrum/step_{step}/{name}.npy")
            assert np.array_equal(np.load(out / f"spectrum/step_{step}/{name}.npy"), original, equal_nan=True), name
    for path in written:  # stats, summary and figures too, byte for byte
        assert (out / path).read_bytes() == (run / path).read_bytes(), path


def test_export_archive_ships_what_reproduce_needs_and_reproduces(tmp_path_factory, tmp_path):
    workdir = fresh_copy(tmp_path_factory, "export")
    snakemake(workdir, SMALL_CONFIG, "export")
    archive = workdir / "results" / f"{SMALL_CONFIG['run_name']}.tar.gz"
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        versions = tar.extractfile("small/software_versions.txt").read().decode()
        export = json.loads(tar.extractfile("small/export.json").read())
    for required in ("manifest.tsv", "config.json", "software_versions.txt", "export.json",
                     f"lanczos/step_{STEP}/tridiag_0.npy", f"spectrum/step_{STEP}/density.npy", "summary.csv"):
        assert f"small/{required}" in names, required
    for package in ("python", "numpy", "scipy", "tensorflow", "keras", "snakemake"):
        assert re.search(rf"^{package}==\d", versions, re.M), package
    assert not [name for name in names
                if "/checkpoints/" in name or "lanczos_vec" in name or name.endswith("_images.npy")]
    assert f"lanczos/step_{STEP}/lanczos_vec_0.npy" in export["left_out"]
    assert not list(archive.parent.glob(".*tmp*")), "a temporary file was left beside the archive"

    out = tmp_path / "from_archive"
    done = without_tensorflow("hessflow.reproduce", archive, "--out", out, "--strict")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "not shipped" in done.stdout
    original = np.load(results(workdir) / f"spectrum/step_{STEP}/density.npy")
    assert np.array_equal(np.load(out / f"spectrum/step_{STEP}/density.npy"), original)


def _copy_run(tmp_path_factory, tmp_path):
    run = tmp_path / "small"
    shutil.copytree(results(baseline(tmp_path_factory)), run)
    return run


def test_one_byte_change_to_a_tridiagonal_is_named_and_nothing_is_rebuilt(tmp_path_factory, tmp_path):
    run = _copy_run(tmp_path_factory, tmp_path)
    tampered = run / f"lanczos/step_{STEP}/tridiag_1.npy"
    content = bytearray(tampered.read_bytes())
    content[-3] ^= 0x01  # one bit of one float64 of the data, same size
    tampered.write_bytes(bytes(content))
    out = tmp_path / "rebuilt"
    done = without_tensorflow("hessflow.reproduce", run, "--out", out)
    assert done.returncode == 1
    assert f"sha256 mismatch: lanczos/step_{STEP}/tridiag_1.npy" in done.stderr
    assert "nothing rebuilt" in done.stderr
    assert not out.exists()


def test_missing_and_resized_artifacts_are_named(tmp_path_factory, tmp_path):
    run = _copy_run(tmp_path_factory, tmp_path)
    (run / f"lanczos/step_{STEP}/tridiag_0.npy").unlink()
    with open(run / "config.json", "a") as handle:
        handle.write(" ")
    verification = reproduce.verify_run(run)
    assert not verification.ok
    assert f"missing: lanczos/step_{STEP}/tridiag_0.npy" in verification.problems
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


def test_hessflow_tridiags_are_the_papers_tridiag_list(tmp_path_factory):
    run = results(baseline(tmp_path_factory))
    tridiag_list = np.load(run / f"spectrum/step_{STEP}/tridiags.npy")
    assert tridiag_list.shape == (DRAWS, SMALL_CONFIG["lanczos"]["steps"], SMALL_CONFIG["lanczos"]["steps"])
    density_config = json.loads((run / "config.json").read_text())["density"]
    density, grids = paper_tridiag_to_density(
        tridiag_list, density_config["sigma_squared"], density_config["grid_len"], density_config["grid_expand"])
    ours = np.load(run / f"spectrum/step_{STEP}/density.npy")
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


def test_paper_files_import_into_the_same_density(tmp_path_factory, tmp_path):
    run = results(baseline(tmp_path_factory))
    lanczos = run / f"lanczos/step_{STEP}"
    folders = []
    for draw, suffix in zip(range(DRAWS), ["", ".npy"]):  # one folder per draw; both spellings
        folder = tmp_path / f"paper.checkpoint_{STEP}.draw_{draw + 1}"
        write_paper_files(folder, np.load(lanczos / f"tridiag_{draw}.npy"),
                          np.load(lanczos / f"lanczos_vec_{draw}.npy"), suffix)
        folders.append(folder)
    imported = papercode.load_paper_draws(folders)
    assert np.array_equal(imported.tridiags, np.load(run / f"spectrum/step_{STEP}/tridiags.npy"))
    assert imported.dim == json.loads((lanczos / "provenance_0.json").read_text())["dim"]

    density_config = json.loads((run / "config.json").read_text())["density"]
    out = tmp_path / "imported"
    papercode.render_paper_draws(imported, out, density_config, title_step=STEP)
    assert np.array_equal(np.load(out / "density.npy"), np.load(run / f"spectrum/step_{STEP}/density.npy"))
    assert (out / "stats.json").read_bytes() == (run / f"spectrum/step_{STEP}/stats.json").read_bytes()
    assert (out / "density.png").read_bytes() == (run / f"figures/density_step_{STEP}.png").read_bytes()

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
