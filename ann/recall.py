"""How close an approximate index comes to exact search: the exact oracle, ANN recall@k against it, and
held-out recall (what searchers clicked that the index still returns).

Recall@k is measured the way FAISS's own tests check approximate search: on a sample of queries, the share
of the exact top-k (brute force over every document embedding) that the index returns in its top-k. The
exact oracle reads the embeddings in chunks (they may be a memory-mapped file), so measuring needs no more
memory than the index build.
"""

from __future__ import annotations

import numpy as np

from ann.index import EmbeddingIndex


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def exact_neighbours(vectors: np.ndarray, queries: np.ndarray, k: int, chunk: int = 8192) -> np.ndarray:
    """Row positions of the exact top-``k`` cosine neighbours of each query ([nq, min(k, n)]), best first.

    ``vectors`` may be a memory-mapped file: it is read ``chunk`` rows at a time, keeping a running top-k.
    """
    n = len(vectors)
    if n == 0:
        raise ValueError("no document vectors to search")
    k = min(k, n)
    q = _unit_rows(queries)
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for start in range(0, n, chunk):
        block = _unit_rows(vectors[start : start + chunk])
        s = q @ block.T  # [nq, chunk]
        cand_s = np.concatenate([best_s, s], axis=1)
        cand_i = np.concatenate([best_i, np.broadcast_to(np.arange(start, start + len(block)), s.shape)], axis=1)
        kk = min(k, cand_s.shape[1])
        top = np.argpartition(-cand_s, kk - 1, axis=1)[:, :kk]
        best_s = np.take_along_axis(cand_s, top, axis=1)
        best_i = np.take_along_axis(cand_i, top, axis=1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_i, order, axis=1)


def recall_at_k(index: EmbeddingIndex, vectors: np.ndarray, queries: np.ndarray, k: int,
                nprobe: int | None = None, ids: np.ndarray | None = None) -> float:
    """Mean share of the exact top-k that the index returns in its top-k (1.0 = same sets). The index's ids
    are the vectors' row positions unless ``ids`` (one per row) says otherwise."""
    truth = exact_neighbours(vectors, queries, k)
    if ids is not None:
        truth = np.asarray(ids, dtype=np.int64)[truth]
    _, got = index.search(np.ascontiguousarray(queries, dtype=np.float32), truth.shape[1], nprobe=nprobe)
    hits = sum(len(np.intersect1d(t, g[g >= 0])) for t, g in zip(truth, got))
    return hits / truth.size if truth.size else 1.0


def held_out_recall(index: EmbeddingIndex, queries: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Share of queries whose target position (their held-out click; -1 when the document is not indexed)
    is among the index's top ``k``: what searchers clicked and this index would still serve."""
    if not len(queries):
        return 0.0
    _, got = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    targets = np.asarray(targets, dtype=np.int64)
    return float(((got == targets[:, None]) & (targets[:, None] >= 0)).any(axis=1).mean())


__all__ = ["exact_neighbours", "held_out_recall", "recall_at_k"]
