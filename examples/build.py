"""Sessions -> training examples: clicks as positives, negatives, hard positives, time split, feature join.

One example is one (session, clicked document) pair. Negatives travel with it as list columns so that every
experiment of the paper can be run from the same table:
- ``random_negatives``: k documents drawn uniformly from the corpus, never one of the session's clicks
  (the paper's choice: random negatives give the best recall);
- ``impressed_negatives``: the session's non-clicked impressions (the experiment that hurts recall).
Hard positives come from failed searches: a session with a query and no click, followed within a window by a
session of the same searcher that clicked, yields (failed query, later clicked document).

The split is by time so that evaluation sessions are always newer than training sessions. Features are joined
point-in-time through the feature store; the feature rows' own timestamps are kept so that the validation gate
can prove that nothing newer than the session reached an example.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from examples.splits import SplitConfig, partition, split_cutoff, split_sessions
from features.corpus import STATIC_FIELDS
from features.history import HistoryConfig, interactions, recent_documents
from features.schema import EXAMPLE_KEYS, SEARCHER_CATEGORICAL, SPLITS, doc_column, searcher_column, weights_of
from infra.atomic import atomic_directory

SEARCHER_FEATURE_TS = "searcher_feature_ts"
DOC_FEATURE_TS = "doc_feature_ts"
FEATURE_TS_COLUMNS = (SEARCHER_FEATURE_TS, DOC_FEATURE_TS)
EVENT_TIMESTAMP = "event_timestamp"  # the time column of a Feast entity frame
EXTRA_COLUMNS = ("is_hard_positive", "impressed_negatives", "random_negatives")


class ExampleConfig(BaseModel):
    """How positives and negatives are made from sessions."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    random_negatives: int = Field(
        5, ge=0, le=1000, description="documents sampled uniformly from the corpus per example"
    )
    hard_positives: bool = Field(True, description="mine extra positives from failed search sessions")
    hard_positive_window_minutes: float = Field(
        30.0, gt=0, le=7 * 24 * 60, description="how soon a clicked session must follow a failed one"
    )
    hard_positives_in_eval: bool = Field(
        False, description="keep hard positives in valid/test too (default: training only, eval = clicks)"
    )
    seed: int = Field(0, description="seed of the random negatives")


# --------------------------------------------------------------------------- negatives


def sample_random_negatives(
    exclude: pd.Series | list[list[str]], corpus: pd.Series | np.ndarray, k: int, seed: int = 0
) -> list[list[str]]:
    """For each row, ``k`` doc_ids drawn uniformly (with replacement) from ``corpus``, none in ``exclude[row]``.

    Vectorized rejection sampling: draw all, redraw only the draws that hit an excluded id.
    """
    exclude = list(exclude)
    n = len(exclude)
    if k == 0 or n == 0:
        return [[] for _ in range(n)]
    docs = pd.Index(pd.unique(np.asarray(corpus, dtype=object)))
    m = len(docs)
    lens = np.fromiter((len(e) for e in exclude), dtype=np.int64, count=n)
    flat = [d for e in exclude for d in e]
    cols = docs.get_indexer(flat) if flat else np.empty(0, dtype=np.int64)
    rows = np.repeat(np.arange(n, dtype=np.int64), lens)
    known = cols >= 0
    forbidden = np.unique(rows[known] * m + cols[known])
    per_row = np.bincount(rows[known], minlength=n) if known.any() else np.zeros(n, dtype=np.int64)
    if m == 0 or (per_row >= m).any():
        raise ValueError(
            f"cannot sample random negatives: the corpus has {m} document(s) and a row excludes "
            f"{int(per_row.max()) if n else 0} of them; random negatives need documents that are not positives"
        )
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, m, size=(n, k))
    base = (np.arange(n, dtype=np.int64) * m)[:, None]
    while True:
        bad = np.isin(base + draws, forbidden)
        if not bad.any():
            break
        draws[bad] = rng.integers(0, m, size=int(bad.sum()))
    return docs.to_numpy()[draws].tolist()


def _without(values: list, drop: list) -> list:
    if len(drop) == 1:  # the common case: one click
        return [v for v in values if v != drop[0]]
    gone = set(drop)
    return [v for v in values if v not in gone]


# --------------------------------------------------------------------------- examples


def _dedupe(ids) -> list[str]:
    return list(ids) if len(ids) < 2 else list(dict.fromkeys(ids))


def _rows(
    frame: pd.DataFrame, docs: pd.Series, hard: bool, negatives_from: pd.Series, positives: pd.Series
) -> pd.DataFrame:
    """Explode one positive per row; ``positives`` is what random negatives must avoid."""
    base = frame[["session_id", "searcher_id", "query", "ts", "split"]].assign(
        doc_id=docs.to_numpy(), _imp=negatives_from.to_numpy(), _pos=positives.to_numpy()
    )
    out = base.explode("doc_id").dropna(subset=["doc_id"])
    out["impressed_negatives"] = [_without(i, p) for i, p in zip(out["_imp"], out["_pos"])]
    out["is_hard_positive"] = hard
    return out


def build_examples(
    sessions: pd.DataFrame,
    documents: pd.DataFrame,
    config: ExampleConfig | None = None,
    split: SplitConfig | None = None,
) -> pd.DataFrame:
    """One row per (session, clicked document), plus hard positives; split assigned by time.

    Columns: EXAMPLE_KEYS, ``is_hard_positive``, ``impressed_negatives``, ``random_negatives``.
    Sessions with an empty query (recommendation) are kept; their query is ``""``.
    """
    config = config or ExampleConfig()
    s = sessions.reset_index(drop=True)
    s = s.assign(
        query=s["query"].fillna("").astype(str),
        split=split_sessions(s, split).to_numpy(),
        clicked=s["clicked"].map(_dedupe),
        impressed=s["impressed"].map(list),
    )
    parts = [_rows(s, s["clicked"], False, s["impressed"], s["clicked"])]
    if config.hard_positives:
        hp = _hard_positive_sessions(s, config.hard_positive_window_minutes)
        if not config.hard_positives_in_eval:
            hp = hp[hp["split"] == "train"]
        parts.append(_rows(hp, hp["next_clicked"], True, hp["impressed"], hp["next_clicked"]))
    ex = pd.concat(parts, ignore_index=True)
    ex["example_id"] = ex["session_id"].astype(str) + ":" + ex["doc_id"].astype(str)
    ex["random_negatives"] = sample_random_negatives(
        ex["_pos"], documents["doc_id"], config.random_negatives, config.seed
    )
    ex["is_hard_positive"] = ex["is_hard_positive"].astype(bool)
    ex = ex.sort_values(["ts", "example_id"], kind="stable").reset_index(drop=True)
    return ex[[*EXAMPLE_KEYS, *EXTRA_COLUMNS]]


def _hard_positive_sessions(s: pd.DataFrame, window_minutes: float) -> pd.DataFrame:
    """Failed search sessions with the clicks of the same searcher's next clicked session in the window.

    A failed session has a query and no click (an unclicked recommendation is not a failed search).
    """
    failed = s[(s["clicked"].map(len) == 0) & (s["query"] != "")]
    done = s[s["clicked"].map(len) > 0]
    if failed.empty or done.empty:
        return failed.iloc[:0].assign(next_clicked=pd.Series([], dtype=object))
    right = done[["searcher_id", "ts", "clicked"]].rename(
        columns={"ts": "_next_ts", "clicked": "next_clicked"}
    )
    right = right.assign(_next_ts=right["_next_ts"].astype(failed["ts"].dtype)).sort_values("_next_ts")
    m = pd.merge_asof(
        failed.sort_values("ts"),
        right,
        left_on="ts",
        right_on="_next_ts",
        by="searcher_id",
        direction="forward",
        allow_exact_matches=False,
        tolerance=pd.Timedelta(minutes=window_minutes),
    )
    return m[m["next_clicked"].notna()].drop(columns="_next_ts").reset_index(drop=True)


# --------------------------------------------------------------------------- point-in-time join


class HistoricalFeatureSource(Protocol):
    """What the join needs from the feature store (features.store.FeatureRepo provides it)."""

    def historical_features(
        self, entity_df: pd.DataFrame, entity: Literal["searcher", "document"], service=None
    ) -> pd.DataFrame: ...


_ENTITIES: tuple[tuple[Literal["searcher", "document"], str, Callable[[str], str], str], ...] = (
    ("searcher", "searcher_id", searcher_column, SEARCHER_FEATURE_TS),
    ("document", "doc_id", doc_column, DOC_FEATURE_TS),
)


def _utc_ns(s: pd.Series) -> pd.Series:
    s = pd.to_datetime(s, utc=True)
    return s.astype("datetime64[ns, UTC]")


def join_features(
    examples: pd.DataFrame,
    store: HistoricalFeatureSource,
    service: str | None = None,
    feature_ts_column: str = "feature_ts",
) -> pd.DataFrame:
    """Point-in-time join of searcher features on (searcher_id, ts) and document features on (doc_id, ts).

    The store returns, for each entity row, the newest feature row not after the row's time, with that
    feature row's own time in ``feature_ts_column``; it is kept as ``searcher_feature_ts`` /
    ``doc_feature_ts`` for the gate. Rows are matched back on key and time (Feast does not keep order).
    """
    out = examples.copy()
    out["ts"] = _utc_ns(out["ts"])
    for entity, key, rename, ts_name in _ENTITIES:
        entities = out[[key, "ts"]].drop_duplicates().rename(columns={"ts": EVENT_TIMESTAMP})
        if entities.empty:
            out[ts_name] = pd.Series(pd.NaT, index=out.index, dtype="datetime64[ns, UTC]")
            continue
        feats = store.historical_features(entities.reset_index(drop=True), entity, service)
        if feature_ts_column not in feats.columns:
            raise KeyError(
                f"the {entity} features have no {feature_ts_column!r} column, so leakage cannot be checked; "
                f"columns: {list(feats.columns)}"
            )
        feats = feats.rename(columns={EVENT_TIMESTAMP: "ts", feature_ts_column: ts_name})
        feats["ts"] = _utc_ns(feats["ts"])
        feats[ts_name] = _utc_ns(feats[ts_name])
        names = {c: rename(c) for c in feats.columns if c not in (key, "ts", ts_name)}
        clash = sorted(set(names.values()) & set(out.columns))
        if clash:
            raise ValueError(f"{entity} features would overwrite example columns {clash}")
        feats = feats.rename(columns=names).drop_duplicates([key, "ts"])
        out = out.merge(feats, on=[key, "ts"], how="left", validate="many_to_one")
    return out


def attach_history(
    examples: pd.DataFrame, events: pd.DataFrame, cutoffs: Mapping[str, pd.Timestamp] | None = None,
    config: HistoryConfig | None = None,
) -> pd.DataFrame:
    """Set ``searcher_history`` / ``searcher_history_weights`` of every example at the time Feast would serve
    it, not at the (possibly older) snapshot the join found:

    - a training example: as of the start of its day, i.e. the daily snapshot taken at the end of the day
      before (what the online store holds when the session happens);
    - an example of a held-out split named in ``cutoffs``: as of just after that split's cutoff (the end of
      the data the evaluated model learned from), like the index it is evaluated against.

    ``events`` is :func:`features.history.interactions` of the sessions and memberships that features may
    see (held-out test sessions already removed).
    """
    ts = _utc_ns(examples["ts"])
    as_of = pd.Series(ts.dt.floor("D").array, index=examples.index)  # a copy that can be assigned to
    for split, cutoff in (cutoffs or {}).items():
        as_of[examples["split"] == split] = pd.Timestamp(cutoff).tz_convert("UTC") + pd.Timedelta(microseconds=1)
    hist, weights = recent_documents(events, examples["searcher_id"].to_numpy(object), as_of, config)
    return examples.assign(**{searcher_column("history"): hist, searcher_column(weights_of("history")): weights})


def history_events(
    sessions: pd.DataFrame, memberships: pd.DataFrame | None, split: SplitConfig | None = None
) -> pd.DataFrame:
    """The interactions the history feature may read when examples are split with ``split``: held-out test
    sessions, test-marked memberships and memberships after the last non-test session left out."""
    s = sessions.reset_index(drop=True)
    visible = s[(split_sessions(s, split) != "test").to_numpy()]
    return interactions(visible, visible_memberships(memberships, visible))


def visible_memberships(memberships: pd.DataFrame | None, visible_sessions: pd.DataFrame) -> pd.DataFrame | None:
    """Memberships features may see: not test-marked (a source's own split) and not made after the last
    visible session (the end of the data a model learns from)."""
    if memberships is None or memberships.empty:
        return memberships
    m = memberships
    if "split" in m.columns:
        m = m[m["split"].astype(str) != "test"]
    end = pd.to_datetime(visible_sessions["ts"], utc=True).max()
    return m[pd.to_datetime(m["created_at"], utc=True) <= end]


def add_history(
    examples: pd.DataFrame, sessions: pd.DataFrame, memberships: pd.DataFrame | None,
    split: SplitConfig | None = None, config: HistoryConfig | None = None,
) -> pd.DataFrame:
    """:func:`attach_history` with the events of :func:`history_events` and the held-out cutoffs of the
    evaluation protocol: the one call of the training-data flow and of the benchmarks."""
    parts = partition(examples)
    cutoffs = {}
    for name in ("valid", "test"):
        if len(parts[name]) and any(len(parts[s]) for s in SPLITS[: SPLITS.index(name)]):
            cutoffs[name] = split_cutoff(parts, name)
    return attach_history(examples, history_events(sessions, memberships, split), cutoffs, config)


# --------------------------------------------------------------------------- fields known from creation


STATIC_SEARCHER_FIELDS = (*SEARCHER_CATEGORICAL, "profile", "profile_weights")  # a searcher's own fields


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
    return _fill(examples, documents, "doc_id", STATIC_FIELDS, doc_column, "doc_feature_ts")


def fill_static_searcher_fields(examples: pd.DataFrame, searchers: pd.DataFrame) -> pd.DataFrame:
    """The same for the searcher's own fields (city, region, country, language) of a searcher who joined
    after the last snapshot before the session; social features and counts stay missing."""
    return _fill(examples, searchers, "searcher_id", STATIC_SEARCHER_FIELDS, searcher_column, "searcher_feature_ts")


# --------------------------------------------------------------------------- output


def write_splits(examples: pd.DataFrame, out_dir: Path, config: dict) -> dict[str, int]:
    """Write ``train/valid/test.parquet`` and ``config.json`` into ``out_dir``, all or nothing.

    Files go to a temporary sibling directory that replaces ``out_dir`` only once everything is written.
    Returns the row count of each split (also recorded in the config).
    """
    out_dir = Path(out_dir)
    counts = {}
    with atomic_directory(out_dir, marker="config.json") as tmp:
        for name, frame in partition(examples).items():
            frame.to_parquet(tmp / f"{name}.parquet", index=False)
            counts[name] = len(frame)
        (tmp / "config.json").write_text(json.dumps({**config, "rows": counts}, indent=2, sort_keys=True, default=str))
    return counts
