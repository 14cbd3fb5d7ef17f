"""Item 5 of issue 15 -- a ~5M-parameter network through the library on this CPU, and how cost grows with n.

The network is `hessflow.models.vgg` on 32x32x3 generated images, batch norm in train mode, with
the paper's VGG feature stack less its last stage (conv 64-P-128-P-256-256-P-512-512-P, the
256-unit dense layer, 10 classes): about 5.0 million parameters. ``--scales`` divides every width
by a factor too (0.25 and 0.5: about 0.32M and 1.26M parameters), so that the three rows show how
the cost grows with n at a fixed N. Each row runs in a fresh process:

- a full-data gradient pass and a Hessian-vector product (``HessianOperator.loss_and_gradient``,
  ``matvec``; medians of ``--reps`` after one untimed warm-up each): the HVP / gradient ratio;
- a Lanczos run of ``--steps`` steps through `hessflow.lanczos.lanczos` (vectors kept): seconds per
  step;
- the peak RSS (VmHWM) against the floor, with tracing and steady (the peak reset after each kind of
  pass's first call, `common.reset_peak_rss`): the parameters, one batch's activations (every layer's
  output, as a forward pass keeps them) twice (primal and tangent), the batch's input, and the
  Lanczos vectors kept (n x m float64); "above baseline" is the peak minus the RSS with TensorFlow
  imported, the model built and the data in memory, the ratio is that over the floor; and the
  gradient passes' own peak (they run first) over their floor (parameters, one batch's activations
  once, its input).

``--allocators`` runs each width under several host-allocator settings (`ALLOCATORS`: glibc as is, a
fixed mmap threshold, TensorFlow's BFC pool for the CPU device): how much of the peak is the
allocator's, and what its removal costs in time.

Usage:

    .venv/bin/python benchmarks/big_model.py [--scales 0.25 0.5 1] [--images 256] [--batch 128] [--steps 6]
        [--allocators default mmap-128k tf-bfc]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

WIDTHS = [64, "P", 128, "P", 256, 256, "P", 512, 512, "P"]

#: Host-memory allocator settings a row can run under (its process's environment). glibc raises
#: its mmap threshold to the size of each large block freed (up to 32 MiB), after which the
#: activation-sized tensors of a pass come from the heap, where they fragment; a fixed threshold
#: gives each its own mapping, returned when freed (so faulted in again on every pass). TensorFlow's
#: BFC allocator pools the tensors of the CPU device instead.
ALLOCATORS = {
    "default": {},
    "mmap-128k": {"MALLOC_MMAP_THRESHOLD_": "131072"},
    "tf-bfc": {"TF_CPU_ALLOCATOR_USE_BFC": "true"},
}


def child(spec: dict) -> dict:
    import numpy as np

    import tfkit
    from hessflow import data, models
    from hessflow.hvp import HessianOperator
    from hessflow.lanczos import lanczos

    widths = [w if w == "P" else max(1, round(w * spec["scale"])) for w in WIDTHS]
    model = models.vgg((32, 32, 3), 10, widths=widths, dense=max(1, round(256 * spec["scale"])), dropout=0.0,
                       batch_norm=True, dtype="float32", seed=0)
    x, y = tfkit.cifar_like(spec["images"], np.float32)
    batches = data.fixed_batches(x, y, spec["batch"])
    baseline = common.current_rss_mib()
    operator = HessianOperator(model, batches, tfkit.LOSS, batch_norm="train")
    v = np.random.default_rng(0).standard_normal(operator.dim)
    # Each kind of pass runs once untimed (it traces), then the peak is reset, so that the steady
    # peaks are those of the passes a long Lanczos run repeats, without the transient of tracing;
    # the peak with tracing is kept too. The gradient passes run first: their peak is theirs alone.
    operator.loss_and_gradient()
    first_peak = common.peak_rss_mib()
    steady = common.reset_peak_rss()
    gradient, hvp = [], []
    for _ in range(spec["reps"]):
        operator.loss_and_gradient()
        gradient.append(operator.last_pass_seconds)
    gradient_peak = common.peak_rss_mib()
    operator.matvec(v)
    first_peak = max(first_peak, common.peak_rss_mib())
    common.reset_peak_rss()
    for _ in range(spec["reps"]):
        operator.matvec(v)
        hvp.append(operator.last_pass_seconds)
    start = time.perf_counter()
    lanczos(operator, num_steps=spec["steps"], seed=(0, 0, 0), keep_vectors=True)
    step = (time.perf_counter() - start) / spec["steps"]
    activations = tfkit.activation_bytes(model, min(spec["batch"], len(x)))
    return {
        "dim": operator.dim, "widths": widths, "gradient_s": common.median(gradient), "hvp_s": common.median(hvp),
        "step_s": step, "baseline_mib": baseline, "peak_mib": common.peak_rss_mib(), "steady": steady,
        "first_peak_mib": max(first_peak, common.peak_rss_mib()), "gradient_peak_mib": gradient_peak,
        "gradient_floor_mib": (operator.dim * 4 + activations + batches[0][0].nbytes) / 2**20,
        "floor_mib": (operator.dim * 4 + 2 * activations + batches[0][0].nbytes
                      + operator.dim * spec["steps"] * 8) / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.25, 0.5, 1.0], help="width factors")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6, help="Lanczos steps of the timed run")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--allocators", nargs="+", choices=sorted(ALLOCATORS), default=["default"],
                        help="host allocator settings, one row each")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(json.loads(args.child))), flush=True)
        return

    load_before = common.load_average()
    started = time.perf_counter()
    rows = []
    for scale in args.scales:
        for allocator in args.allocators:
            spec = {"scale": scale, "images": args.images, "batch": args.batch, "steps": args.steps,
                    "reps": args.reps}
            out = common.run_child([sys.executable, __file__, "--child", json.dumps(spec)],
                                   env={"TF_CPP_MIN_LOG_LEVEL": "2", **ALLOCATORS[allocator]}, timeout=3600)
            if not out["steady"]:
                raise SystemExit("this kernel cannot reset the peak RSS (/proc/self/clear_refs): no steady peaks")
            above = out["peak_mib"] - out["baseline_mib"]
            first_above = out["first_peak_mib"] - out["baseline_mib"]
            gradient_above = out["gradient_peak_mib"] - out["baseline_mib"]
            print(f"scale {scale}, {allocator}: n = {out['dim']:,}, {out}", flush=True)
            rows.append([scale, allocator, out["dim"], out["gradient_s"], out["hvp_s"],
                         out["hvp_s"] / out["gradient_s"], out["step_s"], out["baseline_mib"], out["floor_mib"],
                         first_above / out["floor_mib"], out["peak_mib"], above, above / out["floor_mib"],
                         gradient_above / out["gradient_floor_mib"]])
    headers = ["width factor", "allocator", "n", "gradient pass s", "HVP s", "HVP / gradient", "Lanczos s/step",
               "baseline MiB", "floor MiB", "with tracing: above / floor", "steady peak RSS MiB",
               "steady: above baseline MiB", "steady: above / floor", "gradient passes: above / their floor"]
    allocators = "; ".join(f"`{name}`: " + (" ".join(f"{k}={v}" for k, v in env.items()) or "glibc malloc as is")
                           for name, env in ALLOCATORS.items() if name in args.allocators)
    body = (f"### VGG (conv 64-P-128-P-256-256-P-512-512-P, dense 256, batch norm, float32) x width factor; "
            f"N = {args.images:,} generated 32x32x3 images, batch {args.batch}, m = {args.steps}\n\n"
            f"{common.markdown_table(headers, rows)}\n\n"
            f"Each row a fresh process; pass times are medians of {args.reps} after a warm-up (threads: "
            "TensorFlow's default, both cores). *floor*: parameters (float32) + 2 x one batch's activations "
            "(primal and tangent) + the batch's input + the n x m float64 Lanczos vectors; *above baseline*: "
            "peak RSS less the RSS with TensorFlow imported, the model built and the data in memory; "
            "*with tracing*: the peak over the whole process, first (tracing) calls included; *steady*: the "
            "peak of the timed HVPs and the Lanczos run after the first call of each (peak reset through "
            "/proc/self/clear_refs), what a long run repeats; *gradient passes*: the steady peak of the "
            "gradient passes alone (they run first) over parameters + one batch's activations + its input. "
            f"Allocators (environment of the row's process): {allocators}.\n\n"
            f"Script wall time: {time.perf_counter() - started:.0f} s.")
    common.append_results("Issue 15 item 5: a 5M-parameter network on this CPU (big_model.py)", body,
                          common.versions("tensorflow", "keras", "numpy"), load_before,
                          command=" ".join(["benchmarks/big_model.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
