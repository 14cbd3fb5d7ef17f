"""Item 3 of issue 15 -- several probes per Hessian pass (``probes_per_pass``, ``lanczos.draws_per_job``).

B Lanczos draws side by side (`hessflow.lanczos.lanczos_side_by_side`) ask for B products per step,
which one data pass computes at once: the batch is read, and its forward and first reverse pass run,
once for the B products (`hessflow.kernels.make_hvp_matmat_sum`; the Gauss-Newton product likewise,
`make_ggn_matmat_sum`). This script measures, on each model, the time of one full-data pass of B
products (``op.matmat(V)`` with ``probes_per_pass=B``, V of B columns) against B one-product passes
(``op.matvec``, hessflow's forward-over-reverse, what ``draws_per_job: 1`` runs), interleaved, the
median of ``--reps`` repetitions. ``per (draw · step)`` is the ratio of the two: the time of a Lanczos
step of one draw, relative to a job per draw (a Lanczos step beyond its product, the
reorthogonalization, is the same either way and not included). ``peak RSS`` of each B is measured
in a fresh process (one pass of B products after a warm-up one; TensorFlow itself included), against
one product's.

Models: the demo's MLP and small CNN on scikit-learn's 1,797 digits (batches of 256), the CNN's
Gauss-Newton operator, the CNN streamed from ``.npy`` files (`hessflow.streaming`: the read
is shared too), and ResNet-32 (0.46M parameters) on ``--resnet-images`` generated CIFAR-sized images
in batches of 256. Usage:

    .venv/bin/python benchmarks/probes_per_pass.py [--probes 2 4 8] [--reps 3] [--resnet-images 256]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SCRATCH = common.OUT_DIR / "probes_per_pass"
CASES = ("mlp", "cnn", "cnn_ggn", "cnn_stream", "resnet32")
BATCH = 256


def build(case: str, probes: int, resnet_images: int):
    """The operator of ``case`` with ``probes_per_pass=probes``."""
    import keras
    import numpy as np

    import tfkit
    from hessflow import data, hvp, models, streaming

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if case == "resnet32":
        model = models.resnet32()
        x, y = tfkit.cifar_like(resnet_images)
    else:
        model = models.mlp(hidden=(32,)) if case == "mlp" else models.small_cnn(batch_norm=True)
        x, y = tfkit.digits()
    kind = hvp.GGNOperator if case == "cnn_ggn" else hvp.HessianOperator
    if case == "cnn_stream":
        SCRATCH.mkdir(parents=True, exist_ok=True)
        np.save(SCRATCH / "x.npy", x), np.save(SCRATCH / "y.npy", y)
        batches = streaming.npy_batches(SCRATCH / "x.npy", SCRATCH / "y.npy", BATCH)
        return kind(model, batches, loss, data="stream", probes_per_pass=probes)
    return kind(model, data.fixed_batches(x, y, BATCH), loss, probes_per_pass=probes)


def child_memory(case: str, probes: int, resnet_images: int) -> None:
    """Peak RSS of one pass of ``probes`` products (after a warm-up pass), printed as JSON."""
    import numpy as np

    op = build(case, probes, resnet_images)
    block = np.random.default_rng(0).standard_normal((op.dim, probes))
    run = (lambda: op.matvec(block[:, 0])) if probes == 1 else (lambda: op.matmat(block))
    run()
    run()
    print(json.dumps({"peak_rss_mib": common.peak_rss_mib()}), flush=True)


def measure(case: str, args) -> list[list]:
    """The table rows of ``case``: one per B."""
    import numpy as np

    single = build(case, 1, args.resnet_images)
    several = {b: build(case, b, args.resnet_images) for b in args.probes}
    rng = np.random.default_rng(1)
    blocks = {b: rng.standard_normal((single.dim, b)) for b in args.probes}
    functions = {"1": lambda: single.matvec(blocks[args.probes[0]][:, 0])}
    for b in args.probes:
        functions[str(b)] = lambda b=b: several[b].matmat(blocks[b])
    times = common.interleaved(functions, args.reps)
    one = common.median(times["1"])
    memory = {}
    if not args.no_memory:
        for b in [1, *args.probes]:
            out = common.run_child([sys.executable, __file__, "--child", case, "--child-probes", str(b),
                                    "--resnet-images", str(args.resnet_images)],
                                   env={"PYTHONPATH": str(common.REPO / "src")}, timeout=1800)
            memory[b] = out["peak_rss_mib"]
    rows = []
    for b in args.probes:
        # agreement with B one-product passes (float32: rounding, another order of the sums)
        reference = np.stack([single.matvec(blocks[b][:, k]) for k in range(b)], axis=1)
        error = np.linalg.norm(several[b].matmat(blocks[b]) - reference) / np.linalg.norm(reference)
        seconds = common.median(times[str(b)])
        rows.append([case, f"{single.dim:,}", f"{single.num_examples:,}", b, common.fmt(one),
                     common.fmt(seconds), common.fmt(seconds / (b * one)),
                     f"{memory[1]:,.0f} → {memory[b]:,.0f}" if memory else "–", f"{error:.1e}"])
        print(" | ".join(str(c) for c in rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probes", type=int, nargs="+", default=[2, 4, 8], help="values of B")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions (medians)")
    parser.add_argument("--resnet-images", type=int, default=256, help="ResNet-32's generated images")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS processes")
    parser.add_argument("--child", choices=CASES, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-probes", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child_memory(args.child, args.child_probes, args.resnet_images)
        return

    import tensorflow as tf

    load_before = common.load_average()
    started = time.perf_counter()
    rows = [row for case in args.cases for row in measure(case, args)]
    body = common.markdown_table(
        ["case", "n", "N", "B", "1 product s", "B products s", "per (draw · step)", "peak RSS MiB, 1 → B",
         "rel. diff."], rows)
    body += (f"\n\n`per (draw · step)`: one pass of B products over B one-product passes (`draws_per_job: B` "
             f"against 1); float32, batches of {BATCH}; interleaved, median of {args.reps}. Total "
             f"{time.perf_counter() - started:.0f} s; TensorFlow {tf.__version__}.")
    common.append_results("Several probes per pass (issue 15, item 3)", body, common.versions("tensorflow", "keras"),
                          load_before)


if __name__ == "__main__":
    main()
