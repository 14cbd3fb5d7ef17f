"""Item 3 -- accuracy of SLQ against the exact Hessian spectrum, hessflow and the peers.

Models small enough for the explicit Hessian, trained briefly on the 1,797 digits (float64
weights), the Hessian taken over the first 1,000 digits in 2 fixed batches of 500: the MLP (tanh,
32 hidden) and the small CNN, each with and without batch norm (train
mode, the fixed batches of the operator). The exact Hessian is built in float64 by nested tapes,
rows in chunks (one `jacobian` of a slice of the gradient per chunk and batch: pfor over a whole
CNN gradient at batch 500 does not fit in memory), and diagonalized with `numpy.linalg.eigvalsh`.

SLQ: hessflow's default operator (float32 compute, as users run it) on the same weights, 10 draws
of 150 Lanczos steps; the m-step results for m < 150 are the leading m×m blocks of the same
tridiagonals (Lanczos is deterministic given its start vector, so the first m steps of a 150-step
run are exactly an m-step run). Errors, for m in {30, 60, 90, 150} and the first 1, 5, 10 draws:

- W1/std: 1-Wasserstein distance between the pooled Ritz measure and the exact spectral measure
  (uniform weights on the exact eigenvalues), over the exact spectrum's standard deviation;
- λmax, λmin: |estimate − exact| / (exact λmax − λmin) (draws-averaged extreme Ritz values);
- negative mass: |estimate − exact| of the mass below −1e-3·(λmax − λmin) (hessflow's definition);
- trace: |n·Σwθ − tr H| / |tr H|.

Peers that give a density (PyHessian ``density``, hessian-eigenthings ``spectral_density``, and
curvlinops ``fast_lanczos``, the Lanczos under its density) run on the ported MLP without batch
norm (torch, float32, weights transferred) and are scored the same way.

Usage: .venv/bin/python benchmarks/accuracy.py [--quick] [--no-peers]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

STEPS = (30, 60, 90, 150)
DRAWS = (1, 5, 10)
PEER_TOOLS = ("pyhessian", "eigenthings", "curvlinops")


def log(message):
    print(message, flush=True)


def exact_hessian(model, batches, chunk=128):
    """(n, n) float64 Hessian of the mean loss over ``batches``, by rows in chunks."""
    import numpy as np
    import tensorflow as tf

    import tfkit
    from hessflow.kernels import make_batch_loss_sum

    batch_loss_sum = make_batch_loss_sum(model, tfkit.LOSS, training=True)  # hessflow's objective
    trainable = list(model.trainable_variables)
    shapes = [tuple(v.shape) for v in trainable]
    sizes = [int(np.prod(s)) for s in shapes]
    n = sum(sizes)
    padded = -(-n // chunk) * chunk
    flat0 = tf.constant(np.concatenate([np.asarray(v.numpy(), np.float64).ravel() for v in trainable]))
    x0, y0 = batches[0]

    @tf.function(input_signature=[tf.TensorSpec((None, *x0.shape[1:]), tf.float64),
                                  tf.TensorSpec((None,), tf.int64), tf.TensorSpec((), tf.int32)])
    def rows(x, y, start):
        flat = tf.identity(flat0)
        with tf.GradientTape() as outer:
            outer.watch(flat)
            with tf.GradientTape() as inner:
                inner.watch(flat)
                params = [tf.reshape(t, s) for t, s in zip(tf.split(flat, sizes), shapes)]
                loss = batch_loss_sum(params, x, y)
            gradient = tf.pad(inner.gradient(loss, flat), [[0, padded - n]])
            piece = tf.slice(gradient, [start], [chunk])
        return outer.jacobian(piece, flat, experimental_use_pfor=True)

    hessian = np.zeros((padded, n))
    count = 0
    for x, y in batches:
        x = tf.constant(np.asarray(x, np.float64))
        y = tf.constant(np.asarray(y, np.int64))
        for start in range(0, n, chunk):
            hessian[start:start + chunk] += rows(x, y, tf.constant(start, tf.int32)).numpy()
        count += int(x.shape[0])
    hessian = hessian[:n] / count
    return 0.5 * (hessian + hessian.T)


def scores(exact, nodes_list, weights_list, dim):
    import numpy as np

    from hessflow.density import spectral_wasserstein1, summarize

    lam_max, lam_min = float(exact.max()), float(exact.min())
    spread = lam_max - lam_min
    stats = summarize(nodes_list, weights_list, dim=dim)
    exact_negative = float(np.mean(exact < -1e-3 * spread))
    nodes, weights = np.concatenate(nodes_list), np.concatenate(weights_list)
    w1 = spectral_wasserstein1(nodes, weights / weights.sum(), exact, np.full(exact.size, 1.0 / exact.size))
    return {
        "w1_std": w1 / float(exact.std()),
        "lmax": abs(stats["lambda_max"] - lam_max) / spread,
        "lmin": abs(stats["lambda_min"] - lam_min) / spread,
        "neg": abs(stats["negative_mass"] - exact_negative),
        "trace": abs(stats["trace"] - float(exact.sum())) / abs(float(exact.sum())),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="MLP and CNN without batch norm only, no peers")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    load_before = common.load_average()
    wall = time.perf_counter()

    import numpy as np

    import tfkit
    from hessflow import data, models, training
    from hessflow.density import ritz
    from hessflow.hvp import HessianOperator
    from hessflow.lanczos import lanczos

    images, labels = data.load_digits()
    # The Hessian is over the first 1,000 digits in 2 fixed batches of 500 (equal batches: the
    # peers weight batches equally; BN in train mode uses the operator's batches).
    x32, y = tfkit.digits(np.float32)
    x64, _ = tfkit.digits(np.float64)
    x32, x64, y = x32[:args.examples], x64[:args.examples], y[:args.examples]
    configs = [("mlp", False), ("small_cnn", False), ("mlp", True), ("small_cnn", True)]
    if args.quick:
        configs = configs[:2]
    rows, peer_rows, exact_info = [], [], []
    common.OUT_DIR.mkdir(exist_ok=True)
    peers = (not args.no_peers and not args.quick and common.PEERS_PYTHON.exists())
    workers = None
    if peers:
        from peers import Worker
        workers = Worker("accuracy", {})
    try:
        for name, bn in configs:
            label = f"{name}{' + BN' if bn else ''}"
            build = {"mlp": lambda dtype, bn=bn: models.mlp(hidden=(32,), batch_norm=bn, dtype=dtype, seed=0),
                     "small_cnn": lambda dtype, bn=bn: models.small_cnn(batch_norm=bn, dtype=dtype, seed=0)}[name]
            model64 = build("float64")
            training.train(model64, images, labels, num_steps=args.train_steps, batch_size=64, learning_rate=0.05,
                           momentum=0.9, seed=0, log=None)
            batch = args.batch
            start = time.perf_counter()
            eigenvalues = np.linalg.eigvalsh(exact_hessian(model64, data.fixed_batches(x64, y, batch)))
            exact_seconds = time.perf_counter() - start
            model32 = build("float32")
            model32.set_weights([w.astype(np.float32) for w in model64.get_weights()])
            op = HessianOperator(model32, data.fixed_batches(x32, y, batch), tfkit.LOSS, batch_norm="train")
            log(f"{label}: n = {op.dim}, exact Hessian {exact_seconds:.0f} s, λ in [{eigenvalues.min():.4g}, "
                f"{eigenvalues.max():.4g}], trace {eigenvalues.sum():.4g}")
            exact_info.append([label, op.dim, batch, exact_seconds, eigenvalues.max(), eigenvalues.min(),
                               eigenvalues.sum(), float(np.mean(eigenvalues < -1e-3 * np.ptp(eigenvalues)))])
            runs = [lanczos(op.matvec, op.dim, max(STEPS), seed=(0, 0, d), keep_vectors=False)
                    for d in range(max(DRAWS))]
            for m in STEPS:
                pairs = [ritz(r.tridiag[:m, :m]) for r in runs]
                for d in DRAWS:
                    s = scores(eigenvalues, [p[0] for p in pairs[:d]], [p[1] for p in pairs[:d]], op.dim)
                    rows.append([label, "hessflow", m, d, s["w1_std"], s["lmax"], s["lmin"], s["neg"], s["trace"]])
            if peers and name == "mlp" and not bn:
                spec = common.OUT_DIR / f"accuracy_{name}.npz"
                from peers import write_spec
                write_spec(spec, name, model32, x32, y, batch)
                # One torch thread: nothing is timed here, and on a loaded machine OpenMP's spinning
                # threads slowed torch many times over.
                workers.call(cmd="setup", spec=str(spec), tools=list(PEER_TOOLS), threads=1)
                for tool in PEER_TOOLS:
                    for m in STEPS:
                        save = common.OUT_DIR / "accuracy_nodes.npz"
                        workers.call(cmd="nodes_weights", tool=tool, steps=m, draws=max(DRAWS), save=str(save))
                        with np.load(save) as z:
                            nodes = [z[f"nodes{i}"].astype(np.float64) for i in range(max(DRAWS))]
                            weights = [z[f"weights{i}"].astype(np.float64) for i in range(max(DRAWS))]
                        for d in DRAWS:
                            s = scores(eigenvalues, nodes[:d], weights[:d], op.dim)
                            peer_rows.append([label, tool, m, d, s["w1_std"], s["lmax"], s["lmin"], s["neg"],
                                              s["trace"]])
                    log(f"  {tool} done")
    finally:
        if workers is not None:
            workers.close()

    headers = ["model", "tool", "m", "draws", "W1 / std", "λmax err / range", "λmin err / range",
               "neg. mass abs. err", "trace rel. err"]
    body = [
        f"Digits models trained {args.train_steps} SGD steps (float64 weights); Hessian of the mean loss over the "
        f"first {args.examples:,} digits in batches of {args.batch} (batch norm: train mode); exact Hessian in float64 "
        "(nested tapes, rows in chunks), SLQ with hessflow's default float32 operator on the same weights "
        "(draws seeded (0, 0, d); m-step values are the leading blocks of 150-step runs).",
        "",
        common.markdown_table(["model", "n", "batch", "exact Hessian s", "λmax", "λmin", "trace",
                               "neg. mass (< −1e-3·range)"], exact_info),
        "",
        common.markdown_table(headers, rows),
        "",
    ]
    if peer_rows:
        body += [
            "### Peers on the ported MLP (no batch norm; torch float32, weights transferred)",
            "",
            "PyHessian `density` and hessian-eigenthings `spectral_density` start from Rademacher vectors and "
            "reorthogonalize (once); curvlinops' `fast_lanczos` (the Lanczos under its "
            "`lanczos_approximate_spectrum`) starts from a Gaussian and does not reorthogonalize. Each m is a "
            "separate run of 10 draws (their APIs return only Ritz values and weights); the first 1, 5, 10 draws "
            "are scored.",
            "",
            common.markdown_table(headers, peer_rows),
            "",
        ]
    body.append(f"Script wall time: {time.perf_counter() - wall:.0f} s.")
    packages = common.versions("tensorflow", "keras", "numpy", "scipy")
    if peer_rows:
        from peers import peer_versions
        packages.update(peer_versions())
    common.append_results("Item 3: accuracy against the exact Hessian (accuracy.py)", "\n".join(body), packages,
                          load_before)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
