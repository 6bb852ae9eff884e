"""The vector index layer: FAISS indexes and what measures them, knowing nothing of models.

``index`` (flat or IVF-PQ with refine: top-k, radius and subset search), ``embedding`` (batch document
embedding to a file, sharded), ``recall`` (the exact oracle, ANN recall@k and held-out recall), ``tuning``
(the smallest nprobe that reaches a recall target). Training-side mining and serving both build on it.
Nothing is imported here: importing the package is free.
"""
