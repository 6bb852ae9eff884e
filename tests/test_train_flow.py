"""The train and evaluate flows under a real (temporary) Prefect API, on the tiny synthetic world.

The examples come from the real training-data flow (Feast point-in-time join, GE gates) and the models go
to the real artifact store; the evaluate flow must reproduce the metrics registered by the train flow.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

from infra.settings import get_settings
from infra.storage import ArtifactStore
from models.config import LossConfig, ModelConfig, TrainConfig

pytestmark = pytest.mark.slow

DATASET = "tiny-train"
TINY = ModelConfig(trigram_buckets=4096, word_buckets=2048, bigram_buckets=2048, context_buckets=1024,
                   embedding_dim=16, hidden_dims=(64,), output_dim=32)


def tiny_config(**kw) -> TrainConfig:
    base = dict(model=TINY, loss=LossConfig(n_corpus_negatives=64), batch_size=128, epochs=3, progress=False,
                num_threads=1, early_stopping_patience=3)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def world(home):
    """The tiny world, snapshots every 3 days (inside Feast's 7-day TTL), examples published by the flow."""
    from tests.worlds import snapshot_tiny_world

    return snapshot_tiny_world(DATASET)


@pytest.fixture(scope="module")
def examples_ref(prefect_harness, world) -> str:
    from flows.training_data import training_data

    return training_data(dataset=DATASET)


@pytest.fixture(scope="module")
def trained(examples_ref):
    from flows.train import TrainParams, train

    params = TrainParams(config=tiny_config(), max_eval_sessions=500)
    return train(dataset=DATASET, params=params), params


def test_train_flow_registers_a_model_with_metrics_and_config(trained, examples_ref):
    from models.registry import load_registered_model

    ref, params = trained
    store = ArtifactStore.from_settings()
    av = store.get("model", f"{DATASET}-two-tower")
    assert av.ref == ref and set(av.files) == {"model.pt"}
    meta = av.metadata
    assert meta["examples"] == examples_ref and meta["feature_service"] == "v2"
    assert meta["config"] == params.config.model_dump(mode="json")
    m = meta["metrics"]
    assert 0 < m["n_sessions"] <= 500 and m["n_documents"] > 0
    for k in ("recall@1", "recall@10", "recall@50", "recall@100", "mrr", "ndcg@10"):
        assert 0.0 <= m[k] <= 1.0
    assert m["recall@1"] <= m["recall@10"] <= m["recall@50"] <= m["recall@100"]
    # it learned: far above a random ranking of the index (10 / documents)
    assert m["recall@10"] > 5 * 10 / m["n_documents"]
    model, loaded = load_registered_model(f"{DATASET}-two-tower")
    assert loaded.version == av.version and model.config == TINY and model.feature_service == "v2"
    # registered: the run directory keeps neither the model nor the optimizer state, and is marked ended
    run_dir = get_settings().home / "runs" / "train" / DATASET / meta["run_dir"]
    assert run_dir.is_dir() and not (run_dir / "model").exists() and not (run_dir / "RUNNING").exists()

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"train-{DATASET}"])))
    assert arts and arts[0].type == "markdown" and "recall@10" in arts[0].data and av.version in arts[0].data


def test_evaluate_flow_reproduces_the_registered_metrics(trained):
    from flows.evaluate import evaluate

    ref, _ = trained
    registered = ArtifactStore.from_settings().get("model", f"{DATASET}-two-tower").metadata["metrics"]
    again = evaluate(dataset=DATASET, model_name=f"{DATASET}-two-tower", split="test")
    for k, v in registered.items():
        assert math.isclose(again[k], v, rel_tol=1e-6, abs_tol=1e-9), k
    on_valid = evaluate(dataset=DATASET, model_name=f"{DATASET}-two-tower", split="valid")
    assert on_valid["n_sessions"] > 0 and on_valid != again


def test_warm_start_with_extra_negatives_registers_a_new_version(trained):
    from flows.train import TrainParams, train

    first, _ = trained
    params = TrainParams(config=tiny_config(epochs=1), warm_start=True, extra_negatives=("random_negatives",),
                         max_eval_sessions=500)
    second = train(dataset=DATASET, params=params)
    store = ArtifactStore.from_settings()
    versions = store.list_versions("model", f"{DATASET}-two-tower")
    assert [v.ref for v in versions][-2:] == [first, second]
    meta = store.get("model", f"{DATASET}-two-tower").metadata  # CURRENT moved to the new version
    assert meta["warm_start_from"] == first
    assert meta["config"]["loss"]["extra_negatives"] == ["random_negatives"]
    # one epoch from the first model's weights is at least as good as a random ranking by far
    assert meta["metrics"]["recall@10"] > 5 * 10 / meta["metrics"]["n_documents"]


def test_register_model_checks_its_inputs(tmp_path, trained):
    from models.registry import load_registered_model, register_model

    with pytest.raises(FileNotFoundError, match="neither"):
        register_model(tmp_path, "x", {}, tiny_config(), "v1", "dataset/x@1")
    model, av = load_registered_model(f"{DATASET}-two-tower")
    path = ArtifactStore.from_settings().fetch("model", f"{DATASET}-two-tower", av.version) / "model.pt"
    with pytest.raises(ValueError, match="feature service"):
        register_model(path, "x", {}, tiny_config(), "v1", "dataset/x@1")  # it was trained on v2
    with pytest.raises(TypeError, match="must be a number"):
        register_model(path, "x", {"recall@10": "high"}, tiny_config(), "v2", "dataset/x@1")


def test_snapshot_join_equals_feast(world, examples_ref):
    """The benchmark's in-memory as-of join gives what Feast gives (same snapshots, events within TTL)."""
    from bench.common import SnapshotFeatures
    from features.store import FeatureRepo

    repo = FeatureRepo.for_dataset(DATASET)
    snaps = SnapshotFeatures(repo.read_source("searcher"), repo.read_source("document"))
    s = world.sessions.sample(300, random_state=0)
    ents = pd.DataFrame({"searcher_id": s["searcher_id"].to_numpy(), "event_timestamp": s["ts"].to_numpy()})
    ours, feast = snaps.historical_features(ents, "searcher"), repo.historical_features(ents, "searcher")
    assert (ours["feature_ts"].to_numpy() == feast["feature_ts"].to_numpy()).all()
    assert ours["city"].tolist() == feast["city"].tolist()
    assert ours["friend_count"].astype("Int64").tolist() == feast["friend_count"].tolist()
