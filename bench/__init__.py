"""Benchmarks and load: model formats side by side, the service under load, robustness to noisy text, training
speed, and the load generator they share. Nothing here is imported by training, release or the service."""
