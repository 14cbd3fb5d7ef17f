"""Test helpers: a small archive in the CIFAR-10 binary format, and a local HTTP server.

The real archive (170 MB) cannot be downloaded here; these let the download and extraction code
run for real against ``http://127.0.0.1:<port>/`` with data whose content the test knows.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DIRNAME = "cifar-10-batches-bin"
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILES = ("test_batch.bin",)
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck")
IMAGE_SHAPE = (32, 32, 3)  # NHWC per image


def cifar10_records(images: np.ndarray, labels: np.ndarray) -> bytes:
    """Encode NHWC ``uint8`` images and labels as CIFAR-10 binary records.

    Each record is one label byte, then the image channel-major: all red bytes (row-major),
    then green, then blue -- written independently of hessflow's reader, so a test of the reader
    is not a test of the reader against itself.
    """
    channel_major = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    records = np.concatenate([labels.astype(np.uint8)[:, None], channel_major], axis=1)
    return records.tobytes()


def _add_bytes(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mtime = 0  # fixed, so the same seed gives the same archive bytes
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(payload))


def write_cifar10_archive(
    path,
    records_per_file: int = 10,
    seed: int = 0,
    *,
    omit_files: tuple[str, ...] = (),
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write a ``.tar.gz`` laid out like the CIFAR-10 binary version, with random content.

    Members: ``cifar-10-batches-bin/`` (folder), ``data_batch_1.bin`` .. ``data_batch_5.bin``,
    ``test_batch.bin`` (``records_per_file`` records each; labels uniform in 0..9, pixels uniform
    in 0..255), and ``batches.meta.txt`` (the 10 class names, one per line). Names in
    ``omit_files`` are left out (to make an incomplete archive).

    Returns:
        ``{file name: (images, labels)}`` for every batch file written, in file order: images
        ``uint8`` (records_per_file, 32, 32, 3) NHWC, labels ``int64`` (records_per_file,).
    """
    rng = np.random.default_rng(seed)
    generated: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    with tarfile.open(path, "w:gz") as tar:
        folder = tarfile.TarInfo(DIRNAME)
        folder.type = tarfile.DIRTYPE
        folder.mode = 0o755
        folder.mtime = 0
        tar.addfile(folder)
        for name in TRAIN_FILES + TEST_FILES:
            # Draw for every file, omitted or not, so omitting one does not change the others.
            labels = rng.integers(0, 10, size=records_per_file).astype(np.int64)
            images = rng.integers(0, 256, size=(records_per_file, *IMAGE_SHAPE), dtype=np.uint8)
            if name in omit_files:
                continue
            _add_bytes(tar, f"{DIRNAME}/{name}", cifar10_records(images, labels))
            generated[name] = (images, labels)
        if "batches.meta.txt" not in omit_files:
            meta = "".join(f"{class_name}\n" for class_name in CLASS_NAMES).encode()
            _add_bytes(tar, f"{DIRNAME}/batches.meta.txt", meta)
    return generated


# ================================================================================================
# Local HTTP server
# ================================================================================================
FAILURE_MODES = ("503", "truncate", "stall")


@dataclass
class ServedDirectory:
    """What :func:`serve_directory` yields: the base URL and the paths requested so far."""

    url: str
    requests: list[str] = field(default_factory=list)

    @property
    def request_count(self) -> int:
        return len(self.requests)


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves files from a folder; can fail the first ``fail_first`` GET requests.

    Failure modes: ``"503"`` answers 503 Service Unavailable; ``"truncate"`` announces the full
    Content-Length but sends only half the body and closes the connection; ``"stall"`` waits
    ``stall_s`` seconds, then closes without answering (to trigger the client's socket timeout).
    """

    # Set per server by serve_directory (via functools.partial / attributes on a subclass).
    served: ServedDirectory
    fail_first: int
    failure: str
    stall_s: float
    lock: threading.Lock

    def do_GET(self):  # noqa: N802 (http.server's naming)
        with self.lock:
            self.served.requests.append(self.path)
            failing = len(self.served.requests) <= self.fail_first
        if failing and self.failure == "503":
            self.send_error(503, "Service Unavailable (test)")
            return
        if failing and self.failure == "stall":
            threading.Event().wait(self.stall_s)
            self.close_connection = True  # the client has given up by now: send nothing
            return
        if failing and self.failure == "truncate":
            self._send_truncated()
            return
        super().do_GET()

    def _send_truncated(self) -> None:
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        body = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, format, *args):  # keep test output quiet
        pass


@contextlib.contextmanager
def serve_directory(
    directory,
    *,
    fail_first: int = 0,
    failure: str = "503",
    stall_s: float = 1.0,
) -> Iterator[ServedDirectory]:
    """Serve ``directory`` over HTTP on ``127.0.0.1`` (a free port) for the ``with`` block.

    A :class:`http.server.ThreadingHTTPServer` runs in a daemon thread and is shut down on exit.
    The first ``fail_first`` requests fail in the way ``failure`` says (see :class:`_Handler`);
    pass a large number to fail them all.

    Yields:
        :class:`ServedDirectory` with ``url`` (``http://127.0.0.1:<port>``, no trailing slash)
        and ``requests``, the list of paths requested, for counting.
    """
    if failure not in FAILURE_MODES:
        raise ValueError(f"failure must be one of {FAILURE_MODES}, got {failure!r}")
    served = ServedDirectory(url="")
    handler_class = type("Handler", (_Handler,), {
        "served": served, "fail_first": fail_first, "failure": failure,
        "stall_s": stall_s, "lock": threading.Lock(),
    })
    handler = functools.partial(handler_class, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    served.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
