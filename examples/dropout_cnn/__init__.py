"""A CNN with Dropout on scikit-learn's digits (see config.yaml)."""
