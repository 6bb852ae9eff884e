"""The Feast repository on a real store in tmp_path: apply, materialize, point-in-time and online reads."""

from __future__ import annotations

import hashlib
from datetime import date

import pandas as pd
import pytest

from features.compute import FeatureConfig, as_of_for_day, compute_features
from features.store import FeatureRepo, arrow_schema
from tests.test_features import hand_made

DAYS = (date(2024, 1, 19), date(2024, 1, 20), date(2024, 1, 21))  # z1 befriends a2 on 01-20 12:00


def T(s: str) -> pd.Timestamp:
    return pd.Timestamp(s, tz="UTC")


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_repo(root, online_store: str = "", project: str = "ebr") -> FeatureRepo:
    data = hand_made()
    repo = FeatureRepo(root, project, online_store)
    for day in DAYS:
        s, d = compute_features(data, as_of_for_day(day), FeatureConfig(cluster_period_days=1))
        repo.write_sources(s, d, day)
    repo.apply()
    repo.materialize(as_of_for_day(DAYS[0]), as_of_for_day(DAYS[-1]))
    return repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> FeatureRepo:
    return build_repo(tmp_path_factory.mktemp("features") / "hand-made")


@pytest.fixture(scope="module")
def redis_repo(tmp_path_factory, redis_url) -> FeatureRepo:
    """The same repository with its online store on a real Redis server."""
    return build_repo(tmp_path_factory.mktemp("features") / "on-redis", redis_url, "ebr_on_redis")


def test_runtime_layout_uses_absolute_paths(repo):
    text = repo.config_path.read_text()
    assert f"path: {repo.root.as_posix()}/registry.db" in text
    assert "type: duckdb" in text and "type: sqlite" in text
    assert repo.source_days("searcher") == list(DAYS) == repo.source_days("document")
    for src in repo.store.list_data_sources():
        assert src.path.startswith(repo.root.as_posix() + "/")


def test_parquet_schema_matches_feature_views(repo):
    from feast.type_map import feast_value_type_to_pa

    for view in repo.store.list_feature_views():
        entity = view.name.split("_")[0]  # searcher_features, searcher_history, document_features
        schema = arrow_schema(entity)
        for f in view.features:
            expected = feast_value_type_to_pa(f.dtype.to_value_type())
            got = schema.field(f.name).type
            assert got.equals(expected) or (str(expected).startswith("timestamp") and str(got).startswith("timestamp")), f.name


def test_services_are_versioned_and_serving_matches_training(repo):
    names = {s.name for s in repo.store.list_feature_services()}
    assert names == {f"{e}_{r}_{v}" for e in ("searcher", "document") for r in ("training", "serving")
                     for v in ("v1", "v2")}
    for v in ("v1", "v2"):
        assert repo.feature_names("searcher", v, "training") == repo.feature_names("searcher", v, "serving")
    # v1 is frozen: v2 adds the history, never edits v1
    assert "history" not in repo.feature_names("searcher", "v1") and "history" in repo.feature_names("searcher")
    serving = repo.feature_names("document", role="serving")
    assert "title" not in serving and "member_clusters" in serving
    assert repo.service_name("document", "v2") == "document_training_v2"
    with pytest.raises(ValueError, match="unknown feature service"):
        repo.historical_features(pd.DataFrame({"searcher_id": ["a1"], "event_timestamp": [T("2024-01-21")]}),
                                 "searcher", "searcher_training_v9")
    with pytest.raises(ValueError, match="not the searcher features"):
        repo.online_features(["a1"], "searcher", "document_serving_v1")
    with pytest.raises(ValueError, match="entity must be one of"):
        repo.online_features(["a1"], "group")  # type: ignore[arg-type]


def test_point_in_time_join_never_leaks_a_later_snapshot(repo):
    entity_df = pd.DataFrame(
        {
            "searcher_id": ["z1", "z1", "z1", "a2", "nobody", "z1", "z1"],
            "event_timestamp": [T("2024-01-21 06:00"), T("2024-01-22 00:00"), T("2024-01-19 12:00"),
                                T("2024-01-21 23:59"), T("2024-01-21"), T("2024-01-21 06:00"),
                                T("2024-01-21 00:00")],
            "label": range(7),
        },
        index=[70, 71, 72, 73, 74, 75, 76],
    )
    out = repo.historical_features(entity_df, "searcher")
    assert list(out.index) == list(entity_df.index) and list(out["label"]) == list(range(7))
    # 01-21 06:00 gets the snapshot as of 01-21 00:00 (day 01-20), which saw the 01-20 12:00 friendship
    assert out.loc[70, "friend_count"] == 1 and out.loc[70, "feature_ts"] == T("2024-01-21")
    assert out.loc[71, "friend_count"] == 1 and out.loc[71, "feature_ts"] == T("2024-01-22")
    assert pd.isna(out.loc[72, "friend_count"]) and out.loc[72, "clusters"] is None  # before any snapshot
    assert out.loc[73, "friend_count"] == 4 and out.loc[73, "city"] == "Paris"
    assert pd.isna(out.loc[74, "feature_ts"])  # unknown searcher: row kept, features null
    assert out.loc[75, "friend_count"] == 1  # duplicate rows are both answered
    # an event exactly at a snapshot's as-of time gets that snapshot, built only from older rows
    assert out.loc[76, "feature_ts"] == T("2024-01-21") and out.loc[76, "friend_count"] == 1
    known = out["feature_ts"].notna()
    assert (out.loc[known, "feature_ts"] <= out.loc[known, "event_timestamp"]).all()
    assert str(out["friend_count"].dtype) == "Int64"

    z = pd.DataFrame({"searcher_id": ["z1"], "event_timestamp": [T("2024-01-20 18:00")]})
    assert repo.historical_features(z, "searcher")["friend_count"].iloc[0] == 0  # snapshot of 01-19
    with pytest.raises(ValueError, match="timezone-aware"):
        repo.historical_features(pd.DataFrame({"searcher_id": ["z1"],
                                               "event_timestamp": [pd.Timestamp("2024-01-21")]}), "searcher")


def test_document_point_in_time(repo):
    docs = pd.DataFrame({"doc_id": ["g1", "g1", "g3"],
                         "event_timestamp": [T("2024-01-20 08:00"), T("2024-01-22 08:00"), T("2024-01-20 08:00")]})
    out = repo.historical_features(docs, "document", "v1")
    # a4 joins g1 on 2024-01-20: the snapshot as of 01-20 00:00 has 4 members, the one as of 01-22 has 5
    assert out["member_count"].iloc[:2].tolist() == [4, 5]
    assert pd.isna(out["member_count"].iloc[2])  # g3 exists from 01-20, its first snapshot is as of 01-21
    assert out["title"].iloc[0] == "Paris hikers"


def test_online_reads_latest_snapshot_in_request_order(repo):
    check_online_reads(repo)


def test_the_online_store_on_redis_serves_the_same_features(redis_repo, repo, redis_url):
    import redis

    assert "type: redis" in redis_repo.config_path.read_text() and not redis_repo.online_store_path.exists()
    assert redis_repo.has_online_store()
    check_online_reads(redis_repo)  # the same test as on SQLite
    ids = ["z1", "a1", "a2", "ghost"]
    pd.testing.assert_frame_equal(redis_repo.online_features(ids, "searcher"), repo.online_features(ids, "searcher"))
    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    assert redis.Redis(host=host, port=int(port)).dbsize() > 0  # the rows really are in Redis


def test_serving_keeps_reading_while_a_materialization_runs(tmp_path):
    """A materialization marks its feature views MATERIALIZING in the registry; 28 of 38 online reads failed
    during one. Serving must keep reading the last complete values."""
    from feast import FeatureStore
    from feast.feature_view import FeatureViewState

    repo = build_repo(tmp_path / "busy")
    store = repo.store
    fv = store.get_feature_view("searcher_features")
    fv.state = FeatureViewState.MATERIALIZING  # what materialize() commits while it runs
    store.registry.apply_feature_view(fv, store.project, commit=True)
    busy = FeatureRepo(repo.root)  # another process: a fresh read of the registry
    assert FeatureStore(repo_path=str(repo.root)).get_feature_view("searcher_features").state == \
        FeatureViewState.MATERIALIZING
    check_online_reads(busy)
    # without the setting, the same read fails: the setting is what keeps serving up
    text = repo.config_path.read_text().replace("serve_features_while_materializing: true",
                                                "serve_features_while_materializing: false")
    repo.config_path.write_text(text)
    with pytest.raises(ValueError, match="MATERIALIZING"):
        FeatureStore(repo_path=str(repo.root)).get_online_features(
            features=["searcher_features:city"], entity_rows=[{"searcher_id": "z1"}])


def check_online_reads(repo):
    out = repo.online_features(["z1", "ghost", "a1"], "searcher")
    assert list(out["searcher_id"]) == ["z1", "ghost", "a1"]
    assert out["friend_count"].iloc[0] == 1 and pd.isna(out["friend_count"].iloc[1])
    assert out["feature_ts"].iloc[0] == T("2024-01-22")
    assert dict(zip(out["clusters"].iloc[2], out["clusters_weights"].iloc[2])) == pytest.approx(
        {"c_a1": 0.875, "c_b1": 0.125})
    docs = repo.online_features(["g1"], "document")
    assert "title" not in docs.columns and docs["member_count"].iloc[0] == 5
    assert repo.online_features([], "searcher").empty
    check_direct_reads(repo)


def check_direct_reads(repo):
    """The query path's reader (one provider read per view, no Feast response) gives Feast's own rows."""
    from features.online_read import OnlineReader

    for entity, key, ids in (("searcher", "searcher_id", ["z1", "ghost", "a1", "z1"]),
                             ("document", "doc_id", ["g1", "nope"])):
        svc = repo._service(entity, None, "serving")
        reader = OnlineReader(repo, svc, key)
        feast_rows = repo.store.get_online_features(features=svc, entity_rows=[{key: i} for i in ids]).to_dict()
        assert sorted(reader.names) == sorted(n for n in feast_rows if n != key)
        got = reader.rows(ids)
        assert got == [{n: feast_rows[n][i] for n in reader.names} for i in range(len(ids))]
        assert any(v is not None for v in got[0].values()) and all(v is None for v in got[1].values())


def test_write_sources_is_idempotent_and_checks_days(repo, tmp_path):
    f = repo.source_dir("searcher") / f"{DAYS[0]}.parquet"
    before = digest(f)
    s, d = compute_features(hand_made(), as_of_for_day(DAYS[0]), FeatureConfig(cluster_period_days=1))
    repo.write_sources(s, d, DAYS[0])
    assert digest(f) == before
    pd.testing.assert_frame_equal(repo.read_source("searcher", DAYS[0]), s.reset_index(drop=True),
                                  check_dtype=False)
    with pytest.raises(ValueError, match="belong to snapshot day"):
        repo.write_sources(s, d, DAYS[1])
    other = FeatureRepo(tmp_path / "split")
    both = pd.concat([s, compute_features(hand_made(), as_of_for_day(DAYS[1]), FeatureConfig())[0]])
    other.write_sources(both, d.iloc[:0], None)  # no day: rows are split by snapshot day
    assert other.source_days("searcher") == [DAYS[0], DAYS[1]]
    with pytest.raises(ValueError, match="lack column"):
        other.write_sources(s.drop(columns="friend_count"), d, DAYS[0])
    early = compute_features(hand_made(), as_of_for_day(date(2023, 5, 31)))  # before any searcher existed
    assert all(df.empty for df in early)
    other.write_sources(*early, date(2023, 5, 31))
    assert other.read_source("document", date(2023, 5, 31)).empty


def test_apply_recovers_after_the_online_store_alone_was_deleted(tmp_path):
    repo = FeatureRepo(tmp_path / "trap")
    s, d = compute_features(hand_made(), as_of_for_day(DAYS[0]), FeatureConfig())
    repo.write_sources(s, d, DAYS[0])
    repo.apply()
    repo.online_store_path.unlink(missing_ok=True)
    FeatureRepo(repo.root).apply()  # a fresh process: registry and online tables must come back together
    again = FeatureRepo(repo.root)
    again.materialize(as_of_for_day(DAYS[0]), as_of_for_day(DAYS[0]))
    assert again.online_features(["a1"], "searcher")["friend_count"].iloc[0] == 4
