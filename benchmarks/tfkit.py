"""TensorFlow-side helpers for the benchmarks (hessflow's venv).

Full-data loops over hessflow's own per-batch kernels (`hessflow.kernels`, the
functions `hessflow.hvp.HessianOperator` runs), in the variants the benchmarks
compare: forward-over-reverse (hessflow's) and double backprop
(reverse-over-reverse), XLA (`jit_compile=True`), and on-device accumulation.
"""

from __future__ import annotations

import time

import keras
import numpy as np
import tensorflow as tf

from hessflow import data, kernels, models
from hessflow.lanczos import lanczos

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
LEAKY = 0.1


# ------------------------------------------------------------------------------------------------
# Models and data
# ------------------------------------------------------------------------------------------------
def resnet_nobn(dtype: str = "float32", seed: int = 0, input_shape=(32, 32, 3), num_classes: int = 10) -> keras.Model:
    """A ResNet without batch norm (75,050 parameters), written so that a PyTorch port is exact.

    3x3 conv 3->16 (bias) -> three pre-activation residual units with 16/32/64 filters and strides
    1/2/2 (leaky ReLU 0.1 -> conv -> leaky ReLU -> conv, biases; shortcut: identity, or average
    pool + channel zero-pad when the width changes) -> leaky ReLU -> global average pool -> dense
    10. Every conv pads explicitly with ZeroPadding2D(1) then 'valid', which is what torch's
    padding=1 does (Keras 'same' with stride 2 would pad (0, 1)).
    """
    seeds = np.random.SeedSequence(seed)

    def init():
        (child,) = seeds.spawn(1)
        return keras.initializers.HeNormal(seed=int(child.generate_state(1)[0] >> 1))

    def conv(x, filters, stride, name):
        x = keras.layers.ZeroPadding2D(1, dtype=dtype, name=f"{name}_pad")(x)
        return keras.layers.Conv2D(filters, 3, strides=stride, padding="valid", kernel_initializer=init(),
                                   dtype=dtype, name=name)(x)

    inputs = keras.Input(input_shape, dtype=dtype)
    x = conv(inputs, 16, 1, "init_conv")
    width = 16
    for stage, (filters, stride) in enumerate(zip((16, 32, 64), (1, 2, 2)), 1):
        shortcut = x
        y = keras.layers.LeakyReLU(LEAKY, dtype=dtype)(x)
        y = conv(y, filters, stride, f"unit{stage}_conv1")
        y = keras.layers.LeakyReLU(LEAKY, dtype=dtype)(y)
        y = conv(y, filters, 1, f"unit{stage}_conv2")
        if filters != width:
            shortcut = keras.layers.AveragePooling2D(stride, stride, "valid", dtype=dtype)(shortcut)
            half = (filters - width) // 2
            shortcut = models.ChannelZeroPad(half, half, dtype=dtype)(shortcut)
        x = keras.layers.Add(dtype=dtype)([y, shortcut])
        width = filters
    x = keras.layers.LeakyReLU(LEAKY, dtype=dtype)(x)
    x = keras.layers.GlobalAveragePooling2D(dtype=dtype)(x)
    logits = keras.layers.Dense(num_classes, kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
                                dtype=dtype, name="logits")(x)
    return keras.Model(inputs, logits, name="resnet_nobn")


def digits(dtype=np.float32):
    images, labels = data.load_digits()
    return data.standardize_per_image(images, dtype=dtype), labels


def cifar_like(num_examples: int, dtype=np.float32, seed: int = 0):
    """Generated CIFAR-10-sized data (32x32x3, 10 classes), per-image standardized."""
    images, labels = data.synthetic_dataset(num_examples, (32, 32, 3), 10, seed=seed)
    return data.standardize_per_image(images, dtype=dtype), labels


def activation_bytes(model: keras.Model, batch_size: int) -> int:
    """Sum of every layer's output size for one batch: the activations a forward pass keeps."""
    itemsize = np.dtype(model.trainable_variables[0].dtype).itemsize
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        outputs = layer.output if isinstance(layer.output, (list, tuple)) else [layer.output]
        for out in outputs:
            total += int(np.prod(out.shape[1:])) * batch_size * itemsize
    return total


# ------------------------------------------------------------------------------------------------
# Full-data passes over hessflow's per-batch kernels, in variants
# ------------------------------------------------------------------------------------------------
class PassFunctions:
    """Per-batch traced functions of one model and a full-data loop over fixed batches.

    The kernels are hessflow's own (`hessflow.kernels`), not copies: ``method`` "for"
    (forward-over-reverse, what `HessianOperator` runs) or "dbp" (double backprop);
    ``jit``: XLA compile (``jit_compile=True``); ``accumulate``: "host" (numpy float64 per batch,
    as hessflow) or "device" (one tf float64 sum, one transfer per pass).
    """

    def __init__(self, model, batches, loss=LOSS, training=True, jit=False):
        self.model = model
        self.compute_dtype = tf.as_dtype(model.trainable_variables[0].dtype)

        def tensor(a):  # floating inputs in the compute dtype, as HessianOperator does
            a = np.asarray(a)
            return tf.constant(a, self.compute_dtype if np.issubdtype(a.dtype, np.floating) else None)

        self.batches = [(tensor(x), tensor(y)) for x, y in batches]
        self.num_examples = sum(int(x.shape[0]) for x, _ in self.batches)
        self.dim = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
        x_spec, y_spec = kernels.batch_specs(*self.batches[0])
        specs = dict(training=training, jit_compile=jit)
        self._fns = {
            "for": kernels.traced_hvp_sum(model, loss, x_spec, y_spec, method="forward_over_reverse", **specs),
            "dbp": kernels.traced_hvp_sum(model, loss, x_spec, y_spec, method="double_backprop", **specs),
        }
        self._gradient_fn = kernels.traced_loss_and_gradient_sum(model, loss, x_spec, y_spec, **specs)

    def hvp(self, v, method="for", accumulate="host") -> np.ndarray:
        fn = self._fns[method]
        v_compute = tf.constant(np.asarray(v), self.compute_dtype)
        if accumulate == "host":
            total = np.zeros(self.dim)
            for x, y in self.batches:
                total += fn(x, y, v_compute).numpy()
        else:
            total = tf.zeros(self.dim, tf.float64)
            for x, y in self.batches:
                total = total + fn(x, y, v_compute)
            total = total.numpy()
        return total / self.num_examples

    def gradient(self) -> np.ndarray:
        total = np.zeros(self.dim)
        for x, y in self.batches:
            total += self._gradient_fn(x, y)[1].numpy()
        return total / self.num_examples


def relative_difference(a, b) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


# ------------------------------------------------------------------------------------------------
# Lanczos bookkeeping
# ------------------------------------------------------------------------------------------------
def timed_lanczos(matvec, dim: int, num_steps: int, seed=(0, 0, 0)):
    """Run hessflow's lanczos; return (result, total seconds, seconds inside matvec)."""
    inside = [0.0]

    def timed(v):
        start = time.perf_counter()
        out = matvec(v)
        inside[0] += time.perf_counter() - start
        return out

    start = time.perf_counter()
    result = lanczos(timed, dim, num_steps, seed=seed, keep_vectors=False)
    return result, time.perf_counter() - start, inside[0]


def lanczos_overhead(dim: int, num_steps: int, seed=(0, 0, 0)) -> float:
    """Seconds a whole ``num_steps``-step hessflow lanczos spends outside its operator
    (reorthogonalization, norms, bookkeeping) for a ``dim``-dimensional problem, measured with a
    stand-in operator (a fresh Gaussian vector per call, whose own time is excluded)."""
    rng = np.random.default_rng(1)
    _, total, inside = timed_lanczos(lambda v: rng.standard_normal(dim), dim, num_steps, seed)
    return total - inside
