"""Bad input a schema lets through, and what the user gets: one line naming the file or key and the fix.

Each test provokes one fault at the level of the function a job runs (prepare_dataset, the
density step, the training loop, hessflow-reproduce, the config reader) and checks the message
and what is left afterwards: no partial, non-finite or stale artifact. Two start Snakemake on a
broken config (it stops before building the DAG, so they take a second or two each).
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import tarfile
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

from cifar_archive import write_cifar10_archive
from hessflow import artifacts, reproduce, sanity
from hessflow.download import CIFAR10_SHA256, ChecksumError
from hessflow.prepare import prepare_dataset

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = ROOT / "workflow" / "Snakefile"
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
DENSITY = {"sigma_squared": 1.0e-5, "grid_len": 200, "grid_expand": 0.01, "negative_threshold": 1.0e-3}


# ------------------------------------------------------------------------------------------------
# data: a hand-placed CIFAR-10 archive, a split left empty
# ------------------------------------------------------------------------------------------------
@pytest.fixture()
def fake_archive(tmp_path):
    """A 2-records-per-file archive in the CIFAR-10 format where the real one would lie."""
    path = tmp_path / "resources" / "cifar-10-binary.tar.gz"
    path.parent.mkdir()
    write_cifar10_archive(path, records_per_file=2)
    return path


def test_hand_placed_cifar_archive_of_other_sha256_is_refused_naming_the_file_both_hashes_and_the_fix(fake_archive):
    actual = artifacts.sha256_file(fake_archive)
    with pytest.raises(ChecksumError) as caught:
        prepare_dataset("cifar10", {}, archive=str(fake_archive), archive_sha256=CIFAR10_SHA256)
    message = str(caught.value)
    assert str(fake_archive) in message and actual in message and CIFAR10_SHA256 in message
    assert "Delete it" in message and f"set data.cifar10.sha256: {actual}" in message
    # Refused before unpacking: nothing beside the archive, which is left as the user placed it.
    assert sorted(p.name for p in fake_archive.parent.iterdir()) == [fake_archive.name]
    assert artifacts.sha256_file(fake_archive) == actual


def test_cifar10_factory_without_a_hash_checks_the_published_one(fake_archive):
    from hessflow import data

    with pytest.raises(ChecksumError, match=CIFAR10_SHA256):
        data.cifar10(fake_archive)


def test_cifar_archive_of_the_configured_sha256_is_prepared(fake_archive):
    # A deliberate other copy, named by data.cifar10.sha256: accepted.
    train, test, card = prepare_dataset(
        "cifar10", {}, archive=str(fake_archive), archive_sha256=artifacts.sha256_file(fake_archive))
    assert train[0].shape == (10, 32, 32, 3) and test[0].shape == (2, 32, 32, 3)
    assert card["factory"] == "hessflow.data:cifar10"


def test_tiny_test_fraction_leaving_the_test_split_empty_is_refused_naming_the_key():
    # 0.001 of each digit class (about 180 images) rounds to 0: no class contributes a test image.
    with pytest.raises(ValueError, match=r"the test split is empty; raise data\.options\.test_fraction"):
        prepare_dataset("digits", {"test_fraction": 0.001})


def test_test_fraction_leaving_the_train_split_empty_is_refused_naming_the_key():
    with pytest.raises(ValueError, match=r"the train split is empty; lower data\.options\.test_fraction"):
        prepare_dataset("digits", {"test_fraction": 0.999})


def test_factory_of_your_own_returning_an_empty_test_split_is_refused(monkeypatch):
    module = types.ModuleType("h7_empty_data")
    module.load = lambda: ((np.zeros((4, 3)), np.arange(4)), (np.zeros((0, 3)), np.zeros(0, int)))
    monkeypatch.setitem(sys.modules, "h7_empty_data", module)
    with pytest.raises(ValueError, match=r"'h7_empty_data:load': the test split is empty.*return test examples"):
        prepare_dataset("h7_empty_data:load", {})


# ------------------------------------------------------------------------------------------------
# numbers: a density of non-finite settings, a diverging run
# ------------------------------------------------------------------------------------------------
def ritz_arrays():
    """Two draws of Ritz values and weights (NaN/zero padded, as aggregate writes them)."""
    values = np.array([[-0.5, 0.1, 2.0], [-0.4, 0.2, np.nan]])
    weights = np.array([[0.2, 0.5, 0.3], [0.4, 0.6, 0.0]])
    return values, weights


@pytest.mark.parametrize("key, value, cause", [
    ("sigma_squared", math.inf, "sigma_squared must be finite"),
    ("sigma_squared", math.nan, "sigma_squared must be finite"),
    ("grid_expand", math.inf, "grid_expand must be finite"),
    ("negative_threshold", math.inf, "negative_threshold must be finite"),
    ("sigma_squared", 1e-300, "zero or not finite at every grid point"),  # exp underflows to 0
])
def test_density_of_non_finite_or_underflowing_settings_is_refused_naming_the_cause(key, value, cause):
    values, weights = ritz_arrays()
    config = {**DENSITY, key: value, **({"grid_len": 2} if value == 1e-300 else {})}
    with pytest.raises(ValueError, match=cause):
        reproduce.density_and_stats(values, weights, 10, config)


def test_density_step_with_infinite_sigma_squared_fails_naming_the_step_and_writes_nothing(tmp_path):
    values, weights = ritz_arrays()
    np.save(tmp_path / "ritz_values.npy", values)
    np.save(tmp_path / "ritz_weights.npy", weights)
    (tmp_path / "provenance_0.json").write_text(json.dumps({"dim": 10}))
    job = f"""
        import builtins, runpy
        from types import SimpleNamespace
        class Named(SimpleNamespace):
            def __getitem__(self, index):
                return list(vars(self).values())[index]
        root = {str(tmp_path)!r}
        builtins.snakemake = SimpleNamespace(
            scriptdir={str(ROOT / "scripts")!r}, log=[root + "/density.log"], threads=1,
            input=Named(ritz_values=root + "/ritz_values.npy", ritz_weights=root + "/ritz_weights.npy",
                        provenance=[root + "/provenance_0.json"]),
            output=Named(density=root + "/density.npy", stats=root + "/stats.json"),
            params=SimpleNamespace(density={{**{DENSITY!r}, "sigma_squared": float("inf")}}, gradient_k=10),
            wildcards=SimpleNamespace(step="75"))
        runpy.run_path({str(ROOT / "scripts" / "density.py")!r}, run_name="__main__")
    """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(job)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    log = (tmp_path / "density.log").read_text()
    assert done.returncode != 0
    assert "hessflow: density of checkpoint step 75: sigma_squared must be finite and > 0; got inf" in log
    assert not (tmp_path / "density.npy").exists() and not (tmp_path / "stats.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file either


def test_learning_rate_1000_diverges_and_the_train_log_says_so_once():
    from hessflow import factories, training

    (x, y), _, card = prepare_dataset("digits", {"test_fraction": 0.2})
    history = {}
    lines = {}
    for rate in (1000.0, 0.1):
        model = factories.build_model("small_cnn", {"batch_norm": True}, card=card)
        lines[rate] = []
        history[rate] = training.train(model, x, y, num_steps=20, batch_size=64, learning_rate=rate,
                                       weight_decay=5e-4, log_every=10, log=lines[rate].append)
    warnings = [line for line in lines[1000.0] if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith("hessflow: warning: training diverged: data loss")
    assert "lower training.learning_rate" in warnings[0]
    # The rule, checked on the numbers: a log(10)-ish start, a loss thousands of times larger after.
    assert history[1000.0]["data_loss"].min() > 1000 * math.log(10)
    assert not any("warning" in line for line in lines[0.1])


def summary_input_row(step, train_loss):
    """A summary row of made-up statistics at a checkpoint of this train loss."""
    stats = {key: 0.0 for key in reproduce.SUMMARY_SPECTRUM_COLUMNS} | {"num_draws": 1, "num_steps": 5, "dim": 7}
    evaluation = {"train_loss": train_loss, "test_loss": train_loss, "train_accuracy": 0.1, "test_accuracy": 0.1}
    return reproduce.summary_row(step, stats, evaluation, {"loss": train_loss, "gradient_norm": 1.0})


def test_diverged_checkpoints_are_flagged_in_a_last_summary_column():
    rows = [summary_input_row(0, 2.3), summary_input_row(75, 22.0), summary_input_row(150, 5.7e12),
            summary_input_row(225, math.nan)]
    table = reproduce.summary_table(rows)
    assert list(table.columns) == [*rows[0], "diverged"]  # the existing columns kept, in order
    assert table["diverged"].tolist() == [False, False, True, True]  # 22 < 10 x 2.3 < 5.7e12; NaN
    assert table["train_loss"].tolist()[:3] == [2.3, 22.0, 5.7e12]


# ------------------------------------------------------------------------------------------------
# a truncated or corrupt export archive
# ------------------------------------------------------------------------------------------------
def export_like_archive(path: Path) -> bytes:
    """A small ``demo/`` archive with incompressible content, so that damage hits the gzip stream."""
    payload = np.random.default_rng(0).bytes(200_000)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in [("demo/manifest.tsv", b"path\tsize\tsha256\n"), ("demo/lanczos/tridiag_0.npy", payload)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path.read_bytes()


@pytest.mark.parametrize("damage", ["truncated", "corrupt header", "an error page"])
def test_damaged_export_archive_gives_one_line_and_exit_1_and_rebuilds_nothing(tmp_path, capsys, damage):
    # (Bytes changed inside a member's data are the manifest's to catch: tampering, not damage.)
    archive = tmp_path / "demo.tar.gz"
    whole = export_like_archive(archive)
    damaged = {"truncated": whole[: len(whole) // 2],
               "corrupt header": bytes(b ^ 0xFF for b in whole[:16]) + whole[16:],
               "an error page": b"<html><body>502 Bad Gateway</body></html>\n"}[damage]
    archive.write_bytes(damaged)
    out = tmp_path / "reproduced"
    status = reproduce.main([str(archive), "--out", str(out)])
    captured = capsys.readouterr()
    assert status == 1
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err
    assert lines[0].startswith(f"hessflow-reproduce: {archive} is not a readable export archive (")
    assert "truncated or corrupt" in lines[0] and "snakemake export" in lines[0]
    assert not out.exists()


# ------------------------------------------------------------------------------------------------
# config files: YAML syntax, non-finite numbers, through Snakemake too
# ------------------------------------------------------------------------------------------------
BAD_YAML = "run_name: demo\nlanczos:\n  steps: [90, 3\n  draws: 3\n"  # the list is never closed


def test_yaml_syntax_error_is_named_with_file_and_line(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(BAD_YAML)
    with pytest.raises(sanity.ConfigFileError) as caught:
        sanity.load_config_file(path)
    message = str(caught.value)
    assert message.startswith(f"config file {path}, line 4, column ")  # where the parser gave up
    assert "not valid YAML" in message and "\n" not in message


def test_config_check_command_names_the_file_and_line_and_exits_1(tmp_path, capsys):
    bad, good, infinite = tmp_path / "bad.yaml", tmp_path / "good.yaml", tmp_path / "inf.yaml"
    bad.write_text(BAD_YAML)
    good.write_text("run_name: demo\n")
    infinite.write_text("run_name: demo\ndensity: {sigma_squared: .inf}\n")
    assert sanity.main([str(good)]) == 0
    assert sanity.main([str(bad), str(good), str(infinite), str(tmp_path / "missing.yaml")]) == 1
    captured = capsys.readouterr()
    assert f"{good}: ok" in captured.out
    assert captured.err.splitlines() == [
        line for line in captured.err.splitlines() if line.startswith(("config file", str(infinite)))]
    assert f"config file {bad}, line 4" in captured.err
    assert f"{infinite}: config density.sigma_squared: .inf is not a finite number" in captured.err
    assert f"config file {tmp_path / 'missing.yaml'} not found" in captured.err


def snakemake_dry_run(tmp_path, configfile):
    env = {key: value for key, value in os.environ.items() if not key.startswith("SNAKEMAKE")}
    done = subprocess.run([str(SNAKEMAKE), "--snakefile", str(SNAKEFILE), "--configfile", str(configfile), "-n"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120, env=env)
    return done.returncode, done.stdout + done.stderr


def test_non_finite_config_value_stops_snakemake_in_one_line_before_any_job(tmp_path):
    configfile = tmp_path / "inf.yaml"
    configfile.write_text("run_name: inf_run\ndensity:\n  sigma_squared: .inf\n")
    status, output = snakemake_dry_run(tmp_path, configfile)
    assert status != 0
    assert "hessflow: config density.sigma_squared: .inf is not a finite number" in output
    assert "Traceback" not in output and "rule " not in output  # no DAG, no job
    assert not (tmp_path / "results").exists()


def test_yaml_syntax_error_in_configfile_stops_snakemake_which_names_no_line(tmp_path):
    # Snakemake reads --configfile before the workflow (its message has no file or line), so the
    # README points at `python -m hessflow.sanity FILE`, which names both. If this fails, Snakemake
    # has learnt to say more: update the README's "When things go wrong".
    configfile = tmp_path / "bad.yaml"
    configfile.write_text(BAD_YAML)
    status, output = snakemake_dry_run(tmp_path, configfile)
    assert status != 0
    assert "Config file is not valid JSON or YAML" in output
    assert not (tmp_path / "results").exists()
