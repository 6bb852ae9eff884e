"""Exact k-nearest-neighbour search of query embeddings over document embeddings, in bounded memory: the
oracle of evaluation and of the ensembles' first stage (the ANN index is :mod:`ann.index`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

SCORE_BLOCK = 2**26  # scores per block of queries (256 MB of float32): bounded whatever the corpus size


def top_k(
    query_emb: np.ndarray, doc_emb: np.ndarray, k: int, chunk: int = 2048,
    exclude_rows: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """Exact inner-product KNN: (n_queries, k) document rows, best first; ``exclude_rows[i]`` are never
    returned for query i (-1 pads a row when fewer than k documents remain). Queries go in blocks of at most
    ``chunk``, fewer on a large corpus, so the score matrix stays within :data:`SCORE_BLOCK` (at 1M
    documents a block of 2,048 queries would be 8 GB)."""
    k = min(k, len(doc_emb))
    chunk = max(1, min(chunk, SCORE_BLOCK // max(len(doc_emb), 1)))
    d = torch.from_numpy(np.ascontiguousarray(doc_emb, dtype=np.float32))
    out = np.empty((len(query_emb), k), np.int64)
    for s in range(0, len(query_emb), chunk):
        q = torch.from_numpy(np.ascontiguousarray(query_emb[s : s + chunk], dtype=np.float32))
        scores = q @ d.T
        if exclude_rows is not None:
            ex = exclude_rows[s : s + chunk]
            r = np.repeat(np.arange(len(ex)), [len(e) for e in ex])
            if len(r):
                scores[torch.from_numpy(r), torch.from_numpy(np.concatenate(ex).astype(np.int64))] = -torch.inf
        val, idx = scores.topk(k, dim=1)
        out[s : s + chunk] = np.where(torch.isinf(val).numpy(), -1, idx.numpy())
    return out
