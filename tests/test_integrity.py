"""Artifacts changed after their job, or malformed, are refused naming the file, the draw and the fix.

A Lanczos job records the sha256 of every file it wrote in its provenance; aggregation and
``hessflow-reproduce`` verify each tridiagonal against it (hessflow.integrity) and check its form,
so a tampered or truncated draw is never aggregated, nor re-certified in ``manifest.tsv``. A data
array that differs from the data card's record is refused by the Lanczos job. Library level, plus
one workflow run on a copy of the session's small run (tests/small_run.py) to show the aggregate
rule refusing and the fix (deleting the tridiagonal) planning its Lanczos job again.
"""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from hessflow import artifacts, data, integrity, reproduce
from hessflow.artifacts import read_manifest, write_manifest
from hessflow.integrity import IntegrityError, load_tridiag, load_tridiags
from hessflow.lanczos import tridiagonal_matrix

FIX = r"delete \S+tridiag_{draw}\.npy \(and provenance_{draw}\.json\) to recompute draw {draw}: Snakemake then reruns"


def tridiag_of(seed: int, m: int = 6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return tridiagonal_matrix(rng.standard_normal(m), rng.uniform(0.5, 1.0, m - 1))


def write_draw(folder: Path, draw: int, array: np.ndarray, *, record=True) -> tuple[Path, Path]:
    """``tridiag_{draw}.npy`` and its provenance, written as a Lanczos job writes them."""
    tridiag = artifacts.save_npy(folder / f"tridiag_{draw}.npy", array)
    provenance = {"draw": draw}
    if record:
        provenance[integrity.OUTPUTS_SHA256] = integrity.outputs_sha256({"tridiag": tridiag})
    return tridiag, artifacts.save_json(folder / f"provenance_{draw}.json", provenance)


def flip_last_byte(path: Path) -> None:
    content = bytearray(path.read_bytes())
    content[-1] ^= 0x01
    path.write_bytes(bytes(content))


def test_untouched_draws_load_as_written(tmp_path):
    written = [tridiag_of(0), tridiag_of(1, m=4)]
    files = [write_draw(tmp_path, draw, array) for draw, array in enumerate(written)]
    loaded = load_tridiags([t for t, _ in files], [p for _, p in files])
    assert all(np.array_equal(a, b) and a.dtype == np.float64 for a, b in zip(loaded, written))


def test_tridiag_changed_after_its_job_is_refused_naming_both_hashes_and_the_fix(tmp_path):
    tridiag, provenance = write_draw(tmp_path, 1, tridiag_of(2))
    recorded = json.loads(provenance.read_text())[integrity.OUTPUTS_SHA256]["tridiag"]
    flip_last_byte(tridiag)  # the last entry of T, a zero (-> 5e-324): still finite and readable
    with pytest.raises(IntegrityError) as error:
        load_tridiag(tridiag, provenance, 1)
    message = str(error.value)
    assert message.startswith(f"{tridiag} (draw 1) is refused: ")
    assert f"changed after its Lanczos job wrote it: sha256 {artifacts.sha256_file(tridiag)}" in message
    assert f"provenance_1.json records {recorded}" in message
    assert re.search(FIX.format(draw=1), message)


@pytest.mark.parametrize(
    "fault, array, problem",
    [
        ("non_square", np.zeros((3, 4)), r"has shape \(3, 4\), not that of a square \(m, m\) matrix"),
        ("not_2d", np.zeros(5), r"has shape \(5,\), not that of a square"),
        ("empty", np.zeros((0, 0)), r"has shape \(0, 0\)"),
        ("float32", tridiag_of(3).astype(np.float32), "has dtype float32, not float64"),
        ("non_finite", np.where(np.eye(6, k=1) > 0, np.nan, tridiag_of(4)), "has 5 non-finite entries"),
        ("non_symmetric", tridiag_of(5) + np.eye(6, k=1), r"is not symmetric \(max \|T - T\^T\| = 1\)"),
        ("not_tridiagonal", tridiag_of(6) + np.eye(6, k=3) + np.eye(6, k=-3), "has nonzero entries beyond its three"),
    ],
)
def test_malformed_tridiag_is_refused_naming_the_draw_the_problem_and_the_fix(tmp_path, fault, array, problem):
    # Recorded by its provenance as is: the form check alone refuses it.
    tridiag, provenance = write_draw(tmp_path, 3, array)
    with pytest.raises(IntegrityError, match=rf"tridiag_3\.npy \(draw 3\) is refused: it {problem}") as error:
        load_tridiags([tridiag], [provenance], draws=[3])
    assert "changed after" not in str(error.value)
    assert re.search(FIX.format(draw=3), str(error.value))


def test_truncated_tridiag_is_refused_as_unreadable_and_changed(tmp_path):
    tridiag, provenance = write_draw(tmp_path, 0, tridiag_of(7))
    tridiag.write_bytes(tridiag.read_bytes()[:150])  # a copy cut short
    with pytest.raises(IntegrityError, match=r"tridiag_0\.npy \(draw 0\) is refused: it is unreadable as \.npy.*"
                       r"changed after its Lanczos job wrote it") as error:
        load_tridiag(tridiag, provenance, 0)
    assert re.search(FIX.format(draw=0), str(error.value))


def test_tridiag_without_a_record_or_with_unreadable_provenance_is_refused(tmp_path):
    tridiag, provenance = write_draw(tmp_path, 2, tridiag_of(8), record=False)
    with pytest.raises(IntegrityError, match=r"provenance_2\.json records no sha256 for it"):
        load_tridiag(tridiag, provenance, 2)
    provenance.write_text("{not json")
    with pytest.raises(IntegrityError, match=r"provenance_2\.json: the Lanczos job's provenance is unreadable"):
        load_tridiag(tridiag, provenance, 2)


def test_every_refused_draw_is_named_at_once(tmp_path):
    files = [write_draw(tmp_path, draw, tridiag_of(draw)) for draw in range(3)]
    flip_last_byte(files[0][0])
    files[2][0].write_bytes(b"")
    with pytest.raises(IntegrityError) as error:
        load_tridiags([t for t, _ in files], [p for _, p in files])
    lines = str(error.value).splitlines()
    assert [line.split(" is refused")[0] for line in lines] == [f"{files[0][0]} (draw 0)", f"{files[2][0]} (draw 2)"]


def test_data_array_changed_after_prepare_is_refused_naming_the_file_both_hashes_and_the_fix(tmp_path):
    x = np.arange(48, dtype=np.uint8).reshape(3, 4, 4, 1)
    y = np.array([0, 1, 1])
    card = data.data_card((x, y), (x, y), source={"factory": "test"})
    np.save(tmp_path / "x.npy", x)
    # The card's digest is what np.load gives back, and what the job checks.
    assert integrity.check_data_arrays({"x_train": (tmp_path / "x.npy", np.load(tmp_path / "x.npy"))}, card,
                                       "card.json") == {"x_train": card["arrays"]["x_train"]["sha256"]}
    changed = x.copy()
    changed[0, 0, 0, 0] = 200
    with pytest.raises(IntegrityError) as error:
        integrity.check_data_arrays({"x_train": (tmp_path / "x.npy", changed)}, card, "data/dataset.json")
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'x.npy'}: the array (x_train, shape (3, 4, 4, 1), uint8) has sha256 "
                              f"{integrity.array_sha256(changed)}")
    assert f"data card data/dataset.json records {card['arrays']['x_train']['sha256']}" in message
    assert f"Fix: delete {tmp_path / 'x.npy'}: Snakemake then reruns prepare_data" in message


def test_lanczos_job_refuses_a_data_file_changed_after_prepare_and_writes_nothing(tmp_path):
    from hessflow.lanczos_job import run_lanczos_job

    x, y = np.zeros((4, 2), np.float32), np.array([0, 1, 0, 1])
    card = data.data_card((x, y), (x, y), source={"factory": "test"})
    np.save(tmp_path / "x.npy", x + 1)  # replaced by hand after prepare_data
    np.save(tmp_path / "y.npy", y)
    (tmp_path / "card.json").write_text(json.dumps(card))
    spec = {
        "checkpoint": str(tmp_path / "missing.weights.h5"), "images": str(tmp_path / "x.npy"),
        "labels": str(tmp_path / "y.npy"), "card": str(tmp_path / "card.json"),
        "model": {"factory": "mlp", "options": {}}, "objective": {}, "hessian": {"max_examples": None},
        "num_steps": 2, "save_every": 1, "run_seed": 0, "step": 0, "draw": 0,
        "state_file": str(tmp_path / ".state_0.npz"),
        "outputs": {"tridiag": str(tmp_path / "t.npy"), "provenance": str(tmp_path / "p.json")},
    }
    with pytest.raises(IntegrityError, match=r"x\.npy: the array \(x_train.*changed after prepare_data"):
        run_lanczos_job(spec, log=lambda line: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card.json", "x.npy", "y.npy"]


def test_checkpoint_changed_after_training_is_refused_naming_the_file_both_hashes_and_the_fix(tmp_path):
    checkpoint = tmp_path / "step_10.weights.h5"
    checkpoint.write_bytes(b"weights as the train job wrote them")
    record = tmp_path / "checkpoints.json"
    artifacts.save_json(record, integrity.checkpoint_record({10: checkpoint}))
    assert integrity.check_checkpoint(checkpoint, 10, record) == artifacts.sha256_file(checkpoint)
    written = artifacts.sha256_file(checkpoint)
    checkpoint.write_bytes(b"weights as the train job wrote themX")  # changed by hand afterwards
    with pytest.raises(IntegrityError) as refused:
        integrity.check_checkpoint(checkpoint, 10, record)
    message = str(refused.value)
    assert str(checkpoint) in message and written in message and artifacts.sha256_file(checkpoint) in message
    assert "Fix: delete" in message and "reruns training" in message


def test_checkpoint_of_a_step_the_record_does_not_list_is_refused(tmp_path):
    checkpoint = tmp_path / "step_5.weights.h5"
    checkpoint.write_bytes(b"w")
    record = tmp_path / "checkpoints.json"
    artifacts.save_json(record, integrity.checkpoint_record({10: checkpoint}))
    with pytest.raises(IntegrityError, match=r"records no checkpoint of step 5; delete it"):
        integrity.check_checkpoint(checkpoint, 5, record)


def test_lanczos_job_refuses_a_checkpoint_changed_after_training_and_writes_nothing(tmp_path):
    from hessflow.lanczos_job import run_lanczos_job

    x, y = np.zeros((4, 2), np.float32), np.array([0, 1, 0, 1])
    card = data.data_card((x, y), (x, y), source={"factory": "test"})
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    (tmp_path / "card.json").write_text(json.dumps(card))
    checkpoint = tmp_path / "step_0.weights.h5"
    checkpoint.write_bytes(b"weights")
    artifacts.save_json(tmp_path / "checkpoints.json", {"0": "0" * 64})  # the train job wrote other bytes
    spec = {
        "checkpoint": str(checkpoint), "images": str(tmp_path / "x.npy"), "labels": str(tmp_path / "y.npy"),
        "card": str(tmp_path / "card.json"), "checkpoint_record": str(tmp_path / "checkpoints.json"),
        "model": {"factory": "mlp", "options": {}}, "objective": {},
        "hessian": {"max_examples": None, "dtype": "float32"},
        "num_steps": 2, "save_every": 1, "run_seed": 0, "step": 0, "draw": 0,
        "state_file": str(tmp_path / ".state_0.npz"),
        "outputs": {"tridiag": str(tmp_path / "t.npy"), "provenance": str(tmp_path / "p.json")},
    }
    changed = r"step_0\.weights\.h5: the checkpoint has sha256 .* changed after training"
    with pytest.raises(IntegrityError, match=changed):
        run_lanczos_job(spec, log=lambda line: None)
    assert not (tmp_path / "t.npy").exists() and not (tmp_path / "p.json").exists()


# ------------------------------------------------------------------------------------------------
# the workflow and hessflow-reproduce, on copies of the session's small run
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_reproduce_refuses_a_tridiag_that_differs_from_its_provenance_under_a_rewritten_manifest(tmp_path_factory):
    from small_run import SMALL_CONFIG, fresh_copy, results

    run = results(fresh_copy(tmp_path_factory, "recertified"))
    step = SMALL_CONFIG["spectrum"]["steps"][-1]
    relative = f"lanczos/hessian/all/step_{step}/tridiag_0.npy"
    flip_last_byte(run / relative)
    rows = read_manifest(run / "manifest.tsv")  # the manifest rewritten after the change
    write_manifest(run / "manifest.tsv", [run / row["path"] for row in rows], root=run)

    verification = reproduce.verify_run(run)
    refused = [problem for problem in verification.problems if problem.startswith(f"refused: {relative} (")]
    assert len(verification.problems) == 1 and len(refused) == 1, verification.problems
    assert "changed after its Lanczos job wrote it" in refused[0] and "to recompute draw 0" in refused[0]
    assert reproduce.main([str(run), "--out", str(run.parent / "rebuilt")]) == 1
    assert not (run.parent / "rebuilt").exists()  # nothing rebuilt


@pytest.mark.slow
def test_tridiag_changed_after_its_job_fails_aggregation_and_is_not_recertified(tmp_path_factory):
    from small_run import SMALL_CONFIG, fresh_copy, job, planned_jobs, results, snakemake

    work = fresh_copy(tmp_path_factory, "tampered_tridiag")
    run = results(work)
    step = SMALL_CONFIG["spectrum"]["steps"][-1]
    tampered = run / f"lanczos/hessian/all/step_{step}/tridiag_1.npy"
    manifest_before = (run / "manifest.tsv").read_bytes()
    flip_last_byte(tampered)

    done = snakemake(work, SMALL_CONFIG, check=False)
    assert done.returncode != 0
    log = (run / f"logs/aggregate/hessian/all/step_{step}.log").read_text()
    assert re.search(r"tridiag_1\.npy \(draw 1\) is refused: it changed after its Lanczos job wrote it", log), log
    assert re.search(FIX.format(draw=1), log)
    assert (run / "manifest.tsv").read_bytes() == manifest_before  # not re-certified
    assert not Path(reproduce.RunLayout(str(run)).spectrum_files(step)["tridiags"]).exists()  # no stale aggregate

    tampered.unlink()  # the fix the message gives: the draw's Lanczos job is planned again
    assert job("lanczos", step, 1) in planned_jobs(work, SMALL_CONFIG)


def test_draws_deflated_on_another_basis_run_are_refused_naming_each(tmp_path):
    from hessflow.integrity import load_deflation_basis

    basis, basis_provenance = write_draw(tmp_path, 9, tridiag_of(7))
    recorded = json.loads(basis_provenance.read_text()) | {"dim": 50}
    artifacts.save_json(basis_provenance, recorded)
    draws = []
    for draw, basis_sha256 in enumerate([recorded[integrity.OUTPUTS_SHA256]["tridiag"], "0" * 64]):
        _, provenance = write_draw(tmp_path, draw, tridiag_of(draw))
        artifacts.save_json(provenance, json.loads(provenance.read_text()) | {"deflation": {
            "basis_sha256": {"tridiag": basis_sha256}, "complement_weight": 0.88}})
        draws.append(provenance)
    with pytest.raises(IntegrityError, match=r"provenance_1\.json: draw 1 was not deflated on the basis run") as error:
        load_deflation_basis(basis, basis_provenance, draws)
    assert "provenance_0" not in str(error.value)
    loaded = load_deflation_basis(basis, basis_provenance, draws[:1])
    assert np.array_equal(loaded.tridiag, tridiag_of(7)) and loaded.dim == 50
    assert loaded.complement_weights.tolist() == [0.88]


def test_array_sha256_of_a_memory_mapped_array_hashes_it_in_slices_to_the_whole_arrays_digest(tmp_path, monkeypatch):
    # hessian.data: stream hashes the training arrays memory-mapped, a few rows at a time; the
    # digest must be the data card's, i.e. that of the dtype, the shape and all C-order bytes.
    import hashlib

    images = np.random.default_rng(0).integers(0, 256, size=(37, 4, 4, 3), dtype=np.uint8)
    np.save(tmp_path / "x.npy", images)
    expected = hashlib.sha256(f"{images.dtype.str}{images.shape}".encode() + images.tobytes()).hexdigest()
    monkeypatch.setattr(integrity, "HASH_CHUNK_BYTES", 5 * images[:1].nbytes)  # 8 slices, the last of 2 rows
    assert integrity.array_sha256(np.load(tmp_path / "x.npy", mmap_mode="r")) == expected
    assert integrity.array_sha256(images) == expected
    assert integrity.array_sha256(np.asfortranarray(images)) == expected  # C-order bytes whatever the layout
