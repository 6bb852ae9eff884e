"""Training data: sessions turned into labelled examples, joined point-in-time with features, split by time.

``splits`` (the time split and the held-out cutoffs), ``build`` (positives, negatives, hard positives, the
feature join, the searchers' history, the written splits).
"""
