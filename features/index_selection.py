"""Index selection: which documents go into the embedding index at all.

The paper indexes only what is worth retrieving (monthly active users, recent events, popular pages and
groups): a smaller index is faster and returns less junk. Each filter here is a small typed object that
says which rows of the canonical ``documents`` table to keep, as of a point in time, optionally using
per-document aggregates (``member_count``, ``active_members_30d``: the document feature columns of
``features.schema``). :func:`select_documents` applies the filters that a :class:`SelectionConfig` turns on,
in a fixed order, and reports how many documents each one removed.

The defaults of :class:`SelectionConfig` are the production selection: the one definition of what the
nightly index holds, used by the rebuild, by training's early stopping and by evaluation (which then measure
the index that is served). Whether events leave the index once they start is decided from the clicks before
the selection time (:meth:`SelectionConfig.resolved`): where people keep clicking events after they started,
they stay.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol, Sequence

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

    @property
    def name(self) -> str: ...

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


MAX_CLICKS_ON_STARTED_EVENTS = 0.01  # above this share of event clicks after the start, started events stay
CLICK_WINDOW_DAYS = 90  # the clicks before the selection time that decide upcoming_events="auto"


def clicks_after_start(clicks: pd.DataFrame, documents: pd.DataFrame, as_of: Any,
                       event_type: str = "event") -> float | None:
    """Share of the clicks on dated events in the :data:`CLICK_WINDOW_DAYS` before ``as_of`` that came after
    the event had started; None when there are none. ``clicks``: ``doc_id`` and ``ts`` per click."""
    if "starts_at" not in documents.columns or clicks.empty:
        return None
    ts = _as_utc(as_of)
    when = pd.to_datetime(clicks["ts"], utc=True)
    window = ((when <= ts) & (when > ts - timedelta(days=CLICK_WINDOW_DAYS))).to_numpy()
    events = documents.loc[documents["doc_type"] == event_type, ["doc_id", "starts_at"]].dropna()
    starts = pd.to_datetime(events["starts_at"], utc=True)
    start_of = pd.Series(starts.to_numpy(), index=events["doc_id"].astype(str).to_numpy())
    start_of = start_of[~start_of.index.duplicated()]
    clicked_start = clicks.loc[window, "doc_id"].astype(str).map(start_of)
    dated = clicked_start.notna().to_numpy()
    if not dated.any():
        return None
    after = when[window].to_numpy()[dated] > pd.to_datetime(clicked_start[dated], utc=True).to_numpy()
    return float(after.mean())


def session_clicks(sessions: pd.DataFrame) -> pd.DataFrame:
    """One row (``doc_id``, ``ts``) per click of canonical ``sessions``: what :meth:`SelectionConfig.resolved`
    reads."""
    rows = sessions[["ts", "clicked"]].explode("clicked").dropna(subset=["clicked"])
    return pd.DataFrame({"doc_id": rows["clicked"].astype(str).to_numpy(), "ts": rows["ts"].to_numpy()})


class SelectionConfig(BaseModel):
    """Which filters are on. Filters run in the order of the fields; ``None``/False means off.

    The defaults are the production selection (see the module docstring): no group without activity in the
    last 90 days, and no event that already started unless the clicks show events are clicked after they
    start (``"auto"``, decided by :meth:`resolved`); people always stay searchable.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    exists_as_of: bool = Field(True, description="drop documents created after as_of")
    doc_types: list[str] | None = Field(None, min_length=1, description="keep only these doc types")
    active_within_days: float | None = Field(90, gt=0, description="keep documents active within N days")
    active_doc_types: list[str] | None = Field(["group"], description="types the activity filter applies to")
    upcoming_events: bool | Literal["auto"] = Field(
        "auto", description="drop events whose starts_at is past; auto: unless more than 1% of the clicks on "
                            "events in the 90 days before as_of came after the event started")
    event_type: str = Field("event", description="the doc_type that marks events")
    min_members: int | None = Field(None, ge=0, description="keep documents with >= N members")
    min_active_members: int | None = Field(None, ge=0, description="keep documents with >= N active members")
    member_doc_types: list[str] | None = Field(
        None, description="types the member filters apply to (None: all types)"
    )

    @classmethod
    def everything(cls, **filters: Any) -> SelectionConfig:
        """Only ``filters`` (and existence): every document known at the selection time otherwise."""
        return cls(**{"active_within_days": None, "active_doc_types": None, "upcoming_events": False, **filters})

    def resolved(self, documents: pd.DataFrame, clicks: pd.DataFrame, as_of: Any) -> SelectionConfig:
        """This selection with ``upcoming_events="auto"`` decided by the clicks (``doc_id``, ``ts``) before
        ``as_of`` (:func:`clicks_after_start`)."""
        if self.upcoming_events != "auto":
            return self
        share = clicks_after_start(clicks, documents, as_of, self.event_type)
        return self.model_copy(update={"upcoming_events": share is None or share <= MAX_CLICKS_ON_STARTED_EVENTS})

    def filters(self) -> list[SelectionFilter]:
        if self.upcoming_events == "auto":
            raise SelectionError('upcoming_events="auto" is decided by the clicks: call resolved() first')
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
    "CLICK_WINDOW_DAYS",
    "ACTIVE_MEMBERS",
    "MAX_CLICKS_ON_STARTED_EVENTS",
    "clicks_after_start",
    "session_clicks",
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
