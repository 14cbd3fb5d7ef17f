"""Test-wide settings: quiet TensorFlow, and deterministic float64 references."""

import os

# Must be set before TensorFlow is imported by any test module.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PYTHONHASHSEED", "0")
