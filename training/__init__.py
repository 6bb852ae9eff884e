"""Training data: sessions turned into labelled examples, joined point-in-time with features, split by time."""
