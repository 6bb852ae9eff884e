"""The held-out evaluation protocol that the train/evaluate flows, the comparison and the benchmarks share.

- **the index**: a held-out split is retrieved from the documents as the index stood when the data the
  model learned from ended (:func:`split_cutoff`): each document with its newest feature snapshot not
  after the cutoff, and documents created later with their first snapshot (a nightly rebuild adds them).
  Nothing that happened after the cutoff reaches a document that already existed.
- **the metrics**: the paper's recall@K (eq. 1) over up to 10,000 held-out sessions with exact KNN over
  the whole index, MRR and nDCG@10 (graded by qrels where the source has them), from
  :mod:`models.evaluate`; :func:`evaluate_ranker` scores any ranking (a baseline, a library peer) with the
  same code, on exactly the same sessions and index.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Protocol

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from features.schema import DOC_CATEGORICAL, DOC_TEXT, SEARCHER_CATEGORICAL, SPLITS, doc_column, searcher_column
from models.evaluate import (
    EvalSessions, drop_excluded, evaluate, exclusion_rows, ranking_metrics, session_targets,
)

DEFAULT_KS = (1, 10, 50, 100)
FEATURE_TS = "feature_ts"
# A document's own fields, fixed at its creation (the rest of its features are aggregates over time).
STATIC_DOC_FIELDS = (*DOC_TEXT, *DOC_CATEGORICAL)
STATIC_SEARCHER_FIELDS = (*SEARCHER_CATEGORICAL, "profile", "profile_weights")
def split_cutoff(parts: Mapping[str, pd.DataFrame], split: str) -> pd.Timestamp:
    """The newest example time a model evaluated on ``split`` could have learned from.

    valid: the newest train example; test: the newest train or valid example. With a time split this is
    the start of the held-out period; with a source's random split (MovieLens, Meetup Chicago) it is the
    end of the data, whose adapters keep held-out interactions out of the feature inputs.
    """
    if split not in SPLITS[1:]:
        raise ValueError(f"split must be one of {list(SPLITS[1:])}, got {split!r}")
    before = SPLITS[: SPLITS.index(split)]
    times = [pd.to_datetime(parts[s]["ts"], utc=True) for s in before if s in parts and len(parts[s])]
    if not times:
        raise ValueError(f"no {' or '.join(before)} examples: nothing a model evaluated on {split!r} learned from")
    return max(t.max() for t in times)


def index_documents(snapshots: pd.DataFrame, as_of: datetime | pd.Timestamp, include_later: bool = True) -> pd.DataFrame:
    """One row per document from feature snapshot rows (``doc_id``, ``feature_ts``, features).

    Each document gets its newest snapshot with ``feature_ts <= as_of``; with ``include_later``, documents
    without one get their first snapshot after ``as_of``. Sorted by ``doc_id``.
    """
    missing = [c for c in ("doc_id", FEATURE_TS) if c not in snapshots.columns]
    if missing:
        raise ValueError(f"document snapshots lack column(s) {missing}; present: {list(snapshots.columns)}")
    as_of = pd.Timestamp(as_of)
    if as_of.tzinfo is None:
        raise ValueError(f"as_of must be timezone-aware (UTC), got {as_of}")
    ts = pd.to_datetime(snapshots[FEATURE_TS], utc=True)
    order = np.argsort(ts.to_numpy(dtype="datetime64[ns]"), kind="stable")
    s = snapshots.iloc[order]
    early = (ts <= as_of).to_numpy()[order]
    parts = [s[early].drop_duplicates("doc_id", keep="last")]
    if include_later:
        later = s[~early]
        parts.append(later[~later["doc_id"].isin(parts[0]["doc_id"])].drop_duplicates("doc_id", keep="first"))
    drop = [c for c in ("event_timestamp", "created_timestamp") if c in s.columns]
    out = pd.concat(parts, ignore_index=True).drop(columns=drop)
    return out.sort_values("doc_id", kind="stable").reset_index(drop=True)


MAX_CLICKS_ON_STARTED_EVENTS = 0.01


def _event_starts(doc_ids: pd.Series, documents: pd.DataFrame) -> pd.DataFrame:
    dated = documents[["doc_id", "doc_type", "starts_at"]].assign(doc_id=documents["doc_id"].astype(str))
    meta = pd.DataFrame({"doc_id": doc_ids.astype(str).to_numpy()}).merge(dated, on="doc_id", how="left")
    meta["doc_type"] = meta["doc_type"].fillna("")
    return meta


def servable(
    index: pd.DataFrame, documents: pd.DataFrame, as_of: datetime | pd.Timestamp, train: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The rows of ``index`` that a nightly rebuild at ``as_of`` would serve: events that already started are
    dropped (the ``upcoming_events`` filter of index selection, on the canonical ``starts_at``), where an
    event cannot be joined once it started. Without it a held-out split is ranked against every past event
    too, and a model that learned that documents with members are the ones people join ranks each new
    event below all the old ones.

    Whether a source's events stay clickable after they start is read from ``train`` (the training
    examples; never the held-out ones): the filter applies when at most
    :data:`MAX_CLICKS_ON_STARTED_EVENTS` of the training clicks on events came after the event started
    (Meetup RSVPs: none; the synthetic world: people look past events up, and they stay served).
    """
    from serving.index_selection import UpcomingEvents

    if "starts_at" not in documents.columns:
        return index
    if train is not None and len(train):
        meta = _event_starts(train["doc_id"], documents)
        events = (meta["doc_type"] == "event").to_numpy() & meta["starts_at"].notna().to_numpy()
        if events.any():
            after = pd.to_datetime(train["ts"], utc=True).to_numpy()[events] > pd.to_datetime(
                meta.loc[events, "starts_at"], utc=True).to_numpy()
            if after.mean() > MAX_CLICKS_ON_STARTED_EVENTS:
                return index
    keep = UpcomingEvents().keep(_event_starts(index["doc_id"], documents), pd.Timestamp(as_of), None)
    return index[keep].reset_index(drop=True)


def _fill(examples: pd.DataFrame, table: pd.DataFrame, key: str, fields: Sequence[str], column, ts_column: str
          ) -> pd.DataFrame:
    hole = examples[ts_column].isna() if ts_column in examples.columns else pd.Series(True, index=examples.index)
    if not hole.any():
        return examples
    static = table.drop_duplicates(key).set_index(key)
    out = examples.copy()
    ids = out.loc[hole, key].astype(str)
    for f in fields:
        if f not in static.columns:
            continue
        col = column(f)
        values = static[f].reindex(ids).to_numpy(dtype=object)
        if col not in out.columns:
            out[col] = None
        current = out.loc[hole, col].to_numpy(dtype=object)
        out.loc[hole, col] = np.where(pd.isna(current), values, current)
    return out


def fill_static_document_fields(examples: pd.DataFrame, documents: pd.DataFrame) -> pd.DataFrame:
    """Fill a document's own fields (title, body, type, location) where the point-in-time join found no
    snapshot (a document created after the last snapshot before the session). Those fields exist from the
    document's creation, so this adds nothing from the future; member aggregates stay missing."""
    return _fill(examples, documents, "doc_id", STATIC_DOC_FIELDS, doc_column, "doc_feature_ts")


def fill_static_searcher_fields(examples: pd.DataFrame, searchers: pd.DataFrame) -> pd.DataFrame:
    """The same for the searcher's own fields (city, region, country, language) of a searcher who joined
    after the last snapshot before the session; social features and counts stay missing."""
    return _fill(examples, searchers, "searcher_id", STATIC_SEARCHER_FIELDS, searcher_column, "searcher_feature_ts")


def document_snapshots_from_repo(repo, as_of: datetime | pd.Timestamp) -> pd.DataFrame:
    """The document snapshot rows of a :class:`features.store.FeatureRepo` that :func:`index_documents`
    needs for ``as_of``: the newest day written not after it, and every later day."""
    days = repo.source_days("document")
    if not days:
        raise FileNotFoundError(f"no document snapshots under {repo.root}; run the materialize flow first")
    from features.compute import as_of_for_day

    as_of = pd.Timestamp(as_of)
    first = 0
    for i, day in enumerate(days):
        if pd.Timestamp(as_of_for_day(day)) <= as_of:
            first = i
    frames = [repo.read_source("document", d) for d in tqdm(days[first:], desc="read document snapshots",
                                                              unit="day", disable=None)]
    return pd.concat(frames, ignore_index=True)


def evaluate_split(
    model, parts: Mapping[str, pd.DataFrame], split: str, index: pd.DataFrame, ks: Sequence[int] = DEFAULT_KS,
    max_sessions: int = 10_000, qrels: pd.DataFrame | None = None, seed: int = 0,
    consumed: Mapping[str, Sequence[str]] | None = None,
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


# --------------------------------------------------------------------------- warm / cold subsets


def _pair_keys(queries: Sequence[str], docs: Sequence[str]) -> np.ndarray:
    from evaluation.baselines import normalize_query

    q = normalize_query(pd.Series(list(queries), dtype=object)).to_numpy(object)
    d = pd.Series(list(docs), dtype=object).astype(str).to_numpy(object)
    return np.asarray([f"{a}\x1f{b}" for a, b in zip(q, d)], dtype=object)


def warm_sessions(sessions: EvalSessions | pd.DataFrame, train: pd.DataFrame) -> np.ndarray:
    """Boolean mask: a session is warm when any of its (normalized query, clicked document) pairs occurs
    in the ``train`` examples (the query normalized as in :func:`evaluation.baselines.normalize_query`).

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
        from models.ensemble import is_cascade

        self.model, self.batch_size, self.documents = model, batch_size, documents
        self.doc_emb = model.embed_documents(documents, batch_size=batch_size)
        self.second = model.rescore_documents(documents, batch_size=batch_size) if is_cascade(model) else None

    def rank(self, queries: pd.DataFrame, k: int) -> np.ndarray:
        from models.ensemble import exact_top_k

        return exact_top_k(self.model, queries, self.documents, min(k, len(self.documents)), doc_first=self.doc_emb,
                           doc_second=self.second, batch_size=self.batch_size)


# --------------------------------------------------------------------------- through an ANN index


def quantized_metrics(
    model, parts: Mapping[str, pd.DataFrame], split: str, index: pd.DataFrame, ks: Sequence[int] = DEFAULT_KS,
    max_sessions: int = 10_000, seed: int = 0, consumed: Mapping[str, Sequence[str]] | None = None,
    config=None, qrels: pd.DataFrame | None = None,
) -> dict[str, float] | None:
    """:func:`evaluate_split`'s metrics when retrieval goes through the IVF-PQ index the nightly rebuild
    builds (``IndexConfig(kind="ivfpq")`` sized for the corpus, with its refine step) instead of exact KNN;
    a cascade re-scores the index's top N exactly, as the retriever does. None when the corpus is too small
    to train IVF-PQ."""
    from models.ensemble import is_cascade, rerank
    from serving.index import EmbeddingIndex, IndexConfig

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
