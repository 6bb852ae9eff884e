"""The index corpus: which documents go into the index, with the features the document tower reads.

A rebuild as of time ``t`` takes the canonical ``documents`` table, applies the index selection filters
(:mod:`features.index_selection`, with the member aggregates of the feature snapshot) and joins each selected
document to the newest daily document snapshot not after ``t``. A document's own fields (title, body, type,
admin location) come from the canonical table, which has them from the document's creation on; the member
aggregates come from the snapshot, so a document created after the snapshot is indexed with its own fields
and empty aggregates (the next nightly run fills them in).

Evaluation and training's early stopping rank the same selection (:func:`served_documents`) over the documents
as they stood at a held-out split's cutoff (:func:`index_documents`), so that they measure what is served.
"""

from __future__ import annotations

from datetime import date, datetime

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from features.compute import FEATURE_TS, as_of_for_day
from features.index_selection import SelectionConfig, SelectionReport, select_documents
from features.schema import DOC_CATEGORICAL, DOC_MULTI, DOC_NUMERIC, DOC_TEXT, DOC_TIMES, weights_of

STATIC_FIELDS = (*DOC_TEXT, *DOC_CATEGORICAL)
AGGREGATE_FIELDS = (*[c for m in DOC_MULTI for c in (m, weights_of(m))], *DOC_NUMERIC)
CORPUS_COLUMNS = ("doc_id", *STATIC_FIELDS, *AGGREGATE_FIELDS, FEATURE_TS)
NO_CLICKS = pd.DataFrame({"doc_id": pd.Series([], dtype=object), "ts": pd.Series([], dtype="datetime64[ns, UTC]")})


class CorpusError(ValueError):
    """Missing inputs for the index corpus (no snapshot, missing columns)."""


def snapshot_day_for(days: list[date], as_of: date | None) -> date:
    """The snapshot day a rebuild uses: the newest written day not after ``as_of`` (None: the newest day)."""
    if not days:
        raise CorpusError("no document feature snapshots written yet; run the materialize flow for the dataset first")
    if as_of is None:
        return max(days)
    eligible = [d for d in days if d <= as_of]
    if not eligible:
        raise CorpusError(
            f"no document feature snapshot on or before {as_of} (the first is {min(days)}); "
            f"materialize {as_of} or pick a later as_of"
        )
    return max(eligible)


def rebuild_time(as_of: date | None, snapshot_day: date) -> datetime:
    """The selection time of a rebuild: the end of ``as_of`` (or of the snapshot day when None)."""
    return as_of_for_day(as_of or snapshot_day)


def _by_doc(snapshot: pd.DataFrame) -> pd.DataFrame:
    """Snapshot rows indexed by (string) doc_id, the last row of a document kept."""
    return snapshot.assign(doc_id=snapshot["doc_id"].astype(str)).drop_duplicates("doc_id", keep="last") \
        .set_index("doc_id")


def _select(documents: pd.DataFrame, snap: pd.DataFrame, as_of: datetime | pd.Timestamp,
            selection: SelectionConfig | None) -> tuple[pd.DataFrame, SelectionReport]:
    """:func:`select_documents` over the canonical ``documents`` with the activity and member aggregates of
    their snapshot rows ``snap`` (:func:`_by_doc`)."""
    docs = documents.assign(doc_id=documents["doc_id"].astype(str)).reset_index(drop=True)
    # Activity as the snapshot saw it: the canonical last_active_at may lie after a backfill's as_of.
    if "last_active_at" in snap.columns and "last_active_at" in docs.columns:
        seen = pd.to_datetime(docs["doc_id"].map(snap["last_active_at"]), utc=True)
        docs["last_active_at"] = seen.fillna(pd.to_datetime(docs["last_active_at"], utc=True))
    aggregates = snap[[c for c in DOC_NUMERIC if c in snap.columns]].reset_index()
    return select_documents(docs, as_of, selection, aggregates=aggregates)


def index_corpus(
    documents: pd.DataFrame,
    snapshot: pd.DataFrame,
    as_of: datetime | pd.Timestamp,
    selection: SelectionConfig | None = None,
    clicks: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, SelectionReport]:
    """(corpus in document-table convention, sorted by doc_id; the selection report).

    ``documents`` is the canonical table; ``snapshot`` one day's document feature rows. The corpus has
    :data:`CORPUS_COLUMNS`; ``feature_ts`` is null for documents without a snapshot row. ``selection``
    (default: the production selection) is decided by ``clicks`` (``doc_id``, ``ts``) where it depends on
    them (:meth:`~features.index_selection.SelectionConfig.resolved`).
    """
    missing = [c for c in ("doc_id", "doc_type", "created_at", *STATIC_FIELDS) if c not in documents.columns]
    if missing:
        raise CorpusError(f"documents lack column(s) {missing}; present: {list(documents.columns)}")
    missing = [c for c in ("doc_id", *AGGREGATE_FIELDS, *DOC_TIMES, FEATURE_TS) if c not in snapshot.columns]
    if missing:
        raise CorpusError(f"the document snapshot lacks column(s) {missing}; present: {list(snapshot.columns)}")
    snap = _by_doc(snapshot)
    chosen = (selection or SelectionConfig()).resolved(documents, NO_CLICKS if clicks is None else clicks, as_of)
    selected, report = _select(documents, snap, as_of, chosen)

    corpus = pd.DataFrame({"doc_id": selected["doc_id"].to_numpy(dtype=object)})
    for c in STATIC_FIELDS:
        corpus[c] = selected[c].astype(object).where(selected[c].notna(), "").astype(str).to_numpy()
    joined = snap.reindex(corpus["doc_id"])
    for c in (*AGGREGATE_FIELDS, FEATURE_TS):
        corpus[c] = joined[c].to_numpy()
    return corpus.sort_values("doc_id", kind="stable").reset_index(drop=True), report


# --------------------------------------------------------------------------- as of a held-out cutoff


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


def served_documents(
    index: pd.DataFrame, documents: pd.DataFrame, as_of: datetime | pd.Timestamp, clicks: pd.DataFrame,
    selection: SelectionConfig | None = None,
) -> pd.DataFrame:
    """The rows of ``index`` (one per document: :func:`index_documents`) that the nightly rebuilds of a
    held-out period starting at ``as_of`` serve: the production selection (or ``selection``), decided by the
    ``clicks`` (``doc_id``, ``ts``: the training clicks) as a rebuild decides it, applied as of ``as_of`` with
    the activity and member aggregates of each document's row. Documents born after ``as_of`` stay: the
    period's nightlies add them. What evaluation and early stopping rank against."""
    chosen = (selection or SelectionConfig()).resolved(documents, clicks, as_of).model_copy(
        update={"exists_as_of": False})
    ids = index["doc_id"].astype(str)
    docs = documents[documents["doc_id"].astype(str).isin(set(ids))]
    kept, _ = _select(docs, _by_doc(index), as_of, chosen)
    return index[ids.isin(set(kept["doc_id"])).to_numpy()].reset_index(drop=True)


def document_snapshots_from_repo(repo, as_of: datetime | pd.Timestamp) -> pd.DataFrame:
    """The document snapshot rows of a :class:`features.store.FeatureRepo` that :func:`index_documents`
    needs for ``as_of``: the newest day written not after it, and every later day."""
    days = repo.source_days("document")
    if not days:
        raise FileNotFoundError(f"no document snapshots under {repo.root}; run the materialize flow first")
    as_of = pd.Timestamp(as_of)
    first = 0
    for i, day in enumerate(days):
        if pd.Timestamp(as_of_for_day(day)) <= as_of:
            first = i
    frames = [repo.read_source("document", d) for d in tqdm(days[first:], desc="read document snapshots",
                                                              unit="day", disable=None)]
    return pd.concat(frames, ignore_index=True)


__all__ = ["CORPUS_COLUMNS", "CorpusError", "document_snapshots_from_repo", "index_corpus", "index_documents",
           "rebuild_time", "served_documents", "snapshot_day_for"]
