"""Generated tabular regression data: a smooth nonlinear function of 8 features plus noise.

Features are independent standard normals; the target is

    f(x) = sin(x0) + 0.5 x1 x2 + tanh(x3 - x4) + 0.25 (x5² - 1) + 0.3 x6      (x7 is irrelevant)

plus Gaussian noise of standard deviation ``noise_std``. The noise-free part has variance about
1.5, so a model that learns f reaches a mean squared error near ``noise_std²``; predicting the
mean scores about 1.5.
"""

from __future__ import annotations

import numpy as np

NUM_FEATURES = 8
DTYPE = np.float32


def target_function(x: np.ndarray) -> np.ndarray:
    """The noise-free target f(x): (N, 8) features → (N, 1) float64."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != NUM_FEATURES:
        raise ValueError(f"x must have shape (N, {NUM_FEATURES}), got {x.shape}")
    f = (
        np.sin(x[:, 0])
        + 0.5 * x[:, 1] * x[:, 2]
        + np.tanh(x[:, 3] - x[:, 4])
        + 0.25 * (x[:, 5] ** 2 - 1.0)
        + 0.3 * x[:, 6]
    )
    return f[:, None]


def smooth_function(num_train: int = 1600, num_test: int = 400, noise_std: float = 0.1, seed: int = 0):
    """The regression data set, fixed by ``seed`` (a hessflow data factory).

    Args:
        num_train, num_test: examples in each split.
        noise_std: standard deviation of the Gaussian noise added to the targets (>= 0).
        seed: the run seed (hessflow passes it); the same arguments give identical arrays.

    Returns:
        ``((x_train, y_train), (x_test, y_test))``: x ``float32`` (N, 8), y ``float32`` (N, 1).
    """
    if num_train < 1 or num_test < 1:
        raise ValueError(f"num_train and num_test must be >= 1, got {num_train} and {num_test}")
    if not noise_std >= 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    rng = np.random.default_rng(seed)

    def split(num_examples):
        x = rng.standard_normal((num_examples, NUM_FEATURES))
        y = target_function(x) + noise_std * rng.standard_normal((num_examples, 1))
        return x.astype(DTYPE), y.astype(DTYPE)

    return split(num_train), split(num_test)
