# Paths and config values shared by the rules. Everything a rule computes with
# reaches it through `params`, so Snakemake's params trigger reruns exactly
# what a config change affects.

import sys

from snakemake.logging import logger

# The run folder's paths come from hessflow.layout, the one place that spells them (shared with
# the Lanczos job and hessflow-reproduce); imported from this checkout, as the scripts do.
sys.path.insert(0, workflow.current_basedir.join("../../src").get_path_or_uri(secret_free=True))
import hessflow

# The package the jobs import must be the one this workflow was written for: the artifacts'
# formats and the config keys belong to one version. From a checkout both are the checkout's;
# used as a module of your project (hessflow installed with pip), they can differ.
with open(workflow.source_path("../../pyproject.toml"), encoding="utf-8") as _pyproject:
    WORKFLOW_VERSION = hessflow.pyproject_version(_pyproject.read())
if WORKFLOW_VERSION != hessflow.__version__:
    raise WorkflowError(
        f"hessflow: this workflow is version {WORKFLOW_VERSION} but the installed hessflow is "
        f"{hessflow.__version__} ({hessflow.__file__}); install the matching one: "
        f"pip install 'hessflow[workflow]=={WORKFLOW_VERSION}' (or pip install -e '.[workflow]' in a "
        f"checkout of v{WORKFLOW_VERSION}), or point the module at the workflow of v{hessflow.__version__}"
    )

# After the version check: another version may lack a name imported here.
from hessflow.factories import DATA_ALIASES, MODEL_ALIASES, check_importable
from hessflow.layout import RunLayout, curvatures
from hessflow.sanity import check_finite, config_warnings

# Numbers the schema lets through but that mean nothing: YAML's .inf, -.inf and .nan are floats,
# and a NaN passes every minimum and maximum. Refused here, before any job runs.
try:
    check_finite(config)
except ValueError as error:
    raise WorkflowError(f"hessflow: {error}") from None
for _warning in config_warnings(config):
    logger.warning(_warning)

RUN = config["run_name"]
LAYOUT = RunLayout.for_run(RUN)
# Two lists of checkpoint steps: the ones training saves (changing it reruns
# training) and the ones analysed (Lanczos, densities, summary, figures), a
# subset; adding a saved step to the analysis runs no training job.
TRAIN_STEPS = sorted(config["training"]["checkpoint_steps"])
STEPS = sorted(config["spectrum"]["steps"] if config["spectrum"]["steps"] is not None else TRAIN_STEPS)
DRAWS = list(range(config["lanczos"]["draws"]))
# Draws side by side in one job: groups of this many consecutive draws, led by the first.
DRAWS_PER_JOB = config["lanczos"]["draws_per_job"]
SAVE_VECTORS = config["lanczos"]["save_vectors"]
# The curvatures analysed: each operator (hessian.operator) on each block of variables
# (hessian.blocks, name -> regular expressions); one Lanczos job per step, curvature and draw.
CURVATURES = curvatures(config)
BLOCKS = config["hessian"]["blocks"]
TOP_K = config["spectrum"]["top_k"]
# Spectral deflation: a basis run of this many steps per step and curvature, its Krylov space
# projected out of every draw (0: plain SLQ). The top Ritz pairs then come from the basis run.
DEFLATION_STEPS = config["lanczos"]["deflation_steps"]

if TOP_K and not (SAVE_VECTORS or DEFLATION_STEPS):
    raise ValueError(
        "config spectrum.top_k: the top Ritz vectors are combinations of the Lanczos vectors; set "
        "lanczos.save_vectors: true, or spectrum.top_k: 0"
    )
_top_k_source = (
    ("lanczos.deflation_steps", DEFLATION_STEPS) if DEFLATION_STEPS else ("lanczos.steps", config["lanczos"]["steps"])
)
if TOP_K > _top_k_source[1]:
    raise ValueError(
        f"config spectrum.top_k: {TOP_K} Ritz pairs of {_top_k_source[1]} Lanczos steps "
        f"({_top_k_source[0]}) do not exist; lower spectrum.top_k or raise {_top_k_source[0]}"
    )

if TRAIN_STEPS[-1] > config["training"]["steps"]:
    raise ValueError(
        f"config training.checkpoint_steps: step {TRAIN_STEPS[-1]} is after the last training step "
        f"{config['training']['steps']}; raise training.steps or drop the checkpoint"
    )
_unsaved = [step for step in STEPS if step not in TRAIN_STEPS]
if _unsaved:
    raise ValueError(
        f"config spectrum.steps: step {', '.join(map(str, _unsaved))} is not in training.checkpoint_steps "
        f"{TRAIN_STEPS}, so no checkpoint is saved there; add it to training.checkpoint_steps "
        f"(which retrains) or drop it from spectrum.steps"
    )
# Your own factories: a module that cannot be found fails here, before any job runs (the
# function itself is checked when the first job imports it).
for _key, _reference, _aliases in [
    ("model.factory", config["model"]["factory"], MODEL_ALIASES),
    ("data.factory", config["data"]["factory"], DATA_ALIASES),
    ("loss.name", config["loss"]["name"], None),
    ("data.preprocess", config["data"]["preprocess"], None),
]:
    if ":" in _reference or (_aliases is not None and _reference not in _aliases):
        check_importable(_reference, _key, _aliases)
if config["lanczos"]["strategy"] == "default" and config["lanczos"]["workers"] != 1:
    raise ValueError(
        f"config lanczos.workers is {config['lanczos']['workers']} but lanczos.strategy is default (one "
        "device): set lanczos.strategy to mirrored (GPUs of one node) or multi_worker (several hosts)"
    )


wildcard_constraints:
    step=r"\d+",
    draw=r"\d+",
    operator="|".join(sorted({operator for operator, _ in CURVATURES})),
    block="|".join(sorted(BLOCKS)),  # names of the schema's pattern: no regex metacharacters


def checkpoint_file(step):
    return LAYOUT.checkpoint(step)


def data_files(split):
    return LAYOUT.data_files(split)


def model_params():
    """The model factory and its options (``model.*``), as every TensorFlow rule passes them."""
    return {"factory": config["model"]["factory"], "options": config["model"]["options"]}


def objective_params():
    """What defines the objective besides the model: loss, weight decay, preprocessing."""
    return {
        "loss": config["loss"],
        "weight_decay": config["training"]["weight_decay"],
        "preprocess": config["data"]["preprocess"],
    }


def uses_cifar10():
    return config["data"]["factory"] in ("cifar10", "hessflow.data:cifar10")


def spectrum_files(step, operator="{operator}", block="{block}"):
    """A spectrum's files (one step and curvature); wildcards by default."""
    return LAYOUT.spectrum_files(step, operator, block)


def lanczos_files(step, draw, operator="{operator}", block="{block}"):
    """A Lanczos job's outputs; wildcards by default."""
    return LAYOUT.lanczos_files(step, draw, SAVE_VECTORS, operator, block)


def basis_files(step, operator="{operator}", block="{block}"):
    """The deflation basis run's outputs (tridiag, provenance, vectors); wildcards by default."""
    return LAYOUT.basis_files(step, operator, block)


def deflation_inputs(step="{step}", operator="{operator}", block="{block}"):
    """The basis run's outputs as ``basis_*`` inputs of a rule: none without deflation."""
    if not DEFLATION_STEPS:
        return {}
    return {f"basis_{name}": path for name, path in basis_files(step, operator, block).items()}


def draws_alongside(wildcards):
    """The draws a Lanczos job computes side by side with its own (lanczos.draws_per_job): the
    rest of its group when its draw leads one, else none (the deflation basis run: none)."""
    draw = wildcards.get("draw")
    if draw is None or int(draw) % DRAWS_PER_JOB:
        return []
    return list(range(int(draw) + 1, min(int(draw) + DRAWS_PER_JOB, len(DRAWS))))


def group_leader_input(wildcards):
    """A draw computed alongside its group's first draw waits for that job, whose finished
    Lanczos state it then reads: its provenance is an input (none for a group's first draw)."""
    draw = int(wildcards.draw)
    leader = draw - draw % DRAWS_PER_JOB
    if leader == draw:
        return {}
    return {"group_leader": LAYOUT.provenance(wildcards.step, leader, wildcards.operator, wildcards.block)}


def run_provenances(step="{step}", operator="{operator}", block="{block}"):
    """The provenance of every draw and, with deflation, of the basis run last."""
    paths = [LAYOUT.provenance(step, draw, operator, block) for draw in DRAWS]
    return paths + ([basis_files(step, operator, block)["provenance"]] if DEFLATION_STEPS else [])


def top_pairs_inputs():
    """What the top Ritz pairs come from: every draw, or the basis run when deflating (its
    Krylov space is projected out of the draws, outliers included)."""
    if DEFLATION_STEPS:
        files = [basis_files("{step}")]
    else:
        files = [lanczos_files("{step}", draw) for draw in DRAWS]
    return {name: [f[name] for f in files] for name in ("tridiag", "vectors", "provenance")}


def hessian_params():
    """What defines the operators besides the operator and the block (``hessian.*`` less
    ``operator``, ``blocks`` and ``data``): adding an operator or a block reruns no existing job,
    and neither does switching ``hessian.data`` (memory or stream: the same operator bit for bit;
    the Lanczos script reads it from the config)."""
    return {key: value for key, value in config["hessian"].items() if key not in ("operator", "blocks", "data")}


def step_label(wildcards):
    """A step as a report label, zero-padded to the widest analysed step (075, 150): the report
    sorts labels as strings, and so in numeric order."""
    return f"{int(wildcards.step):0{len(str(max(STEPS)))}d}"


def density_labels(wildcards):
    """A density figure's report labels: its curvature and step."""
    return {"operator": wildcards.operator, "block": wildcards.block, "step": step_label(wildcards)}


def run_config_file():
    """The resolved config (defaults filled), beside the results it produced."""
    return LAYOUT.config


def log_file(name):
    """A job's log, ``logs/{name}.log`` of the run folder (wildcards pass through)."""
    return LAYOUT.log(name)


def benchmark_file(name):
    """A job's Snakemake benchmark, ``benchmarks/{name}.tsv`` of the run folder."""
    return LAYOUT.benchmark(name)


def rule_threads(rule):
    """Threads of a TensorFlow rule (config ``resources.<rule>.threads``); the job sizes
    TensorFlow's thread pools to them (hessflow.jobs)."""
    return config["resources"][rule]["threads"]


def artifacts():
    """Every artifact the manifest covers: data, checkpoints, numbers, figures, resolved config.

    Each saved checkpoint is evaluated (cheap), so analysing another one needs no TensorFlow
    job but its Lanczos draws.
    """
    files = [*data_files("train").values(), *data_files("test").values(), LAYOUT.dataset_card]
    files += [checkpoint_file(step) for step in TRAIN_STEPS] + [LAYOUT.history, LAYOUT.checkpoint_record]
    files += [LAYOUT.evaluation(step) for step in TRAIN_STEPS]
    for operator, block in CURVATURES:
        for step in STEPS:
            for draw in DRAWS:
                files += lanczos_files(step, draw, operator, block).values()
            if DEFLATION_STEPS:
                files += basis_files(step, operator, block).values()
            files += spectrum_files(step, operator, block).values()
            if TOP_K:
                files.append(LAYOUT.top_pairs(step, operator, block))
            files.append(LAYOUT.density_figure(step, operator, block))
        files.append(LAYOUT.trajectory_figure(operator, block))
    if len(CURVATURES) > 1:
        files += [LAYOUT.curvatures_figure(step) for step in STEPS]
    files += [LAYOUT.summary, LAYOUT.summary_html, run_config_file()]
    return files


def exported_artifacts():
    """The artifacts the export archive ships: all but the large inputs `export.*` leaves out."""
    left_out = set()
    if not config["export"]["data"]:
        left_out |= {*data_files("train").values(), *data_files("test").values()}
    if not config["export"]["checkpoints"]:
        left_out |= {checkpoint_file(step) for step in TRAIN_STEPS}
    if not config["export"]["lanczos_vectors"]:
        left_out |= {
            lanczos_files(step, draw, operator, block).get("vectors")
            for operator, block in CURVATURES
            for step in STEPS
            for draw in DRAWS
        }
        if DEFLATION_STEPS:
            left_out |= {basis_files(step, *curvature)["vectors"] for curvature in CURVATURES for step in STEPS}
    return [path for path in artifacts() if path not in left_out]


def export_left_out():
    """What the export leaves out, relative to the run folder (recorded in the archive)."""
    return sorted(LAYOUT.relative(path) for path in set(artifacts()) - set(exported_artifacts()))


def final_outputs():
    return artifacts() + [LAYOUT.manifest]
