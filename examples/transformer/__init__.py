"""A small transformer classifier on generated token sequences (see config.yaml)."""
