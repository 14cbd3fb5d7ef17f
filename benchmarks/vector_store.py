"""Item 2 of issue 15 -- Lanczos vectors in memory or on disk (``lanczos(..., vectors_file=...)``).

Full reorthogonalization keeps the ``m`` Lanczos vectors, ``n * m * 8`` bytes: 18 GB for 25 million
parameters at ``m = 90``. With ``vectors_file`` they live in a memory-mapped ``.npy`` file, and both
Gram-Schmidt passes stream over it in row blocks of at most ``VECTOR_BLOCK_BYTES`` (64 MiB). This script
times a Lanczos step with each store, and measures what each allocates, for a diagonal operator
(``v -> d * v``, ``d`` evenly spaced in [1, 2]), whose cost is negligible, so that the
reorthogonalization (``~ 4 j n`` flops and ``4 j n * 8`` bytes read at step ``j``) is the whole step.

Every (n, store) runs in a fresh process (so that its peak RSS is its own), in the order memory,
disk for each n and repetition (alternated between repetitions). Each child reports:

- ``s/step``: the median over steps 2..m of the wall time between ``progress`` calls (step 1 of the
  disk run includes creating and reserving the file); the step cost grows linearly with ``j``, so
  this is about the cost of step ``m / 2``; ``total s``: the whole ``lanczos`` call, the final
  orthogonality check included;
- ``tracemalloc peak``: the most memory numpy and Python allocated at once during the call (the
  operator's ``d`` was allocated before tracing started);
- ``peak RSS``: the process's VmHWM: the interpreter, numpy and ``d`` (``n * 8`` bytes) included,
  and, for the disk store, the pages of the mapped file that were resident at once (page cache,
  which the kernel can evict, so not a demand on RAM);
- ``RssAnon max``: the process's anonymous (non-file) resident memory, sampled after every step;
- ``cold read GB/s`` (disk store): after the run, the vectors file is synced and dropped from the
  page cache (``posix_fadvise(DONTNEED)``) and read once sequentially, in 64 MiB reads. From it, the
  estimate of a step when the file does not fit the page cache: the ``3 (m / 2) n * 8`` bytes that
  the three sweeps of the median step read, at that speed (an estimate: this machine's RAM holds
  every file measured here, so a run beyond RAM is not measured).

The vectors files are written under ``benchmarks/out/vector_store/`` (git-ignored) and deleted after
each run. Usage:

    .venv/bin/python benchmarks/vector_store.py [--sizes 1e5 1e6 1e7] [--steps 30] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SCRATCH = common.OUT_DIR / "vector_store"
STORES = ("memory", "disk")


def rss_anon_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cold_read_gbps(path: Path) -> float:
    """Sequential read speed of ``path`` after dropping it from the page cache, GB/s."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())  # dirty pages cannot be dropped
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        buffer, total = bytearray(64 * 2**20), 0
        start = time.perf_counter()
        while count := f.readinto(buffer):
            total += count
        return total / (time.perf_counter() - start) / 1e9


def child(store: str, dim: int, steps: int) -> None:
    """One Lanczos run in this process; prints one JSON line."""
    import tracemalloc

    import numpy as np

    from hessflow.lanczos import lanczos

    d = np.linspace(1.0, 2.0, dim)
    path = SCRATCH / f"vectors_{os.getpid()}.npy" if store == "disk" else None
    stamps, anon = [], [rss_anon_mib()]

    def progress(done, total):
        stamps.append(time.perf_counter())
        anon.append(rss_anon_mib())

    tracemalloc.start()
    start = time.perf_counter()
    try:
        result = lanczos(lambda v: d * v, dim, steps, seed=0, keep_vectors=False, vectors_file=path,
                         progress=progress)
        total = time.perf_counter() - start
        traced_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        peak_rss = common.peak_rss_mib()  # before the read buffer below
        read_gbps = cold_read_gbps(path) if path is not None else None
    finally:
        tracemalloc.stop()
        if path is not None:
            path.unlink(missing_ok=True)
    step_seconds = np.diff([start, *stamps])
    print(json.dumps({
        "store": store, "dim": dim, "steps": result.num_steps,
        "median_step_s": float(np.median(step_seconds[1:])) if steps > 1 else float(step_seconds[0]),
        "first_step_s": float(step_seconds[0]), "total_s": total,
        "tracemalloc_peak_mib": traced_peak / 2**20, "peak_rss_mib": peak_rss,
        "rss_anon_max_mib": max(anon), "orthogonality_loss": result.orthogonality_loss,
        "alpha_sum": float(result.alpha.sum()), "cold_read_gbps": read_gbps,
    }), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e5, 1e6, 1e7], help="values of n")
    parser.add_argument("--steps", type=int, default=30, help="Lanczos steps m")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each (n, store); medians are reported")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads of each child (0: the default)")
    parser.add_argument("--child", choices=STORES, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dim", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.dim, args.steps)
        return

    load_before = common.load_average()
    started = time.perf_counter()
    SCRATCH.mkdir(parents=True, exist_ok=True)
    env = {"PYTHONPATH": str(common.REPO / "src")}
    if args.threads:
        env |= {name: str(args.threads) for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    rows = []
    for size in args.sizes:
        dim = int(size)
        runs = {store: [] for store in STORES}
        for r in range(args.repeats):
            for store in STORES if r % 2 == 0 else STORES[::-1]:
                out = common.run_child([sys.executable, __file__, "--child", store, "--dim", str(dim),
                                        "--steps", str(args.steps)], env=env, timeout=3600)
                runs[store].append(out)
                print(f"n = {dim:,} {store}: {out['median_step_s']:.4f} s/step, total {out['total_s']:.2f} s, "
                      f"tracemalloc peak {out['tracemalloc_peak_mib']:.1f} MiB, "
                      f"peak RSS {out['peak_rss_mib']:.0f} MiB", flush=True)
        assert runs["memory"][0]["steps"] == runs["disk"][0]["steps"] == args.steps

        def med(store, key, runs=runs):
            return common.median([run[key] for run in runs[store]])

        memory_step, disk_step = med("memory", "median_step_s"), med("disk", "median_step_s")
        read_gbps = med("disk", "cold_read_gbps")
        beyond_ram_step = 3 * (args.steps // 2) * dim * 8 / (read_gbps * 1e9)
        rows.append([
            dim, args.steps, f"{dim * args.steps * 8 / 1e9:.3g}", memory_step, disk_step, disk_step / memory_step,
            f"{med('memory', 'total_s'):.3g} / {med('disk', 'total_s'):.3g}",
            f"{med('memory', 'tracemalloc_peak_mib'):.1f} / {med('disk', 'tracemalloc_peak_mib'):.1f}",
            f"{med('memory', 'peak_rss_mib'):.0f} / {med('disk', 'peak_rss_mib'):.0f}",
            f"{med('memory', 'rss_anon_max_mib'):.0f} / {med('disk', 'rss_anon_max_mib'):.0f}",
            read_gbps, beyond_ram_step,
        ])
    try:
        SCRATCH.rmdir()
    except OSError:
        pass

    headers = ["n", "m", "V GB", "memory s/step", "disk s/step", "disk / memory", "total s memory / disk",
               "tracemalloc peak MiB memory / disk", "peak RSS MiB memory / disk", "RssAnon max MiB memory / disk",
               "cold read GB/s", "est. s/step beyond RAM"]
    table = common.markdown_table(headers, rows)
    threads = args.threads or "default"
    body = (f"### Lanczos step time and memory by vector store (diagonal operator, {args.steps} steps)\n\n"
            f"{table}\n\n"
            f"Medians of {args.repeats} run(s) per row, each (n, store) in a fresh process, BLAS threads: "
            f"{threads}. *s/step*: median over steps 2..m of one Lanczos step (the reorthogonalization against "
            "all previous vectors: the operator is `d * v`); *total*: the whole call, the orthogonality check "
            "included. *tracemalloc peak*: the most numpy allocated at once during the call; *peak RSS* "
            "(VmHWM) includes the interpreter, `d` (n * 8 bytes) and, on disk, the mapped file's resident pages "
            "(page cache, evictable); *RssAnon max*: anonymous resident memory, sampled after each step. The "
            "vectors files were written to the local disk under `benchmarks/out/` and, being smaller than the "
            "free RAM, stayed in the page cache: the disk timings are those of a file that fits the page "
            "cache. A file larger than the RAM is read from the disk three times a step: *cold read* is the "
            "file's sequential read speed once dropped from the page cache, and *est. s/step beyond RAM* the "
            "time to read 3 (m/2) n * 8 bytes at that speed (an estimate, not a measurement).\n\n"
            f"Script wall time: {time.perf_counter() - started:.0f} s.")
    common.append_results("Issue 15 item 2: Lanczos vectors on disk (vector_store.py)", body,
                          common.versions("numpy", "scipy"), load_before,
                          command=" ".join(["benchmarks/vector_store.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
