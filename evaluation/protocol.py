"""The held-out evaluation protocol that the train, evaluate and ensemble flows and the benchmarks share.

- **the index**: a held-out split is retrieved from the documents as the index stood when the data the
  model learned from ended (:func:`examples.splits.split_cutoff`, :func:`features.corpus.index_documents`).
- **the metrics**: the paper's recall@K (eq. 1) over up to 10,000 held-out sessions with exact KNN over
  the whole index (or through the IVF-PQ index the nightly builds), MRR and nDCG@10 (graded by qrels where
  the source has them), from :mod:`models.evaluate`.
- **the recommendation protocol**: where training sessions have no query text, what a searcher clicked in
  training is never retrieved for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ann.index import EmbeddingIndex, IndexConfig
from models.ensemble import is_cascade, rerank
from models.evaluate import drop_excluded, evaluate, exclusion_rows, ranking_metrics, session_targets

DEFAULT_KS = (1, 10, 50, 100)


def evaluate_split(
    model, parts: Mapping[str, pd.DataFrame], split: str, index: pd.DataFrame, ks: Sequence[int] = DEFAULT_KS,
    max_sessions: int = 10_000, qrels: pd.DataFrame | None = None, seed: int = 0,
    consumed: Mapping[str, Sequence[str] | np.ndarray] | None = None,
) -> dict[str, float]:
    """A model's metrics on one held-out split against ``index`` (exact KNN over all its documents);
    ``consumed`` defaults to :func:`protocol_exclusions` of ``parts``."""
    examples = parts.get(split)
    if examples is None or examples.empty:
        raise ValueError(f"the {split!r} split has no examples to evaluate on")
    if consumed is None:
        consumed = protocol_exclusions(parts)
    return evaluate(model, examples, index, ks=ks, max_sessions=max_sessions, qrels=qrels, seed=seed,
                    consumed=consumed)


def protocol_exclusions(parts: Mapping[str, pd.DataFrame]) -> dict[str, np.ndarray] | None:
    """The recommendation protocol where the training sessions have no query text (what a searcher clicked
    in training is never retrieved for it): :func:`consumed_documents` of the training split; None in
    search."""
    train = parts.get("train")
    if train is None or train.empty or (train["query"].fillna("").astype(str) != "").any():
        return None
    return consumed_documents(train)


def consumed_documents(examples: pd.DataFrame) -> dict[str, np.ndarray]:
    """searcher_id -> the doc_ids it clicked in ``examples`` (the training split): what a recommender
    does not offer again."""
    if examples.empty:
        return {}
    g = examples[["searcher_id", "doc_id"]].astype(str).drop_duplicates()
    return {s: d.to_numpy(object) for s, d in g.groupby("searcher_id")["doc_id"]}


# --------------------------------------------------------------------------- through an ANN index


def quantized_metrics(
    model, parts: Mapping[str, pd.DataFrame], split: str, index: pd.DataFrame, ks: Sequence[int] = DEFAULT_KS,
    max_sessions: int = 10_000, seed: int = 0, consumed: Mapping[str, Sequence[str] | np.ndarray] | None = None,
    config=None, qrels: pd.DataFrame | None = None,
) -> dict[str, float] | None:
    """:func:`evaluate_split`'s metrics when retrieval goes through the IVF-PQ index the nightly rebuild
    builds (``IndexConfig(kind="ivfpq")`` sized for the corpus, with its refine step) instead of exact KNN;
    a cascade re-scores the index's top N exactly, as the retriever does. None when the corpus is too small
    to train IVF-PQ."""
    examples = parts.get(split)
    if examples is None or examples.empty:
        raise ValueError(f"the {split!r} split has no examples to evaluate on")
    if consumed is None:
        consumed = protocol_exclusions(parts)
    d = np.ascontiguousarray(model.embed_documents(index), dtype=np.float32)
    cfg = (config or IndexConfig(kind="ivfpq")).resolve(len(d), d.shape[1])
    if cfg.kind != "flat" and len(d) < max(cfg.nlist, 2**cfg.nbits):
        return None
    ann = EmbeddingIndex.build(d, np.arange(len(d), dtype=np.int64), cfg, progress=False)
    sessions = session_targets(examples, max_sessions, seed, qrels, consumed)
    doc_ids = index["doc_id"].astype(str).to_numpy()
    rows = exclusion_rows(sessions.exclude, doc_ids)
    widest = max((len(r) for r in rows), default=0) if rows is not None else 0
    k = max(max(ks), 100)
    cascade = is_cascade(model)
    depth = min(len(d), k + widest + (model.rerank_n if cascade else 0))
    _, top = ann.search(model.embed_queries(sessions.queries), depth)
    if cascade:
        top, _ = rerank(top, model.rescore_queries(sessions.queries), model.rescore_documents(index), model.rerank_n)
    return ranking_metrics(drop_excluded(top, rows, k), doc_ids, sessions, ks)
