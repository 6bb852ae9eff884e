"""Benchmarks, baselines and library peers: research code on top of the product, run from a checkout
(``python -m bench.<name>``); nothing in the product imports it."""
