"""An MLP regression with MeanSquaredError on generated tabular data (see config.yaml)."""
