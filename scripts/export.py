"""Rule export: results/{run}.tar.gz with the artifacts, manifest, resolved config and software versions.

The archive holds one folder, {run_name}/, laid out as results/{run_name}/ is, plus
software_versions.txt and export.json (what `export.*` left out, so that hessflow-reproduce
reports those files as not shipped instead of missing). Written atomically.
"""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # hessflow from this checkout (also in conda envs)
sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

import io  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import tarfile  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402

import hessflow  # noqa: E402
from hessflow import artifacts  # noqa: E402
from hessflow.reproduce import EXPORT_FILE  # noqa: E402

KEY_PACKAGES = ("numpy", "scipy", "pandas", "matplotlib", "tensorflow", "keras", "scikit-learn", "snakemake")

params = snakemake.params
root = Path(snakemake.input.manifest).parent  # results/{run_name}


def version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def software_versions():
    """pip-freeze-like: the key packages first, then every installed distribution (no TensorFlow import)."""
    lines = [
        "# Software of the environment that exported this run (the export rule's).",
        "# Each Lanczos job's own TensorFlow/Keras versions and devices are in lanczos/step_*/provenance_*.json.",
        f"python=={platform.python_version()}",
        f"platform=={platform.platform()}",
        f"hessflow=={hessflow.__version__}",
        *(f"{name}=={version(name)}" for name in KEY_PACKAGES),
        "",
        "# all installed distributions",
    ]
    installed = {(dist.metadata["Name"] or "?").lower(): dist.version for dist in metadata.distributions()}
    lines += [f"{name}=={installed[name]}" for name in sorted(installed)]
    return "\n".join(lines) + "\n"


def add_bytes(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


files = sorted({Path(path).relative_to(root).as_posix() for path in snakemake.input.artifacts} | {"manifest.tsv"})
left_out = list(params.left_out)
with artifacts.atomic_write(snakemake.output[0]) as tmp:
    with tarfile.open(tmp, "w:gz") as tar:
        for relative in files:
            info = tar.gettarinfo(root / relative, arcname=f"{params.run_name}/{relative}")
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(root / relative, "rb") as handle:
                tar.addfile(info, handle)
        add_bytes(tar, f"{params.run_name}/software_versions.txt", software_versions().encode())
        export = {"run_name": params.run_name, "hessflow_version": hessflow.__version__, "left_out": left_out}
        add_bytes(tar, f"{params.run_name}/{EXPORT_FILE}", (json.dumps(export, indent=2, sort_keys=True) + "\n").encode())
print(f"{len(files)} files, {len(left_out)} left out: {snakemake.output[0]}")
