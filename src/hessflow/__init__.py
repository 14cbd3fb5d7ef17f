"""hessflow: Hessian eigenvalue densities of neural networks by stochastic Lanczos quadrature.

Two layers; arrows point from the second to the first, never back.

TensorFlow-free (numpy, scipy, pandas, matplotlib: the base install; tests/test_boundary.py
imports each with TensorFlow, Keras and Snakemake blocked):
  lanczos    Lanczos on any symmetric operator, float64, full reorthogonalization, resumable;
             Gaussian or Rademacher probes
  density    Ritz nodes/weights, Gaussian-smoothed densities, summary statistics
  eigenpairs top Ritz pairs with a-posteriori bounds, residual norms, converged pairs by ARPACK
  deflation  spectral deflation for SLQ: P A P, its start vector, exact atoms + deflated quadrature
  artifacts  atomic writes and sha256 manifests
  integrity  artifacts checked against their producers' sha256 records and for form
  layout     the paths of a run folder, written once
  plots      the density and trajectory figures
  reproduce  rebuild a run's results from its tridiagonals, verified against the manifest
  papercode  the paper code's tridiag_<k>/lanczos_vec_<k> files into hessflow's layouts
  export     a run folder as one archive to share, with the software versions
  download   the CIFAR-10 archive, verified and unpacked all-or-nothing
  sanity     numbers that mean nothing: non-finite config values, config files, diverging losses

TensorFlow (the ``tensorflow`` extra; some import it only inside functions):
  factories     your model, data and loss by "module:function"; the built-ins are aliases
  objectives    the loss named in the config, per example; checks that model, loss and labels fit
  data          CIFAR-10 reader, built-in data factories, preprocessing, the data card, fixed batches
  prepare       the prepare_data step: a data factory's arrays, checked, and their data card
  models        the paper's ResNet-32 and small models; which variables weight decay covers
  kernels       one batch's loss sum, gradient, Hessian- and GGN-vector products (forward mode)
  hvp           HessianOperator, GGNOperator: the full-data Hessian and Gauss-Newton matrix as
                scipy LinearOperators, whole or a block of variables (variables=[regex, ...])
  batchnorm     twice-differentiable batch and layer statistics (TensorFlow's are not)
  noise         dropout and other noise layers off in every Hessian pass
  distribute    tf.distribute strategies, replica rounds by whole batches, weight checks
  lanczos_job   one Lanczos job (LanczosJobSpec), on one or many workers
  schedule      the piecewise-constant learning rate
  checkpoints   Keras weight files: atomic, checked before loading, hashed
  training      the SGD loop on the run's objective, checkpoints at set steps
  evaluation    mean loss, and accuracy for classification
  jobs          what every workflow job does first: log, console, GPUs, threads
  gpu_lock      distinct GPUs for concurrent jobs on one machine

Importing the package imports none of its modules.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

__all__ = ["__version__", "pyproject_version"]


def pyproject_version(text: str) -> str | None:
    """The ``version`` of the ``[project]`` table of a pyproject.toml naming ``hessflow``, or None.

    The workflow reads its own repository's pyproject.toml with it, to compare the version it was
    written for with the installed package's (``workflow/rules/common.smk``).
    """
    project = re.search(r"^\[project\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
    if project and re.search(r'^name\s*=\s*"hessflow"\s*$', project.group(1), re.M):
        found = re.search(r'^version\s*=\s*"([^"]+)"\s*$', project.group(1), re.M)
        if found:
            return found.group(1)
    return None


def _version() -> str:
    """The ``version`` of pyproject.toml, the one place it is written.

    An installed hessflow carries it in its metadata (copied from pyproject.toml at install time);
    a source checkout imported without installing (the workflow's conda environments put
    ``src/`` on ``sys.path``) has only pyproject.toml itself. So: this package's own checkout
    first, when it is one (``src/hessflow`` beside a pyproject.toml naming ``hessflow``; that also
    keeps a stale editable install honest after a version bump), else the installed metadata.
    A small pattern, not a TOML parser: Python 3.10 has no ``tomllib``, and the base install
    needs nothing more for one ``key = "value"`` line (tests/test_boundary.py checks the two agree).
    """
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    if pyproject.is_file():
        version = pyproject_version(pyproject.read_text(encoding="utf-8"))
        if version is not None:
            return version
    try:
        return metadata.version("hessflow")
    except metadata.PackageNotFoundError:  # copied somewhere without pyproject.toml or metadata
        return "0+unknown"


__version__ = _version()
