"""The held-out evaluation protocol of the flows: a model's metrics on a split, exact or through the ANN index."""
