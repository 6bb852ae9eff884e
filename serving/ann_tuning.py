"""Automatic ANN tuning: the least ``nprobe`` that meets a recall target, from a measured recall/cost curve.

An IVF index's default ``nprobe`` (``IndexConfig.for_corpus``: nlist / 32) is a guess: how many lists a query
must scan to find its true neighbours depends on the model's embedding space, which changes with every
retrain (a 128-d ensemble needed 4x the default on the default world; a 1M corpus needs more than 256). The
nightly rebuild therefore measures, on held-out queries, ANN recall@k against exact search and the search
cost for a ladder of nprobe values (doubling from 1 up to nlist), and keeps the smallest nprobe whose recall
meets the target. Cost grows with nprobe, so the smallest qualifying value is the cheapest.

The curve and the choice go into the index manifest and the run's report. The queries used for tuning are
not the ones the publish gate then measures, so the gate checks the choice on fresh queries; when no
nprobe meets the target, the largest tried is kept and the gate refuses to publish.
"""

from __future__ import annotations

import time

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from serving.index import EmbeddingIndex
from serving.index_validation import exact_top_k


class TuningConfig(BaseModel):
    """How the rebuild chooses the index's default nprobe."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(True, description="tune nprobe on held-out queries (False: keep the configured one)")
    target_recall: float | None = Field(
        None, ge=0.0, le=1.0,
        description="ANN recall@k to reach; None: the publish gate's min_recall plus margin")
    margin: float = Field(0.01, ge=0.0, le=0.2, description="added to min_recall when target_recall is None")
    max_nprobe: int = Field(2048, ge=1, description="the largest nprobe tried")
    n_queries: int = Field(500, ge=10, le=100_000, description="tuning queries (not those of the gate)")


class CurvePoint(BaseModel):
    nprobe: int
    recall: float
    ms_per_query: float


class TuningResult(BaseModel):
    k: int
    target_recall: float
    chosen_nprobe: int
    met_target: bool
    n_queries: int
    curve: list[CurvePoint]

    def to_markdown(self) -> str:
        verdict = (f"nprobe {self.chosen_nprobe} is the least meeting recall@{self.k} >= {self.target_recall:.3f}"
                   if self.met_target else
                   f"no nprobe tried reached recall@{self.k} {self.target_recall:.3f}: kept {self.chosen_nprobe}")
        rows = [f"| {p.nprobe}{' (chosen)' if p.nprobe == self.chosen_nprobe else ''} | {p.recall:.4f} | "
                f"{p.ms_per_query:.3f} |" for p in self.curve]
        return "\n".join([f"ANN tuning on {self.n_queries} held-out queries: {verdict}.", "",
                          f"| nprobe | recall@{self.k} | ms/query (batch, 1 thread) |", "|---:|---:|---:|", *rows])


def nprobe_ladder(nlist: int, max_nprobe: int) -> list[int]:
    """1, 2, 4, ... up to min(nlist, max_nprobe), the last value included."""
    top = max(1, min(nlist, max_nprobe))
    out, p = [], 1
    while p < top:
        out.append(p)
        p *= 2
    return out + [top]


def tune_nprobe(index: EmbeddingIndex, vectors: np.ndarray, queries: np.ndarray, k: int,
                target_recall: float, max_nprobe: int = 2048) -> TuningResult:
    """Measure the recall/cost curve of ``index`` (IVF) and choose its default nprobe (see the module
    docstring). ``vectors`` are the indexed vectors in id order (ids = row positions), for exact search."""
    if index.kind == "flat":
        raise ValueError("a flat index is exact: there is no nprobe to tune")
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    truth = exact_top_k(vectors, queries, k)
    curve: list[CurvePoint] = []
    chosen = None
    for nprobe in nprobe_ladder(index.config.nlist or 1, max_nprobe):
        t = time.perf_counter()
        _, got = index.search(queries, truth.shape[1], nprobe=nprobe)
        ms = (time.perf_counter() - t) * 1e3 / len(queries)
        hits = sum(len(np.intersect1d(a, b[b >= 0])) for a, b in zip(truth, got))
        curve.append(CurvePoint(nprobe=nprobe, recall=round(hits / truth.size, 4), ms_per_query=round(ms, 4)))
        if chosen is not None:
            break  # one step past the choice shows what doubling would buy; cost only grows from here
        if curve[-1].recall >= target_recall:
            chosen = nprobe
    met = chosen is not None
    return TuningResult(k=truth.shape[1], target_recall=target_recall, chosen_nprobe=chosen or curve[-1].nprobe,
                        met_target=met, n_queries=len(queries), curve=curve)


__all__ = ["CurvePoint", "TuningConfig", "TuningResult", "nprobe_ladder", "tune_nprobe"]
