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
- the peak RSS (VmHWM) against the floor: the parameters, one batch's activations (every layer's
  output, as a forward pass keeps them) twice (primal and tangent), the batch's input, and the
  Lanczos vectors kept (n x m float64); "above baseline" is the peak minus the RSS with TensorFlow
  imported, the model built and the data in memory, the ratio is that over the floor.

Usage:

    .venv/bin/python benchmarks/big_model.py [--scales 0.25 0.5 1] [--images 256] [--batch 128] [--steps 6]
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
    operator.loss_and_gradient(), operator.matvec(v)  # traces
    gradient, hvp = [], []
    for _ in range(spec["reps"]):
        operator.loss_and_gradient()
        gradient.append(operator.last_pass_seconds)
        operator.matvec(v)
        hvp.append(operator.last_pass_seconds)
    start = time.perf_counter()
    lanczos(operator, num_steps=spec["steps"], seed=(0, 0, 0), keep_vectors=True)
    step = (time.perf_counter() - start) / spec["steps"]
    activations = tfkit.activation_bytes(model, min(spec["batch"], len(x)))
    return {
        "dim": operator.dim, "widths": widths, "gradient_s": common.median(gradient), "hvp_s": common.median(hvp),
        "step_s": step, "baseline_mib": baseline, "peak_mib": common.peak_rss_mib(),
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
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(json.loads(args.child))), flush=True)
        return

    load_before = common.load_average()
    started = time.perf_counter()
    rows = []
    for scale in args.scales:
        spec = {"scale": scale, "images": args.images, "batch": args.batch, "steps": args.steps, "reps": args.reps}
        out = common.run_child([sys.executable, __file__, "--child", json.dumps(spec)],
                               env={"TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=3600)
        above = out["peak_mib"] - out["baseline_mib"]
        print(f"scale {scale}: n = {out['dim']:,}, {out}", flush=True)
        rows.append([scale, out["dim"], out["gradient_s"], out["hvp_s"], out["hvp_s"] / out["gradient_s"],
                     out["step_s"], out["baseline_mib"], out["peak_mib"], above, out["floor_mib"],
                     above / out["floor_mib"]])
    headers = ["width factor", "n", "gradient pass s", "HVP s", "HVP / gradient", "Lanczos s/step", "baseline MiB",
               "peak RSS MiB", "above baseline MiB", "floor MiB", "above / floor"]
    body = (f"### VGG (conv 64-P-128-P-256-256-P-512-512-P, dense 256, batch norm, float32) x width factor; "
            f"N = {args.images:,} generated 32x32x3 images, batch {args.batch}, m = {args.steps}\n\n"
            f"{common.markdown_table(headers, rows)}\n\n"
            f"Each row a fresh process; pass times are medians of {args.reps} after a warm-up (threads: "
            "TensorFlow's default, both cores). *floor*: parameters (float32) + 2 x one batch's activations "
            "(primal and tangent) + the batch's input + the n x m float64 Lanczos vectors; *above baseline*: "
            "peak RSS less the RSS with TensorFlow imported, the model built and the data in memory.\n\n"
            f"Script wall time: {time.perf_counter() - started:.0f} s.")
    common.append_results("Issue 15 item 5: a 5M-parameter network on this CPU (big_model.py)", body,
                          common.versions("tensorflow", "keras", "numpy"), load_before,
                          command=" ".join(["benchmarks/big_model.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
