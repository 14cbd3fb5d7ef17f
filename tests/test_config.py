"""The configuration: schema, shipped config files, their documentation, and the conda envs.

The schema (workflow/schemas/config.schema.yaml) is what the Snakefile validates every config
against with ``snakemake.utils.validate``, which also fills the defaults; config/README.md
documents every key. Installation: pyproject.toml declares the dependencies once (a TensorFlow-free
base, extras for TensorFlow, the workflow, Slurm and the tests), envs/*.yaml install exactly the
base and the workflow extra, and the README's Quick-start lines are the ones CI runs.
"""

import copy
import re
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
DEMO = ROOT / "config" / "config.yaml"
CIFAR = ROOT / "config" / "cifar10_resnet32.yaml"
CONFIG_README = ROOT / "config" / "README.md"
HESSFLOW_ENV = ROOT / "envs" / "hessflow.yaml"
ANALYSIS_ENV = ROOT / "envs" / "analysis.yaml"
PYPROJECT = ROOT / "pyproject.toml"
README = ROOT / "README.md"
CI_RUN = ROOT / ".ci" / "run"
TEST_CONFIGS = sorted((ROOT / ".test" / "config").glob("*.yaml"))  # the tests' small runs

NO_DEFAULT = "—"  # how config/README.md writes "no default" (em dash)
# conda-forge names that differ from the PyPI names in pyproject.toml
CONDA_TO_PYPI = {"matplotlib-base": "matplotlib"}
# interpreter and installer, not dependencies
NOT_DEPENDENCIES = {"python", "pip", "hessflow"}


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def load_yaml(path: Path):
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def validated(config: dict) -> dict:
    """Validate a copy of ``config`` as the Snakefile does (defaults filled) and return it."""
    config = copy.deepcopy(config)
    validate(config, str(SCHEMA))
    return config


def validation_error(config: dict) -> str:
    with pytest.raises(WorkflowError) as caught:
        validate(copy.deepcopy(config), str(SCHEMA))
    return str(caught.value)


def schema_keys() -> dict[str, dict]:
    """Every key of the schema as a dotted path -> its subschema ($ref resolved), in order."""
    schema = load_yaml(SCHEMA)

    def resolve(sub: dict) -> dict:
        if "$ref" in sub:
            target = schema
            for part in sub["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            sub = {**target, **{k: v for k, v in sub.items() if k != "$ref"}}
        return sub

    keys = {}

    def walk(sub: dict, prefix: str) -> None:
        for name, child in resolve(sub).get("properties", {}).items():
            child = resolve(child)
            keys[prefix + name] = child
            walk(child, prefix + name + ".")

    walk(schema, "")
    return keys


def readme_rows() -> dict[str, dict[str, str]]:
    """The key tables of config/README.md: dotted key -> {"type": ..., "default": ...}."""
    rows = {}
    for line in CONFIG_README.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            continue
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]  # not on "\|"
        match = re.fullmatch(r"`([A-Za-z0-9_.]+)`", cells[0])
        if not match or len(cells) != 4:
            continue
        key = match.group(1)
        assert key not in rows, f"{key} documented twice in config/README.md"
        rows[key] = {"type": cells[1], "default": cells[2]}
    return rows


def readme_sections() -> set[str]:
    """The sections of config/README.md: headings that name a key, as `data.cifar10`."""
    heading = re.compile(r"^#+\s*`([A-Za-z0-9_.]+)`\s*$")
    return {match.group(1) for line in CONFIG_README.read_text(encoding="utf-8").splitlines()
            if (match := heading.match(line))}


def lookup(config: dict, dotted: str):
    value = config
    for part in dotted.split("."):
        value = value[part]
    return value


def minimal_config() -> dict:
    """Only what has no default."""
    return {"run_name": "minimal"}


def conda_env(path: Path) -> tuple[dict[str, SpecifierSet], dict[str, SpecifierSet]]:
    """(conda packages, pip packages) of an environment file: normalized name -> version range."""
    env = load_yaml(path)
    conda, pip = {}, {}
    for entry in env["dependencies"]:
        if isinstance(entry, dict):
            for requirement in entry["pip"]:
                parsed = Requirement(requirement)
                pip[canonicalize_name(parsed.name)] = parsed.specifier
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(\S*)", entry.strip())
        assert match, f"{path.name}: cannot parse conda dependency {entry!r}"
        name, spec = match.groups()
        conda[canonicalize_name(CONDA_TO_PYPI.get(name, name))] = SpecifierSet(spec)
    return conda, pip


def requirements(specs: list[str]) -> dict[str, SpecifierSet]:
    parsed = (Requirement(spec) for spec in specs)
    return {canonicalize_name(req.name): req.specifier for req in parsed}


def pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10: the test extra installs tomli there
        import tomli as tomllib
    with open(PYPROJECT, "rb") as handle:
        return tomllib.load(handle)


def installed_by(*extras: str) -> dict[str, SpecifierSet]:
    """What ``pip install hessflow[extras]`` asks for: the base dependencies and the extras', an
    extra's ``hessflow[...]`` entries followed (each package must have one range everywhere)."""
    project = pyproject()["project"]
    found = requirements(project["dependencies"])
    pending, seen = list(extras), set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for spec in project["optional-dependencies"][extra]:
            parsed = Requirement(spec)
            name = canonicalize_name(parsed.name)
            if name == "hessflow":
                pending += sorted(parsed.extras)
                continue
            assert found.get(name, parsed.specifier) == parsed.specifier, f"{name}: two ranges"
            found[name] = parsed.specifier
    return found


def quick_start_lines() -> list[str]:
    """The lines of the README's first code block under "## Quick start"."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Quick start\n", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return block.strip().splitlines()


# ------------------------------------------------------------------------------------------------
# schema behaviour
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [DEMO, CIFAR], ids=lambda p: p.name)
def test_shipped_config_validates_against_schema(path):
    validated(load_yaml(path))


@pytest.mark.parametrize("path", TEST_CONFIGS, ids=lambda p: p.name)
def test_small_test_config_validates_against_schema(path):
    validated(load_yaml(path))


@pytest.mark.parametrize("path", [DEMO, CIFAR], ids=lambda p: p.name)
def test_shipped_config_writes_out_every_key(path):
    # Snakemake merges --configfile over config/config.yaml key by key, so a shipped file that
    # relied on a default would inherit the demo's value instead; both spell every key out.
    # Options are the exception: an absent option means the builder's own default.
    config = load_yaml(path)
    missing = [key for key, sub in schema_keys().items()
               if not key.startswith("model.options.") and _absent(config, key)]
    assert missing == []


def _absent(config: dict, dotted: str) -> bool:
    try:
        lookup(config, dotted)
    except KeyError:
        return True
    return False


def test_misspelt_key_is_refused_by_name():
    config = {**minimal_config(), "lanczos": {"stepz": 90}}
    message = validation_error(config)
    assert "'stepz' was unexpected" in message


def test_misspelt_top_level_section_is_refused_by_name():
    config = {**minimal_config(), "lanczoz": {"steps": 90}}
    assert "'lanczoz' was unexpected" in validation_error(config)


def test_wrong_type_names_the_key():
    config = {**minimal_config(), "lanczos": {"steps": "ninety"}}
    message = validation_error(config)
    assert "'ninety' is not of type 'integer'" in message
    assert "['lanczos']['steps']" in message


def test_enum_violation_names_the_key():
    config = {**minimal_config(), "hessian": {"batch_norm": "eval"}}
    message = validation_error(config)
    assert "'eval' is not one of ['train', 'inference']" in message
    assert "['hessian']['batch_norm']" in message


def test_out_of_range_value_names_the_key():
    config = {**minimal_config(), "training": {"momentum": 1.0}}
    message = validation_error(config)
    assert "['training']['momentum']" in message


def test_run_name_is_required():
    assert "'run_name' is a required property" in validation_error({})


def test_run_name_must_be_a_safe_directory_name():
    message = validation_error({"run_name": "../elsewhere"})
    assert "['run_name']" in message


@pytest.mark.parametrize("name", [".", "..", ".hidden"])
def test_run_name_dot_or_leading_dot_is_refused_by_the_schema(name):
    # ".." would write the run into the repository root, "." into results/ itself.
    message = validation_error({"run_name": name})
    assert f"'{name}' does not match" in message and "['run_name']" in message


def test_run_name_with_dots_inside_is_accepted():
    assert validated({"run_name": "demo.v2-lr_0.1"})["run_name"] == "demo.v2-lr_0.1"


@pytest.mark.parametrize("section, key, spelling", [
    ("density", "sigma_squared", ".inf"), ("density", "sigma_squared", ".nan"),
    ("training", "learning_rate", ".inf"), ("training", "weight_decay", ".nan"),
])
def test_non_finite_number_passes_the_schema_but_is_refused_naming_the_key(section, key, spelling):
    from hessflow.sanity import check_finite

    # A NaN passes every minimum and maximum (each comparison is false), .inf every minimum.
    config = validated(yaml.safe_load(f"run_name: x\n{section}:\n  {key}: {spelling}\n"))
    with pytest.raises(ValueError) as caught:
        check_finite(config)
    message = str(caught.value)
    assert message.startswith(f"config {section}.{key}: {spelling} is not a finite number")
    assert "\n" not in message


def test_non_finite_option_of_your_own_factory_is_refused_naming_the_list_item():
    from hessflow.sanity import check_finite

    config = validated({**minimal_config(), "model": {"factory": "mylab.nets:build",
                                                       "options": {"scales": [1.0, -float("inf")]}}})
    with pytest.raises(ValueError, match=r"^config model\.options\.scales\[1\]: -\.inf is not a finite"):
        check_finite(config)


def test_every_shipped_config_is_finite():
    from hessflow.sanity import non_finite_numbers

    for path in [DEMO, CIFAR, *TEST_CONFIGS]:
        assert non_finite_numbers(validated(load_yaml(path))) == [], path.name


def test_lanczos_steps_1_warns_in_one_line_naming_the_key():
    from hessflow.sanity import config_warnings

    warnings = config_warnings(validated({**minimal_config(), "lanczos": {"steps": 1}}))
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "config lanczos.steps is 1" in warnings[0] and "lambda_max = lambda_min" in warnings[0]
    assert config_warnings(validated(minimal_config())) == []


def test_option_the_builder_does_not_take_is_refused_by_name():
    config = {**minimal_config(), "model": {"factory": "mlp", "options": {"filters": [4]}}}
    assert "'filters' was unexpected" in validation_error(config)


def test_resnet32_refuses_every_option():
    config = {**minimal_config(),
              "model": {"factory": "resnet32", "options": {"batch_norm": True}}}
    message = validation_error(config)
    assert "does not allow 'batch_norm'" in message
    assert "['model']['options']" in message


def test_options_of_each_builder_are_accepted():
    for factory, options in [
        ("small_cnn", {"filters": [4, 8], "strides": [1, 2], "batch_norm": True,
                       "activation": "leaky_relu"}),
        ("mlp", {"hidden": [16, 16], "batch_norm": False, "activation": "tanh"}),
        ("resnet32", {}),
    ]:
        validated({**minimal_config(),
                   "model": {"factory": factory, "options": options}})


def test_max_examples_accepts_null_and_positive_integers_only():
    for value in (None, 1, 50000):
        validated({**minimal_config(), "hessian": {"max_examples": value}})
    assert "['hessian']['max_examples']" in validation_error(
        {**minimal_config(), "hessian": {"max_examples": 0}})


def test_every_schema_key_has_type_and_description():
    for key, sub in schema_keys().items():
        assert "type" in sub, key
        assert sub.get("description", "").strip(), key


# Keyword arguments of a factory or loss of the user's: any mapping (checked against the
# function's signature when a job starts); the built-ins' options are checked by the schema. And
# the user's block names (propertyNames), each mapped to a list of patterns.
FACTORY_OPTIONS = {"model.options", "data.options", "loss.options"}
USER_NAMED = FACTORY_OPTIONS | {"hessian.blocks"}


def test_every_schema_object_refuses_unknown_keys():
    schema = load_yaml(SCHEMA)
    objects = [("(root)", schema)] + [
        (key, sub) for key, sub in schema_keys().items() if sub.get("type") == "object"]
    for key, sub in objects:
        if key not in USER_NAMED:
            assert sub.get("additionalProperties") is False, key


@pytest.mark.parametrize("section, factory, option", [
    ("model", "small_cnn", "hidden"), ("model", "mlp", "filters"),
    ("data", "digits", "num_classes"), ("data", "synthetic", "noise"),
])
def test_an_option_a_builtin_factory_does_not_take_is_refused_by_name(section, factory, option):
    config = {**minimal_config(), section: {"factory": factory, "options": {option: 1}}}
    assert f"'{option}' was unexpected" in validation_error(config)


def test_a_factory_of_your_own_takes_any_options():
    config = validated({**minimal_config(),
                        "model": {"factory": "mylab.nets:build", "options": {"width": 64, "hidden": "x"}},
                        "data": {"factory": "mylab.data:load", "options": {"path": "/data/x.npz"}},
                        "loss": {"name": "mylab.losses:huber", "options": {"delta": 0.5}}})
    assert config["model"]["options"] == {"width": 64, "hidden": "x"}


def test_a_factory_reference_with_spaces_or_two_colons_is_refused():
    for reference in ("my lab:build", "a:b:c", "mylab.:build"):
        message = validation_error({**minimal_config(), "model": {"factory": reference}})
        assert "['model']['factory']" in message, reference


def test_without_a_loss_section_the_loss_is_cross_entropy_on_logits():
    assert validated(minimal_config())["loss"] == {
        "name": "SparseCategoricalCrossentropy", "options": {"from_logits": True}}


def test_a_loss_section_of_your_own_replaces_the_default_options():
    assert validated({**minimal_config(), "loss": {"name": "MeanSquaredError"}})["loss"] == {
        "name": "MeanSquaredError"}


def test_minimal_config_gets_every_documented_default():
    filled = validated(minimal_config())
    documented = {key: row["default"] for key, row in readme_rows().items()
                  if not row["default"].startswith(NO_DEFAULT)}
    assert documented, "no defaults parsed from config/README.md"
    for key, cell in documented.items():
        assert cell.startswith("`") and cell.endswith("`"), f"{key}: default {cell!r}"
        assert lookup(filled, key) == yaml.safe_load(cell.strip("`")), key


def test_documented_defaults_are_the_schema_defaults():
    rows = readme_rows()
    for key, sub in schema_keys().items():
        if key not in rows:  # a section (checked below)
            continue
        cell = rows[key]["default"]
        if "default" in sub:
            assert yaml.safe_load(cell.strip("`")) == sub["default"], key
        else:
            assert cell.startswith(NO_DEFAULT), f"{key} has no default but README gives {cell}"


def test_every_schema_key_is_documented_in_config_readme():
    # a value as a table row (key, type, default, meaning); a section as a heading or a row
    rows, sections = readme_rows(), readme_sections()
    undocumented = [key for key, sub in schema_keys().items()
                    if key not in rows
                    and not (sub["type"] == "object" and key in sections)]
    assert undocumented == []


def test_config_readme_documents_no_unknown_key():
    keys = schema_keys()
    unknown = [key for key in [*readme_rows(), *readme_sections()] if key not in keys]
    assert unknown == []


def test_config_readme_type_column_names_the_schema_type():
    keys = schema_keys()
    for key, row in readme_rows().items():
        sub = keys[key]
        types = sub["type"] if isinstance(sub["type"], list) else [sub["type"]]
        for name in types:
            assert name in row["type"], f"{key}: {name} not in {row['type']!r}"


# ------------------------------------------------------------------------------------------------
# installation: pyproject.toml's dependencies and extras, the conda envs, the README, CI
# ------------------------------------------------------------------------------------------------
def test_base_install_is_numpy_scipy_pandas_and_matplotlib_only():
    assert set(installed_by()) == {"numpy", "scipy", "pandas", "matplotlib"}


def test_tensorflow_extra_adds_tensorflow_keras_and_scikit_learn():
    assert set(installed_by("tensorflow")) - set(installed_by()) == {"tensorflow", "keras", "scikit-learn"}


def test_workflow_extra_adds_snakemake_to_the_tensorflow_extra():
    assert set(installed_by("workflow")) - set(installed_by("tensorflow")) == {"snakemake"}


def test_slurm_extra_adds_the_executor_plugin_to_the_workflow_extra():
    added = set(installed_by("slurm")) - set(installed_by("workflow"))
    assert added == {"snakemake-executor-plugin-slurm"}


def test_test_extra_installs_the_workflow_on_slurm_pytest_and_the_linters():
    needed = set(installed_by("workflow", "slurm")) | {"pytest", "pyyaml", "packaging", "ruff", "snakefmt"}
    assert needed <= set(installed_by("test"))


def test_hessflow_env_is_exactly_the_workflow_install():
    conda, pip = conda_env(HESSFLOW_ENV)
    assert not set(conda) & set(pip), "a package listed twice"
    listed = {name: spec for name, spec in {**conda, **pip}.items()
              if name not in NOT_DEPENDENCIES}
    assert listed == installed_by("workflow")


def test_analysis_env_is_exactly_the_base_install():
    conda, pip = conda_env(ANALYSIS_ENV)
    assert set(pip) == {"hessflow"}, "the analysis env installs only hessflow itself from PyPI"
    listed = {name: spec for name, spec in conda.items() if name not in NOT_DEPENDENCIES}
    assert listed == installed_by()


@pytest.mark.parametrize("path", [HESSFLOW_ENV, ANALYSIS_ENV], ids=lambda p: p.name)
def test_env_installs_hessflow_itself_at_the_version_of_pyproject(path):
    # Used as a module of another project (--software-deployment-method conda), the jobs import
    # hessflow from the environment: it must be the version the workflow was written for.
    _, pip = conda_env(path)
    assert str(pip["hessflow"]) == f"=={pyproject()['project']['version']}"


def test_quick_start_is_two_lines_the_demo_with_the_workflow_extra_and_the_suite_with_the_test_extra():
    demo, suite = quick_start_lines()
    assert demo == "python3 -m venv .venv && .venv/bin/pip install -e '.[workflow]' && .venv/bin/snakemake --cores 2"
    assert suite == "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest"


def test_ci_runs_the_linters_and_then_exactly_the_second_quick_start_line():
    lines = [line.strip() for line in CI_RUN.read_text(encoding="utf-8").splitlines()]
    suite = quick_start_lines()[1]
    assert suite in lines
    before = lines[: lines.index(suite)]
    assert ".venv/bin/ruff check ." in before
    assert ".venv/bin/snakefmt --check workflow" in before


@pytest.mark.parametrize("path", [HESSFLOW_ENV, ANALYSIS_ENV], ids=lambda p: p.name)
def test_env_python_satisfies_requires_python(path):
    conda, _ = conda_env(path)
    requires = SpecifierSet(pyproject()["project"]["requires-python"])
    lowest = re.search(r">=\s*([0-9.]+)", str(requires)).group(1)
    assert lowest in conda["python"], f"{path.name}: python {conda['python']} excludes {lowest}"


@pytest.mark.parametrize("path", [HESSFLOW_ENV, ANALYSIS_ENV], ids=lambda p: p.name)
def test_env_uses_conda_forge_only(path):
    assert load_yaml(path)["channels"] == ["conda-forge", "nodefaults"]


# ------------------------------------------------------------------------------------------------
# the shipped configs
# ------------------------------------------------------------------------------------------------
def test_demo_config_meets_the_floor():
    config = validated(load_yaml(DEMO))
    assert config["run_name"] == "demo"
    assert config["data"]["factory"] == "digits"
    assert config["model"]["factory"] == "small_cnn"
    assert config["model"]["options"]["batch_norm"] is True
    steps = config["training"]["checkpoint_steps"]
    assert len(steps) >= 4
    assert steps == sorted(steps)
    assert steps[0] == 0 and steps[-1] == config["training"]["steps"]
    assert config["lanczos"]["deflation_steps"] + config["lanczos"]["draws"] * config["lanczos"]["steps"] == 270
    assert config["lanczos"]["draws"] >= 2
    assert config["hessian"]["batch_norm"] == "train"
    assert config["hessian"]["max_examples"] is None
    assert all(config["resources"][rule]["gpu"] == 0 for rule in ("train", "lanczos"))


def test_demo_config_stays_small_enough_for_two_cpu_cores():
    config = validated(load_yaml(DEMO))
    assert config["training"]["steps"] <= 1000
    assert len(config["training"]["checkpoint_steps"]) * config["lanczos"]["draws"] <= 20


def test_cifar_config_has_the_papers_values():
    config = validated(load_yaml(CIFAR))
    assert config["run_name"] == "cifar10_resnet32"
    data = config["data"]
    assert data["factory"] == "cifar10"
    assert data["cifar10"]["url"] == "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
    assert data["cifar10"]["sha256"] == (
        "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd")
    assert config["model"] == {"factory": "resnet32", "options": {}}
    training = config["training"]
    assert training["batch_size"] == 128
    assert training["learning_rate"] == 0.1
    assert training["momentum"] == 0.9
    assert training["lr_boundaries"] == [33000, 66000]
    assert training["lr_decay_factor"] == 0.1
    assert training["weight_decay"] == 2e-4
    assert training["augment"] is True
    assert training["steps"] == 100000
    assert config["hessian"]["batch_norm"] == "train"
    assert config["hessian"]["max_examples"] is None
    assert config["lanczos"]["steps"] == 90
    assert config["lanczos"]["draws"] == 10
    assert config["resources"]["train"]["gpu"] == 1
    assert config["resources"]["lanczos"]["gpu"] == 1


def test_cifar_checkpoints_span_the_run_and_bracket_each_rate_cut():
    training = validated(load_yaml(CIFAR))["training"]
    steps = training["checkpoint_steps"]
    assert steps == sorted(steps)
    assert steps[0] == 0 and steps[-1] == training["steps"]
    for boundary in training["lr_boundaries"]:
        assert boundary in steps and any(step > boundary for step in steps)


@pytest.mark.parametrize("path", [DEMO, CIFAR], ids=lambda p: p.name)
def test_shipped_checkpoints_and_boundaries_lie_within_training(path):
    # The schema cannot compare two keys; the training script checks this at run time.
    training = load_yaml(path)["training"]
    assert max(training["checkpoint_steps"]) <= training["steps"]
    assert all(boundary <= training["steps"] for boundary in training["lr_boundaries"])
    assert training["lr_boundaries"] == sorted(training["lr_boundaries"])


def test_every_operator_is_spelled_alike_in_schema_layout_job_and_figures():
    from hessflow.lanczos_job import OPERATOR_CLASSES
    from hessflow.layout import OPERATORS
    from hessflow.plots import OPERATOR_NAMES

    operator = yaml.safe_load(SCHEMA.read_text())["properties"]["hessian"]["properties"]["operator"]
    name_enum, list_enum = (choice.get("enum") or choice["items"]["enum"] for choice in operator["oneOf"])
    assert name_enum == list_enum == list(OPERATORS) == list(OPERATOR_CLASSES) == list(OPERATOR_NAMES)
