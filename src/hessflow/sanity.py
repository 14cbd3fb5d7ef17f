"""Numbers that mean nothing, refused or flagged: config values, config files, diverging losses.

Three checks that a JSON schema cannot express, each a pure function (no TensorFlow, no
Snakemake; PyYAML only inside :func:`load_config_file`):

- :func:`check_finite`: every number in a config is finite. YAML spells infinity and NaN
  ``.inf``, ``-.inf``, ``.nan``; they are floats, so ``type: number`` accepts them, and a NaN
  passes every ``minimum``/``maximum`` (each comparison with NaN is false). The workflow calls
  this on the validated config before any job runs (``workflow/rules/common.smk``).
- :func:`config_warnings`: settings that run but give a degenerate answer (one Lanczos step: a
  single Ritz value, so lambda_max = lambda_min and the density is one Gaussian).
- :func:`diverged`: the divergence rule of the train log and of ``summary.csv``'s ``diverged``
  column. A loss sequence has diverged when one of its values is not finite or exceeds
  ``DIVERGENCE_FACTOR`` (10) times the loss at the start. Training from a sane initialization
  lowers the loss (a classifier starts near log(K)); a learning rate far too large sends it up by
  orders of magnitude (learning rate 1000 on the digits demo: 2.3 at the start, 2.5e8 after 50
  updates, 5.7e12 at the end, accuracy at chance), and a tenfold rise above the start is beyond
  minibatch noise.

:func:`non_negative_int` is the count check training and evaluation share (a step or batch count).

:func:`load_config_file` reads a config file as Snakemake does, but names the file, line and
column of a YAML syntax error (Snakemake's ``--configfile`` says only "Config file is not valid
JSON or YAML"); ``python -m hessflow.sanity FILE ...`` runs it and :func:`check_finite` on each
file.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "DIVERGENCE_FACTOR",
    "ConfigFileError",
    "check_finite",
    "config_warnings",
    "diverged",
    "load_config_file",
    "main",
    "non_finite_numbers",
    "non_negative_int",
]

#: A loss above this many times its value at the start counts as diverged (see the module docstring).
DIVERGENCE_FACTOR = 10.0


class ConfigFileError(ValueError):
    """A config file cannot be read: the message names the file (and the line, for YAML syntax)."""


def non_finite_numbers(config: Any, prefix: str = "") -> list[tuple[str, float]]:
    """Every non-finite float in ``config`` (nested mappings and lists), as ``(dotted key, value)``.

    Keys are dotted (``density.sigma_squared``), list items indexed (``model.options.hidden[1]``);
    in the order of the config. Booleans and integers are always finite.
    """
    found = []
    if isinstance(config, Mapping):
        for key, value in config.items():
            found += non_finite_numbers(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(config, list | tuple):
        for index, value in enumerate(config):
            found += non_finite_numbers(value, f"{prefix}[{index}]")
    elif isinstance(config, float) and not math.isfinite(config):
        found.append((prefix, config))
    return found


def _yaml_spelling(value: float) -> str:
    return ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")


def check_finite(config: Mapping) -> None:
    """Refuse a config with a non-finite number anywhere (one line naming the first key).

    Raises:
        ValueError: ``config density.sigma_squared: .inf is not a finite number; ...``.
    """
    found = non_finite_numbers(config)
    if found:
        key, value = found[0]
        more = f" (and {', '.join(k for k, _ in found[1:])})" if len(found) > 1 else ""
        raise ValueError(
            f"config {key}: {_yaml_spelling(value)} is not a finite number{more}; every number in the "
            "config must be finite: write the value out (e.g. 1.0e-5)"
        )


def config_warnings(config: Mapping) -> list[str]:
    """One line per setting that runs but gives a degenerate answer (empty list: none)."""
    warnings = []
    if config.get("lanczos", {}).get("steps") == 1:
        warnings.append(
            "hessflow: warning: config lanczos.steps is 1: each draw has a single Ritz value, so "
            "lambda_max = lambda_min and the density is one Gaussian; use lanczos.steps >= 10 for a spectrum"
        )
    return warnings


def non_negative_int(value, name: str) -> int:
    """``value`` as an int; a bool, a non-integer or a negative number is refused, naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


def diverged(losses: Sequence[float], start: float | None = None, factor: float = DIVERGENCE_FACTOR) -> bool:
    """Whether a loss sequence has diverged: a value not finite or above ``factor`` x the start.

    Args:
        losses: the losses in step order (e.g. the train log's rows, or summary.csv's train_loss).
        start: the loss at the start (default: ``losses[0]``).
        factor: the tolerated rise (default :data:`DIVERGENCE_FACTOR`).
    """
    values = [float(loss) for loss in losses]
    if not values:
        return False
    reference = values[0] if start is None else float(start)
    if not math.isfinite(reference):
        return True
    return any(not math.isfinite(value) or value > factor * abs(reference) for value in values)


def load_config_file(path: str | Path) -> dict:
    """The mapping a JSON or YAML config file holds; a syntax error names the file and line.

    Raises:
        ConfigFileError: the file is missing, not valid YAML (``FILE, line L, column C: problem``;
            lines and columns count from 1), or does not hold a mapping.
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigFileError(f"config file {path} not found") from None
    try:
        config = yaml.safe_load(text)  # JSON is YAML
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        context = getattr(error, "context", None)
        detail = f"{problem} ({context})" if context else problem
        raise ConfigFileError(f"config file {path}{where}: not valid YAML: {detail}") from None
    if not isinstance(config, dict):
        raise ConfigFileError(f"config file {path}: holds a {type(config).__name__}, not a mapping of keys")
    return config


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hessflow.sanity FILE ...``: YAML syntax (with file and line) and finite numbers.

    Prints ``FILE: ok`` or one line naming the problem per file; exit status 1 when any has one.
    The schema (keys, types, ranges) is Snakemake's to check when the workflow starts.
    """
    files = list(sys.argv[1:] if argv is None else argv)
    if not files:
        print("usage: python -m hessflow.sanity CONFIG_FILE ...", file=sys.stderr)
        return 2
    status = 0
    for name in files:
        try:
            check_finite(load_config_file(name))
        except ValueError as error:
            message = str(error) if isinstance(error, ConfigFileError) else f"{name}: {error}"
            print(message, file=sys.stderr)
            status = 1
        else:
            print(f"{name}: ok")
    return status


if __name__ == "__main__":
    sys.exit(main())
