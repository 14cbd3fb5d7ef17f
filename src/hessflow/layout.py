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
        lanczos/step_{s}/tridiag_{d}.npy, provenance_{d}.json, lanczos_vec_{d}.npy (optional)
        lanczos/step_{s}/.state_{d}.npz      resumable Lanczos state (undeclared; gone when done)
        spectrum/step_{s}/tridiags.npy, ritz_values.npy, ritz_weights.npy, density.npy, stats.json
        figures/density_step_{s}.png, figures/trajectory.png
        summary.csv
        logs/..., benchmarks/...             per-job logs and Snakemake benchmarks (not artifacts)
    results/{run_name}.tar.gz                the export archive (beside the run folder)

Paths are ``/``-joined strings, not :class:`pathlib.Path`, so that Snakemake wildcards pass
through: ``RunLayout("results/demo").checkpoint("{step}")`` is
``"results/demo/checkpoints/step_{step}.weights.h5"``. ``RunLayout()`` (empty root) gives the
paths relative to the run folder, as ``manifest.tsv`` records them.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass

__all__ = [
    "CONFIG_FILE",
    "EXPORT_FILE",
    "MANIFEST_FILE",
    "RunLayout",
    "lanczos_state_beside",
    "results_root",
]

#: The resolved config inside a run folder (written by the workflow's ``resolved_config`` rule).
CONFIG_FILE = "config.json"
#: The manifest of a run folder (``hessflow.artifacts`` format).
MANIFEST_FILE = "manifest.tsv"
#: What an export archive left out on purpose (written by the ``export`` rule, inside the archive).
EXPORT_FILE = "export.json"

_SPECTRUM_FILES = ("tridiags", "ritz_values", "ritz_weights", "density", "stats")
_STATE_NAME = ".state_{draw}.npz"


def results_root(run_name: str) -> str:
    """The run folder of ``run_name``, relative to the working directory: ``results/{run_name}``."""
    return f"results/{run_name}"


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
    def lanczos_dir(self, step: int | str) -> str:
        return self.path(f"lanczos/step_{step}")

    def tridiag(self, step: int | str, draw: int | str) -> str:
        return f"{self.lanczos_dir(step)}/tridiag_{draw}.npy"

    def provenance(self, step: int | str, draw: int | str) -> str:
        return f"{self.lanczos_dir(step)}/provenance_{draw}.json"

    def lanczos_vectors(self, step: int | str, draw: int | str) -> str:
        return f"{self.lanczos_dir(step)}/lanczos_vec_{draw}.npy"

    def lanczos_files(self, step: int | str, draw: int | str, save_vectors: bool) -> dict[str, str]:
        """A Lanczos job's outputs: ``tridiag``, ``provenance`` and, if saved, ``vectors``."""
        files = {"tridiag": self.tridiag(step, draw), "provenance": self.provenance(step, draw)}
        if save_vectors:
            files["vectors"] = self.lanczos_vectors(step, draw)
        return files

    def lanczos_state(self, step: int | str, draw: int | str) -> str:
        """The resumable state of a draw (the same file as :func:`lanczos_state_beside`)."""
        return lanczos_state_beside(self.tridiag(step, draw), draw)

    # -- spectrum, summary, figures ------------------------------------------------------------
    def spectrum_files(self, step: int | str) -> dict[str, str]:
        """``tridiags``, ``ritz_values``, ``ritz_weights``, ``density`` (.npy) and ``stats`` (.json)."""
        base = self.path(f"spectrum/step_{step}")
        return {name: f"{base}/{name}.{'json' if name == 'stats' else 'npy'}" for name in _SPECTRUM_FILES}

    def density_figure(self, step: int | str) -> str:
        return self.path(f"figures/density_step_{step}.png")

    @property
    def trajectory_figure(self) -> str:
        return self.path("figures/trajectory.png")
