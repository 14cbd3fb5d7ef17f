"""One Lanczos job: one SLQ draw of a curvature operator at one checkpoint, on one or many workers.

The operator is the Hessian (`hessflow.hvp.HessianOperator`) or the generalized Gauss-Newton
matrix (`hessflow.hvp.GGNOperator`) of the training objective, of the whole model or of a block
of its variables (regular expressions over the variables' paths).

The workflow's ``lanczos`` rule runs `run_lanczos_job`; for a multi-worker
job it starts one process per worker (`launch_workers`: through ``srun``
inside a Slurm allocation, else as local processes with a ``TF_CONFIG`` on
127.0.0.1), each of which runs ``python -m hessflow.lanczos_job SPEC.json``.
Every worker computes the same Lanczos recurrence on the all-reduced
Hessian-vector products; only the chief writes artifacts. The job is
described by a `LanczosJobSpec`, written as JSON for the workers.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from hessflow.layout import BASIS_DRAW

__all__ = ["BASIS_DRAW", "OPERATOR_CLASSES", "LanczosJobSpec", "run_lanczos_job", "launch_workers", "local_cluster",
           "operator_identity", "start_seed", "vectors_file_beside", "VECTOR_STORES"]

#: Where a job's Lanczos vectors live (config ``lanczos.vector_store``).
VECTOR_STORES = ("memory", "disk")

#: The config's operator names and the `hessflow.hvp` classes they build.
OPERATOR_CLASSES = {"hessian": "HessianOperator", "ggn": "GGNOperator"}


def start_seed(run_seed: int, step: int, draw: int | str) -> tuple[int, ...]:
    """The seed of a job's start vector: ``(run_seed, step, draw)``, and ``(run_seed, step, 0, 1)``
    for the deflation basis run (``draw == BASIS_DRAW``).

    `numpy.random.SeedSequence` pads short entropy with zeros (``(a, b, d)`` is ``(a, b, d, 0)``),
    so the basis run's seed, ending in a nonzero word, is independent of every draw's.
    """
    if draw == BASIS_DRAW:
        return (run_seed, step, 0, 1)
    if isinstance(draw, bool) or not isinstance(draw, int) or draw < 0:
        raise ValueError(f"Lanczos job spec: draw must be a non-negative int or {BASIS_DRAW!r}; got {draw!r}")
    return (run_seed, step, draw)


@dataclass(frozen=True)
class LanczosJobSpec:
    """Everything one Lanczos job computes with: inputs, the operator's definition, outputs.

    Attributes:
        checkpoint: the ``.weights.h5`` file of the checkpoint.
        images, labels: the training x and y ``.npy`` files (as the data factory returned them).
        card: the data card (JSON) the model is built from (``hessflow.factories.build_model``).
        model: ``{"factory", "options"}`` as in the config.
        objective: ``{"loss": {"name", "options"}, "weight_decay", "preprocess"}``.
        hessian: ``{"batch_size", "batch_norm", "dtype", "max_examples"}`` as in the config.
        operator: ``"hessian"`` or ``"ggn"`` (`OPERATOR_CLASSES`).
        block: the block's name (``hessian.blocks``), for the log and the provenance.
        variables: the block's regular expressions over the trainable variables' paths
            (``variables=`` of the operator); None: every variable.
        probe: the start vector's distribution, ``hessflow.lanczos.PROBES``.
        num_steps, save_every: Lanczos steps, and how often the resumable state is saved.
        run_seed, step, draw: the start vector is seeded by `start_seed` ``(run_seed, step, draw)``;
            ``draw`` is `BASIS_DRAW` for the deflation basis run.
        strategy, workers: ``hessflow.distribute.STRATEGIES`` and replicas per worker.
        state_file: the resumable Lanczos state (undeclared, beside the outputs).
        outputs: ``{"tridiag", "provenance", "vectors" (optional)}`` paths.
        checkpoint_record: the train job's ``{step: sha256}`` of its checkpoints
            (``train/checkpoints.json``), checked before the checkpoint is loaded; None checks nothing.
        data: ``"memory"`` (the training arrays read once into memory) or ``"stream"`` (read from
            their files batch by batch every pass, `hessflow.streaming`: data sets beyond RAM; one
            device only). The same operator bit for bit, so not part of its identity.
        vector_store: ``"memory"`` or ``"disk"``: where the n x m Lanczos vectors live while the job
            runs; ``disk``: a memory-mapped ``.npy`` beside the state file (`vectors_file_beside`),
            which the resumable state reuses and the job deletes once its outputs are written.
        deflation: ``{"tridiag", "vectors", "provenance"}``, the outputs of the deflation basis run
            of the same operator and checkpoint: the run is then on ``P H P``, ``P = I - V V^T``
            with ``V`` the basis run's Lanczos vectors (`hessflow.deflation`), from the projected
            start vector. None: plain SLQ.
        alongside: ``[{"draw", "state_file"}, ...]``, other draws of the same operator and
            checkpoint that this job runs side by side with its own (``lanczos.draws_per_job``):
            every Hessian pass computes all their products at once (``probes_per_pass``,
            `hessflow.lanczos.lanczos_side_by_side`). Only this draw's outputs are written; each
            other draw's finished state is left in its ``state_file``, from which that draw's own
            job resumes with no product. None or empty: this draw alone.
    """

    checkpoint: str
    images: str
    labels: str
    card: str
    model: dict
    objective: dict
    hessian: dict
    num_steps: int
    save_every: int
    run_seed: int
    step: int
    draw: int | str
    state_file: str
    outputs: dict
    strategy: str = "default"
    workers: int = 1
    checkpoint_record: str | None = None
    operator: str = "hessian"
    block: str = "all"
    variables: list[str] | None = None
    probe: str = "gaussian"
    deflation: dict | None = None
    data: str = "memory"
    vector_store: str = "memory"
    alongside: list | None = None

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> LanczosJobSpec:
        """A spec from its JSON form; unknown or missing keys are named."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(spec) - names)
        if unknown:
            raise ValueError(f"Lanczos job spec: unknown keys {unknown}; known: {sorted(names)}")
        try:
            return cls(**spec)
        except TypeError as error:
            raise ValueError(f"Lanczos job spec: {error}") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _progress_logger(log, start: float, clock=time.perf_counter):
    """``progress(done, total)`` for `hessflow.lanczos.lanczos`: a log line per step, with the time
    left estimated from the steps after the first one done in this process.

    The first step of a job (or of a resumed job) also traces the operator's tf.functions, which
    took 8.5-79x a later step's time here; it is left out of the rate. Until a second step is done
    there is no estimate.
    """
    first: list[tuple[int, float]] = []

    def report(done: int, total: int) -> None:
        now = clock()
        elapsed = now - start
        if not first:
            first.append((done, now))
            log(f"Lanczos step {done}/{total}, elapsed {elapsed:.1f} s (includes tracing; no estimate yet)")
            return
        first_done, first_time = first[0]
        left = (now - first_time) / (done - first_done) * (total - done)
        log(f"Lanczos step {done}/{total}, elapsed {elapsed:.1f} s, estimated time left {left:.1f} s")

    return report


def run_lanczos_job(spec: LanczosJobSpec | dict, log=print) -> dict | None:
    """Run the job ``spec`` in this process; returns the provenance on the chief, else None."""
    if isinstance(spec, dict):
        spec = LanczosJobSpec.from_dict(spec)
    # The strategy must exist before TensorFlow initializes its devices.
    from hessflow import distribute

    strategy = distribute.make_strategy(spec.strategy, spec.workers)

    import keras
    import numpy as np
    import tensorflow as tf

    import hessflow
    from hessflow import artifacts, checkpoints, data, factories, hvp, integrity, objectives, streaming
    from hessflow.deflation import DeflatedOperator, complement_weight, deflated_start_vector
    from hessflow.lanczos import health_warnings, lanczos_side_by_side

    if spec.operator not in OPERATOR_CLASSES:
        raise ValueError(f"Lanczos job spec: operator must be one of {sorted(OPERATOR_CLASSES)}, got {spec.operator!r}")

    # TensorFloat-32 (TensorFlow's default for float32 matmuls and convolutions on NVIDIA GPUs since
    # Ampere) keeps 10 bits of mantissa: ~1e-3 relative per product, where float32's ~1e-7 is what
    # the operator's accuracy rests on. Off in every Hessian pass; training may keep it.
    tf.config.experimental.enable_tensor_float_32_execution(False)
    if spec.vector_store not in VECTOR_STORES:
        raise ValueError(f"config lanczos.vector_store must be one of {VECTOR_STORES}, got {spec.vector_store!r}")
    if spec.data not in hvp.DATA_MODES:
        raise ValueError(f"config hessian.data must be one of {hvp.DATA_MODES}, got {spec.data!r}")
    if spec.data == "stream" and strategy is not None:
        raise ValueError(f"config hessian.data: stream reads the data on one device, but lanczos.strategy is "
                         f"{spec.strategy!r}: set lanczos.strategy: default, or hessian.data: memory")
    alongside = _check_alongside(spec)
    start = time.perf_counter()
    hessian, objective = spec.hessian, spec.objective
    # Streaming: memory-mapped only to be hashed (page by page) and to resolve the preprocessing.
    mmap_mode = "r" if spec.data == "stream" else None
    x, y = np.load(spec.images, mmap_mode=mmap_mode), np.load(spec.labels, mmap_mode=mmap_mode)
    # From the data card, never from the labels at hand (a truncated set may miss classes).
    card = json.loads(Path(spec.card).read_text())
    # The arrays prepare_data wrote (the card's sha256), and part of the operator's identity.
    data_sha256 = integrity.check_data_arrays(
        {"x_train": (spec.images, x), "y_train": (spec.labels, y)}, card, spec.card
    )
    if hessian["max_examples"] is not None:
        x, y = x[: hessian["max_examples"]], y[: hessian["max_examples"]]
    model = factories.build_model(
        spec.model["factory"], spec.model["options"], card=card, dtype=hessian["dtype"], seed=spec.run_seed
    )
    if spec.checkpoint_record is not None:
        integrity.check_checkpoint(spec.checkpoint, spec.step, spec.checkpoint_record)
    checkpoints.load_checkpoint(model, spec.checkpoint)
    checksum = checkpoints.weights_checksum(model)
    distribute.check_same_weights(strategy, checksum)
    to_inputs = data.resolve_preprocess(objective["preprocess"], x[:1])
    if spec.data == "stream":
        del x, y  # unmapped: every pass reads its batches from the files
        batches = streaming.npy_batches(spec.images, spec.labels, hessian["batch_size"],
                                        num_examples=hessian["max_examples"],
                                        to_inputs=lambda batch: to_inputs(batch, hessian["dtype"]))
    else:
        batches = data.fixed_batches(to_inputs(x, hessian["dtype"]), y, hessian["batch_size"])
    operator = getattr(hvp, OPERATOR_CLASSES[spec.operator])(
        model,
        batches,
        data=spec.data,
        loss=objectives.make_loss(objective["loss"]["name"], objective["loss"].get("options")),
        weight_decay=objective["weight_decay"],
        batch_norm=hessian["batch_norm"],
        dtype=hessian["dtype"],
        strategy=strategy,
        variables=spec.variables,
        probes_per_pass=1 + len(alongside),
    )
    try:
        loss, gradient = operator.loss_and_gradient()
    except FloatingPointError as error:
        raise FloatingPointError(
            f"checkpoint {spec.checkpoint}: {error}. The training run diverged before this step (see the "
            "train log and train/history.csv): lower training.learning_rate, or drop the step from spectrum.steps"
        ) from None
    step, draw = spec.step, spec.draw
    run = "deflation basis run" if draw == BASIS_DRAW else f"draw {draw}"
    log(f"step {step}, {run}, {spec.operator} of block {spec.block} ({len(operator.variable_paths)} of "
        f"{len(model.trainable_variables)} variables): n = {operator.dim:,} parameters, "
        f"{operator.num_examples:,} examples in "
        f"{operator.num_batches} batches ({spec.data}) over {operator.num_replicas} replica(s) ({spec.strategy}); "
        f"loss {loss:.6g}, gradient norm {np.linalg.norm(gradient):.6g}")

    chief = distribute.is_chief(strategy)
    # Every worker keeps its own states; the chief's are the declared ones.
    suffix = "" if chief else f".{distribute.task_description().replace(' ', '_')}"
    draws = [draw, *(other["draw"] for other in alongside)]
    state_files = [f"{path}{suffix}" for path in (spec.state_file, *(other["state_file"] for other in alongside))]
    state_file = state_files[0]
    if os.path.exists(state_file):
        log(f"found resumable state {state_file}")
    if alongside:
        log(f"draws {draws} side by side: {len(draws)} products per Hessian pass; the states of draws {draws[1:]} "
            "are left for their own jobs")
    vectors_files = [vectors_file_beside(path) if spec.vector_store == "disk" else None for path in state_files]
    vectors_file = vectors_files[0]
    seeds = [start_seed(spec.run_seed, step, d) for d in draws]
    seed = seeds[0]
    identity = operator_identity(spec, checksum, data_sha256, operator.num_replicas)
    operator_sha256 = _identity_sha256(identity)
    matmat, start_vectors, deflation = operator, [None] * len(draws), None
    if spec.deflation is not None:
        basis, deflation = _deflation_basis(spec.deflation, operator.dim, operator_sha256)
        matmat = DeflatedOperator(operator, basis)
        start_vectors = [deflated_start_vector(operator.dim, s, basis, spec.probe) for s in seeds]
        deflation["complement_weight"] = complement_weight(operator.dim, seed, basis, spec.probe)
        log(f"deflated: the {basis.shape[1]} Lanczos vectors of the basis run {spec.deflation['vectors']} are "
            f"projected out; complement weight {deflation['complement_weight']:.6g}")
        # A state saved on another basis is another run (the start vector differs too).
        identity = {**identity, "deflation_basis_sha256": deflation["basis_sha256"]}
    if len(draws) == 1:
        # One draw: each product through matvec, the bits of a plain `hessflow.lanczos.lanczos` run.
        matvec = matmat.matvec
        matmat = lambda block: matvec(block[:, 0])[:, None]  # noqa: E731
    lanczos_start = time.perf_counter()
    report = _progress_logger(log, lanczos_start)
    results = lanczos_side_by_side(
        matmat,
        operator.dim,
        spec.num_steps,
        seeds=seeds,
        keep_vectors=True,  # held either way (in memory or in vectors_file); the gradient's fractions need them
        vectors_files=vectors_files,
        probe=spec.probe,
        starts=start_vectors,
        state_files=state_files,
        save_every=spec.save_every,
        # A saved state resumes only into the same operator; another one starts fresh, logged.
        operator_identity=identity,
        log=log,
        # This draw's steps are the job's (the others advance with it, or have finished).
        progress=lambda run, done, total: report(done, total) if run == 0 else None,
    )
    result = results[0]
    if result.resumed_from is not None:
        log(f"resumed from Lanczos step {result.resumed_from}")
    if result.stopped_early:
        log(f"invariant subspace: stopped early after {result.tridiag.shape[0]} steps")
    warnings = health_warnings(result)
    for warning in warnings:
        log(f"warning: {warning}")
    fractions = None if spec.deflation is not None else gradient_fractions(result, gradient)
    if not chief:
        _remove_scratch(state_file, vectors_file)
        return None

    outputs = spec.outputs
    artifacts.save_npy(outputs["tridiag"], result.tridiag)
    if "vectors" in outputs:
        artifacts.save_npy(outputs["vectors"], result.vectors)
    written = {name: path for name, path in outputs.items() if name != "provenance"}
    provenance = {
        "step": step,
        "draw": draw,
        "seed": list(seed),
        "num_steps": int(result.tridiag.shape[0]),
        "requested_steps": spec.num_steps,
        "stopped_early": bool(result.stopped_early),
        "resumed_from": result.resumed_from,
        "discarded_state": result.discarded_state,
        "operator": spec.operator,
        "block": spec.block,
        "variables": spec.variables,
        "variable_paths": operator.variable_paths,
        "probe": spec.probe,
        "dim": operator.dim,
        # What a deflated draw checks its basis run against: the same operator, by this sha256.
        "operator_sha256": operator_sha256,
        # Deflated draws: the basis run's size and files, and the weight of the complement's quadrature.
        "deflation": deflation,
        # b_m: with the last row of T's eigenvectors, each Ritz value's a-posteriori error bound.
        "residual_norm": float(result.residual_norm),
        # Lanczos health (hessflow.lanczos.health_warnings): max |V^T V - I| and the smallest b_j.
        "orthogonality_loss": float(result.orthogonality_loss),
        # (None for a one-step run, which has no b_j: JSON has no infinity)
        "min_beta": _finite_or_none(result.min_beta),
        "relative_min_beta": _finite_or_none(result.relative_min_beta),
        "health_warnings": warnings,
        # The full-data gradient's squared-norm fraction in the span of the top j Ritz vectors,
        # j = 1, 2, ...; None for a deflated draw (its Krylov space lacks the top of the spectrum).
        "gradient_fractions": fractions,
        "num_examples": operator.num_examples,
        "batch_size": hessian["batch_size"],
        "batch_norm": hessian["batch_norm"],
        "dtype": hessian["dtype"],
        "data": spec.data,
        # lanczos.draws_per_job: the draws this job ran side by side with this one (their products
        # in the same Hessian passes; the last step's state of each left for its own job).
        "draws_alongside": [other["draw"] for other in alongside],
        "weight_decay": objective["weight_decay"],
        "loss_function": objective["loss"],
        "preprocess": objective["preprocess"],
        "model": spec.model,
        "strategy": spec.strategy,
        "replicas": operator.num_replicas,
        # TensorFlow's intra-op pool as the job set it (hessflow.jobs: the rule's threads); a worker
        # process inherits it as TF_NUM_INTRAOP_THREADS; 0: TensorFlow's default, every core.
        "threads": (tf.config.threading.get_intra_op_parallelism_threads()
                    or int(os.environ.get("TF_NUM_INTRAOP_THREADS", 0))),
        "loss": loss,
        "gradient_norm": float(np.linalg.norm(gradient)),
        "checkpoint": spec.checkpoint,
        "weights_sha256": checksum,
        "data_sha256": data_sha256,
        # What aggregation and hessflow-reproduce verify each file against (hessflow.integrity).
        integrity.OUTPUTS_SHA256: integrity.outputs_sha256(written),
        "wall_seconds": time.perf_counter() - start,
        "lanczos_seconds": time.perf_counter() - lanczos_start,
        "hessflow_version": hessflow.__version__,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "devices": [device.name for device in tf.config.list_logical_devices()],
        "tensor_float_32": tf.config.experimental.tensor_float_32_execution_enabled(),
        "host": platform.node(),
    }
    artifacts.save_json(outputs["provenance"], provenance)
    _remove_scratch(state_file, vectors_file)  # outputs are in place: the resumable state has served
    return provenance


def _check_alongside(spec: LanczosJobSpec) -> list[dict]:
    """``spec.alongside`` as a list of ``{"draw": int, "state_file": str}``, checked by name."""
    alongside = list(spec.alongside or [])
    if alongside and spec.draw == BASIS_DRAW:
        raise ValueError("Lanczos job spec: the deflation basis run runs alone (alongside must be empty)")
    seen = {spec.draw}
    for other in alongside:
        if not (isinstance(other, dict) and set(other) == {"draw", "state_file"}):
            raise ValueError(f"Lanczos job spec: each alongside entry is {{'draw', 'state_file'}}; got {other!r}")
        start_seed(0, 0, other["draw"])  # a non-negative int
        if other["draw"] in seen or other["state_file"] == spec.state_file:
            raise ValueError(f"Lanczos job spec: draw {other['draw']} (state {other['state_file']!r}) appears twice "
                             "among the draws of the job")
        seen.add(other["draw"])
    return alongside


def vectors_file_beside(state_file: str) -> str:
    """The Lanczos vectors file of ``lanczos.vector_store: disk``: ``.state_3.npz`` -> ``.state_3.vectors.npy``."""
    root, extension = os.path.splitext(state_file)
    return f"{root if extension == '.npz' else state_file}.vectors.npy"


def _remove_scratch(state_file: str, vectors_file: str | None) -> None:
    """Deletes the resumable state, then its vectors file: killed in between, a rerun finds no state
    (it starts fresh), never a state whose vectors are gone."""
    for path in (state_file, vectors_file):
        if path is not None and os.path.exists(path):
            os.remove(path)


#: The most Ritz vectors whose span's share of the gradient a job records (``gradient_fractions``).
GRADIENT_FRACTION_PAIRS = 50


def gradient_fractions(result, gradient) -> list[float] | None:
    """``||Q_j^T g||^2 / ||g||^2`` for the top ``j = 1 .. min(m, GRADIENT_FRACTION_PAIRS)`` Ritz
    vectors of ``result`` (a `LanczosResult` with vectors), ``g`` the full-data gradient (n,);
    None for a zero gradient (no direction to measure)."""
    import numpy as np

    from hessflow.eigenpairs import top_ritz_pairs
    from hessflow.outliers import gradient_fractions_in_leading_spans

    if not np.any(gradient):
        return None
    pairs = top_ritz_pairs(result.tridiag, result.vectors, min(result.tridiag.shape[0], GRADIENT_FRACTION_PAIRS))
    return gradient_fractions_in_leading_spans(gradient, pairs.vectors).tolist()


def _finite_or_none(value: float) -> float | None:
    import math

    return float(value) if math.isfinite(value) else None


def _identity_sha256(identity: dict) -> str:
    """sha256 of an operator identity's canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _deflation_basis(files: dict, dim: int, operator_sha256: str):
    """The deflation basis run's Lanczos vectors ``V`` (dim, k) float64, verified, and the record
    that a deflated draw's provenance keeps of it.

    Refused (ValueError naming the file and the fix): a tridiagonal or vectors file changed after
    its job (their sha256 in the basis provenance), a basis of another operator (its
    ``operator_sha256``), vectors not of shape (dim, k) with k the basis tridiagonal's size, and
    ``k >= dim`` (nothing left to estimate).
    """
    import numpy as np

    from hessflow import integrity

    fix = f"delete {files['tridiag']} to recompute the basis run (Snakemake reruns it, then the draws)"
    tridiag = integrity.load_tridiag(files["tridiag"], files["provenance"], BASIS_DRAW)
    integrity.check_recorded_output(files["vectors"], files["provenance"], "vectors", BASIS_DRAW)
    provenance = json.loads(Path(files["provenance"]).read_text())
    if provenance.get("operator_sha256") != operator_sha256:
        raise ValueError(f"deflation basis {files['provenance']}: computed for another operator (checkpoint, data, "
                         f"loss or hessian.* settings) than this draw's; {fix}")
    # Memory-mapped: a basis beyond RAM is read as the projections need it (one deflated pass reads it twice).
    vectors = np.load(files["vectors"], mmap_mode="r")
    k = tridiag.shape[0]
    if vectors.shape != (dim, k):
        raise ValueError(f"deflation basis {files['vectors']}: shape {vectors.shape}, expected ({dim}, {k}) (n "
                         f"parameters x the basis run's {k} steps); {fix}")
    if k >= dim:
        raise ValueError(f"deflation basis {files['tridiag']}: its {k} vectors span the whole {dim}-dimensional "
                         f"operator, leaving nothing to estimate: lower lanczos.deflation_steps below {dim}")
    record = {
        "basis_steps": k,
        "basis_sha256": {name: provenance[integrity.OUTPUTS_SHA256][name] for name in ("tridiag", "vectors")},
    }
    return vectors, record


def operator_identity(spec: LanczosJobSpec, weights_sha256: str, data_sha256: dict, replicas: int) -> dict:
    """Everything that defines the curvature operator of a job: a state saved under another is not
    resumed.

    The operator (Hessian or GGN) and its block's variables, the checkpoint's weights (sha256 of
    the loaded variables), the training arrays (their sha256) and ``hessian.max_examples``, every
    ``hessian.*`` value (batch size, batch-norm mode, compute dtype), the loss, weight decay and
    preprocessing, the model factory and options, and the distribution (strategy, workers,
    replicas: they change the summation order of the products).
    """
    return {
        "operator": spec.operator,
        "variables": spec.variables,
        "weights_sha256": weights_sha256,
        "data_sha256": dict(data_sha256),
        "hessian": dict(spec.hessian),
        "objective": dict(spec.objective),
        "model": dict(spec.model),
        "strategy": spec.strategy,
        "workers": spec.workers,
        "replicas": replicas,
    }


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def local_cluster(num_workers: int) -> list[dict]:
    """``TF_CONFIG`` of each of ``num_workers`` processes on this machine (127.0.0.1)."""
    workers = [f"127.0.0.1:{port}" for port in _free_ports(num_workers)]
    return [{"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}} for i in range(num_workers)]


def launch_workers(spec_file: str | os.PathLike, num_workers: int, *, timeout: float | None = None,
                   log=print) -> None:
    """Run ``python -m hessflow.lanczos_job spec_file`` as ``num_workers`` cooperating processes.

    Inside a Slurm allocation with several tasks, ``srun`` starts them (one per
    task; `tf.distribute.cluster_resolver.SlurmClusterResolver` wires them up).
    Elsewhere they are local processes with a ``TF_CONFIG`` each. The chief's
    output goes to this process's stdout (the job log); each other worker's is
    printed after it ends. Raises RuntimeError naming the failed workers.
    """
    command = [sys.executable, "-m", "hessflow.lanczos_job", str(spec_file)]
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        log(f"starting {os.environ['SLURM_NTASKS']} workers with srun")
        done = subprocess.run(["srun", "--kill-on-bad-exit=1", *command], timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"the Lanczos workers (srun) failed with exit status {done.returncode}")
        return
    log(f"starting {num_workers} local workers (TF_CONFIG on 127.0.0.1)")
    processes = []
    for index, tf_config in enumerate(local_cluster(num_workers)):
        env = {**os.environ, "TF_CONFIG": json.dumps(tf_config)}
        # The chief writes into this process's stdout (the job log, possibly a
        # Python-level redirection: hence the explicit file); the others are kept.
        output = sys.stdout if index == 0 else subprocess.PIPE
        processes.append(subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, text=True))
    failed = []
    try:
        for index, process in enumerate(processes):
            output, _ = process.communicate(timeout=timeout)
            if output:
                log(f"--- worker {index} ---\n{output}")
            if process.returncode != 0:
                failed.append((index, process.returncode))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    if failed:
        raise RuntimeError(f"Lanczos worker(s) failed (index, exit status): {failed}; see the job log")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m hessflow.lanczos_job SPEC.json", file=sys.stderr)
        return 2
    spec = LanczosJobSpec.from_dict(json.loads(Path(argv[0]).read_text()))
    from hessflow.distribute import WeightsMismatchError

    try:
        run_lanczos_job(spec, log=lambda message: print(message, flush=True))
    except WeightsMismatchError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
