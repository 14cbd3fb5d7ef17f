"""Atomic writes and sha256 manifests."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from hessflow.artifacts import (
    atomic_write,
    read_manifest,
    save_json,
    save_npy,
    save_text,
    sha256_file,
    verify_manifest,
    write_manifest,
)


def test_atomic_write_replaces_file_on_success(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_write(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.txt.tmp-")
        tmp.write_text("new")
        assert target.read_text() == "old"  # not visible before the body finishes
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_write_failure_leaves_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "tridiag_0.npy"
    save_npy(target, np.arange(3.0))
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_write(target) as tmp:
            tmp.write_bytes(b"half-writ")
            raise RuntimeError("killed")
    np.testing.assert_array_equal(np.load(target), np.arange(3.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tridiag_0.npy"]


def test_atomic_write_failure_without_old_file_creates_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_write(tmp_path / "new.json") as tmp:
            tmp.write_text("{")
            raise RuntimeError
    assert list(tmp_path.iterdir()) == []


def test_save_npy_keeps_the_exact_name_and_round_trips(tmp_path):
    array = np.random.default_rng(0).standard_normal((4, 3))
    path = save_npy(tmp_path / "density.npy", array)
    assert path.name == "density.npy"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["density.npy"]
    loaded = np.load(path)
    assert loaded.dtype == np.float64 and np.array_equal(loaded, array)


def test_save_npy_does_not_append_a_suffix(tmp_path):
    save_npy(tmp_path / "state.bin", np.zeros(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.bin"]


def test_save_json_is_sorted_indented_with_trailing_newline(tmp_path):
    path = save_json(tmp_path / "provenance.json", {"seed": 3, "dtype": "float32", "m": 90})
    text = path.read_text()
    assert text == json.dumps({"dtype": "float32", "m": 90, "seed": 3}, indent=2) + "\n"


def test_save_text_writes_exact_text(tmp_path):
    path = save_text(tmp_path / "summary.csv", "a,b\n1,2\n")
    assert path.read_bytes() == b"a,b\n1,2\n"


def test_sha256_file_matches_hashlib_across_chunks(tmp_path):
    data = np.random.default_rng(1).bytes(3 * 2**20 + 17)  # more than three 1 MiB chunks
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def make_run(tmp_path):
    (tmp_path / "step_10").mkdir()
    files = {
        "step_10/tridiags.npy": b"\x93NUMPY fake tridiags",
        "step_10/density.npy": b"density bytes",
        "summary.csv": b"step,lambda_max\n10,3.5\n",
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    return files


def test_manifest_round_trip(tmp_path):
    files = make_run(tmp_path)
    manifest = tmp_path / "manifest.tsv"
    write_manifest(manifest, [tmp_path / name for name in files], root=tmp_path)
    lines = manifest.read_text().splitlines()
    assert lines[0] == "path\tsize_bytes\tsha256"
    rows = read_manifest(manifest)
    assert [row["path"] for row in rows] == sorted(files)
    for row in rows:
        content = files[row["path"]]
        assert row["size_bytes"] == len(content)
        assert row["sha256"] == hashlib.sha256(content).hexdigest()
    assert verify_manifest(manifest, tmp_path) == []


def test_manifest_accepts_paths_relative_to_root(tmp_path):
    files = make_run(tmp_path)
    manifest = tmp_path / "manifest.tsv"
    write_manifest(manifest, list(files), root=tmp_path)
    assert [row["path"] for row in read_manifest(manifest)] == sorted(files)


def test_verify_catches_one_changed_byte_and_a_missing_file(tmp_path):
    make_run(tmp_path)
    manifest = tmp_path / "manifest.tsv"
    write_manifest(manifest, ["summary.csv", "step_10/density.npy", "step_10/tridiags.npy"], root=tmp_path)
    density = tmp_path / "step_10" / "density.npy"
    content = bytearray(density.read_bytes())
    content[3] ^= 0x01
    density.write_bytes(bytes(content))
    (tmp_path / "summary.csv").unlink()
    problems = verify_manifest(manifest, tmp_path)
    # In manifest (sorted path) order.
    assert problems == ["sha256 mismatch: step_10/density.npy", "missing: summary.csv"]


def test_verify_reports_size_mismatch(tmp_path):
    make_run(tmp_path)
    manifest = tmp_path / "manifest.tsv"
    write_manifest(manifest, ["summary.csv"], root=tmp_path)
    with open(tmp_path / "summary.csv", "ab") as f:
        f.write(b"20,3.1\n")
    [problem] = verify_manifest(manifest, tmp_path)
    assert problem.startswith("size mismatch: summary.csv")


def test_manifest_refuses_files_outside_root(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "elsewhere.npy").write_bytes(b"x")
    with pytest.raises(ValueError, match="not inside the root"):
        write_manifest(tmp_path / "root" / "manifest.tsv", [tmp_path / "elsewhere.npy"], root=tmp_path / "root")


def test_read_manifest_refuses_a_wrong_header(tmp_path):
    path = tmp_path / "manifest.tsv"
    path.write_text("file\tsha\n")
    with pytest.raises(ValueError, match="not a hessflow manifest"):
        read_manifest(path)
