"""Index selection filters on a small hand-made documents table with known answers."""

from __future__ import annotations

import pandas as pd
import pytest

from features.index_selection import (
    ACTIVE_MEMBERS,
    MEMBER_COUNT,
    ActiveWithinDays,
    DocTypes,
    MinActiveMembers,
    MinMembers,
    SelectionConfig,
    SelectionError,
    UpcomingEvents,
    member_aggregates,
    select_documents,
)
from features.schema import DOC_NUMERIC
from ingest.contract import DOCUMENTS, validate_table

AS_OF = pd.Timestamp("2024-06-01", tz="UTC")


def ts(s: str | None):
    return None if s is None else pd.Timestamp(s, tz="UTC")


@pytest.fixture
def documents() -> pd.DataFrame:
    rows = [
        # doc_id, doc_type, created_at, last_active_at, starts_at
        ("g1", "group", "2023-01-01", "2024-05-20", None),  # active, 10 members
        ("g2", "group", "2023-01-01", "2024-01-01", None),  # inactive, 50 members
        ("g3", "group", "2024-05-30", None, None),  # new (counts as active), 1 member
        ("e1", "event", "2024-05-01", "2024-05-25", "2024-06-10"),  # upcoming
        ("e2", "event", "2024-04-01", "2024-05-28", "2024-05-15"),  # already started
        ("e3", "event", "2024-05-01", "2024-05-29", None),  # undated event
        ("p1", "person", "2020-01-01", "2024-05-31", None),  # active person, no members
        ("p2", "person", "2024-07-01", "2024-07-02", None),  # created after as_of
        ("m1", "movie", "2020-01-01", None, None),  # never active since 2020
        ("m2", "movie", "2020-01-01", "2024-05-02", None),  # exactly 30 days before as_of
    ]
    df = pd.DataFrame(
        {
            "doc_id": [r[0] for r in rows],
            "doc_type": [r[1] for r in rows],
            "title": [f"title {r[0]}" for r in rows],
            "body": "",
            "city": "",
            "region": "",
            "country": "",
            "created_at": [ts(r[2]) for r in rows],
            "last_active_at": pd.Series([ts(r[3]) for r in rows], dtype="datetime64[ns, UTC]"),
            "starts_at": pd.Series([ts(r[4]) for r in rows], dtype="datetime64[ns, UTC]"),
        }
    )
    return validate_table(df, DOCUMENTS)


@pytest.fixture
def aggregates() -> pd.DataFrame:
    return pd.DataFrame(
        {"doc_id": ["g1", "g2", "g3", "e1"], "member_count": [10, 50, 1, 3], "active_members_30d": [4, 0, 1, 3]}
    )


def ids(df: pd.DataFrame) -> list[str]:
    return df["doc_id"].tolist()


def test_configured_filters_remove_known_documents_in_order(documents, aggregates):
    config = SelectionConfig.everything(
        active_within_days=30, upcoming_events=True, min_members=5, member_doc_types=["group"]
    )
    selected, report = select_documents(documents, AS_OF, config, aggregates)
    assert ids(selected) == ["g1", "e1", "e3", "p1", "m2"]  # original order kept
    assert [(s.name, s.removed, s.remaining) for s in report.steps] == [
        ("exists_as_of", 1, 9),  # p2
        ("active_within_days", 2, 7),  # g2, m1 (m2 sits exactly on the window edge and stays)
        ("upcoming_events", 1, 6),  # e2
        ("min_members", 1, 5),  # g3; events, people and movies are outside the member filter's scope
    ]
    assert (report.input_count, report.selected_count) == (10, 5)
    assert list(selected.columns) == list(documents.columns)
    md = report.to_markdown()
    assert "5 of 10 kept" in md and "| upcoming_events |" in md


def test_without_filters_only_documents_from_the_future_go(documents):
    selected, report = select_documents(documents, AS_OF, SelectionConfig.everything())
    assert "p2" not in ids(selected) and len(selected) == 9
    everything, report = select_documents(documents, AS_OF, SelectionConfig.everything(exists_as_of=False))
    assert len(everything) == 10 and report.steps == []


def test_single_filters(documents, aggregates):
    def keep(f):
        return ids(select_documents(documents, AS_OF, filters=[f], aggregates=aggregates)[0])

    assert keep(DocTypes(("group", "movie"))) == ["g1", "g2", "g3", "m1", "m2"]
    assert keep(UpcomingEvents()) == ["g1", "g2", "g3", "e1", "e3", "p1", "p2", "m1", "m2"]
    assert keep(ActiveWithinDays(7)) == ["g3", "e1", "e2", "e3", "p1", "p2"]  # e1 sits on the edge
    assert keep(ActiveWithinDays(7, doc_types=("group",))) == [
        "g3", "e1", "e2", "e3", "p1", "p2", "m1", "m2"
    ]
    # Absent from the aggregates means 0 members.
    assert keep(MinMembers(3)) == ["g1", "g2", "e1"]
    assert keep(MinActiveMembers(1, doc_types=("group",))) == [
        "g1", "g3", "e1", "e2", "e3", "p1", "p2", "m1", "m2"
    ]


def test_doc_types_from_config(documents):
    selected, report = select_documents(documents, AS_OF, SelectionConfig.everything(doc_types=["event"]))
    assert ids(selected) == ["e1", "e2", "e3"]
    assert [s.removed for s in report.steps] == [1, 6]


def test_member_aggregates_feed_the_member_filters(documents):
    memberships = pd.DataFrame(
        {
            "searcher_id": ["a", "b", "c", "a", "d"],
            "doc_id": ["g1", "g1", "g1", "g2", "g2"],
            "created_at": [ts("2024-01-01")] * 4 + [ts("2024-07-01")],  # d joins after as_of
        }
    )
    sessions = pd.DataFrame(
        {"searcher_id": ["a", "b", "c"], "ts": [ts("2024-05-20"), ts("2024-03-01"), ts("2024-06-02")]}
    )
    agg = member_aggregates(memberships, AS_OF, sessions, active_days=30)
    by_doc = agg.set_index("doc_id")
    assert by_doc.loc["g1", "member_count"] == 3 and by_doc.loc["g2", "member_count"] == 1
    assert by_doc.loc["g1", "active_members_30d"] == 1  # only a: b is too old, c is after as_of
    assert by_doc.loc["g2", "active_members_30d"] == 1
    selected, _ = select_documents(
        documents, AS_OF, SelectionConfig.everything(min_members=2, member_doc_types=["group"]), agg
    )
    assert [d for d in ids(selected) if d.startswith("g")] == ["g1"]


def test_aggregate_columns_are_the_feature_columns():
    assert {MEMBER_COUNT, ACTIVE_MEMBERS} <= set(DOC_NUMERIC)


def test_errors_say_what_is_needed(documents):
    with pytest.raises(SelectionError, match="aggregates"):
        select_documents(documents, AS_OF, SelectionConfig.everything(min_members=2))
    with pytest.raises(SelectionError, match="timezone-aware"):
        select_documents(documents, pd.Timestamp("2024-06-01"))
    with pytest.raises(SelectionError, match="last_active_at"):
        select_documents(documents.drop(columns=["last_active_at"]), AS_OF, SelectionConfig.everything(active_within_days=3))
    with pytest.raises(SelectionError, match="member_count"):
        select_documents(documents, AS_OF, SelectionConfig.everything(min_members=1), pd.DataFrame({"doc_id": ["g1"]}))
    with pytest.raises(SelectionError, match="days > 0"):
        ActiveWithinDays(0)
    with pytest.raises(ValueError):
        SelectionConfig(active_within_days=-1)
    with pytest.raises(ValueError):
        SelectionConfig(unknown_filter=True)


# --------------------------------------------------------------------------- the production selection


def clicks(*rows: tuple[str, str]) -> pd.DataFrame:
    return pd.DataFrame({"doc_id": [r[0] for r in rows], "ts": [ts(r[1]) for r in rows]})


def test_the_production_selection_is_the_default_and_is_decided_by_the_clicks(documents):
    production = SelectionConfig()
    with pytest.raises(SelectionError, match="resolved"):
        select_documents(documents, AS_OF, production)  # "auto" is a decision, not a filter
    # RSVP-like clicks, all before the event starts: started events leave the index
    before = production.resolved(documents, clicks(("e1", "2024-05-20"), ("e2", "2024-05-10")), AS_OF)
    assert before.upcoming_events is True
    selected, report = select_documents(documents, AS_OF, before)
    assert ids(selected) == ["g1", "g3", "e1", "e3", "p1", "m1", "m2"]  # no inactive group, no started event
    assert [s.name for s in report.steps] == ["exists_as_of", "active_within_days", "upcoming_events"]
    # people look events up after they started: started events stay
    after = production.resolved(documents, clicks(("e2", "2024-05-20"), ("e1", "2024-05-21")), AS_OF)
    assert after.upcoming_events is False
    assert "e2" in ids(select_documents(documents, AS_OF, after)[0])
    # clicks older than the window decide nothing; without event clicks started events leave
    assert production.resolved(documents, clicks(("e2", "2023-12-01")), AS_OF).upcoming_events is True
    assert production.resolved(documents, clicks(), AS_OF).upcoming_events is True
    assert SelectionConfig.everything().resolved(documents, clicks(), AS_OF).filters()[0].name == "exists_as_of"


def test_evaluation_ranks_the_documents_the_rebuild_indexes(documents, aggregates):
    """One selection for the rebuild and for evaluation: at the same time and with the same clicks, the
    evaluation index holds the rebuild's corpus, plus the documents born later that the next nightlies add."""
    from features.compute import FEATURE_TS
    from features.corpus import AGGREGATE_FIELDS, index_corpus, served_documents

    snapshot = documents[["doc_id", "last_active_at"]].merge(aggregates, on="doc_id", how="left")
    snapshot = snapshot.assign(**{c: None for c in AGGREGATE_FIELDS if c not in snapshot.columns})
    snapshot = snapshot.assign(**{FEATURE_TS: AS_OF, "created_at": documents["created_at"], "updated_at": AS_OF})
    seen = clicks(("e1", "2024-05-20"))
    corpus, _ = index_corpus(documents, snapshot, AS_OF, clicks=seen)
    served = served_documents(snapshot, documents, AS_OF, seen)
    assert set(served["doc_id"]) == set(corpus["doc_id"]) | {"p2"}  # p2 is born after AS_OF
