"""Benchmark inputs: any canonical dataset -> time-split examples with point-in-time features, corpus, index.

One code path for every source (the synthetic world and the real datasets):

1. sessions -> examples with ``examples.build.build_examples`` (clicks as positives, random and
   impressed negatives, hard positives, the source's split or a time split);
2. feature snapshots with ``features.compute.compute_features`` at a schedule of day ends
   (:func:`snapshot_days`) and the point-in-time join of ``examples.build.join_features`` through
   :class:`SnapshotFeatures`, which applies Feast's as-of rule (the newest snapshot whose time is not after
   the event) without Feast's 7-day TTL. Daily snapshots in Feast cost a snapshot per day: about 3 s per day
   for the default world, and thousands of days for Last.fm (2005-2011) or Meetup Chicago (2002-2016), so the
   benchmark takes at most ``max_snapshots`` evenly spaced ones instead: features are up to one period
   stale, never from the future;
3. the held-out protocol of ``evaluation.protocol``: corpus and index as of the end of the data a model
   learned from.

Held-out test interactions never reach features: test sessions, and memberships that a source marks as
test (MovieLens ratings of ``ua.test``), are left out of the tables the snapshots are computed from.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from examples.build import (
    ExampleConfig,
    add_history,
    build_examples,
    fill_static_document_fields,
    fill_static_searcher_fields,
    join_features,
    visible_memberships,
)
from examples.splits import SplitConfig, partition, split_cutoff
from features.compute import (
    DOC_KEY,
    DOCUMENT_FEATURES,
    EVENT_TIMESTAMP,
    FEATURE_TS,
    SEARCHER_FEATURES,
    SEARCHER_KEY,
    FeatureConfig,
    as_of_for_day,
    compute_features,
)
from features.corpus import index_documents, served_documents
from ingest.contract import CanonicalDataset

_ENTITY = {"searcher": (SEARCHER_KEY, SEARCHER_FEATURES), "document": (DOC_KEY, DOCUMENT_FEATURES)}


@dataclass
class SnapshotFeatures:
    """In-memory feature snapshots with Feast's point-in-time rule (a ``HistoricalFeatureSource``)."""

    searchers: pd.DataFrame  # snapshot rows: searcher_id, SEARCHER_FEATURES, event_timestamp
    documents: pd.DataFrame  # snapshot rows: doc_id, DOCUMENT_FEATURES, event_timestamp

    def historical_features(self, entity_df: pd.DataFrame, entity: str, service=None) -> pd.DataFrame:
        """``entity_df`` (key, event_timestamp) with each row's newest snapshot not after its time; nulls when
        there is none. Rows keep their order and index."""
        if entity not in _ENTITY:
            raise ValueError(f"entity must be one of {list(_ENTITY)}, got {entity!r}")
        key, features = _ENTITY[entity]
        table = self.searchers if entity == "searcher" else self.documents
        left = pd.DataFrame({
            key: entity_df[key].astype(str).to_numpy(),
            EVENT_TIMESTAMP: pd.to_datetime(entity_df[EVENT_TIMESTAMP], utc=True).astype("datetime64[ns, UTC]").to_numpy(),
            "_row": np.arange(len(entity_df)),
        })
        right = table[[key, EVENT_TIMESTAMP, *features]].copy()
        right[key] = right[key].astype(str)
        right[EVENT_TIMESTAMP] = pd.to_datetime(right[EVENT_TIMESTAMP], utc=True).astype("datetime64[ns, UTC]")
        joined = pd.merge_asof(
            left.sort_values(EVENT_TIMESTAMP, kind="stable"), right.sort_values(EVENT_TIMESTAMP, kind="stable"),
            on=EVENT_TIMESTAMP, by=key, direction="backward", allow_exact_matches=True,
        ).set_index("_row").reindex(np.arange(len(entity_df)))
        out = entity_df.copy()
        for f in features:
            out[f] = joined[f].to_numpy()
        return out


def snapshot_days(first_event: pd.Timestamp, last_event: pd.Timestamp, max_snapshots: int) -> list[date]:
    """Days whose end gets a snapshot: the day before the first event (so every event has one), then evenly
    spaced (daily when the span allows), and the last event's day (the index of documents born late)."""
    if max_snapshots < 2:
        raise ValueError(f"max_snapshots must be at least 2, got {max_snapshots}")
    start, end = first_event.date() - timedelta(days=1), last_event.date()
    span = (end - start).days
    step = max(1, math.ceil(span / (max_snapshots - 1)))
    days = [start + timedelta(days=i) for i in range(0, span, step)]
    return days + [end] if days[-1] != end else days


def feature_inputs(data: CanonicalDataset, session_split: pd.Series, held_out: tuple[str, ...] = ("test",)
                   ) -> CanonicalDataset:
    """The tables features may see: the held-out sessions (test; for the validation index, validation too),
    test-marked memberships and memberships made after the last session kept (the end of the data a model
    learns from) removed.

    A missing ``last_active_at`` is set to ``created_at``: the same value the feature takes anyway (the
    newest of creation and later activity), and ``compute_features`` fails on a column that is all NaT.
    """
    sessions = data.sessions[~session_split.isin(held_out).to_numpy()]
    memberships = visible_memberships(data.memberships, sessions)
    docs = data.documents.assign(last_active_at=data.documents["last_active_at"].fillna(data.documents["created_at"]))
    return dataclasses.replace(data, sessions=sessions.reset_index(drop=True), memberships=memberships, documents=docs)


def validation_index(data: CanonicalDataset, sessions: pd.DataFrame, session_split: pd.Series,
                     snaps: SnapshotFeatures, days: list[date], valid_cut: pd.Timestamp, train: pd.DataFrame,
                     label: str = "") -> pd.DataFrame:
    """What validation ranks: what the nightlies from the validation cutoff on would serve (the production
    index selection: :func:`features.corpus.served_documents`), as the test split ranks what they serve from its
    own. A document born after the cutoff gets its first later
    snapshot, recomputed without the validation sessions: the shared snapshots count them, so an event's
    member aggregates would hold the very RSVPs validation asks for (the test index never sees test ones)."""
    documents = snaps.documents
    if (session_split == "valid").any():
        later = [d for d in days if as_of_for_day(d) > valid_cut]
        without_valid = feature_inputs(dataclasses.replace(data, sessions=sessions.reset_index(drop=True)),
                                       session_split, held_out=("valid", "test"))
        redone = compute_snapshots(without_valid, later, label=f"{label} (validation index)").documents
        early = documents[pd.to_datetime(documents[FEATURE_TS], utc=True) <= valid_cut]
        documents = pd.concat([early, redone], ignore_index=True)
    return served_documents(index_documents(documents, valid_cut), data.documents, valid_cut, train[["doc_id", "ts"]])


def compute_snapshots(data: CanonicalDataset, days: list[date], config: FeatureConfig | None = None,
                      label: str = "") -> SnapshotFeatures:
    communities: dict = {}
    searchers, documents = [], []
    for day in tqdm(days, desc=f"feature snapshots {label}".strip(), unit="snapshot", disable=None):
        s, d = compute_features(data, as_of_for_day(day), config, communities)
        searchers.append(s)
        documents.append(d)
    return SnapshotFeatures(pd.concat(searchers, ignore_index=True), pd.concat(documents, ignore_index=True))


@dataclass
class Prepared:
    """Everything a benchmark needs of one dataset."""

    name: str
    parts: dict[str, pd.DataFrame]  # train / valid / test examples, features joined point-in-time
    corpus: pd.DataFrame  # documents as of the end of training (negatives, validation)
    index: pd.DataFrame  # documents the test sessions retrieve from
    qrels: pd.DataFrame | None
    has_query_text: bool
    snapshots: int
    snapshot_step_days: int
    seconds: dict[str, float] = field(default_factory=dict)
    valid_index: pd.DataFrame | None = None  # documents the validation sessions retrieve from (None: corpus)


def prepare(name: str, data: CanonicalDataset, max_snapshots: int = 24,
            examples: ExampleConfig | None = None, split: SplitConfig | None = None) -> Prepared:
    """Examples, corpus and index of ``data`` (see the module docstring)."""
    t0 = time.perf_counter()
    sessions = data.sessions
    if split is None:
        # A source whose training sessions share one timestamp (SciFact) has no time order to carve a
        # validation split from: train without one (a fixed number of epochs).
        src = sessions["split"] if "split" in sessions.columns else None
        flat = src is not None and sessions.loc[src == "train", "ts"].nunique() <= 1
        split = SplitConfig(valid_fraction=0.0) if flat else SplitConfig()
    ex = build_examples(sessions, data.documents, examples or ExampleConfig(), split)
    t1 = time.perf_counter()

    from examples.splits import split_sessions

    session_split = split_sessions(sessions.reset_index(drop=True), split)
    visible = feature_inputs(dataclasses.replace(data, sessions=sessions.reset_index(drop=True)), session_split)
    ts = pd.to_datetime(sessions["ts"], utc=True)
    days = snapshot_days(ts.min(), ts.max(), max_snapshots)
    snaps = compute_snapshots(visible, days, label=name)
    t2 = time.perf_counter()

    joined = join_features(ex, snaps)
    parts = partition(joined)
    parts = partition(add_history(joined, sessions, data.memberships, split))
    qrels = None
    if data.qrels is not None:
        qrels = data.qrels[data.qrels["split"].astype(str) == "test"] if "split" in data.qrels.columns else data.qrels
    valid_cut, test_cut = split_cutoff(parts, "valid"), split_cutoff(parts, "test")
    corpus = index_documents(snaps.documents, valid_cut)  # training negatives: every document
    valid_index = validation_index(data, sessions, session_split, snaps, days, valid_cut, parts["train"], name)
    full_index = index_documents(snaps.documents, test_cut)
    index = served_documents(full_index, data.documents, test_cut, parts["train"][["doc_id", "ts"]])
    # A searcher's or document's own fields exist from its creation: fill them where no snapshot preceded
    # the session (newcomers, fresh events); aggregates stay missing.
    searchers = snaps.searchers.sort_values(EVENT_TIMESTAMP, kind="stable").drop_duplicates(SEARCHER_KEY)
    for s in parts:
        parts[s] = fill_static_searcher_fields(parts[s], searchers)
        if s != "test":
            parts[s] = fill_static_document_fields(parts[s], full_index)
    t3 = time.perf_counter()
    step = (days[1] - days[0]).days if len(days) > 1 else 1
    return Prepared(
        name=name, parts=parts, corpus=corpus, index=index, qrels=qrels,
        has_query_text=bool((sessions["query"].fillna("").astype(str) != "").any()),
        snapshots=len(days), snapshot_step_days=step,
        seconds={"examples": t1 - t0, "snapshots": t2 - t1, "join": t3 - t2}, valid_index=valid_index,
    )


# Sources whose own split is random (MovieLens ua: 10 ratings per user; Meetup Chicago's files): split by
# time instead, the newest 10% of sessions held out, so that no test-period interaction is trained on.
TIME_SPLIT = ("movielens", "meetup_chicago")


def prepare_source(name: str, data: CanonicalDataset, max_snapshots: int = 24) -> Prepared:
    """:func:`prepare` with the benchmarks' split rule (by time for the sources in :data:`TIME_SPLIT`)."""
    split = SplitConfig(use_source_split=False) if name in TIME_SPLIT else None
    return prepare(name, data, max_snapshots=max_snapshots, split=split)
