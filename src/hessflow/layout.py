"""The layout of a run folder, ``results/{run_name}/``: every artifact's path, written once.

The workflow's rules (``workflow/rules/common.smk``), the Lanczos job (its resumable state) and
``hessflow-reproduce`` all take their paths from here, so a rule and a rebuild cannot disagree
about where a file is. Pure Python (no numpy, no TensorFlow, no Snakemake)::

    results/{run_name}/
        config.json                          the resolved config (defaults filled)
        manifest.tsv                         size and sha256 of every artifact
        data/{train,test}_{images,labels}.npy, data/dataset.json
        checkpoints/step_{s}.weights.h5      train/history.csv, train/checkpoints.json (their sha256)
        evaluation/step_{s}.json
        lanczos/{o}/{b}/step_{s}/tridiag_{d}.npy, provenance_{d}.json, lanczos_vec_{d}.npy (optional)
        lanczos/{o}/{b}/step_{s}/.state_{d}.npz   resumable Lanczos state (undeclared; gone when done)
        spectrum/{o}/{b}/step_{s}/tridiags.npy, ritz_values.npy, ritz_weights.npy, density.npy,
                             stats.json, top_pairs.npz (optional)
        figures/{o}/{b}/density_step_{s}.png, figures/{o}/{b}/trajectory.png
        figures/curvatures_step_{s}.png      every curvature of a step side by side (if several)
        summary.csv                          one row per curvature and step
        summary.html                         the same table, for the Snakemake report
        logs/..., benchmarks/...             per-job logs and Snakemake benchmarks (not artifacts)
    results/{run_name}.tar.gz                the export archive (beside the run folder)

A *curvature* is an operator ``{o}`` (``hessian`` or ``ggn``, config ``hessian.operator``) on a
block ``{b}`` of the model's variables (a name of ``hessian.blocks``; the default block ``all`` is
the whole model): every Lanczos job, spectrum and figure belongs to one (:func:`curvatures`). The
path methods take ``operator`` and ``block`` last, defaulting to the whole-model Hessian.

Paths are ``/``-joined strings, not :class:`pathlib.Path`, so that Snakemake wildcards pass
through: ``RunLayout("results/demo").checkpoint("{step}")`` is
``"results/demo/checkpoints/step_{step}.weights.h5"``. ``RunLayout()`` (empty root) gives the
paths relative to the run folder, as ``manifest.tsv`` records them.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "BASIS_DRAW",
    "CONFIG_FILE",
    "DEFAULT_BLOCK",
    "DEFAULT_OPERATOR",
    "EXPORT_FILE",
    "MANIFEST_FILE",
    "OPERATORS",
    "RunLayout",
    "curvatures",
    "lanczos_state_beside",
    "results_root",
]

#: The resolved config inside a run folder (written by the workflow's ``resolved_config`` rule).
CONFIG_FILE = "config.json"
#: The manifest of a run folder (``hessflow.artifacts`` format).
MANIFEST_FILE = "manifest.tsv"
#: What an export archive left out on purpose (written by the ``export`` rule, inside the archive).
EXPORT_FILE = "export.json"

#: The curvature operators (`hessflow.hvp.HessianOperator`, `hessflow.hvp.GGNOperator`).
OPERATORS = ("hessian", "ggn")
DEFAULT_OPERATOR = "hessian"
#: The block of every variable, the default ``hessian.blocks`` (``{"all": [".*"]}``).
DEFAULT_BLOCK = "all"
#: The ``draw`` of the deflation basis run (``lanczos.deflation_steps``) in its files' names.
BASIS_DRAW = "basis"

_SPECTRUM_FILES = ("tridiags", "ritz_values", "ritz_weights", "density", "stats")
_STATE_NAME = ".state_{draw}.npz"


def results_root(run_name: str) -> str:
    """The run folder of ``run_name``, relative to the working directory: ``results/{run_name}``."""
    return f"results/{run_name}"


def curvatures(config: Mapping) -> list[tuple[str, str]]:
    """The ``(operator, block)`` pairs a run analyses, from a resolved config: each of
    ``hessian.operator`` (a name or a list of names) on each block of ``hessian.blocks``, in the
    config's order. A config without these keys (written before they existed) analyses
    ``[("hessian", "all")]``."""
    hessian = config.get("hessian", {})
    operators = hessian.get("operator", DEFAULT_OPERATOR)
    operators = [operators] if isinstance(operators, str) else list(operators)
    blocks = list(hessian.get("blocks") or {DEFAULT_BLOCK: None})
    return [(operator, block) for operator in operators for block in blocks]


def lanczos_state_beside(tridiag: str | os.PathLike, draw: int | str) -> str:
    """The resumable state of a Lanczos draw, in the folder of its declared ``tridiag`` output.

    Derived from the output path that Snakemake hands the job (prefixed when the workflow is used
    as a module with ``prefix:``), never from the run name: the state then always lies where the
    job's outputs do. Undeclared on purpose, so that Snakemake does not delete it with an
    incomplete job's outputs.
    """
    return posixpath.join(posixpath.dirname(os.fspath(tridiag)), _STATE_NAME.format(draw=draw))


@dataclass(frozen=True)
class RunLayout:
    """Paths of one run folder. ``root``: the run folder (``""``: paths relative to it)."""

    root: str = ""

    @classmethod
    def for_run(cls, run_name: str) -> RunLayout:
        """The layout of ``results/{run_name}``."""
        return cls(results_root(run_name))

    def path(self, relative: str) -> str:
        """``relative`` (to the run folder) joined to the root."""
        return f"{self.root}/{relative}" if self.root else relative

    def relative(self, path: str | os.PathLike) -> str:
        """A path of this run folder, relative to it (the inverse of :meth:`path`)."""
        return posixpath.relpath(os.fspath(path), self.root) if self.root else os.fspath(path)

    # -- the run as a whole -------------------------------------------------------------------
    @property
    def config(self) -> str:
        return self.path(CONFIG_FILE)

    @property
    def manifest(self) -> str:
        return self.path(MANIFEST_FILE)

    @property
    def summary(self) -> str:
        return self.path("summary.csv")

    @property
    def summary_html(self) -> str:
        """``summary.csv`` as an HTML table: what the Snakemake report shows (it offers CSV only
        as a download)."""
        return self.path("summary.html")

    @property
    def archive(self) -> str:
        """The export archive, beside the run folder: ``results/{run_name}.tar.gz``."""
        if not self.root:
            raise ValueError("the export archive lies beside the run folder: give the layout a root")
        return f"{self.root}.tar.gz"

    @property
    def logs(self) -> str:
        return self.path("logs")

    @property
    def benchmarks(self) -> str:
        return self.path("benchmarks")

    def log(self, name: str) -> str:
        """A job's log: ``logs/{name}.log`` (``name`` may hold a sub-folder: ``lanczos/step_{s}``)."""
        return self.path(f"logs/{name}.log")

    def benchmark(self, name: str) -> str:
        """A job's Snakemake benchmark: ``benchmarks/{name}.tsv``."""
        return self.path(f"benchmarks/{name}.tsv")

    # -- data and training --------------------------------------------------------------------
    def data_files(self, split: str) -> dict[str, str]:
        """``{"images": ..., "labels": ...}`` of ``split`` (``train`` or ``test``)."""
        return {kind: self.path(f"data/{split}_{kind}.npy") for kind in ("images", "labels")}

    @property
    def dataset_card(self) -> str:
        return self.path("data/dataset.json")

    def checkpoint(self, step: int | str) -> str:
        return self.path(f"checkpoints/step_{step}.weights.h5")

    @property
    def history(self) -> str:
        return self.path("train/history.csv")

    @property
    def checkpoint_record(self) -> str:
        """``{step: sha256}`` of every checkpoint the train job saved (`hessflow.integrity`)."""
        return self.path("train/checkpoints.json")

    def evaluation(self, step: int | str) -> str:
        return self.path(f"evaluation/step_{step}.json")

    # -- Lanczos -------------------------------------------------------------------------------
    def lanczos_dir(self, step: int | str, operator: str = DEFAULT_OPERATOR, block: str = DEFAULT_BLOCK) -> str:
        return self.path(f"lanczos/{operator}/{block}/step_{step}")

    def tridiag(self, step: int | str, draw: int | str, operator: str = DEFAULT_OPERATOR,
                block: str = DEFAULT_BLOCK) -> str:
        return f"{self.lanczos_dir(step, operator, block)}/tridiag_{draw}.npy"

    def provenance(self, step: int | str, draw: int | str, operator: str = DEFAULT_OPERATOR,
                   block: str = DEFAULT_BLOCK) -> str:
        return f"{self.lanczos_dir(step, operator, block)}/provenance_{draw}.json"

    def lanczos_vectors(self, step: int | str, draw: int | str, operator: str = DEFAULT_OPERATOR,
                        block: str = DEFAULT_BLOCK) -> str:
        return f"{self.lanczos_dir(step, operator, block)}/lanczos_vec_{draw}.npy"

    def lanczos_files(self, step: int | str, draw: int | str, save_vectors: bool,
                      operator: str = DEFAULT_OPERATOR, block: str = DEFAULT_BLOCK) -> dict[str, str]:
        """A Lanczos job's outputs: ``tridiag``, ``provenance`` and, if saved, ``vectors``."""
        where = (step, draw, operator, block)
        files = {"tridiag": self.tridiag(*where), "provenance": self.provenance(*where)}
        if save_vectors:
            files["vectors"] = self.lanczos_vectors(*where)
        return files

    def basis_files(self, step: int | str, operator: str = DEFAULT_OPERATOR,
                    block: str = DEFAULT_BLOCK) -> dict[str, str]:
        """The deflation basis run's outputs (``tridiag_basis.npy``, ``provenance_basis.json``,
        ``lanczos_vec_basis.npy``): a Lanczos job's, its vectors always kept."""
        return self.lanczos_files(step, BASIS_DRAW, True, operator, block)

    def lanczos_state(self, step: int | str, draw: int | str, operator: str = DEFAULT_OPERATOR,
                      block: str = DEFAULT_BLOCK) -> str:
        """The resumable state of a draw (the same file as :func:`lanczos_state_beside`)."""
        return lanczos_state_beside(self.tridiag(step, draw, operator, block), draw)

    # -- spectrum, summary, figures ------------------------------------------------------------
    def spectrum_files(self, step: int | str, operator: str = DEFAULT_OPERATOR,
                       block: str = DEFAULT_BLOCK) -> dict[str, str]:
        """``tridiags``, ``ritz_values``, ``ritz_weights``, ``density`` (.npy) and ``stats`` (.json)."""
        base = self.path(f"spectrum/{operator}/{block}/step_{step}")
        return {name: f"{base}/{name}.{'json' if name == 'stats' else 'npy'}" for name in _SPECTRUM_FILES}

    def top_pairs(self, step: int | str, operator: str = DEFAULT_OPERATOR, block: str = DEFAULT_BLOCK) -> str:
        """The top Ritz pairs of every draw of a step (``spectrum.top_k``), an ``.npz`` file."""
        return self.path(f"spectrum/{operator}/{block}/step_{step}/top_pairs.npz")

    def density_figure(self, step: int | str, operator: str = DEFAULT_OPERATOR, block: str = DEFAULT_BLOCK) -> str:
        return self.path(f"figures/{operator}/{block}/density_step_{step}.png")

    def trajectory_figure(self, operator: str = DEFAULT_OPERATOR, block: str = DEFAULT_BLOCK) -> str:
        return self.path(f"figures/{operator}/{block}/trajectory.png")

    def curvatures_figure(self, step: int | str) -> str:
        """Every curvature's density at ``step`` side by side (made when a run has several)."""
        return self.path(f"figures/curvatures_step_{step}.png")
