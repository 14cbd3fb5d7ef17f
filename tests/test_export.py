"""hessflow.export: a run folder as one archive (the export rule's library side), on a made-up run."""

from __future__ import annotations

import json
import tarfile

from hessflow import __version__, reproduce
from hessflow.export import SOFTWARE_VERSIONS_FILE, export_run, software_versions


def make_run(root):
    files = {"manifest.tsv": "path\tsize_bytes\tsha256\n", "config.json": "{}\n",
             "lanczos/hessian/all/step_5/tridiag_0.npy": "not really npy", "summary.csv": "step\n5\n"}
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    return files


def test_the_archive_holds_one_run_folder_with_the_files_versions_and_export_record(tmp_path):
    root = tmp_path / "results" / "tiny"
    files = make_run(root)
    archive = tmp_path / "results" / "tiny.tar.gz"
    artifacts = [root / "config.json", root / "lanczos/hessian/all/step_5/tridiag_0.npy", root / "summary.csv"]
    shipped = export_run(archive, root, artifacts, "tiny", left_out=["lanczos/hessian/all/step_5/lanczos_vec_0.npy"])

    assert shipped == ["config.json", "lanczos/hessian/all/step_5/tridiag_0.npy", "manifest.tsv", "summary.csv"]
    with tarfile.open(archive) as tar:
        members = {member.name: member for member in tar.getmembers()}
        assert set(members) == {f"tiny/{name}" for name in [*shipped, SOFTWARE_VERSIONS_FILE, "export.json"]}
        for relative in shipped:
            assert tar.extractfile(f"tiny/{relative}").read().decode() == files[relative]
            assert (members[f"tiny/{relative}"].uid, members[f"tiny/{relative}"].uname) == (0, "")
        export = json.loads(tar.extractfile("tiny/export.json").read())
        versions = tar.extractfile(f"tiny/{SOFTWARE_VERSIONS_FILE}").read().decode()
    assert export == {"run_name": "tiny", "hessflow_version": __version__,
                      "left_out": ["lanczos/hessian/all/step_5/lanczos_vec_0.npy"]}
    assert f"hessflow=={__version__}" in versions.splitlines()
    assert not list(archive.parent.glob(".*tmp*")), "a temporary file was left beside the archive"


def test_reproduce_extracts_the_archive_as_the_run_folder(tmp_path):
    root = tmp_path / "results" / "tiny"
    files = make_run(root)
    archive = tmp_path / "tiny.tar.gz"
    export_run(archive, root, [root / name for name in files], "tiny")
    extracted = reproduce.extract_archive(archive, tmp_path / "out")
    assert extracted == tmp_path / "out" / "tiny"
    for relative, text in files.items():
        assert (extracted / relative).read_text() == text


def test_software_versions_list_the_key_packages_first():
    lines = software_versions().splitlines()
    names = [line.split("==")[0] for line in lines if "==" in line]
    assert names[:3] == ["python", "platform", "hessflow"]
    assert names[3:11] == ["numpy", "scipy", "pandas", "matplotlib", "tensorflow", "keras", "scikit-learn",
                           "snakemake"]
    assert "# all installed distributions" in lines
