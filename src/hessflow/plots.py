"""Figures of curvature eigenvalue densities: one checkpoint, along training, and several
curvatures (operators and blocks) of one checkpoint side by side.

The style follows Ghorbani, Krishnan & Xiao (ICML 2019): the density is drawn
on a **logarithmic** y axis against the eigenvalue, because the interesting
features -- outlier eigenvalues far from the bulk and the small negative
mass -- sit many orders of magnitude below the peak at zero. Every density
panel marks λ = 0 (the line between positive and negative curvature), can mark
the outlier eigenvalues (ticks at the top edge) and can shade an uncertainty
band (e.g. a percentile band of the density over the Lanczos draws).

Figures are built as :class:`matplotlib.figure.Figure` objects directly, not
through :mod:`matplotlib.pyplot`: no global figure state, no GUI backend, and
nothing to configure before importing this module. :func:`save_figure` renders
with Agg into a PNG, written atomically and without the matplotlib version
in its metadata, so that the same figure renders to the same bytes.

Each Axes carries a label (``Axes.get_label()``) naming its panel, and each
data artist a ``gid`` naming its quantity, so that scripts and tests can find
them without relying on drawing order. Legends sit outside the data axes (as
figure legends), never over the data.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure, FigureBase
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import LogLocator, NullLocator

from hessflow.artifacts import atomic_write

__all__ = [
    "DEFAULT_BAND_LABEL",
    "DEFAULT_DENSITY_FLOOR",
    "GRADIENT_FRACTION_COLUMNS",
    "INTERVAL_SUFFIXES",
    "OPERATOR_NAMES",
    "SUMMARY_COLUMNS",
    "curvatures_figure",
    "density_figure",
    "save_figure",
    "step_axis_scale",
    "trajectory_figure",
]

#: Density values below this are drawn at this value, so the log axis works
#: where the smoothed density underflows to 0 (1/eigenvalue units).
DEFAULT_DENSITY_FLOOR = 1e-8

#: Legend entry of an uncertainty band unless the caller names its level.
DEFAULT_BAND_LABEL = "95% band over draws"

#: Columns :func:`trajectory_figure` needs in its ``summary`` table.
SUMMARY_COLUMNS = ("step", "lambda_max", "lambda_min", "negative_mass")

#: Suffixes of a summary column's interval: ``lambda_max_lo`` and ``lambda_max_hi`` bound
#: ``lambda_max`` (drawn as error bars by :func:`trajectory_figure`).
INTERVAL_SUFFIXES = ("_lo", "_hi")

TRAJECTORY_TITLE = "Hessian spectrum along training"
EIGENVALUE_LABEL = "eigenvalue λ"
DENSITY_LABEL = "density (log scale)"
STEP_LABEL = "training step"
OUTLIERS_LABEL = "outlier eigenvalues"
LR_BOUNDARY_LABEL = "learning-rate boundary"

_TRAJECTORY_LEGEND_COLUMNS = 5

#: Summary columns of the gradient's share of its squared norm in the top Ritz vectors' span, drawn
#: in a third panel of :func:`trajectory_figure` when the summary has them.
GRADIENT_FRACTION_COLUMNS = ("gradient_fraction_outliers", "gradient_fraction_top_k")
GRADIENT_FRACTION_LABELS = {
    "gradient_fraction_outliers": "gradient share, outliers' span",
    "gradient_fraction_top_k": "gradient share, top-k Ritz span",
}
_GRADIENT_FRACTION_STYLES = {
    "gradient_fraction_outliers": {"color": "C4", "marker": "D", "markersize": 3},
    "gradient_fraction_top_k": {"color": "C5", "marker": "v", "markersize": 3, "linestyle": "--"},
}

#: How figures name each curvature operator (``hessian.operator`` in the config).
OPERATOR_NAMES = {"hessian": "Hessian", "ggn": "Gauss-Newton"}
# How the curvatures figure draws each operator's density: Hessian solid, GGN dashed.
_OPERATOR_STYLES = {"hessian": {"color": "C0", "linestyle": "-"}, "ggn": {"color": "C1", "linestyle": "--"}}

# Sizes in inches; multiplied by the dpi of save_figure they give whole pixels.
_DENSITY_FIGSIZE = (6.4, 4.0)
_TRAJECTORY_FIGSIZE = (12.8, 6.0)  # one column of step panels; at least this tall
_TRAJECTORY_PANEL_HEIGHT = 1.1  # one step's density panel
_TRAJECTORY_COLUMN_WIDTH = 4.8  # each further column of step panels
_TRAJECTORY_STEPS_PER_COLUMN = 8
_CURVATURES_PANEL_SIZE = (4.0, 4.0)  # one block's panel
_CURVATURES_LEGEND_WIDTH = 1.6  # the legend, right of the panels

# The symmetric-log λ axis of the step panels: linear within ±linthresh, where linthresh is
# this fraction of the narrowest step's half-range |λ|, rounded down to a power of ten.
_LAMBDA_LINTHRESH_FRACTION = 1e-2
# A log step axis only pays when the positive steps span at least this ratio (a decade).
_LOG_STEPS_MIN_SPAN = 10.0

_BAND_ALPHA = 0.25
# A down-pointing triangle whose base is the anchor: anchored on the top spine, it hangs inside.
_OUTLIER_MARKER = [(-0.5, 0.0), (0.5, 0.0), (0.0, -1.0)]
_ZERO_STYLE = {"color": "0.5", "linestyle": ":", "linewidth": 0.8}
_LR_BOUNDARY_STYLE = {"color": "0.45", "linestyle": "--", "linewidth": 0.9}

# PNG text chunks matplotlib would add by default ("Software": its version).
# None removes the key; Agg writes no timestamp, so renders are byte-stable.
_REPRODUCIBLE_PNG_METADATA = {"Software": None}

# Statistics shown in the density figure's text box, in this order, with the
# mathtext label of each (keys as returned by hessflow.density.summarize).
_STATISTIC_LABELS = {
    "lambda_max": r"$\lambda_{\max}$",
    "lambda_min": r"$\lambda_{\min}$",
    "trace": "trace",
    "negative_mass": "negative mass",
}


def density_figure(
    grid,
    density,
    *,
    title: str | None = None,
    stats: Mapping[str, float] | None = None,
    floor: float = DEFAULT_DENSITY_FLOOR,
    outliers: Sequence[float] = (),
    band: tuple[np.ndarray, np.ndarray] | None = None,
    band_label: str = DEFAULT_BAND_LABEL,
) -> Figure:
    """The eigenvalue density of one checkpoint, on a log y axis.

    Args:
        grid: array_like, shape (G,); the eigenvalues at which the density is evaluated
            (eigenvalue units), increasing, e.g. from
            :func:`hessflow.density.density_from_tridiags`.
        density: array_like, shape (G,); the density on ``grid`` (1 / eigenvalue units). Values
            below ``floor``, including zeros and rounding negatives, are drawn at ``floor``.
        title: optional axes title, e.g. ``"step 1000"``.
        stats: optional mapping of summary statistics as returned by
            :func:`hessflow.density.summarize`. ``lambda_max``, ``lambda_min``, ``trace`` and
            ``negative_mass`` (with ``negative_cutoff`` when present) are listed in a text box;
            vertical lines mark ``lambda_max`` and ``lambda_min``. Other keys are ignored.
        floor: float, the smallest density drawn, > 0.
        outliers: eigenvalues (eigenvalue units) to mark as outliers, e.g. the Ritz values
            that separate from the bulk: one down-pointing tick each at the top edge of the
            axes, above its λ. The x range widens to include them.
        band: optional ``(lower, upper)``, two arrays of shape (G,) on ``grid``: an uncertainty
            band of the density (e.g. a percentile band over the draws), shaded between them
            (values below ``floor`` drawn at ``floor``). ``lower <= upper`` everywhere.
        band_label: the band's legend entry, stating its level (default
            ``"95% band over draws"``).

    Returns:
        a ``matplotlib.figure.Figure`` with one Axes (label ``"density"``) holding the density
        line (gid ``"density"``), a vertical line at λ = 0 (gid ``"zero"``) and, with ``stats``,
        the lines ``"lambda_max"`` and ``"lambda_min"``; with ``band`` a PolyCollection (gid
        ``"band"``); with ``outliers`` a line of markers (gid ``"outliers"``, x data the
        outliers, y in axes coordinates). Band and outliers are named in a figure legend
        below the axes.
    """
    grid, density = _check_density_curve(grid, density, "density")
    _check_floor(floor)
    outliers = _check_outliers(outliers, "outliers")
    band = _check_band(band, grid, "band")
    fig = Figure(figsize=_DENSITY_FIGSIZE, layout="constrained")
    ax = fig.add_subplot(label="density")
    ax.set_yscale("log")
    handles = _draw_density_panel(ax, grid, density, floor, band=band, outliers=outliers, band_label=band_label)
    ax.set_xlim(*_lambda_limits([grid], [outliers]))
    ax.set_ylim(bottom=floor)
    ax.set_xlabel(EIGENVALUE_LABEL)
    ax.set_ylabel(DENSITY_LABEL)
    if title is not None:
        ax.set_title(title)
    if stats is not None:
        _mark_extreme_eigenvalues(ax, stats)
        _add_statistics_box(ax, stats)
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize="small")
    return fig


def trajectory_figure(
    densities: Sequence[tuple[int, np.ndarray, np.ndarray]],
    summary: pd.DataFrame,
    *,
    title: str = TRAJECTORY_TITLE,
    floor: float = DEFAULT_DENSITY_FLOOR,
    lr_boundaries: Sequence[int] = (),
    bands: Mapping[int, tuple[np.ndarray, np.ndarray]] | None = None,
    outliers: Mapping[int, Sequence[float]] | None = None,
    band_label: str = DEFAULT_BAND_LABEL,
    lambda_axis: str = "symlog",
    lambda_linthresh: float | None = None,
    step_scale: str = "auto",
) -> Figure:
    """Densities and summary statistics of every checkpoint of a training run.

    The densities are **small multiples**: one panel per step, stacked in step order, on a
    shared symmetric-log λ axis and a shared log density axis. Overlaying every step on one
    axis let step 0's wide spectrum squash the later ones into a spike at 0; a step x λ heat
    map would fix the range but turns the log density into colour, where a reader cannot
    judge a 1e-4 outlier peak against the bulk, nor see an uncertainty band. Panels keep the
    paper's density-vs-λ reading, and the shared symlog axis (linear near 0, logarithmic
    beyond) puts every step on one scale: outliers moving away from the bulk read as a
    growing distance in decades and the shrinking negative mass as the left tail retreating
    towards the λ = 0 line, panel after panel.

    Args:
        densities: a sequence of ``(step, grid, density)``, one entry per checkpoint: the
            training step (int), the grid, shape (G_i,), and the density on it, shape (G_i,) --
            grids may differ between steps. Drawn in increasing step order.
        summary: a ``pandas.DataFrame`` with one row per checkpoint and the columns
            :data:`SUMMARY_COLUMNS` (``step``, ``lambda_max``, ``lambda_min``,
            ``negative_mass``; as in the run's ``summary.csv``). An optional ``test_accuracy``
            column is drawn on a twin axis of the negative-mass panel. Where the summary has
            both ``<column>_lo`` and ``<column>_hi`` (:data:`INTERVAL_SUFFIXES`) for one of
            ``lambda_max``, ``lambda_min``, ``negative_mass``, ``test_accuracy``, that interval
            is drawn as error bars; one without the other is an error. Other columns (e.g.
            ``train_loss``) are ignored.
        title: the figure's title (default ``"Hessian spectrum along training"``).
        floor: float, the smallest density drawn, > 0 (see :func:`density_figure`).
        lr_boundaries: training steps at which the learning rate changes (the config's
            ``training.lr_boundaries``): dashed vertical lines on the summary panels.
        bands: optional mapping step -> ``(lower, upper)``, arrays of that step's grid shape:
            the step's uncertainty band, shaded in its panel (see :func:`density_figure`).
            Steps without an entry get no band; a step not in ``densities`` is an error.
        outliers: optional mapping step -> eigenvalues to mark as outliers in that step's panel.
        band_label: the bands' legend entry (default ``"95% band over draws"``).
        lambda_axis: ``"symlog"`` (default): all panels share one symmetric-log λ axis spanning
            every grid; ``"linear"``: each panel spans its own grid on a linear axis.
        lambda_linthresh: the symlog axis's linear range ±linthresh (eigenvalue units); default:
            1/100 of the smallest half-range ``max(|grid[0]|, |grid[-1]|)`` over the steps,
            rounded down to a power of ten -- the bulk of the latest, narrowest spectrum.
        step_scale: the step axis of the summary panels: ``"auto"`` (default, see
            :func:`step_axis_scale`), ``"linear"``, or ``"log"`` (symlog when step 0 is there).

    Returns:
        a ``matplotlib.figure.Figure`` (suptitle ``title``) of two subfigures, with these Axes
        (all in ``fig.axes``), by label:

        - ``"density_step_{step}"`` (left, one per step in step order, column after column of
          at most 8): the step's density (gid ``"density"``) on a log y axis, titled
          ``"step {step}"``, with the λ = 0 line (gid ``"zero"``) and, where given, the band
          (gid ``"band"``) and the outlier ticks (gid ``"outliers"``).
        - ``"extreme_eigenvalues"`` (top right): ``lambda_max`` and ``|lambda_min|`` against
          step (gids ``"lambda_max"``, ``"abs_lambda_min"``), log y so that their ratio reads as
          a vertical distance; error bars (LineCollections, gids ``"lambda_max_errorbar"``,
          ``"abs_lambda_min_errorbar"``) where the summary has their intervals.
        - ``"negative_mass"`` (bottom right): negative mass against step (gid
          ``"negative_mass"``, error bars ``"negative_mass_errorbar"``), and on a twin axis
          labelled ``"test_accuracy"`` the test accuracy (gid ``"test_accuracy"``, error bars
          ``"test_accuracy_errorbar"``) when the summary has it.

        - ``"gradient_fraction"`` (below them, when the summary has a column of
          :data:`GRADIENT_FRACTION_COLUMNS` with a value): the share of the full-data gradient's
          squared norm in the span of the outliers' and of the top-k Ritz vectors (gids: the
          columns), on [0, 1].

        The summary panels share the step axis (scale per ``step_scale``) and carry one
        dashed line per learning-rate boundary (gid ``"lr_boundary"``). One figure legend,
        below the panels, names the summary lines, the boundaries, the band and the outliers.
    """
    curves = _check_trajectory_densities(densities)
    summary = _check_summary(summary)
    _check_floor(floor)
    steps = [step for step, _, _ in curves]
    step_bands = _check_step_mapping(bands, steps, "bands")
    step_outliers = _check_step_mapping(outliers, steps, "outliers")
    step_bands = {step: _check_band(band, curves[steps.index(step)][1], f"bands[{step}]")
                  for step, band in step_bands.items()}
    step_outliers = {step: _check_outliers(values, f"outliers[{step}]") for step, values in step_outliers.items()}
    boundaries = _check_lr_boundaries(lr_boundaries)
    if lambda_axis not in ("symlog", "linear"):
        raise ValueError(f"lambda_axis must be 'symlog' or 'linear'; got {lambda_axis!r}")
    if lambda_linthresh is not None and not lambda_linthresh > 0:
        raise ValueError(f"lambda_linthresh must be > 0; got {lambda_linthresh!r}")
    scale = step_axis_scale(summary["step"], step_scale)

    ncols = math.ceil(len(curves) / _TRAJECTORY_STEPS_PER_COLUMN)
    nrows = math.ceil(len(curves) / ncols)
    width, min_height = _TRAJECTORY_FIGSIZE
    width += _TRAJECTORY_COLUMN_WIDTH * (ncols - 1)
    height = max(min_height, _TRAJECTORY_PANEL_HEIGHT * nrows + 1.6)
    fig = Figure(figsize=(width, height), layout="constrained")
    density_part, summary_part = fig.subfigures(1, 2, width_ratios=(3 * ncols, 2))

    panel_handles = _draw_step_panels(density_part, curves, nrows, ncols, floor, step_bands, step_outliers,
                                      band_label, lambda_axis, lambda_linthresh)
    fractions = [column for column in GRADIENT_FRACTION_COLUMNS
                 if column in summary.columns and summary[column].notna().any()]
    panels = summary_part.subplots(3 if fractions else 2, 1, sharex=True)
    eigenvalue_ax, negative_mass_ax = panels[:2]
    eigenvalue_ax.set_label("extreme_eigenvalues")
    negative_mass_ax.set_label("negative_mass")
    handles = _draw_extreme_eigenvalues(eigenvalue_ax, summary) + _draw_negative_mass(negative_mass_ax, summary)
    if fractions:
        panels[2].set_label("gradient_fraction")
        handles += _draw_gradient_fractions(panels[2], summary, fractions)
    _set_step_scale(eigenvalue_ax, scale, summary["step"])  # shared with the panels below
    for ax in panels:
        boundary_lines = [ax.axvline(b, gid="lr_boundary", label=LR_BOUNDARY_LABEL, **_LR_BOUNDARY_STYLE)
                          for b in boundaries]
    handles += boundary_lines[:1] + panel_handles
    # At most 5 entries a row: a wider row would overrun a figure of a few steps.
    rows = math.ceil(len(handles) / _TRAJECTORY_LEGEND_COLUMNS)
    fig.legend(handles=handles, loc="outside lower center", ncols=math.ceil(len(handles) / rows), fontsize="small")
    fig.suptitle(title)
    return fig


def step_axis_scale(steps, step_scale: str = "auto") -> str:
    """The scale of a step axis: ``"linear"``, ``"log"`` or ``"symlog"``.

    ``step_scale`` ``"linear"`` gives ``"linear"``; ``"log"`` gives ``"log"``, or ``"symlog"``
    when a step is 0 (linear from 0 to the smallest positive step, so step 0 still shows).
    ``"auto"`` chooses the log axis when the checkpoints are log-spaced, by this rule: the
    distinct positive steps are at least three, span at least a decade (largest / smallest
    >= 10), and are closer to a geometric than to an arithmetic progression -- the
    coefficient of variation (std / mean) of the gaps between their logarithms is smaller
    than that of the gaps between the steps themselves. Evenly spaced steps (gaps all equal,
    coefficient 0) are thus always linear; 1, 2, 4, 8, ... or 1, 2, 5, 10, 20, 50, ... are log.
    """
    if step_scale not in ("auto", "linear", "log"):
        raise ValueError(f"step_scale must be 'auto', 'linear' or 'log'; got {step_scale!r}")
    steps = np.unique(np.asarray(steps, dtype=np.float64))
    positive = steps[steps > 0]
    if step_scale == "auto":
        step_scale = "log" if _log_spaced(positive) else "linear"
    if step_scale == "linear" or not positive.size:
        return "linear"
    return "symlog" if (steps <= 0).any() else "log"


def curvatures_figure(
    step: int,
    curves: Sequence[tuple[str, str, np.ndarray, np.ndarray]],
    *,
    floor: float = DEFAULT_DENSITY_FLOOR,
    bands: Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray]] | None = None,
    outliers: Mapping[tuple[str, str], Sequence[float]] | None = None,
    band_label: str = DEFAULT_BAND_LABEL,
) -> Figure:
    """Every curvature's eigenvalue density at one checkpoint: one panel per block.

    Args:
        step: int, the training step of the checkpoint (the figure's title, ``"step {step}"``).
        curves: a sequence of ``(operator, block, grid, density)``, one per curvature: the
            operator (a key of :data:`OPERATOR_NAMES`: ``"hessian"`` or ``"ggn"``), the block's
            name (str), the grid, shape (G_i,), increasing (eigenvalue units), and the density on
            it, shape (G_i,) (1 / eigenvalue units; below ``floor`` drawn at ``floor``). Grids
            may differ between curvatures. Each (operator, block) at most once.
        floor: float, the smallest density drawn, > 0 (see :func:`density_figure`).
        bands: optional mapping ``(operator, block)`` -> ``(lower, upper)`` on that curvature's
            grid: its uncertainty band (see :func:`density_figure`).
        outliers: optional mapping ``(operator, block)`` -> eigenvalues to mark as outliers.
        band_label: the bands' legend entry (default ``"95% band over draws"``).

    Returns:
        a ``matplotlib.figure.Figure`` with one Axes per block, side by side in the order the
        blocks first appear in ``curves``, each labelled and titled with the block's name. The
        panels share a log y axis; each spans its own curves' grids (and outliers) on x. In
        each panel, one line per operator (gid: the operator; Hessian solid, Gauss-Newton
        dashed, one colour each) and a vertical line at λ = 0 (gid ``"zero"``); where given,
        an operator's band (gid ``"{operator}_band"``) and outlier ticks (gid
        ``"{operator}_outliers"``). One figure legend, right of the panels, names the
        operators (then the band and the outliers, where drawn).
    """
    checked = _check_curvature_curves(curves)
    _check_floor(floor)
    grids = {(operator, block): grid for operator, block, grid, _ in checked}
    curve_bands = {key: _check_band(band, grids[key], f"bands[{key}]")
                   for key, band in _check_curvature_mapping(bands, grids, "bands").items()}
    curve_outliers = {key: _check_outliers(values, f"outliers[{key}]")
                      for key, values in _check_curvature_mapping(outliers, grids, "outliers").items()}
    blocks = list(dict.fromkeys(block for _, block, _, _ in checked))
    width, height = _CURVATURES_PANEL_SIZE
    fig = Figure(figsize=(width * len(blocks) + _CURVATURES_LEGEND_WIDTH, height), layout="constrained")
    panels = fig.subplots(1, len(blocks), sharey=True, squeeze=False)[0]
    legend = {}
    for ax, block in zip(panels, blocks):
        ax.set_label(block)
        ax.set_yscale("log")
        ax.axvline(0.0, gid="zero", **_ZERO_STYLE)
        block_curves = [curve for curve in checked if curve[1] == block]
        for operator, _, grid, density in block_curves:
            style = _OPERATOR_STYLES[operator]
            if (operator, block) in curve_bands:
                _draw_band(ax, grid, *curve_bands[operator, block], floor, color=style["color"],
                           gid=f"{operator}_band", label=band_label)
            (line,) = ax.plot(grid, np.maximum(density, floor), linewidth=1.2, gid=operator,
                              label=OPERATOR_NAMES[operator], **style)
            legend.setdefault(operator, line)
            if (operator, block) in curve_outliers:
                _draw_outliers(ax, curve_outliers[operator, block], color=style["color"], gid=f"{operator}_outliers")
        # Its own x range: the union of its curves' grids and outliers (set last: axvline may widen it).
        ax.set_xlim(*_lambda_limits([grid for _, _, grid, _ in block_curves],
                                    [curve_outliers.get((operator, block), ()) for operator, _, _, _ in block_curves]))
        ax.set_title(block)
        ax.set_xlabel(EIGENVALUE_LABEL)
    panels[0].set_ylim(bottom=floor)
    panels[0].set_ylabel(DENSITY_LABEL)
    ordered = [operator for operator in OPERATOR_NAMES if operator in legend]
    handles = [legend[operator] for operator in ordered]
    labels = [OPERATOR_NAMES[operator] for operator in ordered]
    if curve_bands:  # neutral proxies: one entry whichever operators have a band
        handles.append(Patch(facecolor="0.5", alpha=_BAND_ALPHA, linewidth=0))
        labels.append(band_label)
    if curve_outliers:
        handles.append(Line2D([], [], color="0.3", marker=_OUTLIER_MARKER, linestyle="none"))
        labels.append(OUTLIERS_LABEL)
    fig.legend(handles, labels, loc="outside right upper", fontsize="small")
    fig.suptitle(f"step {step}")
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, dpi: float = 150) -> Path:
    """Render ``fig`` to a PNG at ``path`` atomically, then free the figure.

    The PNG is ``figsize * dpi`` pixels, written through
    :func:`hessflow.artifacts.atomic_write` (a reader never sees a partial
    file; on error ``path`` is untouched and no temporary file remains) and
    without the matplotlib version stamp, so that rendering the same figure
    twice gives identical bytes.

    The figure is consumed, whether or not the write succeeds: it is closed
    in :mod:`matplotlib.pyplot` if pyplot manages it, and cleared so that its
    artists and data can be garbage-collected. Returns ``Path(path)``.
    """
    path = Path(path)
    try:
        with atomic_write(path) as temporary_path:
            # The temporary name does not end in ".png": give the format.
            fig.savefig(temporary_path, format="png", dpi=dpi, metadata=_REPRODUCIBLE_PNG_METADATA)
    finally:
        _release(fig)
    return path


# --- density panels ----------------------------------------------------------


def _draw_density_panel(ax: Axes, grid: np.ndarray, density: np.ndarray, floor: float, *,
                        band: tuple[np.ndarray, np.ndarray] | None, outliers: np.ndarray, band_label: str,
                        color: str = "C0", linewidth: float = 1.2) -> list:
    """λ = 0 line, band, density line and outlier ticks on a log-y ``ax``; the legend handles
    of the band and the outliers where drawn."""
    handles = []
    ax.axvline(0.0, gid="zero", **_ZERO_STYLE)
    if band is not None:
        handles.append(_draw_band(ax, grid, *band, floor, color=color, gid="band", label=band_label))
    ax.plot(grid, np.maximum(density, floor), color=color, linewidth=linewidth, gid="density")
    if outliers.size:
        handles.append(_draw_outliers(ax, outliers, color="0.2", gid="outliers"))
    return handles


def _draw_band(ax: Axes, grid: np.ndarray, lower: np.ndarray, upper: np.ndarray, floor: float, *, color: str,
               gid: str, label: str):
    """The band between ``lower`` and ``upper`` (each at least ``floor``), shaded."""
    return ax.fill_between(grid, np.maximum(lower, floor), np.maximum(upper, floor), color=color,
                           alpha=_BAND_ALPHA, linewidth=0, gid=gid, label=label)


def _draw_outliers(ax: Axes, outliers: np.ndarray, *, color: str, gid: str) -> Line2D:
    """A down-pointing tick at the top edge of ``ax`` above each outlier λ (y in axes units)."""
    (line,) = ax.plot(outliers, np.ones_like(outliers), transform=ax.get_xaxis_transform(),
                      marker=_OUTLIER_MARKER, markersize=11, linestyle="none", color=color, clip_on=False,
                      gid=gid, label=OUTLIERS_LABEL)
    return line


def _lambda_limits(grids: Sequence[np.ndarray], outliers: Sequence[np.ndarray]) -> tuple[float, float]:
    """The λ range spanning every grid and every outlier."""
    values = [grid[[0, -1]] for grid in grids] + [np.asarray(o, dtype=np.float64) for o in outliers]
    values = np.concatenate(values)
    return float(values.min()), float(values.max())


def _mark_extreme_eigenvalues(ax: Axes, stats: Mapping[str, float]) -> None:
    """Thin vertical lines at ``stats["lambda_max"]`` and ``stats["lambda_min"]``, where given."""
    for key in ("lambda_max", "lambda_min"):
        if key in stats:
            ax.axvline(float(stats[key]), color="0.35", linestyle=":", linewidth=0.8, gid=key)


def _add_statistics_box(ax: Axes, stats: Mapping[str, float]) -> None:
    """A small text box in the upper right corner listing the known statistics."""
    lines = _statistics_lines(stats)
    if not lines:
        return
    ax.text(
        0.98,
        0.97,
        "\n".join(lines),
        transform=ax.transAxes,
        horizontalalignment="right",
        verticalalignment="top",
        fontsize="small",
        bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "0.7", "alpha": 0.85},
        gid="statistics",
    )


def _statistics_lines(stats: Mapping[str, float]) -> list[str]:
    """One ``"label = value"`` line per statistic in ``_STATISTIC_LABELS`` present in ``stats``."""
    lines = []
    for key, label in _STATISTIC_LABELS.items():
        if key not in stats:
            continue
        line = f"{label} = {float(stats[key]):.4g}"
        if key == "negative_mass" and "negative_cutoff" in stats:
            line += rf"  ($\lambda < {-float(stats['negative_cutoff']):.2g}$)"
        lines.append(line)
    return lines


# --- trajectory figure -------------------------------------------------------


def _draw_step_panels(part: FigureBase, curves: list[tuple[int, np.ndarray, np.ndarray]], nrows: int, ncols: int,
                      floor: float, bands: Mapping, outliers: Mapping, band_label: str, lambda_axis: str,
                      linthresh: float | None) -> list:
    """One log-y density panel per step in ``part``, column-major; the legend handles of the
    first band and the first outliers drawn."""
    shared = lambda_axis == "symlog"
    slots = part.add_gridspec(nrows, ncols)
    panels, handles = [], {}
    for index, (step, grid, density) in enumerate(curves):
        row, column = index % nrows, index // nrows  # down the first column, then the next
        first = panels[0] if panels else None
        ax = part.add_subplot(slots[row, column], label=f"density_step_{step}", sharex=first if shared else None,
                              sharey=first)
        panels.append(ax)
        if column > 0:
            ax.tick_params(labelleft=False)
        if shared and row < nrows - 1 and index < len(curves) - 1:
            ax.tick_params(labelbottom=False)  # one λ scale under each column
        ax.set_yscale("log")
        for handle in _draw_density_panel(ax, grid, density, floor, band=bands.get(step),
                                          outliers=outliers.get(step, np.empty(0)), band_label=band_label,
                                          linewidth=1.0):
            handles.setdefault(handle.get_gid(), handle)
        ax.set_title(f"step {step}", loc="left", fontsize="small", pad=2)
        ax.tick_params(labelsize="small")
        if not shared:
            ax.set_xlim(*_lambda_limits([grid], [outliers.get(step, ())]))
    first = panels[0]
    first.set_ylim(bottom=floor)
    first.yaxis.set_major_locator(LogLocator(base=10.0, numticks=4))
    first.yaxis.set_minor_locator(NullLocator())
    if shared:
        threshold = _lambda_linthresh([grid for _, grid, _ in curves]) if linthresh is None else float(linthresh)
        first.set_xscale("symlog", linthresh=threshold, linscale=1.0)
        first.set_xlim(*_lambda_limits([grid for _, grid, _ in curves], list(outliers.values())))
    part.supxlabel(EIGENVALUE_LABEL + (" (symmetric log scale)" if shared else ""), fontsize="medium")
    part.supylabel(DENSITY_LABEL, fontsize="medium")
    return [handles[gid] for gid in ("band", "outliers") if gid in handles]


def _lambda_linthresh(grids: Sequence[np.ndarray]) -> float:
    """1/100 of the smallest half-range max(|grid[0]|, |grid[-1]|), rounded down to a power of 10."""
    half_range = min(float(np.abs(grid[[0, -1]]).max()) for grid in grids)
    threshold = _LAMBDA_LINTHRESH_FRACTION * half_range
    if not threshold > 0:
        return 1.0
    return float(10.0 ** math.floor(math.log10(threshold)))


def _log_spaced(positive: np.ndarray) -> bool:
    """Whether distinct positive steps are log-spaced (rule in :func:`step_axis_scale`)."""
    if positive.size < 3 or positive[-1] / positive[0] < _LOG_STEPS_MIN_SPAN:
        return False
    return _variation(np.diff(np.log(positive))) < _variation(np.diff(positive))


def _variation(gaps: np.ndarray) -> float:
    """Coefficient of variation (std / mean) of positive gaps."""
    return float(np.std(gaps) / np.mean(gaps))


def _set_step_scale(ax: Axes, scale: str, steps: pd.Series) -> None:
    """The step axis scale; a symlog axis is linear up to the smallest positive step."""
    if scale == "symlog":
        ax.set_xscale("symlog", linthresh=float(steps[steps > 0].min()), linscale=0.5)
    else:
        ax.set_xscale(scale)


def _draw_interval(ax: Axes, steps: pd.Series, lower, upper, *, color: str, gid: str) -> None:
    """Error bars: a vertical segment from ``lower`` to ``upper`` at each step."""
    ax.vlines(steps, lower, upper, colors=color, linewidth=1.4, alpha=0.6, gid=gid)


def _interval(summary: pd.DataFrame, column: str) -> tuple[pd.Series, pd.Series] | None:
    """``(column_lo, column_hi)`` from ``summary`` when it has both, else None."""
    low, high = (f"{column}{suffix}" for suffix in INTERVAL_SUFFIXES)
    if low in summary.columns and high in summary.columns:
        return summary[low], summary[high]
    return None


def _draw_extreme_eigenvalues(ax: Axes, summary: pd.DataFrame) -> list:
    """``lambda_max`` and ``|lambda_min|`` against step, log y (non-positive values masked),
    with their error bars; the two lines, for the legend."""
    steps = summary["step"]
    handles = ax.plot(
        steps,
        summary["lambda_max"],
        marker="o",
        markersize=3,
        color="C0",
        gid="lambda_max",
        label=r"$\lambda_{\max}$",
    )
    handles += ax.plot(
        steps,
        summary["lambda_min"].abs(),
        marker="s",
        markersize=3,
        color="C1",
        gid="abs_lambda_min",
        label=r"$|\lambda_{\min}|$",
    )
    if (interval := _interval(summary, "lambda_max")) is not None:
        _draw_interval(ax, steps, *interval, color="C0", gid="lambda_max_errorbar")
    if (interval := _interval(summary, "lambda_min")) is not None:
        low, high = (np.asarray(bound, dtype=np.float64) for bound in interval)
        # |λ| over [low, high]: from 0 when the interval holds 0, else from the nearer end.
        abs_low = np.where(low * high <= 0, 0.0, np.minimum(np.abs(low), np.abs(high)))
        _draw_interval(ax, steps, abs_low, np.maximum(np.abs(low), np.abs(high)), color="C1",
                       gid="abs_lambda_min_errorbar")
    ax.set_yscale("log", nonpositive="mask")
    ax.set_ylabel("eigenvalue")
    ax.tick_params(labelbottom=False)
    return handles


def _draw_gradient_fractions(ax: Axes, summary: pd.DataFrame, columns: Sequence[str]) -> list:
    """The gradient's share of the top Ritz vectors' span against step (Ghorbani et al. 2019, §4),
    one line per column of :data:`GRADIENT_FRACTION_COLUMNS` present. The lines, for the legend."""
    handles = []
    for column in columns:
        handles += ax.plot(summary["step"], summary[column], gid=column, label=GRADIENT_FRACTION_LABELS[column],
                           **_GRADIENT_FRACTION_STYLES[column])
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel("gradient share")
    return handles


def _draw_negative_mass(ax: Axes, summary: pd.DataFrame) -> list:
    """Negative mass against step, with error bars; test accuracy on a twin y axis when the
    summary has it. The lines, for the legend."""
    steps = summary["step"]
    handles = ax.plot(
        steps,
        summary["negative_mass"],
        marker="o",
        markersize=3,
        color="C3",
        gid="negative_mass",
        label="negative mass",
    )
    if (interval := _interval(summary, "negative_mass")) is not None:
        _draw_interval(ax, steps, *interval, color="C3", gid="negative_mass_errorbar")
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel("negative mass")
    if "test_accuracy" in summary.columns and summary["test_accuracy"].notna().any():
        accuracy_ax = ax.twinx()
        accuracy_ax.set_label("test_accuracy")
        handles += accuracy_ax.plot(
            steps,
            summary["test_accuracy"],
            marker="^",
            markersize=3,
            color="C2",
            linestyle="--",
            gid="test_accuracy",
            label="test accuracy",
        )
        if (interval := _interval(summary, "test_accuracy")) is not None:
            _draw_interval(accuracy_ax, steps, *interval, color="C2", gid="test_accuracy_errorbar")
        accuracy_ax.set_ylabel("test accuracy")
    return handles


# --- validation and resources ------------------------------------------------


def _check_density_curve(grid, density, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``grid`` and ``density`` as finite float64 (G,) arrays of equal shape, G >= 2."""
    grid = np.asarray(grid, dtype=np.float64)
    density = np.asarray(density, dtype=np.float64)
    if grid.ndim != 1 or grid.size < 2:
        raise ValueError(f"{name}: grid must be 1-D with at least 2 points; got shape {grid.shape}")
    if density.shape != grid.shape:
        raise ValueError(f"{name}: density shape {density.shape} != grid shape {grid.shape}")
    if not (np.isfinite(grid).all() and np.isfinite(density).all()):
        raise ValueError(f"{name}: grid and density must be finite (no NaN or Inf)")
    return grid, density


def _check_floor(floor: float) -> None:
    if not floor > 0:
        raise ValueError(f"floor must be > 0 for a log axis; got {floor!r}")


def _check_trajectory_densities(densities) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """``densities`` as a non-empty list of checked (step, grid, density), sorted by step."""
    curves = [
        (int(step), *_check_density_curve(grid, density, f"density at step {step}"))
        for step, grid, density in densities
    ]
    if not curves:
        raise ValueError("densities is empty: need at least one (step, grid, density)")
    return sorted(curves, key=lambda curve: curve[0])


def _check_curvature_curves(curves) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """``curves`` as a non-empty list of checked (operator, block, grid, density), each pair once."""
    checked, seen = [], set()
    for operator, block, grid, density in curves:
        if operator not in OPERATOR_NAMES:
            raise ValueError(f"curves: unknown operator {operator!r}; use one of {sorted(OPERATOR_NAMES)}")
        if (operator, block) in seen:
            raise ValueError(f"curves: the curvature ({operator!r}, {block!r}) is given twice; give each once")
        seen.add((operator, block))
        checked.append((operator, str(block),
                        *_check_density_curve(grid, density, f"density of {operator} on block {block}")))
    if not checked:
        raise ValueError("curves is empty: need at least one (operator, block, grid, density)")
    return checked


def _check_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """``summary`` sorted by step, after checking it has :data:`SUMMARY_COLUMNS` and that every
    interval it has is complete (``<column>_lo`` with ``<column>_hi``)."""
    missing = [column for column in SUMMARY_COLUMNS if column not in summary.columns]
    if missing:
        raise ValueError(f"summary lacks the column(s) {missing}; it needs {list(SUMMARY_COLUMNS)}")
    low, high = INTERVAL_SUFFIXES
    for column in (*SUMMARY_COLUMNS[1:], "test_accuracy"):
        present = [f"{column}{suffix}" in summary.columns for suffix in INTERVAL_SUFFIXES]
        if any(present) and not all(present):
            have, lack = (low, high) if present[0] else (high, low)
            raise ValueError(f"summary has {column}{have} but not {column}{lack}: an interval needs both")
    return summary.sort_values("step", kind="stable").reset_index(drop=True)


def _check_outliers(outliers, name: str) -> np.ndarray:
    """``outliers`` as a finite float64 (K,) array (K may be 0)."""
    values = np.asarray(outliers, dtype=np.float64).reshape(-1) if np.ndim(outliers) <= 1 else None
    if values is None:
        raise ValueError(f"{name}: outliers must be a sequence of eigenvalues; got shape {np.shape(outliers)}")
    if not np.isfinite(values).all():
        raise ValueError(f"{name}: outliers must be finite (no NaN or Inf); got {values.tolist()}")
    return values


def _check_band(band, grid: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``band`` as two finite float64 arrays of ``grid``'s shape with lower <= upper, or None."""
    if band is None:
        return None
    if len(band) != 2:
        raise ValueError(f"{name}: a band is (lower, upper); got {len(band)} arrays")
    lower, upper = (np.asarray(bound, dtype=np.float64) for bound in band)
    for bound, which in ((lower, "lower"), (upper, "upper")):
        if bound.shape != grid.shape:
            raise ValueError(f"{name}: {which} bound shape {bound.shape} != grid shape {grid.shape}")
        if not np.isfinite(bound).all():
            raise ValueError(f"{name}: the {which} bound must be finite (no NaN or Inf)")
    if (lower > upper).any():
        where = int(np.argmax(lower > upper))
        raise ValueError(f"{name}: lower bound above upper bound at grid point {where} "
                         f"(λ = {grid[where]:.4g}: {lower[where]:.4g} > {upper[where]:.4g})")
    return lower, upper


def _check_step_mapping(mapping, steps: Sequence[int], name: str) -> dict:
    """``mapping`` (step -> value, or None) with int keys, each a step of ``densities``."""
    if mapping is None:
        return {}
    checked = {int(step): value for step, value in mapping.items()}
    unknown = sorted(set(checked) - set(steps))
    if unknown:
        raise ValueError(f"{name}: step(s) {unknown} have no density; the densities' steps are {sorted(steps)}")
    return checked


def _check_curvature_mapping(mapping, curvatures: Mapping, name: str) -> dict:
    """``mapping`` ((operator, block) -> value, or None), each key a curvature of ``curves``."""
    if mapping is None:
        return {}
    checked = {(str(operator), str(block)): value for (operator, block), value in mapping.items()}
    unknown = [key for key in checked if key not in curvatures]
    if unknown:
        raise ValueError(f"{name}: curvature(s) {unknown} are not in curves; those are {list(curvatures)}")
    return checked


def _check_lr_boundaries(lr_boundaries) -> list[float]:
    """``lr_boundaries`` as a list of finite, non-negative steps."""
    boundaries = [float(b) for b in lr_boundaries]
    bad = [b for b in boundaries if not (math.isfinite(b) and b >= 0)]
    if bad:
        raise ValueError(f"lr_boundaries must be finite, non-negative training steps; got {list(lr_boundaries)}")
    return boundaries


def _release(fig: Figure) -> None:
    """Close ``fig`` in pyplot if pyplot is loaded (without importing it), then clear it."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close(fig)
    fig.clear()
