"""PyTorch two-tower embedding models: featurizers, towers, losses, negative sampling, training, evaluation.

One concept per module: ``config`` (typed configs), ``hashing``/``text``/``features`` (featurizers),
``columns`` (input columns and the document-table convention), ``towers`` (the model), ``losses``,
``sampling`` (negatives), ``batches`` + ``objective`` (the training task), ``train`` (the loop),
``checkpoint`` (saving/loading), ``knn`` (exact KNN), ``evaluate`` (recall@K), ``ensemble`` (weighted
concatenation and cascade), ``mining`` + ``rounds`` (offline hard negatives), ``registry`` (registered
model versions), ``pretrained`` + ``vector_store`` (the frozen text encoder and its stored vectors).
Nothing is imported here: importing the package costs nothing.
"""
