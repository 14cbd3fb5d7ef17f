"""Item 1 -- hessflow against the limit: what an HVP and a Lanczos step cost, in gradient passes.

For the demo CNN (models.small_cnn(batch_norm=True) on the 1,797 digits) and the paper's ResNet-32
(batch norm in train mode, generated CIFAR-10-sized data), at several batch sizes, interleaved
(every repetition runs every variant once, in rotated order; medians reported):

- a full-data gradient pass (``HessianOperator.loss_and_gradient``),
- a full-data HVP pass, forward-over-reverse (``HessianOperator.matvec``, hessflow's own),
- the same HVP by double backprop (reverse-over-reverse; a local traced function),
- one whole Lanczos step through ``hessflow.lanczos.lanczos`` (1-step run: start vector, HVP,
  two Gram-Schmidt passes, norms), and the average step of an m = 90 run (HVP + the measured
  m = 90 bookkeeping / 90);

then the non-HVP share of a whole Lanczos run (time in ``lanczos()`` minus time in the operator,
over the total; target < 5%), the levers (XLA ``jit_compile``, float64 compute, accumulating the
batches on the device instead of in numpy), and the peak memory of a Lanczos job (one subprocess
per configuration, ``ru_maxrss``) against the floor: parameters + one batch's activations + the
Lanczos vectors kept.

Usage: .venv/bin/python benchmarks/hvp_cost.py [--quick] [--resnet-images 500] [--reps 3]
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

M_FULL = 90  # the paper's Lanczos steps per draw


def log(message: str) -> None:
    print(message, flush=True)


def build(model_name: str, dtype: str, num_images: int):
    import numpy as np

    import tfkit
    from hessflow import models

    np_dtype = np.float32 if dtype == "float32" else np.float64
    if model_name == "small_cnn_bn":
        model = models.small_cnn(batch_norm=True, dtype=dtype, seed=0)
        x, y = tfkit.digits(np_dtype)
        x, y = x[:num_images], y[:num_images]
    elif model_name == "resnet32":
        model = models.resnet32(dtype=dtype, seed=0)
        x, y = tfkit.cifar_like(num_images, np_dtype)
    else:
        raise ValueError(model_name)
    return model, x, y


def operator(model, x, y, batch_size, dtype):
    import tfkit
    from hessflow import data
    from hessflow.hvp import HessianOperator
    return HessianOperator(model, data.fixed_batches(x, y, batch_size), tfkit.LOSS, weight_decay=0.0,
                           batch_norm="train", dtype=dtype)


# ------------------------------------------------------------------------------------------------
# Memory child: one Lanczos job in a fresh process
# ------------------------------------------------------------------------------------------------
def memory_child(spec: dict) -> dict:
    import numpy as np

    import tfkit
    from hessflow import data
    from hessflow.lanczos import lanczos

    model, x, y = build(spec["model"], spec["dtype"], spec["images"])
    batches = data.fixed_batches(x, y, spec["batch"])
    baseline = common.current_rss_mib()  # TF imported, model built, data loaded
    op = operator(model, x, y, spec["batch"], spec["dtype"])
    start = time.perf_counter()
    lanczos(op.matvec, op.dim, spec["steps"], seed=(0, 0, 0), keep_vectors=True)
    seconds = time.perf_counter() - start
    itemsize = np.dtype(spec["dtype"]).itemsize
    import tensorflow as tf
    gpu = {}
    if tf.config.list_physical_devices("GPU"):
        gpu["gpu_peak_mib"] = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    return {
        **gpu,
        "dim": op.dim,
        "baseline_mib": baseline,
        "peak_mib": common.peak_rss_mib(),
        "seconds": seconds,
        "params_mib": op.dim * itemsize / 2**20,
        "activations_mib": tfkit.activation_bytes(model, min(spec["batch"], len(x))) / 2**20,
        "batch_input_mib": batches[0][0].nbytes / 2**20,
        "vectors_mib": op.dim * spec["steps"] * 8 / 2**20,
        "vectors_m90_mib": op.dim * M_FULL * 8 / 2**20,
    }


# ------------------------------------------------------------------------------------------------
# Main measurements
# ------------------------------------------------------------------------------------------------
def cost_rows(model_name, num_images, batch_sizes, reps):
    import numpy as np

    import tfkit

    rows, extra = [], {}
    for batch in batch_sizes:
        model, x, y = build(model_name, "float32", num_images)
        op = operator(model, x, y, batch, "float32")
        local = tfkit.PassFunctions(model, [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)])
        v = np.random.default_rng(0).standard_normal(op.dim)
        agree = tfkit.relative_difference(local.hvp(v, "dbp"), op.matvec(v))
        step_inside = []

        def lanczos_step(op=op, step_inside=step_inside):
            _, total, inside = tfkit.timed_lanczos(op.matvec, op.dim, 1)
            step_inside.append(inside)

        log(f"{model_name} n={op.dim:,} N={len(x)} batch={batch}: "
            f"timing (double backprop vs FoR rel. diff {agree:.1e})")
        times = common.interleaved({
            "gradient": op.loss_and_gradient,
            "lanczos_step": lanczos_step,
            "hvp_dbp": lambda local=local, v=v: local.hvp(v, "dbp"),
        }, reps, log=log)
        hvp_for = step_inside[1:]  # the first was the untimed warm-up
        overhead90 = tfkit.lanczos_overhead(op.dim, M_FULL) / M_FULL
        g = common.median(times["gradient"])
        f = common.median(hvp_for)
        d = common.median(times["hvp_dbp"])
        s = common.median(times["lanczos_step"])
        rows.append([model_name, op.dim, len(x), batch, g, f, d, s, f / g, d / g, s / g, (f + overhead90) / g])
        extra[batch] = {"hvp_for": f, "overhead_per_step_m90": overhead90, "dim": op.dim, "agree": agree}
    return rows, extra


def nonhvp_rows(model_name, num_images, batch, extra):
    """Share of a whole m = 90 Lanczos run spent outside the operator."""
    import tfkit

    model, x, y = build(model_name, "float32", num_images)
    op = operator(model, x, y, batch, "float32")
    if model_name == "small_cnn_bn":
        # Cheap operator: the real thing, a whole m = 90 run, twice (median).
        shares, totals = [], []
        for draw in range(2):
            _, total, inside = tfkit.timed_lanczos(op.matvec, op.dim, M_FULL, seed=(0, 0, draw))
            shares.append((total - inside) / total)
            totals.append(total)
        share = common.median(shares)
        return [[model_name, op.dim, batch, M_FULL, f"real run (N = {len(x):,}), median of 2", common.median(totals),
                 share]]
    # Expensive operator: bookkeeping of a real-size m = 90 run with a stand-in operator, plus
    # 90 times the measured HVP pass.
    hvp = extra[batch]["hvp_for"]
    overhead = tfkit.lanczos_overhead(op.dim, M_FULL)
    rows = []
    for examples in (len(x), 2_000, 10_000, 50_000):
        total = overhead + M_FULL * hvp * examples / len(x)
        how = ("bookkeeping measured, 90 × measured HVP" if examples == len(x) else
               f"same bookkeeping, HVP scaled to N = {examples:,}")
        rows.append([model_name, op.dim, batch, M_FULL, how, total, overhead / total])
    return rows


def lever_rows(model_name, num_images, batch, reps):
    """XLA, float64, device accumulation: each against hessflow's default (FoR, float32, host)."""
    import numpy as np

    import tfkit
    from hessflow import data

    model, x, y = build(model_name, "float32", num_images)
    batches = data.fixed_batches(x, y, batch)
    op = operator(model, x, y, batch, "float32")
    plain = tfkit.PassFunctions(model, batches)
    xla = tfkit.PassFunctions(model, batches, jit=True)
    model64, x64, y64 = build(model_name, "float64", num_images)
    model64.set_weights(model.get_weights())
    f64 = tfkit.PassFunctions(model64, data.fixed_batches(x64, y64, batch))
    v = np.random.default_rng(0).standard_normal(op.dim)
    reference = f64.hvp(v)  # the most accurate of the variants
    diffs = {
        "hessflow": tfkit.relative_difference(op.matvec(v), reference),
        "dbp": tfkit.relative_difference(plain.hvp(v, "dbp"), reference),
        "xla": tfkit.relative_difference(xla.hvp(v), reference),
        "f64": 0.0,
        "device": tfkit.relative_difference(plain.hvp(v, accumulate="device"), reference),
    }
    log(f"levers {model_name} N={len(x)} batch={batch}: rel. diff to the float64 HVP {diffs}")
    start = time.perf_counter()
    xla.hvp(v)
    xla.gradient()
    log(f"  (XLA warm) {time.perf_counter() - start:.1f} s")
    times = common.interleaved({
        "hessflow HVP (FoR, float32, host accumulation)": lambda: op.matvec(v),
        "local copy of the same": lambda: plain.hvp(v),
        "HVP, double backprop": lambda: plain.hvp(v, "dbp"),
        "HVP, batches summed on the device": lambda: plain.hvp(v, accumulate="device"),
        "HVP, XLA jit_compile=True": lambda: xla.hvp(v),
        "HVP, float64 compute": lambda: f64.hvp(v),
        "gradient pass (hessflow)": op.loss_and_gradient,
        "gradient pass, XLA": xla.gradient,
        "gradient pass, float64": f64.gradient,
    }, reps, log=log)
    base = common.median(times["hessflow HVP (FoR, float32, host accumulation)"])
    grad = common.median(times["gradient pass (hessflow)"])
    diff_of = {"hessflow HVP (FoR, float32, host accumulation)": diffs["hessflow"],
               "HVP, double backprop": diffs["dbp"],
               "HVP, batches summed on the device": diffs["device"], "HVP, XLA jit_compile=True": diffs["xla"],
               "HVP, float64 compute": diffs["f64"]}
    rows = []
    for name, values in times.items():
        t = common.median(values)
        rows.append([model_name, f"{len(x)} / {batch}", name, t, t / base, t / grad, diff_of.get(name)])
    return rows


def memory_rows(configs):
    rows = []
    for spec in configs:
        log(f"memory child {spec}")
        result = common.run_child([sys.executable, __file__, "--memory-child", json.dumps(spec)])
        floor = result["params_mib"] + result["activations_mib"] + result["batch_input_mib"] + result["vectors_mib"]
        above = result["peak_mib"] - result["baseline_mib"]
        rows.append([spec["model"], spec["dtype"], f"{spec['images']} / {spec['batch']}", spec["steps"],
                     result["baseline_mib"], result["peak_mib"], above,
                     result["params_mib"], result["activations_mib"], result["vectors_mib"], floor, above / floor,
                     above + result["vectors_m90_mib"] - result["vectors_mib"], result.get("gpu_peak_mib")])
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer images, batch sizes and repetitions")
    parser.add_argument("--resnet-images", type=int, default=250)
    parser.add_argument("--resnet-batches", type=int, nargs="+", default=[50, 125, 250])
    parser.add_argument("--cnn-batches", type=int, nargs="+", default=[100, 250, 500, 1797])
    parser.add_argument("--lever-resnet-images", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.memory_child:
        print(json.dumps(memory_child(json.loads(args.memory_child))), flush=True)
        return
    if args.quick:
        args.resnet_images, args.resnet_batches, args.cnn_batches = 100, [50, 100], [250, 1797]
        args.lever_resnet_images, args.reps = 50, 2

    load_before = common.load_average()
    wall = time.perf_counter()
    import tensorflow as tf

    log(f"devices: {[d.name for d in tf.config.list_physical_devices()]}")
    cost, extra = [], {}
    r, extra["small_cnn_bn"] = cost_rows("small_cnn_bn", 1797, args.cnn_batches, args.reps)
    cost += r
    r, extra["resnet32"] = cost_rows("resnet32", args.resnet_images, args.resnet_batches, args.reps)
    cost += r

    cnn_batch = 500 if 500 in args.cnn_batches else args.cnn_batches[-1]
    nonhvp = (nonhvp_rows("small_cnn_bn", 1797, cnn_batch, extra["small_cnn_bn"])
              + nonhvp_rows("resnet32", args.resnet_images, args.resnet_batches[-1], extra["resnet32"]))

    levers = lever_rows("small_cnn_bn", 1797, 500, args.reps)
    lever_batch = min(100, args.lever_resnet_images)
    levers += lever_rows("resnet32", args.lever_resnet_images, lever_batch, args.reps)

    memory = []
    if not args.skip_memory:
        configs = [
            {"model": "small_cnn_bn", "dtype": "float32", "images": 1797, "batch": 500, "steps": M_FULL},
            {"model": "small_cnn_bn", "dtype": "float32", "images": 1797, "batch": 1797, "steps": M_FULL},
            {"model": "small_cnn_bn", "dtype": "float64", "images": 1797, "batch": 500, "steps": M_FULL},
        ] + [{"model": "resnet32", "dtype": "float32", "images": args.resnet_images, "batch": b, "steps": 2}
             for b in args.resnet_batches] + [
            {"model": "resnet32", "dtype": "float64", "images": args.lever_resnet_images, "batch": lever_batch,
             "steps": 2}]
        memory = memory_rows(configs)

    body = [
        "Demo CNN (small_cnn with batch norm, train mode; digits) and ResNet-32 (batch norm, train mode; "
        "generated 32×32×3 data), float32, weight decay 0, random-init weights. Seconds are medians of "
        f"{args.reps} interleaved repetitions; ratios are to the gradient pass of the same row.",
        "",
        common.markdown_table(
            ["model", "n", "N", "batch", "gradient s", "HVP FoR s", "HVP double-backprop s", "Lanczos step s",
             "FoR / grad", "double-backprop / grad", "Lanczos step / grad", "m=90 avg step / grad"], cost),
        "",
        "*HVP FoR* is `HessianOperator.matvec` (timed inside `lanczos()`); *Lanczos step* a whole 1-step "
        "`lanczos()` call (start vector, HVP, two Gram–Schmidt passes); *m=90 avg step* is the HVP plus "
        "1/90 of the bookkeeping of a whole 90-step run of this size (measured below).",
        "",
        "### Share of a whole Lanczos run not spent in the operator (target < 5%)",
        "",
        common.markdown_table(["model", "n", "batch", "m", "how", "run s", "non-HVP share"], nonhvp),
        "",
        "### Levers (each against hessflow's default: forward-over-reverse, float32, host accumulation)",
        "",
        common.markdown_table(["model", "N / batch", "variant", "s", "/ hessflow HVP", "/ gradient pass",
                               "‖Hv − Hv(float64)‖ / ‖Hv(float64)‖"], levers),
        "",
    ]
    if memory:
        body += [
            "### Peak memory of a Lanczos job (fresh process per row; MiB)",
            "",
            common.markdown_table(["model", "dtype", "N / batch", "steps", "baseline RSS", "peak RSS",
                                   "peak − baseline", "params", "activations (1 batch)", "vectors kept",
                                   "floor", "(peak − baseline) / floor", "projected at m=90", "GPU peak"], memory),
            "",
            "*baseline*: RSS with TensorFlow imported, the model built and the data loaded; *floor*: "
            "parameters + one batch's layer outputs (the activations a forward pass keeps) + the input batch "
            "+ the m×n float64 Lanczos vectors actually written; *projected at m=90*: peak − baseline plus "
            "the remaining columns of a 90-step basis (plain float64 arrays, so exact).",
            "",
        ]
    body.append(f"Script wall time: {time.perf_counter() - wall:.0f} s.")
    common.append_results("Item 1: cost against the limit (hvp_cost.py)", "\n".join(body),
                          common.versions("tensorflow", "keras", "numpy", "scipy"), load_before)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
