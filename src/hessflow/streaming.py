"""A data set read from its ``.npy`` files batch by batch: for Hessian passes over data beyond RAM.

`npy_batches` makes a finite `tf.data.Dataset` of the fixed consecutive batches of
`hessflow.data.fixed_batches` (batch ``j`` holds examples ``j * batch_size`` up to
``(j + 1) * batch_size - 1``, the last one smaller) out of the training arrays as
``prepare_data`` wrote them, ``x_train.npy`` and ``y_train.npy``. Each batch is read from
disk when the pipeline needs it and the next ones are prefetched, so a pass holds a few
batches in memory, whatever the size of the data set. With ``data="stream"`` the curvature
operators of `hessflow.hvp` iterate such a pipeline inside one traced function every pass.

Why the ``.npy`` files as they are, read into a fresh buffer rather than a memory map
or TFRecord shards: the files already exist (no second copy of the data set on disk, no
conversion step, the same sha256 as the data card's); a batch is a contiguous byte range of
the file, so one read returns it; and read pages go to the kernel's page cache, not into the
process, whose memory a memory map would grow by every page it touches (and a virtual-memory
limit by the whole file).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

__all__ = ["NpyArrayFile", "npy_batches", "PREFETCH_BATCHES"]

#: Batches read ahead of the one being computed on.
PREFETCH_BATCHES = 2


@dataclass(frozen=True)
class NpyArrayFile:
    """Where the array of a ``.npy`` file lies in it: shape, dtype and the byte offset of its data.

    Attributes:
        path: the file.
        shape: the array's shape; ``shape[0]`` is the example axis.
        dtype: its numpy dtype.
        offset: bytes before the data (the header).
    """

    path: str
    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int

    @classmethod
    def open(cls, path: str | os.PathLike) -> NpyArrayFile:
        """Reads the header of ``path`` (not the data).

        Raises:
            ValueError: the file is no ``.npy`` array (named), holds objects, is in Fortran order
                (its examples are not contiguous rows) or has no example axis.
        """
        path = os.fspath(path)
        try:
            header = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: not a readable .npy array ({error}); rerun the prepare_data rule") from None
        shape, dtype, offset = tuple(header.shape), header.dtype, int(header.offset)
        fortran = header.ndim > 1 and header.flags.f_contiguous and not header.flags.c_contiguous
        del header  # maps the file; no page of it was read
        if fortran or not shape:
            raise ValueError(f"{path}: streaming needs a C-order array with an example axis, got shape {shape}"
                             f"{' in Fortran order' if fortran else ''}; save it with np.save(np.ascontiguousarray(x))")
        return cls(path, shape, dtype, offset)

    @property
    def row_bytes(self) -> int:
        """Bytes of one example."""
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Examples ``start`` up to ``stop - 1``: shape ``(stop - start, *shape[1:])``, this dtype."""
        out = np.empty((stop - start, *self.shape[1:]), dtype=self.dtype)
        view = memoryview(out.reshape(-1).view(np.uint8))
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self.offset + start * self.row_bytes)
            done = 0
            while done < len(view):  # a raw read may return fewer bytes than asked for
                count = f.readinto(view[done:])
                if not count:
                    raise ValueError(f"{self.path}: the file ends before example {stop} (truncated?); "
                                     "rerun the prepare_data rule")
                done += count
        return out


def npy_batches(
    images: str | os.PathLike,
    labels: str | os.PathLike,
    batch_size: int,
    *,
    num_examples: int | None = None,
    to_inputs: Callable[[np.ndarray], np.ndarray] | None = None,
    prefetch: int = PREFETCH_BATCHES,
) -> tf.data.Dataset:
    """The fixed batches of two ``.npy`` files, read from disk as the pipeline needs them.

    Args:
        images, labels: ``.npy`` files of x (N, ...) and y (N, ...), C order.
        batch_size: examples per batch (the last batch may be smaller).
        num_examples: use only the first this many examples (``hessian.max_examples``); None: all.
        to_inputs: ``x_batch -> network inputs`` applied to each batch as read (the data set's
            preprocessing, e.g. `hessflow.data.standardize_per_image`). It must act example by
            example, as the built-in choices do: the streamed operator then equals the one built
            from the whole preprocessed array bit for bit. None: x as stored.
        prefetch: batches read ahead.

    Returns:
        A finite `tf.data.Dataset` of ``(x, y)`` batches in order, cardinality ``ceil(N / batch_size)``;
        the batch dimension of its element spec is unknown (one trace serves every batch).

    Raises:
        ValueError: a file is unreadable or not C order, the two differ in length, or
            ``batch_size`` / ``num_examples`` is out of range (each named).
    """
    x_file, y_file = NpyArrayFile.open(images), NpyArrayFile.open(labels)
    if x_file.shape[0] != y_file.shape[0]:
        raise ValueError(f"{x_file.path} has {x_file.shape[0]} examples but {y_file.path} has {y_file.shape[0]}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    total = x_file.shape[0] if num_examples is None else min(int(num_examples), x_file.shape[0])
    if total < 1:
        raise ValueError(f"no examples to stream from {x_file.path} (num_examples={num_examples!r})")
    transform = (lambda x: x) if to_inputs is None else to_inputs
    # One example through the preprocessing: the pipeline's dtypes and shapes, fixed before any pass.
    x_example = np.asarray(transform(x_file.rows(0, 1)))
    y_example = y_file.rows(0, 1)

    def read(batch):
        start = int(batch) * batch_size
        stop = min(start + batch_size, total)
        return np.asarray(transform(x_file.rows(start, stop)), dtype=x_example.dtype), y_file.rows(start, stop)

    def load(batch):
        x, y = tf.numpy_function(read, [batch], [tf.as_dtype(x_example.dtype), tf.as_dtype(y_example.dtype)],
                                 stateful=False)
        x.set_shape((None, *x_example.shape[1:]))
        y.set_shape((None, *y_example.shape[1:]))
        return x, y

    num_batches = -(-total // batch_size)
    # Sequential reads (the batches in order; numpy_function holds the GIL anyway), overlapped with
    # the computation by the prefetch.
    return tf.data.Dataset.range(num_batches).map(load).prefetch(prefetch)
