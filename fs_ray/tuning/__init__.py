"""Hyperparameter sweeps of fine-tuning runs with Ray Tune (``sweep``)."""
