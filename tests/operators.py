"""Explicit-matrix operators for the TensorFlow-free tests (test_eigenpairs, test_deflation)."""

from __future__ import annotations


class CountingOperator:
    """``v -> a @ v`` for an explicit matrix ``a``, counting its applications in ``calls``."""

    def __init__(self, a):
        self.a, self.calls = a, 0

    def __call__(self, v):
        self.calls += 1
        return self.a @ v
