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

from ann.index import EmbeddingIndex
from ann.recall import exact_neighbours


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


    def to_svg(self, width: int = 560, height: int = 300) -> str:
        """The curve as a picture: recall@k against nprobe (log scale), the target as a dashed line, the
        chosen nprobe marked, each point labelled with its cost. Plain SVG, no plotting library."""
        left, right, top, bottom = 56, 20, 28, 44
        w, h = width - left - right, height - top - bottom
        xs = [p.nprobe for p in self.curve]
        lo_x, hi_x = np.log2(min(xs)), np.log2(max(xs))
        lo_y = min(0.5, min(p.recall for p in self.curve), self.target_recall) // 0.1 * 0.1

        def x(n: float) -> float:
            return left + (w * (np.log2(n) - lo_x) / (hi_x - lo_x) if hi_x > lo_x else w / 2)

        def y(r: float) -> float:
            return top + h * (1 - (r - lo_y) / (1 - lo_y))

        parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
                 f'font-family="sans-serif" font-size="11">',
                 f'<rect width="{width}" height="{height}" fill="white"/>',
                 f'<text x="{left}" y="16" font-size="13">ANN tuning: recall@{self.k} vs nprobe '
                 f'({self.n_queries} held-out queries)</text>',
                 f'<line x1="{left}" y1="{top + h}" x2="{left + w}" y2="{top + h}" stroke="black"/>',
                 f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + h}" stroke="black"/>']
        for tick in np.arange(lo_y, 1.0001, 0.1):
            parts.append(f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:.1f}</text>')
            parts.append(f'<line x1="{left}" y1="{y(tick):.1f}" x2="{left + w}" y2="{y(tick):.1f}" '
                         'stroke="#eee"/>')
        for n in xs:
            parts.append(f'<text x="{x(n):.1f}" y="{top + h + 16}" text-anchor="middle">{n}</text>')
        parts.append(f'<text x="{left + w / 2}" y="{height - 8}" text-anchor="middle">nprobe (IVF lists '
                     'scanned per query)</text>')
        parts.append(f'<line x1="{left}" y1="{y(self.target_recall):.1f}" x2="{left + w}" '
                     f'y2="{y(self.target_recall):.1f}" stroke="#c00" stroke-dasharray="6 4"/>')
        parts.append(f'<text x="{left + w}" y="{y(self.target_recall) - 5:.1f}" text-anchor="end" '
                     f'fill="#c00">target {self.target_recall:.3f}</text>')
        points = " ".join(f"{x(p.nprobe):.1f},{y(p.recall):.1f}" for p in self.curve)
        parts.append(f'<polyline points="{points}" fill="none" stroke="#1f5fa8" stroke-width="2"/>')
        for p in self.curve:
            chosen = p.nprobe == self.chosen_nprobe
            parts.append(f'<circle cx="{x(p.nprobe):.1f}" cy="{y(p.recall):.1f}" r="{6 if chosen else 3}" '
                         f'fill="{"#c00" if chosen else "#1f5fa8"}"/>')
            parts.append(f'<text x="{x(p.nprobe):.1f}" y="{y(p.recall) + 16:.1f}" text-anchor="middle" '
                         f'fill="#555">{p.ms_per_query:.2f} ms</text>')
        return "\n".join([*parts, "</svg>"]) + "\n"

    def to_markdown_image(self) -> str:
        """The SVG inline in markdown (a data URI), for the run's report."""
        import base64

        data = base64.b64encode(self.to_svg().encode()).decode()
        return f"![ANN tuning: recall@{self.k} vs nprobe](data:image/svg+xml;base64,{data})"


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
    truth = exact_neighbours(vectors, queries, k)
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
