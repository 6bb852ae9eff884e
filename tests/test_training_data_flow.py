"""The training-data flow under Prefect on a tiny dataset, the point-in-time join through a real Feast store,
and a corrupted input that stops the run with GateFailed and publishes nothing."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from examples.build import ExampleConfig, build_examples, join_features
from examples.splits import SplitConfig
from features.compute import as_of_for_day, compute_features
from features.store import FeatureRepo
from infra.run_dirs import runs_root
from infra.settings import get_settings
from infra.storage import ArtifactStore
from ingest.contract import read_dataset, write_dataset
from validation.gate import GateFailed, GateReport

pytestmark = pytest.mark.slow

START = date(2024, 1, 1)
DAYS = 8


def T(s: str) -> pd.Timestamp:
    return pd.Timestamp(s, tz="UTC")


def tiny_tables(seed: int = 0, clicks: bool = True) -> dict[str, pd.DataFrame]:
    """6 searchers, 12 groups, sessions over DAYS days. u1 gains a friend (u3) on day 2 at noon."""
    rng = np.random.default_rng(seed)
    cities = ["Paris", "Lyon"]
    born = T("2023-12-01")
    searchers = pd.DataFrame(
        {
            "searcher_id": [f"u{i}" for i in range(1, 7)],
            "city": [cities[i % 2] for i in range(6)],
            "region": ["IDF" if i % 2 == 0 else "ARA" for i in range(6)],
            "country": ["FR"] * 6,
            "language": ["fr"] * 6,
            "created_at": [born] * 6,
        }
    )
    docs = [f"d{i}" for i in range(1, 13)]
    documents = pd.DataFrame(
        {
            "doc_id": docs,
            "doc_type": ["group"] * 12,
            "title": [f"{w} club" for w in "chess jazz pizza film yoga poker salsa tango rugby golf wine chant".split()],
            "body": [""] * 12,
            "city": [cities[i % 2] for i in range(12)],
            "region": ["IDF" if i % 2 == 0 else "ARA" for i in range(12)],
            "country": ["FR"] * 12,
            "created_at": [born] * 12,
            "last_active_at": [born] * 12,
        }
    )
    edges = [("u1", "u2", born), ("u2", "u4", born), ("u5", "u6", born), ("u1", "u3", T("2024-01-02 12:00"))]
    friendships = pd.DataFrame(
        [(a, b, t) for a, b, t in edges] + [(b, a, t) for a, b, t in edges],
        columns=["searcher_id", "friend_id", "created_at"],
    )
    memberships = pd.DataFrame(
        {
            "searcher_id": [f"u{1 + i % 6}" for i in range(12)],
            "doc_id": docs,
            "created_at": [born] * 12,
        }
    )
    rows = []
    for i in range(60):
        ts = pd.Timestamp(datetime.combine(START, datetime.min.time(), tzinfo=timezone.utc)) + pd.Timedelta(
            hours=int(rng.integers(0, DAYS * 24))
        )
        shown = list(rng.choice(docs, size=4, replace=False))
        clicked = [shown[0]] if clicks and rng.random() < 0.8 else []
        rows.append((f"s{i:03d}", f"u{int(rng.integers(1, 7))}", ts, documents.set_index("doc_id").loc[shown[0], "title"], shown, clicked))
    sessions = pd.DataFrame(rows, columns=["session_id", "searcher_id", "ts", "query", "impressed", "clicked"])
    return {
        "searchers": searchers, "documents": documents, "friendships": friendships,
        "memberships": memberships, "sessions": sessions,
    }


def fill_feature_repo(root: Path, dataset_dir: Path, days: int = DAYS) -> FeatureRepo:
    """Daily snapshots over the dataset's days (what the materialize flow does), then apply."""
    data = read_dataset(dataset_dir)
    repo = FeatureRepo(root)
    communities: dict = {}
    for k in range(-1, days):
        day = START + timedelta(days=k)
        searcher_df, doc_df = compute_features(data, as_of_for_day(day), communities=communities)
        repo.write_sources(searcher_df, doc_df, day=day)
    repo.apply()
    return repo


@pytest.fixture(scope="session")
def prefect_api(prefect_harness):
    yield


@pytest.fixture(scope="module")
def tiny(home) -> str:
    name = "tiny"
    target = get_settings().data_dir / name
    write_dataset(tiny_tables(), target, source="test")
    fill_feature_repo(get_settings().home / "features" / name, target)
    return name


# --------------------------------------------------------------------------- point in time


def test_point_in_time_join_never_leaks_a_later_value(tiny):
    """u1 has 1 friend until day 2 noon, then 2: the day-1 snapshot says 1, the day-2 snapshot says 2."""
    repo = FeatureRepo.for_dataset(tiny)
    snap1, snap2 = as_of_for_day(date(2024, 1, 1)), as_of_for_day(date(2024, 1, 2))  # Jan 2 00:00, Jan 3 00:00
    sessions = pd.DataFrame(
        {
            "session_id": ["early", "late", "edge"],
            "searcher_id": ["u1", "u1", "u1"],
            # early: after the friendship was made, before the snapshot that saw it
            "ts": [T("2024-01-02 18:00"), T("2024-01-03 09:00"), pd.Timestamp(snap2)],
            "query": ["chess"] * 3,
            "impressed": [["d1"]] * 3,
            "clicked": [["d1"]] * 3,
        }
    )
    documents = pd.DataFrame({"doc_id": [f"d{i}" for i in range(1, 13)]})
    ex = build_examples(sessions, documents, ExampleConfig(random_negatives=0), SplitConfig(test_fraction=0, valid_fraction=0))
    joined = join_features(ex, repo).set_index("session_id")
    assert joined.loc["early", "searcher_friend_count"] == 1
    assert joined.loc["early", "searcher_feature_ts"] == pd.Timestamp(snap1)
    assert joined.loc["late", "searcher_friend_count"] == 2
    assert joined.loc["late", "searcher_feature_ts"] == pd.Timestamp(snap2)
    # a snapshot taken at the very instant of the event is not from the future
    assert joined.loc["edge", "searcher_feature_ts"] == pd.Timestamp(snap2)
    assert (joined["doc_feature_ts"] <= joined["ts"]).all() and (joined["searcher_feature_ts"] <= joined["ts"]).all()
    assert (joined["doc_title"] == "chess club").all()


# --------------------------------------------------------------------------- the flow


def test_flow_builds_gates_and_publishes(prefect_api, tiny):
    from flows.training_data import TrainingDataParams, training_data

    params = TrainingDataParams(
        examples=ExampleConfig(random_negatives=3),
        split=SplitConfig(test_fraction=0.2, valid_fraction=0.2),
    )
    ref = training_data(dataset=tiny, end_date=START + timedelta(days=DAYS - 1), params=params)
    store = ArtifactStore.from_settings()
    av = store.get("dataset", f"{tiny}-examples")
    assert ref == av.ref
    assert {"train.parquet", "valid.parquet", "test.parquet", "config.json"} <= set(av.files)
    local = store.fetch("dataset", f"{tiny}-examples")
    parts = {s: pd.read_parquet(local / f"{s}.parquet") for s in ("train", "valid", "test")}

    sessions = read_dataset(get_settings().data_dir / tiny).sessions
    clicked_pairs = {(s, d) for s, c in zip(sessions["session_id"], sessions["clicked"]) for d in c}
    allex = pd.concat(parts.values(), ignore_index=True)
    assert {(s, d) for s, d in zip(allex["session_id"], allex["doc_id"])} >= clicked_pairs
    assert len(allex[~allex["is_hard_positive"]]) == len(clicked_pairs)
    assert all(len(p) for p in parts.values())
    assert parts["train"]["ts"].max() < parts["valid"]["ts"].min() <= parts["valid"]["ts"].max() < parts["test"]["ts"].min()
    # features arrived, never from after the example
    assert allex["searcher_feature_ts"].notna().all() and allex["doc_feature_ts"].notna().all()
    assert (allex["searcher_feature_ts"] <= allex["ts"]).all() and (allex["doc_feature_ts"] <= allex["ts"]).all()
    assert allex["searcher_city"].isin(["Paris", "Lyon"]).all()
    assert av.metadata["rows"] == {s: len(p) for s, p in parts.items()}

    run = sorted(runs_root("training-data", tiny).iterdir())[-1]
    for name in ("searchers", "documents", "sessions", "memberships", "examples"):
        report = GateReport.load(run / "gates" / f"{name}.json")
        assert report.passed and (run / "gates" / f"{name}.md").exists()
    assert GateReport.load(run / "gates" / "examples.json").row_count == len(allex)

    # the reports are readable in the Prefect UI as markdown artifacts
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"gate-{tiny}-examples"])))
    assert arts and arts[0].type == "markdown" and "PASSED" in arts[0].data


def test_a_backfill_and_then_the_scheduled_run_both_pass_the_gates(prefect_api, tiny):
    """A backfill of the first days, then the nightly over the whole history: the row-count bounds compare
    rows per day, so the nightly after a backfill is not stopped by the backfill's smaller tables."""
    from flows.training_data import TrainingDataParams, training_data

    params = TrainingDataParams(examples=ExampleConfig(random_negatives=3),
                                split=SplitConfig(test_fraction=0.2, valid_fraction=0.2))
    training_data(dataset=tiny, end_date=START + timedelta(days=2), params=params)
    backfill = sorted(runs_root("training-data", tiny).iterdir())[-1]
    small = GateReport.load(backfill / "gates" / "sessions.json").row_count
    training_data(dataset=tiny, params=params)  # the scheduled run: every session so far
    nightly = sorted(runs_root("training-data", tiny).iterdir())[-1]
    sessions = GateReport.load(nightly / "gates" / "sessions.json")
    assert sessions.passed and sessions.previous_row_count == small and sessions.row_count > 2 * small
    assert not sessions.accepted  # nothing had to be accepted by hand
    for name in ("searchers", "documents", "memberships", "examples"):
        assert GateReport.load(nightly / "gates" / f"{name}.json").passed, name


def test_corrupted_input_stops_the_flow_and_publishes_nothing(prefect_api, home):
    from flows.training_data import training_data

    name = "tiny-noclicks"  # sessions without a single click: valid for the contract, not for training
    target = get_settings().data_dir / name
    write_dataset(tiny_tables(clicks=False), target, source="test")
    with pytest.raises(GateFailed) as err:
        training_data(dataset=name)
    assert "sessions" in str(err.value) and "_has_click" in str(err.value)
    assert ArtifactStore.from_settings().list_versions("dataset", f"{name}-examples") == []
    run = sorted(runs_root("training-data", name).iterdir())[-1]
    assert not GateReport.load(run / "gates" / "sessions.json").passed
    assert not (run / "gates" / "examples.json").exists() and not (run / "examples").exists()
