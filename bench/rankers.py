"""Any ranking scored with the product's held-out protocol (the same sessions, index and exclusions as
:func:`evaluation.protocol.evaluate_split`), overall and on the sessions warm and cold to training: how the
benchmarks put baselines and library peers beside the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import pandas as pd

from evaluation.protocol import DEFAULT_KS
from features.query_text import normalize_query
from models.ensemble import exact_top_k, is_cascade
from models.evaluate import EvalSessions, drop_excluded, exclusion_rows, ranking_metrics, session_targets


class Ranker(Protocol):
    """A baseline: for each session query (a frame row), the top ``k`` rows of the document table (-1: none)."""

    def rank(self, queries: pd.DataFrame, k: int) -> np.ndarray: ...


def evaluate_ranker(
    ranker: Ranker, examples: pd.DataFrame, index: pd.DataFrame, ks: Sequence[int] = DEFAULT_KS,
    max_sessions: int = 10_000, qrels: pd.DataFrame | None = None, seed: int = 0,
    consumed: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, float]:
    """A baseline's metrics on the same sessions (same sample, same seed, same exclusions) as
    :func:`models.evaluate.evaluate`."""
    sessions = session_targets(examples, max_sessions, seed, qrels, consumed)
    doc_ids = index["doc_id"].astype(str).to_numpy()
    k = max(max(ks), 100)
    rows = exclusion_rows(sessions.exclude, doc_ids)
    widest = max((len(r) for r in rows), default=0) if rows is not None else 0
    top = drop_excluded(ranker.rank(sessions.queries, k + widest), rows, k)
    return ranking_metrics(top, doc_ids, sessions, ks)


def _pair_keys(queries: Sequence[str], docs: Sequence[str]) -> np.ndarray:
    q = normalize_query(pd.Series(list(queries), dtype=object)).to_numpy(object)
    d = pd.Series(list(docs), dtype=object).astype(str).to_numpy(object)
    return np.asarray([f"{a}\x1f{b}" for a, b in zip(q, d)], dtype=object)


def warm_sessions(sessions: EvalSessions | pd.DataFrame, train: pd.DataFrame) -> np.ndarray:
    """Boolean mask: a session is warm when any of its (normalized query, clicked document) pairs occurs
    in the ``train`` examples (the query normalized as in :func:`bench.peers.normalize_query`).

    ``sessions``: :class:`~models.evaluate.EvalSessions` (one entry per session, in its order: what
    :func:`split_metrics` takes), or an example frame (one entry per row; a row is warm when any row of
    its ``session_id`` is). Sessions without query text (recommendation) pair "" with the document: warm
    means the target was clicked by someone in training.
    """
    known = set(_pair_keys(train["query"].fillna("").astype(str), train["doc_id"].astype(str)))
    if isinstance(sessions, EvalSessions):
        q = sessions.queries["query"].fillna("").astype(str).to_numpy(object)
        lens = [len(t) for t in sessions.targets]
        flat_q = np.repeat(q, lens)
        flat_d = np.concatenate([np.asarray(t, object) for t in sessions.targets]) if sum(lens) else []
        hit = np.fromiter((k in known for k in _pair_keys(flat_q, flat_d)), bool, sum(lens))
        which = np.repeat(np.arange(len(lens)), lens)
        return np.bincount(which, weights=hit, minlength=len(lens)) > 0
    frame = sessions
    hit = np.fromiter((k in known for k in _pair_keys(frame["query"].fillna("").astype(str),
                                                      frame["doc_id"].astype(str))), bool, len(frame))
    if "session_id" not in frame.columns:
        return hit
    return pd.Series(hit).groupby(frame["session_id"].astype(str).to_numpy()).transform("any").to_numpy(bool)


def subset_sessions(sessions: EvalSessions, mask: np.ndarray) -> EvalSessions:
    """The sessions where ``mask`` is True (same order)."""
    mask = np.asarray(mask, bool)
    if len(mask) != len(sessions.targets):
        raise ValueError(f"mask has {len(mask)} entries for {len(sessions.targets)} sessions")
    idx = np.flatnonzero(mask)
    return EvalSessions(
        queries=sessions.queries.iloc[idx].reset_index(drop=True),
        targets=[sessions.targets[i] for i in idx],
        graded=[sessions.graded[i] for i in idx],
        exclude=None if sessions.exclude is None else [sessions.exclude[i] for i in idx],
    )


def rank_sessions(ranker: Ranker, sessions: EvalSessions, doc_ids: Sequence[str], k: int) -> np.ndarray:
    """``ranker``'s top ``k`` document rows per session, the session's exclusions dropped: the ranking that
    :func:`evaluate_ranker` scores (``k`` = max(max(ks), 100) there)."""
    rows = exclusion_rows(sessions.exclude, doc_ids)
    widest = max((len(r) for r in rows), default=0) if rows is not None else 0
    return drop_excluded(ranker.rank(sessions.queries, k + widest), rows, k)


def split_metrics(top: np.ndarray, doc_ids: Sequence[str], sessions: EvalSessions, warm_mask: np.ndarray,
                  ks: Sequence[int] = DEFAULT_KS) -> dict[str, dict[str, float]]:
    """:func:`models.evaluate.ranking_metrics` of one ranking (rows aligned with ``sessions``) on all
    sessions, the warm ones and the cold ones: {"all": ..., "warm": ..., "cold": ...}. An empty subset
    gets {"n_sessions": 0.0}."""
    warm_mask = np.asarray(warm_mask, bool)
    top = np.asarray(top)
    if len(top) != len(warm_mask):
        raise ValueError(f"{len(top)} rankings for a mask of {len(warm_mask)} sessions")
    out = {"all": ranking_metrics(top, doc_ids, sessions, ks)}
    for name, m in (("warm", warm_mask), ("cold", ~warm_mask)):
        out[name] = ranking_metrics(top[m], doc_ids, subset_sessions(sessions, m), ks) if m.any() else {
            "n_sessions": 0.0}
    return out


class EmbeddingRanker:
    """A trained two-tower model as a :class:`Ranker`: exact KNN of its query embeddings over the documents'
    (embedded once), so a model is scored by exactly the code that scores the baselines."""

    def __init__(self, model, documents: pd.DataFrame, batch_size: int = 4096):
        self.model, self.batch_size, self.documents = model, batch_size, documents
        self.doc_emb = model.embed_documents(documents, batch_size=batch_size)
        self.second = model.rescore_documents(documents, batch_size=batch_size) if is_cascade(model) else None

    def rank(self, queries: pd.DataFrame, k: int) -> np.ndarray:
        return exact_top_k(self.model, queries, self.documents, min(k, len(self.documents)), doc_first=self.doc_emb,
                           doc_second=self.second, batch_size=self.batch_size)
