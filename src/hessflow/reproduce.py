"""Rebuild a run's results from its tridiagonals alone, after verifying every artifact.

Everything after the Lanczos jobs -- aggregation, densities, statistics, the summary table and the
figures -- is a function of the per-draw tridiagonals and three small JSON files: the provenance
of draw 0 (the operator's dimension, the loss and gradient norm at the checkpoint), the
evaluation (accuracies) and the run's resolved config (density parameters, steps, draws). This
module holds that function. The workflow's rules (``scripts/aggregate.py``, ``density.py``,
``summarize.py``, ``render_*.py``) call the same functions, so a rebuild and the workflow cannot
drift apart.

Command line (also installed as ``hessflow-reproduce``)::

    python -m hessflow.reproduce results/demo            [--out DIR] [--strict]
    python -m hessflow.reproduce results/demo.tar.gz     [--out DIR] [--strict]

1. Verifies every file ``manifest.tsv`` lists (size and sha256). A missing or changed file is
   named, and nothing is rebuilt: the command exits 1 listing the problems. A file the export
   left out on purpose (listed in the archive's ``export.json``) is reported as not shipped; the
   rebuild does not need it.
2. Rebuilds, into ``--out`` (default ``reproduced/{run_name}``): ``spectrum/step_{s}/``
   (``tridiags.npy``, ``ritz_values.npy``, ``ritz_weights.npy``, ``density.npy``,
   ``stats.json``), ``summary.csv`` and ``figures/`` (``density_step_{s}.png``,
   ``trajectory.png``).
3. Compares every rebuilt file with the manifest's sha256 and says which are identical; with
   ``--strict`` a difference exits 3.

Imports numpy, scipy, pandas and matplotlib only (the base install): never TensorFlow.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from hessflow import artifacts, integrity
from hessflow.density import density_from_ritz, ritz, summarize
from hessflow.layout import CONFIG_FILE, EXPORT_FILE, MANIFEST_FILE, RunLayout
from hessflow.plots import density_figure, save_figure, trajectory_figure
from hessflow.sanity import diverged

__all__ = [
    "CONFIG_FILE",
    "EXPORT_FILE",
    "FIGURE_DPI",
    "SUMMARY_SPECTRUM_COLUMNS",
    "Verification",
    "aggregate",
    "analysed_steps",
    "density_and_stats",
    "density_step_figure",
    "extract_archive",
    "main",
    "rebuild",
    "required_inputs",
    "summary_row",
    "summary_table",
    "trajectory_run_figure",
    "unpad_ritz",
    "verify_run",
]

#: Paths relative to a run folder (``CONFIG_FILE``, ``EXPORT_FILE`` too come from hessflow.layout).
RELATIVE = RunLayout()
#: Resolution of the figures (the render rules' ``dpi`` param; the tests check they agree).
FIGURE_DPI = 150

#: Spectrum statistics copied into summary.csv, in this order.
SUMMARY_SPECTRUM_COLUMNS = (
    "lambda_max",
    "lambda_min",
    "negative_mass",
    "positive_mass",
    "trace",
    "mean",
    "std",
    "negative_cutoff",
)


# ------------------------------------------------------------------------------------------------
# the computations (shared with the workflow's scripts)
# ------------------------------------------------------------------------------------------------
def aggregate(tridiags: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One checkpoint's draws -> ``(tridiags, ritz_values, ritz_weights)``.

    ``tridiags``: the per-draw (m_i, m_i) tridiagonals, in draw order. Returns the
    (draws, m, m) stack (the paper code's layout; a draw that stopped early is zero-padded) and
    the (draws, m) Gauss nodes (ascending, NaN-padded) and weights (zero-padded).
    """
    if len(tridiags) == 0:
        raise ValueError("aggregate: no tridiagonals")
    m = max(t.shape[0] for t in tridiags)
    stacked = np.zeros((len(tridiags), m, m))
    values = np.full((len(tridiags), m), np.nan)
    weights = np.zeros((len(tridiags), m))
    for draw, tridiag in enumerate(tridiags):
        size = tridiag.shape[0]
        stacked[draw, :size, :size] = tridiag
        values[draw, :size], weights[draw, :size] = ritz(tridiag)
    return stacked, values, weights


def unpad_ritz(all_values: np.ndarray, all_weights: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Drop the NaN padding of :func:`aggregate`'s Ritz arrays: ragged per-draw lists."""
    values = [v[~np.isnan(v)] for v in all_values]
    weights = [w[~np.isnan(v)] for v, w in zip(all_values, all_weights)]
    return values, weights


def density_and_stats(
    all_values: np.ndarray, all_weights: np.ndarray, dim: int, density_config: Mapping
) -> tuple[np.ndarray, dict]:
    """``density.npy`` (2 x grid_len: grid, density) and ``stats.json`` of one checkpoint.

    ``density_config``: the config's ``density`` section (``sigma_squared``, ``grid_len``,
    ``grid_expand``, ``negative_threshold``); ``dim``: the operator's dimension (provenance).
    """
    values, weights = unpad_ritz(all_values, all_weights)
    grid, density = density_from_ritz(
        values,
        weights,
        sigma_squared=density_config["sigma_squared"],
        grid_len=density_config["grid_len"],
        grid_expand=density_config["grid_expand"],
    )
    stats = summarize(values, weights, dim, negative_threshold=density_config["negative_threshold"])
    stats["dim"] = dim
    bad = [key for key, value in stats.items() if not math.isfinite(value)]
    if bad or not np.all(np.isfinite(grid)) or not np.all(np.isfinite(density)):
        # Never a finished artifact that holds NaN or Inf.
        raise ValueError(
            f"non-finite {', '.join(bad) or 'density'} (density config {dict(density_config)}); "
            "check that every density.* value is finite"
        )
    return np.stack([grid, density]), stats


def summary_row(step: int, stats: Mapping, evaluation: Mapping, provenance: Mapping) -> dict:
    """One row of ``summary.csv``: the spectrum statistics, loss and gradient, accuracies
    (NaN where the task is not classification)."""
    return {
        "step": step,
        **{key: stats[key] for key in SUMMARY_SPECTRUM_COLUMNS},
        "num_draws": stats["num_draws"],
        "lanczos_steps": stats["num_steps"],
        "dim": stats["dim"],
        "hessian_loss": provenance["loss"],
        "gradient_norm": provenance["gradient_norm"],
        "train_loss": evaluation["train_loss"],
        "train_accuracy": evaluation.get("train_accuracy", math.nan),
        "test_loss": evaluation["test_loss"],
        "test_accuracy": evaluation.get("test_accuracy", math.nan),
    }


def summary_table(rows: Sequence[Mapping]) -> pd.DataFrame:
    """The rows of :func:`summary_row` (in step order) as the ``summary.csv`` table
    (``to_csv(index=False)``), with a last column ``diverged``.

    ``diverged`` (bool) flags a checkpoint whose train loss is not finite or above
    :data:`hessflow.sanity.DIVERGENCE_FACTOR` (10) times the train loss of the first row (the
    initialization, step 0, unless ``spectrum.steps`` leaves it out): its spectrum describes a
    diverged model (:func:`hessflow.sanity.diverged`, the rule of the train log's warning too).
    """
    table = pd.DataFrame(list(rows))
    if len(table):
        start = table["train_loss"].iloc[0]
        table["diverged"] = [diverged([loss], start=start) for loss in table["train_loss"]]
    return table


def density_step_figure(density_array: np.ndarray, stats: Mapping, step: int):
    """The figure ``figures/density_step_{step}.png`` from ``density.npy`` and ``stats.json``."""
    grid, density = density_array
    return density_figure(grid, density, title=f"Hessian eigenvalue density, step {step}", stats=stats)


def trajectory_run_figure(steps: Sequence[int], density_arrays: Sequence[np.ndarray], summary_csv: str | os.PathLike):
    """The figure ``figures/trajectory.png``: every step's density, and the summary over training.

    ``summary_csv`` is read back from its file, as the render rule does, so that both parse the
    same text.
    """
    densities = [(step, *array) for step, array in zip(steps, density_arrays)]
    return trajectory_figure(densities, pd.read_csv(summary_csv))


def analysed_steps(config: Mapping) -> list[int]:
    """The checkpoint steps a run analyses: ``spectrum.steps``, or all of ``training.checkpoint_steps``."""
    steps = config.get("spectrum", {}).get("steps")
    return sorted(steps if steps is not None else config["training"]["checkpoint_steps"])


# ------------------------------------------------------------------------------------------------
# a run folder: what the rebuild reads, verification, rebuild
# ------------------------------------------------------------------------------------------------
def required_inputs(config: Mapping) -> list[str]:
    """Paths (relative to the run folder) a rebuild reads; each must be listed in the manifest."""
    paths = [CONFIG_FILE]
    for step in analysed_steps(config):
        paths += [RELATIVE.tridiag(step, draw) for draw in range(config["lanczos"]["draws"])]
        # Every draw's provenance: the sha256 each tridiagonal is verified against.
        paths += [RELATIVE.provenance(step, draw) for draw in range(config["lanczos"]["draws"])]
        paths.append(RELATIVE.evaluation(step))
    return paths


def rebuilt_outputs(config: Mapping) -> list[str]:
    """Paths (relative to the run folder) a rebuild writes."""
    paths = []
    for step in analysed_steps(config):
        paths += RELATIVE.spectrum_files(step).values()
        paths.append(RELATIVE.density_figure(step))
    return paths + [RELATIVE.summary, RELATIVE.trajectory_figure]


@dataclass
class Verification:
    """The outcome of :func:`verify_run`."""

    root: Path
    problems: list[str] = field(default_factory=list)  # each names a file; non-empty: do not rebuild
    not_shipped: list[str] = field(default_factory=list)  # left out by the export on purpose
    verified: int = 0  # files whose size and sha256 match the manifest
    config: dict | None = None  # the resolved config, once verified

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_run(root: str | os.PathLike) -> Verification:
    """Check a run folder against its ``manifest.tsv``; read its (verified) resolved config.

    Problems: a manifest that is missing or malformed; every listed file that is missing (unless
    the export left it out, see ``export.json``), of another size, or of another sha256; a file
    the rebuild needs that the manifest does not list (it could not be checked) or that was not
    shipped.
    """
    root = Path(root)
    result = Verification(root=root)
    manifest = root / MANIFEST_FILE
    if not manifest.is_file():
        result.problems.append(f"missing: {MANIFEST_FILE} (in {root})")
        return result
    try:
        rows = artifacts.read_manifest(manifest)
    except ValueError as error:
        result.problems.append(str(error))
        return result
    listed = {row["path"] for row in rows}
    left_out = set()
    if (root / EXPORT_FILE).is_file():
        left_out = set(json.loads((root / EXPORT_FILE).read_text(encoding="utf-8")).get("left_out", []))
    for problem in artifacts.verify_manifest(manifest, root):
        path = problem.split(": ", 1)[1]
        if problem.startswith("missing: ") and path in left_out:
            result.not_shipped.append(path)
        else:
            result.problems.append(problem)
    result.verified = len(listed) - len(result.problems) - len(result.not_shipped)
    if CONFIG_FILE not in listed:
        result.problems.append(f"not in manifest: {CONFIG_FILE} (the resolved config; a run made before it existed?)")
    if any(_names(problem, CONFIG_FILE) for problem in result.problems):
        return result  # nothing is read from an unverified config
    config = json.loads((root / CONFIG_FILE).read_text(encoding="utf-8"))
    for path in required_inputs(config):
        if path not in listed:
            result.problems.append(f"not in manifest: {path} (needed to rebuild)")
        elif path in result.not_shipped:
            result.problems.append(f"not shipped: {path} (needed to rebuild)")
    # Each tridiagonal against its Lanczos job's own record too (hessflow.integrity): a manifest
    # rewritten after a tridiagonal changed cannot certify it.
    for step in analysed_steps(config):
        for draw in range(config["lanczos"]["draws"]):
            paths = (RELATIVE.tridiag(step, draw), RELATIVE.provenance(step, draw))
            if any(_names(problem, path) for problem in result.problems for path in paths):
                continue  # already named
            try:
                integrity.load_tridiag(root / paths[0], root / paths[1], draw)
            except integrity.IntegrityError as error:
                result.problems.append(f"refused: {paths[0]} ({error})")
    result.config = config
    return result


def _names(problem: str, path: str) -> bool:
    """Whether a problem line (``"kind: path"`` or ``"kind: path (detail)"``) is about ``path``."""
    named = problem.split(": ", 1)[1] if ": " in problem else ""
    return named == path or named.startswith(path + " (")


def _load_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def rebuild(root: str | os.PathLike, out: str | os.PathLike, config: Mapping) -> list[str]:
    """Rebuild aggregation, densities, statistics, summary and figures of ``root`` into ``out``.

    Reads only :func:`required_inputs`; call :func:`verify_run` first. Returns the relative
    paths written (:func:`rebuilt_outputs`).
    """
    source, target = RunLayout(Path(root).as_posix()), RunLayout(Path(out).as_posix())
    steps = analysed_steps(config)
    draws = range(config["lanczos"]["draws"])
    rows, density_arrays = [], []
    for step in steps:
        files = target.spectrum_files(step)
        Path(files["tridiags"]).parent.mkdir(parents=True, exist_ok=True)
        stacked, values, weights = aggregate(integrity.load_tridiags(
            [source.tridiag(step, draw) for draw in draws], [source.provenance(step, draw) for draw in draws]))
        artifacts.save_npy(files["tridiags"], stacked)
        artifacts.save_npy(files["ritz_values"], values)
        artifacts.save_npy(files["ritz_weights"], weights)
        provenance = _load_json(Path(source.provenance(step, 0)))
        density_array, stats = density_and_stats(values, weights, provenance["dim"], config["density"])
        artifacts.save_npy(files["density"], density_array)
        artifacts.save_json(files["stats"], stats)
        Path(target.density_figure(step)).parent.mkdir(parents=True, exist_ok=True)
        save_figure(density_step_figure(density_array, stats, step), target.density_figure(step), dpi=FIGURE_DPI)
        rows.append(summary_row(step, stats, _load_json(Path(source.evaluation(step))), provenance))
        density_arrays.append(density_array)
    artifacts.save_text(target.summary, summary_table(rows).to_csv(index=False))
    save_figure(trajectory_run_figure(steps, density_arrays, target.summary), target.trajectory_figure, dpi=FIGURE_DPI)
    return rebuilt_outputs(config)


def compare_with_manifest(
    root: str | os.PathLike, out: str | os.PathLike, written: Sequence[str]
) -> tuple[list[str], list[str]]:
    """``(identical, different)``: rebuilt files whose sha256 equals / differs from the manifest's."""
    recorded = {row["path"]: row["sha256"] for row in artifacts.read_manifest(Path(root) / MANIFEST_FILE)}
    identical, different = [], []
    for path in written:
        same = recorded.get(path) == artifacts.sha256_file(Path(out) / path)
        (identical if same else different).append(path)
    return identical, different


# ------------------------------------------------------------------------------------------------
# archives and the command line
# ------------------------------------------------------------------------------------------------
def extract_archive(archive: str | os.PathLike, destination: str | os.PathLike) -> Path:
    """Extract an export archive (``{run_name}.tar.gz``) safely; return its run folder.

    Members must be regular files or folders inside one top-level folder (no links, no absolute
    paths, no ``..``).

    Raises:
        ValueError: an unsafe member, not one top-level folder, or an archive that is truncated
            or corrupt (named, with what to do); what was extracted before is left in
            ``destination`` (a scratch folder: :func:`main` removes it).
    """
    try:
        return _extract_archive(archive, Path(destination))
    except (tarfile.ReadError, tarfile.CompressionError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        # Where the damage is decides which of these a truncated or corrupt .tar.gz raises.
        detail = " ".join(str(error).split()) or type(error).__name__  # tarfile's can span lines
        raise ValueError(
            f"{archive} is not a readable export archive ({detail}): it is truncated or corrupt; copy it "
            "again, or make it again with `snakemake export`"
        ) from None


def _extract_archive(archive: str | os.PathLike, destination: Path) -> Path:
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        tops = {Path(member.name).parts[0] for member in members if member.name not in ("", ".")}
        for member in members:
            parts = Path(member.name).parts
            if member.name.startswith("/") or ".." in parts or not (member.isfile() or member.isdir()):
                raise ValueError(f"{archive}: refusing archive member {member.name!r}")
        if len(tops) != 1:
            raise ValueError(f"{archive}: expected one top-level folder (the run), found {sorted(tops)}")
        try:
            tar.extractall(destination, filter="data")
        except TypeError:  # Python without extraction filters; members were checked above
            tar.extractall(destination)
    return destination / tops.pop()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hessflow-reproduce",
        description="Verify a hessflow run against its manifest.tsv and rebuild its aggregation, densities, "
        "statistics, summary and figures from the tridiagonals alone (no TensorFlow).",
    )
    parser.add_argument(
        "run", help="a run folder (results/{run_name}) or an export archive (results/{run_name}.tar.gz)"
    )
    parser.add_argument("--out", help="where to rebuild (default: reproduced/{run_name})")
    parser.add_argument("--strict", action="store_true", help="exit 3 if a rebuilt file differs from the original")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    source = Path(args.run)
    if not source.exists():
        print(f"hessflow-reproduce: {source} does not exist", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="hessflow-reproduce-") as scratch:
        try:
            root = source if source.is_dir() else extract_archive(source, scratch)
        except ValueError as error:  # names the archive and what to do; one line, no traceback
            print(f"hessflow-reproduce: {error}", file=sys.stderr)
            return 1
        except (tarfile.TarError, OSError) as error:
            print(f"hessflow-reproduce: cannot read {source}: {' '.join(str(error).split())}", file=sys.stderr)
            return 1
        verification = verify_run(root)
        if verification.not_shipped:
            print(f"{len(verification.not_shipped)} files not shipped "
                  f"(left out by the export, listed in {EXPORT_FILE}); the rebuild does not need them")
        if not verification.ok:
            print(f"hessflow-reproduce: {source}: {len(verification.problems)} problem(s); nothing rebuilt:",
                  file=sys.stderr)
            for problem in verification.problems:
                print(f"  {problem}", file=sys.stderr)
            return 1
        config = verification.config
        print(f"verified {verification.verified} artifacts of run {config['run_name']!r} against manifest.tsv")
        out = Path(args.out) if args.out else Path("reproduced") / config["run_name"]
        written = rebuild(root, out, config)
        identical, different = compare_with_manifest(root, out, written)
        print(f"rebuilt {len(written)} files in {out}: {len(identical)} identical to the originals, "
              f"{len(different)} different")
        for path in different:
            print(f"  differs: {path}")
    return 3 if args.strict and different else 0


if __name__ == "__main__":
    sys.exit(main())
