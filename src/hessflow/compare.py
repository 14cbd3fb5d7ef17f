"""Compare the curvature spectra of several finished runs, step by step.

Ghorbani, Krishnan & Xiao (ICML 2019) compare the Hessian spectra of one network trained with and
without batch norm (``config/batchnorm_on.yaml``, ``config/batchnorm_off.yaml``): this module puts
such runs side by side. It reads, from each run folder (``results/{run_name}``, paths by
:class:`hessflow.layout.RunLayout`), per analysed step, ``density.npy`` (rows 0 and 1: grid and
density; later rows are ignored), ``stats.json``, the run's ``summary.csv`` (test accuracy) and
its resolved ``config.json`` (which steps and curvatures it analysed).

- :func:`comparison_table`: a :class:`pandas.DataFrame`, one row per run and step (``run``,
  ``step``, ``lambda_max``, ``lambda_min``, ``trace``, ``negative_mass``, ``outlier_count`` when a
  run's ``stats.json`` has it, ``test_accuracy``).
- :func:`comparison_figure`: one panel per step (rows of 3): the runs' densities overlaid on a log
  density axis over one symmetric-log λ axis shared by all panels, the λ = 0 line and each run's
  λmax marked; under each, a table of the runs' statistics at that step; one legend, outside the
  panels.

Command line (also installable as ``hessflow-compare``)::

    python -m hessflow.compare --run "batch norm=results/vgg_bn" --run "no batch norm=results/vgg_nobn" \\
        --out figure.png [--steps 0 600] [--csv table.csv] [--operator hessian] [--block all]

prints the table, writes the figure (PNG) and, with ``--csv``, the table, each atomically.

Imports numpy, pandas, matplotlib and hessflow's TensorFlow-free modules only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogLocator, NullLocator

from hessflow import artifacts
from hessflow.layout import DEFAULT_BLOCK, DEFAULT_OPERATOR, RunLayout, curvatures
from hessflow.plots import (
    _ZERO_STYLE,
    DEFAULT_DENSITY_FLOOR,
    DENSITY_LABEL,
    EIGENVALUE_LABEL,
    _check_density_curve,
    _check_floor,
    _lambda_limits,
    _lambda_linthresh,
    save_figure,
)
from hessflow.reproduce import FIGURE_DPI, _curvature_title, analysed_steps

__all__ = [
    "STATISTICS",
    "TABLE_COLUMNS",
    "RunSpectrum",
    "comparison_figure",
    "comparison_table",
    "load_runs",
    "main",
    "matched_steps",
]

#: The ``stats.json`` keys every compared step needs (``hessflow.density.summarize``).
STATISTICS = ("lambda_max", "lambda_min", "trace", "negative_mass")
#: The columns of :func:`comparison_table`, in order (``outlier_count`` only when a run has it).
TABLE_COLUMNS = ("run", "step", *STATISTICS, "outlier_count", "test_accuracy")

# One style per run, in the order given: colour and line style (distinct in grey print too).
_RUN_COLORS = ("C0", "C3", "C2", "C1", "C4", "C5", "C6", "C7", "C8", "C9")
_RUN_LINESTYLES = ("-", "--", "-.", ":")
# λmax: a down-pointing triangle whose base sits on the top spine, in the run's colour.
_LAMBDA_MAX_MARKER = [(-0.5, 0.0), (0.5, 0.0), (0.0, -1.0)]
# Sizes in inches (times the dpi of save_figure: whole pixels).
_PANEL_WIDTH = 4.4
_MIN_WIDTH = 6.4  # the legend's width, for one step
_STEPS_PER_ROW = 3
_DENSITY_HEIGHT = 3.0
_TABLE_ROW_HEIGHT = 0.24  # one row of a statistics table (its header is one more)
_TITLE_HEIGHT = 0.9  # suptitle, legend, λ axis label
# The statistics tables: header, stats.json / summary.csv key, and format.
_TABLE_FIELDS = (
    ("λmax", "lambda_max", "{:.4g}"),
    ("λmin", "lambda_min", "{:.3g}"),
    ("trace", "trace", "{:.4g}"),
    ("neg. mass", "negative_mass", "{:.3g}"),
    ("outliers", "outlier_count", "{:d}"),
    ("test acc.", "test_accuracy", "{:.3f}"),
)


@dataclass(frozen=True)
class RunSpectrum:
    """One run's spectrum at one step, as read from its run folder.

    ``grid`` and ``density``: float64 arrays of shape (G,) (eigenvalue units; 1 / eigenvalue units),
    rows 0 and 1 of ``density.npy``. ``stats``: ``stats.json`` as read. ``test_accuracy``: that
    step's ``summary.csv`` value (NaN where the task is not classification).
    """

    run: str
    root: str
    step: int
    grid: np.ndarray
    density: np.ndarray
    stats: dict
    test_accuracy: float


# ------------------------------------------------------------------------------------------------
# reading run folders
# ------------------------------------------------------------------------------------------------
def _runs(runs: Mapping[str, str | os.PathLike] | Sequence[tuple[str, str | os.PathLike]]) -> list[tuple[str, str]]:
    """``runs`` as a non-empty list of ``(label, run folder)``, each label once."""
    pairs = list(runs.items()) if isinstance(runs, Mapping) else [tuple(pair) for pair in runs]
    if not pairs:
        raise ValueError("runs is empty: give at least one run as label -> run folder (results/{run_name})")
    labels = [str(label) for label, _ in pairs]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise ValueError(f"run label(s) {twice} given more than once: give each run its own label")
    return [(str(label), Path(root).as_posix()) for label, root in pairs]


def _read_config(label: str, root: str) -> dict:
    layout = RunLayout(root)
    if not Path(root).is_dir():
        raise FileNotFoundError(f"run {label!r}: no run folder {root}: pass a run folder, results/{{run_name}}")
    try:
        with open(layout.config, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"run {label!r}: {layout.config} is missing: {root} is not a finished hessflow run folder (the "
            "workflow's resolved_config rule writes it); pass results/{run_name}, or finish the run with snakemake"
        ) from None
    except json.JSONDecodeError as error:
        raise ValueError(f"run {label!r}: {layout.config} is not JSON ({error}); rerun the workflow") from None


def _run_steps(label: str, root: str, config: Mapping, operator: str, block: str) -> list[int]:
    """The steps ``config`` analyses, after checking that it analyses (``operator``, ``block``)."""
    pairs = curvatures(config)
    if (operator, block) not in pairs:
        raise ValueError(
            f"run {label!r} ({root}) does not analyse operator {operator!r} on block {block!r}: its "
            f"config.json has {pairs} (hessian.operator, hessian.blocks); pick one of those"
        )
    return analysed_steps(config)


def matched_steps(runs, steps: Sequence[int] | None = None, operator: str = DEFAULT_OPERATOR,
                  block: str = DEFAULT_BLOCK) -> list[int]:
    """The steps to compare, ascending: ``steps`` (each checked), or every step all runs analysed.

    Args:
        runs: a mapping label -> run folder, or a sequence of ``(label, run folder)``.
        steps: training steps (ints), or None: the steps every run analysed (``spectrum.steps``,
            else ``training.checkpoint_steps``, of each run's ``config.json``).
        operator, block: the curvature (``hessian.operator``, a name of ``hessian.blocks``).

    Raises:
        ValueError: a requested step that a run did not analyse (naming the run and the step),
            no step common to all runs, or a run without this curvature.
        FileNotFoundError: a run folder without ``config.json`` (named).
    """
    per_run = {}
    for label, root in _runs(runs):
        per_run[label] = (root, _run_steps(label, root, _read_config(label, root), operator, block))
    common = sorted(set.intersection(*(set(found) for _, found in per_run.values())))
    if steps is None:
        if not common:
            listed = "; ".join(f"{label!r}: {found}" for label, (_, found) in per_run.items())
            raise ValueError(f"the runs analysed no step in common ({listed}): pass runs made with the same "
                             "training.checkpoint_steps / spectrum.steps")
        return common
    requested = sorted({int(step) for step in steps})
    if not requested:
        raise ValueError("steps is empty: give at least one step, or None for every step all runs analysed")
    for step in requested:
        for label, (root, found) in per_run.items():
            if step not in found:
                raise ValueError(
                    f"run {label!r} ({root}) has no step {step}: it analysed steps {found} (spectrum.steps, "
                    f"else training.checkpoint_steps, in its config.json); steps all runs analysed: {common}"
                )
    return requested


def _read_density(label: str, path: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"run {label!r}: {path} is missing: the run is unfinished; finish it with "
                                "snakemake and its config") from None
    except ValueError as error:
        raise ValueError(f"run {label!r}: {path} is not a .npy array ({error}); rebuild it with "
                         "hessflow-reproduce or rerun the workflow") from None
    if array.ndim != 2 or array.shape[0] < 2:
        raise ValueError(f"run {label!r}: {path} has shape {array.shape}, not (2 or more rows, G): row 0 the "
                         "grid, row 1 the density; rebuild it with hessflow-reproduce")
    return _check_density_curve(array[0], array[1], f"run {label!r}: {path}")


def _read_stats(label: str, path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            stats = json.load(handle)
    except FileNotFoundError:
        raise FileNotFoundError(f"run {label!r}: {path} is missing: the run is unfinished; finish it with "
                                "snakemake and its config") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"run {label!r}: {path} is not JSON ({error}); rebuild it with hessflow-reproduce") from None
    missing = [key for key in STATISTICS if key not in stats]
    if missing:
        raise ValueError(f"run {label!r}: {path} lacks {missing}; rebuild it with hessflow-reproduce")
    return stats


def _read_summary(label: str, path: str, operator: str, block: str) -> pd.DataFrame:
    try:
        # Operator and block as written (a block may be named "NA" or "01"); empty fields are NaN.
        summary = pd.read_csv(path, dtype={"operator": str, "block": str}, keep_default_na=False, na_values=[""])
    except FileNotFoundError:
        raise FileNotFoundError(f"run {label!r}: {path} is missing: the run is unfinished; finish it with "
                                "snakemake and its config") from None
    missing = [column for column in ("operator", "block", "step") if column not in summary.columns]
    if missing:
        raise ValueError(f"run {label!r}: {path} lacks the column(s) {missing}; rebuild it with hessflow-reproduce")
    return summary[(summary["operator"] == operator) & (summary["block"] == block)]


def load_runs(runs, steps: Sequence[int] | None = None, operator: str = DEFAULT_OPERATOR,
              block: str = DEFAULT_BLOCK) -> list[RunSpectrum]:
    """Every run's spectrum at every matched step (:func:`matched_steps`), run by run in the order
    given, steps ascending. Raises as :func:`matched_steps`, and names any missing or malformed
    ``density.npy``, ``stats.json`` or ``summary.csv`` with what to do."""
    chosen = matched_steps(runs, steps, operator, block)
    spectra = []
    for label, root in _runs(runs):
        layout = RunLayout(root)
        summary = _read_summary(label, layout.summary, operator, block)
        for step in chosen:
            files = layout.spectrum_files(step, operator, block)
            grid, density = _read_density(label, files["density"])
            stats = _read_stats(label, files["stats"])
            rows = summary[summary["step"] == step]
            if len(rows) != 1:
                raise ValueError(f"run {label!r}: {layout.summary} has {len(rows)} rows of step {step} for operator "
                                 f"{operator!r} on block {block!r}, not 1; rebuild it with hessflow-reproduce")
            accuracy = float(rows["test_accuracy"].iloc[0]) if "test_accuracy" in rows.columns else math.nan
            spectra.append(RunSpectrum(label, root, step, grid, density, stats, accuracy))
    return spectra


# ------------------------------------------------------------------------------------------------
# the table and the figure
# ------------------------------------------------------------------------------------------------
def _table(spectra: Sequence[RunSpectrum]) -> pd.DataFrame:
    rows = []
    with_outliers = any("outlier_count" in spectrum.stats for spectrum in spectra)
    for spectrum in spectra:
        row = {"run": spectrum.run, "step": spectrum.step}
        row |= {key: float(spectrum.stats[key]) for key in STATISTICS}
        if with_outliers:
            count = spectrum.stats.get("outlier_count")
            row["outlier_count"] = pd.NA if count is None else int(count)
        row["test_accuracy"] = spectrum.test_accuracy
        rows.append(row)
    table = pd.DataFrame(rows, columns=[c for c in TABLE_COLUMNS if with_outliers or c != "outlier_count"])
    if with_outliers:
        table["outlier_count"] = table["outlier_count"].astype("Int64")
    return table.astype({"step": "int64"})


def comparison_table(runs, steps: Sequence[int] | None = None, operator: str = DEFAULT_OPERATOR,
                     block: str = DEFAULT_BLOCK) -> pd.DataFrame:
    """The runs' spectrum statistics at the matched steps, one row per run and step.

    Args: as :func:`matched_steps` (``runs``: label -> run folder, in the order to list them).

    Returns:
        a DataFrame ordered by run (as given), then step ascending, with the columns ``run``
        (str, the label), ``step`` (int), ``lambda_max``, ``lambda_min`` (eigenvalue units),
        ``trace`` (eigenvalue units: the sum of all eigenvalues), ``negative_mass`` (the fraction
        of the spectrum below ``-negative_cutoff``, in [0, 1]) from each step's ``stats.json``;
        ``outlier_count`` (nullable int) when any run's ``stats.json`` has it; ``test_accuracy``
        (in [0, 1]; NaN for a non-classification task) from ``summary.csv``.

    Raises: as :func:`load_runs`.
    """
    return _table(load_runs(runs, steps, operator, block))


def _run_styles(labels: Sequence[str]) -> dict[str, dict]:
    return {label: {"color": _RUN_COLORS[i % len(_RUN_COLORS)], "linestyle": _RUN_LINESTYLES[i % len(_RUN_LINESTYLES)]}
            for i, label in enumerate(labels)}


def _cell(value, fmt: str) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return fmt.format(int(value) if fmt == "{:d}" else float(value))


def comparison_figure(runs, steps: Sequence[int] | None = None, operator: str = DEFAULT_OPERATOR,
                      block: str = DEFAULT_BLOCK, *, floor: float = DEFAULT_DENSITY_FLOOR,
                      lambda_linthresh: float | None = None) -> Figure:
    """The runs' eigenvalue densities overlaid, one panel per matched step, with their statistics.

    Args:
        runs, steps, operator, block: as :func:`matched_steps` (``runs``: label -> run folder;
            the labels name the runs in the legend and the tables).
        floor: float > 0, the smallest density drawn (1 / eigenvalue units); below it, zeros
            included, a density is drawn at ``floor`` so the log axis works.
        lambda_linthresh: the symmetric-log λ axis's linear range ±linthresh (eigenvalue units);
            default as :func:`hessflow.plots.trajectory_figure`: 1/100 of the smallest half-range
            ``max(|grid[0]|, |grid[-1]|)`` over every run and step, rounded down to a power of ten.

    Returns:
        a ``matplotlib.figure.Figure`` (suptitle naming the operator and, unless ``all``, the
        block) with, per step ``s`` in ascending order, left to right in rows of at most 3 steps:

        - an Axes labelled ``"density_step_{s}"``, titled ``"step {s}"``: each run's density
          (a line, gid ``"density:{label}"``, x data the grid, y data ``max(density, floor)``) on
          a log y axis shared by all panels, over one symmetric-log λ axis shared by all panels;
          the λ = 0 line (gid ``"zero"``); each run's λmax as a triangle on the top edge (gid
          ``"lambda_max:{label}"``, x data ``[lambda_max]``, y in axes units), in the run's
          colour.
        - below it, an Axes labelled ``"statistics_step_{s}"`` (no axis lines) holding a table
          (gid ``"statistics"``): a header row, then one row per run: the label, λmax, λmin,
          trace, negative mass, the outlier count (when a run's stats have it) and the test
          accuracy (when a run has it).

        One figure legend, below the tables (outside every Axes), names the runs, the λmax
        marks and the λ = 0 line.

    Raises: as :func:`load_runs`; ValueError for ``floor`` <= 0 or ``lambda_linthresh`` <= 0.
    """
    _check_floor(floor)
    if lambda_linthresh is not None and not lambda_linthresh > 0:
        raise ValueError(f"lambda_linthresh must be > 0; got {lambda_linthresh!r}")
    return _figure(load_runs(runs, steps, operator, block), operator, block, floor, lambda_linthresh)


def _figure(spectra: Sequence[RunSpectrum], operator: str, block: str, floor: float,
            lambda_linthresh: float | None) -> Figure:
    """:func:`comparison_figure` of spectra already read (:func:`load_runs`)."""
    table = _table(spectra)
    labels = list(dict.fromkeys(spectrum.run for spectrum in spectra))
    chosen = sorted({spectrum.step for spectrum in spectra})
    styles = _run_styles(labels)
    fields = [field for field in _TABLE_FIELDS
              if field[1] in table.columns and not (field[1] == "test_accuracy" and table[field[1]].isna().all())]

    table_height = _TABLE_ROW_HEIGHT * (len(labels) + 1) + 0.15
    ncols = min(len(chosen), _STEPS_PER_ROW)
    nrows = math.ceil(len(chosen) / ncols)
    width = max(_MIN_WIDTH, _PANEL_WIDTH * ncols)
    fig = Figure(figsize=(width, (_DENSITY_HEIGHT + table_height) * nrows + _TITLE_HEIGHT), layout="constrained")
    slots = fig.add_gridspec(2 * nrows, ncols, height_ratios=(_DENSITY_HEIGHT, table_height) * nrows)
    panels = []
    for index, step in enumerate(chosen):
        row, column = divmod(index, ncols)  # along the first row, then the next
        first = panels[0] if panels else None
        ax = fig.add_subplot(slots[2 * row, column], label=f"density_step_{step}", sharex=first, sharey=first)
        panels.append(ax)
        ax.set_yscale("log")
        ax.axvline(0.0, gid="zero", **_ZERO_STYLE)
        for spectrum in (s for s in spectra if s.step == step):
            style = styles[spectrum.run]
            ax.plot(spectrum.grid, np.maximum(spectrum.density, floor), linewidth=1.1, gid=f"density:{spectrum.run}",
                    label=spectrum.run, **style)
            ax.plot([float(spectrum.stats["lambda_max"])], [1.0], transform=ax.get_xaxis_transform(),
                    marker=_LAMBDA_MAX_MARKER, markersize=10, linestyle="none", color=style["color"],
                    clip_on=False, gid=f"lambda_max:{spectrum.run}")
        ax.set_title(f"step {step}", loc="left", fontsize="medium")
        ax.set_xlabel(EIGENVALUE_LABEL + " (symmetric log scale)", fontsize="small")
        ax.tick_params(labelsize="small")
        if column > 0:
            ax.tick_params(labelleft=False)
        _statistics_table(fig.add_subplot(slots[2 * row + 1, column], label=f"statistics_step_{step}"),
                          table[table["step"] == step], labels, styles, fields)
    grids = [spectrum.grid for spectrum in spectra]
    threshold = _lambda_linthresh(grids) if lambda_linthresh is None else float(lambda_linthresh)
    first = panels[0]
    first.set_xscale("symlog", linthresh=threshold, linscale=1.0)
    first.set_xlim(*_lambda_limits(grids, [table["lambda_max"].to_numpy()]))
    first.set_ylim(bottom=floor)
    first.yaxis.set_major_locator(LogLocator(base=10.0, numticks=5))
    first.yaxis.set_minor_locator(NullLocator())
    first.set_ylabel(DENSITY_LABEL)
    handles = [Line2D([], [], linewidth=1.1, label=label, **styles[label]) for label in labels]
    handles.append(Line2D([], [], color="0.3", marker=_LAMBDA_MAX_MARKER, markersize=8, linestyle="none",
                          label=r"$\lambda_{\max}$ of each run (its colour)"))
    handles.append(Line2D([], [], label="λ = 0", **_ZERO_STYLE))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), fontsize="small")
    fig.suptitle(_curvature_title(operator, block, "eigenvalue density by run"))
    return fig


def _statistics_table(ax, rows: pd.DataFrame, labels: Sequence[str], styles: Mapping[str, dict],
                      fields: Sequence[tuple[str, str, str]]) -> None:
    """A table in ``ax`` (axis off): the header, then one row per run, its label in its colour."""
    ax.set_axis_off()
    by_run = {row["run"]: row for _, row in rows.iterrows()}
    cells = [[label, *(_cell(by_run[label][key], fmt) for _, key, fmt in fields)] for label in labels]
    widths = [0.25] + [0.75 / len(fields)] * len(fields)
    table = ax.table(cellText=cells, colLabels=["run", *(header for header, _, _ in fields)], colWidths=widths,
                     loc="upper center", cellLoc="center", edges="horizontal")
    table.set_gid("statistics")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    for row, label in enumerate(labels, start=1):
        table[row, 0].get_text().set_color(styles[label]["color"])
        table[row, 0].get_text().set_horizontalalignment("left")
        table[row, 0].PAD = 0.02


# ------------------------------------------------------------------------------------------------
# the command line
# ------------------------------------------------------------------------------------------------
def _run_argument(text: str) -> tuple[str, str]:
    """``"LABEL=PATH"`` -> ``(LABEL, PATH)``; a bare ``PATH`` is labelled by its folder name."""
    label, separator, path = text.partition("=")
    if not separator:
        label, path = Path(text).name, text
    if not label or not path:
        raise argparse.ArgumentTypeError(f"--run {text!r}: give LABEL=PATH, e.g. \"batch norm=results/vgg_bn\"")
    return label, path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hessflow-compare",
        description="Compare the eigenvalue densities and spectrum statistics of several hessflow runs "
        "step by step (e.g. config/batchnorm_on.yaml against config/batchnorm_off.yaml). No TensorFlow.",
    )
    parser.add_argument("--run", action="append", type=_run_argument, required=True, metavar="LABEL=PATH",
                        help="a run folder (results/{run_name}) and its label; repeat for each run")
    parser.add_argument("--out", help="the figure to write (PNG)")
    parser.add_argument("--csv", help="also write the table as CSV")
    parser.add_argument("--steps", type=int, nargs="+", metavar="STEP",
                        help="the steps to compare (default: every step all runs analysed)")
    parser.add_argument("--operator", default=DEFAULT_OPERATOR, help="hessian (default) or ggn")
    parser.add_argument("--block", default=DEFAULT_BLOCK, help="a block of hessian.blocks (default: all)")
    parser.add_argument("--dpi", type=float, default=FIGURE_DPI, help=f"figure resolution (default {FIGURE_DPI})")
    return parser


def _write(path: str, write) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write(path)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status: 0 done, 1 a run folder refused (one line on
    stderr naming the file and what to do), 2 bad arguments."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.out and not args.csv:
        parser.error("nothing to write: give --out FIGURE.png and/or --csv TABLE.csv")
    runs = dict(args.run)
    if len(runs) != len(args.run):
        parser.error("each --run needs its own label")
    try:
        spectra = load_runs(runs, args.steps, args.operator, args.block)
        spectra_table = _table(spectra)
        figure = _figure(spectra, args.operator, args.block, DEFAULT_DENSITY_FLOOR, None) if args.out else None
    except (ValueError, OSError) as error:
        print(f"hessflow-compare: {error}", file=sys.stderr)
        return 1
    with pd.option_context("display.width", 200, "display.max_columns", None):
        print(spectra_table.to_string(index=False))
    if args.csv:
        _write(args.csv, lambda path: artifacts.save_text(path, spectra_table.to_csv(index=False)))
        print(f"wrote {args.csv}")
    if figure is not None:
        _write(args.out, lambda path: save_figure(figure, path, dpi=args.dpi))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
