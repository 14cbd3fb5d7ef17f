"""Incremental reruns: after each config change Snakemake plans exactly the jobs the change affects.

On a small run (tests/small_run.py), each change below is checked twice: the dry run plans the
expected set of jobs, job by job; then the run itself, after which every file of the run folder
that no planned job writes keeps its mtime and its sha256. Changes are applied one after the
other to one copy of the run, so each starts from the state the previous one left.
"""

import pytest

from small_run import SMALL_CONFIG, changed, fresh_copy, job, planned_jobs, snakemake, snapshot

pytestmark = pytest.mark.slow

TENSORFLOW_RULES = {"prepare_data", "train", "evaluate", "lanczos"}


def downstream(steps):
    """What every change that touches a checkpoint's spectrum reruns after its Lanczos jobs."""
    jobs = set()
    for step in steps:
        jobs |= {job("aggregate", step), job("top_pairs", step), job("density", step), job("render_density", step)}
    return jobs | {job("summarize"), job("render_trajectory"), job("resolved_config"), job("manifest")}


def after_density(steps):
    """What a change of the density parameters reruns: no aggregation, no TensorFlow job."""
    jobs = {job("summarize"), job("render_trajectory"), job("resolved_config"), job("manifest")}
    for step in steps:
        jobs |= {job("density", step), job("render_density", step)}
    return jobs


def lanczos_jobs(steps, draws):
    return {job("lanczos", step, draw) for step in steps for draw in draws}


def check_dry_run(workdir, config, expected, what):
    planned = planned_jobs(workdir, config)
    assert set(planned) == expected, (
        f"{what}: planned but not expected {sorted(set(planned) - expected)}; "
        f"expected but not planned {sorted(expected - set(planned))}")
    return planned


def check_run(workdir, config, planned, what):
    """Run; files no planned job writes keep mtime and hash; files planned jobs write are new."""
    written = {path for outputs in planned.values() for path in outputs}
    before = snapshot(workdir)
    snakemake(workdir, config)
    after = snapshot(workdir)
    untouched = {path: state for path, state in before.items() if path not in written}
    changed_files = sorted(path for path, state in untouched.items() if after.get(path) != state)
    assert changed_files == [], f"{what}: files no planned job writes were modified or removed"
    unexpected = sorted(set(after) - set(before) - written)
    assert unexpected == [], f"{what}: files appeared that no planned job writes"
    for path in written:
        assert path in after, f"{what}: {path} was not written"
        if path in before:
            assert after[path][0] > before[path][0], f"{what}: {path} was not rewritten"
    assert planned_jobs(workdir, config) == {}, f"{what}: not up to date after running"


def test_each_change_reruns_exactly_what_it_affects(tmp_path_factory):
    workdir = fresh_copy(tmp_path_factory, "reruns")
    config = SMALL_CONFIG
    steps, draws = [20], [0, 1]
    assert planned_jobs(workdir, config) == {}, "the copied baseline is not up to date"

    # Streaming the data (the same operator bit for bit): no job but the record of the resolved
    # config. Every Lanczos job below then runs streamed.
    config = changed(config, "hessian.data", "stream")
    record = {job("resolved_config"), job("manifest")}
    check_run(workdir, config, check_dry_run(workdir, config, record, "hessian.data"), "hessian.data")

    # The Lanczos step count: every Lanczos job and what follows from it, nothing before it.
    config = changed(config, "lanczos.steps", 12)
    expected = lanczos_jobs(steps, draws) | downstream(steps)
    check_run(workdir, config, check_dry_run(workdir, config, expected, "lanczos.steps"), "lanczos.steps")

    # The batch-norm mode, and where the Lanczos vectors live (their rounding): the same set (dry
    # runs only: the run would check what the one above did).
    check_dry_run(workdir, changed(config, "hessian.batch_norm", "inference"), expected, "hessian.batch_norm")
    check_dry_run(workdir, changed(config, "lanczos.vector_store", "disk"), expected, "lanczos.vector_store")

    # Two draws a job (both products in each Hessian pass, another rounding): every Lanczos job,
    # draw 1's after draw 0's, which leaves it its finished state; then what follows. (Run: the
    # only end-to-end check of the fan-out; every later Lanczos job runs in groups of two.)
    config = changed(config, "lanczos.draws_per_job", 2)
    check_run(workdir, config, check_dry_run(workdir, config, expected, "lanczos.draws_per_job"),
              "lanczos.draws_per_job")

    # Analysing one more saved checkpoint: its Lanczos draws and what depends on them; no training,
    # no evaluation (every saved checkpoint is evaluated already), no existing Lanczos job.
    config = changed(config, "spectrum.steps", [10, 20])
    expected = lanczos_jobs([10], draws) | downstream([10])
    planned = check_dry_run(workdir, config, expected, "spectrum.steps")
    assert not {rule for rule, _ in planned} & {"train", "evaluate", "prepare_data"}
    check_run(workdir, config, planned, "spectrum.steps")
    steps = [10, 20]

    # One more draw: only the new Lanczos jobs, then every checkpoint's aggregation and what follows.
    config = changed(config, "lanczos.draws", 3)
    expected = lanczos_jobs(steps, [2]) | downstream(steps)
    check_run(workdir, config, check_dry_run(workdir, config, expected, "lanczos.draws"), "lanczos.draws")

    # The smoothing: densities and what follows; no TensorFlow job, no aggregation.
    config = changed(config, "density.sigma_squared", 1.0e-4)
    planned = check_dry_run(workdir, config, after_density(steps), "density.sigma_squared")
    assert not {rule for rule, _ in planned} & TENSORFLOW_RULES
    check_run(workdir, config, planned, "density.sigma_squared")

    # The grid: the same set (dry run only).
    check_dry_run(workdir, changed(config, "density.grid_len", 400), after_density(steps), "density.grid_len")

    # Another operator, then another block (dry runs only): the new curvature's Lanczos jobs and
    # what follows from them, the figure of every curvature per step; no existing job.
    def new_curvature(operator, block):
        jobs = {job("lanczos", step, draw, operator, block) for step in steps for draw in (0, 1, 2)}
        for step in steps:
            jobs |= {job(rule, step, operator=operator, block=block)
                     for rule in ("aggregate", "top_pairs", "density", "render_density")}
        # Every curvature's trajectory figure reads summary.csv, which gains the new one's rows.
        trajectories = {job("render_trajectory", operator=o, block=b)
                        for o, b in [("hessian", "all"), (operator, block)]}
        return jobs | trajectories | {job("render_curvatures", 10), job("render_curvatures", 20), job("summarize"),
                                      job("manifest"), job("resolved_config")}

    with_ggn = changed(config, "hessian.operator", ["hessian", "ggn"])
    check_dry_run(workdir, with_ggn, new_curvature("ggn", "all"), "hessian.operator")
    with_block = changed(config, "hessian.blocks", {"all": [".*"], "head": ["logits"]})
    check_dry_run(workdir, with_block, new_curvature("hessian", "head"), "hessian.blocks")


def test_spectrum_step_that_training_does_not_save_is_refused_by_name(tmp_path):
    config = changed(SMALL_CONFIG, "spectrum.steps", [15, 20])
    done = snakemake(tmp_path, config, "--dry-run", check=False)
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "spectrum.steps: step 15 is not in training.checkpoint_steps" in output


def test_every_saved_checkpoint_is_evaluated_and_only_analysed_ones_get_lanczos_jobs(tmp_path):
    planned = planned_jobs(tmp_path, SMALL_CONFIG)
    assert {key for key in planned if key[0] == "evaluate"} == {job("evaluate", s) for s in (10, 20)}
    assert {key for key in planned if key[0] == "lanczos"} == lanczos_jobs([20], [0, 1])
    train_outputs = planned[job("train")]
    assert sorted(train_outputs) == sorted(
        [f"results/small/checkpoints/step_{s}.weights.h5" for s in (10, 20)]
        + ["results/small/train/history.csv", "results/small/train/checkpoints.json"])


def test_spectrum_steps_null_analyses_every_saved_checkpoint(tmp_path):
    planned = planned_jobs(tmp_path, changed(SMALL_CONFIG, "spectrum.steps", None))
    assert {key for key in planned if key[0] == "aggregate"} == {job("aggregate", s) for s in (10, 20)}
    assert {key for key in planned if key[0] == "lanczos"} == lanczos_jobs([10, 20], [0, 1])
