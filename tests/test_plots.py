"""Density, trajectory and curvatures figures, and their atomic, reproducible PNG output."""

from __future__ import annotations

import subprocess
import sys

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from hessflow.plots import curvatures_figure, density_figure, save_figure, trajectory_figure

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


def test_density_figure_without_stats_draws_only_the_density():
    (ax,) = density_figure(*bulk_and_outlier_density()).axes
    assert [line.get_gid() for line in ax.get_lines()] == ["density"]
    assert len(ax.texts) == 0


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


def test_trajectory_figure_has_density_panel_two_statistic_panels_and_colorbar():
    fig = trajectory_figure(training_densities(), training_summary())
    assert len(fig.axes) == 4
    assert set(axes_by_label(fig)) == {"densities", "extreme_eigenvalues", "negative_mass", "<colorbar>"}
    assert fig.get_suptitle() == "Hessian spectrum along training"
    assert axes_by_label(fig)["densities"].get_yscale() == "log"


def test_trajectory_figure_draws_one_density_line_per_step_in_step_order():
    fig = trajectory_figure(training_densities(steps=(200, 0, 100)), training_summary())
    lines = axes_by_label(fig)["densities"].get_lines()
    assert [line.get_gid() for line in lines] == ["density_step_0", "density_step_100", "density_step_200"]


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


def test_trajectory_figure_adds_twin_axis_for_test_accuracy():
    summary = training_summary(with_accuracy=True)
    fig = trajectory_figure(training_densities(), summary)
    assert len(fig.axes) == 5
    accuracy_ax = axes_by_label(fig)["test_accuracy"]
    accuracy_line = line_by_gid(accuracy_ax, "test_accuracy")
    np.testing.assert_array_equal(accuracy_line.get_ydata(), summary["test_accuracy"])


def test_trajectory_figure_with_a_single_step_renders(tmp_path):
    fig = trajectory_figure(training_densities(steps=(5,)), training_summary(steps=(5,)))
    save_figure(fig, tmp_path / "trajectory.png")
    assert (tmp_path / "trajectory.png").read_bytes()[:8] == PNG_SIGNATURE


def test_trajectory_figure_names_missing_summary_columns():
    with pytest.raises(ValueError, match="negative_mass"):
        trajectory_figure(training_densities(), training_summary().drop(columns="negative_mass"))


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
    for name in ("first.png", "second.png"):
        fig = trajectory_figure(training_densities(), training_summary(with_accuracy=True))
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
