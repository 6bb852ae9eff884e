"""Feature tables computed from the canonical tables, as of a time.

As-of semantics: a snapshot as of ``t`` uses only rows whose ``created_at`` / ``ts`` is strictly before ``t``
(searchers and documents that exist by then, friendships and memberships made by then, sessions before
then). The daily snapshot of day D is taken as of the end of D (``as_of_for_day(D)`` = D+1 00:00 UTC); its
rows carry ``event_timestamp`` = ``created_timestamp`` = ``feature_ts`` = the as-of time, so a
point-in-time join gives an event at time ``ts`` the newest snapshot with ``as_of <= ts``, which saw only
data older than ``ts``. ``created_timestamp`` is the as-of time too (not the wall clock) so that re-running
a day writes identical rows; there is one row per key per snapshot, so it never has to break a tie.

Definitions:
- communities: detected (seeded Leiden, see ``features.social``) on the social graph as of the *anchor*,
  the start of the ``cluster_period_days`` period that contains the snapshot (never after it), so labels
  stay fixed within a period instead of churning daily; searchers without a community at the anchor
  (newcomers, then-isolated) adopt the community most of their neighbours in the snapshot's graph are in.
  Pass the same ``communities`` cache to successive ``compute_features`` calls to detect once per anchor.
- searcher ``clusters``: the searcher's own community (weight ``own_cluster_weight``) mixed with the
  distribution of its graph neighbours' communities (the rest), top ``top_k_clusters``, renormalized.
- ``friend_count``: distinct friends as of the snapshot (0 for sources without friendships).
- searcher ``history``: the documents it clicked or joined before the snapshot, newest first, weighted by
  recency (``features.history``); ``profile``: its optional attributes as tokens (``age:25-34``,
  ``gender:F``, ``occupation:writer``).
- document ``member_cities`` / ``member_clusters``: distribution of its members' home cities and own
  communities (each member counts once; members with no city / no community are left out), top-k,
  renormalized. ``member_count``: members as of the snapshot.
- document ``tags``: the source's own labels of the document (Meetup topics, the group of an event), with
  uniform weights.
- ``active_members_30d``: members who were *active* in the ``active_window_days`` days before the
  snapshot, where active means the searcher had a session or made a membership (in any document) in
  that window.
- ``last_active_at``: the document's last sign of life before the snapshot: its creation, a new member, a
  click on it, or the source's own ``last_active_at`` when that is already in the past.
- Categorical values are ``""`` when unknown (never null), so a null in a joined table means "no snapshot".
"""

from __future__ import annotations

from collections.abc import MutableMapping
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from features.history import HistoryConfig, interactions, recent_documents
from features.schema import (
    DOC_CATEGORICAL,
    DOC_MULTI,
    DOC_NUMERIC,
    DOC_TEXT,
    DOC_TIMES,
    SEARCHER_ATTRIBUTES,
    SEARCHER_CATEGORICAL,
    SEARCHER_MULTI,
    SEARCHER_NUMERIC,
    weights_of,
)
from features.social import (
    NO_CLUSTER,
    CommunityConfig,
    Graph,
    adopt_neighbour_clusters,
    cluster_labels,
    comembership_pairs,
    detect_communities,
    make_graph,
    neighbour_cluster_weights,
)
from ingest.contract import CanonicalDataset

SEARCHER_KEY = "searcher_id"
DOC_KEY = "doc_id"
KEYS: dict[str, str] = {"searcher": SEARCHER_KEY, "document": DOC_KEY}  # entity -> its join key
EVENT_TIMESTAMP = "event_timestamp"
CREATED_TIMESTAMP = "created_timestamp"
FEATURE_TS = "feature_ts"  # the snapshot time as a feature, so a joined row shows which snapshot it got

SEARCHER_FEATURES: tuple[str, ...] = (
    *SEARCHER_CATEGORICAL,
    *[c for m in SEARCHER_MULTI for c in (m, weights_of(m))],
    *SEARCHER_NUMERIC,
    FEATURE_TS,
)
DOCUMENT_FEATURES: tuple[str, ...] = (
    *DOC_TEXT,
    *DOC_CATEGORICAL,
    *[c for m in DOC_MULTI for c in (m, weights_of(m))],
    *DOC_NUMERIC,
    *DOC_TIMES,
    FEATURE_TS,
)
SEARCHER_COLUMNS = (SEARCHER_KEY, *SEARCHER_FEATURES, EVENT_TIMESTAMP, CREATED_TIMESTAMP)
DOCUMENT_COLUMNS = (DOC_KEY, *DOCUMENT_FEATURES, EVENT_TIMESTAMP, CREATED_TIMESTAMP)


class FeatureConfig(BaseModel):
    """Parameters of feature computation (defaults are the production ones)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    top_k_clusters: int = Field(8, ge=1, le=100)
    top_k_cities: int = Field(8, ge=1, le=100)
    own_cluster_weight: float = Field(0.5, ge=0.0, le=1.0)
    active_window_days: int = Field(30, ge=1, le=366)
    social_graph: Literal["auto", "friendships", "comembership"] = Field(
        "auto", description="auto: friendships when the source has any, else co-membership"
    )
    cluster_period_days: int = Field(
        7, ge=1, le=366,
        description="communities are detected on the graph as of the start of each period of this many days "
        "(periods start on Mondays for 7); 1 re-detects for every daily snapshot",
    )
    community: CommunityConfig = CommunityConfig()
    history: HistoryConfig = HistoryConfig()


# --------------------------------------------------------------------------- time


def as_of_for_day(day: date) -> datetime:
    """The as-of time of day D's snapshot: the end of D (D+1 00:00 UTC)."""
    return datetime.combine(day + timedelta(days=1), time.min, tzinfo=timezone.utc)


def snapshot_day(as_of: datetime | pd.Timestamp) -> date:
    """The day a snapshot belongs to: the day whose end it was taken at (or during)."""
    ts = check_as_of(as_of)
    return (ts - pd.Timedelta(microseconds=1)).date()


def days_between(start: date, end: date) -> list[date]:
    if end < start:
        raise ValueError(f"end date {end} is before start date {start}")
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def check_as_of(as_of: datetime | pd.Timestamp) -> pd.Timestamp:
    ts = pd.Timestamp(as_of)
    if ts.tzinfo is None:
        raise ValueError(f"as_of must be timezone-aware (UTC), got naive {as_of!r}")
    return ts.tz_convert("UTC")


def _before(df: pd.DataFrame, column: str, as_of: pd.Timestamp) -> pd.DataFrame:
    return df[pd.to_datetime(df[column], utc=True) < as_of]


# --------------------------------------------------------------------------- helpers


def top_k_lists(
    keys: np.ndarray, labels: np.ndarray, weights: np.ndarray, k: int, index: pd.Index
) -> tuple[list[list[str]], list[list[float]]]:
    """Aligned (labels, weights) lists per key of ``index``: weights summed per label, the top ``k`` by
    weight (ties by label), renormalized to sum 1. Keys of ``index`` with no rows get empty lists."""
    out_labels: list[list[str]] = [[] for _ in range(len(index))]
    out_weights: list[list[float]] = [[] for _ in range(len(index))]
    if len(keys) == 0:
        return out_labels, out_weights
    df = pd.DataFrame({"key": keys, "label": labels, "weight": np.asarray(weights, dtype=np.float64)})
    df = df.groupby(["key", "label"], sort=False, as_index=False)["weight"].sum()
    df = df[df["weight"] > 0].sort_values(
        ["key", "weight", "label"], ascending=[True, False, True], kind="mergesort"
    )
    df = df[df.groupby("key", sort=False).cumcount() < k]
    df["weight"] = df["weight"] / df.groupby("key", sort=False)["weight"].transform("sum")
    key_arr = df["key"].to_numpy()
    if len(key_arr) == 0:
        return out_labels, out_weights
    cuts = np.flatnonzero(key_arr[1:] != key_arr[:-1]) + 1
    starts = np.r_[0, cuts]
    pos = index.get_indexer(key_arr[starts])
    for i, lab, w in zip(pos, np.split(df["label"].to_numpy(), cuts), np.split(df["weight"].to_numpy(), cuts)):
        if i >= 0:
            out_labels[i] = lab.tolist()
            out_weights[i] = w.tolist()
    return out_labels, out_weights


def _text(s: pd.Series) -> pd.Series:
    return s.astype(object).where(s.notna(), "").astype(str)


# --------------------------------------------------------------------------- searchers


def searchers_as_of(dataset: CanonicalDataset, as_of: datetime) -> pd.DataFrame:
    ts = check_as_of(as_of)
    return _before(dataset.searchers, "created_at", ts).sort_values(SEARCHER_KEY).reset_index(drop=True)


def searcher_own_fields(searchers: pd.DataFrame) -> pd.DataFrame:
    """city, region, country, language of each searcher (``""`` when unknown), and its ``profile``."""
    out = pd.DataFrame({SEARCHER_KEY: searchers[SEARCHER_KEY].astype(str).to_numpy()})
    for c in SEARCHER_CATEGORICAL:
        out[c] = _text(searchers[c]).to_numpy() if c in searchers else ""
    out["profile"] = searcher_profile(searchers)
    out[weights_of("profile")] = [[1.0 / len(p)] * len(p) if p else [] for p in out["profile"]]
    return out


AGE_BINS = (18, 25, 35, 45, 50, 56)  # MovieLens's published age groups: under 18, 18-24, ..., 56+


def searcher_profile(searchers: pd.DataFrame) -> list[list[str]]:
    """The searcher's optional attributes as tokens (``age:25-34``, ``gender:F``, ``occupation:writer``):
    demographics carry what is known of a searcher before any history (cold start)."""
    tokens = []
    for c in SEARCHER_ATTRIBUTES:
        if c not in searchers.columns:
            continue
        if c == "age":
            age = pd.to_numeric(searchers[c], errors="coerce").to_numpy(np.float64)
            edges = np.r_[0, AGE_BINS]
            bins = np.searchsorted(AGE_BINS, age, side="right")
            label = np.array([f"age:{edges[b]}-{AGE_BINS[b] - 1}" if b < len(AGE_BINS) else f"age:{AGE_BINS[-1]}+"
                              for b in range(len(AGE_BINS) + 1)], dtype=object)
            tokens.append(np.where(np.isnan(age), "", label[np.minimum(bins, len(AGE_BINS))]))
        else:
            v = _text(searchers[c]).to_numpy(dtype=object)
            tokens.append(np.where(v == "", "", f"{c}:" + v.astype(str)))
    return [[str(t) for t in row if t] for row in zip(*tokens)] if tokens else [[] for _ in range(len(searchers))]


def social_graph(
    dataset: CanonicalDataset, searcher_ids: np.ndarray, as_of: datetime, config: FeatureConfig
) -> tuple[Graph, pd.Series]:
    """The social graph as of ``as_of`` and each searcher's friend count.

    ``auto`` picks friendships when the source has any friendship rows at all (not only before as_of), so a
    dataset never switches graph kind between days.
    """
    ts = check_as_of(as_of)
    kind = config.social_graph
    if kind == "auto":
        kind = "friendships" if len(dataset.friendships) else "comembership"
    known = pd.Index(searcher_ids)
    friends = _before(dataset.friendships, "created_at", ts)
    friends = friends[friends[SEARCHER_KEY].isin(known) & friends["friend_id"].isin(known)]
    friend_count = (
        friends.drop_duplicates([SEARCHER_KEY, "friend_id"]).groupby(SEARCHER_KEY).size()
        .reindex(known, fill_value=0).astype("int64")
    )
    if kind == "friendships":
        graph = make_graph(searcher_ids, friends[SEARCHER_KEY].to_numpy(), friends["friend_id"].to_numpy())
    else:
        members = _before(dataset.memberships, "created_at", ts)
        members = members[members[SEARCHER_KEY].isin(known)]
        src, dst = comembership_pairs(members, config.community.comembership_degree, config.community.seed)
        graph = make_graph(searcher_ids, src, dst)
    return graph, friend_count


_EPOCH = pd.Timestamp("1970-01-05", tz="UTC")  # a Monday: 7-day periods run Monday to Monday


def cluster_anchor(as_of: datetime, period_days: int) -> pd.Timestamp:
    """Start of the period of ``period_days`` days that contains ``as_of`` (``as_of`` itself on a boundary)."""
    ts = check_as_of(as_of)
    period = pd.Timedelta(days=period_days)
    return _EPOCH + ((ts - _EPOCH) // period) * period


def anchor_communities(
    dataset: CanonicalDataset, anchor: pd.Timestamp, config: FeatureConfig,
    cache: MutableMapping[Any, pd.Series] | None = None,
) -> pd.Series:
    """Community label of every searcher that exists at ``anchor`` (``NO_CLUSTER`` for none)."""
    key = (anchor, config.model_dump_json())
    if cache is not None and key in cache:
        return cache[key]
    ids = searchers_as_of(dataset, anchor)[SEARCHER_KEY].astype(str).to_numpy(dtype=object)
    graph, _ = social_graph(dataset, ids, anchor, config)
    membership = detect_communities(graph, config.community)
    labels = cluster_labels(graph.ids, membership, config.community.min_cluster_size)
    out = pd.Series(labels, index=pd.Index(graph.ids, name=SEARCHER_KEY), name="cluster")
    if cache is not None:
        cache[key] = out
    return out


def searcher_social(
    dataset: CanonicalDataset, searchers: pd.DataFrame, as_of: datetime, config: FeatureConfig,
    communities: MutableMapping[Any, pd.Series] | None = None,
) -> tuple[pd.DataFrame, pd.Series]:
    """(clusters, clusters_weights, friend_count per searcher, each searcher's own cluster label)."""
    ids = searchers[SEARCHER_KEY].astype(str).to_numpy(dtype=object)
    graph, friend_count = social_graph(dataset, ids, as_of, config)
    anchored = anchor_communities(dataset, cluster_anchor(as_of, config.cluster_period_days), config, communities)
    labels = anchored.reindex(graph.ids).fillna(NO_CLUSTER).to_numpy(dtype=object)
    labels = adopt_neighbour_clusters(graph, labels)
    rows = neighbour_cluster_weights(graph, labels, config.own_cluster_weight)
    node_index = pd.Index(np.arange(graph.n))
    cl, w = top_k_lists(
        rows["node"].to_numpy(), rows["cluster"].to_numpy(), rows["weight"].to_numpy(),
        config.top_k_clusters, node_index,
    )
    name = SEARCHER_MULTI[0]
    out = pd.DataFrame({SEARCHER_KEY: graph.ids, name: cl, weights_of(name): w})
    out["friend_count"] = friend_count.reindex(graph.ids).fillna(0).astype("int64").to_numpy()
    own = pd.Series(labels, index=pd.Index(graph.ids, name=SEARCHER_KEY), name="cluster")
    return out, own


# --------------------------------------------------------------------------- documents


def active_searchers(dataset: CanonicalDataset, as_of: datetime, window_days: int) -> pd.Index:
    """Searchers with a session or a new membership in ``[as_of - window_days, as_of)``."""
    ts = check_as_of(as_of)
    start = ts - pd.Timedelta(days=window_days)
    s_ts = pd.to_datetime(dataset.sessions["ts"], utc=True)
    m_ts = pd.to_datetime(dataset.memberships["created_at"], utc=True)
    ids = pd.concat([
        dataset.sessions.loc[(s_ts >= start) & (s_ts < ts), SEARCHER_KEY],
        dataset.memberships.loc[(m_ts >= start) & (m_ts < ts), SEARCHER_KEY],
    ])
    return pd.Index(ids.astype(str).unique())


def document_features(
    dataset: CanonicalDataset,
    as_of: datetime,
    searcher_city: pd.Series,
    searcher_cluster: pd.Series,
    config: FeatureConfig,
) -> pd.DataFrame:
    """One row per document that exists as of ``as_of``: its own fields plus aggregates over members.

    ``searcher_city`` / ``searcher_cluster`` map searcher_id to the member's city / own community label.
    """
    ts = check_as_of(as_of)
    docs = _before(dataset.documents, "created_at", ts).sort_values(DOC_KEY).reset_index(drop=True)
    doc_ids = docs[DOC_KEY].astype(str).to_numpy(dtype=object)
    index = pd.Index(doc_ids)
    out = pd.DataFrame({DOC_KEY: doc_ids})
    for c in (*DOC_TEXT, *DOC_CATEGORICAL):
        out[c] = _text(docs[c]).to_numpy()

    members = _before(dataset.memberships, "created_at", ts)
    members = members[members[DOC_KEY].isin(index) & members[SEARCHER_KEY].isin(searcher_city.index)]
    members = members.drop_duplicates([DOC_KEY, SEARCHER_KEY])
    m_doc = members[DOC_KEY].astype(str).to_numpy(dtype=object)
    m_who = members[SEARCHER_KEY].astype(str).to_numpy(dtype=object)
    ones = np.ones(len(members))

    for name, mapping, k in (
        ("member_cities", searcher_city, config.top_k_cities),
        ("member_clusters", searcher_cluster, config.top_k_clusters),
    ):
        value = mapping.reindex(m_who).fillna("").to_numpy(dtype=object)
        ok = value != ""
        lab, w = top_k_lists(m_doc[ok], value[ok], ones[ok], k, index)
        out[name], out[weights_of(name)] = lab, w

    tags = docs["tags"] if "tags" in docs.columns else pd.Series([[]] * len(docs))
    out["tags"] = [[str(t) for t in v] if isinstance(v, (list, tuple, np.ndarray)) else [] for v in tags]
    out[weights_of("tags")] = [[1.0 / len(v)] * len(v) if len(v) else [] for v in out["tags"]]
    out["member_count"] = pd.Series(m_doc).value_counts().reindex(index, fill_value=0).to_numpy(dtype=np.int64)
    active = pd.Index(active_searchers(dataset, ts, config.active_window_days))
    act = pd.Series(m_doc[np.asarray(pd.Index(m_who).isin(active))]).value_counts()
    out["active_members_30d"] = act.reindex(index, fill_value=0).to_numpy(dtype=np.int64)
    out["last_active_at"] = _last_active(dataset, docs, members, ts).astype("datetime64[us, UTC]").set_axis(out.index)
    return out


def _last_active(
    dataset: CanonicalDataset, docs: pd.DataFrame, members: pd.DataFrame, ts: pd.Timestamp
) -> pd.Series:
    index = pd.Index(docs[DOC_KEY].astype(str))
    # .array keeps the UTC dtype even when every value is missing (to_numpy would drop it)
    created = pd.Series(pd.to_datetime(docs["created_at"], utc=True).array, index=index)
    parts = [created]
    parts.append(pd.to_datetime(members["created_at"], utc=True).groupby(members[DOC_KEY].to_numpy()).max())
    sessions = _before(dataset.sessions, "ts", ts)
    clicks = sessions[["ts", "clicked"]].explode("clicked").dropna(subset=["clicked"])
    parts.append(pd.to_datetime(clicks["ts"], utc=True).groupby(clicks["clicked"].astype(str).to_numpy()).max())
    own = pd.Series(pd.to_datetime(docs["last_active_at"], utc=True).array, index=index)
    parts.append(own[own < ts])
    frame = pd.concat([p.rename(i).reindex(index) for i, p in enumerate(parts)], axis=1)
    return frame.max(axis=1).astype("datetime64[us, UTC]")


# --------------------------------------------------------------------------- one snapshot


def _stamp(df: pd.DataFrame, ts: pd.Timestamp, columns: tuple[str, ...]) -> pd.DataFrame:
    stamp = pd.Series(ts, index=df.index).astype("datetime64[us, UTC]")
    df = df.assign(**{FEATURE_TS: stamp, EVENT_TIMESTAMP: stamp, CREATED_TIMESTAMP: stamp})
    return df[list(columns)].reset_index(drop=True)


# What compute_features reads of each canonical table: the materialize flow reads only this once the gates
# have seen the whole tables (the impressions and queries are most of the sessions' memory).
FEATURE_TABLES = ("searchers", "documents", "friendships", "memberships", "sessions")
SESSION_COLUMNS = (SEARCHER_KEY, "ts", "clicked")


def compute_features(
    dataset: CanonicalDataset,
    as_of: datetime,
    config: FeatureConfig | None = None,
    communities: MutableMapping[Any, pd.Series] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(searcher_features, document_features): one snapshot as of ``as_of``, sorted by key.

    Columns are :data:`SEARCHER_COLUMNS` and :data:`DOCUMENT_COLUMNS`. ``communities`` is an optional cache
    (any dict) shared across calls on the same dataset, so a range of days detects once per anchor.
    """
    config = config or FeatureConfig()
    ts = check_as_of(as_of)
    searchers = searchers_as_of(dataset, ts)
    own = searcher_own_fields(searchers)
    social, own_cluster = searcher_social(dataset, searchers, ts, config, communities)
    searcher_df = own.merge(social, on=SEARCHER_KEY, how="left", validate="one_to_one")
    events = interactions(_before(dataset.sessions, "ts", ts), _before(dataset.memberships, "created_at", ts))
    hist, hist_w = recent_documents(events, searcher_df[SEARCHER_KEY].to_numpy(object),
                                    pd.Series(ts, index=searcher_df.index), config.history)
    searcher_df["history"], searcher_df[weights_of("history")] = hist, hist_w
    city = pd.Series(own["city"].to_numpy(), index=pd.Index(own[SEARCHER_KEY]))
    doc_df = document_features(dataset, ts, city, own_cluster, config)
    return _stamp(searcher_df, ts, SEARCHER_COLUMNS), _stamp(doc_df, ts, DOCUMENT_COLUMNS)


__all__ = [
    "CREATED_TIMESTAMP", "DOCUMENT_COLUMNS", "DOCUMENT_FEATURES", "DOC_KEY", "EVENT_TIMESTAMP", "FEATURE_TS",
    "FeatureConfig", "NO_CLUSTER", "SEARCHER_COLUMNS", "SEARCHER_FEATURES", "SEARCHER_KEY", "as_of_for_day",
    "FEATURE_TABLES", "SESSION_COLUMNS", "compute_features", "days_between", "snapshot_day", "top_k_lists",
]
