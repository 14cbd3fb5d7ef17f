"""Tests of hessflow.download against a local HTTP server serving a generated CIFAR-10 archive."""

from __future__ import annotations

import hashlib
import io
import tarfile

import numpy as np
import pytest

from cifar_archive import serve_directory, write_cifar10_archive
from hessflow import download as dl
from hessflow.data import load_cifar10

ARCHIVE_NAME = "cifar-10-binary.tar.gz"
FAST = {"backoff": 0.001, "timeout": 5}  # retries without real waiting


def quiet(_line: str) -> None:
    """A log function that discards its lines."""


@pytest.fixture()
def served(tmp_path):
    """A folder holding a small generated CIFAR-10 archive: (folder, generated arrays, sha256)."""
    folder = tmp_path / "served"
    folder.mkdir()
    generated = write_cifar10_archive(folder / ARCHIVE_NAME, records_per_file=10, seed=0)
    sha256 = hashlib.sha256((folder / ARCHIVE_NAME).read_bytes()).hexdigest()
    return folder, generated, sha256


@pytest.fixture()
def out(tmp_path):
    """An empty destination folder."""
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def entries(folder):
    """Names in ``folder``, hidden ones included (temporary files are hidden)."""
    return sorted(p.name for p in folder.iterdir())


# --- download ------------------------------------------------------------------------------------
def test_download_writes_file_whose_sha256_matches_the_served_archive(served, out):
    folder, _, sha256 = served
    with serve_directory(folder) as server:
        path = dl.download(f"{server.url}/{ARCHIVE_NAME}", out / "a.tar.gz", sha256, log=quiet)
    assert path == out / "a.tar.gz"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    assert path.read_bytes() == (folder / ARCHIVE_NAME).read_bytes()


def test_download_leaves_no_temporary_file(served, out):
    folder, _, sha256 = served
    with serve_directory(folder) as server:
        dl.download(f"{server.url}/{ARCHIVE_NAME}", out / "a.tar.gz", sha256, log=quiet)
    assert entries(out) == ["a.tar.gz"]


def test_download_creates_missing_destination_folders(served, tmp_path):
    folder, _, sha256 = served
    destination = tmp_path / "new" / "deeper" / "a.tar.gz"
    with serve_directory(folder) as server:
        dl.download(f"{server.url}/{ARCHIVE_NAME}", destination, sha256, log=quiet)
    assert destination.is_file()


def test_download_logs_progress_with_rate(served, out, monkeypatch):
    folder, _, sha256 = served
    monkeypatch.setattr(dl, "_PROGRESS_INTERVAL_S", 0.0)  # a progress line after every chunk
    lines = []
    with serve_directory(folder) as server:
        dl.download(f"{server.url}/{ARCHIVE_NAME}", out / "a.tar.gz", sha256, log=lines.append)
    assert any("bytes" in line and "MB/s" in line for line in lines)


def test_wrong_checksum_raises_checksum_error_naming_url_and_both_hashes(served, out):
    folder, _, sha256 = served
    wrong = "0" * 64
    with serve_directory(folder) as server:
        url = f"{server.url}/{ARCHIVE_NAME}"
        with pytest.raises(dl.ChecksumError) as caught:
            dl.download(url, out / "a.tar.gz", wrong, log=quiet, **FAST)
    message = str(caught.value)
    assert url in message and wrong in message and sha256 in message
    assert isinstance(caught.value, ValueError)


def test_wrong_checksum_leaves_nothing_behind_and_is_not_retried(served, out):
    folder, _, _ = served
    with serve_directory(folder) as server:
        with pytest.raises(dl.ChecksumError):
            dl.download(f"{server.url}/{ARCHIVE_NAME}", out / "a.tar.gz", "0" * 64,
                        log=quiet, **FAST)
    assert entries(out) == []
    assert server.request_count == 1


def test_two_503_responses_then_success_downloads_after_retries(served, out):
    folder, _, sha256 = served
    with serve_directory(folder, fail_first=2, failure="503") as server:
        path = dl.download(f"{server.url}/{ARCHIVE_NAME}", out / "a.tar.gz", sha256,
                           retries=3, log=quiet, **FAST)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    assert server.request_count == 3
    assert entries(out) == ["a.tar.gz"]


def test_persistent_503_raises_download_error_after_all_retries(served, out):
    folder, _, sha256 = served
    destination = out / "a.tar.gz"
    with serve_directory(folder, fail_first=10**6, failure="503") as server:
        url = f"{server.url}/{ARCHIVE_NAME}"
        with pytest.raises(dl.DownloadError) as caught:
            dl.download(url, destination, sha256, retries=2, log=quiet, **FAST)
    assert server.request_count == 3  # the first request and 2 retries
    message = str(caught.value)
    assert url in message and "503" in message and str(destination) in message
    assert entries(out) == []


def test_retry_waits_double_each_time(served, out, monkeypatch):
    folder, _, sha256 = served
    waits = []
    monkeypatch.setattr(dl.time, "sleep", waits.append)
    with serve_directory(folder, fail_first=3, failure="503") as server:
        dl.download(f"{server.url}/{ARCHIVE_NAME}", out / "a.tar.gz", sha256,
                    retries=3, backoff=0.5, log=quiet)
    assert waits == [0.5, 1.0, 2.0]


def test_404_fails_on_the_first_request_naming_url_and_status(served, out):
    folder, _, sha256 = served
    with serve_directory(folder) as server:
        url = f"{server.url}/missing.tar.gz"
        with pytest.raises(dl.DownloadError) as caught:
            dl.download(url, out / "a.tar.gz", sha256, retries=3, log=quiet, **FAST)
    assert server.request_count == 1
    assert url in str(caught.value) and "404" in str(caught.value)
    assert entries(out) == []


def test_truncated_body_is_retried(served, out):
    folder, _, sha256 = served
    with serve_directory(folder, fail_first=1, failure="truncate") as server:
        path = dl.download(f"{server.url}/{ARCHIVE_NAME}", out / "a.tar.gz", sha256,
                           log=quiet, **FAST)
    assert server.request_count == 2
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256


def test_always_truncated_body_raises_download_error_and_writes_nothing(served, out):
    folder, _, sha256 = served
    with serve_directory(folder, fail_first=10**6, failure="truncate") as server:
        with pytest.raises(dl.DownloadError, match="Content-Length"):
            dl.download(f"{server.url}/{ARCHIVE_NAME}", out / "a.tar.gz", sha256,
                        retries=1, log=quiet, **FAST)
    assert server.request_count == 2
    assert entries(out) == []


def test_socket_timeout_is_retried(served, out):
    folder, _, sha256 = served
    with serve_directory(folder, fail_first=1, failure="stall", stall_s=1.0) as server:
        path = dl.download(f"{server.url}/{ARCHIVE_NAME}", out / "a.tar.gz", sha256,
                           retries=1, timeout=0.2, backoff=0.001, log=quiet)
    assert server.request_count == 2
    assert path.is_file()


def test_existing_file_with_right_hash_is_not_downloaded(served, out):
    folder, _, sha256 = served
    destination = out / "a.tar.gz"
    destination.write_bytes((folder / ARCHIVE_NAME).read_bytes())
    lines = []
    with serve_directory(folder) as server:
        dl.download(f"{server.url}/{ARCHIVE_NAME}", destination, sha256, log=lines.append)
    assert server.request_count == 0
    assert any("already present" in line for line in lines)


def test_existing_file_with_wrong_hash_is_downloaded_again(served, out):
    folder, _, sha256 = served
    destination = out / "a.tar.gz"
    destination.write_bytes(b"stale partial content")
    lines = []
    with serve_directory(folder) as server:
        dl.download(f"{server.url}/{ARCHIVE_NAME}", destination, sha256, log=lines.append)
    assert server.request_count == 1
    assert hashlib.sha256(destination.read_bytes()).hexdigest() == sha256
    assert any("downloading again" in line for line in lines)


def test_interrupted_download_leaves_nothing_behind(served, out, monkeypatch):
    folder, _, sha256 = served
    monkeypatch.setattr(dl, "_PROGRESS_INTERVAL_S", 0.0)  # log after the first chunk ...
    monkeypatch.setattr(dl, "_CHUNK_BYTES", 4096)  # ... which is far from the whole file

    def interrupt_on_progress(line):
        if "MB/s" in line:
            raise KeyboardInterrupt

    with serve_directory(folder) as server:
        with pytest.raises(KeyboardInterrupt):
            dl.download(f"{server.url}/{ARCHIVE_NAME}", out / "a.tar.gz", sha256,
                        log=interrupt_on_progress)
    assert entries(out) == []


def test_malformed_sha256_argument_is_rejected_before_any_request(served, out):
    folder, _, _ = served
    with serve_directory(folder) as server:
        with pytest.raises(ValueError, match="64 hex digits"):
            dl.download(f"{server.url}/{ARCHIVE_NAME}", out / "a.tar.gz", "abc", log=quiet)
    assert server.request_count == 0


def test_cifar10_constants_match_the_field_notes():
    assert dl.CIFAR10_URL == "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
    assert dl.CIFAR10_SHA256 == (
        "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd")
    assert dl.CIFAR10_SIZE == 170_052_171


# --- extraction ----------------------------------------------------------------------------------
def test_extracted_train_split_equals_the_generated_batches_in_order(served, out):
    folder, generated, _ = served
    dl.extract_cifar10(folder / ARCHIVE_NAME, out)
    images, labels = load_cifar10(out, "train")
    train = [generated[f"data_batch_{i}.bin"] for i in range(1, 6)]
    np.testing.assert_array_equal(images, np.concatenate([im for im, _ in train]))
    np.testing.assert_array_equal(labels, np.concatenate([lb for _, lb in train]))
    assert images.shape == (50, 32, 32, 3) and images.dtype == np.uint8


def test_extracted_test_split_equals_the_generated_batch(served, out):
    folder, generated, _ = served
    dl.extract_cifar10(folder / ARCHIVE_NAME, out)
    images, labels = load_cifar10(out, "test")
    np.testing.assert_array_equal(images, generated["test_batch.bin"][0])
    np.testing.assert_array_equal(labels, generated["test_batch.bin"][1])


def test_extraction_returns_the_batches_folder_and_leaves_no_staging_folder(served, out):
    folder, _, _ = served
    result = dl.extract_cifar10(folder / ARCHIVE_NAME, out)
    assert result == out / "cifar-10-batches-bin"
    assert entries(out) == ["cifar-10-batches-bin"]
    assert (result / "batches.meta.txt").read_text().splitlines()[0] == "airplane"


def test_extraction_replaces_an_existing_batches_folder(served, out):
    folder, generated, _ = served
    old = out / "cifar-10-batches-bin"
    old.mkdir()
    (old / "stale.txt").write_text("old")
    dl.extract_cifar10(folder / ARCHIVE_NAME, out)
    assert not (old / "stale.txt").exists()
    assert entries(out) == ["cifar-10-batches-bin"]
    np.testing.assert_array_equal(load_cifar10(out, "test")[1], generated["test_batch.bin"][1])


def test_random_bytes_archive_raises_archive_error_naming_the_archive(tmp_path, out):
    archive = tmp_path / "corrupt.tar.gz"
    archive.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes())
    with pytest.raises(dl.ArchiveError) as caught:
        dl.extract_cifar10(archive, out)
    assert str(archive) in str(caught.value) and "download it again" in str(caught.value)
    assert entries(out) == []


def test_truncated_archive_raises_archive_error_naming_the_archive(served, tmp_path, out):
    folder, _, _ = served
    whole = (folder / ARCHIVE_NAME).read_bytes()
    archive = tmp_path / "truncated.tar.gz"
    archive.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(dl.ArchiveError) as caught:
        dl.extract_cifar10(archive, out)
    assert str(archive) in str(caught.value)
    assert entries(out) == []


def test_archive_without_test_batch_raises_archive_error_naming_the_member(tmp_path, out):
    archive = tmp_path / "incomplete.tar.gz"
    write_cifar10_archive(archive, omit_files=("test_batch.bin",))
    with pytest.raises(dl.ArchiveError) as caught:
        dl.extract_cifar10(archive, out)
    message = str(caught.value)
    assert str(archive) in message and "cifar-10-batches-bin/test_batch.bin" in message
    assert entries(out) == []


def test_archive_member_with_parent_path_is_refused(tmp_path, out):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(dl.ArchiveError, match="escaped.txt"):
        dl.extract_cifar10(archive, out)
    assert not (tmp_path / "escaped.txt").exists()
    assert entries(out) == []


def test_extraction_without_tar_data_filter_gives_the_same_arrays(served, out, monkeypatch):
    # Pythons before the PEP 706 backports lack tarfile.data_filter; the fallback path must work.
    folder, generated, _ = served
    monkeypatch.delattr(tarfile, "data_filter")
    dl.extract_cifar10(folder / ARCHIVE_NAME, out)
    np.testing.assert_array_equal(load_cifar10(out, "test")[0], generated["test_batch.bin"][0])


def test_missing_archive_raises_file_not_found(tmp_path, out):
    with pytest.raises(FileNotFoundError, match="nowhere.tar.gz"):
        dl.extract_cifar10(tmp_path / "nowhere.tar.gz", out)


# --- both steps ----------------------------------------------------------------------------------
def test_fetch_cifar10_downloads_and_unpacks_a_loadable_dataset(served, out):
    folder, generated, sha256 = served
    with serve_directory(folder) as server:
        result = dl.fetch_cifar10(out, url=f"{server.url}/{ARCHIVE_NAME}", sha256=sha256,
                                  log=quiet, **FAST)
    assert result == out / "cifar-10-batches-bin"
    assert entries(out) == ["cifar-10-batches-bin", "cifar-10-binary.tar.gz"]
    np.testing.assert_array_equal(load_cifar10(result, "test")[0], generated["test_batch.bin"][0])


# --- an archive read where it lies (placed by hand) ----------------------------------------------
def test_hand_placed_archive_of_another_sha256_is_refused_naming_the_file_both_hashes_and_both_fixes(served):
    folder, _, sha256 = served
    with pytest.raises(dl.ChecksumError) as caught:
        dl.verify_archive(folder / ARCHIVE_NAME, dl.CIFAR10_SHA256)
    message = str(caught.value)
    assert str(folder / ARCHIVE_NAME) in message
    assert f"has sha256 {sha256}, but data.cifar10.sha256 is {dl.CIFAR10_SHA256}" in message
    assert "Delete it and run again" in message and f"set data.cifar10.sha256: {sha256}" in message
    assert entries(folder) == [ARCHIVE_NAME]  # refused, not deleted: the user placed it there


def test_hand_placed_archive_of_the_expected_sha256_is_accepted(served):
    folder, _, sha256 = served
    assert dl.verify_archive(folder / ARCHIVE_NAME, sha256.upper()) == sha256


def test_missing_hand_placed_archive_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.tar.gz"):
        dl.verify_archive(tmp_path / "nowhere.tar.gz", dl.CIFAR10_SHA256)
