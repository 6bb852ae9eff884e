"""Document-sharded search: the layout for corpora larger than one serving process (see docs/scale.md).

The corpus is split by document id (``id % n_shards``) into shards, each an :class:`EmbeddingIndex` over its
documents with the global ids; a query fans out to every shard and a merge keeps the global top-k by cosine.
Scores are comparable across shards because every shard scores the same normalized vectors (exact for flat
indexes and for refined IVF-PQ results), so the merged top-k of exact shards equals the unsharded top-k.

Here the shards live in one process and are searched one after another; in production each is a process
or a machine and the fan-out runs in parallel, so a query costs the slowest shard plus the merge. The
benchmark (``python -m bench.shard_bench``) measures both against one index over the whole corpus.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ann.index import EmbeddingIndex, IndexConfig


class ShardedIndex:
    """Shards of one corpus, searched by fan-out and merge."""

    def __init__(self, shards: Sequence[EmbeddingIndex]):
        if not shards:
            raise ValueError("a sharded index needs at least one shard")
        dims = {s.dim for s in shards}
        if len(dims) != 1:
            raise ValueError(f"shards disagree on the dimension: {sorted(dims)}")
        self.shards = list(shards)

    @classmethod
    def build(cls, vectors: np.ndarray, ids: np.ndarray, n_shards: int,
              config: IndexConfig | None = None, progress: bool = False) -> "ShardedIndex":
        """One index per shard of ``ids % n_shards``, each sized for its own corpus (``config`` overrides)."""
        if n_shards < 1:
            raise ValueError(f"n_shards must be >= 1, got {n_shards}")
        ids = np.asarray(ids, np.int64)
        shards = []
        for s in range(n_shards):
            rows = np.flatnonzero(ids % n_shards == s)
            if not len(rows):
                continue
            cfg = config or IndexConfig.for_corpus(len(rows), vectors.shape[1])
            shards.append(EmbeddingIndex.build(vectors[rows], ids[rows], cfg, progress=progress))
        return cls(shards)

    @property
    def ntotal(self) -> int:
        return sum(s.ntotal for s in self.shards)

    def search(self, queries: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Global top-``k`` (scores, ids) per query: every shard's top-k, merged by score (ties by id)."""
        parts = [s.search(queries, k, nprobe=nprobe) for s in self.shards]
        return merge_top_k([p[0] for p in parts], [p[1] for p in parts], k)


def merge_top_k(scores: Sequence[np.ndarray], ids: Sequence[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard result lists [nq, k_i] into the best ``k`` per query (missing results: id -1, -inf)."""
    s = np.concatenate(scores, axis=1).astype(np.float32)
    i = np.concatenate(ids, axis=1).astype(np.int64)
    s = np.where(i >= 0, s, -np.inf)
    order = np.lexsort((i, -s), axis=1)[:, :k]  # best score first, then the smaller id
    top_s, top_i = np.take_along_axis(s, order, axis=1), np.take_along_axis(i, order, axis=1)
    if top_s.shape[1] < k:
        pad = k - top_s.shape[1]
        top_s = np.pad(top_s, ((0, 0), (0, pad)), constant_values=-np.inf)
        top_i = np.pad(top_i, ((0, 0), (0, pad)), constant_values=-1)
    return top_s, np.where(np.isfinite(top_s), top_i, -1)


__all__ = ["ShardedIndex", "merge_top_k"]
