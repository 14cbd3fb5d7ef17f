"""Rebuild a run's results from its tridiagonals alone, after verifying every artifact.

Everything after the Lanczos jobs -- aggregation, densities, statistics, the summary table and the
figures -- is a function of the per-draw tridiagonals and three small JSON files: the provenance
of draw 0 (the operator's dimension, the loss and gradient norm at the checkpoint), the
evaluation (accuracies) and the run's resolved config (density parameters, steps, draws, and the
curvatures: operators and blocks, :func:`hessflow.layout.curvatures`). This
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
2. Rebuilds, into ``--out`` (default ``reproduced/{run_name}``), for every curvature (operator
   ``{o}``, block ``{b}``) and step: ``spectrum/{o}/{b}/step_{s}/`` (``tridiags.npy``,
   ``ritz_values.npy``, ``ritz_weights.npy``, ``density.npy``, ``stats.json``) and
   ``figures/{o}/{b}/`` (``density_step_{s}.png``, ``trajectory.png``); ``summary.csv``; and,
   when the run has several curvatures, ``figures/curvatures_step_{s}.png``.
3. Compares every rebuilt file with the manifest's sha256 and says which are identical; with
   ``--strict`` a difference exits 3.

Imports numpy, scipy, pandas and matplotlib only (the base install): never TensorFlow.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
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

from hessflow import artifacts, integrity, uncertainty
from hessflow.deflation import deflated_ritz_measure
from hessflow.density import density_from_ritz, ritz, summarize
from hessflow.layout import (
    BASIS_DRAW,
    CONFIG_FILE,
    DEFAULT_BLOCK,
    DEFAULT_OPERATOR,
    EXPORT_FILE,
    MANIFEST_FILE,
    RunLayout,
    curvatures,
)
from hessflow.outliers import find_outliers
from hessflow.plots import OPERATOR_NAMES, curvatures_figure, density_figure, save_figure, trajectory_figure
from hessflow.sanity import diverged

__all__ = [
    "CONFIG_FILE",
    "EXPORT_FILE",
    "FIGURE_DPI",
    "SUMMARY_SPECTRUM_COLUMNS",
    "Verification",
    "aggregate",
    "analysed_steps",
    "curvatures_run_figure",
    "density_and_stats",
    "density_step_figure",
    "extract_archive",
    "main",
    "rebuild",
    "required_inputs",
    "summary_html",
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

#: The fixed k of the gradient's share of the top-k Ritz vectors' span (``spectrum.gradient_k``).
DEFAULT_GRADIENT_K = 10

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
#: Statistics whose interval over draws summary.csv has, as ``<name>_lo`` and ``<name>_hi``.
SUMMARY_INTERVAL_COLUMNS = ("lambda_max", "lambda_min", "negative_mass", "trace")


# ------------------------------------------------------------------------------------------------
# the computations (shared with the workflow's scripts)
# ------------------------------------------------------------------------------------------------
def aggregate(tridiags: Sequence[np.ndarray], deflation: integrity.DeflationBasis | None = None,
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One checkpoint's draws -> ``(tridiags, ritz_values, ritz_weights)``.

    ``tridiags``: the per-draw (m_i, m_i) tridiagonals, in draw order. Returns the
    (draws, m, m) stack (the paper code's layout; a draw that stopped early is zero-padded) and
    the (draws, m) Gauss nodes (ascending, NaN-padded) and weights (zero-padded).

    With ``deflation`` (the draws ran on ``P H P``, ``lanczos.deflation_steps``): each draw's
    measure is `hessflow.deflation.deflated_ritz_measure` -- the basis run's k Ritz values as
    atoms of weight 1/n, then the draw's quadrature times its complement weight -- so the Ritz
    arrays are (draws, k + m); the stack stays the draws' own tridiagonals.
    """
    if len(tridiags) == 0:
        raise ValueError("aggregate: no tridiagonals")
    m = max(t.shape[0] for t in tridiags)
    atoms = 0 if deflation is None else deflation.tridiag.shape[0]
    stacked = np.zeros((len(tridiags), m, m))
    values = np.full((len(tridiags), atoms + m), np.nan)
    weights = np.zeros((len(tridiags), atoms + m))
    for draw, tridiag in enumerate(tridiags):
        size = tridiag.shape[0]
        stacked[draw, :size, :size] = tridiag
        if deflation is None:
            nodes, node_weights = ritz(tridiag)
        else:
            nodes, node_weights = deflated_ritz_measure(
                tridiag, ritz(deflation.tridiag)[0], deflation.dim,
                complement_weight=deflation.complement_weights[draw])
        values[draw, :atoms + size], weights[draw, :atoms + size] = nodes, node_weights
    return stacked, values, weights


def unpad_ritz(all_values: np.ndarray, all_weights: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Drop the NaN padding of :func:`aggregate`'s Ritz arrays: ragged per-draw lists."""
    values = [v[~np.isnan(v)] for v in all_values]
    weights = [w[~np.isnan(v)] for v, w in zip(all_values, all_weights)]
    return values, weights


def density_and_stats(
    all_values: np.ndarray, all_weights: np.ndarray, dim: int, density_config: Mapping,
    provenances: Sequence[Mapping] = (), gradient_k: int = DEFAULT_GRADIENT_K,
) -> tuple[np.ndarray, dict]:
    """``density.npy`` and ``stats.json`` of one checkpoint and curvature.

    ``density.npy`` is (4, grid_len): the grid, the density, and the pointwise confidence band
    over draws (lower, upper; `hessflow.uncertainty.density_band` at ``confidence_level``, the
    lower clipped at 0; with one draw, both the density). ``stats.json`` holds the statistics of
    `hessflow.density.summarize`, ``dim``, each statistic's interval over draws (``<name>_lo``,
    ``<name>_hi``; None with one draw) and its per-draw values (``per_draw``), the outliers
    (`hessflow.outliers.find_outliers`: ``outlier_count``, ``outliers``, ``bulk_edges``), the full-data
    gradient's share of the top Ritz vectors' span for ``k`` = the number of outliers above the
    bulk and ``k = gradient_k`` (means over the runs whose provenance records
    ``gradient_fractions``: the draws, or with deflation the basis run), and every Lanczos health
    warning of ``provenances``.

    ``density_config``: the config's ``density`` section (``sigma_squared``, ``grid_len``,
    ``grid_expand``, ``negative_threshold``, ``confidence_level``); ``dim``: the operator's dimension.
    """
    values, weights = unpad_ritz(all_values, all_weights)
    settings = {key: density_config[key] for key in ("sigma_squared", "grid_len", "grid_expand")}
    grid, density = density_from_ritz(values, weights, **settings)
    threshold = density_config["negative_threshold"]
    stats = summarize(values, weights, dim, negative_threshold=threshold)
    stats["dim"] = dim
    bad = [key for key, value in stats.items() if not math.isfinite(value)]
    if bad or not np.all(np.isfinite(grid)) or not np.all(np.isfinite(density)):
        # Never a finished artifact that holds NaN or Inf.
        raise ValueError(
            f"non-finite {', '.join(bad) or 'density'} (density config {dict(density_config)}); "
            "check that every density.* value is finite"
        )
    level = density_config.get("confidence_level", uncertainty.DEFAULT_LEVEL)
    stats |= {"confidence_level": level, "interval_method": uncertainty.DEFAULT_METHOD}
    lower, upper = density, density
    if len(values) >= 2:
        intervals = uncertainty.statistic_intervals(values, weights, dim, negative_threshold=threshold, level=level)
        _, per_draw = uncertainty.per_draw_densities(values, weights, grid=grid, **settings)
        lower, upper = uncertainty.density_band(per_draw, level=level)
        lower = np.maximum(lower, 0.0)  # a density is not negative; t intervals can be
    else:
        intervals = {name: (None, None) for name in uncertainty.STATISTICS}
    for name, (lo, hi) in intervals.items():
        stats[f"{name}_lo"], stats[f"{name}_hi"] = lo, hi
    per_draw_stats = uncertainty.per_draw_statistics(values, weights, dim, negative_threshold=threshold)
    stats["per_draw"] = {name: draws.tolist() for name, draws in per_draw_stats.items()}
    found = find_outliers(values, weights, dim)
    stats |= {"outlier_count": found.count, "outliers": found.values.tolist(),
              "bulk_edges": [found.lower_edge, found.upper_edge]}
    # k = 0 outliers: no direction, no share of the gradient.
    fractions = [p["gradient_fractions"] for p in provenances if p.get("gradient_fractions")]
    stats["gradient_k"] = gradient_k
    stats["gradient_fraction_outliers"] = _mean_fraction(fractions, len(found.above))
    stats["gradient_fraction_top_k"] = _mean_fraction(fractions, gradient_k)
    stats["health_warnings"] = [f"{_run_name(p)}: {warning}" for p in provenances
                                for warning in p.get("health_warnings", [])]
    return np.stack([grid, density, lower, upper]), stats


def _or_nan(value) -> float:
    return math.nan if value is None else value


def _mean_fraction(fractions: Sequence[Sequence[float]], k: int) -> float | None:
    """The mean over runs of the gradient's share of the top-``k`` Ritz vectors' span (each run's
    ``k`` capped at its number of pairs); 0 for ``k = 0``; None when no run recorded fractions."""
    if not fractions:
        return None
    return 0.0 if k == 0 else float(np.mean([f[min(k, len(f)) - 1] for f in fractions]))


def _run_name(provenance: Mapping) -> str:
    draw = provenance.get("draw")
    return "basis run" if draw == BASIS_DRAW else f"draw {draw}"


def summary_row(step: int, stats: Mapping, evaluation: Mapping, provenance: Mapping,
                operator: str = DEFAULT_OPERATOR, block: str = DEFAULT_BLOCK) -> dict:
    """One row of ``summary.csv``: the curvature (``operator``, ``block``) and step, the spectrum
    statistics, loss and gradient, accuracies (NaN where the task is not classification)."""
    missing = math.nan  # a run made before these existed, or one draw (no interval)
    return {
        "operator": operator,
        "block": block,
        "step": step,
        **{key: stats[key] for key in SUMMARY_SPECTRUM_COLUMNS},
        # The confidence intervals over draws (stats.json's confidence_level).
        **{f"{key}_{end}": _or_nan(stats.get(f"{key}_{end}"))
           for key in SUMMARY_INTERVAL_COLUMNS for end in ("lo", "hi")},
        "outlier_count": stats.get("outlier_count", missing),
        "gradient_fraction_outliers": _or_nan(stats.get("gradient_fraction_outliers")),
        "gradient_fraction_top_k": _or_nan(stats.get("gradient_fraction_top_k")),
        "lanczos_warnings": len(stats.get("health_warnings", [])),
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
    """The rows of :func:`summary_row` as the ``summary.csv`` table (``to_csv(index=False)``),
    with a last column ``diverged``.

    Rows are ordered by curvature, in the order the curvatures first appear in ``rows`` (the
    config's, as the workflow and :func:`rebuild` pass them), then by step ascending.

    ``diverged`` (bool) flags a checkpoint whose train loss is not finite or above
    :data:`hessflow.sanity.DIVERGENCE_FACTOR` (10) times the train loss of the smallest step (the
    initialization, step 0, unless ``spectrum.steps`` leaves it out): its spectrum describes a
    diverged model (:func:`hessflow.sanity.diverged`, the rule of the train log's warning too).
    """
    table = pd.DataFrame(list(rows))
    if not len(table):
        return table
    curvature = list(zip(table["operator"], table["block"]))
    order = {pair: index for index, pair in enumerate(dict.fromkeys(curvature))}
    table = (table.assign(_curvature=[order[pair] for pair in curvature])
             .sort_values(["_curvature", "step"], kind="stable")
             .drop(columns="_curvature")
             .reset_index(drop=True))
    start = table["train_loss"].iloc[int(np.argmin(table["step"].to_numpy()))]
    table["diverged"] = [diverged([loss], start=start) for loss in table["train_loss"]]
    return table


def summary_html(table: pd.DataFrame) -> str:
    """``summary.html``: the summary table as a standalone HTML page (numbers to 6 significant
    digits; the CSV keeps every digit)."""
    body = table.to_html(index=False, float_format=lambda value: f"{value:.6g}", na_rep="", border=0)
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>summary</title><style>"
            "table{border-collapse:collapse;font:13px sans-serif}td,th{padding:2px 8px;text-align:right}"
            "tr:nth-child(even){background:#f3f3f3}</style></head><body>\n" + body + "\n</body></html>\n")


def _curvature_title(operator: str, block: str, what: str, step: int | None = None) -> str:
    """A figure title naming the operator and, unless it is the whole model, the block:
    ``"Hessian eigenvalue density, step 20"``, ``"Gauss-Newton spectrum along training, block conv"``."""
    if operator not in OPERATOR_NAMES:
        raise ValueError(f"operator: unknown {operator!r}; use one of {sorted(OPERATOR_NAMES)} (hessian.operator)")
    parts = [f"{OPERATOR_NAMES[operator]} {what}"]
    parts += [] if block == DEFAULT_BLOCK else [f"block {block}"]
    parts += [] if step is None else [f"step {step}"]
    return ", ".join(parts)


def density_step_figure(density_array: np.ndarray, stats: Mapping, step: int,
                        operator: str = DEFAULT_OPERATOR, block: str = DEFAULT_BLOCK):
    """The figure ``figures/{operator}/{block}/density_step_{step}.png`` from ``density.npy`` and
    ``stats.json``; its title names the operator and, unless it is ``all``, the block."""
    grid, density = density_array[:2]
    title = _curvature_title(operator, block, "eigenvalue density", step)
    return density_figure(grid, density, title=title, stats=stats, outliers=stats.get("outliers", ()),
                          band=_band(density_array), band_label=_band_label(stats))


def _band(density_array: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The band rows of ``density.npy`` (absent in a run made before them)."""
    return (density_array[2], density_array[3]) if len(density_array) >= 4 else None


def _band_label(stats: Mapping) -> str:
    level = stats.get("confidence_level", uncertainty.DEFAULT_LEVEL)
    draws = f" over {stats['num_draws']} draws" if "num_draws" in stats else " over draws"
    return f"{level:.0%} band{draws} (pointwise, Student t)"


def trajectory_run_figure(steps: Sequence[int], density_arrays: Sequence[np.ndarray], summary_csv: str | os.PathLike,
                          operator: str = DEFAULT_OPERATOR, block: str = DEFAULT_BLOCK,
                          stats: Sequence[Mapping] | None = None, lr_boundaries: Sequence[int] = ()):
    """The figure ``figures/{operator}/{block}/trajectory.png``: every step's density of that
    curvature with its band, and its rows of the summary over training (intervals as error bars),
    outliers marked from each step's ``stats`` and learning-rate boundaries from the config.

    ``summary_csv`` is read back from its file, as the render rule does, so that both parse the
    same text; its rows of other curvatures are left out.
    """
    densities = [(step, *array[:2]) for step, array in zip(steps, density_arrays)]
    bands = {step: _band(array) for step, array in zip(steps, density_arrays) if _band(array) is not None}
    outliers = None if stats is None else {step: s.get("outliers", []) for step, s in zip(steps, stats)}
    label = _band_label(stats[0]) if stats else "95% band over draws"
    # Operator and block as written (a block may be named "NA" or "01"); empty fields are NaN.
    summary = pd.read_csv(summary_csv, dtype={"operator": str, "block": str}, keep_default_na=False, na_values=[""])
    summary = summary[(summary["operator"] == operator) & (summary["block"] == block)]
    if not len(summary):
        raise ValueError(f"{summary_csv} has no row of operator {operator!r} on block {block!r}")
    return trajectory_figure(densities, summary, title=_curvature_title(operator, block, "spectrum along training"),
                             bands=bands or None, outliers=outliers, band_label=label,
                             lr_boundaries=lr_boundaries)


def curvatures_run_figure(step: int, densities: Sequence[tuple[tuple[str, str], np.ndarray]]):
    """The figure ``figures/curvatures_step_{step}.png``: every curvature's density at ``step``.

    ``densities``: ``((operator, block), density.npy)`` per curvature, in the config's order
    (:func:`hessflow.layout.curvatures`).
    """
    return curvatures_figure(step, [(operator, block, *array[:2]) for (operator, block), array in densities])


def analysed_steps(config: Mapping) -> list[int]:
    """The checkpoint steps a run analyses: ``spectrum.steps``, or all of ``training.checkpoint_steps``."""
    steps = config.get("spectrum", {}).get("steps")
    return sorted(steps if steps is not None else config["training"]["checkpoint_steps"])


# ------------------------------------------------------------------------------------------------
# a run folder: what the rebuild reads, verification, rebuild
# ------------------------------------------------------------------------------------------------
def _draws(config: Mapping) -> range:
    return range(config["lanczos"]["draws"])


def _deflated(config: Mapping) -> bool:
    """Whether the draws ran on a deflation basis (``lanczos.deflation_steps`` > 0; absent: no)."""
    return config["lanczos"].get("deflation_steps", 0) > 0


def required_inputs(config: Mapping) -> list[str]:
    """Paths (relative to the run folder) a rebuild reads; each must be listed in the manifest:
    the config, then for each curvature and step every draw's tridiagonal and provenance (the
    sha256 each tridiagonal is verified against) and, with deflation, the basis run's, then each
    step's evaluation."""
    steps = analysed_steps(config)
    paths = [CONFIG_FILE]
    for operator, block in curvatures(config):
        for step in steps:
            paths += [RELATIVE.tridiag(step, draw, operator, block) for draw in _draws(config)]
            paths += [RELATIVE.provenance(step, draw, operator, block) for draw in _draws(config)]
            if _deflated(config):
                basis = RELATIVE.basis_files(step, operator, block)
                paths += [basis["tridiag"], basis["provenance"]]
    return paths + [RELATIVE.evaluation(step) for step in steps]


def rebuilt_outputs(config: Mapping) -> list[str]:
    """Paths (relative to the run folder) a rebuild writes, in the order it writes them: for each
    curvature, each step's spectrum files and density figure; the summary; each curvature's
    trajectory figure; with several curvatures, each step's curvatures figure."""
    steps, pairs = analysed_steps(config), curvatures(config)
    paths = []
    for operator, block in pairs:
        for step in steps:
            paths += RELATIVE.spectrum_files(step, operator, block).values()
            paths.append(RELATIVE.density_figure(step, operator, block))
    paths += [RELATIVE.summary, RELATIVE.summary_html]
    paths += [RELATIVE.trajectory_figure(operator, block) for operator, block in pairs]
    if len(pairs) > 1:
        paths += [RELATIVE.curvatures_figure(step) for step in steps]
    return paths


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
    draws = [*_draws(config), *([BASIS_DRAW] if _deflated(config) else [])]
    for operator, block in curvatures(config):
        for step, draw in itertools.product(analysed_steps(config), draws):
            paths = (RELATIVE.tridiag(step, draw, operator, block), RELATIVE.provenance(step, draw, operator, block))
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
    steps, pairs = analysed_steps(config), curvatures(config)
    rows, density_arrays = [], {}
    for (operator, block), step in itertools.product(pairs, steps):
        density_arrays[operator, block, step], row = _rebuild_spectrum(source, target, config, step, operator, block)
        rows.append(row)
    Path(target.summary).parent.mkdir(parents=True, exist_ok=True)
    table = summary_table(rows)
    artifacts.save_text(target.summary, table.to_csv(index=False))
    artifacts.save_text(target.summary_html, summary_html(table))
    for operator, block in pairs:
        stats = [_load_json(Path(target.spectrum_files(step, operator, block)["stats"])) for step in steps]
        figure = trajectory_run_figure(steps, [density_arrays[operator, block, step] for step in steps],
                                       target.summary, operator, block, stats=stats,
                                       lr_boundaries=config["training"].get("lr_boundaries", []))
        save_figure(figure, target.trajectory_figure(operator, block), dpi=FIGURE_DPI)
    if len(pairs) > 1:
        for step in steps:
            figure = curvatures_run_figure(step, [(pair, density_arrays[(*pair, step)]) for pair in pairs])
            save_figure(figure, target.curvatures_figure(step), dpi=FIGURE_DPI)
    return rebuilt_outputs(config)


def _rebuild_spectrum(source: RunLayout, target: RunLayout, config: Mapping, step: int, operator: str,
                      block: str) -> tuple[np.ndarray, dict]:
    """One curvature's spectrum files and density figure at ``step``, written into ``target``;
    returns ``(density.npy, summary row)``."""
    draws = _draws(config)
    files = target.spectrum_files(step, operator, block)
    Path(files["tridiags"]).parent.mkdir(parents=True, exist_ok=True)
    provenances = [source.provenance(step, draw, operator, block) for draw in draws]
    deflation = None
    if _deflated(config):
        basis = source.basis_files(step, operator, block)
        deflation = integrity.load_deflation_basis(basis["tridiag"], basis["provenance"], provenances)
    stacked, values, weights = aggregate(integrity.load_tridiags(
        [source.tridiag(step, draw, operator, block) for draw in draws], provenances), deflation)
    artifacts.save_npy(files["tridiags"], stacked)
    artifacts.save_npy(files["ritz_values"], values)
    artifacts.save_npy(files["ritz_weights"], weights)
    provenance = _load_json(Path(source.provenance(step, 0, operator, block)))
    runs = provenances + ([source.basis_files(step, operator, block)["provenance"]] if deflation else [])
    density_array, stats = density_and_stats(
        values, weights, provenance["dim"], config["density"], [_load_json(Path(path)) for path in runs],
        config.get("spectrum", {}).get("gradient_k", DEFAULT_GRADIENT_K))
    artifacts.save_npy(files["density"], density_array)
    artifacts.save_json(files["stats"], stats)
    figure_path = target.density_figure(step, operator, block)
    Path(figure_path).parent.mkdir(parents=True, exist_ok=True)
    save_figure(density_step_figure(density_array, stats, step, operator, block), figure_path, dpi=FIGURE_DPI)
    row = summary_row(step, stats, _load_json(Path(source.evaluation(step))), provenance, operator, block)
    return density_array, row


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
