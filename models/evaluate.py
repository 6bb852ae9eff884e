"""Offline evaluation: the paper's recall@K with exact KNN over the whole document index, MRR, nDCG@10.

Held-out examples are grouped into sessions; a session's target set T is the set of documents clicked in
it, and recall@K = |top-K ∩ T| / |T| (eq. 1), averaged over up to 10,000 sessions (section 2.1). The KNN
is exact (a matmul over all document embeddings), so the figures measure the model, not an index.
MRR and nDCG@10 use graded targets: a qrels frame (session_id, doc_id, relevance) when given, else the
clicks with grade 1. Targets missing from the document table count as misses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence

import numpy as np
import pandas as pd

from models.columns import DOC_ID
from models.ensemble import exact_top_k
from models.knn import top_k


class Embedder(Protocol):
    def embed_queries(self, frame: pd.DataFrame, batch_size: int = ...) -> np.ndarray: ...
    def embed_documents(self, frame: pd.DataFrame, batch_size: int = ...) -> np.ndarray: ...


@dataclass
class EvalSessions:
    queries: pd.DataFrame  # one row per session (its first example): the query tower's input
    targets: list[np.ndarray]  # doc_ids clicked in each session (recall target set)
    graded: list[tuple[np.ndarray, np.ndarray]]  # (doc_ids, relevance) for MRR / nDCG
    # doc_ids each session must not retrieve: what its searcher already consumed in training (the
    # recommendation protocol; None in search). A consumed target then counts as a miss for every method.
    exclude: list[np.ndarray] | None = None


def _session_key(examples: pd.DataFrame) -> pd.Series:
    if "session_id" in examples.columns:
        return examples["session_id"].astype(str)
    cols = [c for c in ("searcher_id", "query", "ts") if c in examples.columns]
    if not cols:
        raise ValueError("examples need a session_id column (or searcher_id/query/ts) to form sessions")
    return examples[cols].astype(str).agg("\x1f".join, axis=1)


def session_targets(
    examples: pd.DataFrame, max_sessions: int = 10_000, seed: int = 0, qrels: pd.DataFrame | None = None,
    consumed: Mapping[str, Sequence[str] | np.ndarray] | None = None,
) -> EvalSessions:
    """Group examples into sessions; keep a seeded random sample of at most ``max_sessions``.

    ``consumed`` (searcher_id -> doc_ids) fills :attr:`EvalSessions.exclude` for each session's searcher.
    """
    if DOC_ID not in examples.columns:
        raise ValueError(f"examples lack {DOC_ID!r}; present: {list(examples.columns)}")
    key = _session_key(examples).to_numpy()
    codes, uniques = pd.factorize(key)
    n = len(uniques)
    chosen = np.arange(n)
    if n > max_sessions:
        chosen = np.sort(np.random.default_rng(seed).choice(n, size=max_sessions, replace=False))
    first = pd.Series(np.arange(len(codes))).groupby(codes).first().to_numpy()
    queries = examples.iloc[first[chosen]].reset_index(drop=True)
    docs = examples[DOC_ID].astype(str).to_numpy()
    order = np.argsort(codes, kind="stable")
    per_session = np.split(docs[order], np.cumsum(np.bincount(codes, minlength=n))[:-1])
    targets = [np.unique(per_session[c]) for c in chosen]
    if qrels is not None:
        q = qrels[qrels["relevance"] > 0]
        groups = {k: (g[DOC_ID].astype(str).to_numpy(), g["relevance"].to_numpy(float))
                  for k, g in q.groupby(q["session_id"].astype(str))}
        empty = (np.zeros(0, object), np.zeros(0))
        graded = [groups.get(str(uniques[c]), empty) for c in chosen]
    else:
        graded = [(t, np.ones(len(t))) for t in targets]
    exclude = None
    if consumed is not None:
        empty_ids = np.zeros(0, object)
        exclude = [np.asarray(consumed.get(str(s), empty_ids), dtype=object)
                   for s in queries["searcher_id"].astype(str)]
    return EvalSessions(queries, targets, graded, exclude)


def exclusion_rows(exclude: Sequence[np.ndarray] | None, doc_ids: Sequence[str]) -> list[np.ndarray] | None:
    """Per session, the document-table rows of its excluded doc_ids (unknown ids dropped)."""
    if exclude is None:
        return None
    index = pd.Index(np.asarray(doc_ids, dtype=object).astype(str))
    rows = [index.get_indexer(np.asarray(e, dtype=object).astype(str)) for e in exclude]
    return [r[r >= 0] for r in rows]


def drop_excluded(top: np.ndarray, exclude_rows: Sequence[np.ndarray] | None, k: int) -> np.ndarray:
    """The first ``k`` entries of each ranking that are not excluded (-1 pads a ranking that runs out)."""
    if exclude_rows is None:
        return top[:, :k]
    out = np.full((len(top), k), -1, np.int64)
    for i, (ranked, ex) in enumerate(zip(top, exclude_rows)):
        keep = ranked[(ranked >= 0) & ~np.isin(ranked, ex)][:k]
        out[i, : len(keep)] = keep
    return out


def _padded_rows(sets: Sequence[np.ndarray], row_of: pd.Series) -> np.ndarray:
    """(len(sets), widest) document rows of each set; -1 = not in the table, -2 = padding."""
    lens = np.fromiter((len(t) for t in sets), np.int64, len(sets))
    out = np.full((len(sets), max(int(lens.max(initial=0)), 1)), -2, np.int64)
    if lens.sum():
        flat = np.concatenate([np.asarray(t, dtype=object) for t in sets]).astype(str)
        rows = row_of.reindex(flat).fillna(-1).to_numpy(np.int64)
        which = np.repeat(np.arange(len(sets)), lens)
        col = np.arange(len(flat)) - np.repeat(np.cumsum(lens) - lens, lens)
        out[which, col] = rows
    return out


def _row_of(doc_ids: Sequence[str]) -> pd.Series:
    return pd.Series(np.arange(len(doc_ids)), index=pd.Index(np.asarray(doc_ids, dtype=object).astype(str)))


def _recalls(top: np.ndarray, tgt: np.ndarray, sessions: EvalSessions, ks: Sequence[int]) -> dict[int, np.ndarray]:
    """Per session recall@K of ``top`` (empty slots already mapped to -3) against padded target rows."""
    hits = (top[:, :, None] == tgt[:, None, :]).any(-1)  # (S, kmax)
    n_t = np.array([len(t) for t in sessions.targets], float)
    return {k: hits[:, :k].sum(1) / np.maximum(n_t, 1) for k in ks}


def session_recalls(top: np.ndarray, doc_ids: Sequence[str], sessions: EvalSessions,
                    ks: Sequence[int] = (10, 100)) -> dict[int, np.ndarray]:
    """Per session, recall@K = |top-K ∩ clicked| / |clicked| (the paper's eq. 1) for each K: the values
    :func:`ranking_metrics` averages, kept apart for confidence intervals."""
    top = np.where(np.asarray(top) < 0, -3, top)  # never equal to a target code (-1 missing, -2 padding)
    return _recalls(top, _padded_rows(sessions.targets, _row_of(doc_ids)), sessions, ks)


def ranking_metrics(
    top: np.ndarray, doc_ids: Sequence[str], sessions: EvalSessions, ks: Sequence[int] = (1, 10, 50, 100),
    ndcg_k: int = 10, mrr_k: int = 100,
) -> dict[str, float]:
    """recall@K for each K, MRR@mrr_k and nDCG@ndcg_k of a ranking: ``top`` is (sessions, k) rows of the
    document table, best first, -1 for an empty slot (a baseline that retrieves fewer than k)."""
    n = len(sessions.targets)
    if n == 0 or len(top) != n:
        raise ValueError(f"need one ranking per evaluation session: {len(top)} rankings for {n} sessions")
    top = np.where(np.asarray(top) < 0, -3, top)  # never equal to a target code (-1 missing, -2 padding)
    row_of = _row_of(doc_ids)
    tgt = _padded_rows(sessions.targets, row_of)  # (S, T)
    out: dict[str, float] = {f"recall@{k}": float(np.mean(r)) for k, r in _recalls(top, tgt, sessions, ks).items()}

    g_rows = _padded_rows([g[0] for g in sessions.graded], row_of)  # (S, G)
    g_val = np.zeros(g_rows.shape)
    for i, (_, rel) in enumerate(sessions.graded):
        g_val[i, : len(rel)] = rel
    match = top[:, :, None] == g_rows[:, None, :]  # (S, kmax, G)
    gain_at = (match * g_val[:, None, :]).max(-1)  # (S, kmax) grade of the doc at each rank
    rel_at = gain_at[:, :mrr_k] > 0
    first = np.where(rel_at.any(1), rel_at.argmax(1) + 1, np.inf)
    out["mrr"] = float(np.mean(1.0 / first))
    disc = 1.0 / np.log2(np.arange(2, ndcg_k + 2))
    g = gain_at[:, :ndcg_k]
    dcg = ((2.0 ** g - 1) * disc[: g.shape[1]]).sum(1)
    ideal = -np.sort(-g_val, axis=1)[:, :ndcg_k]
    idcg = ((2.0 ** ideal - 1) * disc[: ideal.shape[1]]).sum(1)
    out[f"ndcg@{ndcg_k}"] = float(np.mean(np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1), 0.0)))
    out["n_sessions"] = float(n)
    out["n_documents"] = float(len(doc_ids))
    out["targets_missing"] = float((tgt == -1).sum())
    return out


def retrieval_metrics(
    query_emb: np.ndarray, doc_emb: np.ndarray, doc_ids: Sequence[str], sessions: EvalSessions,
    ks: Sequence[int] = (1, 10, 50, 100), ndcg_k: int = 10, mrr_k: int = 100,
) -> dict[str, float]:
    """:func:`ranking_metrics` of the exact KNN of the sessions' query embeddings over all documents."""
    if len(sessions.targets) == 0:
        raise ValueError("no evaluation sessions")
    top = top_k(query_emb, doc_emb, max(max(ks), ndcg_k, mrr_k),
                exclude_rows=exclusion_rows(sessions.exclude, doc_ids))  # (S, kmax)
    return ranking_metrics(top, doc_ids, sessions, ks, ndcg_k, mrr_k)


def evaluate(
    model: Embedder, examples_test: pd.DataFrame, documents: pd.DataFrame,
    ks: Sequence[int] = (1, 10, 50, 100), max_sessions: int = 10_000, qrels: pd.DataFrame | None = None,
    seed: int = 0, batch_size: int = 4096, doc_embeddings: np.ndarray | None = None, progress: bool = False,
    consumed: Mapping[str, Sequence[str] | np.ndarray] | None = None,
) -> dict[str, float]:
    """Metrics of ``model`` on held-out examples against the full document table (exact KNN).

    ``doc_embeddings`` (rows aligned with ``documents``) skips re-embedding the corpus; ``consumed``
    (searcher_id -> doc_ids) is never retrieved for that searcher (the recommendation protocol).
    """
    if len(documents) == 0:
        raise ValueError("empty document table: nothing to retrieve from")
    sessions = session_targets(examples_test, max_sessions, seed, qrels, consumed)
    d = doc_embeddings
    if d is None:
        extra = {"progress": True} if progress else {}  # other embedders need not take the flag
        d = model.embed_documents(documents, batch_size=batch_size, **extra)
    doc_ids = documents[DOC_ID].astype(str).to_numpy()
    top = exact_top_k(model, sessions.queries, documents, max(max(ks), 100), doc_first=d, batch_size=batch_size,
                      exclude_rows=exclusion_rows(sessions.exclude, doc_ids))
    return ranking_metrics(top, doc_ids, sessions, ks)


def metrics_table(results: Mapping[str, Mapping[str, float]], metrics: Sequence[str] | None = None) -> str:
    """A markdown table, one row per model, one column per metric (the first model's keys by default)."""
    if not results:
        raise ValueError("no results to tabulate")
    names = list(results)
    metrics = list(metrics) if metrics is not None else [
        m for m in results[names[0]] if m not in ("n_sessions", "n_documents", "targets_missing")
    ]
    lines = ["| model | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for name in names:
        cells = []
        for m in metrics:
            v = results[name].get(m)
            cells.append("n/a" if v is None else f"{v:.4f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
