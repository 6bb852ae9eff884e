"""The materialize flow under a real (temporary) Prefect API: backfill, idempotence, crash and resume."""

from __future__ import annotations

import hashlib
import shutil
from datetime import date, datetime, timezone

import pytest

from ingest.contract import write_dataset

DAYS = (date(2024, 4, 20), date(2024, 4, 21), date(2024, 4, 22))


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """EBR_HOME in a temporary directory with the tiny synthetic world written as two datasets."""
    from ingest.synthetic import WorldConfig, generate_world

    home = tmp_path_factory.mktemp("ebr-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("EBR_HOME", str(home))
    write_dataset(generate_world(WorldConfig.preset("tiny")), home / "data" / "tiny-a", source="synthetic")
    shutil.copytree(home / "data" / "tiny-a", home / "data" / "tiny-b")
    yield home
    mp.undo()


@pytest.fixture(scope="module")
def harness(home, prefect_harness):
    yield


def digests(root) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((root / "sources").rglob("*.parquet"))
    }


def test_nightly_days_and_parameter_checks():
    from flows.materialize import MaterializeParams

    nightly = MaterializeParams()
    assert nightly.days(datetime(2024, 4, 23, 2, 30, tzinfo=timezone.utc)) == [date(2024, 4, 22)]
    assert MaterializeParams(start_date=DAYS[0]).days() == [DAYS[0]]
    assert MaterializeParams(start_date=DAYS[0], end_date=DAYS[-1]).days() == list(DAYS)
    weekly = MaterializeParams(start_date=date(2024, 4, 1), end_date=date(2024, 4, 16), every_days=7)
    assert weekly.days() == [date(2024, 4, 1), date(2024, 4, 8), date(2024, 4, 15), date(2024, 4, 16)]
    with pytest.raises(ValueError, match="less than or equal to 7"):
        MaterializeParams(every_days=8)
    with pytest.raises(ValueError, match="before start_date"):
        MaterializeParams(start_date=DAYS[-1], end_date=DAYS[0])
    with pytest.raises(ValueError, match="dataset"):
        MaterializeParams(dataset="../elsewhere")


def test_backfill_is_idempotent(harness, home):
    from features.store import FeatureRepo
    from flows.materialize import materialize

    first = materialize(dataset="tiny-a", start_date=DAYS[0], end_date=DAYS[-1])
    root = home / "features" / "tiny-a"
    files = digests(root)
    assert sorted(files) == sorted(f"sources/{e}_features/{d}.parquet" for e in ("searcher", "document") for d in DAYS)
    assert [d.day for d in first.days] == list(DAYS) and all(d.searchers > 0 for d in first.days)
    repo = FeatureRepo(root)
    online = repo.online_features(["s0000001", "s0000002"], "searcher")
    assert (online["feature_ts"] == datetime(2024, 4, 23, tzinfo=timezone.utc)).all()

    second = materialize(dataset="tiny-a", start_date=DAYS[0], end_date=DAYS[-1])
    assert digests(root) == files
    assert [d.model_dump(exclude={"seconds"}) for d in second.days] == [
        d.model_dump(exclude={"seconds"}) for d in first.days]
    again = FeatureRepo(root).online_features(["s0000001", "s0000002"], "searcher")
    assert again.drop(columns=[]).equals(online)

    # backfilling an older day afterwards must not put older values into the online store
    materialize(dataset="tiny-a", start_date=DAYS[0], end_date=DAYS[0])
    assert (FeatureRepo(root).online_features(["s0000001"], "searcher")["feature_ts"]
            == datetime(2024, 4, 23, tzinfo=timezone.utc)).all()

    from prefect.client.orchestration import get_client

    async def artifact():
        async with get_client() as client:
            return await client.read_latest_artifacts()

    import asyncio

    keys = {a.key for a in asyncio.run(artifact())}
    assert "materialize-tiny-a" in keys


def test_crash_half_way_then_rerun(harness, home, monkeypatch):
    import flows.materialize as mod
    from features.store import FeatureRepo

    real = mod.compute_features

    def crash_on_last_day(data, as_of, config=None, communities=None):
        if as_of.date() == date(2024, 4, 23):
            raise RuntimeError("injected crash")
        return real(data, as_of, config, communities)

    monkeypatch.setattr(mod, "compute_features", crash_on_last_day)
    with pytest.raises(RuntimeError, match="injected crash"):
        mod.materialize(dataset="tiny-b", start_date=DAYS[0], end_date=DAYS[-1])
    root = home / "features" / "tiny-b"
    assert FeatureRepo(root).source_days() == list(DAYS[:2])  # the finished days are complete files
    assert not any(p.name.startswith(".") for p in (root / "sources").rglob("*"))  # no temp leftovers

    monkeypatch.setattr(mod, "compute_features", real)
    mod.materialize(dataset="tiny-b", start_date=DAYS[0], end_date=DAYS[-1])
    reference = home / "features" / "tiny-a"
    if not reference.exists():  # run alone: make the uninterrupted reference now
        mod.materialize(dataset="tiny-a", start_date=DAYS[0], end_date=DAYS[-1])
    assert digests(root) == digests(reference)
    assert FeatureRepo(root).online_features(["s0000003"], "searcher").equals(
        FeatureRepo(reference).online_features(["s0000003"], "searcher"))
