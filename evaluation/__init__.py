"""Offline evaluation: the held-out protocol, plain baselines, the model comparison."""
