"""The index corpus: which documents go into the index, with the features the document tower reads.

A rebuild as of time ``t`` takes the canonical ``documents`` table, applies the index selection filters
(:mod:`serving.index_selection`, with the member aggregates of the feature snapshot) and joins each selected
document to the newest daily document snapshot not after ``t``. A document's own fields (title, body, type,
admin location) come from the canonical table, which has them from the document's creation on; the member
aggregates come from the snapshot, so a document created after the snapshot is indexed with its own fields
and empty aggregates (the next nightly run fills them in).
"""

from __future__ import annotations

from datetime import date, datetime

import pandas as pd

from features.compute import FEATURE_TS, as_of_for_day
from features.schema import DOC_CATEGORICAL, DOC_MULTI, DOC_NUMERIC, DOC_TEXT, DOC_TIMES, weights_of
from serving.index_selection import SelectionConfig, SelectionReport, select_documents

STATIC_FIELDS = (*DOC_TEXT, *DOC_CATEGORICAL)
AGGREGATE_FIELDS = (*[c for m in DOC_MULTI for c in (m, weights_of(m))], *DOC_NUMERIC)
CORPUS_COLUMNS = ("doc_id", *STATIC_FIELDS, *AGGREGATE_FIELDS, FEATURE_TS)


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


def index_corpus(
    documents: pd.DataFrame,
    snapshot: pd.DataFrame,
    as_of: datetime | pd.Timestamp,
    selection: SelectionConfig | None = None,
) -> tuple[pd.DataFrame, SelectionReport]:
    """(corpus in document-table convention, sorted by doc_id; the selection report).

    ``documents`` is the canonical table; ``snapshot`` one day's document feature rows. The corpus has
    :data:`CORPUS_COLUMNS`; ``feature_ts`` is null for documents without a snapshot row.
    """
    missing = [c for c in ("doc_id", "doc_type", "created_at", *STATIC_FIELDS) if c not in documents.columns]
    if missing:
        raise CorpusError(f"documents lack column(s) {missing}; present: {list(documents.columns)}")
    missing = [c for c in ("doc_id", *AGGREGATE_FIELDS, *DOC_TIMES, FEATURE_TS) if c not in snapshot.columns]
    if missing:
        raise CorpusError(f"the document snapshot lacks column(s) {missing}; present: {list(snapshot.columns)}")
    snap = snapshot.assign(doc_id=snapshot["doc_id"].astype(str)).drop_duplicates("doc_id", keep="last")
    snap = snap.set_index("doc_id")
    docs = documents.assign(doc_id=documents["doc_id"].astype(str)).reset_index(drop=True)
    # Activity as the snapshot saw it: the canonical last_active_at may lie after a backfill's as_of.
    seen = pd.to_datetime(docs["doc_id"].map(snap["last_active_at"]), utc=True)
    if "last_active_at" in docs.columns:
        docs["last_active_at"] = seen.fillna(pd.to_datetime(docs["last_active_at"], utc=True))
    aggregates = snap[list(DOC_NUMERIC)].reset_index()
    selected, report = select_documents(docs, as_of, selection, aggregates=aggregates)

    corpus = pd.DataFrame({"doc_id": selected["doc_id"].to_numpy(dtype=object)})
    for c in STATIC_FIELDS:
        corpus[c] = selected[c].astype(object).where(selected[c].notna(), "").astype(str).to_numpy()
    joined = snap.reindex(corpus["doc_id"])
    for c in (*AGGREGATE_FIELDS, FEATURE_TS):
        corpus[c] = joined[c].to_numpy()
    return corpus.sort_values("doc_id", kind="stable").reset_index(drop=True), report


__all__ = ["CORPUS_COLUMNS", "CorpusError", "index_corpus", "rebuild_time", "snapshot_day_for"]
