"""Issue 13, item 6 -- where the float32 HVP of ResNet-32 (batch norm, train mode) at init loses digits.

At random initialization the float32 Hessian-vector product of ResNet-32 at batch 100 is 5e-3
(relative norm) from the float64 one, where the demo CNN is at 5e-7 (hvp_cost.py, 'Levers'). This
script bisects the gap on ResNet-32 at init (seed 0), one batch of 100 generated 32×32×3 images,
the same float32 weights and inputs in both dtypes, one fixed Gaussian vector:

- the batch statistics: the float32 pass with its batch-norm moments computed in float64 and cast
  back (the candidate fix), against float64;
- the activation pattern: how many leaky-ReLU units sit on the other side of their kink in the
  float32 pass than in the float64 one, and the float64 operator *in the float32 pass's
  activation region* (every leaky ReLU's slope per unit fixed to the one the float32 pass used);
- the smoothness of the float64 operator itself: the float64 gradient and HVP after a relative
  perturbation of the input of 2^-24 (one float32 rounding) and 2^-30;
- the activation: the same network with tanh in place of leaky ReLU (same weights);
- depth: the gaps per stage, and the flipped units per stage;

then the time of each dtype (interleaved repetitions, medians), and what the gap does to what SLQ
reports: an m-step Lanczos run (same start vector) in float32 and float64, against the
draw-to-draw spread of float32 (a second start vector).

Usage: .venv/bin/python benchmarks/float32_batchnorm.py [--quick] [--steps 20] [--reps 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

BATCH = 100  # the brief: ResNet-32 at batch 100, one batch


def log(message: str) -> None:
    print(message, flush=True)


# ------------------------------------------------------------------------------------------------
# Models: the pair, and the twins the bisection compares against
# ------------------------------------------------------------------------------------------------
def resnet_pair(num_images: int):
    """ResNet-32 at init in float32 and the same weights in float64; inputs float32 and the same
    numbers in float64 (so that the float64 side sees exactly what the float32 side sees)."""
    import numpy as np

    import tfkit
    from hessflow import models

    x32, y = tfkit.cifar_like(num_images, np.float32)
    model32 = models.resnet32(dtype="float32", seed=0)
    model64 = models.resnet32(dtype="float64", seed=0)
    model64.set_weights([w.astype(np.float64) for w in model32.get_weights()])
    return model32, model64, x32, x32.astype(np.float64), y


def leaky_layers(model):
    import keras

    return [layer for layer in model.layers if isinstance(layer, keras.layers.LeakyReLU)]


def pre_activations(model, x) -> dict:
    """Each leaky ReLU's input in a train-mode forward pass with hessflow's batch statistics:
    ``{layer name: (batch, ...) array}``."""
    import keras

    from hessflow.batchnorm import exact_batch_statistics

    layers = leaky_layers(model)
    probe = keras.Model(model.input, [layer.input for layer in layers])
    with exact_batch_statistics(model):
        values = probe(x, training=True)
    return {layer.name: value.numpy() for layer, value in zip(layers, values)}


def flips(a: dict, b: dict) -> dict:
    """Units whose pre-activation has a different sign in ``a`` and ``b``, per layer."""
    import numpy as np

    return {name: int(np.sum((a[name] > 0) != (b[name] > 0))) for name in a}


def region_twin(model64, positive: dict):
    """``model64`` with each leaky ReLU replaced by the linear piece per unit given by
    ``positive`` (``{layer name: bool array of the batch's pre-activation shape}``): slope 1 where
    True, the leaky slope elsewhere. Same values up to the few units that differ, and the same
    first and second derivatives as a pass that sits in that activation region."""
    import keras
    import tensorflow as tf

    class RegionLeakyReLU(keras.layers.Layer):
        def __init__(self, mask, slope, **kwargs):
            super().__init__(**kwargs)
            self.mask = tf.constant(mask)
            self.slope = float(slope)

        def call(self, z):
            # The slope is a constant of the region, not a function of z: d(z·s)/dz = s.
            return z * tf.where(self.mask, tf.ones((), z.dtype), tf.constant(self.slope, z.dtype))

    def clone(layer):
        if isinstance(layer, keras.layers.LeakyReLU):
            return RegionLeakyReLU(positive[layer.name], layer.negative_slope, dtype=layer.dtype_policy,
                                   name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    twin = keras.models.clone_model(model64, clone_function=clone)
    twin.set_weights(model64.get_weights())
    return twin


def tanh_twin(model):
    """``model`` with tanh in place of every leaky ReLU, same weights: no kinks."""
    import keras

    def clone(layer):
        if isinstance(layer, keras.layers.LeakyReLU):
            return keras.layers.Activation("tanh", dtype=layer.dtype_policy, name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    twin = keras.models.clone_model(model, clone_function=clone)
    twin.set_weights(model.get_weights())
    return twin


@contextlib.contextmanager
def float64_moments():
    """While functions are traced inside the block, hessflow's batch-norm moments are computed
    in float64 and cast back to the compute dtype (the candidate fix)."""
    import tensorflow as tf

    from hessflow import batchnorm

    original = batchnorm._moments

    def moments(layer, inputs, mask):
        axes = layer._reduction_axes
        wide = tf.cast(inputs, tf.float64)
        mean = tf.reduce_mean(wide, axis=axes, keepdims=True)
        variance = tf.reduce_mean(tf.square(wide - mean), axis=axes)
        return tf.cast(tf.squeeze(mean, axis=axes), inputs.dtype), tf.cast(variance, inputs.dtype)

    batchnorm._moments = moments
    try:
        yield
    finally:
        batchnorm._moments = original


def operator(model, x, y, dtype: str):
    import tfkit
    from hessflow.hvp import HessianOperator

    return HessianOperator(model, [(x, y)], tfkit.LOSS, batch_norm="train", dtype=dtype)


def relative(a, b) -> float:
    import numpy as np

    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ------------------------------------------------------------------------------------------------
# The bisection
# ------------------------------------------------------------------------------------------------
def stage_of(name: str) -> str:
    return {"unit_1": "stage 1 (16 ch)", "unit_2": "stage 2 (32 ch)", "unit_3": "stage 3 (64 ch)"}.get(
        name[:6], "input conv" if name.startswith("init") else "head (final BN, dense)")


def bisection(num_images: int, steps: int, reps: int):
    import numpy as np

    from hessflow.density import ritz, spectral_wasserstein1, summarize
    from hessflow.lanczos import lanczos

    model32, model64, x32, x64, y = resnet_pair(num_images)
    op32, op64 = operator(model32, x32, y, "float32"), operator(model64, x64, y, "float64")
    v = np.random.default_rng(0).standard_normal(op32.dim)
    log(f"ResNet-32 n={op32.dim:,}, N={num_images}, one batch")
    g32, g64 = op32.loss_and_gradient()[1], op64.loss_and_gradient()[1]
    h32, h64 = op32.matvec(v), op64.matvec(v)
    z32, z64 = pre_activations(model32, x32), pre_activations(model64, x64)
    flipped = flips(z32, z64)
    units = sum(z.size for z in z32.values())
    near = {t: sum(int(np.sum(np.abs(z) < t)) for z in z64.values()) for t in (1e-7, 1e-5)}
    error = {name: float(np.abs(z32[name] - z64[name]).max()) for name in z32}
    rows = [["float32 (hessflow default)", "float64", relative(g32, g64), relative(h32, h64), sum(flipped.values())]]
    log(f"  default: {rows[-1]}")

    with float64_moments():  # trace the variant inside the block
        op_moments = operator(model32, x32, y, "float32")
        g_m, h_m = op_moments.loss_and_gradient()[1], op_moments.matvec(v)
        z_m = pre_activations(model32, x32)
    rows.append(["float32, batch-norm moments in float64", "float64", relative(g_m, g64), relative(h_m, h64),
                 sum(flips(z_m, z64).values())])
    log(f"  float64 moments: {rows[-1]}")

    twin = region_twin(model64, {name: z > 0 for name, z in z32.items()})
    op_region = operator(twin, x64, y, "float64")
    g_r, h_r = op_region.loss_and_gradient()[1], op_region.matvec(v)
    rows.append(["float32 (hessflow default)", "float64 in float32's activation region", relative(g32, g_r),
                 relative(h32, h_r), 0])
    rows.append(["float64 in float32's activation region", "float64", relative(g_r, g64), relative(h_r, h64),
                 sum(flipped.values())])
    log(f"  region: {rows[-2:]}")
    del twin, op_region

    noise = np.random.default_rng(5).standard_normal(x64.shape)
    for exponent in (24, 30):
        x_moved = x64 * (1 + 2.0 ** -exponent * noise)
        op_moved = operator(model64, x_moved, y, "float64")
        rows.append([f"float64, input × (1 + 2^-{exponent} ξ)", "float64",
                     relative(op_moved.loss_and_gradient()[1], g64), relative(op_moved.matvec(v), h64),
                     sum(flips(pre_activations(model64, x_moved), z64).values())])
        log(f"  moved input: {rows[-1]}")
        del op_moved

    tanh32, tanh64 = tanh_twin(model32), tanh_twin(model64)
    t32, t64 = operator(tanh32, x32, y, "float32"), operator(tanh64, x64, y, "float64")
    rows.append(["float32, tanh for leaky ReLU (same weights)", "float64, tanh",
                 relative(t32.loss_and_gradient()[1], t64.loss_and_gradient()[1]),
                 relative(t32.matvec(v), t64.matvec(v)), "–"])
    log(f"  tanh: {rows[-1]}")
    del t32, t64, tanh32, tanh64

    # Depth: per stage, the gaps of the variables in it and the units flipped in it.
    names = [w.path for w in model32.trainable_variables]
    bounds = np.cumsum([0] + [int(np.prod(w.shape)) for w in model32.trainable_variables])
    depth = []
    for stage in dict.fromkeys(stage_of(name) for name in names):
        pieces = [slice(bounds[i], bounds[i + 1]) for i, name in enumerate(names) if stage_of(name) == stage]
        pick = np.concatenate([np.arange(s.start, s.stop) for s in pieces])
        layers = [name for name in z32 if stage_of(name) == stage or (stage.startswith("head") and name == "final_act")]
        depth.append([stage, sum(flipped[name] for name in layers),
                      max([error[name] for name in layers], default=float("nan")),
                      relative(g32[pick], g64[pick]), relative(h32[pick], h64[pick])])

    # Cost: interleaved, medians.
    with float64_moments():
        op_moments = operator(model32, x32, y, "float32")
        op_moments.matvec(v)
    times = common.interleaved({
        "HVP, float32 (hessflow default)": lambda: op32.matvec(v),
        "HVP, float32 with float64 batch-norm moments": lambda: op_moments.matvec(v),
        "HVP, float64": lambda: op64.matvec(v),
        "gradient, float32": op32.loss_and_gradient,
        "gradient, float64": op64.loss_and_gradient,
    }, reps, log=log)
    base = common.median(times["HVP, float32 (hessflow default)"])
    cost = [[name, common.median(t), common.median(t) / base] for name, t in times.items()]

    # What SLQ reports: m steps from the same start vector in both dtypes, and a second float32 draw.
    runs = {}
    for label, op, seed in (("float32, draw 0", op32, (0, 0, 0)), ("float64, draw 0", op64, (0, 0, 0)),
                            ("float32, draw 1", op32, (0, 0, 1))):
        start = time.perf_counter()
        result = lanczos(op.matvec, op.dim, steps, seed=seed, keep_vectors=False)
        runs[label] = ritz(result.tridiag)
        log(f"  lanczos {label}: {time.perf_counter() - start:.0f} s")
    stats = {label: summarize([q[0]], [q[1]], op32.dim) for label, q in runs.items()}
    width = stats["float64, draw 0"]["lambda_max"] - stats["float64, draw 0"]["lambda_min"]
    kernel_sd = float(np.sqrt(1e-5 * max(1.0, width)))
    slq = []
    for label, other in (("float32, draw 0", "float64, draw 0"), ("float32, draw 1", "float32, draw 0")):
        a, b = stats[label], stats[other]
        slq.append([f"{label} vs {other}", abs(a["lambda_max"] - b["lambda_max"]) / abs(b["lambda_max"]),
                    abs(a["lambda_min"] - b["lambda_min"]) / width, abs(a["trace"] - b["trace"]) / abs(b["trace"]),
                    spectral_wasserstein1(*runs[label], *runs[other]) / width])
    spectra = [[label, s["lambda_max"], s["lambda_min"], s["trace"]] for label, s in stats.items()]
    facts = {"units": units, "near": near, "kernel_sd": kernel_sd, "width": width, "n": op32.dim}
    return rows, depth, cost, slq, spectra, facts


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8 Lanczos steps, 2 repetitions")
    parser.add_argument("--steps", type=int, default=20, help="Lanczos steps of the SLQ comparison")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.reps = 8, 2

    load_before = common.load_average()
    wall = time.perf_counter()
    rows, depth, cost, slq, spectra, facts = bisection(BATCH, args.steps, args.reps)
    body = [
        f"ResNet-32 (batch norm, train mode, leaky ReLU 0.1) at init (seed 0), n = {facts['n']:,}; one batch of "
        f"{BATCH} generated 32×32×3 images; the same float32 weights and inputs in both dtypes; gaps are "
        "relative norms ‖a − b‖ / ‖b‖ of the full gradient and of H·v for one fixed Gaussian v. "
        f"{facts['units']:,} leaky-ReLU units per pass; in float64, {facts['near'][1e-7]} of them have "
        f"|pre-activation| < 1e-7 and {facts['near'][1e-5]} < 1e-5.",
        "",
        common.markdown_table(["variant", "against", "gradient gap", "HVP gap", "units across a kink"], rows),
        "",
        "*units across a kink*: leaky-ReLU units whose pre-activation has the other sign than in the "
        "compared pass. *float64 in float32's activation region*: the float64 network with each unit's slope "
        "fixed to the one the float32 pass used (1 or 0.1), i.e. the exact Hessian of the linear piece the "
        "float32 pass lands in. Reading: float32's own arithmetic error is row 3, at the level of the "
        "tanh twin (last row); the float32-vs-float64 gap is row 4, the distance between the Hessians of two "
        "adjacent linear pieces, which the float64 operator jumps by when a float32-sized change of its input "
        "alone moves units across (row 5), while a smaller change moves it smoothly and not at all (row 6).",
        "",
        "### Along the depth (float32 vs float64, per stage)",
        "",
        common.markdown_table(["stage", "units across a kink", "max abs(z32 − z64), pre-activations",
                               "gradient gap", "HVP gap"], depth),
        "",
        f"### Cost (medians of {args.reps} interleaved repetitions)",
        "",
        common.markdown_table(["pass", "s", "/ float32 HVP"], cost),
        "",
        f"### What SLQ reports: {args.steps} Lanczos steps",
        "",
        common.markdown_table(["run", "λmax", "λmin", "trace (1 draw)"], spectra),
        "",
        common.markdown_table(["comparison", "Δλmax / λmax", "Δλmin / (λmax − λmin)", "Δtrace / trace",
                               "W1(Ritz measures) / (λmax − λmin)"], slq),
        "",
        "Differences are absolute values. *float32 draw 1 vs draw 0*: the spread SLQ has anyway, from its "
        "random start vector (same dtype, another seed).",
        "",
        f"Density kernel standard deviation at the defaults (σ² = 1e-5): {facts['kernel_sd']:.3g}, "
        f"= {facts['kernel_sd'] / facts['width']:.2e} of λmax − λmin.",
        "",
        f"Script wall time: {time.perf_counter() - wall:.0f} s.",
    ]
    common.append_results("Issue 13 item 6: float32 where batch norm is sharp (float32_batchnorm.py)",
                          "\n".join(body), common.versions("tensorflow", "keras", "numpy", "scipy"), load_before)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
