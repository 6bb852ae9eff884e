"""PyTorch two-tower embedding models: featurizers, towers, losses, negative sampling, training, evaluation.

One concept per module: ``config`` (typed configs), ``hashing``/``text``/``features`` (featurizers),
``columns`` (input columns and the document-table convention), ``towers`` (the model), ``losses``,
``sampling`` (negatives), ``batches`` + ``objective`` (the training task), ``train`` (the loop),
``checkpoint`` (saving/loading), ``evaluate`` (recall@K), ``toy`` (a synthetic task for tests/benchmarks).
Nothing is imported here: importing the package costs nothing.
"""
