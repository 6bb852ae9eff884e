"""Executes query-language expressions over one published index: posting lists and the nn operator.

Boolean operators work on Roaring bitmaps of index positions. The nn operator searches the FAISS index:
unconstrained at the top of an expression, constrained inside an ``and`` to the documents the rest of the
``and`` allows (its term children are evaluated first). A constrained search either scans the IVF lists
with FAISS's id selector (``EmbeddingIndex.search_subset``; small sets are scored exactly from the stored
vectors) or searches unconstrained deeper and keeps the allowed hits (post-filtering), whichever
``EngineConfig.post_filter_min_share`` says is cheaper for the allowed set's share of the index.

Every matched document gets its cosine to the query embedding (from the stored vectors), including those
that only a term matched: the score later ranking stages take as a feature. Results are ordered by it.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from pyroaring import BitMap

from ann.index import EmbeddingIndex
from serving.query import NN, And, Expr, Not, Or, Term, has_nn
from serving.terms import TermIndex


class UnknownModelKeyError(ValueError):
    """An ``(nn <key> ...)`` whose key is not the model of the served index."""


class EngineConfig(BaseModel):
    """How the nn operator searches under a constraint, and bounds on the work per query."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    post_filter_min_share: float = Field(
        0.5, gt=0.0, le=1.0,
        description="an allowed set holding at least this share of the index is searched unconstrained and "
        "post-filtered (a deeper top-k); smaller sets go through FAISS's id selector",
    )
    post_filter_depth: float = Field(2.0, ge=1.0, description="post-filtering searches k / share * this deep")
    radius_max_results: int = Field(10_000, ge=1, description="most documents one radius search returns")
    max_scored: int = Field(1_000_000, ge=1, description="most matched documents scored by cosine per query")


@dataclass
class Hits:
    """The result of an expression: index positions best first, their cosines, and which came from nn."""

    positions: np.ndarray  # int64
    scores: np.ndarray  # float32 cosine to the query embedding
    from_nn: np.ndarray  # bool
    matched: int  # documents the expression matched (before the limit)


def _bitmap(ids: np.ndarray) -> BitMap:
    ids = np.asarray(ids)
    return BitMap(array("I", ids[ids >= 0].astype(np.uint32).tobytes()))


class Engine:
    """Expressions over one index: ``terms`` and ``index`` describe the same positions 0..n-1."""

    def __init__(self, terms: TermIndex, index: EmbeddingIndex, model_keys: set[str],
                 config: EngineConfig | None = None):
        if terms.n_documents != index.ntotal:
            raise ValueError(f"the term index covers {terms.n_documents} documents but the vector index "
                             f"{index.ntotal}: they must come from the same published version")
        self.terms, self.index, self.model_keys = terms, index, set(model_keys)
        self.config = config or EngineConfig()
        self.n = index.ntotal

    # ------------------------------------------------------------------------------------------ public

    def run(self, expr: Expr, query_vector: np.ndarray | None, limit: int) -> Hits:
        """Evaluate ``expr``; the best ``limit`` matches by cosine (needs ``query_vector`` [1, dim] when
        the expression has an nn operator; without one, term-only matches keep position order and NaN
        scores)."""
        if has_nn(expr) and query_vector is None:
            raise ValueError("the expression has an nn operator: a query vector is needed")
        nn_hits: dict[int, float] = {}
        matched = self._eval(expr, None, query_vector, nn_hits)
        positions = np.asarray(matched.to_array(), dtype=np.int64)[: self.config.max_scored]
        if query_vector is None:
            top = positions[:limit]
            return Hits(top, np.full(len(top), np.nan, np.float32), np.zeros(len(top), bool), len(matched))
        scores = self.index.cosines(query_vector, positions)
        order = np.argsort(-scores, kind="stable")[:limit]
        top = positions[order]
        from_nn = np.fromiter((int(p) in nn_hits for p in top), bool, len(top))
        return Hits(top, scores[order].astype(np.float32), from_nn, len(matched))

    # ------------------------------------------------------------------------------------------ evaluation

    def _eval(self, e: Expr, allowed: BitMap | None, q: np.ndarray | None, nn_hits: dict) -> BitMap:
        if isinstance(e, Term):
            post = self.terms.get(e.term)
            return post & allowed if allowed is not None else post.copy()
        if isinstance(e, And):
            # Term-only children first: they constrain every nn below this and.
            ordered = sorted(e.children, key=has_nn)
            cur = allowed
            for child in ordered:
                cur = self._eval(child, cur, q, nn_hits)
                if not cur:
                    return BitMap()
            assert cur is not None  # an and has children (the parser needs one): cur is a child's result
            return cur
        if isinstance(e, Or):
            return BitMap.union(*(self._eval(c, allowed, q, nn_hits) for c in e.children))
        if isinstance(e, Not):
            base = allowed if allowed is not None else self.terms.universe()
            return base - self._eval(e.child, allowed, q, nn_hits)
        if isinstance(e, NN):
            assert q is not None  # run() refuses an expression with an nn operator but no query vector
            return self._nn(e, allowed, q, nn_hits)
        raise TypeError(f"not an expression: {e!r}")

    def _nn(self, e: NN, allowed: BitMap | None, q: np.ndarray, nn_hits: dict) -> BitMap:
        if e.model not in self.model_keys:
            raise UnknownModelKeyError(f"nn model key {e.model!r} is not served here; known keys: "
                                       f"{sorted(self.model_keys)}")
        if allowed is not None and not allowed:
            return BitMap()
        k = e.k if e.k is not None else self.config.radius_max_results
        k = min(k, self.n)
        if allowed is None:
            if e.radius is not None:
                (ids, scores), = self.index.range_search(q, e.radius, nprobe=e.nprobe, max_results=k)
            else:
                scores, ids = self.index.search(q, k, nprobe=e.nprobe)
                scores, ids = scores[0], ids[0]
        elif len(allowed) / self.n >= self.config.post_filter_min_share:
            scores, ids = self._post_filtered(e, allowed, q, k)
        else:
            scores, ids = self.index.search_subset(q, min(k, len(allowed)), np.asarray(allowed.to_array(), dtype=np.int64),
                                                   nprobe=e.nprobe)
            scores, ids = scores[0], ids[0]
        keep = ids >= 0
        if e.radius is not None:
            keep &= scores >= np.float32(e.radius)
        ids, scores = ids[keep], scores[keep]
        for i, s in zip(ids.tolist(), scores.tolist()):
            nn_hits[i] = s
        return _bitmap(ids)

    def _post_filtered(self, e: NN, allowed: BitMap, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Unconstrained search deep enough to find k allowed documents on average, then filtered."""
        share = len(allowed) / self.n
        depth = min(self.n, int(np.ceil(k / share * self.config.post_filter_depth)))
        if e.radius is not None:
            (ids, scores), = self.index.range_search(q, e.radius, nprobe=e.nprobe, max_results=depth)
        else:
            scores, ids = self.index.search(q, depth, nprobe=e.nprobe)
            scores, ids = scores[0], ids[0]
        ok = np.isin(ids, np.asarray((_bitmap(ids) & allowed).to_array(), dtype=np.int64)) & (ids >= 0)
        scores, ids = scores[ok][:k], ids[ok][:k]
        if len(ids) < k and depth < self.n and e.radius is None:  # too few found: search the set itself
            scores, ids = self.index.search_subset(q, min(k, len(allowed)), np.asarray(allowed.to_array(), dtype=np.int64),
                                                   nprobe=e.nprobe)
            return scores[0], ids[0]
        return scores, ids


__all__ = ["Engine", "EngineConfig", "Hits", "UnknownModelKeyError"]
