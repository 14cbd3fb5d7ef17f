"""The TensorFlow boundary: what comes after the tridiagonals runs without TensorFlow.

Each TensorFlow-free module is imported in a fresh interpreter whose import system refuses
TensorFlow, Keras and Snakemake (and scikit-learn and h5py, which only the ``tensorflow`` extra
installs), then does one small real computation; the numbers are checked here against closed
forms. The base install (``pip install hessflow``: numpy, scipy, pandas, matplotlib) is then
enough for all of them. A module that merely *tries* such an import, inside ``try``, fails too:
where TensorFlow is installed, that import would load it.

Every module of the package is on one side of the boundary or the other, named below, so that a
new module is placed on purpose.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "hessflow"

BLOCKED = ("tensorflow", "keras", "snakemake", "sklearn", "h5py")

TENSORFLOW_FREE = (
    "lanczos", "density", "artifacts", "layout", "plots", "reproduce", "papercode", "export", "download",
    "sanity", "integrity", "eigenpairs", "deflation", "outliers", "uncertainty", "compare",
)
# May import TensorFlow or Keras (the `tensorflow` extra); some do so only inside functions.
TENSORFLOW_LAYER = (
    "batchnorm", "checkpoints", "data", "distribute", "evaluation", "factories", "gpu_lock", "hvp", "jobs",
    "kernels", "lanczos_job", "models", "noise", "objectives", "prepare", "schedule", "streaming", "training",
)

# Runs first in the child: a finder ahead of every other one that refuses the blocked packages
# and their submodules, and records each attempt (printed as JSON on the last line).
BLOCKER = textwrap.dedent(
    f"""
    import importlib.abc, json, sys

    BLOCKED = {BLOCKED!r}
    ATTEMPTS = []

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                ATTEMPTS.append(name)
                raise ImportError(f"{{name}} is blocked: the TensorFlow-free layer must not import it")
            return None

    sys.meta_path.insert(0, Blocker())
    """
)

# One computation per module; each child leaves its numbers in RESULT (JSON-serializable).
COMPUTATIONS = {
    # Lanczos on diag(1..6) for 6 steps spans the whole space: T's eigenvalues are A's.
    "lanczos": """
        import numpy as np
        from hessflow.lanczos import lanczos
        diagonal = np.arange(1.0, 7.0)
        run = lanczos(lambda v: diagonal * v, 6, 6, seed=(0, 1, 2))
        RESULT = {"eigenvalues": np.linalg.eigvalsh(run.tridiag).tolist(), "matvecs": run.num_matvecs}
    """,
    # T = [[2, 1], [1, 2]]: Ritz values 1 and 3, each of weight 1/2.
    "density": """
        import numpy as np
        from hessflow.density import density_from_tridiags, ritz, summarize
        tridiag = np.array([[2.0, 1.0], [1.0, 2.0]])
        grid, density = density_from_tridiags([tridiag], grid_len=2001)
        values, weights = ritz(tridiag)
        stats = summarize([values], [weights], dim=2)
        RESULT = {"values": values.tolist(), "weights": weights.tolist(),
                  "integral": float(np.sum(density) * (grid[1] - grid[0])),
                  "mean": float(np.sum(grid * density) * (grid[1] - grid[0])),
                  "lambda_max": stats["lambda_max"], "lambda_min": stats["lambda_min"],
                  "trace": stats["trace"]}
    """,
    "artifacts": """
        import hashlib, pathlib, tempfile
        from hessflow import artifacts
        root = pathlib.Path(tempfile.mkdtemp())
        artifacts.save_text(root / "a.txt", "hessflow\\n")
        rows = artifacts.write_manifest(root / "manifest.tsv", ["a.txt"], root)
        RESULT = {"rows": rows, "problems": artifacts.verify_manifest(root / "manifest.tsv", root),
                  "sha256": hashlib.sha256(b"hessflow\\n").hexdigest()}
    """,
    "layout": """
        from hessflow.layout import RunLayout
        run = RunLayout.for_run("demo")
        RESULT = {"checkpoint": run.checkpoint("{step}"), "state": run.lanczos_state(300, 1)}
    """,
    # A density figure saved as PNG: its header's width and height are figsize * dpi.
    "plots": """
        import pathlib, struct, tempfile
        import numpy as np
        from hessflow.plots import density_figure, save_figure
        grid = np.linspace(-1.0, 1.0, 101)
        figure = density_figure(grid, np.exp(-grid**2))
        width, height = figure.get_size_inches()
        path = save_figure(figure, pathlib.Path(tempfile.mkdtemp()) / "d.png", dpi=50)
        header = path.read_bytes()[:24]
        RESULT = {"signature": header[:8].hex(), "size": list(struct.unpack(">II", header[16:24])),
                  "expected": [round(width * 50), round(height * 50)]}
    """,
    # Two draws of 2 and 3 Lanczos steps: stacked and padded as the paper code's layout.
    "reproduce": """
        import numpy as np
        from hessflow.reproduce import aggregate
        t2 = np.array([[2.0, 1.0], [1.0, 2.0]])
        t3 = np.diag([1.0, 2.0, 4.0])
        stacked, values, weights = aggregate([t2, t3])
        RESULT = {"shape": list(stacked.shape), "values": np.nan_to_num(values, nan=-1.0).tolist(),
                  "weights": weights.tolist()}
    """,
    # A paper-code job folder: tridiag_1 (m, m, draws) with one unfinished draw, lanczos_vec_1 (n, m).
    "papercode": """
        import pathlib, tempfile
        import numpy as np
        from hessflow.papercode import load_paper_draws
        folder = pathlib.Path(tempfile.mkdtemp())
        buffer = np.zeros((2, 2, 3))
        buffer[:, :, 0] = [[2.0, 1.0], [1.0, 2.0]]
        buffer[:, :, 1] = [[5.0, 0.0], [0.0, 7.0]]
        np.save(folder / "tridiag_1.npy", buffer)
        np.save(folder / "lanczos_vec_1.npy", np.zeros((11, 2)))
        draws = load_paper_draws([folder])
        RESULT = {"tridiags": draws.tridiags.tolist(), "dim": draws.dim}
    """,
    # A run folder of one artifact and its manifest, exported as an archive.
    "export": """
        import json, pathlib, tarfile, tempfile
        from hessflow import artifacts
        from hessflow.export import export_run
        root = pathlib.Path(tempfile.mkdtemp()) / "demo"
        root.mkdir()
        artifacts.save_text(root / "a.txt", "hessflow\\n")
        artifacts.write_manifest(root / "manifest.tsv", ["a.txt"], root)
        export_run(root.parent / "demo.tar.gz", root, [root / "a.txt"], "demo", left_out=["checkpoints"])
        with tarfile.open(root.parent / "demo.tar.gz") as tar:
            names = sorted(tar.getnames())
            export = json.load(tar.extractfile("demo/export.json"))
        RESULT = {"names": names, "export": export}
    """,
    # A file:// download, verified by its sha256.
    "download": """
        import hashlib, pathlib, tempfile
        from hessflow.download import download
        folder = pathlib.Path(tempfile.mkdtemp())
        (folder / "source.bin").write_bytes(b"\\x00\\x01hessflow" * 1000)
        digest = hashlib.sha256((folder / "source.bin").read_bytes()).hexdigest()
        target = download((folder / "source.bin").as_uri(), folder / "out" / "copy.bin", digest, log=lambda _: None)
        RESULT = {"same": target.read_bytes() == (folder / "source.bin").read_bytes(),
                  "files": sorted(p.name for p in target.parent.iterdir())}
    """,
    # .inf and .nan found by key; a loss 2.3 -> 24 has risen more than tenfold, 2.3 -> 22 not.
    "sanity": """
        from hessflow.sanity import diverged, non_finite_numbers
        config = {"density": {"sigma_squared": float("inf")}, "model": {"options": {"hidden": [4, float("nan")]}},
                  "seed": 0, "lanczos": {"save_vectors": True}}
        RESULT = {"keys": [key for key, _ in non_finite_numbers(config)],
                  "diverged": [diverged([2.3, 24.0]), diverged([2.3, 22.0]), diverged([2.3, float("nan")])]}
    """,
    # A tridiagonal with its provenance's sha256 loads; one byte changed, it is refused.
    "integrity": """
        import pathlib, tempfile
        import numpy as np
        from hessflow import artifacts, integrity
        folder = pathlib.Path(tempfile.mkdtemp())
        tridiag = artifacts.save_npy(folder / "tridiag_0.npy", np.array([[2.0, 1.0], [1.0, 2.0]]))
        record = {integrity.OUTPUTS_SHA256: integrity.outputs_sha256({"tridiag": tridiag})}
        artifacts.save_json(folder / "provenance_0.json", record)
        loaded = integrity.load_tridiag(tridiag, folder / "provenance_0.json", 0).tolist()
        tridiag.write_bytes(tridiag.read_bytes()[:-1] + b"\x01")
        try:
            integrity.load_tridiag(tridiag, folder / "provenance_0.json", 0)
            refused = ""
        except integrity.IntegrityError as error:
            refused = str(error)
        RESULT = {"loaded": loaded, "refused": "changed after its Lanczos job wrote it" in refused}
    """,
    # diag(1..6): 6 Lanczos steps span R^6, so the top Ritz pairs are exact (6 and 5, e_6 and e_5).
    "eigenpairs": """
        import numpy as np
        from hessflow.eigenpairs import converged_top_eigenpairs, residual_norms, top_ritz_pairs
        from hessflow.lanczos import lanczos
        diagonal = np.arange(1.0, 7.0)
        run = lanczos(np.diag(diagonal), num_steps=6, seed=3)
        pairs = top_ritz_pairs(run.tridiag, run.vectors, 2, next_beta=run.residual_norm)
        converged = converged_top_eigenpairs(np.diag(diagonal), 2, seed=0)
        RESULT = {"values": pairs.values.tolist(), "overlaps": np.abs(pairs.vectors[4:]).tolist(),
                  "residuals": residual_norms(np.diag(diagonal), pairs.values, pairs.vectors).tolist(),
                  "converged": converged.values.tolist()}
    """,
    # diag(1..6) deflated by e_6: 5 steps span the complement, so the measure has nodes 1..6, and 6
    # carries exactly 1/6.
    "deflation": """
        import numpy as np
        from hessflow.deflation import DeflatedOperator, deflated_ritz_measure, deflated_start_vector
        from hessflow.lanczos import lanczos
        a, y = np.diag(np.arange(1.0, 7.0)), np.eye(6)[:, 5:]
        run = lanczos(DeflatedOperator(a, y), num_steps=5, start=deflated_start_vector(6, 0, y))
        nodes, weights = deflated_ritz_measure(run.tridiag, [6.0], 6)
        RESULT = {"nodes": nodes.tolist(), "top_weight": float(weights[-1]), "total": float(weights.sum()),
                  "product": (DeflatedOperator(a, y) @ np.ones(6)).tolist()}
    """,
    # A bulk of 40 eigenvalues in [0, 1] and one at 10: one outlier, in every draw; a gradient
    # e_0 + e_40 has half its squared norm along the outlier's eigenvector e_40.
    "outliers": """
        import numpy as np
        from hessflow.lanczos import lanczos
        from hessflow.outliers import find_outliers_in_tridiags, gradient_fraction_in_span
        a = np.diag(np.concatenate([np.linspace(0.0, 1.0, 40), [10.0]]))
        found = find_outliers_in_tridiags([lanczos(a, num_steps=20, seed=d).tridiag for d in range(3)], 41)
        gradient = np.zeros(41)
        gradient[[0, 40]] = 1.0
        RESULT = {"values": found.values.tolist(), "count": found.count,
                  "fraction": gradient_fraction_in_span(gradient, np.eye(41)[:, 40:])}
    """,
    # Two draws of traces 2·2 and 2·3 (n = 2): mean 5, standard error 1, so 5 ± t_{1, 0.975}.
    "uncertainty": """
        import numpy as np
        from hessflow.uncertainty import statistic_intervals
        values, weights = np.array([[1.0, 3.0], [2.0, 4.0]]), np.full((2, 2), 0.5)
        RESULT = {"trace": statistic_intervals(values, weights, 2)["trace"]}
    """,
    # Two one-step run folders: the table reads back what was written, the figure has one panel.
    "compare": """
        import json, pathlib, tempfile
        import numpy as np
        from hessflow.compare import comparison_figure, comparison_table
        from hessflow.layout import RunLayout
        base = pathlib.Path(tempfile.mkdtemp())
        runs = {}
        for index, name in enumerate(("a", "b")):
            layout = RunLayout((base / name).as_posix())
            files = layout.spectrum_files(0)
            pathlib.Path(files["density"]).parent.mkdir(parents=True)
            pathlib.Path(layout.config).write_text(json.dumps({"training": {"checkpoint_steps": [0]}}))
            grid = np.linspace(-1.0, 2.0 + index, 11)
            np.save(files["density"], np.stack([grid, np.ones_like(grid)]))
            stats = {"lambda_max": 2.0 + index, "lambda_min": -1.0, "trace": 3.0, "negative_mass": 0.1}
            pathlib.Path(files["stats"]).write_text(json.dumps(stats))
            pathlib.Path(layout.summary).write_text("operator,block,step,test_accuracy\\nhessian,all,0,0.5\\n")
            runs[name] = base / name
        table = comparison_table(runs)
        panels = [ax.get_label() for ax in comparison_figure(runs).axes if ax.get_label().startswith("density_step_")]
        RESULT = {"lambda_max": table["lambda_max"].tolist(), "runs": table["run"].tolist(), "panels": panels}
    """,
    "hessflow": """
        import hessflow
        RESULT = {"version": hessflow.__version__}
    """,
}


def run_blocked(code: str) -> dict:
    """Run ``code`` with the blocker in a fresh interpreter: {"result": RESULT, "attempts": [...]}."""
    script = BLOCKER + textwrap.dedent(code) + "\nprint(json.dumps({'result': RESULT, 'attempts': ATTEMPTS}))\n"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module", params=sorted(COMPUTATIONS))
def blocked_run(request):
    return request.param, run_blocked(COMPUTATIONS[request.param])


def test_every_module_is_on_one_side_of_the_boundary():
    modules = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__"}
    assert not set(TENSORFLOW_FREE) & set(TENSORFLOW_LAYER)
    placed = set(TENSORFLOW_FREE + TENSORFLOW_LAYER)
    assert modules - placed == set(), "new modules: add each to TENSORFLOW_FREE or TENSORFLOW_LAYER"
    assert placed - modules == set(), "modules that are gone"


def test_every_tensorflow_free_module_and_the_package_have_a_computation():
    assert set(COMPUTATIONS) == {*TENSORFLOW_FREE, "hessflow"}


def test_module_imports_nothing_blocked(blocked_run):
    _, outcome = blocked_run
    assert outcome["attempts"] == []


def test_module_computes_the_independent_numbers(blocked_run):
    module, outcome = blocked_run
    CHECKS[module](outcome["result"])


def test_blocker_refuses_tensorflow_keras_and_snakemake_and_their_submodules():
    outcome = run_blocked("""
        refused = []
        for name in ("tensorflow", "keras.losses", "snakemake.utils", "sklearn.datasets"):
            try:
                __import__(name)
            except ImportError:
                refused.append(name)
        RESULT = refused
    """)
    assert outcome["result"] == ["tensorflow", "keras.losses", "snakemake.utils", "sklearn.datasets"]


def pyproject_version() -> str:
    try:
        import tomllib
    except ImportError:  # Python 3.10: the test extra installs tomli there
        import tomli as tomllib
    with open(ROOT / "pyproject.toml", "rb") as handle:
        return tomllib.load(handle)["project"]["version"]


# ------------------------------------------------------------------------------------------------
# what each computation must give
# ------------------------------------------------------------------------------------------------
def check_lanczos(result):
    np.testing.assert_allclose(result["eigenvalues"], np.arange(1.0, 7.0), rtol=0, atol=1e-12)
    assert result["matvecs"] == 6


def check_density(result):
    np.testing.assert_allclose(result["values"], [1.0, 3.0], atol=1e-14)
    np.testing.assert_allclose(result["weights"], [0.5, 0.5], atol=1e-14)
    assert result["integral"] == pytest.approx(1.0, abs=1e-12)
    assert result["mean"] == pytest.approx(2.0, abs=1e-6)  # the mixture's mean: 0.5·1 + 0.5·3
    assert result["lambda_max"] == pytest.approx(3.0) and result["lambda_min"] == pytest.approx(1.0)
    assert result["trace"] == pytest.approx(2 * 2.0)  # n · Σ w λ = 2 · 2 = tr(T)


def check_artifacts(result):
    assert result["rows"] == [{"path": "a.txt", "size_bytes": 9, "sha256": result["sha256"]}]
    assert result["problems"] == []


def check_layout(result):
    assert result["checkpoint"] == "results/demo/checkpoints/step_{step}.weights.h5"
    assert result["state"] == "results/demo/lanczos/hessian/all/step_300/.state_1.npz"


def check_plots(result):
    assert result["signature"] == b"\x89PNG\r\n\x1a\n".hex()
    assert result["size"] == result["expected"]


def check_reproduce(result):
    assert result["shape"] == [2, 3, 3]
    np.testing.assert_allclose(result["values"], [[1.0, 3.0, -1.0], [1.0, 2.0, 4.0]], atol=1e-14)
    np.testing.assert_allclose(result["weights"], [[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]], atol=1e-14)


def check_papercode(result):
    assert result["tridiags"] == [[[2.0, 1.0], [1.0, 2.0]], [[5.0, 0.0], [0.0, 7.0]]]
    assert result["dim"] == 11


def check_export(result):
    assert result["names"] == ["demo/a.txt", "demo/export.json", "demo/manifest.tsv", "demo/software_versions.txt"]
    version = pyproject_version()
    assert result["export"] == {"run_name": "demo", "hessflow_version": version, "left_out": ["checkpoints"]}


def check_download(result):
    assert result["same"] is True
    assert result["files"] == ["copy.bin"]  # no temporary file left beside it


def check_eigenpairs(result):
    np.testing.assert_allclose(result["values"], [6.0, 5.0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(result["overlaps"], [[0.0, 1.0], [1.0, 0.0]], rtol=0, atol=1e-10)
    np.testing.assert_allclose(result["residuals"], 0.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result["converged"], [6.0, 5.0], rtol=0, atol=1e-12)


def check_deflation(result):
    np.testing.assert_allclose(result["nodes"], np.arange(1.0, 7.0), rtol=0, atol=1e-10)
    assert result["top_weight"] == pytest.approx(1 / 6, abs=1e-15)
    assert result["total"] == pytest.approx(1.0, abs=1e-14)
    np.testing.assert_allclose(result["product"], [1.0, 2.0, 3.0, 4.0, 5.0, 0.0], rtol=0, atol=1e-15)


def check_outliers(result):
    assert result["count"] == 1
    np.testing.assert_allclose(result["values"], [10.0], rtol=1e-10)
    assert result["fraction"] == pytest.approx(0.5, abs=1e-15)


def check_uncertainty(result):
    half = 12.706204736174698  # Student t, 1 degree of freedom, 0.975 (tables)
    np.testing.assert_allclose(result["trace"], [5.0 - half, 5.0 + half], rtol=1e-12)


def check_compare(result):
    assert result == {"lambda_max": [2.0, 3.0], "runs": ["a", "b"], "panels": ["density_step_0"]}


def check_hessflow(result):
    assert result["version"] == pyproject_version()
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", result["version"])


def check_sanity(result):
    assert result == {"keys": ["density.sigma_squared", "model.options.hidden[1]"],
                      "diverged": [True, False, True]}


def check_integrity(result):
    assert result == {"loaded": [[2.0, 1.0], [1.0, 2.0]], "refused": True}


CHECKS = {name.removeprefix("check_"): check for name, check in globals().items() if name.startswith("check_")}


def test_every_computation_has_a_check():
    assert set(CHECKS) == set(COMPUTATIONS)
