"""Item 1 of issue 15 -- Hessian passes over a data set larger than the memory a process may use.

``hessian.data: stream`` reads the training arrays from their ``.npy`` files batch by batch
(`hessflow.streaming.npy_batches`) inside one traced loop per pass; ``memory`` reads them once.
This script generates raw uint8 32x32x3 images (the CIFAR layout) on disk, written in chunks, and
runs, each in a fresh process:

1. ``stream`` over the big data set, inside a memory cgroup (cgroup v1 ``memory.limit_in_bytes``,
   set up by this script as root) that allows a fraction of the data set's size: a loss-and-gradient
   pass and two Hessian-vector products, with its peak RSS (VmHWM) and the cgroup's own peak
   (``memory.max_usage_in_bytes``, which counts the page cache the reads fill, reclaimed under the
   limit);
2. ``memory`` over the same data set in the same cgroup: it must fail (the arrays alone exceed the
   limit): the row says how;
3. ``memory`` and ``stream`` over a data set that fits (``--fit-examples``), no limit, in turn: the
   time per Hessian-vector product of each (ratio stream / memory), and whether the products are
   equal bit for bit.

The model is an MLP on the standardized images (3,072 inputs, ``--hidden`` units, 10 classes,
float32), so that a pass is dominated by reading and preprocessing the data, which is what
streaming changes. The data lie under ``benchmarks/out/stream/`` (git-ignored; kept between runs,
``--clean`` deletes them). Usage:

    .venv/bin/python benchmarks/stream_memory.py [--examples 1300000] [--limit-mib 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

import common

SCRATCH = common.OUT_DIR / "stream"
CGROUP = Path("/sys/fs/cgroup/memory")
IMAGE = (32, 32, 3)


def generate(folder: Path, examples: int) -> tuple[Path, Path]:
    """x_train.npy (examples, 32, 32, 3) uint8 and y_train.npy (examples,) int64, written in chunks."""
    folder.mkdir(parents=True, exist_ok=True)
    x_path, y_path = folder / f"x_{examples}.npy", folder / f"y_{examples}.npy"
    if x_path.exists() and y_path.exists():
        return x_path, y_path
    rng = np.random.default_rng(0)
    x = np.lib.format.open_memmap(folder / "x.partial.npy", mode="w+", dtype=np.uint8, shape=(examples, *IMAGE))
    chunk = 50_000
    for start in range(0, examples, chunk):
        stop = min(start + chunk, examples)
        x[start:stop] = rng.integers(0, 256, size=(stop - start, *IMAGE), dtype=np.uint8)
    x.flush()
    del x
    np.save(y_path, rng.integers(0, 10, size=examples).astype(np.int64))
    os.replace(folder / "x.partial.npy", x_path)
    return x_path, y_path


def child(mode: str, x_path: str, y_path: str, batch: int, hidden: int, products: int) -> None:
    import keras

    from hessflow import data, models, streaming
    from hessflow.hvp import HessianOperator

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model = models.mlp(IMAGE, 10, hidden=(hidden,), batch_norm=False, dtype="float32", seed=0)
    started = time.perf_counter()

    def standardize(x):
        return data.standardize_per_image(x, dtype=np.dtype("float32"))

    if mode == "stream":
        batches = streaming.npy_batches(x_path, y_path, batch, to_inputs=standardize)
    else:
        batches = data.fixed_batches(standardize(np.load(x_path)), np.load(y_path), batch)
    operator = HessianOperator(model, batches, loss, data=mode)
    setup = time.perf_counter() - started
    operator.loss_and_gradient()
    gradient_pass = operator.last_pass_seconds
    rng = np.random.default_rng(1)
    seconds, checksum = [], 0.0
    for _ in range(products):
        product = operator.matvec(rng.normal(size=operator.dim))
        seconds.append(operator.last_pass_seconds)
        checksum += float(np.sum(product))
    print(json.dumps({
        "examples": operator.num_examples, "batches": operator.num_batches, "dim": operator.dim,
        "setup_s": setup, "gradient_pass_s": gradient_pass, "hvp_s": seconds, "hvp_median_s": common.median(seconds),
        "peak_rss_mib": common.peak_rss_mib(), "checksum": checksum,
    }), flush=True)


def cgroup_limited(argv: list[str], limit_bytes: int, env: dict) -> tuple[dict | None, str, float]:
    """Runs ``argv`` in a fresh memory cgroup of ``limit_bytes``; (its JSON or None, outcome, peak MiB)."""
    import subprocess

    group = CGROUP / f"hessflow-bench-{os.getpid()}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(limit_bytes))
        if (group / "memory.memsw.limit_in_bytes").exists():  # no swap to escape into
            (group / "memory.memsw.limit_in_bytes").write_text(str(limit_bytes))

        def enter():  # in the child, before exec: everything it allocates is charged to the group
            (group / "cgroup.procs").write_text(str(os.getpid()))

        proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **env}, preexec_fn=enter,
                              timeout=3600)
        peak = int((group / "memory.max_usage_in_bytes").read_text()) / 2**20
        failures = int((group / "memory.failcnt").read_text())
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode == 0 and lines:
            return json.loads(lines[-1]), f"ran ({failures:,} reclaims at the limit)", peak
        tail = (proc.stderr.strip().splitlines() or [""])[-1][:160]
        how = "killed by the OOM killer" if proc.returncode in (-9, 137) else f"failed (rc {proc.returncode}: {tail})"
        return None, how, peak
    finally:
        group.rmdir()


def scaling(args, argv, env, load_before, started) -> None:
    """Stream passes over data sets of ``args.scaling`` images: how their time and memory grow with N."""
    rows = []
    for examples in args.scaling:
        x_path, y_path = generate(SCRATCH, examples)
        out = common.run_child(argv("stream", x_path, y_path), env=env, timeout=3600)
        print(f"N = {examples:,}: {out}", flush=True)
        rows.append([examples, out["batches"], out["setup_s"], out["gradient_pass_s"], out["hvp_median_s"],
                     out["hvp_median_s"] / examples * 1e6, out["peak_rss_mib"]])
    headers = ["images N", "batches", "construction s (one counting pass)", "gradient pass s", "HVP s",
               "HVP µs per image", "peak RSS MiB"]
    body = (f"### Stream passes by N (MLP 3,072-{args.hidden}-10, float32, batch {args.batch:,}, no memory limit)\n\n"
            f"{common.markdown_table(headers, rows)}\n\n"
            "Each row a fresh process; the data sets are generated uint8 32x32x3 images on the local disk (in the "
            "page cache where they fit it). *construction*: the operator's one pass over the pipeline that counts "
            "batches and examples (reading and standardizing, no model).\n\n"
            f"Script wall time: {time.perf_counter() - started:.0f} s.")
    common.append_results("Issue 15 item 1: stream passes by N (stream_memory.py --scaling)", body,
                          common.versions("tensorflow", "keras", "numpy"), load_before,
                          command=" ".join(["benchmarks/stream_memory.py", *sys.argv[1:]]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=1_300_000, help="images of the big data set")
    parser.add_argument("--limit-mib", type=int, default=1024, help="the memory cgroup's limit")
    parser.add_argument("--fit-examples", type=int, default=50_000, help="images of the data set that fits")
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--hidden", type=int, default=16)
    parser.add_argument("--products", type=int, default=2, help="Hessian-vector products timed per run")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions of the fitting pair")
    parser.add_argument("--scaling", type=int, nargs="+", default=None,
                        help="only time stream passes (no limit) over data sets of these sizes")
    parser.add_argument("--clean", action="store_true", help="delete the generated data sets")
    parser.add_argument("--child", choices=["memory", "stream"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--x", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--y", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.x, args.y, args.batch, args.hidden, args.products)
        return
    if args.clean:
        for path in SCRATCH.glob("*.npy"):
            path.unlink()
        return
    load_before = common.load_average()
    started = time.perf_counter()
    env = {"PYTHONPATH": str(common.REPO / "src"), "TF_CPP_MIN_LOG_LEVEL": "2"}

    def argv(mode, x_path, y_path):
        return [sys.executable, __file__, "--child", mode, "--x", str(x_path), "--y", str(y_path),
                "--batch", str(args.batch), "--hidden", str(args.hidden), "--products", str(args.products)]

    if args.scaling:
        scaling(args, argv, env, load_before, started)
        return
    if not os.access(CGROUP / "cgroup.procs", os.W_OK):
        sys.exit(f"{CGROUP} is not writable here (cgroup v1 memory controller as root is needed); "
                 "--scaling needs none")
    big_x, big_y = generate(SCRATCH, args.examples)
    size_mib = (big_x.stat().st_size + big_y.stat().st_size) / 2**20
    print(f"data set: {args.examples:,} images, {size_mib:,.0f} MiB on disk; limit {args.limit_mib:,} MiB", flush=True)
    limit = args.limit_mib * 2**20
    rows = []
    for mode in ("stream", "memory"):
        out, outcome, group_peak = cgroup_limited(argv(mode, big_x, big_y), limit, env)
        print(f"{mode}: {outcome}; cgroup peak {group_peak:.0f} MiB; {out}", flush=True)
        rows.append([mode, f"{args.examples:,}", f"{size_mib:,.0f}", f"{args.limit_mib:,}", outcome,
                     out["peak_rss_mib"] if out else None, group_peak,
                     out["gradient_pass_s"] if out else None, out["hvp_median_s"] if out else None])

    fit_x, fit_y = generate(SCRATCH, args.fit_examples)
    runs = {"memory": [], "stream": []}
    for r in range(args.rounds):
        for mode in ("memory", "stream") if r % 2 == 0 else ("stream", "memory"):
            runs[mode].append(common.run_child(argv(mode, fit_x, fit_y), env=env))
    same = {run["checksum"] for mode in runs for run in runs[mode]}
    fit_mib = (fit_x.stat().st_size + fit_y.stat().st_size) / 2**20
    for mode in ("memory", "stream"):
        rows.append([mode, f"{args.fit_examples:,}", f"{fit_mib:,.0f}", "none", "ran",
                     common.median([run["peak_rss_mib"] for run in runs[mode]]), None,
                     common.median([run["gradient_pass_s"] for run in runs[mode]]),
                     common.median([s for run in runs[mode] for s in run["hvp_s"]])])
    ratio = rows[-1][-1] / rows[-2][-1]

    headers = ["data", "images", "on disk MiB", "limit MiB", "outcome", "peak RSS MiB", "cgroup peak MiB",
               "gradient pass s", "HVP s (median)"]
    body = (f"### A data set {size_mib / args.limit_mib:.1f}x the memory limit (MLP 3,072-{args.hidden}-10, "
            f"float32, batch {args.batch:,}, n = {runs['stream'][0]['dim']:,})\n\n"
            f"{common.markdown_table(headers, rows)}\n\n"
            f"Stream / memory time per Hessian-vector product on the data set that fits: **{ratio:.2f}** "
            f"(medians of {args.rounds} interleaved runs x {args.products} products); the products of all those "
            f"runs {'are equal bit for bit' if len(same) == 1 else 'DIFFER'} (one checksum: {len(same) == 1}). "
            "*peak RSS*: the process's VmHWM (interpreter and TensorFlow included); *cgroup peak*: the memory "
            "cgroup's max usage, which includes the page cache its reads filled (reclaimed at the limit). The "
            "limited rows ran in a cgroup v1 memory group with that limit (swap included). The model is small on "
            "purpose: a pass is mostly reading and standardizing the images.\n\n"
            f"Script wall time: {time.perf_counter() - started:.0f} s.")
    common.append_results("Issue 15 item 1: streaming data beyond the memory limit (stream_memory.py)", body,
                          common.versions("tensorflow", "keras", "numpy"), load_before,
                          command=" ".join(["benchmarks/stream_memory.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
