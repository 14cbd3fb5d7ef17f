"""The run layout (hessflow.layout): every path of a run folder, spelled once.

The expected paths are written out literally here (they are the documented, stable layout of
README.md and the manifest); the rules and hessflow-reproduce must take theirs from the layout.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hessflow import reproduce
from hessflow.layout import (
    CONFIG_FILE,
    EXPORT_FILE,
    MANIFEST_FILE,
    RunLayout,
    curvatures,
    lanczos_state_beside,
    results_root,
)

ROOT = Path(__file__).resolve().parents[1]


def test_a_run_folder_is_results_slash_run_name():
    assert results_root("demo") == "results/demo"
    assert RunLayout.for_run("demo") == RunLayout("results/demo")


def test_every_artifact_path_of_a_run_folder():
    run = RunLayout("results/demo")
    assert run.data_files("train") == {"images": "results/demo/data/train_images.npy",
                                       "labels": "results/demo/data/train_labels.npy"}
    assert run.data_files("test")["labels"] == "results/demo/data/test_labels.npy"
    assert run.dataset_card == "results/demo/data/dataset.json"
    assert run.checkpoint(75) == "results/demo/checkpoints/step_75.weights.h5"
    assert run.history == "results/demo/train/history.csv"
    assert run.evaluation(75) == "results/demo/evaluation/step_75.json"
    assert run.lanczos_files(75, 2, save_vectors=True) == {
        "tridiag": "results/demo/lanczos/hessian/all/step_75/tridiag_2.npy",
        "provenance": "results/demo/lanczos/hessian/all/step_75/provenance_2.json",
        "vectors": "results/demo/lanczos/hessian/all/step_75/lanczos_vec_2.npy",
    }
    assert "vectors" not in run.lanczos_files(75, 2, save_vectors=False)
    assert run.lanczos_state(75, 2) == "results/demo/lanczos/hessian/all/step_75/.state_2.npz"
    assert run.spectrum_files(75) == {
        "tridiags": "results/demo/spectrum/hessian/all/step_75/tridiags.npy",
        "ritz_values": "results/demo/spectrum/hessian/all/step_75/ritz_values.npy",
        "ritz_weights": "results/demo/spectrum/hessian/all/step_75/ritz_weights.npy",
        "density": "results/demo/spectrum/hessian/all/step_75/density.npy",
        "stats": "results/demo/spectrum/hessian/all/step_75/stats.json",
    }
    assert run.density_figure(75) == "results/demo/figures/hessian/all/density_step_75.png"
    assert run.trajectory_figure() == "results/demo/figures/hessian/all/trajectory.png"
    assert run.curvatures_figure(75) == "results/demo/figures/curvatures_step_75.png"
    assert run.summary == "results/demo/summary.csv"
    assert run.manifest == "results/demo/manifest.tsv"
    assert run.config == "results/demo/config.json"
    assert run.archive == "results/demo.tar.gz"
    assert run.log("lanczos/step_75_draw_2") == "results/demo/logs/lanczos/step_75_draw_2.log"
    assert run.benchmark("train") == "results/demo/benchmarks/train.tsv"


def test_every_curvature_has_its_own_lanczos_spectrum_and_figure_folders():
    run = RunLayout("results/demo")
    assert run.lanczos_files(75, 2, save_vectors=True, operator="ggn", block="conv") == {
        "tridiag": "results/demo/lanczos/ggn/conv/step_75/tridiag_2.npy",
        "provenance": "results/demo/lanczos/ggn/conv/step_75/provenance_2.json",
        "vectors": "results/demo/lanczos/ggn/conv/step_75/lanczos_vec_2.npy",
    }
    assert run.top_pairs(75, "ggn", "conv") == "results/demo/spectrum/ggn/conv/step_75/top_pairs.npz"
    assert run.lanczos_state(75, 2, "ggn", "conv") == "results/demo/lanczos/ggn/conv/step_75/.state_2.npz"
    assert run.spectrum_files(75, "ggn", "conv")["density"] == "results/demo/spectrum/ggn/conv/step_75/density.npy"
    assert run.density_figure(75, "ggn", "conv") == "results/demo/figures/ggn/conv/density_step_75.png"
    assert run.trajectory_figure("ggn", "conv") == "results/demo/figures/ggn/conv/trajectory.png"


def test_curvatures_are_each_operator_on_each_block_in_config_order():
    config = {"hessian": {"operator": ["ggn", "hessian"], "blocks": {"head": ["dense"], "all": [".*"]}}}
    assert curvatures(config) == [("ggn", "head"), ("ggn", "all"), ("hessian", "head"), ("hessian", "all")]


def test_one_operator_may_be_named_by_a_string():
    assert curvatures({"hessian": {"operator": "ggn", "blocks": {"conv": ["conv"]}}}) == [("ggn", "conv")]


def test_a_config_without_operator_or_blocks_analyses_the_whole_model_hessian():
    assert curvatures({}) == [("hessian", "all")]
    assert curvatures({"hessian": {"batch_size": 64}}) == [("hessian", "all")]
    assert curvatures({"hessian": {"operator": "ggn"}}) == [("ggn", "all")]


def test_snakemake_wildcards_pass_through_unchanged():
    run = RunLayout("results/demo")
    assert run.tridiag("{step}", "{draw}") == "results/demo/lanczos/hessian/all/step_{step}/tridiag_{draw}.npy"
    assert (run.tridiag("{step}", "{draw}", "{operator}", "{block}")
            == "results/demo/lanczos/{operator}/{block}/step_{step}/tridiag_{draw}.npy")
    assert run.log("evaluate/step_{step}") == "results/demo/logs/evaluate/step_{step}.log"


def test_the_empty_root_gives_paths_relative_to_the_run_folder_as_the_manifest_records_them():
    relative = RunLayout()
    assert relative.tridiag(20, 0) == "lanczos/hessian/all/step_20/tridiag_0.npy"
    assert relative.config == CONFIG_FILE == "config.json"
    assert relative.manifest == MANIFEST_FILE == "manifest.tsv"
    assert EXPORT_FILE == "export.json"
    with pytest.raises(ValueError, match="beside the run folder"):
        relative.archive  # noqa: B018


def test_relative_inverts_path():
    run = RunLayout("sub/results/demo")
    for path in [run.checkpoint(5), run.tridiag(5, 0), run.summary]:
        assert run.path(run.relative(path)) == path
    assert run.relative(run.spectrum_files(5)["stats"]) == "spectrum/hessian/all/step_5/stats.json"


@pytest.mark.parametrize("tridiag", [
    "results/demo/lanczos/step_5/tridiag_3.npy",
    "sub/results/demo/lanczos/step_5/tridiag_3.npy",  # a module's prefix: the state follows it
    "/abs/where/ever/tridiag_3.npy",
])
def test_the_lanczos_state_lies_in_the_folder_of_the_declared_tridiag(tridiag):
    state = lanczos_state_beside(tridiag, 3)
    assert Path(state).parent == Path(tridiag).parent
    assert Path(state).name == ".state_3.npz"
    assert lanczos_state_beside(Path(tridiag), "3") == state


def test_reproduce_reads_and_writes_the_layouts_paths():
    # Written before hessian.operator/blocks existed: the whole model's Hessian.
    config = {"training": {"checkpoint_steps": [0, 10, 20]}, "spectrum": {"steps": [20]}, "lanczos": {"draws": 2}}
    assert reproduce.required_inputs(config) == [
        "config.json",
        "lanczos/hessian/all/step_20/tridiag_0.npy",
        "lanczos/hessian/all/step_20/tridiag_1.npy",
        "lanczos/hessian/all/step_20/provenance_0.json",
        "lanczos/hessian/all/step_20/provenance_1.json",
        "evaluation/step_20.json",
    ]
    assert reproduce.rebuilt_outputs(config) == [
        "spectrum/hessian/all/step_20/tridiags.npy",
        "spectrum/hessian/all/step_20/ritz_values.npy",
        "spectrum/hessian/all/step_20/ritz_weights.npy",
        "spectrum/hessian/all/step_20/density.npy",
        "spectrum/hessian/all/step_20/stats.json",
        "figures/hessian/all/density_step_20.png",
        "summary.csv",
        "summary.html",
        "figures/hessian/all/trajectory.png",
    ]
    assert (reproduce.CONFIG_FILE, reproduce.EXPORT_FILE) == (CONFIG_FILE, EXPORT_FILE)


def test_reproduce_reads_every_curvature_and_adds_the_curvatures_figures_when_there_are_several():
    config = {"training": {"checkpoint_steps": [10, 20]}, "lanczos": {"draws": 1},
              "hessian": {"operator": ["hessian", "ggn"], "blocks": {"conv": ["conv"]}}}
    assert reproduce.required_inputs(config) == [
        "config.json",
        "lanczos/hessian/conv/step_10/tridiag_0.npy",
        "lanczos/hessian/conv/step_10/provenance_0.json",
        "lanczos/hessian/conv/step_20/tridiag_0.npy",
        "lanczos/hessian/conv/step_20/provenance_0.json",
        "lanczos/ggn/conv/step_10/tridiag_0.npy",
        "lanczos/ggn/conv/step_10/provenance_0.json",
        "lanczos/ggn/conv/step_20/tridiag_0.npy",
        "lanczos/ggn/conv/step_20/provenance_0.json",
        "evaluation/step_10.json",
        "evaluation/step_20.json",
    ]
    outputs = reproduce.rebuilt_outputs(config)
    assert [path for path in outputs if path.startswith("figures/")] == [
        "figures/hessian/conv/density_step_10.png",
        "figures/hessian/conv/density_step_20.png",
        "figures/ggn/conv/density_step_10.png",
        "figures/ggn/conv/density_step_20.png",
        "figures/hessian/conv/trajectory.png",
        "figures/ggn/conv/trajectory.png",
        "figures/curvatures_step_10.png",
        "figures/curvatures_step_20.png",
    ]
    assert len(outputs) == 4 * 5 + 8 + 2 and "summary.csv" in outputs and "summary.html" in outputs


# A path component of the run folder, spelled in a string literal: the layout's job alone (a job
# log's or benchmark's own name, inside log_file(...)/benchmark_file(...), is the rule's).
_SPELLED = re.compile(r"""(["']f?results/|/step_|step_\{|tridiag_\{|provenance_\{|\.weights\.h5|/logs/|/benchmarks/)""")


@pytest.mark.parametrize("source", [
    "workflow/rules/common.smk", "workflow/rules/data.smk", "workflow/rules/train.smk",
    "workflow/rules/lanczos.smk", "workflow/rules/density.smk", "workflow/rules/report.smk",
    "src/hessflow/reproduce.py", "scripts/lanczos.py",
])
def test_no_rule_script_or_rebuild_spells_a_run_folder_path(source):
    code = [line for line in (ROOT / source).read_text().splitlines()
            if not line.lstrip().startswith("#") and '"""' not in line and "``" not in line
            and not re.search(r"\b(log_file|benchmark_file)\(", line)]
    assert not [line for line in code if _SPELLED.search(line)]
