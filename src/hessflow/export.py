"""A run as one archive to share: ``results/{run_name}.tar.gz`` (the workflow's ``export`` rule).

The archive holds one folder, ``{run_name}/``, laid out as ``results/{run_name}/`` is
(:mod:`hessflow.layout`), with the run's artifacts and ``manifest.tsv``, plus

- ``software_versions.txt``: pip-freeze-like, the key packages first, then every installed
  distribution (read from package metadata: TensorFlow is not imported);
- ``export.json``: ``{"run_name", "hessflow_version", "left_out"}``, the files (relative to the run
  folder) that the export left out on purpose, so that ``hessflow-reproduce`` reports them as not
  shipped instead of missing.

Members are regular files, owned by uid/gid 0 without names, mode as on disk (the two generated
files 0644). Written atomically (:func:`hessflow.artifacts.atomic_write`). Standard library only,
besides hessflow's TensorFlow-free modules.
"""

from __future__ import annotations

import io
import json
import os
import platform
import tarfile
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path

import hessflow
from hessflow import artifacts
from hessflow.layout import EXPORT_FILE, MANIFEST_FILE

__all__ = ["KEY_PACKAGES", "SOFTWARE_VERSIONS_FILE", "export_run", "software_versions"]

#: Packages listed first in ``software_versions.txt``.
KEY_PACKAGES = ("numpy", "scipy", "pandas", "matplotlib", "tensorflow", "keras", "scikit-learn", "snakemake")
#: The software of the exporting environment, inside the archive's run folder.
SOFTWARE_VERSIONS_FILE = "software_versions.txt"


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def software_versions() -> str:
    """``software_versions.txt``: Python, platform, hessflow, :data:`KEY_PACKAGES`, then all distributions."""
    lines = [
        "# Software of the environment that exported this run (the export rule's).",
        "# Each Lanczos job's own TensorFlow/Keras versions and devices are in its provenance:",
        "# lanczos/{operator}/{block}/step_*/provenance_*.json.",
        f"python=={platform.python_version()}",
        f"platform=={platform.platform()}",
        f"hessflow=={hessflow.__version__}",
        *(f"{name}=={_version(name)}" for name in KEY_PACKAGES),
        "",
        "# all installed distributions",
    ]
    installed = {(dist.metadata["Name"] or "?").lower(): dist.version for dist in metadata.distributions()}
    lines += [f"{name}=={installed[name]}" for name in sorted(installed)]
    return "\n".join(lines) + "\n"


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def export_run(
    archive: str | os.PathLike,
    root: str | os.PathLike,
    files: Iterable[str | os.PathLike],
    run_name: str,
    left_out: Sequence[str] = (),
) -> list[str]:
    """Write ``archive`` from the run folder ``root``; return the run-relative paths shipped.

    ``files``: the artifacts to ship (paths inside ``root``; ``manifest.tsv`` is always added);
    ``left_out``: run-relative paths recorded in ``export.json`` as left out on purpose.
    """
    root = Path(root)
    shipped = sorted({Path(path).relative_to(root).as_posix() for path in files} | {MANIFEST_FILE})
    export = {"run_name": run_name, "hessflow_version": hessflow.__version__, "left_out": list(left_out)}
    with artifacts.atomic_write(archive) as tmp:
        with tarfile.open(tmp, "w:gz") as tar:
            for relative in shipped:
                info = tar.gettarinfo(root / relative, arcname=f"{run_name}/{relative}")
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with open(root / relative, "rb") as handle:
                    tar.addfile(info, handle)
            _add_bytes(tar, f"{run_name}/{SOFTWARE_VERSIONS_FILE}", software_versions().encode())
            _add_bytes(tar, f"{run_name}/{EXPORT_FILE}", (json.dumps(export, indent=2, sort_keys=True) + "\n").encode())
    return shipped
