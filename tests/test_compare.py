"""hessflow.compare on synthetic run folders: the figure's content (not its pixels), the table, the
refusals and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from hessflow import compare
from hessflow.layout import RunLayout
from hessflow.plots import DEFAULT_DENSITY_FLOOR

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LABELS = ("batch norm", "no batch norm")


def spectrum(run: int, step: int, grid_len: int = 300):
    """A bulk at 0 and an outlier near λmax: (grid, density, stats), distinct for every run and step."""
    lambda_max = 4.0 + 3.0 * run + step / 100.0
    lambda_min = -0.5 - 0.1 * run
    grid = np.linspace(lambda_min - 0.05, lambda_max + 0.05, grid_len)
    density = np.exp(-(grid**2) / 0.01) + 1e-4 * np.exp(-((grid - lambda_max) ** 2) / 0.01)
    density /= density.sum() * (grid[1] - grid[0])
    density[:5] = 0.0  # underflow at the left end: drawn at the floor
    stats = {"lambda_max": lambda_max, "lambda_min": lambda_min, "trace": 10.0 * (run + 1) + step,
             "negative_mass": 0.01 * (run + 1) / (step + 1), "negative_cutoff": 1e-3, "num_draws": 2}
    return grid, density, stats


def write_run(root: Path, run: int, steps, *, config_steps=None, outlier_count: bool = False) -> Path:
    """A run folder with config.json, summary.csv and each step's density.npy (3 rows: a third one
    that must be ignored) and stats.json, at RunLayout's paths."""
    layout = RunLayout(root.as_posix())
    config_steps = list(steps) if config_steps is None else list(config_steps)
    root.mkdir(parents=True)
    config = {"run_name": root.name, "training": {"checkpoint_steps": config_steps},
              "spectrum": {"steps": None}, "hessian": {"operator": "hessian", "blocks": {"all": [".*"]}}}
    Path(layout.config).write_text(json.dumps(config), encoding="utf-8")
    rows = []
    for step in steps:
        grid, density, stats = spectrum(run, step)
        if outlier_count:
            stats["outlier_count"] = 9 + run
        files = layout.spectrum_files(step)
        Path(files["density"]).parent.mkdir(parents=True)
        np.save(files["density"], np.stack([grid, density, np.full_like(grid, 7.0)]))
        Path(files["stats"]).write_text(json.dumps(stats), encoding="utf-8")
        rows.append({"operator": "hessian", "block": "all", "step": step, **stats, "train_loss": 1.0,
                     "test_accuracy": 0.5 + 0.1 * run + step / 10000})
    pd.DataFrame(rows).to_csv(layout.summary, index=False)
    return root


@pytest.fixture
def runs(tmp_path):
    return {LABELS[0]: write_run(tmp_path / "vgg_bn", 0, [0, 100, 600]),
            LABELS[1]: write_run(tmp_path / "vgg_nobn", 1, [0, 600])}


def axes_by_label(fig):
    return {ax.get_label(): ax for ax in fig.axes}


def lines_by_gid(ax, gid):
    return [line for line in ax.get_lines() if line.get_gid() == gid]


def test_figure_has_one_panel_per_matched_step_with_each_runs_density_as_written(runs):
    fig = compare.comparison_figure(runs)
    axes = axes_by_label(fig)
    panels = sorted(label for label in axes if label.startswith("density_step_"))
    assert panels == ["density_step_0", "density_step_600"]  # step 100: only the BN run has it
    for step in (0, 600):
        ax = axes[f"density_step_{step}"]
        assert ax.get_yscale() == "log" and ax.get_xscale() == "symlog"
        assert ax.get_title(loc="left") == f"step {step}"
        for run, label in enumerate(LABELS):
            (line,) = lines_by_gid(ax, f"density:{label}")
            grid, density, stats = spectrum(run, step)
            np.testing.assert_array_equal(line.get_xdata(), grid)
            np.testing.assert_array_equal(line.get_ydata(), np.maximum(density, DEFAULT_DENSITY_FLOOR))
            (mark,) = lines_by_gid(ax, f"lambda_max:{label}")
            assert list(mark.get_xdata()) == [stats["lambda_max"]]
        (zero,) = lines_by_gid(ax, "zero")
        assert list(zero.get_xdata()) == [0.0, 0.0]
        assert len([line for line in ax.get_lines() if str(line.get_gid()).startswith("density:")]) == 2
    # one shared λ axis spanning every grid, and one shared density axis
    first, last = axes["density_step_0"], axes["density_step_600"]
    assert first.get_shared_x_axes().joined(first, last) and first.get_shared_y_axes().joined(first, last)
    low, high = first.get_xlim()
    assert low == pytest.approx(spectrum(1, 0)[0][0]) and high == pytest.approx(spectrum(1, 600)[0][-1])
    assert first.get_ylim()[0] == DEFAULT_DENSITY_FLOOR


def test_figure_tables_list_each_runs_statistics_per_step(runs):
    axes = axes_by_label(compare.comparison_figure(runs))
    for step in (0, 600):
        children = axes[f"statistics_step_{step}"].get_children()
        (table,) = [child for child in children if child.get_gid() == "statistics"]
        cells = table.get_celld()
        header = [cells[0, column].get_text().get_text() for column in range(6)]
        assert header == ["run", "λmax", "λmin", "trace", "neg. mass", "test acc."]
        for row, label in enumerate(LABELS, start=1):
            stats = spectrum(row - 1, step)[2]
            texts = [cells[row, column].get_text().get_text() for column in range(6)]
            assert texts[0] == label
            assert float(texts[1]) == pytest.approx(stats["lambda_max"], rel=1e-3)
            assert float(texts[3]) == pytest.approx(stats["trace"], rel=1e-3)
            assert float(texts[4]) == pytest.approx(stats["negative_mass"], rel=1e-2)


def test_figure_legend_names_the_runs_outside_every_axes(runs):
    fig = compare.comparison_figure(runs)
    assert all(ax.get_legend() is None for ax in fig.axes)
    (legend,) = fig.legends
    texts = [text.get_text() for text in legend.get_texts()]
    assert texts[:2] == list(LABELS) and "λ = 0" in texts
    fig.draw_without_rendering()
    box = legend.get_window_extent()
    for ax in fig.axes:
        assert not box.overlaps(ax.get_window_extent()), ax.get_label()


def test_table_holds_the_values_written(runs):
    table = compare.comparison_table(runs)
    assert list(table.columns) == ["run", "step", "lambda_max", "lambda_min", "trace", "negative_mass",
                                   "test_accuracy"]
    assert list(zip(table["run"], table["step"])) == [(LABELS[0], 0), (LABELS[0], 600), (LABELS[1], 0),
                                                      (LABELS[1], 600)]
    for _, row in table.iterrows():
        run = LABELS.index(row["run"])
        stats = spectrum(run, row["step"])[2]
        for key in ("lambda_max", "lambda_min", "trace", "negative_mass"):
            assert row[key] == stats[key]
        assert row["test_accuracy"] == pytest.approx(0.5 + 0.1 * run + row["step"] / 10000)


def test_table_of_requested_steps_and_the_outlier_count(tmp_path):
    runs = {"a": write_run(tmp_path / "a", 0, [0, 100, 600], outlier_count=True),
            "b": write_run(tmp_path / "b", 1, [0, 100, 600], outlier_count=True)}
    table = compare.comparison_table(runs, steps=[600, 100])
    assert list(table["step"]) == [100, 600, 100, 600]
    assert list(table["outlier_count"]) == [9, 9, 10, 10]
    fig = compare.comparison_figure(runs, steps=[100])
    assert sorted(label for label in axes_by_label(fig) if label.startswith("density_step_")) == ["density_step_100"]


def test_a_requested_step_missing_in_one_run_is_refused_naming_the_run_and_the_step(runs):
    with pytest.raises(ValueError, match=r"run 'no batch norm' .* has no step 100: it analysed steps \[0, 600\]"):
        compare.comparison_figure(runs, steps=[0, 100])
    with pytest.raises(ValueError, match="run 'no batch norm'.*no step 100"):
        compare.comparison_table(runs, steps=[100])


def test_an_analysed_step_without_its_files_names_the_file(tmp_path):
    runs = {"a": write_run(tmp_path / "a", 0, [0]), "b": write_run(tmp_path / "b", 1, [0], config_steps=[0, 50])}
    runs["a"] = write_run(tmp_path / "a2", 0, [0], config_steps=[0, 50])
    with pytest.raises(FileNotFoundError, match=r"run 'a': .*a2/spectrum/hessian/all/step_50/density.npy is missing"):
        compare.comparison_table(runs)


def test_runs_without_a_common_step_or_without_the_curvature_are_refused(tmp_path):
    runs = {"a": write_run(tmp_path / "a", 0, [0]), "b": write_run(tmp_path / "b", 1, [600])}
    with pytest.raises(ValueError, match=r"no step in common \('a': \[0\]; 'b': \[600\]\)"):
        compare.matched_steps(runs)
    with pytest.raises(ValueError, match=r"run 'a' .* does not analyse operator 'ggn' on block 'all'"):
        compare.matched_steps(runs, operator="ggn")
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        compare.matched_steps({"a": tmp_path / "a", "c": tmp_path})


def test_cli_writes_the_png_and_the_csv(runs, tmp_path, capsys):
    out, csv = tmp_path / "out" / "figure.png", tmp_path / "out" / "table.csv"
    argv = [arg for label, root in runs.items() for arg in ("--run", f"{label}={root}")]
    assert compare.main([*argv, "--out", str(out), "--csv", str(csv), "--steps", "0", "600", "--dpi", "40"]) == 0
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    assert matplotlib.image.imread(out).ndim == 3
    written = pd.read_csv(csv)
    pd.testing.assert_frame_equal(written, compare.comparison_table(runs), check_dtype=False)
    printed = capsys.readouterr().out
    assert "no batch norm" in printed and f"wrote {out}" in printed
    assert sorted(path.name for path in out.parent.iterdir()) == ["figure.png", "table.csv"]  # no temporaries


def test_cli_refuses_a_missing_step_in_one_line(runs, tmp_path, capsys):
    argv = [arg for label, root in runs.items() for arg in ("--run", f"{label}={root}")]
    assert compare.main([*argv, "--out", str(tmp_path / "f.png"), "--steps", "100"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("hessflow-compare: run 'no batch norm'") and "no step 100" in error
    assert not (tmp_path / "f.png").exists()


def test_more_than_three_steps_wrap_into_rows_of_three(tmp_path):
    steps = [0, 100, 200, 600]
    runs = {"a": write_run(tmp_path / "a", 0, steps), "b": write_run(tmp_path / "b", 1, steps)}
    fig = compare.comparison_figure(runs)
    fig.draw_without_rendering()
    axes = axes_by_label(fig)
    boxes = {step: axes[f"density_step_{step}"].get_position() for step in steps}
    assert boxes[0].y0 == pytest.approx(boxes[200].y0) and boxes[0].x0 < boxes[100].x0 < boxes[200].x0
    assert boxes[600].x0 == pytest.approx(boxes[0].x0) and boxes[600].y1 < boxes[0].y0  # a second row
    assert axes["statistics_step_600"].get_position().y1 <= boxes[600].y0
