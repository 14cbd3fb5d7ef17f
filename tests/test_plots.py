"""Density, trajectory and curvatures figures, and their atomic, reproducible PNG output."""

from __future__ import annotations

import subprocess
import sys

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection, PolyCollection

from hessflow.plots import (
    DEFAULT_BAND_LABEL,
    curvatures_figure,
    density_figure,
    save_figure,
    step_axis_scale,
    trajectory_figure,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

STATS = {
    "lambda_max": 9.0,
    "lambda_min": -0.5,
    "trace": 12.3,
    "negative_mass": 0.023,
    "negative_cutoff": 0.0095,
    "num_draws": 3,  # summarize() returns more keys than are shown: ignored
}


def bulk_and_outlier_density(grid_len=500):
    """A density like a network Hessian's: a bulk at 0 and a small outlier at 9; shapes (G,), (G,)."""
    grid = np.linspace(-1.0, 10.0, grid_len)
    density = np.exp(-(grid**2) / 0.02) + 1e-3 * np.exp(-((grid - 9.0) ** 2) / 0.02)
    return grid, density / (density.sum() * (grid[1] - grid[0]))


def training_summary(steps=(0, 100, 200), with_accuracy=False):
    summary = pd.DataFrame(
        {
            "step": list(steps),
            "lambda_max": [1.0 + 4.0 * i for i in range(len(steps))],
            "lambda_min": [-2.0 / (i + 1) for i in range(len(steps))],
            "negative_mass": [0.2 / (i + 1) for i in range(len(steps))],
            "train_loss": [2.3 / (i + 1) for i in range(len(steps))],
        }
    )
    if with_accuracy:
        summary["test_accuracy"] = [0.1 + 0.3 * i for i in range(len(steps))]
    return summary


def training_densities(steps=(0, 100, 200)):
    grid, density = bulk_and_outlier_density()
    return [(step, grid, density * (1.0 + step / 100.0)) for step in steps]


def axes_by_label(fig):
    return {ax.get_label(): ax for ax in fig.axes}


def line_by_gid(ax, gid):
    (line,) = [line for line in ax.get_lines() if line.get_gid() == gid]
    return line


def collection_by_gid(ax, gid):
    (collection,) = [collection for collection in ax.collections if collection.get_gid() == gid]
    return collection


def band_around(density):
    """A band (lower, upper) of ``density``, kept above the drawing floor so it is drawn as given."""
    return np.maximum(0.5 * density, 1e-6), 2.0 * density + 1e-6


def assert_band_spans(band, grid, lower, upper):
    """``band`` (the PolyCollection of fill_between) has a vertex at (grid, lower) and (grid, upper) for
    every grid point, and no vertex outside those bounds."""
    assert isinstance(band, PolyCollection)
    (path,) = band.get_paths()
    vertices = path.vertices
    for bound in (lower, upper):
        expected = np.column_stack([grid, bound])
        assert (np.abs(vertices[None, :, :] - expected[:, None, :]).max(axis=2).min(axis=1) < 1e-12).all()
    extents = path.get_extents()
    assert (extents.x0, extents.x1) == (grid[0], grid[-1])
    np.testing.assert_allclose((extents.y0, extents.y1), (lower.min(), upper.max()))


def assert_legends_outside_the_axes(fig):
    """Every legend is a figure legend, and once laid out none overlaps a data Axes."""
    assert all(ax.get_legend() is None for ax in fig.axes)
    assert fig.legends
    fig.draw_without_rendering()
    for legend in fig.legends:
        box = legend.get_window_extent()
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent()), ax.get_label()


def density_panels(fig):
    return [ax for ax in fig.axes if ax.get_label().startswith("density_step_")]


# --- density_figure ----------------------------------------------------------


def test_saved_density_figure_is_png_of_figsize_times_dpi(tmp_path):
    fig = density_figure(*bulk_and_outlier_density(), title="step 100", stats=STATS)
    expected_width, expected_height = np.round(fig.get_size_inches() * 100).astype(int)
    path = save_figure(fig, tmp_path / "density.png", dpi=100)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[:2] == (expected_height, expected_width)


def test_density_figure_y_axis_is_log_scaled():
    (ax,) = density_figure(*bulk_and_outlier_density()).axes
    assert ax.get_yscale() == "log"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("eigenvalue λ", "density (log scale)")


def test_density_figure_marks_lambda_max_and_lambda_min_with_vertical_lines():
    (ax,) = density_figure(*bulk_and_outlier_density(), stats=STATS).axes
    for key in ("lambda_max", "lambda_min"):
        np.testing.assert_array_equal(line_by_gid(ax, key).get_xdata(), [STATS[key], STATS[key]])


def test_density_figure_without_stats_draws_only_the_density_and_the_zero_line():
    fig = density_figure(*bulk_and_outlier_density())
    (ax,) = fig.axes
    assert [line.get_gid() for line in ax.get_lines()] == ["zero", "density"]
    assert len(ax.texts) == 0 and len(ax.collections) == 0 and fig.legends == []


def test_density_figure_marks_lambda_zero_and_keeps_the_grid_range():
    grid, density = bulk_and_outlier_density()
    (ax,) = density_figure(grid, density).axes
    np.testing.assert_array_equal(line_by_gid(ax, "zero").get_xdata(), [0.0, 0.0])
    assert ax.get_xlim() == (grid[0], grid[-1])


def test_density_figure_shades_the_band_as_given_and_names_its_level_outside_the_axes():
    grid, density = bulk_and_outlier_density()
    lower, upper = band_around(density)
    fig = density_figure(grid, density, band=(lower, upper), band_label="90% band over 5 draws")
    (ax,) = fig.axes
    assert_band_spans(collection_by_gid(ax, "band"), grid, lower, upper)
    (legend,) = fig.legends
    assert [text.get_text() for text in legend.get_texts()] == ["90% band over 5 draws"]
    assert_legends_outside_the_axes(fig)


def test_density_figure_band_label_defaults_to_the_95_percent_band():
    grid, density = bulk_and_outlier_density()
    fig = density_figure(grid, density, band=band_around(density))
    assert [text.get_text() for text in fig.legends[0].get_texts()] == [DEFAULT_BAND_LABEL]


def test_density_figure_marks_outliers_at_the_top_edge_above_their_eigenvalues():
    grid, density = bulk_and_outlier_density()
    outliers = [9.0, 10.5]  # the second lies beyond the grid: the x range widens to show it
    fig = density_figure(grid, density, outliers=outliers)
    (ax,) = fig.axes
    marks = line_by_gid(ax, "outliers")
    np.testing.assert_array_equal(marks.get_xdata(), outliers)
    np.testing.assert_array_equal(marks.get_ydata(), [1.0, 1.0])  # axes coordinates: the top edge
    assert marks.get_transform() == ax.get_xaxis_transform()
    assert marks.get_linestyle() == "None"
    assert ax.get_xlim() == (grid[0], 10.5)
    assert [text.get_text() for text in fig.legends[0].get_texts()] == ["outlier eigenvalues"]


@pytest.mark.parametrize(("band", "message"), [
    ((np.zeros(499), np.ones(499)), "lower bound shape"),
    ((np.ones(500), np.zeros(500)), "lower bound above upper bound at grid point 0"),
    ((np.zeros(500), np.full(500, np.nan)), "upper bound must be finite"),
    ((np.zeros(500),), r"a band is \(lower, upper\)"),
])
def test_density_figure_rejects_a_bad_band_by_name(band, message):
    with pytest.raises(ValueError, match=message):
        density_figure(*bulk_and_outlier_density(), band=band)


def test_density_figure_rejects_non_finite_outliers():
    with pytest.raises(ValueError, match="outliers must be finite"):
        density_figure(*bulk_and_outlier_density(), outliers=[1.0, np.inf])


def test_density_figure_lists_statistics_in_a_text_box():
    (ax,) = density_figure(*bulk_and_outlier_density(), stats=STATS).axes
    (text_box,) = ax.texts
    text = text_box.get_text()
    assert "= 9" in text and "= -0.5" in text and "trace = 12.3" in text
    assert "negative mass = 0.023" in text and "-0.0095" in text
    assert "num_draws" not in text


def test_non_positive_density_is_drawn_at_floor():
    grid, density = bulk_and_outlier_density()
    density[:50] = 0.0
    density[50] = -1e-17  # rounding negatives must not break the log axis either
    floor = 1e-9
    (ax,) = density_figure(grid, density, floor=floor).axes
    drawn = line_by_gid(ax, "density").get_ydata()
    assert drawn.min() == floor
    above_floor = density >= floor
    np.testing.assert_array_equal(drawn[above_floor], density[above_floor])  # untouched
    assert ax.get_ylim()[0] == floor


def test_density_figure_rejects_density_of_another_shape():
    grid, density = bulk_and_outlier_density()
    with pytest.raises(ValueError, match="shape"):
        density_figure(grid, density[:-1])


# --- trajectory_figure -------------------------------------------------------


def narrowing_densities(steps=(0, 10, 100, 1000)):
    """Densities whose grids narrow along training, as a network's do: step 0 spans ±10, the last ±0.1."""
    curves = []
    for step in steps:
        half_range = 10.0 / max(step, 1) ** (1 / 3)
        grid = np.linspace(-half_range, half_range, 200)
        density = np.exp(-(grid**2) / (0.01 * half_range**2))
        curves.append((step, grid, density / (density.sum() * (grid[1] - grid[0]))))
    return curves


def test_trajectory_figure_has_one_density_panel_per_step_and_two_statistic_panels():
    fig = trajectory_figure(training_densities(), training_summary())
    assert [ax.get_label() for ax in fig.axes] == [
        "density_step_0", "density_step_100", "density_step_200", "extreme_eigenvalues", "negative_mass"]
    assert fig.get_suptitle() == "Hessian spectrum along training"
    assert all(ax.get_yscale() == "log" for ax in density_panels(fig))
    assert density_panels(fig)[0].get_shared_y_axes().joined(*density_panels(fig)[:2])


def test_trajectory_figure_draws_each_step_in_its_own_panel_in_step_order():
    densities = training_densities(steps=(200, 0, 100))
    panels = density_panels(trajectory_figure(densities, training_summary()))
    assert [ax.get_label() for ax in panels] == ["density_step_0", "density_step_100", "density_step_200"]
    assert [ax.get_title(loc="left") for ax in panels] == ["step 0", "step 100", "step 200"]
    for ax, (_, grid, density) in zip(panels, sorted(densities, key=lambda curve: curve[0])):
        assert [line.get_gid() for line in ax.get_lines()] == ["zero", "density"]
        np.testing.assert_array_equal(line_by_gid(ax, "density").get_xdata(), grid)
        np.testing.assert_array_equal(line_by_gid(ax, "density").get_ydata(), np.maximum(density, 1e-8))
        np.testing.assert_array_equal(line_by_gid(ax, "zero").get_xdata(), [0.0, 0.0])


def test_trajectory_density_panels_share_a_symlog_lambda_axis_spanning_every_grid():
    densities = narrowing_densities()
    panels = density_panels(trajectory_figure(densities, training_summary(steps=(0, 10, 100, 1000))))
    assert all(ax.get_xscale() == "symlog" for ax in panels)
    assert panels[0].get_shared_x_axes().joined(panels[0], panels[-1])
    assert panels[-1].get_xlim() == (-10.0, 10.0)  # step 0's wide grid; the later ones lie inside
    # linear within ±linthresh: 1/100 of the narrowest half-range (step 1000's, 1.0), a power of ten
    assert panels[0].xaxis.get_transform().linthresh == 0.01


def test_trajectory_density_panels_on_a_linear_axis_each_span_their_own_grid():
    densities = narrowing_densities()
    panels = density_panels(trajectory_figure(densities, training_summary(steps=(0, 10, 100, 1000)),
                                              lambda_axis="linear"))
    for ax, (_, grid, _) in zip(panels, densities):
        assert ax.get_xscale() == "linear"
        assert ax.get_xlim() == (grid[0], grid[-1])


def test_trajectory_figure_takes_the_symlog_linear_range():
    densities = narrowing_densities()
    fig = trajectory_figure(densities, training_summary(steps=(0, 10, 100, 1000)), lambda_linthresh=0.5)
    assert density_panels(fig)[0].xaxis.get_transform().linthresh == 0.5


def test_trajectory_figure_with_many_steps_fills_columns_of_at_most_eight_panels():
    steps = tuple(range(0, 1200, 100))
    fig = trajectory_figure(training_densities(steps=steps), training_summary(steps=steps))
    panels = density_panels(fig)
    assert [ax.get_label() for ax in panels] == [f"density_step_{step}" for step in steps]
    assert {ax.get_subplotspec().colspan.start for ax in panels} == {0, 1}
    assert all(ax.get_subplotspec().rowspan.start < 8 for ax in panels)


@pytest.mark.parametrize(("steps", "scale"), [
    ((0, 1, 2, 4, 8, 16, 32), "symlog"),  # log-spaced with step 0: symlog so that 0 still shows
    ((0, 1, 2, 5, 10, 20, 50, 100), "symlog"),  # 1-2-5
    ((10, 100, 1000, 10000), "log"),  # log-spaced without 0
    ((0, 75, 150, 225, 300), "linear"),  # evenly spaced
    ((0, 1000, 2000, 3000, 5000), "linear"),  # less than a decade of positive steps
    ((0, 100), "linear"),  # too few to tell
])
def test_trajectory_step_axis_is_log_for_log_spaced_checkpoints(steps, scale):
    fig = trajectory_figure(training_densities(steps=steps[:1]), training_summary(steps=steps))
    labelled = axes_by_label(fig)
    assert labelled["extreme_eigenvalues"].get_xscale() == labelled["negative_mass"].get_xscale() == scale
    if scale == "symlog":
        transform = labelled["negative_mass"].xaxis.get_transform()
        assert transform.linthresh == steps[1]  # linear from step 0 to the first positive step
        assert labelled["negative_mass"].get_xlim()[0] < 0 < labelled["negative_mass"].get_xlim()[1]


@pytest.mark.parametrize(("steps", "step_scale", "scale"), [
    ((0, 75, 150, 225), "log", "symlog"),
    ((75, 150, 225), "log", "log"),
    ((0, 1, 10, 100, 1000), "linear", "linear"),
])
def test_trajectory_step_axis_scale_can_be_chosen(steps, step_scale, scale):
    fig = trajectory_figure(training_densities(steps=steps[:1]), training_summary(steps=steps),
                            step_scale=step_scale)
    assert axes_by_label(fig)["negative_mass"].get_xscale() == scale
    assert step_axis_scale(steps, step_scale) == scale


def test_trajectory_figure_marks_learning_rate_boundaries_on_both_statistic_panels():
    steps = (0, 100, 200, 300)
    fig = trajectory_figure(training_densities(steps=steps), training_summary(steps=steps), lr_boundaries=[150, 250])
    for label in ("extreme_eigenvalues", "negative_mass"):
        boundaries = [line for line in axes_by_label(fig)[label].get_lines() if line.get_gid() == "lr_boundary"]
        assert [tuple(line.get_xdata()) for line in boundaries] == [(150, 150), (250, 250)]
    assert "learning-rate boundary" in [text.get_text() for text in fig.legends[0].get_texts()]


def test_trajectory_figure_without_learning_rate_boundaries_draws_none():
    fig = trajectory_figure(training_densities(), training_summary())
    assert not [line for ax in fig.axes for line in ax.get_lines() if line.get_gid() == "lr_boundary"]


def test_trajectory_figure_shades_the_band_of_each_step_that_has_one():
    densities = training_densities()
    _, grid, density = densities[1]
    lower, upper = band_around(density)
    fig = trajectory_figure(densities, training_summary(), bands={100: (lower, upper)}, band_label="90% band")
    panels = axes_by_label(fig)
    assert_band_spans(collection_by_gid(panels["density_step_100"], "band"), grid, lower, upper)
    assert len(panels["density_step_0"].collections) == 0 and len(panels["density_step_200"].collections) == 0
    assert "90% band" in [text.get_text() for text in fig.legends[0].get_texts()]


def test_trajectory_figure_marks_the_outliers_of_each_step():
    fig = trajectory_figure(training_densities(), training_summary(), outliers={0: [9.0], 200: [8.5, 9.5]})
    panels = axes_by_label(fig)
    np.testing.assert_array_equal(line_by_gid(panels["density_step_0"], "outliers").get_xdata(), [9.0])
    np.testing.assert_array_equal(line_by_gid(panels["density_step_200"], "outliers").get_xdata(), [8.5, 9.5])
    assert "outliers" not in [line.get_gid() for line in panels["density_step_100"].get_lines()]


@pytest.mark.parametrize("keyword", ["bands", "outliers"])
def test_trajectory_figure_rejects_a_band_or_outliers_of_a_step_without_density(keyword):
    grid, density = bulk_and_outlier_density()
    value = band_around(density) if keyword == "bands" else [1.0]
    with pytest.raises(ValueError, match=r"step\(s\) \[50\] have no density"):
        trajectory_figure(training_densities(), training_summary(), **{keyword: {50: value}})


def test_trajectory_lambda_panel_shows_summary_columns_sorted_by_step():
    summary = training_summary()
    shuffled = summary.iloc[[2, 0, 1]]
    ax = axes_by_label(trajectory_figure(training_densities(), shuffled))["extreme_eigenvalues"]
    lambda_max_line = line_by_gid(ax, "lambda_max")
    np.testing.assert_array_equal(lambda_max_line.get_xdata(), summary["step"])
    np.testing.assert_array_equal(lambda_max_line.get_ydata(), summary["lambda_max"])
    np.testing.assert_array_equal(line_by_gid(ax, "abs_lambda_min").get_ydata(), summary["lambda_min"].abs())


def test_trajectory_negative_mass_panel_shows_summary_column():
    summary = training_summary()
    ax = axes_by_label(trajectory_figure(training_densities(), summary))["negative_mass"]
    np.testing.assert_array_equal(line_by_gid(ax, "negative_mass").get_ydata(), summary["negative_mass"])


def with_intervals(summary, columns=("lambda_max", "lambda_min", "negative_mass", "test_accuracy")):
    summary = summary.copy()
    for column in columns:
        summary[f"{column}_lo"] = summary[column] - 0.1 * summary[column].abs()
        summary[f"{column}_hi"] = summary[column] + 0.1 * summary[column].abs()
    return summary


def error_bars(ax, gid):
    """The (step, low, high) of each segment of the error bars ``gid`` of ``ax``."""
    bars = collection_by_gid(ax, gid)
    assert isinstance(bars, LineCollection)
    return [(a[0], a[1], b[1]) for a, b in (segment for segment in bars.get_segments())]


def test_trajectory_figure_draws_error_bars_from_lo_and_hi_columns():
    summary = with_intervals(training_summary(with_accuracy=True))
    panels = axes_by_label(trajectory_figure(training_densities(), summary.iloc[[2, 0, 1]]))
    steps = list(summary["step"])
    expected = {
        ("extreme_eigenvalues", "lambda_max_errorbar"): zip(steps, summary["lambda_max_lo"], summary["lambda_max_hi"]),
        # |λmin| of the interval [lo, hi] (both negative): from |hi| to |lo|
        ("extreme_eigenvalues", "abs_lambda_min_errorbar"):
            zip(steps, summary["lambda_min_hi"].abs(), summary["lambda_min_lo"].abs()),
        ("negative_mass", "negative_mass_errorbar"):
            zip(steps, summary["negative_mass_lo"], summary["negative_mass_hi"]),
        ("test_accuracy", "test_accuracy_errorbar"):
            zip(steps, summary["test_accuracy_lo"], summary["test_accuracy_hi"]),
    }
    for (label, gid), bars in expected.items():
        np.testing.assert_allclose(error_bars(panels[label], gid), list(bars))


def test_trajectory_abs_lambda_min_error_bar_starts_at_zero_when_the_interval_holds_zero():
    summary = training_summary()
    summary["lambda_min_lo"], summary["lambda_min_hi"] = [-3.0, -2.0, -1.0], [0.5, -1.0, 2.0]
    ax = axes_by_label(trajectory_figure(training_densities(), summary))["extreme_eigenvalues"]
    np.testing.assert_allclose(error_bars(ax, "abs_lambda_min_errorbar"), [(0, 0, 3), (100, 1, 2), (200, 0, 2)])


def test_trajectory_figure_without_intervals_draws_no_error_bars():
    fig = trajectory_figure(training_densities(), with_intervals(training_summary(), columns=("negative_mass",)))
    panels = axes_by_label(fig)
    assert len(panels["extreme_eigenvalues"].collections) == 0
    assert [c.get_gid() for c in panels["negative_mass"].collections] == ["negative_mass_errorbar"]


def test_trajectory_figure_names_the_missing_half_of_an_interval():
    summary = training_summary().assign(lambda_max_hi=[2.0, 6.0, 10.0])
    with pytest.raises(ValueError, match="lambda_max_hi but not lambda_max_lo"):
        trajectory_figure(training_densities(), summary)


def test_trajectory_figure_adds_twin_axis_for_test_accuracy():
    summary = training_summary(with_accuracy=True)
    fig = trajectory_figure(training_densities(), summary)
    assert len(fig.axes) == 6
    accuracy_ax = axes_by_label(fig)["test_accuracy"]
    accuracy_line = line_by_gid(accuracy_ax, "test_accuracy")
    np.testing.assert_array_equal(accuracy_line.get_ydata(), summary["test_accuracy"])


def test_trajectory_figure_names_everything_in_one_legend_outside_the_panels():
    densities = training_densities()
    fig = trajectory_figure(densities, with_intervals(training_summary(with_accuracy=True)), lr_boundaries=[150],
                            bands={0: band_around(densities[0][2])}, outliers={0: [9.0]})
    (legend,) = fig.legends
    assert [text.get_text() for text in legend.get_texts()] == [
        r"$\lambda_{\max}$", r"$|\lambda_{\min}|$", "negative mass", "test accuracy", "learning-rate boundary",
        DEFAULT_BAND_LABEL, "outlier eigenvalues"]
    assert_legends_outside_the_axes(fig)


def test_trajectory_figure_with_a_single_step_renders(tmp_path):
    fig = trajectory_figure(training_densities(steps=(5,)), training_summary(steps=(5,)))
    save_figure(fig, tmp_path / "trajectory.png")
    assert (tmp_path / "trajectory.png").read_bytes()[:8] == PNG_SIGNATURE


def test_trajectory_figure_names_missing_summary_columns():
    with pytest.raises(ValueError, match="negative_mass"):
        trajectory_figure(training_densities(), training_summary().drop(columns="negative_mass"))


@pytest.mark.parametrize(("keywords", "message"), [
    ({"lambda_axis": "log"}, "lambda_axis must be"),
    ({"step_scale": "logarithmic"}, "step_scale must be"),
    ({"lr_boundaries": [-1]}, "lr_boundaries must be"),
    ({"lambda_linthresh": 0.0}, "lambda_linthresh must be > 0"),
])
def test_trajectory_figure_rejects_bad_axis_options_by_name(keywords, message):
    with pytest.raises(ValueError, match=message):
        trajectory_figure(training_densities(), training_summary(), **keywords)


def test_trajectory_figure_takes_a_title():
    fig = trajectory_figure(training_densities(), training_summary(), title="Gauss-Newton spectrum along training")
    assert fig.get_suptitle() == "Gauss-Newton spectrum along training"


# --- curvatures_figure -------------------------------------------------------


def two_blocks_two_operators():
    """(operator, block, grid, density): Hessian and GGN on "all" (different grids) and "conv"."""
    grid, density = bulk_and_outlier_density()
    narrow = np.linspace(-0.01, 4.0, 300)
    psd = np.exp(-(narrow**2) / 0.02)
    return [("hessian", "all", grid, density), ("ggn", "all", narrow, psd),
            ("hessian", "conv", narrow, 2 * psd), ("ggn", "conv", narrow, psd)]


def test_curvatures_figure_has_one_panel_per_block_in_order_titled_by_block():
    fig = curvatures_figure(20, two_blocks_two_operators())
    assert [ax.get_label() for ax in fig.axes] == ["all", "conv"]
    assert [ax.get_title() for ax in fig.axes] == ["all", "conv"]
    assert fig.get_suptitle() == "step 20"


def test_curvatures_figure_overlays_the_operators_of_a_block_and_marks_zero():
    curves = two_blocks_two_operators()
    for ax, block in zip(curvatures_figure(20, curves).axes, ["all", "conv"]):
        assert [line.get_gid() for line in ax.get_lines()] == ["zero", "hessian", "ggn"]
        np.testing.assert_array_equal(line_by_gid(ax, "zero").get_xdata(), [0.0, 0.0])
        assert line_by_gid(ax, "hessian").get_linestyle() == "-"
        assert line_by_gid(ax, "ggn").get_linestyle() == "--"
        for operator, _, grid, density in (c for c in curves if c[1] == block):
            np.testing.assert_array_equal(line_by_gid(ax, operator).get_xdata(), grid)
            np.testing.assert_array_equal(line_by_gid(ax, operator).get_ydata(), np.maximum(density, 1e-8))


def test_curvatures_figure_panels_share_a_log_y_axis_and_each_spans_its_own_grids():
    fig = curvatures_figure(20, two_blocks_two_operators())
    everything, conv = fig.axes
    assert everything.get_yscale() == conv.get_yscale() == "log"
    assert everything.get_shared_y_axes().joined(everything, conv)
    assert everything.get_xlim() == (-1.0, 10.0)  # the Hessian's grid; the GGN's lies inside it
    assert conv.get_xlim() == (-0.01, 4.0)


def test_curvatures_figure_names_the_operators_in_one_legend_outside_the_panels():
    fig = curvatures_figure(20, two_blocks_two_operators())
    (legend,) = fig.legends
    assert [text.get_text() for text in legend.get_texts()] == ["Hessian", "Gauss-Newton"]
    assert all(ax.get_legend() is None for ax in fig.axes)


def test_curvatures_figure_of_one_operator_on_several_blocks_renders(tmp_path):
    curves = [curve for curve in two_blocks_two_operators() if curve[0] == "ggn"]
    fig = curvatures_figure(5, curves)
    assert [len(ax.get_lines()) for ax in fig.axes] == [2, 2]
    assert [text.get_text() for text in fig.legends[0].get_texts()] == ["Gauss-Newton"]
    save_figure(fig, tmp_path / "curvatures.png")
    assert (tmp_path / "curvatures.png").read_bytes()[:8] == PNG_SIGNATURE


def test_curvatures_figure_shades_bands_and_marks_outliers_per_curvature():
    curves = two_blocks_two_operators()
    _, _, grid, density = curves[2]  # the Hessian on "conv"
    lower, upper = band_around(density)
    fig = curvatures_figure(20, curves, bands={("hessian", "conv"): (lower, upper)},
                            outliers={("ggn", "all"): [3.5], ("hessian", "conv"): [3.0, 3.9]},
                            band_label="68% band over draws")
    everything, conv = fig.axes
    assert_band_spans(collection_by_gid(conv, "hessian_band"), grid, lower, upper)
    assert len(everything.collections) == 0
    np.testing.assert_array_equal(line_by_gid(everything, "ggn_outliers").get_xdata(), [3.5])
    np.testing.assert_array_equal(line_by_gid(conv, "hessian_outliers").get_xdata(), [3.0, 3.9])
    assert "hessian_outliers" not in [line.get_gid() for line in everything.get_lines()]
    assert [text.get_text() for text in fig.legends[0].get_texts()] == [
        "Hessian", "Gauss-Newton", "68% band over draws", "outlier eigenvalues"]
    assert conv.get_xlim() == (-0.01, 4.0)
    assert_legends_outside_the_axes(fig)


@pytest.mark.parametrize("keyword", ["bands", "outliers"])
def test_curvatures_figure_rejects_a_band_or_outliers_of_an_unknown_curvature(keyword):
    curves = two_blocks_two_operators()
    value = band_around(curves[0][3]) if keyword == "bands" else [1.0]
    with pytest.raises(ValueError, match=r"curvature\(s\) \[\('ggn', 'head'\)\] are not in curves"):
        curvatures_figure(20, curves, **{keyword: {("ggn", "head"): value}})


@pytest.mark.parametrize(("curves", "message"), [
    ([("newton", "all", *bulk_and_outlier_density())], "unknown operator 'newton'"),
    ([("ggn", "all", *bulk_and_outlier_density())] * 2, "given twice"),
    ([], "curves is empty"),
])
def test_curvatures_figure_rejects_bad_curves_by_name(curves, message):
    with pytest.raises(ValueError, match=message):
        curvatures_figure(0, curves)


# --- save_figure -------------------------------------------------------------


def test_save_figure_into_missing_directory_raises_and_leaves_nothing(tmp_path):
    fig = density_figure(*bulk_and_outlier_density())
    with pytest.raises(FileNotFoundError):
        save_figure(fig, tmp_path / "missing" / "density.png")
    assert list(tmp_path.iterdir()) == []


def test_interrupted_save_keeps_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "density.png"
    target.write_bytes(b"previous render")
    fig = density_figure(*bulk_and_outlier_density())

    def write_half_then_die(path, **kwargs):
        path.write_bytes(PNG_SIGNATURE + b"half")
        raise RuntimeError("killed while rendering")

    monkeypatch.setattr(fig, "savefig", write_half_then_die)
    with pytest.raises(RuntimeError, match="killed"):
        save_figure(fig, target)
    assert [p.name for p in tmp_path.iterdir()] == ["density.png"]
    assert target.read_bytes() == b"previous render"


def test_renders_of_the_same_figure_are_byte_identical(tmp_path):
    densities = training_densities()
    for name in ("first.png", "second.png"):
        fig = trajectory_figure(densities, with_intervals(training_summary(with_accuracy=True)), lr_boundaries=[150],
                                bands={100: band_around(densities[1][2])}, outliers={100: [9.0]})
        save_figure(fig, tmp_path / name)
    assert (tmp_path / "first.png").read_bytes() == (tmp_path / "second.png").read_bytes()


def test_save_figure_frees_the_figure(tmp_path):
    fig = density_figure(*bulk_and_outlier_density(), stats=STATS)
    save_figure(fig, tmp_path / "density.png")
    assert fig.axes == []


def test_plots_module_imports_neither_tensorflow_nor_pyplot():
    check = (
        "import sys, hessflow.plots; "
        "loaded = {'tensorflow', 'matplotlib.pyplot'} & set(sys.modules); "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", check], check=True)


def test_trajectory_figure_draws_the_gradients_share_of_the_top_ritz_span_when_the_summary_has_it():
    from hessflow.plots import trajectory_figure

    grid = np.linspace(-1.0, 2.0, 50)
    densities = [(step, grid, np.exp(-grid**2)) for step in (0, 10, 20)]
    summary = pd.DataFrame({"step": [0, 10, 20], "lambda_max": [2.0, 1.5, 1.0], "lambda_min": [-1.0, -0.5, -0.1],
                            "negative_mass": [0.2, 0.1, 0.05], "gradient_fraction_top_k": [0.1, 0.6, 0.8],
                            "gradient_fraction_outliers": [0.0, 0.3, 0.5]})
    fig = trajectory_figure(densities, summary)
    panel = next(ax for ax in fig.axes if ax.get_label() == "gradient_fraction")
    lines = {line.get_gid(): line for line in panel.get_lines()}
    np.testing.assert_array_equal(lines["gradient_fraction_top_k"].get_ydata(), [0.1, 0.6, 0.8])
    np.testing.assert_array_equal(lines["gradient_fraction_outliers"].get_ydata(), [0.0, 0.3, 0.5])
    assert panel.get_ylim() == (0.0, 1.02)
    without = trajectory_figure(densities, summary.drop(columns=["gradient_fraction_top_k",
                                                                 "gradient_fraction_outliers"]))
    assert "gradient_fraction" not in [ax.get_label() for ax in without.axes]
