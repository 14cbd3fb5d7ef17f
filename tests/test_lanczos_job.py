"""One Lanczos job of each curvature: the operator, block and probe the spec names, nothing else.

``run_lanczos_job`` builds the operator from the spec (``operator``, ``variables``, ``probe``);
its tridiagonal must be that of ``hessflow.lanczos.lanczos`` on the library operator built by
hand from the same checkpoint, data and start vector, and its provenance must say what it ran.
"""

import json

import numpy as np
import pytest

from tiny_job import lanczos_job_spec


def library_tridiag(spec: dict, operator_class, variables, probe):
    """The tridiagonal of the job ``spec`` computed with the library directly."""
    from hessflow import checkpoints, data, factories, objectives
    from hessflow.lanczos import lanczos

    card = json.loads(open(spec["card"]).read())
    model = factories.build_model(spec["model"]["factory"], spec["model"]["options"], card=card,
                                  dtype=spec["hessian"]["dtype"], seed=spec["run_seed"])
    checkpoints.load_checkpoint(model, spec["checkpoint"])
    x, y = np.load(spec["images"]), np.load(spec["labels"])
    to_inputs = data.resolve_preprocess("auto", x[:1])
    objective = spec["objective"]
    operator = operator_class(
        model, data.fixed_batches(to_inputs(x, spec["hessian"]["dtype"]), y, spec["hessian"]["batch_size"]),
        loss=objectives.make_loss(objective["loss"]["name"], objective["loss"]["options"]),
        weight_decay=objective["weight_decay"], batch_norm=spec["hessian"]["batch_norm"],
        dtype=spec["hessian"]["dtype"], variables=variables)
    seed = (spec["run_seed"], spec["step"], spec["draw"])
    return lanczos(operator, num_steps=spec["num_steps"], seed=seed, probe=probe).tridiag, operator


@pytest.mark.parametrize("operator, variables, probe", [
    ("ggn", None, "gaussian"),
    ("hessian", ["logits"], "rademacher"),
])
def test_job_runs_the_curvature_and_probe_of_its_spec(tmp_path, operator, variables, probe):
    from hessflow import hvp
    from hessflow.lanczos_job import run_lanczos_job

    spec = lanczos_job_spec(tmp_path, batch_size=50) | {
        "operator": operator, "block": "head" if variables else "all", "variables": variables, "probe": probe}
    provenance = run_lanczos_job(spec, log=lambda line: None)
    expected, library_operator = library_tridiag(
        spec, {"ggn": hvp.GGNOperator, "hessian": hvp.HessianOperator}[operator], variables, probe)
    tridiag = np.load(tmp_path / "tridiag_0.npy")
    assert np.array_equal(tridiag, expected), np.abs(tridiag - expected).max()
    assert (provenance["operator"], provenance["variables"], provenance["probe"]) == (operator, variables, probe)
    assert provenance["dim"] == library_operator.dim
    assert provenance["tensor_float_32"] is False  # never in a Hessian pass (a no-op without a GPU)
    assert provenance["variable_paths"] == library_operator.variable_paths
    if variables:
        assert provenance["variable_paths"] == ["logits/kernel", "logits/bias"]


def test_job_refuses_an_unknown_operator_by_name(tmp_path):
    from hessflow.lanczos_job import run_lanczos_job

    spec = lanczos_job_spec(tmp_path, batch_size=50) | {"operator": "fisher"}
    with pytest.raises(ValueError, match=r"operator must be one of \['ggn', 'hessian'\], got 'fisher'"):
        run_lanczos_job(spec, log=lambda line: None)


def basis_then_draw_specs(folder, **changes):
    """The specs of a deflation basis run (8 steps, vectors kept) and of draw 0 deflated on it."""
    spec = lanczos_job_spec(folder, batch_size=50) | {"variables": ["logits"], "block": "head"} | changes
    basis_outputs = {name: str(folder / f"{name}_basis.{'json' if name == 'provenance' else 'npy'}")
                     for name in ("tridiag", "vectors", "provenance")}
    basis = spec | {"draw": "basis", "num_steps": 8, "outputs": basis_outputs,
                    "state_file": str(folder / ".state_basis.npz")}
    return basis, spec | {"num_steps": 6, "deflation": basis_outputs}


def test_deflated_draw_is_lanczos_on_the_projected_operator_from_the_projected_start(tmp_path):
    from hessflow import hvp
    from hessflow.deflation import DeflatedOperator, deflated_start_vector
    from hessflow.lanczos import lanczos
    from hessflow.lanczos_job import run_lanczos_job

    basis_spec, draw_spec = basis_then_draw_specs(tmp_path)
    run_lanczos_job(basis_spec, log=lambda line: None)
    provenance = run_lanczos_job(draw_spec, log=lambda line: None)

    _, operator = library_tridiag(draw_spec, hvp.HessianOperator, ["logits"], "gaussian")
    # The basis run: its own seed (run_seed, step, 0, 1), independent of every draw's.
    basis_run = lanczos(operator, num_steps=8, seed=(0, 0, 0, 1))
    assert np.array_equal(np.load(tmp_path / "tridiag_basis.npy"), basis_run.tridiag)
    vectors = np.load(tmp_path / "vectors_basis.npy")
    assert np.array_equal(vectors, basis_run.vectors)
    expected = lanczos(DeflatedOperator(operator, vectors), num_steps=6,
                       start=deflated_start_vector(operator.dim, (0, 0, 0), vectors)).tridiag
    assert np.array_equal(np.load(tmp_path / "tridiag_0.npy"), expected)
    n = operator.dim
    assert provenance["deflation"]["basis_steps"] == 8
    assert provenance["deflation"]["complement_weight"] == (n - 8) / n  # Gaussian probe: exactly unbiased


def test_deflated_draw_refuses_a_basis_of_another_operator_naming_it(tmp_path):
    from hessflow.lanczos_job import run_lanczos_job

    basis_spec, draw_spec = basis_then_draw_specs(tmp_path)
    run_lanczos_job(basis_spec | {"objective": basis_spec["objective"] | {"weight_decay": 0.0}}, log=lambda line: None)
    refused = r"provenance_basis\.json: computed for another operator.*delete .*tridiag_basis"
    with pytest.raises(ValueError, match=refused):
        run_lanczos_job(draw_spec, log=lambda line: None)


def test_progress_estimate_leaves_out_the_first_step_which_traces():
    from hessflow.lanczos_job import _progress_logger

    times = iter([100.0, 101.0, 102.0])  # tracing: 99 s to step 1; then 1 s a step
    lines = []
    report = _progress_logger(lines.append, start=1.0, clock=lambda: next(times))
    for done in (1, 2, 3):
        report(done, 10)
    assert "no estimate yet" in lines[0]
    assert lines[1].endswith("estimated time left 8.0 s") and lines[2].endswith("estimated time left 7.0 s")


def test_job_records_lanczos_health_and_the_gradients_share_of_the_top_ritz_spans(tmp_path):
    from hessflow import hvp
    from hessflow.eigenpairs import top_ritz_pairs
    from hessflow.lanczos import lanczos
    from hessflow.lanczos_job import run_lanczos_job

    spec = lanczos_job_spec(tmp_path, batch_size=50)
    provenance = run_lanczos_job(spec, log=lambda line: None)
    _, operator = library_tridiag(spec, hvp.HessianOperator, None, "gaussian")
    run = lanczos(operator, num_steps=12, seed=(0, 0, 0))
    assert provenance["orthogonality_loss"] == run.orthogonality_loss < 1e-12
    assert provenance["min_beta"] == run.beta.min() and provenance["health_warnings"] == []
    # Independently: project the gradient on an orthonormal basis of the top-j Ritz vectors by QR.
    _, gradient = operator.loss_and_gradient()
    ritz_vectors = top_ritz_pairs(run.tridiag, run.vectors, 12).vectors
    expected = [np.sum((np.linalg.qr(ritz_vectors[:, :j])[0].T @ gradient) ** 2) / (gradient @ gradient)
                for j in range(1, 13)]
    np.testing.assert_allclose(provenance["gradient_fractions"], expected, rtol=1e-9, atol=1e-12)


def with_vectors(spec: dict) -> dict:
    folder = spec["state_file"].rpartition("/")[0]
    return spec | {"outputs": {**spec["outputs"], "vectors": f"{folder}/vectors_0.npy"}}


def test_a_streamed_job_gives_the_in_memory_jobs_tridiagonal_bit_for_bit(tmp_path):
    from hessflow.lanczos_job import run_lanczos_job

    memory, stream = tmp_path / "memory", tmp_path / "stream"
    memory.mkdir(), stream.mkdir()
    run_lanczos_job(with_vectors(lanczos_job_spec(memory, batch_size=70)), log=lambda line: None)
    lines = []
    provenance = run_lanczos_job(with_vectors(lanczos_job_spec(stream, batch_size=70)) | {"data": "stream"},
                                 log=lines.append)
    assert np.array_equal(np.load(stream / "tridiag_0.npy"), np.load(memory / "tridiag_0.npy"))
    assert np.array_equal(np.load(stream / "vectors_0.npy"), np.load(memory / "vectors_0.npy"))
    assert provenance["data"] == "stream" and "batches (stream)" in lines[0]


def test_a_streamed_job_refuses_a_distribution_strategy_naming_both_keys(tmp_path):
    from hessflow.lanczos_job import run_lanczos_job

    spec = lanczos_job_spec(tmp_path, batch_size=50) | {"data": "stream", "strategy": "mirrored", "workers": 1}
    with pytest.raises(ValueError, match="hessian.data: stream.*lanczos.strategy: default"):
        run_lanczos_job(spec, log=lambda line: None)


def test_a_job_with_its_vectors_on_disk_gives_the_in_memory_tridiagonal_and_deletes_the_file(tmp_path):
    from hessflow.lanczos_job import run_lanczos_job, vectors_file_beside

    memory, disk = tmp_path / "memory", tmp_path / "disk"
    memory.mkdir(), disk.mkdir()
    run_lanczos_job(with_vectors(lanczos_job_spec(memory, batch_size=50)), log=lambda line: None)
    spec = with_vectors(lanczos_job_spec(disk, batch_size=50)) | {"vector_store": "disk"}
    run_lanczos_job(spec, log=lambda line: None)
    expected = np.load(memory / "tridiag_0.npy")
    np.testing.assert_allclose(np.load(disk / "tridiag_0.npy"), expected, rtol=0, atol=1e-12 * np.abs(expected).max())
    np.testing.assert_allclose(np.load(disk / "vectors_0.npy"), np.load(memory / "vectors_0.npy"), atol=1e-10)
    assert vectors_file_beside(spec["state_file"]).endswith(".vectors.npy")
    assert not any(path.name.startswith(".state") for path in disk.iterdir())  # no state, no vectors file left


def test_an_unknown_vector_store_is_refused_naming_the_key(tmp_path):
    from hessflow.lanczos_job import run_lanczos_job

    with pytest.raises(ValueError, match=r"lanczos.vector_store must be one of \('memory', 'disk'\)"):
        run_lanczos_job(lanczos_job_spec(tmp_path, batch_size=50) | {"vector_store": "ssd"}, log=lambda line: None)


def draw_spec(folder, draw: int) -> dict:
    spec = lanczos_job_spec(folder, batch_size=40)  # batches of 40, 40 and 20
    return spec | {"draw": draw, "state_file": str(folder / f".state_{draw}.npz"),
                   "outputs": {"tridiag": str(folder / f"tridiag_{draw}.npy"),
                               "provenance": str(folder / f"provenance_{draw}.json")}}


def test_draws_side_by_side_are_the_separate_draws_and_their_own_jobs_only_resume(tmp_path):
    from hessflow.lanczos_job import run_lanczos_job

    alone, together = tmp_path / "alone", tmp_path / "together"
    alone.mkdir(), together.mkdir()
    for draw in range(3):
        run_lanczos_job(draw_spec(alone, draw), log=lambda line: None)
    lines = []
    leader = draw_spec(together, 0) | {"alongside": [{"draw": d, "state_file": str(together / f".state_{d}.npz")}
                                                      for d in (1, 2)]}
    provenance = run_lanczos_job(leader, log=lines.append)
    assert provenance["draws_alongside"] == [1, 2]
    assert any("draws [0, 1, 2] side by side: 3 products per Hessian pass" in line for line in lines)
    assert sorted(p.name for p in together.glob(".state_*")) == [".state_1.npz", ".state_2.npz"]
    for draw in (1, 2):
        follower = run_lanczos_job(draw_spec(together, draw), log=lambda line: None)
        assert follower["resumed_from"] == 12 and follower["draws_alongside"] == []
    assert not list(together.glob(".state_*"))  # each job removed its own state
    for draw in range(3):
        expected = np.load(alone / f"tridiag_{draw}.npy")
        # float64; the shared pass sums the same terms in another order
        np.testing.assert_allclose(np.load(together / f"tridiag_{draw}.npy"), expected, rtol=0,
                                   atol=1e-10 * np.abs(expected).max())


def test_a_draw_whose_group_state_is_gone_computes_alone(tmp_path):
    from hessflow.lanczos_job import run_lanczos_job

    provenance = run_lanczos_job(draw_spec(tmp_path, 1), log=lambda line: None)
    assert provenance["resumed_from"] is None and provenance["draws_alongside"] == []


@pytest.mark.parametrize("alongside, message", [
    ([{"draw": 0, "state_file": "elsewhere.npz"}], "draw 0 .* appears twice"),
    ([{"draw": -1, "state_file": "s.npz"}], "draw must be a non-negative int"),
    ([{"draw": 1}], "each alongside entry is"),
])
def test_bad_alongside_draws_are_refused_by_name(tmp_path, alongside, message):
    from hessflow.lanczos_job import run_lanczos_job

    with pytest.raises(ValueError, match=message):
        run_lanczos_job(draw_spec(tmp_path, 0) | {"alongside": alongside}, log=lambda line: None)
