"""The online load (features.online_load): the same protobufs and the same online rows as Feast's own
materialization, only the entities that changed written on a nightly, and a full load whenever the store
cannot be trusted to hold the marked snapshot."""

from __future__ import annotations

import sqlite3
from datetime import timedelta

import pandas as pd
import pyarrow.parquet as pq
import pytest

from features import online_load
from features.compute import KEYS, FeatureConfig, as_of_for_day, compute_features
from features.store import FeatureRepo
from ingest.synthetic import WorldConfig, generate_world


@pytest.fixture(scope="module")
def world():
    return generate_world(WorldConfig.preset("tiny"))


@pytest.fixture(scope="module")
def days(world):
    last = world.sessions["ts"].max().date()
    return [last - timedelta(days=2), last - timedelta(days=1), last]


def snapshot_repo(root, world, days) -> FeatureRepo:
    repo = FeatureRepo(root)
    communities: dict = {}
    for day in days:
        repo.write_sources(*compute_features(world, as_of_for_day(day), FeatureConfig(), communities), day=day)
    repo.apply()
    return repo


def all_online(repo: FeatureRepo, entity: str, ids) -> pd.DataFrame:
    return repo.online_features(list(ids), entity).sort_index(axis=1)


def sqlite_rows(repo: FeatureRepo) -> dict[str, list]:
    """Every row of every Feast table of the SQLite online store (the marker table aside)."""
    with sqlite3.connect(repo.online_store_path) as conn:
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
                  if t != online_load._TABLE]
        return {t: sorted(conn.execute(f'SELECT * FROM "{t}"').fetchall()) for t in tables}


def test_protobufs_are_feasts_byte_for_byte(tmp_path, world, days):
    """The converter builds what Feast's materialization builds, for every feature view and type, with a
    missing string value among them."""
    import feast
    from feast.utils import _convert_arrow_to_proto

    repo = snapshot_repo(tmp_path / "s", world, days)
    for entity, key in KEYS.items():
        table = pq.read_table(repo.source_dir(entity) / f"{days[-1]}.parquet")
        if entity == "document":  # a null string: Feast writes an empty value
            df = table.to_pandas()
            df.loc[0, "city"] = None
            table = table.from_pandas(df, schema=table.schema, preserve_index=False)
        for fv in repo.store.list_feature_views():
            if key not in fv.join_keys:
                continue
            part = table.select([key, *[f.name for f in fv.features], "event_timestamp", "created_timestamp"])
            theirs = _convert_arrow_to_proto(part, fv, {key: feast.ValueType.STRING})
            ours = online_load.feature_rows(part, fv, key, "event_timestamp", "created_timestamp")
            assert len(ours) == len(theirs) == table.num_rows
            for (k1, v1, e1, c1), (k2, v2, e2, c2) in zip(theirs, ours):
                assert k1.SerializeToString() == k2.SerializeToString()
                assert list(v1) == list(v2)
                assert [v.SerializeToString() for v in v1.values()] == [v.SerializeToString() for v in v2.values()]
                assert (e1, c1) == (e2, c2)


def test_full_load_writes_what_feast_materialize_writes(tmp_path, world, days):
    ours = snapshot_repo(tmp_path / "ours", world, days)
    loads = ours.materialize(as_of_for_day(days[0]), as_of_for_day(days[-1]))
    assert [(x.entity, x.day, x.full, x.written == x.rows) for x in loads] == [
        ("searcher", days[-1], True, True), ("document", days[-1], True, True)]
    feast_repo = snapshot_repo(tmp_path / "feast", world, days)
    feast_repo.store.materialize(as_of_for_day(days[0]), as_of_for_day(days[-1]))  # Feast's own path
    assert sqlite_rows(ours) == sqlite_rows(feast_repo)
    ids = list(world.searchers["searcher_id"][:50]) + ["nobody"]
    pd.testing.assert_frame_equal(all_online(ours, "searcher", ids), all_online(feast_repo, "searcher", ids))


def test_a_nightly_writes_only_what_changed(tmp_path, world, days):
    repo = snapshot_repo(tmp_path / "inc", world, days)
    first = repo.materialize(as_of_for_day(days[0]), as_of_for_day(days[1]))
    assert all(x.full and x.day == days[1] for x in first)
    assert online_load.read_marker(repo)["searcher"]["day"] == days[1].isoformat()
    nightly = {x.entity: x for x in repo.materialize(as_of_for_day(days[2]), as_of_for_day(days[2]))}
    expected = {}
    for entity, key in KEYS.items():
        new = pq.read_table(repo.source_dir(entity) / f"{days[2]}.parquet")
        old = pq.read_table(repo.source_dir(entity) / f"{days[1]}.parquet")
        names = [c for c in new.column_names if c not in (key, "event_timestamp", "created_timestamp",
                                                          "feature_ts", "title", "body")]
        expected[entity] = int(online_load.changed(new, old, key, names).sum())
        assert not nightly[entity].full and nightly[entity].written < nightly[entity].rows
    # a day of the tiny world changes some searchers (new clicks in their history) and some documents
    assert 0 < nightly["searcher"].written == expected["searcher"]
    assert 0 < nightly["document"].written

    # what serving reads equals a full load of the same day, but for the snapshot time of unchanged rows
    full = snapshot_repo(tmp_path / "full", world, days)
    full.materialize(as_of_for_day(days[2]), as_of_for_day(days[2]))
    for entity, key in KEYS.items():
        ids = pq.read_table(full.source_dir(entity) / f"{days[2]}.parquet", columns=[key]).column(key).to_pylist()
        a, b = all_online(repo, entity, ids), all_online(full, entity, ids)
        assert (a["feature_ts"] <= b["feature_ts"]).all() and (a["feature_ts"] < b["feature_ts"]).any()
        pd.testing.assert_frame_equal(a.drop(columns="feature_ts"), b.drop(columns="feature_ts"))

    again = repo.materialize(as_of_for_day(days[2]), as_of_for_day(days[2]))
    assert [x.written for x in again] == [0, 0]
    assert all("already holds" in x.reason for x in again)


def test_a_store_that_cannot_be_trusted_gets_a_full_load(tmp_path, world, days):
    repo = snapshot_repo(tmp_path / "trust", world, days)
    repo.materialize(as_of_for_day(days[1]), as_of_for_day(days[1]))
    # the held snapshot was rewritten (another feature definition, a re-run): its old content is gone
    path = repo.source_dir("searcher") / f"{days[1]}.parquet"
    table = pq.read_table(path)
    pq.write_table(table.slice(0, table.num_rows - 1), path)
    loads = {x.entity: x for x in repo.materialize(as_of_for_day(days[2]), as_of_for_day(days[2]))}
    assert loads["searcher"].full and "rewritten" in loads["searcher"].reason
    assert not loads["document"].full
    # a recreated online store (the file deleted, the registry applied again) holds nothing
    repo.reset()
    repo.apply()
    loads = repo.materialize(as_of_for_day(days[2]), as_of_for_day(days[2]))
    assert all(x.full and "no recorded snapshot" in x.reason for x in loads)
    assert repo.online_features(["nobody"], "searcher")["friend_count"].isna().all()
    # and an operator can ask for one
    assert all(x.full for x in repo.materialize(as_of_for_day(days[2]), as_of_for_day(days[2]), full=True))


def test_a_crash_between_chunks_is_repaired_by_the_rerun(tmp_path, world, days, monkeypatch):
    repo = snapshot_repo(tmp_path / "crash", world, days)
    repo.materialize(as_of_for_day(days[1]), as_of_for_day(days[1]))
    provider = type(repo.store._get_provider())
    real = provider.online_write_batch
    calls = []

    def dies_on_the_third_chunk(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("killed")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(provider, "online_write_batch", dies_on_the_third_chunk)
    with pytest.raises(OSError, match="killed"):
        online_load.load_snapshot(repo, "searcher", days[2], chunk_rows=20)
    monkeypatch.setattr(provider, "online_write_batch", real)
    assert online_load.read_marker(repo)["searcher"]["day"] == days[1].isoformat()  # written last
    rerun = online_load.load_snapshot(repo, "searcher", days[2], chunk_rows=20)
    assert not rerun.full and rerun.written > 0
    full = snapshot_repo(tmp_path / "crash-full", world, days)
    full.materialize(as_of_for_day(days[2]), as_of_for_day(days[2]))
    ids = pq.read_table(full.source_dir("searcher") / f"{days[2]}.parquet", columns=["searcher_id"]) \
        .column("searcher_id").to_pylist()
    pd.testing.assert_frame_equal(all_online(repo, "searcher", ids).drop(columns="feature_ts"),
                                  all_online(full, "searcher", ids).drop(columns="feature_ts"))


def test_changed_compares_lists_scalars_and_nulls():
    import pyarrow as pa

    old = pa.table({"k": ["a", "b", "c", "d"], "x": [1, None, 3, 4], "l": [["p"], [], None, ["q", "r"]]})
    new = pa.table({"k": ["d", "c", "b", "a", "e"], "x": [4, 3, None, 1, 0],
                    "l": [["q", "s"], None, [], ["p"], []]})
    assert online_load.changed(new, old, "k", ["x", "l"]).tolist() == [True, False, False, False, True]
    assert online_load.changed(new, old, "k", ["x"]).tolist() == [False, False, False, False, True]


def test_an_older_snapshot_with_keys_the_newest_lacks_is_refused(tmp_path, world, days):
    repo = snapshot_repo(tmp_path / "lost", world, days)
    path = repo.source_dir("document") / f"{days[2]}.parquet"
    table = pq.read_table(path)
    pq.write_table(table.slice(1), path)
    with pytest.raises(ValueError, match="lacks"):
        repo.materialize(as_of_for_day(days[0]), as_of_for_day(days[2]))
    assert "document" not in online_load.read_marker(repo)  # nothing of the refused entity was loaded
