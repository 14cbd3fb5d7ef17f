"""Item 2 -- hessflow against the peers, side by side in one run.

The TensorFlow side (hessflow) runs in this process (hessflow's venv); the PyTorch peers run in
worker processes of the peers' venv (benchmarks/.venv-peers, see requirements-peers.txt), one per
glibc allocator setting (default, and MALLOC_* settings that keep PyTorch from returning and
re-faulting its memory: about a million page faults per HVP pass otherwise, measured here).
Only one process computes at a time: this script sends each worker one command and waits for it,
interleaving the tools round by round (order rotated), and reports medians.

1. Time per Lanczos step, each tool through its own Lanczos (hessflow ``lanczos`` with full
   reorthogonalization; PyHessian ``density``; hessian-eigenthings ``lanczos_tridiagonal`` with
   reorthogonalization; curvlinops ``fast_lanczos``, which does not reorthogonalize), on a ResNet
   without batch norm (75,050 parameters) over generated CIFAR-sized images; the HVP vectors of
   all tools on the same vector and weights compared; peak memory of a short Lanczos job per tool
   (fresh process each); the projected time of a paper-sized density (m = 90, 10 draws).
2. Total time of a whole density (m = 90; 2 draws timed, 10 projected) through each tool's own density function on
   the small CNN (no batch norm, 3,818 parameters, digits, briefly trained), and the largest
   eigenvalue from each tool's own eigensolver against a float64 reference (agreement within 1%).

Same architecture (ported, weights transferred), same data and batches, same loss (mean
cross-entropy; weight decay 0 everywhere: curvlinops' loss cannot see the parameters, and weight
decay only adds a constant wd·I on the kernels, which every tool would add outside the HVP).

``--hessflow-allocator tuned`` runs hessflow's own process (this one, which re-executes itself so that
glibc reads the settings at start-up) under the peers' tuned settings too; the workers' settings
stay their own.

Usage: .venv/bin/python benchmarks/peers.py [--quick] [--device cpu|cuda] [--hessflow-allocator default|tuned]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

TOOLS = ["pyhessian", "curvlinops", "eigenthings"]
TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "17179869184",
                "MALLOC_TOP_PAD_": "268435456"}
ALLOCATORS = {"default": {}, "tuned": TUNED_MALLOC}
REEXEC = "HESSFLOW_PEERS_ALLOCATOR"  # set once this process runs under --hessflow-allocator


def log(message):
    print(message, flush=True)


class Worker:
    """A torch_side.py worker in the peers' venv, spoken to in JSON lines."""

    def __init__(self, name, env):
        full_env = common.child_environment(env, unset=("MALLOC_",))  # its own settings, not hessflow's
        self.name = name
        self.proc = subprocess.Popen([str(common.PEERS_PYTHON), str(common.BENCH_DIR / "torch_side.py"), "worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, text=True,
                                     env=full_env)

    def call(self, **command):
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.name} died on {command}")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"worker {self.name}: {answer['error']}\n{answer.get('traceback', '')}")
        return answer

    def close(self):
        try:
            self.call(cmd="quit")
        finally:
            self.proc.wait(timeout=60)


def write_spec(path, model_name, model, x, y, batch):
    import numpy as np
    weights = {f"w{i}": np.asarray(v.numpy()) for i, v in enumerate(model.trainable_variables)}
    np.savez(path, model=model_name, num_weights=len(weights), x=x, y=y, batch=batch, **weights)


def tf_memjob(spec_path, steps):
    """One hessflow Lanczos job in this (fresh) process; prints RSS as JSON."""
    import numpy as np
    import tensorflow as tf

    import tfkit
    from hessflow import data, models
    from hessflow.hvp import HessianOperator
    from hessflow.lanczos import lanczos

    spec = np.load(spec_path)
    model = {"resnet_nobn": tfkit.resnet_nobn, "small_cnn": lambda: models.small_cnn(batch_norm=False),
             "mlp": lambda: models.mlp(hidden=(32,))}[str(spec["model"])]()
    model.set_weights([spec[f"w{i}"] for i in range(int(spec["num_weights"]))])
    x, y = spec["x"], spec["y"]
    baseline = common.current_rss_mib()
    op = HessianOperator(model, data.fixed_batches(x, y, int(spec["batch"])), tfkit.LOSS, batch_norm="train")
    start = time.perf_counter()
    lanczos(op.matvec, op.dim, steps, seed=(0, 0, 0))
    result = {"baseline_mib": baseline, "peak_mib": common.peak_rss_mib(), "seconds": time.perf_counter() - start}
    if tf.config.list_physical_devices("GPU"):
        result["gpu_peak_mib"] = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    print(json.dumps(result))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--images", type=int, default=1000, help="ResNet images (a multiple of --batch)")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--steps", type=int, default=2, help="Lanczos steps per timed ResNet run")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--density-steps", type=int, default=90)
    parser.add_argument("--density-draws", type=int, default=2,
                        help="draws timed; the table also projects 10 draws (each draw is an independent run)")
    parser.add_argument("--memory-steps", type=int, default=2)
    parser.add_argument("--side-by-side", type=int, default=4,
                        help="B: also time hessflow with B draws side by side (lanczos.draws_per_job), per draw")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--hessflow-allocator", choices=sorted(ALLOCATORS), default="default",
                        help="glibc settings of hessflow's own process (the peers run under both either way)")
    parser.add_argument("--tf-memjob", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tf_memjob:
        tf_memjob(args.tf_memjob[0], int(args.tf_memjob[1]))
        return
    if os.environ.get(REEXEC) != args.hessflow_allocator:
        # glibc reads MALLOC_* once, at start-up: run this script again under the chosen settings.
        env = common.child_environment({**ALLOCATORS[args.hessflow_allocator], REEXEC: args.hessflow_allocator},
                                       unset=("MALLOC_",))
        os.execve(sys.executable, [sys.executable, __file__, *sys.argv[1:]], env)
    if args.quick:
        args.images, args.batch, args.reps, args.density_steps, args.density_draws = 200, 100, 2, 30, 2

    if not common.PEERS_PYTHON.exists():
        raise SystemExit(f"no peers venv at {common.PEERS_PYTHON}: see benchmarks/README.md")
    load_before = common.load_average()
    wall = time.perf_counter()
    import numpy as np

    import tfkit
    from hessflow import data, models, training
    from hessflow.density import density_from_tridiags, ritz
    from hessflow.hvp import HessianOperator
    from hessflow.lanczos import lanczos, lanczos_side_by_side

    common.OUT_DIR.mkdir(exist_ok=True)
    out = common.OUT_DIR
    threads = os.cpu_count()
    hf_alloc = args.hessflow_allocator  # the allocator column of hessflow's rows

    # ---------------- problem 1: ResNet without batch norm, generated CIFAR-sized data ---------
    resnet = tfkit.resnet_nobn(seed=0)
    x, y = tfkit.cifar_like(args.images)
    write_spec(out / "peers_resnet.npz", "resnet_nobn", resnet, x, y, args.batch)
    op = HessianOperator(resnet, data.fixed_batches(x, y, args.batch), tfkit.LOSS, batch_norm="train")
    # lanczos.draws_per_job = B: B draws' products in every pass (kernels.make_hvp_matmat_sum)
    op_b = HessianOperator(resnet, data.fixed_batches(x, y, args.batch), tfkit.LOSS, batch_norm="train",
                           probes_per_pass=args.side_by_side)
    side_by_side = f"hessflow, {args.side_by_side} draws side by side (per draw)"
    log(f"ResNet without BN: n = {op.dim:,}, N = {len(x)}, batch {args.batch}")

    workers = {name: Worker(name, env) for name, env in ALLOCATORS.items()}
    torch_version = None
    try:
        for w in workers.values():
            info = w.call(cmd="setup", spec=str(out / "peers_resnet.npz"), tools=TOOLS + ["torch_dbp"],
                          device=args.device, threads=threads)
            torch_version = info["torch"]
            log(f"worker {w.name}: {info}")
            assert info["dim"] == op.dim, (info["dim"], op.dim)

        # HVP agreement on one vector
        v = np.random.default_rng(0).standard_normal(op.dim)
        np.save(out / "peers_v.npy", v)
        reference = op.matvec(v)
        agreement = {}
        for tool in TOOLS + ["torch_dbp"]:
            workers["default"].call(cmd="hvp", tool=tool, vector=str(out / "peers_v.npy"),
                                    save=str(out / "peers_hv.npy"))
            hv = np.load(out / "peers_hv.npy")
            agreement[tool] = float(np.linalg.norm(hv - reference) / np.linalg.norm(reference))
        several = op_b.matmat(np.repeat(v[:, None], args.side_by_side, axis=1))[:, 0]
        agreement["hessflow_side_by_side"] = float(np.linalg.norm(several - reference) / np.linalg.norm(reference))
        log(f"HVP rel. diff to hessflow: {agreement}")

        # interleaved per-step timing
        def tf_step():
            lanczos(op.matvec, op.dim, args.steps, seed=(0, 0, 0))

        def torch_step(worker, tool):
            return lambda: worker.call(cmd="lanczos", tool=tool, steps=args.steps)

        def torch_hvp(worker):
            return lambda: worker.call(cmd="hvp", tool="torch_dbp", vector=str(out / "peers_v.npy"))

        def tf_steps_side_by_side():
            lanczos_side_by_side(op_b, op.dim, args.steps, seeds=[(0, 0, d) for d in range(args.side_by_side)])

        functions = {("hessflow", hf_alloc): tf_step, ("hessflow HVP only", hf_alloc): lambda: op.matvec(v),
                     (side_by_side, hf_alloc): tf_steps_side_by_side}
        for alloc, w in workers.items():
            for tool in TOOLS:
                functions[(tool, alloc)] = torch_step(w, tool)
            functions[("torch double backprop, HVP only", alloc)] = torch_hvp(w)
        log("interleaved Lanczos steps ...")
        times = common.interleaved(functions, args.reps, log=log)

        # memory, a fresh process per tool
        memory = {}
        if not args.skip_memory:
            spec = str(out / "peers_resnet.npz")
            memory[("hessflow", hf_alloc)] = common.run_child(
                [sys.executable, __file__, "--tf-memjob", spec, str(args.memory_steps)])
            for alloc, env in ALLOCATORS.items():
                for tool in TOOLS:
                    memory[(tool, alloc)] = common.run_child(
                        [str(common.PEERS_PYTHON), str(common.BENCH_DIR / "torch_side.py"), "memjob", spec, tool,
                         str(args.memory_steps), args.device], env=env, unset=("MALLOC_",))
            log(f"memory: {memory}")

        # ---------------- problem 2: small CNN on digits, whole densities, lambda_max ----------
        cnn = models.small_cnn(batch_norm=False, seed=0)
        images, labels = data.load_digits()
        training.train(cnn, images, labels, num_steps=300, batch_size=64, learning_rate=0.05, momentum=0.9,
                       seed=0, log=None)
        dx, dy = tfkit.digits()
        digits_batch = 599  # 3 equal batches of the 1,797 digits: hessian-eigenthings weights batches equally
        write_spec(out / "peers_cnn.npz", "small_cnn", cnn, dx, dy, digits_batch)
        cnn_op = HessianOperator(cnn, data.fixed_batches(dx, dy, digits_batch), tfkit.LOSS)
        cnn_op_b = HessianOperator(cnn, data.fixed_batches(dx, dy, digits_batch), tfkit.LOSS,
                                   probes_per_pass=args.density_draws)
        density_side_by_side = f"hessflow, {args.density_draws} draws side by side"
        cnn64 = models.small_cnn(batch_norm=False, dtype="float64", seed=0)
        cnn64.set_weights([w.astype(np.float64) for w in cnn.get_weights()])
        dx64, _ = tfkit.digits(np.float64)
        op64 = HessianOperator(cnn64, data.fixed_batches(dx64, dy, digits_batch), tfkit.LOSS, dtype="float64")
        ref_run = lanczos(op64.matvec, op64.dim, 150, seed=(9, 9, 9), keep_vectors=False)
        lambda_ref = float(ritz(ref_run.tridiag)[0].max())
        for w in workers.values():
            w.call(cmd="setup", spec=str(out / "peers_cnn.npz"), tools=TOOLS, device=args.device, threads=threads)

        cv = np.random.default_rng(1).standard_normal(cnn_op.dim)
        np.save(out / "peers_cv.npy", cv)
        cnn_reference = cnn_op.matvec(cv)
        cnn_agreement = {}
        for tool in TOOLS:
            workers["default"].call(cmd="hvp", tool=tool, vector=str(out / "peers_cv.npy"),
                                    save=str(out / "peers_hv.npy"))
            hv = np.load(out / "peers_hv.npy")
            cnn_agreement[tool] = float(np.linalg.norm(hv - cnn_reference) / np.linalg.norm(cnn_reference))

        def tf_density():
            runs = [lanczos(cnn_op.matvec, cnn_op.dim, args.density_steps, seed=(0, 0, d), keep_vectors=False)
                    for d in range(args.density_draws)]
            density_from_tridiags([r.tridiag for r in runs])

        def tf_density_side_by_side():
            runs = lanczos_side_by_side(cnn_op_b, cnn_op.dim, args.density_steps,
                                        seeds=[(0, 0, d) for d in range(args.density_draws)], keep_vectors=False)
            density_from_tridiags([r.tridiag for r in runs])

        density_functions = {("hessflow", hf_alloc): tf_density,
                             (density_side_by_side, hf_alloc): tf_density_side_by_side}
        for alloc, w in workers.items():
            for tool in TOOLS:
                density_functions[(tool, alloc)] = (
                    lambda w=w, tool=tool: w.call(cmd="density", tool=tool, steps=args.density_steps,
                                                  draws=args.density_draws))
        log("densities (warm-up: a 3-step, 1-draw density per tool) ...")
        for _alloc, w in workers.items():
            for tool in TOOLS:
                w.call(cmd="density", tool=tool, steps=3, draws=1)
        lanczos(cnn_op.matvec, cnn_op.dim, 3, seed=(0, 0, 0))
        lanczos_side_by_side(cnn_op_b, cnn_op.dim, 3, seeds=[(0, 0, d) for d in range(args.density_draws)])
        density_times = common.interleaved(density_functions, 1, warmup=False, log=log)

        start = time.perf_counter()
        hf_run = lanczos(cnn_op.matvec, cnn_op.dim, 60, seed=(0, 0, 0), keep_vectors=False)
        lambdas = {"hessflow": {"value": float(ritz(hf_run.tridiag)[0].max()), "hvps": 60,
                                "seconds": time.perf_counter() - start}}
        for tool in TOOLS:
            lambdas[tool] = workers["default"].call(cmd="lambda_max", tool=tool)
        log(f"lambda_max: reference {lambda_ref}, {lambdas}")
    finally:
        for w in workers.values():
            w.close()

    # ---------------- tables ----------------
    hf_step = common.median(times[("hessflow", hf_alloc)]) / args.steps
    step_rows = []
    for (tool, alloc), values in times.items():
        hvp_only = "HVP only" in tool
        per_step = common.median(values) / (1 if hvp_only else args.steps)
        if tool == side_by_side:
            per_step /= args.side_by_side
        mem = memory.get((tool, alloc))
        key = "hessflow" if tool.startswith("hessflow") else ("torch_dbp" if tool.startswith("torch") else tool)
        key = "hessflow_side_by_side" if tool == side_by_side else key
        step_rows.append([
            tool, alloc, per_step, per_step / hf_step, per_step * args.density_steps * 10 / 60
            if not hvp_only else None,
            0.0 if key == "hessflow" else agreement.get(key),  # (the side by side row: its own)
            None if mem is None else mem["peak_mib"] - mem["baseline_mib"],
            None if mem is None else mem["peak_mib"],
        ])
    hf_density = common.median(density_times[("hessflow", hf_alloc)])
    density_rows = []
    for (tool, alloc), values in density_times.items():
        total = common.median(values)
        lam = lambdas.get(tool) if tool.startswith("hessflow") or alloc == "default" else None
        density_rows.append([
            tool, alloc, total, total * 10 / args.density_draws, total / hf_density,
            None if lam is None else lam["value"],
            None if lam is None else (lam["value"] - lambda_ref) / lambda_ref,
            None if lam is None else lam["hvps"],
            0.0 if tool.startswith("hessflow") else cnn_agreement[tool],
        ])
    step_note = (f"{args.steps}-step runs, medians of {args.reps} interleaved repetitions; *HVP only* rows "
                 "time one full-data HVP pass (no Lanczos); the *side by side* row runs B draws' Lanczos "
                 "recurrences together (`lanczos_side_by_side`, `probes_per_pass=B`: B products per pass from one "
                 "shared forward and first reverse pass), its time per step divided by B")
    body = "\n".join([
        f"Device: {args.device}; {threads} threads for TensorFlow and torch alike; torch {torch_version}. "
        "Loss: mean cross-entropy, weight decay 0 in every tool. `tuned` = the worker ran with "
        + " ".join(f"{k}={v}" for k, v in TUNED_MALLOC.items())
        + " (glibc malloc settings that cut PyTorch's page faults).",
        "",
        f"### Time per Lanczos step: ResNet without batch norm, n = {op.dim:,}, {args.images:,} generated "
        f"32×32×3 images, batch {args.batch}",
        "",
        common.markdown_table(["tool", "allocator", "s per step", "/ hessflow",
                               f"projected min for m={args.density_steps} × 10 draws",
                               "HVP rel. diff to hessflow", f"peak − baseline RSS MiB ({args.memory_steps}-step job)",
                               "peak RSS MiB"], step_rows),
        "",
        f"{step_note}. curvlinops' `fast_lanczos` does not reorthogonalize (its step is an HVP plus two "
        "vector updates); PyHessian and hessian-eigenthings reorthogonalize once against every kept vector, "
        "hessflow twice (classical Gram–Schmidt, \"twice is enough\"). Memory: one fresh process per row "
        "(baseline = RSS with the framework imported, model and data loaded).",
        "",
        f"### Whole density (m = {args.density_steps}, {args.density_draws} draws timed) and λmax: small CNN without "
        f"batch norm, n = {cnn_op.dim:,}, 1,797 digits, 3 batches of {digits_batch}",
        "",
        common.markdown_table(["tool", "allocator", "density s (measured)", "projected s for 10 draws", "/ hessflow",
                               "λmax", "λmax rel. error",
                               "HVPs for λmax", "HVP rel. diff to hessflow"], density_rows),
        "",
        f"λmax reference: float64 hessflow operator, 150 Lanczos steps: {lambda_ref:.6g}. λmax by each tool's own "
        "eigensolver: hessflow max Ritz value of 60 steps; PyHessian power iteration (tol 1e-6); curvlinops "
        "scipy `eigsh(k=1, which='LA')` on `to_scipy()`; hessian-eigenthings `lanczos(k=1, max_iter=60, "
        "which='LA')`. Density functions: hessflow `lanczos` × draws + `density_from_tridiags`; PyHessian "
        "`density`; hessian-eigenthings `spectral_density`; curvlinops `lanczos_approximate_spectrum` "
        "(includes its ARPACK estimate of the spectrum's ends, a one-off cost per call that the 10-draw "
        "projection, measured × 10 / draws, overstates). One run each after a small warm-up, interleaved.",
        "",
        f"Script wall time: {time.perf_counter() - wall:.0f} s.",
    ])
    packages = common.versions("tensorflow", "keras", "numpy")
    packages["torch (peers venv)"] = torch_version or "?"
    packages.update(peer_versions())
    common.append_results("Item 2: against the peers (peers.py)", body, packages, load_before)


def peer_versions() -> dict:
    code = ("import json; from importlib import metadata as m; print(json.dumps({k: m.version(k) for k in "
            "['PyHessian', 'curvlinops-for-pytorch', 'hessian-eigenthings', 'numpy']}))")
    try:
        out = subprocess.run([str(common.PEERS_PYTHON), "-c", code], capture_output=True, text=True, timeout=60)
        return {f"{k} (peers venv)": v for k, v in json.loads(out.stdout).items()}
    except Exception:
        return {}


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
