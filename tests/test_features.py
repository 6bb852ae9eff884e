"""Feature computation on small hand-made canonical tables whose feature values are known."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from features.compute import (
    DOCUMENT_COLUMNS,
    SEARCHER_COLUMNS,
    FeatureConfig,
    as_of_for_day,
    cluster_anchor,
    compute_features,
    snapshot_day,
    top_k_lists,
)
from features.social import (
    CommunityConfig,
    comembership_pairs,
    detect_communities,
    make_graph,
)
from ingest.contract import CanonicalDataset, empty_table, validate_dataset


def T(s: str) -> pd.Timestamp:
    return pd.Timestamp(s, tz="UTC")


DAILY = FeatureConfig(cluster_period_days=1)


def hand_made(friendships: bool = True) -> CanonicalDataset:
    """Two friend cliques A = a1..a4 (Paris, a4 Lyon) and B = b1..b4 (Berlin), one bridge a1-b1, an isolated
    z1 who befriends a2 on 2024-01-20, and n1 who joins on 2024-01-23 and befriends b2 and b3."""
    ids = ["a1", "a2", "a3", "a4", "b1", "b2", "b3", "b4", "z1", "n1"]
    cities = ["Paris", "Paris", "Paris", "Lyon", "Berlin", "Berlin", "Berlin", "Berlin", None, "Berlin"]
    searchers = pd.DataFrame({
        "searcher_id": ids,
        "city": cities,
        "region": ["IDF"] * 3 + ["ARA"] + ["BE"] * 4 + [None, "BE"],
        "country": ["FR"] * 4 + ["DE"] * 4 + [None, "DE"],
        "language": ["fr"] * 4 + ["de"] * 4 + [None, "de"],
        "created_at": [T("2024-01-01")] * 9 + [T("2024-01-23")],
    })
    edges = []
    for group in (["a1", "a2", "a3", "a4"], ["b1", "b2", "b3", "b4"]):
        edges += [(x, y, T("2024-01-02")) for x in group for y in group if x != y]
    edges += [("a1", "b1", T("2024-01-02")), ("b1", "a1", T("2024-01-02"))]
    edges += [("z1", "a2", T("2024-01-20 12:00")), ("a2", "z1", T("2024-01-20 12:00"))]
    edges += [("n1", "b2", T("2024-01-23 12:00")), ("b2", "n1", T("2024-01-23 12:00")),
              ("n1", "b3", T("2024-01-23 12:00")), ("b3", "n1", T("2024-01-23 12:00"))]
    friends = pd.DataFrame(edges, columns=["searcher_id", "friend_id", "created_at"])
    documents = pd.DataFrame({
        "doc_id": ["g1", "g2", "g3"],
        "doc_type": ["group", "event", "group"],
        "title": ["Paris hikers", "Berlin techno night", None],
        "body": ["we walk", "we dance", None],
        "city": ["Paris", None, "Lyon"],
        "region": ["IDF", None, "ARA"],
        "country": ["FR", None, "FR"],
        "created_at": [T("2024-01-01"), T("2024-01-01"), T("2024-01-20")],
        # the source's own last_active_at lies in the future of every snapshot: it must not leak
        "last_active_at": [T("2024-06-01"), T("2024-01-02"), None],
    })
    members = pd.DataFrame(
        [("a1", "g1", T("2024-01-03")), ("a2", "g1", T("2024-01-03")), ("a3", "g1", T("2024-01-03")),
         ("b1", "g1", T("2024-01-12")), ("a4", "g1", T("2024-01-20")),
         ("b2", "g2", T("2024-01-03")), ("b3", "g2", T("2024-01-03"))],
        columns=["searcher_id", "doc_id", "created_at"],
    )
    sessions = pd.DataFrame({
        "session_id": ["x1", "x2"],
        "searcher_id": ["a2", "b2"],
        "ts": [T("2024-02-20 10:00"), T("2024-01-05")],
        "query": ["hiking", "techno"],
        "impressed": [["g1", "g2"], ["g2"]],
        "clicked": [["g1"], ["g2"]],
    })
    tables = validate_dataset({
        "searchers": searchers, "documents": documents,
        "friendships": friends if friendships else empty_table("friendships"),
        "memberships": members, "sessions": sessions,
    })
    return CanonicalDataset(**tables)


def row(df: pd.DataFrame, key: str, value: str) -> pd.Series:
    hit = df[df[key] == value]
    assert len(hit) == 1, f"expected one row for {value}, got {len(hit)}"
    return hit.iloc[0]


def as_dict(r: pd.Series, name: str) -> dict[str, float]:
    return dict(zip(r[name], r[f"{name}_weights"]))


def test_last_active_without_any_source_value(data):
    """A source with no last_active_at at all (e.g. a paper corpus) still gets activity from its events."""
    from dataclasses import replace

    blank = replace(data, documents=data.documents.assign(last_active_at=pd.NaT))
    blank.documents["last_active_at"] = pd.to_datetime(blank.documents["last_active_at"], utc=True)
    _, d = compute_features(blank, T("2024-01-15"), DAILY)
    assert row(d, "doc_id", "g1").last_active_at == T("2024-01-12")
    assert row(d, "doc_id", "g2").last_active_at == T("2024-01-05")


@pytest.fixture(scope="module")
def data() -> CanonicalDataset:
    return hand_made()


@pytest.fixture(scope="module")
def jan15(data):
    return compute_features(data, T("2024-01-15"), DAILY)


def test_columns_and_snapshot_stamps(jan15):
    s, d = jan15
    assert tuple(s.columns) == SEARCHER_COLUMNS and tuple(d.columns) == DOCUMENT_COLUMNS
    for df in (s, d):
        assert (df["event_timestamp"] == T("2024-01-15")).all()
        assert (df["created_timestamp"] == df["event_timestamp"]).all()
        assert (df["feature_ts"] == df["event_timestamp"]).all()
    assert list(s["searcher_id"]) == sorted(s["searcher_id"])


def test_location_features(jan15):
    s, _ = jan15
    a4 = row(s, "searcher_id", "a4")
    assert (a4.city, a4.region, a4.country, a4.language) == ("Lyon", "ARA", "FR", "fr")
    z1 = row(s, "searcher_id", "z1")
    assert (z1.city, z1.country, z1.language) == ("", "", "")  # unknown is "", never null


def test_two_cliques_give_two_clusters_and_friend_mix(jan15):
    s, _ = jan15
    own = {r.searcher_id: r.clusters[0] for r in s.itertuples() if r.clusters}
    assert {own[x] for x in ("a1", "a2", "a3", "a4")} == {"c_a1"}
    assert {own[x] for x in ("b1", "b2", "b3", "b4")} == {"c_b1"}
    # a1: own cluster 0.5 + friends a2,a3,a4 (A) and b1 (B): 0.5 * 3/4 and 0.5 * 1/4
    assert as_dict(row(s, "searcher_id", "a1"), "clusters") == pytest.approx({"c_a1": 0.875, "c_b1": 0.125})
    assert as_dict(row(s, "searcher_id", "a2"), "clusters") == pytest.approx({"c_a1": 1.0})
    assert row(s, "searcher_id", "a1").friend_count == 4
    assert row(s, "searcher_id", "a2").friend_count == 3
    for w in s["clusters_weights"]:
        if len(w):
            assert sum(w) == pytest.approx(1.0)


def test_friendship_after_as_of_does_not_count(data, jan15):
    s, _ = jan15
    z1 = row(s, "searcher_id", "z1")
    assert z1.friend_count == 0 and list(z1.clusters) == []
    assert "n1" not in set(s["searcher_id"])  # created after as_of
    later, _ = compute_features(data, T("2024-01-21"), DAILY)  # the z1-a2 friendship is on 2024-01-20 12:00
    z1 = row(later, "searcher_id", "z1")
    assert z1.friend_count == 1 and list(z1.clusters) == ["c_a1"]
    assert row(later, "searcher_id", "a2").friend_count == 4
    just_before, _ = compute_features(data, T("2024-01-20 12:00"), DAILY)  # strictly before as_of
    assert row(just_before, "searcher_id", "z1").friend_count == 0


def test_document_aggregates(jan15):
    _, d = jan15
    assert set(d["doc_id"]) == {"g1", "g2"}  # g3 is created after as_of
    g1 = row(d, "doc_id", "g1")
    assert (g1.doc_type, g1.title, g1.city, g1.country) == ("group", "Paris hikers", "Paris", "FR")
    assert g1.member_count == 4  # a4 joins on 2024-01-20
    assert list(g1.member_cities) == ["Paris", "Berlin"]
    assert as_dict(g1, "member_cities") == pytest.approx({"Paris": 0.75, "Berlin": 0.25})
    assert as_dict(g1, "member_clusters") == pytest.approx({"c_a1": 0.75, "c_b1": 0.25})
    assert g1.last_active_at == T("2024-01-12")  # b1 joined; the source's 2024-06-01 is in the future
    g2 = row(d, "doc_id", "g2")
    assert (g2.city, g2.member_count) == ("", 2)
    assert g2.last_active_at == T("2024-01-05")  # b2's click


def test_active_members_and_later_snapshot(data):
    _, d = compute_features(data, T("2024-03-01"), DAILY)
    g1 = row(d, "doc_id", "g1")
    # window [2024-01-31, 2024-03-01): only a2 had a session; all memberships are older
    assert (g1.member_count, g1.active_members_30d) == (5, 1)
    assert g1.last_active_at == T("2024-02-20 10:00")
    assert as_dict(g1, "member_cities") == pytest.approx({"Paris": 0.6, "Berlin": 0.2, "Lyon": 0.2})
    g2 = row(d, "doc_id", "g2")
    assert (g2.member_count, g2.active_members_30d) == (2, 0)  # b2's session is older than 30 days
    _, d15 = compute_features(data, T("2024-01-15"), DAILY)
    # on 2024-01-15 every member joined within the last 30 days, so all count as active
    assert row(d15, "doc_id", "g1").active_members_30d == 4


def test_weekly_anchor_keeps_labels_and_newcomers_adopt_neighbours(data):
    as_of = T("2024-01-25")  # a Thursday: the anchor is Monday 2024-01-22, before n1 joined
    assert cluster_anchor(as_of, 7) == T("2024-01-22")
    assert cluster_anchor(T("2024-01-22"), 7) == T("2024-01-22")
    weekly, _ = compute_features(data, as_of, FeatureConfig(cluster_period_days=7))
    daily, _ = compute_features(data, as_of, DAILY)
    for s in (weekly, daily):
        n1 = row(s, "searcher_id", "n1")
        assert list(n1.clusters) == ["c_b1"] and n1.friend_count == 2
    cache: dict = {}
    a = compute_features(data, T("2024-01-23"), FeatureConfig(cluster_period_days=7), cache)
    b = compute_features(data, T("2024-01-23"), FeatureConfig(cluster_period_days=7))
    assert len(cache) == 1
    pd.testing.assert_frame_equal(a[0], b[0])


def test_comembership_graph_when_no_friendships():
    data = hand_made(friendships=False)
    s, d = compute_features(data, T("2024-01-15"), DAILY)
    own = {r.searcher_id: r.clusters[0] for r in s.itertuples() if r.clusters}
    # g1 links a1,a2,a3,b1; g2 links b2,b3; nobody else has a co-member
    assert {own[x] for x in ("a1", "a2", "a3", "b1")} == {"c_a1"}
    assert {own[x] for x in ("b2", "b3")} == {"c_b2"}
    assert not any(len(c) for c in s.loc[s.searcher_id.isin(["a4", "b4", "z1"]), "clusters"])
    assert (s["friend_count"] == 0).all()
    assert as_dict(row(d, "doc_id", "g2"), "member_clusters") == {"c_b2": 1.0}


def test_comembership_pairs_bounded_for_big_documents():
    members = pd.DataFrame({"doc_id": ["big"] * 10 + ["small"] * 3,
                            "searcher_id": [f"s{i}" for i in range(10)] + ["t0", "t1", "t2"]})
    src, dst = comembership_pairs(members, degree=2, seed=0)
    g = make_graph([*members.searcher_id], src, dst)
    assert len(g.u) == 10 + 3  # a ring over the big document, a triangle over the small one
    degree = np.bincount(np.r_[g.u, g.v], minlength=g.n)
    assert (degree == 2).all()
    again = comembership_pairs(members, degree=2, seed=0)
    assert all((x == y).all() for x, y in zip((src, dst), again))


def test_community_detection_is_seeded_and_stable():
    rng = np.random.default_rng(0)
    ids = [f"p{i:03d}" for i in range(200)]
    block = np.repeat(np.arange(4), 50)
    u, v = rng.integers(0, 200, 3000), rng.integers(0, 200, 3000)
    keep = (block[u] == block[v]) | (rng.random(3000) < 0.02)
    g = make_graph(ids, np.array(ids)[u[keep]], np.array(ids)[v[keep]])
    for algorithm in ("leiden", "multilevel"):
        cfg = CommunityConfig(algorithm=algorithm, seed=3)
        m1, m2 = detect_communities(g, cfg), detect_communities(g, cfg)
        assert (m1 == m2).all()
        # the four planted blocks are recovered exactly
        assert pd.crosstab(m1, block).gt(0).sum(axis=1).eq(1).all() and len(set(m1)) == 4


def test_top_k_lists_ties_and_renormalization():
    idx = pd.Index(["x", "y", "z"])
    labels, weights = top_k_lists(
        np.array(["x", "x", "x", "x", "y"]), np.array(["b", "a", "c", "b", "q"]),
        np.array([1.0, 2.0, 1.0, 1.0, 5.0]), 2, idx,
    )
    assert labels == [["a", "b"], ["q"], []]  # a and b tie at 2: label order; c is cut
    assert weights == [[0.5, 0.5], [1.0], []]


def test_time_helpers_and_input_checks(data):
    assert as_of_for_day(datetime(2024, 1, 14).date()) == datetime(2024, 1, 15, tzinfo=timezone.utc)
    assert snapshot_day(T("2024-01-15")) == datetime(2024, 1, 14).date()
    assert snapshot_day(T("2024-01-15 13:00")) == datetime(2024, 1, 15).date()
    with pytest.raises(ValueError, match="timezone-aware"):
        compute_features(data, datetime(2024, 1, 15))
    with pytest.raises(ValueError, match="cluster_period_days"):
        FeatureConfig(cluster_period_days=0)
    with pytest.raises(ValueError, match="algorithm"):
        CommunityConfig(algorithm="spectral")


def test_the_session_columns_the_features_read_are_enough(data):
    """The materialize flow computes from a slimmer copy of the sessions: the snapshots must not change."""
    import dataclasses

    from features.compute import SESSION_COLUMNS

    slim = dataclasses.replace(data, sessions=data.sessions[list(SESSION_COLUMNS)])
    for day in ("2024-01-20", "2024-01-25"):
        full_s, full_d = compute_features(data, T(day), DAILY)
        slim_s, slim_d = compute_features(slim, T(day), DAILY)
        pd.testing.assert_frame_equal(full_s, slim_s)
        pd.testing.assert_frame_equal(full_d, slim_d)

