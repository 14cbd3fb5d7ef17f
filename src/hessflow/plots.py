"""Figures of curvature eigenvalue densities: one checkpoint, along training, and several
curvatures (operators and blocks) of one checkpoint side by side.

The style follows Ghorbani, Krishnan & Xiao (ICML 2019): the density is drawn
on a **logarithmic** y axis against the eigenvalue, because the interesting
features -- outlier eigenvalues far from the bulk and the small negative
mass -- sit many orders of magnitude below the peak at zero.

Figures are built as :class:`matplotlib.figure.Figure` objects directly, not
through :mod:`matplotlib.pyplot`: no global figure state, no GUI backend, and
nothing to configure before importing this module. :func:`save_figure` renders
with Agg into a PNG, written atomically and without the matplotlib version
in its metadata, so that the same figure renders to the same bytes.

Each Axes carries a label (``Axes.get_label()``) naming its panel, and each
data line a ``gid`` naming its quantity, so that scripts and tests can find
them without relying on drawing order.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from hessflow.artifacts import atomic_write

__all__ = [
    "DEFAULT_DENSITY_FLOOR",
    "OPERATOR_NAMES",
    "SUMMARY_COLUMNS",
    "curvatures_figure",
    "density_figure",
    "save_figure",
    "trajectory_figure",
]

#: Density values below this are drawn at this value, so the log axis works
#: where the smoothed density underflows to 0 (1/eigenvalue units).
DEFAULT_DENSITY_FLOOR = 1e-8

#: Columns :func:`trajectory_figure` needs in its ``summary`` table.
SUMMARY_COLUMNS = ("step", "lambda_max", "lambda_min", "negative_mass")

TRAJECTORY_TITLE = "Hessian spectrum along training"
EIGENVALUE_LABEL = "eigenvalue λ"
DENSITY_LABEL = "density (log scale)"
STEP_LABEL = "training step"

#: How figures name each curvature operator (``hessian.operator`` in the config).
OPERATOR_NAMES = {"hessian": "Hessian", "ggn": "Gauss-Newton"}
# How the curvatures figure draws each operator's density: Hessian solid, GGN dashed.
_OPERATOR_STYLES = {"hessian": {"color": "C0", "linestyle": "-"}, "ggn": {"color": "C1", "linestyle": "--"}}

# Sizes in inches; multiplied by the dpi of save_figure they give whole pixels.
_DENSITY_FIGSIZE = (6.4, 4.0)
_TRAJECTORY_FIGSIZE = (12.8, 6.0)
_CURVATURES_PANEL_SIZE = (4.0, 4.0)  # one block's panel
_CURVATURES_LEGEND_WIDTH = 1.6  # the legend, right of the panels

_STEP_COLORMAP = "viridis"

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

    Returns:
        a ``matplotlib.figure.Figure`` with one Axes (label ``"density"``) holding the density
        line (gid ``"density"``) and, with ``stats``, the lines ``"lambda_max"`` and
        ``"lambda_min"``.
    """
    grid, density = _check_density_curve(grid, density, "density")
    _check_floor(floor)
    fig = Figure(figsize=_DENSITY_FIGSIZE, layout="constrained")
    ax = fig.add_subplot(label="density")
    ax.set_yscale("log")
    ax.plot(grid, np.maximum(density, floor), color="C0", linewidth=1.2, gid="density")
    ax.set_xlim(grid[0], grid[-1])
    ax.set_ylim(bottom=floor)
    ax.set_xlabel(EIGENVALUE_LABEL)
    ax.set_ylabel(DENSITY_LABEL)
    if title is not None:
        ax.set_title(title)
    if stats is not None:
        _mark_extreme_eigenvalues(ax, stats)
        _add_statistics_box(ax, stats)
    return fig


def trajectory_figure(
    densities: Sequence[tuple[int, np.ndarray, np.ndarray]],
    summary: pd.DataFrame,
    *,
    title: str = TRAJECTORY_TITLE,
    floor: float = DEFAULT_DENSITY_FLOOR,
) -> Figure:
    """Densities and summary statistics of every checkpoint of a training run.

    Args:
        densities: a sequence of ``(step, grid, density)``, one entry per checkpoint: the
            training step (int), the grid, shape (G_i,), and the density on it, shape (G_i,) --
            grids may differ between steps. Drawn in increasing step order.
        summary: a ``pandas.DataFrame`` with one row per checkpoint and the columns
            :data:`SUMMARY_COLUMNS` (``step``, ``lambda_max``, ``lambda_min``,
            ``negative_mass``; as in the run's ``summary.csv``). An optional ``test_accuracy``
            column is drawn on a twin axis of the negative-mass panel; other columns (e.g.
            ``train_loss``, ``test_loss``) are ignored.
        title: the figure's title (default ``"Hessian spectrum along training"``).
        floor: float, the smallest density drawn, > 0 (see :func:`density_figure`).

    Returns:
        a ``matplotlib.figure.Figure`` with these Axes, by label:

        - ``"densities"`` (left, full height): all densities on a log y axis, one line per step
          (gid ``"density_step_{step}"``), coloured by step (viridis), with a colour bar.
        - ``"extreme_eigenvalues"`` (top right): ``lambda_max`` and ``|lambda_min|`` against
          step (gids ``"lambda_max"``, ``"abs_lambda_min"``), log y so that their ratio reads as
          a vertical distance.
        - ``"negative_mass"`` (bottom right): negative mass against step (gid
          ``"negative_mass"``), and on a twin axis labelled ``"test_accuracy"`` the test
          accuracy (gid ``"test_accuracy"``) when the summary has it.
    """
    curves = _check_trajectory_densities(densities)
    summary = _check_summary(summary)
    _check_floor(floor)

    fig = Figure(figsize=_TRAJECTORY_FIGSIZE, layout="constrained")
    panels = fig.add_gridspec(nrows=2, ncols=2, width_ratios=(3, 2))
    density_ax = fig.add_subplot(panels[:, 0], label="densities")
    eigenvalue_ax = fig.add_subplot(panels[0, 1], label="extreme_eigenvalues")
    negative_mass_ax = fig.add_subplot(panels[1, 1], label="negative_mass", sharex=eigenvalue_ax)

    _draw_density_overlay(density_ax, curves, floor)
    _draw_extreme_eigenvalues(eigenvalue_ax, summary)
    _draw_negative_mass(negative_mass_ax, summary)
    fig.suptitle(title)
    return fig


def curvatures_figure(
    step: int,
    curves: Sequence[tuple[str, str, np.ndarray, np.ndarray]],
    *,
    floor: float = DEFAULT_DENSITY_FLOOR,
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

    Returns:
        a ``matplotlib.figure.Figure`` with one Axes per block, side by side in the order the
        blocks first appear in ``curves``, each labelled and titled with the block's name. The
        panels share a log y axis; each spans its own curves' grids on x. In each panel, one
        line per operator (gid: the operator; Hessian solid, Gauss-Newton dashed, one colour
        each) and a vertical line at λ = 0 (gid ``"zero"``). One figure legend, right of the
        panels, names the operators.
    """
    checked = _check_curvature_curves(curves)
    _check_floor(floor)
    blocks = list(dict.fromkeys(block for _, block, _, _ in checked))
    width, height = _CURVATURES_PANEL_SIZE
    fig = Figure(figsize=(width * len(blocks) + _CURVATURES_LEGEND_WIDTH, height), layout="constrained")
    panels = fig.subplots(1, len(blocks), sharey=True, squeeze=False)[0]
    legend = {}
    for ax, block in zip(panels, blocks):
        ax.set_label(block)
        ax.set_yscale("log")
        ax.axvline(0.0, color="0.5", linestyle=":", linewidth=0.8, gid="zero")
        block_curves = [curve for curve in checked if curve[1] == block]
        for operator, _, grid, density in block_curves:
            (line,) = ax.plot(grid, np.maximum(density, floor), linewidth=1.2, gid=operator,
                              label=OPERATOR_NAMES[operator], **_OPERATOR_STYLES[operator])
            legend.setdefault(operator, line)
        # Its own x range: the union of its curves' grids (set last: axvline may widen it).
        ax.set_xlim(min(grid[0] for _, _, grid, _ in block_curves), max(grid[-1] for _, _, grid, _ in block_curves))
        ax.set_title(block)
        ax.set_xlabel(EIGENVALUE_LABEL)
    panels[0].set_ylim(bottom=floor)
    panels[0].set_ylabel(DENSITY_LABEL)
    ordered = [operator for operator in OPERATOR_NAMES if operator in legend]
    fig.legend([legend[operator] for operator in ordered], [OPERATOR_NAMES[operator] for operator in ordered],
               loc="outside right upper", fontsize="small")
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


# --- density figure ----------------------------------------------------------


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


def _draw_density_overlay(ax: Axes, curves: list[tuple[int, np.ndarray, np.ndarray]], floor: float) -> None:
    """All steps' densities on one log-y Axes, coloured by step, with a colour bar."""
    steps = [step for step, _, _ in curves]
    step_norm = Normalize(vmin=min(steps), vmax=max(steps))
    colormap = colormaps[_STEP_COLORMAP]
    ax.set_yscale("log")
    for step, grid, density in curves:
        ax.plot(
            grid,
            np.maximum(density, floor),
            color=colormap(step_norm(step)),
            linewidth=1.0,
            gid=f"density_step_{step}",
        )
    ax.set_ylim(bottom=floor)
    ax.set_xlabel(EIGENVALUE_LABEL)
    ax.set_ylabel(DENSITY_LABEL)
    step_scale = ScalarMappable(norm=step_norm, cmap=colormap)
    ax.figure.colorbar(step_scale, ax=ax, label=STEP_LABEL)


def _draw_extreme_eigenvalues(ax: Axes, summary: pd.DataFrame) -> None:
    """``lambda_max`` and ``|lambda_min|`` against step, log y (non-positive values masked)."""
    steps = summary["step"]
    ax.plot(
        steps,
        summary["lambda_max"],
        marker="o",
        markersize=3,
        gid="lambda_max",
        label=r"$\lambda_{\max}$",
    )
    ax.plot(
        steps,
        summary["lambda_min"].abs(),
        marker="s",
        markersize=3,
        gid="abs_lambda_min",
        label=r"$|\lambda_{\min}|$",
    )
    ax.set_yscale("log", nonpositive="mask")
    ax.set_ylabel("eigenvalue")
    ax.legend(fontsize="small")
    ax.tick_params(labelbottom=False)


def _draw_negative_mass(ax: Axes, summary: pd.DataFrame) -> None:
    """Negative mass against step; test accuracy on a twin y axis when the summary has it."""
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
        accuracy_ax.set_ylabel("test accuracy")
    ax.legend(handles=handles, fontsize="small")


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
    """``summary`` sorted by step, after checking it has :data:`SUMMARY_COLUMNS`."""
    missing = [column for column in SUMMARY_COLUMNS if column not in summary.columns]
    if missing:
        raise ValueError(f"summary lacks the column(s) {missing}; it needs {list(SUMMARY_COLUMNS)}")
    return summary.sort_values("step", kind="stable").reset_index(drop=True)


def _release(fig: Figure) -> None:
    """Close ``fig`` in pyplot if pyplot is loaded (without importing it), then clear it."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close(fig)
    fig.clear()
