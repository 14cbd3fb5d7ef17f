"""End-to-end tests of the Snakemake workflow (workflow/Snakefile), run as `python -m snakemake`.

Every run goes into a pytest temporary folder (``--directory <tmp>``, explicit ``--snakefile`` and
``--configfile``), so nothing lands in the repository. The demo (config/config.yaml, about 2.5
minutes on 2 cores) runs once per module; many small tests check its outputs against numbers
computed here, independently of hessflow (numpy, hashlib, matplotlib). CIFAR-10 runs use a small
generated archive in the CIFAR-10 binary format, served over HTTP on 127.0.0.1
(tests/cifar_archive.py).
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.image  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

from cifar_archive import TEST_FILES, TRAIN_FILES, serve_directory, write_cifar10_archive  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = ROOT / "workflow" / "Snakefile"
DEMO_CONFIG = ROOT / "config" / "config.yaml"
CIFAR_CONFIG = ROOT / "config" / "cifar10_resnet32.yaml"

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
RESNET32_PARAMETERS = 464_154  # the paper code's count (README, config/README.md)
ARCHIVE_NAME = "cifar-10-binary.tar.gz"


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------
def run_snakemake(workdir, configfile, *args, timeout, cwd=None):
    """``python -m snakemake`` on this checkout's Snakefile in ``workdir``; stdout+stderr merged."""
    command = [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(SNAKEFILE),
        "--directory", str(workdir),
        "--configfile", str(configfile),
        "--cores", "2",
        *map(str, args),
    ]
    return subprocess.run(
        command, cwd=cwd or workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=timeout,
    )


def tail(text, lines=60):
    return "\n".join(text.splitlines()[-lines:])


def job_stats(output):
    """Snakemake's first "Job stats" table as {rule: count} (the "total" row left out)."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "Job stats:")
    counts = {}
    for line in lines[start + 3:]:  # "Job stats:", header, dashes
        fields = line.split()
        if len(fields) != 2 or not fields[1].isdigit():
            break
        if fields[0] == "total":
            break
        counts[fields[0]] = int(fields[1])
    return counts


def job_blocks(output):
    """The per-job blocks of a (dry-run) log: list of (rule, {key: value}) in order."""
    blocks = []
    for line in output.splitlines():
        header = re.match(r"^(?:local)?rule (\w+):$", line)
        if header:
            blocks.append((header.group(1), {}))
            continue
        field = re.match(r"^    (\w+): (.*)$", line)
        if field and blocks:
            blocks[-1][1][field.group(1)] = field.group(2)
    return blocks


def parse_resources(text):
    """'tmpdir=/tmp, gpu=1, runtime=720, ...' -> {'tmpdir': '/tmp', 'gpu': '1', ...}."""
    return dict(item.split("=", 1) for item in text.split(", "))


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def read_tsv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def load_json(path):
    with open(path) as handle:
        return json.load(handle)


def analysed_steps(config):
    """Checkpoint steps whose spectrum is computed (spectrum.steps, else every saved step)."""
    steps = (config.get("spectrum") or {}).get("steps")
    return sorted(steps if steps is not None else config["training"]["checkpoint_steps"])


def sha256_hex(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def deflated_measure(tridiag, basis_tridiag, dim):
    """A deflated draw's measure with numpy alone: the basis run's Ritz values at weight 1/n, the
    draw's Gauss nodes with weights (n - m0)/n times the squared first eigenvector components
    (the Gaussian probe's complement weight); ascending."""
    atoms = np.linalg.eigvalsh(basis_tridiag)
    eigenvalues, eigenvectors = np.linalg.eigh(tridiag)
    values = np.concatenate([atoms, eigenvalues])
    weights = np.concatenate([np.full(atoms.size, 1 / dim), (dim - atoms.size) / dim * eigenvectors[0] ** 2])
    order = np.argsort(values, kind="stable")
    return values[order], weights[order]


def independent_stats(tridiags, dim, eps, basis_tridiag):
    """Spectrum statistics from the tridiagonals with numpy alone (definitions: README/stats.json)."""
    values, weights = zip(*(deflated_measure(tridiag, basis_tridiag, dim) for tridiag in tridiags))
    lambda_max = np.mean([v.max() for v in values])
    lambda_min = np.mean([v.min() for v in values])
    cutoff = eps * (lambda_max - lambda_min)
    first = np.mean([w @ v for v, w in zip(values, weights)])
    second = np.mean([w @ v**2 for v, w in zip(values, weights)])
    return {
        "lambda_max": lambda_max,
        "lambda_min": lambda_min,
        "trace": dim * first,
        "mean": first,
        "std": math.sqrt(second - first**2),
        "negative_mass": np.mean([w[v < -cutoff].sum() for v, w in zip(values, weights)]),
        "positive_mass": np.mean([w[v > cutoff].sum() for v, w in zip(values, weights)]),
        "negative_cutoff": cutoff,
    }


# ------------------------------------------------------------------------------------------------
# The demo, once per module
# ------------------------------------------------------------------------------------------------
class Demo:
    def __init__(self, workdir, config, output):
        self.workdir = workdir
        self.config = config
        self.output = output
        self.results = workdir / "results" / config["run_name"]
        self.steps = analysed_steps(config)
        self.saved_steps = sorted(config["training"]["checkpoint_steps"])
        self.draws = list(range(config["lanczos"]["draws"]))
        self.m = config["lanczos"]["steps"]
        self.m0 = config["lanczos"]["deflation_steps"]  # the demo deflates

    def lanczos(self, step, name):
        return self.results / "lanczos" / "hessian" / "all" / f"step_{step}" / name

    def spectrum(self, step, name):
        return self.results / "spectrum" / "hessian" / "all" / f"step_{step}" / name


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo")
    result = run_snakemake(workdir, DEMO_CONFIG, timeout=1200)  # ~2.5 min on 2 idle cores
    assert result.returncode == 0, f"demo workflow failed:\n{tail(result.stdout)}"
    return Demo(workdir, yaml.safe_load(DEMO_CONFIG.read_text()), result.stdout)


def test_demo_tridiags_are_symmetric_tridiagonal_float64(demo):
    for step in demo.steps:
        for draw in demo.draws:
            tridiag = np.load(demo.lanczos(step, f"tridiag_{draw}.npy"))
            assert tridiag.dtype == np.float64
            assert tridiag.shape == (demo.m, demo.m)
            np.testing.assert_array_equal(tridiag, tridiag.T)
            outside = np.abs(np.subtract.outer(np.arange(demo.m), np.arange(demo.m))) > 1
            assert not tridiag[outside].any(), f"step {step} draw {draw}: nonzero outside the band"
            assert np.all(np.diag(tridiag, 1) > 0), "Lanczos off-diagonals (beta) are positive norms"


def test_demo_lanczos_vectors_have_orthonormal_columns(demo):
    for step in demo.steps:
        for draw in demo.draws:
            vectors = np.load(demo.lanczos(step, f"lanczos_vec_{draw}.npy"))
            dim = load_json(demo.lanczos(step, f"provenance_{draw}.json"))["dim"]
            assert vectors.dtype == np.float64
            assert vectors.shape == (dim, demo.m)
            np.testing.assert_allclose(vectors.T @ vectors, np.eye(demo.m), rtol=0, atol=1e-8)


def test_demo_start_vectors_differ_for_every_step_and_draw(demo):
    # The first Lanczos vector is the normalized start vector, seeded by (run seed, step, draw):
    # independent Gaussian vectors in n dimensions are nearly orthogonal (|cosine| ~ 1/sqrt(n)).
    firsts = {}
    for step in demo.steps:
        for draw in demo.draws:
            firsts[step, draw] = np.load(demo.lanczos(step, f"lanczos_vec_{draw}.npy"))[:, 0]
    keys = list(firsts)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            assert abs(firsts[a] @ firsts[b]) < 0.2, f"start vectors of {a} and {b} are not independent"


def test_demo_provenance_records_seed_and_settings(demo):
    config = demo.config
    for step in demo.steps:
        for draw in demo.draws:
            provenance = load_json(demo.lanczos(step, f"provenance_{draw}.json"))
            assert provenance["seed"] == [config["seed"], step, draw]
            assert provenance["step"] == step and provenance["draw"] == draw
            assert provenance["num_steps"] == demo.m
            assert provenance["dtype"] == config["hessian"]["dtype"]
            assert provenance["batch_norm"] == config["hessian"]["batch_norm"]
            assert provenance["batch_size"] == config["hessian"]["batch_size"]
            assert provenance["weight_decay"] == config["training"]["weight_decay"]
            assert math.isfinite(provenance["loss"]) and provenance["loss"] > 0
            assert math.isfinite(provenance["gradient_norm"]) and provenance["gradient_norm"] >= 0
            assert provenance["wall_seconds"] > 0
            assert provenance["dim"] == np.load(demo.lanczos(step, f"lanczos_vec_{draw}.npy")).shape[0]
            assert provenance["weights_sha256"] and len(provenance["weights_sha256"]) == 64


def test_demo_provenance_loss_is_the_same_for_every_draw_of_a_step(demo):
    for step in demo.steps:
        losses = {load_json(demo.lanczos(step, f"provenance_{d}.json"))["loss"] for d in demo.draws}
        assert len(losses) == 1, f"step {step}: the Hessian's loss differs between draws: {losses}"


def test_demo_spectrum_tridiags_stack_the_per_draw_files(demo):
    for step in demo.steps:
        stacked = np.load(demo.spectrum(step, "tridiags.npy"))
        assert stacked.shape == (len(demo.draws), demo.m, demo.m)
        expected = np.stack([np.load(demo.lanczos(step, f"tridiag_{d}.npy")) for d in demo.draws])
        np.testing.assert_array_equal(stacked, expected)


def test_demo_ritz_values_and_weights_are_the_basis_atoms_and_each_draws_quadrature_by_numpy_eigh(demo):
    for step in demo.steps:
        tridiags = np.load(demo.spectrum(step, "tridiags.npy"))
        values = np.load(demo.spectrum(step, "ritz_values.npy"))
        weights = np.load(demo.spectrum(step, "ritz_weights.npy"))
        basis = np.load(demo.lanczos(step, "tridiag_basis.npy"))
        dim = load_json(demo.lanczos(step, "provenance_0.json"))["dim"]
        assert values.shape == weights.shape == (len(demo.draws), demo.m0 + demo.m)
        for draw, tridiag in enumerate(tridiags):
            expected_values, expected_weights = deflated_measure(tridiag, basis, dim)
            scale = np.abs(expected_values).max()
            np.testing.assert_allclose(values[draw], expected_values, rtol=0, atol=1e-12 * scale)
            np.testing.assert_allclose(weights[draw], expected_weights, rtol=0, atol=1e-12)
            assert weights[draw].sum() == pytest.approx(1.0, abs=1e-12)


def test_demo_draws_run_off_the_basis_runs_krylov_space_with_its_own_seed(demo):
    for step in demo.steps:
        basis = np.load(demo.lanczos(step, "lanczos_vec_basis.npy"))
        basis_provenance = load_json(demo.lanczos(step, "provenance_basis.json"))
        assert basis.shape == (basis_provenance["dim"], demo.m0)
        assert basis_provenance["seed"] == [demo.config["seed"], step, 0, 1]
        np.testing.assert_allclose(basis.T @ basis, np.eye(demo.m0), rtol=0, atol=1e-8)
        for draw in demo.draws:
            provenance = load_json(demo.lanczos(step, f"provenance_{draw}.json"))
            basis_sha256 = hashlib.sha256(demo.lanczos(step, "tridiag_basis.npy").read_bytes()).hexdigest()
            assert provenance["deflation"]["basis_sha256"]["tridiag"] == basis_sha256
            assert provenance["operator_sha256"] == basis_provenance["operator_sha256"]
            vectors = np.load(demo.lanczos(step, f"lanczos_vec_{draw}.npy"))
            assert np.abs(basis.T @ vectors).max() < 1e-10  # the draw's Krylov space is P H P's


def test_demo_density_has_grid_len_points_and_integrates_to_one(demo):
    grid_len = demo.config["density"]["grid_len"]
    for step in demo.steps:
        density = np.load(demo.spectrum(step, "density.npy"))
        assert density.shape == (4, grid_len)  # grid, density, and its band's lower and upper edge
        grid, values, lower, upper = density
        rounding = 1e-12 * values.max()  # the band is about the mean of per-draw rows, = the density to rounding
        assert np.all(lower <= values + rounding) and np.all(values <= upper + rounding)
        steps = np.diff(grid)
        assert np.all(steps > 0)
        np.testing.assert_allclose(steps, steps[0], rtol=1e-9)
        assert np.all(values >= 0)
        assert values.sum() * steps[0] == pytest.approx(1.0, abs=1e-6)
        ritz_values = np.load(demo.spectrum(step, "ritz_values.npy"))
        # the grid covers the draw-averaged extreme Ritz values
        assert grid[0] < ritz_values.min(axis=1).mean() and grid[-1] > ritz_values.max(axis=1).mean()


def test_demo_stats_match_independently_computed_statistics(demo):
    eps = demo.config["density"]["negative_threshold"]
    for step in demo.steps:
        stats = load_json(demo.spectrum(step, "stats.json"))
        dim = load_json(demo.lanczos(step, "provenance_0.json"))["dim"]
        assert stats["dim"] == dim
        assert stats["num_draws"] == len(demo.draws)
        assert stats["num_steps"] == demo.m0 + demo.m  # nodes per draw: the atoms and the draw's own
        tridiags = [np.load(demo.lanczos(step, f"tridiag_{d}.npy")) for d in demo.draws]
        basis = np.load(demo.lanczos(step, "tridiag_basis.npy"))
        for key, value in independent_stats(tridiags, dim, eps, basis).items():
            assert stats[key] == pytest.approx(value, rel=1e-9, abs=1e-12), f"step {step}: {key}"


def test_demo_summary_has_one_row_per_step_with_the_documented_columns(demo):
    rows = read_csv(demo.results / "summary.csv")
    documented = {
        "step", "lambda_max", "lambda_min", "trace", "mean", "std", "negative_mass", "positive_mass",
        "dim", "hessian_loss", "gradient_norm", "train_loss", "train_accuracy", "test_loss",
        "test_accuracy",
    }
    assert documented <= set(rows[0]), f"missing columns: {documented - set(rows[0])}"
    assert [int(row["step"]) for row in rows] == demo.steps


def test_demo_summary_values_come_from_stats_provenance_and_evaluation(demo):
    for row in read_csv(demo.results / "summary.csv"):
        step = int(row["step"])
        stats = load_json(demo.spectrum(step, "stats.json"))
        provenance = load_json(demo.lanczos(step, "provenance_0.json"))
        evaluation = load_json(demo.results / "evaluation" / f"step_{step}.json")
        for key in ("lambda_max", "lambda_min", "trace", "negative_mass", "positive_mass"):
            assert float(row[key]) == pytest.approx(stats[key], rel=1e-12)
        assert int(row["dim"]) == provenance["dim"]
        assert float(row["hessian_loss"]) == pytest.approx(provenance["loss"], rel=1e-12)
        assert float(row["gradient_norm"]) == pytest.approx(provenance["gradient_norm"], rel=1e-12)
        for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
            assert float(row[key]) == pytest.approx(evaluation[key], rel=1e-12)


def test_demo_test_accuracy_at_the_last_step_is_above_0_8(demo):
    last = demo.steps[-1]
    evaluation = load_json(demo.results / "evaluation" / f"step_{last}.json")
    assert evaluation["test_accuracy"] > 0.8
    # and it is an accuracy over the whole test set (359 digits for the 0.2 split)
    test_labels = np.load(demo.results / "data" / "test_labels.npy")
    assert evaluation["test_num_examples"] == len(test_labels)
    assert float(read_csv(demo.results / "summary.csv")[-1]["test_accuracy"]) > 0.8


def test_demo_figures_are_valid_pngs(demo):
    figures = demo.results / "figures" / "hessian" / "all"
    expected = {f"density_step_{step}.png" for step in demo.steps} | {"trajectory.png"}
    assert {path.name for path in figures.iterdir()} == expected
    for name in expected:
        path = figures / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE, name
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100 and image.shape[2] in (3, 4)
        assert np.ptp(image[..., :3]) > 0, f"{name} is blank"


def test_demo_manifest_sizes_and_sha256_match_the_files(demo):
    rows = read_tsv(demo.results / "manifest.tsv")
    assert rows, "empty manifest"
    for row in rows:
        path = demo.results / row["path"]
        assert path.is_file(), row["path"]
        assert int(row["size_bytes"]) == path.stat().st_size, row["path"]
        assert row["sha256"] == sha256_hex(path), row["path"]


def test_demo_manifest_lists_every_artifact_except_logs_and_benchmarks(demo):
    listed = [row["path"] for row in read_tsv(demo.results / "manifest.tsv")]
    assert listed == sorted(listed), "manifest rows are sorted by path"
    on_disk = {
        path.relative_to(demo.results).as_posix()
        for path in demo.results.rglob("*")
        if path.is_file()
    }
    expected = {
        path for path in on_disk
        if path != "manifest.tsv" and not path.startswith(("logs/", "benchmarks/"))
    }
    assert set(listed) == expected


def test_demo_saves_a_checkpoint_at_every_checkpoint_step(demo):
    checkpoints = demo.results / "checkpoints"
    expected = {f"step_{step}.weights.h5" for step in demo.saved_steps}
    assert {path.name for path in checkpoints.iterdir()} == expected
    for name in expected:
        assert (checkpoints / name).read_bytes()[:8] == HDF5_SIGNATURE, name
    # the weights change with training: every checkpoint is a different file
    assert len({sha256_hex(checkpoints / name) for name in expected}) == len(expected)


def test_demo_training_history_has_the_documented_columns(demo):
    training = demo.config["training"]
    rows = read_csv(demo.results / "train" / "history.csv")
    assert list(rows[0]) == ["step", "loss", "data_loss", "accuracy", "learning_rate"]
    steps = [int(row["step"]) for row in rows]
    expected = list(range(training["log_every"], training["steps"] + 1, training["log_every"]))
    assert steps == expected + ([training["steps"]] if expected[-1:] != [training["steps"]] else [])
    rates = [training["learning_rate"] * training["lr_decay_factor"] ** k
             for k in range(len(training["lr_boundaries"]) + 1)]
    for row in rows:
        assert math.isfinite(float(row["loss"])) and float(row["loss"]) >= float(row["data_loss"])
        assert 0 <= float(row["accuracy"]) <= 1
        assert any(float(row["learning_rate"]) == pytest.approx(rate) for rate in rates)


def test_demo_lanczos_logs_report_progress_and_time_left_after_the_first_step(demo):
    pattern = re.compile(r"Lanczos step (\d+)/(\d+).*estimated time left")
    logs = demo.results / "logs"
    for step in demo.steps:
        jobs = [(logs / "lanczos" / "hessian" / "all" / f"step_{step}_draw_{draw}.log", demo.m) for draw in demo.draws]
        for log, m in [*jobs, (logs / "deflation_basis" / "hessian" / "all" / f"step_{step}.log", demo.m0)]:
            progress = [pattern.search(line) for line in log.read_text().splitlines()]
            progress = [(int(found.group(1)), int(found.group(2))) for found in progress if found]
            # The first step traces the operator: no estimate from it (hessflow.lanczos_job).
            assert progress == [(i, m) for i in range(2, m + 1)], log.name


def test_demo_writes_a_benchmark_tsv_for_every_job(demo):
    counts = job_stats(demo.output)
    counts.pop("all", None)
    assert counts, "no Job stats table in the demo's output"
    benchmarks = demo.results / "benchmarks"
    for rule, count in counts.items():
        # a rule without wildcards: benchmarks/<rule>.tsv; with: benchmarks/<rule>/[<operator>/<block>/]<step...>.tsv
        files = [benchmarks / f"{rule}.tsv"] if (benchmarks / f"{rule}.tsv").exists() else []
        files += sorted((benchmarks / rule).rglob("*.tsv"))
        assert len(files) == count, f"rule {rule}: {count} jobs, benchmark files {files}"
        for path in files:
            rows = read_tsv(path)
            assert len(rows) == 1 and float(rows[0]["s"]) >= 0, path


def test_demo_ran_one_lanczos_job_per_step_and_draw(demo):
    counts = job_stats(demo.output)
    assert counts["lanczos"] == len(demo.steps) * len(demo.draws)
    assert counts["train"] == 1
    assert "download_cifar10" not in counts  # digits need no download


def test_demo_leaves_no_lanczos_state_files(demo):
    assert list(demo.workdir.rglob(".state_*")) == []


def test_demo_leaves_no_temporary_files(demo):
    leftovers = [
        path for path in demo.workdir.rglob("*")
        if ".tmp" in path.name or ".part" in path.name
    ]
    assert leftovers == []


def test_lanczos_job_rerun_reproduces_the_tridiagonal_bit_for_bit(demo, tmp_path):
    # In a copy, so that the other tests see the demo as it was made.
    workdir = tmp_path / "demo"
    shutil.copytree(demo.workdir, workdir, symlinks=True)
    step, draw = demo.steps[len(demo.steps) // 2], demo.draws[-1]
    relative = Path("results", demo.config["run_name"], "lanczos", "hessian", "all", f"step_{step}")
    originals = {
        name: (workdir / relative / name).read_bytes()
        for name in (f"tridiag_{draw}.npy", f"lanczos_vec_{draw}.npy")
    }
    (workdir / relative / f"tridiag_{draw}.npy").unlink()
    (workdir / relative / f"provenance_{draw}.json").unlink()

    result = run_snakemake(workdir, DEMO_CONFIG, relative / f"tridiag_{draw}.npy", timeout=300)

    assert result.returncode == 0, tail(result.stdout)
    assert job_stats(result.stdout) == {"lanczos": 1}, "exactly the one Lanczos job reruns"
    for name, content in originals.items():
        assert (workdir / relative / name).read_bytes() == content, f"{name} differs after the rerun"
    assert load_json(workdir / relative / f"provenance_{draw}.json")["seed"] == [
        demo.config["seed"], step, draw]


def test_report_html_builds_offline_with_the_figure_captions(demo, tmp_path):
    report = tmp_path / "report.html"
    result = run_snakemake(demo.workdir, DEMO_CONFIG, "--report", report, timeout=300)
    assert result.returncode == 0, tail(result.stdout)
    html = report.read_text(errors="replace")
    assert "<html" in html.lower()
    assert "log scale" in html  # the density and trajectory captions
    assert "Hessian eigenvalue density at training step" in html
    # The report sorts labels as strings: zero-padded, they sort as numbers do.
    labels = {json.loads(f'"{found}"') for found in re.findall(r'"step":\s*"((?:[^"\\]|\\.)*)"', html)}
    assert {int(label) for label in labels} == set(demo.steps)
    assert [int(label) for label in sorted(labels)] == sorted(demo.steps)
    assert "summary.html" in html  # the summary table, which the report shows (a CSV it would not)


# ------------------------------------------------------------------------------------------------
# The CIFAR-10 configuration, dry run
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cifar_dry_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cifar_dry_run")
    result = run_snakemake(workdir, CIFAR_CONFIG, "--dry-run", "--printshellcmds", timeout=180)
    assert result.returncode == 0, tail(result.stdout)
    return yaml.safe_load(CIFAR_CONFIG.read_text()), result.stdout


def test_cifar10_dry_run_plans_one_lanczos_job_per_checkpoint_and_draw(cifar_dry_run):
    config, output = cifar_dry_run
    counts = job_stats(output)
    assert counts["lanczos"] == len(analysed_steps(config)) * config["lanczos"]["draws"]
    assert counts["train"] == 1
    assert counts["download_cifar10"] == 1
    assert counts["prepare_data"] == 1


@pytest.mark.parametrize("rule", ["train", "lanczos"])
def test_cifar10_dry_run_jobs_declare_the_configured_resources(cifar_dry_run, rule):
    config, output = cifar_dry_run
    expected = {key: str(value) for key, value in config["resources"][rule].items() if key != "threads"}
    blocks = [fields for name, fields in job_blocks(output) if name == rule]
    assert blocks, f"no {rule} job in the dry run"
    for fields in blocks:
        resources = parse_resources(fields["resources"])
        assert {key: resources.get(key) for key in expected} == expected, fields["resources"]
        # threads are the rule's `threads:` (a dry run prints them when above 1), not a resource
        assert fields.get("threads", "1") == str(config["resources"][rule]["threads"]), fields


# ------------------------------------------------------------------------------------------------
# Lint
# ------------------------------------------------------------------------------------------------
def test_snakemake_lint_is_clean(tmp_path):
    result = run_snakemake(tmp_path, DEMO_CONFIG, "--lint", timeout=180, cwd=ROOT)
    assert result.returncode == 0, tail(result.stdout)


# ------------------------------------------------------------------------------------------------
# CIFAR-10 download rule, against a local server
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served_archive(tmp_path_factory):
    """A generated CIFAR-10-format archive (8 records per batch file): (folder, arrays, sha256)."""
    folder = tmp_path_factory.mktemp("served")
    generated = write_cifar10_archive(folder / ARCHIVE_NAME, records_per_file=8, seed=0)
    return folder, generated, sha256_hex(folder / ARCHIVE_NAME)


def cifar_config(tmp_path, url, sha256, archive, **overrides):
    """The CIFAR-10 config file with the download pointed at ``url``, written into ``tmp_path``."""
    config = copy.deepcopy(yaml.safe_load(CIFAR_CONFIG.read_text()))
    config["data"]["cifar10"].update(url=url, sha256=sha256, archive=str(archive))
    for section, values in overrides.items():
        config[section].update(values)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, config


class DownloadRun:
    def __init__(self, result, archive, log, requests, sha256):
        self.result, self.archive, self.log, self.requests, self.sha256 = (
            result, archive, log, requests, sha256)


def run_download(tmp_path, served_archive, sha256):
    folder, _, _ = served_archive
    workdir = tmp_path / "work"
    workdir.mkdir()
    archive = tmp_path / "downloads" / ARCHIVE_NAME
    with serve_directory(folder) as server:
        configfile, config = cifar_config(tmp_path, f"{server.url}/{ARCHIVE_NAME}", sha256, archive)
        result = run_snakemake(workdir, configfile, archive, timeout=180)
        requests = list(server.requests)
    log = workdir / "results" / config["run_name"] / "logs" / "download_cifar10.log"
    return DownloadRun(result, archive, log, requests, sha256)


@pytest.fixture(scope="module")
def good_download(tmp_path_factory, served_archive):
    return run_download(tmp_path_factory.mktemp("download_ok"), served_archive, served_archive[2])


@pytest.fixture(scope="module")
def bad_download(tmp_path_factory, served_archive):
    wrong = hashlib.sha256(b"not the archive").hexdigest()
    return run_download(tmp_path_factory.mktemp("download_bad"), served_archive, wrong)


def test_download_rule_fetches_the_archive_with_the_expected_sha256(good_download, served_archive):
    assert good_download.result.returncode == 0, tail(good_download.result.stdout)
    assert sha256_hex(good_download.archive) == served_archive[2]
    assert good_download.archive.read_bytes() == (served_archive[0] / ARCHIVE_NAME).read_bytes()
    assert good_download.requests == [f"/{ARCHIVE_NAME}"]


def test_download_rule_leaves_only_the_archive(good_download):
    assert [p.name for p in good_download.archive.parent.iterdir()] == [ARCHIVE_NAME]


def test_download_rule_with_wrong_sha256_fails_and_logs_the_mismatch(bad_download, served_archive):
    assert bad_download.result.returncode != 0
    log = bad_download.log.read_text()
    assert "ChecksumError" in log
    assert bad_download.sha256 in log, "the log names the expected hash"
    assert served_archive[2] in log, "the log names the hash of what arrived"


def test_download_rule_with_wrong_sha256_leaves_no_file_behind(bad_download):
    folder = bad_download.archive.parent
    assert not bad_download.archive.exists()
    assert not folder.exists() or list(folder.iterdir()) == [], list(folder.iterdir())


def test_download_rule_does_not_retry_a_checksum_mismatch(bad_download):
    assert len(bad_download.requests) == 1


# ------------------------------------------------------------------------------------------------
# CIFAR-10 with ResNet-32, reduced: the whole workflow on 40 training images
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reduced_cifar(tmp_path_factory, served_archive):
    folder, generated, sha256 = served_archive
    tmp_path = tmp_path_factory.mktemp("cifar_reduced")
    workdir = tmp_path / "work"
    workdir.mkdir()
    with serve_directory(folder) as server:
        configfile, config = cifar_config(
            tmp_path, f"{server.url}/{ARCHIVE_NAME}", sha256, tmp_path / "downloads" / ARCHIVE_NAME,
            training={"steps": 4, "batch_size": 8, "checkpoint_steps": [4], "lr_boundaries": []},
            lanczos={"steps": 5, "draws": 1},
            hessian={"batch_size": 16, "max_examples": None},
            evaluation={"batch_size": 16},
            density={"grid_len": 1000},
            resources={"train": {"gpu": 0, "runtime": 60, "mem_mb": 4000},
                       "lanczos": {"gpu": 0, "runtime": 60, "mem_mb": 4000}},
        )
        result = run_snakemake(workdir, configfile, timeout=900)  # ~1 min on 2 idle cores
    assert result.returncode == 0, f"reduced CIFAR-10 workflow failed:\n{tail(result.stdout)}"
    return workdir / "results" / config["run_name"], config, generated


def test_reduced_cifar10_prepares_exactly_the_served_images(reduced_cifar):
    results, _, generated = reduced_cifar
    data = results / "data"
    for split, files in (("train", TRAIN_FILES), ("test", TEST_FILES)):
        np.testing.assert_array_equal(
            np.load(data / f"{split}_images.npy"), np.concatenate([generated[f][0] for f in files]))
        np.testing.assert_array_equal(
            np.load(data / f"{split}_labels.npy"), np.concatenate([generated[f][1] for f in files]))


def test_reduced_cifar10_hessian_is_over_all_resnet32_parameters(reduced_cifar):
    results, config, _ = reduced_cifar
    for step in analysed_steps(config):
        provenance = load_json(results / "lanczos" / "hessian" / "all" / f"step_{step}" / "provenance_0.json")
        assert provenance["dim"] == RESNET32_PARAMETERS
        assert provenance["num_examples"] == 5 * 8


def test_reduced_cifar10_tridiags_are_5_by_5(reduced_cifar):
    results, config, _ = reduced_cifar
    for step in analysed_steps(config):
        tridiag = np.load(results / "lanczos" / "hessian" / "all" / f"step_{step}" / "tridiag_0.npy")
        assert tridiag.shape == (5, 5)
        np.testing.assert_array_equal(tridiag, tridiag.T)
        assert np.isfinite(tridiag).all()


def test_reduced_cifar10_summary_has_a_row_per_checkpoint(reduced_cifar):
    results, _, _ = reduced_cifar
    rows = read_csv(results / "summary.csv")
    assert [int(row["step"]) for row in rows] == [4]
    assert all(int(row["dim"]) == RESNET32_PARAMETERS for row in rows)


@pytest.mark.parametrize("batch_norm, parameters", [("bn", 9_359_882), ("nobn", 9_354_378)])
def test_paper_scale_vgg_pair_dry_runs_over_the_cifar10_study_with_the_paper_codes_schedule(
        tmp_path, batch_norm, parameters):
    overlay = ROOT / "config" / f"cifar10_vgg_{batch_norm}.yaml"
    # --configfile a second time: the list after it (the study, then the pair's half) is the one used.
    result = run_snakemake(tmp_path, CIFAR_CONFIG, "--configfile", CIFAR_CONFIG, overlay, "--dry-run", timeout=180)
    assert result.returncode == 0, tail(result.stdout)
    counts = job_stats(result.stdout)
    assert counts["lanczos"] == 11 * 10 and counts["train"] == 1
    assert f"results/cifar10_vgg_{batch_norm}/checkpoints/step_150000.weights.h5" in result.stdout
    config = yaml.safe_load(overlay.read_text())
    assert config["training"]["lr_boundaries"] == [20000, 100000]
    assert config["training"]["weight_decay"] == 5.0e-5
    assert f"{parameters:,}" in overlay.read_text()  # the count its header states (tests/test_models.py checks it)
