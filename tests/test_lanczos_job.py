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
