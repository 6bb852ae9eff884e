"""The synthetic world: deterministic, valid, and its social-search problems are real (tiny preset)."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from ingest.contract import read_dataset, validate_dataset, write_dataset
from ingest.synthetic import WorldConfig, generate_world, normalize

TINY = WorldConfig.preset("tiny")


@pytest.fixture(scope="module")
def world():
    return generate_world(TINY, progress=False)


@pytest.fixture(scope="module")
def clicked(world):
    """One row per session with a click: searcher, first clicked doc and their attributes."""
    s = world.sessions
    s = s[s["clicked"].map(len) > 0].copy()
    s["doc_id"] = s["clicked"].map(lambda c: c[0])
    s = s.merge(world.searchers[["searcher_id", "city", "region"]], on="searcher_id")
    docs = world.documents[["doc_id", "doc_type", "title", "city", "region"]]
    return s.merge(docs, on="doc_id", suffixes=("_s", "_d"))


@pytest.fixture(scope="module")
def friends_of(world):
    return world.friendships.groupby("searcher_id")["friend_id"].agg(set).to_dict()


@pytest.fixture(scope="module")
def members_of(world):
    return world.memberships.groupby("doc_id")["searcher_id"].agg(set).to_dict()


def _comparable(df: pd.DataFrame) -> pd.DataFrame:
    return df.apply(lambda col: col.map(lambda v: tuple(v) if isinstance(v, list) else v))


def test_same_seed_same_tables_other_seed_differs(world):
    again = generate_world(TINY, progress=False)
    for name, df in world.tables().items():
        pd.testing.assert_frame_equal(_comparable(df), _comparable(again.tables()[name]), obj=name)
    assert world.manifest.params == again.manifest.params
    other = generate_world(WorldConfig.preset("tiny", seed=1), progress=False)
    assert not world.documents["title"].equals(other.documents["title"])
    assert not world.sessions["query"].equals(other.sessions["query"])


def test_contract_validates_and_round_trips(world, tmp_path):
    validate_dataset(world.tables())
    manifest = write_dataset(world, tmp_path / "tiny")
    assert manifest.source == "synthetic" and manifest.params["seed"] == TINY.seed
    back = read_dataset(tmp_path / "tiny")
    assert back.row_counts() == world.row_counts()
    assert back.sessions["impressed"].map(len).sum() == world.sessions["impressed"].map(len).sum()
    for table in ("searchers", "documents"):
        assert {"lat", "lon"} <= set(back.tables()[table].columns)
    assert world.searchers[["lat", "lon"]].notna().all().all()


def test_places_are_real_and_concentrated(world):
    s = world.searchers
    assert s["country"].nunique() == TINY.geo.n_countries
    assert s["city"].nunique() <= TINY.geo.n_countries * TINY.geo.cities_per_country
    assert s["region"].notna().mean() > 0.95 and s["language"].notna().all()
    # population-weighted: the biggest city of the world holds more people than the smallest
    counts = s["city"].value_counts()
    assert counts.iloc[0] >= 3 * counts.iloc[-1]
    assert set(s["country"]) == set(TINY.geo.countries[: TINY.geo.n_countries])


def test_friendships_symmetric_with_community_structure(world):
    f = world.friendships
    pairs = set(zip(f["searcher_id"], f["friend_id"]))
    assert all((b, a) in pairs for a, b in pairs)
    assert not (f["searcher_id"] == f["friend_id"]).any()
    city = world.searchers.set_index("searcher_id")["city"]
    same_city = (city.loc[f["searcher_id"]].to_numpy() == city.loc[f["friend_id"]].to_numpy()).mean()
    rnd = np.random.default_rng(0).permutation(city.to_numpy())
    baseline = (city.to_numpy() == rnd).mean()
    assert same_city > 0.7 and same_city > baseline + 0.3
    created = world.searchers.set_index("searcher_id")["created_at"]
    later = np.maximum(created.loc[f["searcher_id"]].to_numpy(), created.loc[f["friend_id"]].to_numpy())
    assert (f["created_at"].to_numpy() >= later).all()


def test_memberships_follow_friends_and_location(world, friends_of, members_of):
    m = world.memberships.merge(world.documents[["doc_id", "doc_type", "city", "created_at", "starts_at"]],
                                on="doc_id", suffixes=("", "_doc"))
    assert set(m["doc_type"]) <= {"group", "event"}
    city = world.searchers.set_index("searcher_id")["city"]
    assert (m["city"].to_numpy() == city.loc[m["searcher_id"]].to_numpy()).mean() > 0.5
    with_friend = np.mean([len(friends_of.get(s, set()) & (members_of[d] - {s})) > 0
                           for s, d in zip(m["searcher_id"], m["doc_id"])])
    assert with_friend > 0.3
    assert (m["created_at"] >= m["created_at_doc"]).all()
    ev = m[m["doc_type"] == "event"]
    assert len(ev) and (ev["created_at"] <= ev["starts_at"]).all()


def test_same_names_in_several_cities(world):
    d = world.documents.dropna(subset=["city"]).assign(norm=lambda x: x["title"].map(normalize))
    cities_per_title = d.groupby("norm")["city"].nunique()
    assert (cities_per_title >= 2).sum() >= 3
    persons = d[d["doc_type"] == "person"]
    assert persons["norm"].duplicated().any()
    groups = d[d["doc_type"] == "group"]
    assert groups.groupby("norm")["city"].nunique().max() >= 2


def test_queries_are_noisy_but_mostly_match(world, clicked):
    q = clicked["query"].map(normalize)
    t = clicked["title"].map(normalize)
    differs = (q != t).mean()
    overlap = np.mean([bool(set(a.split()) & set(b.split())) for a, b in zip(q, t)])
    assert 0.15 < differs < 0.8
    assert overlap > 0.9
    # typos happen: some query words are not a word of any title
    vocab = set(" ".join(world.documents["title"].map(normalize)).split())
    words = " ".join(world.sessions["query"].map(normalize)).split()
    unknown = np.mean([w not in vocab for w in words])
    assert 0.02 < unknown < 0.4


def test_location_matters(world, clicked):
    same_city = (clicked["city_s"] == clicked["city_d"]).mean()
    rng = np.random.default_rng(0)
    random_docs = world.documents.iloc[rng.integers(0, len(world.documents), len(clicked))]
    baseline = (random_docs["city"].to_numpy() == clicked["city_s"].to_numpy()).mean()
    assert same_city > 0.5
    assert same_city > 2.5 * baseline


def test_social_matters(world, clicked, friends_of, members_of):
    groups = clicked[clicked["doc_type"] != "person"]
    has_friend = np.mean([len(friends_of.get(s, set()) & members_of.get(d, set())) > 0
                          for s, d in zip(groups["searcher_id"], groups["doc_id"])])
    rng = np.random.default_rng(0)
    pool = world.documents.loc[world.documents["doc_type"] != "person", "doc_id"].to_numpy()
    rand = rng.choice(pool, len(groups))
    baseline = np.mean([len(friends_of.get(s, set()) & members_of.get(d, set())) > 0
                        for s, d in zip(groups["searcher_id"], rand)])
    assert has_friend > 2 * baseline and has_friend > 0.3
    persons = clicked[clicked["doc_type"] == "person"]
    # person doc p<n> is the profile of searcher s<n>
    is_friend = np.mean([("s" + d[1:]) in friends_of.get(s, set())
                         for s, d in zip(persons["searcher_id"], persons["doc_id"])])
    assert is_friend > 0.2


def test_clicks_are_impressed_and_impressions_exist_when_created(world):
    s = world.sessions
    assert all(set(c) <= set(i) for c, i in zip(s["clicked"], s["impressed"]))
    assert (s["impressed"].map(len) <= TINY.relevance.impressions).all()
    non_click = (s["impressed"].map(len) - s["clicked"].map(len)).sum()
    assert non_click > s["clicked"].map(len).sum()
    created = world.documents.set_index("doc_id")["created_at"]
    flat = s[["ts", "impressed"]].explode("impressed").dropna()
    assert (created.loc[flat["impressed"]].to_numpy() <= flat["ts"].to_numpy()).all()
    searcher_created = world.searchers.set_index("searcher_id")["created_at"]
    assert (searcher_created.loc[s["searcher_id"]].to_numpy() <= s["ts"].to_numpy()).all()


def test_failed_sessions_are_followed_by_a_successful_reformulation(world):
    s = world.sessions.sort_values(["searcher_id", "ts"]).reset_index(drop=True)
    nxt = s.groupby("searcher_id").shift(-1)
    gap = (nxt["ts"] - s["ts"]).dt.total_seconds()
    failed = s["clicked"].map(len) == 0
    succeeded_next = nxt["clicked"].map(lambda c: isinstance(c, list) and len(c) > 0)
    pattern = failed & (gap <= 300) & succeeded_next & (nxt["query"] != s["query"])
    assert pattern.sum() >= 0.02 * len(s)
    assert failed.mean() > 0.1  # failures exist; not all are followed by a reformulation
    # repeated navigational searches: the same searcher types the same query again on another day
    rep = s.groupby(["searcher_id", "query"])["ts"].agg(["size", "min", "max"])
    assert ((rep["size"] > 1) & (rep["max"] - rep["min"] > pd.Timedelta(days=1))).sum() >= 20


def test_timestamps_span_the_window(world):
    ts = world.sessions["ts"]
    start, end = TINY.start, TINY.end
    assert ts.min() >= start and ts.max() < end
    assert ts.max() - ts.min() > timedelta(weeks=TINY.weeks) - timedelta(days=3)
    weekly = ((ts - start) // timedelta(weeks=1)).value_counts()
    assert sorted(weekly.index) == list(range(TINY.weeks)) and weekly.min() > 0.5 * weekly.mean()
    for table in ("searchers", "documents", "friendships", "memberships"):
        assert (world.tables()[table]["created_at"] < end).all()
    assert (world.searchers["created_at"] >= start).any()  # some people join during the window
    assert (world.memberships["created_at"] >= start).any() and (world.friendships["created_at"] >= start).any()


def test_events_start_before_and_after_the_end_and_activity_filters_bite(world):
    d = world.documents
    ev = d[d["doc_type"] == "event"]
    assert ev["starts_at"].notna().all() and d.loc[d["doc_type"] != "event", "starts_at"].isna().all()
    assert (ev["starts_at"] < TINY.end).any() and (ev["starts_at"] > TINY.end).any()
    assert (d["last_active_at"] >= d["created_at"]).all() and (d["last_active_at"] < TINY.end).all()
    groups = d[d["doc_type"] == "group"]
    recent = (groups["last_active_at"] >= TINY.end - timedelta(days=14)).mean()
    members = world.memberships["doc_id"].value_counts().reindex(groups["doc_id"]).fillna(0)
    assert 0.1 < recent < 0.95
    assert 0.1 < (members >= 3).mean() < 0.95


def test_config_errors_say_what_is_allowed():
    with pytest.raises(ValueError, match="allowed"):
        WorldConfig.preset("huge")
    with pytest.raises(ValueError, match="must be <= 1"):
        WorldConfig.preset("tiny", social={"p_same_community": 0.9, "p_same_city": 0.3})
    with pytest.raises(ValueError, match="n_searchers"):
        WorldConfig.preset("tiny", n_searchers=50)
    with pytest.raises(ValueError, match="timezone-aware"):
        from datetime import datetime

        WorldConfig.preset("tiny", start=datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="ISO 3166"):
        WorldConfig.preset("tiny", geo={"countries": ("usa",)})
    cfg = WorldConfig.preset("tiny", weeks=3, relevance={"impressions": 5})
    assert cfg.end - cfg.start == timedelta(weeks=3) and cfg.relevance.impressions == 5
    assert cfg.social.mean_friends == WorldConfig.preset("tiny").social.mean_friends  # nested override merges


@pytest.mark.slow
def test_default_preset_at_scale():
    cfg = WorldConfig.preset("default")
    w = generate_world(cfg, progress=False)
    validate_dataset(w.tables())
    assert len(w.documents) == cfg.n_documents and len(w.searchers) == cfg.n_searchers
    assert len(w.sessions) > cfg.n_sessions  # + reformulations
    d = w.documents.dropna(subset=["city"]).assign(norm=lambda x: x["title"].map(normalize))
    ambiguous = d.groupby("norm")["city"].nunique()
    assert (ambiguous >= 2).sum() > 500
    assert d["norm"].map(ambiguous).ge(2).mean() > 0.2
