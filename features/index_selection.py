"""Index selection: which documents go into the embedding index at all.

The paper indexes only what is worth retrieving (monthly active users, recent events, popular pages and
groups): a smaller index is faster and returns less junk. Each filter here is a small typed object that
says which rows of the canonical ``documents`` table to keep, as of a point in time, optionally using
per-document aggregates (``member_count``, ``active_members_30d``: the document feature columns of
``features.schema``). :func:`select_documents` applies the filters that a :class:`SelectionConfig` turns on,
in a fixed order, and reports how many documents each one removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, Sequence

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

# Document feature columns of features.schema (DOC_NUMERIC); the tests check they stay in step.
MEMBER_COUNT = "member_count"
ACTIVE_MEMBERS = "active_members_30d"


class SelectionError(ValueError):
    """Bad input to index selection (missing columns, naive timestamps, missing aggregates)."""


def _as_utc(as_of: Any) -> pd.Timestamp:
    ts = pd.Timestamp(as_of)
    if ts.tzinfo is None:
        raise SelectionError(f"as_of must be timezone-aware (UTC), got naive {ts!s}")
    return ts.tz_convert("UTC")


def _require(df: pd.DataFrame, columns: Sequence[str], what: str, filt: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise SelectionError(f"{filt} needs column(s) {missing} in {what}; present: {list(df.columns)}")


def _types_mask(docs: pd.DataFrame, doc_types: tuple[str, ...] | None) -> np.ndarray:
    """Rows a type-scoped filter applies to (all rows when doc_types is None)."""
    if doc_types is None:
        return np.ones(len(docs), dtype=bool)
    return docs["doc_type"].isin(doc_types).to_numpy()


class SelectionFilter(Protocol):
    """A filter returns a keep-mask over the documents table (True = stays in the index)."""

    name: str

    def describe(self) -> str: ...

    def keep(self, docs: pd.DataFrame, as_of: pd.Timestamp, aggregates: pd.DataFrame | None) -> np.ndarray: ...


@dataclass(frozen=True)
class ExistsAsOf:
    """Drop documents created after ``as_of``: a rebuild for a past date sees only what existed then."""

    name: str = "exists_as_of"

    def describe(self) -> str:
        return "created_at <= as_of"

    def keep(self, docs: pd.DataFrame, as_of: pd.Timestamp, aggregates: pd.DataFrame | None) -> np.ndarray:
        _require(docs, ["created_at"], "documents", self.name)
        return (pd.to_datetime(docs["created_at"], utc=True) <= as_of).to_numpy()


@dataclass(frozen=True)
class DocTypes:
    """Keep only the listed document types."""

    allowed: tuple[str, ...]
    name: str = "doc_types"

    def __post_init__(self) -> None:
        if not self.allowed:
            raise SelectionError("DocTypes needs at least one allowed doc_type")

    def describe(self) -> str:
        return f"doc_type in {list(self.allowed)}"

    def keep(self, docs: pd.DataFrame, as_of: pd.Timestamp, aggregates: pd.DataFrame | None) -> np.ndarray:
        _require(docs, ["doc_type"], "documents", self.name)
        return docs["doc_type"].isin(self.allowed).to_numpy()


@dataclass(frozen=True)
class ActiveWithinDays:
    """Keep documents active within ``days`` before ``as_of`` (``last_active_at``, else ``created_at``).

    A document with no recorded activity counts as active when it was created; activity after as_of
    (a backfill over an older date) counts as active. ``doc_types`` limits the filter to some types;
    other types pass.
    """

    days: float
    doc_types: tuple[str, ...] | None = None
    name: str = "active_within_days"

    def __post_init__(self) -> None:
        if not self.days > 0:
            raise SelectionError(f"ActiveWithinDays needs days > 0, got {self.days}")

    def describe(self) -> str:
        scope = f" for {list(self.doc_types)}" if self.doc_types else ""
        return f"last active within {self.days:g} days of as_of{scope}"

    def keep(self, docs: pd.DataFrame, as_of: pd.Timestamp, aggregates: pd.DataFrame | None) -> np.ndarray:
        _require(docs, ["last_active_at", "created_at"], "documents", self.name)
        last = pd.to_datetime(docs["last_active_at"], utc=True)
        last = last.fillna(pd.to_datetime(docs["created_at"], utc=True))
        recent = (last >= as_of - timedelta(days=self.days)).to_numpy()
        return recent | ~_types_mask(docs, self.doc_types)


@dataclass(frozen=True)
class UpcomingEvents:
    """Remove events that already started (``starts_at`` < as_of); non-events and undated events pass."""

    event_type: str = "event"
    name: str = "upcoming_events"

    def describe(self) -> str:
        return f"{self.event_type}s with starts_at >= as_of"

    def keep(self, docs: pd.DataFrame, as_of: pd.Timestamp, aggregates: pd.DataFrame | None) -> np.ndarray:
        _require(docs, ["doc_type"], "documents", self.name)
        if "starts_at" not in docs.columns:
            return np.ones(len(docs), dtype=bool)  # no dated events in this source
        starts = pd.to_datetime(docs["starts_at"], utc=True)
        past = (starts < as_of).fillna(False).to_numpy(dtype=bool)
        return ~(past & (docs["doc_type"] == self.event_type).to_numpy())


def _min_aggregate_keep(
    docs: pd.DataFrame, aggregates: pd.DataFrame | None, column: str, minimum: float,
    doc_types: tuple[str, ...] | None, name: str,
) -> np.ndarray:
    if aggregates is None:
        raise SelectionError(
            f"{name} needs per-document aggregates with columns ['doc_id', {column!r}]; "
            "pass aggregates= (see member_aggregates)"
        )
    _require(aggregates, ["doc_id", column], "aggregates", name)
    values = docs["doc_id"].map(aggregates.set_index("doc_id")[column]).fillna(0).to_numpy()
    return (values >= minimum) | ~_types_mask(docs, doc_types)


@dataclass(frozen=True)
class MinMembers:
    """Keep documents with at least ``minimum`` members (``member_count``; absent from aggregates = 0).

    ``doc_types`` limits the filter (member counts mean something for groups, not for people).
    """

    minimum: int
    doc_types: tuple[str, ...] | None = None
    column: str = MEMBER_COUNT
    name: str = "min_members"

    def describe(self) -> str:
        scope = f" for {list(self.doc_types)}" if self.doc_types else ""
        return f"{self.column} >= {self.minimum}{scope}"

    def keep(self, docs: pd.DataFrame, as_of: pd.Timestamp, aggregates: pd.DataFrame | None) -> np.ndarray:
        return _min_aggregate_keep(docs, aggregates, self.column, self.minimum, self.doc_types, self.name)


@dataclass(frozen=True)
class MinActiveMembers(MinMembers):
    """Keep documents with at least ``minimum`` recently active members (``active_members_30d``)."""

    column: str = ACTIVE_MEMBERS
    name: str = "min_active_members"


def _types(doc_types: list[str] | None) -> tuple[str, ...] | None:
    return tuple(doc_types) if doc_types else None


class SelectionConfig(BaseModel):
    """Which filters are on. Filters run in the order of the fields; ``None``/False means off."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    exists_as_of: bool = Field(True, description="drop documents created after as_of")
    doc_types: list[str] | None = Field(None, min_length=1, description="keep only these doc types")
    active_within_days: float | None = Field(None, gt=0, description="keep documents active within N days")
    active_doc_types: list[str] | None = Field(None, description="types the activity filter applies to")
    upcoming_events: bool = Field(False, description="drop events whose starts_at is past")
    event_type: str = Field("event", description="the doc_type that marks events")
    min_members: int | None = Field(None, ge=0, description="keep documents with >= N members")
    min_active_members: int | None = Field(None, ge=0, description="keep documents with >= N active members")
    member_doc_types: list[str] | None = Field(
        None, description="types the member filters apply to (None: all types)"
    )

    def filters(self) -> list[SelectionFilter]:
        out: list[SelectionFilter] = []
        if self.exists_as_of:
            out.append(ExistsAsOf())
        if self.doc_types:
            out.append(DocTypes(tuple(self.doc_types)))
        if self.active_within_days is not None:
            out.append(ActiveWithinDays(self.active_within_days, _types(self.active_doc_types)))
        if self.upcoming_events:
            out.append(UpcomingEvents(self.event_type))
        if self.min_members is not None:
            out.append(MinMembers(self.min_members, _types(self.member_doc_types)))
        if self.min_active_members is not None:
            out.append(MinActiveMembers(self.min_active_members, _types(self.member_doc_types)))
        return out


class FilterStep(BaseModel):
    name: str
    description: str
    removed: int
    remaining: int


class SelectionReport(BaseModel):
    """How many documents each filter removed, in order, and how many remain."""

    as_of: datetime
    input_count: int
    steps: list[FilterStep]
    selected_count: int

    def to_markdown(self) -> str:
        lines = [
            f"Index selection as of {self.as_of.isoformat()}: {self.selected_count} of {self.input_count} kept",
            "",
            "| filter | rule | removed | remaining |",
            "|---|---|---:|---:|",
        ]
        lines += [f"| {s.name} | {s.description} | {s.removed} | {s.remaining} |" for s in self.steps]
        return "\n".join(lines)


def select_documents(
    documents: pd.DataFrame,
    as_of: datetime | pd.Timestamp | str,
    config: SelectionConfig | None = None,
    aggregates: pd.DataFrame | None = None,
    filters: Sequence[SelectionFilter] | None = None,
) -> tuple[pd.DataFrame, SelectionReport]:
    """Apply the configured filters in order; return the kept rows (original order) and the report.

    ``filters`` replaces the config's list (for custom filters that follow :class:`SelectionFilter`).
    """
    ts = _as_utc(as_of)
    _require(documents, ["doc_id", "doc_type"], "documents", "select_documents")
    chain = list(filters) if filters is not None else (config or SelectionConfig()).filters()
    docs = documents.reset_index(drop=True)
    alive = np.ones(len(docs), dtype=bool)
    steps: list[FilterStep] = []
    for f in chain:
        keep = np.asarray(f.keep(docs, ts, aggregates), dtype=bool)
        if keep.shape != alive.shape:
            raise SelectionError(f"filter {f.name} returned {keep.shape[0]} flags for {len(docs)} documents")
        removed = int((alive & ~keep).sum())
        alive &= keep
        steps.append(FilterStep(name=f.name, description=f.describe(), removed=removed, remaining=int(alive.sum())))
    report = SelectionReport(
        as_of=ts.to_pydatetime(), input_count=len(docs), steps=steps, selected_count=int(alive.sum())
    )
    return docs[alive].reset_index(drop=True), report


def member_aggregates(
    memberships: pd.DataFrame,
    as_of: datetime | pd.Timestamp | str,
    sessions: pd.DataFrame | None = None,
    active_days: float = 30,
) -> pd.DataFrame:
    """Per-document ``member_count`` (memberships created by as_of) and, given sessions,
    ``active_members_30d`` (members with a session in the ``active_days`` before as_of).

    A simple stand-in for when the feature store's document aggregates are not at hand.
    """
    ts = _as_utc(as_of)
    _require(memberships, ["searcher_id", "doc_id", "created_at"], "memberships", "member_aggregates")
    m = memberships[pd.to_datetime(memberships["created_at"], utc=True) <= ts]
    out = m.groupby("doc_id").size().rename(MEMBER_COUNT).reset_index()
    if sessions is not None:
        _require(sessions, ["searcher_id", "ts"], "sessions", "member_aggregates")
        st = pd.to_datetime(sessions["ts"], utc=True)
        window = (st <= ts) & (st > ts - timedelta(days=active_days))
        active = set(sessions.loc[window, "searcher_id"])
        act = m[m["searcher_id"].isin(active)].groupby("doc_id").size().rename(ACTIVE_MEMBERS)
        out[ACTIVE_MEMBERS] = out["doc_id"].map(act).fillna(0).astype("int64")
    return out


__all__ = [
    "ACTIVE_MEMBERS",
    "MEMBER_COUNT",
    "ActiveWithinDays",
    "DocTypes",
    "ExistsAsOf",
    "FilterStep",
    "MinActiveMembers",
    "MinMembers",
    "SelectionConfig",
    "SelectionError",
    "SelectionFilter",
    "SelectionReport",
    "UpcomingEvents",
    "member_aggregates",
    "select_documents",
]
