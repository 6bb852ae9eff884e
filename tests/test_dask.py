"""The nightly rebuild on a real Dask cluster (a LocalCluster with 2 worker processes) gives the same index as
in process: the document embedding runs as mapped shard tasks through prefect-dask's DaskTaskRunner."""

from __future__ import annotations

import numpy as np
import pytest

from tests.test_rebuild_index import build_tiny_world

DATASET = "tiny-dask"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(home):
    return build_tiny_world(DATASET, epochs=1)


def published_vectors():
    import faiss

    from serving.index_store import load_index

    loaded = load_index(DATASET)
    flat = faiss.downcast_index(loaded.index.faiss_index.index)
    return loaded.doc_map["doc_id"].tolist(), flat.reconstruct_n(0, loaded.index.ntotal)


def test_sharded_embedding_on_a_dask_cluster_equals_the_in_process_rebuild(world, prefect_harness):
    from distributed import LocalCluster
    from prefect_dask import DaskTaskRunner

    from ann.embedding import shard_bounds
    from ann.index import IndexConfig
    from flows.rebuild_index import RebuildParams, rebuild_index

    assert shard_bounds(10, 3, 2) == [(0, 4), (4, 8), (8, 10)]  # on batch boundaries, covering every row
    assert shard_bounds(5, 8, 4) == [(0, 4), (4, 5)]

    flat = IndexConfig(kind="flat")
    rebuild_index(dataset=DATASET, params=RebuildParams(index=flat))
    ids, reference = published_vectors()

    threads = RebuildParams(index=flat, embed_shards=3, embed_batch_size=64)
    rebuild_index(dataset=DATASET, params=threads)  # mapped shards on the default (thread) runner
    ids_t, vectors_t = published_vectors()
    assert ids_t == ids and np.array_equal(vectors_t, reference)

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        on_dask = rebuild_index.with_options(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
        on_dask(dataset=DATASET, params=threads)
        with cluster.get_client() as client:
            loaded = client.run(models_loaded)  # per worker: models its shard tasks loaded
    ids_d, vectors_d = published_vectors()
    assert len(loaded) == 2 and sum(loaded.values()) >= 1  # the shards ran in the worker processes
    assert ids_d == ids and np.array_equal(vectors_d, reference)  # identical, not merely close


def models_loaded() -> int:
    import sys

    runners = sys.modules.get("flows.runners")
    return runners.cached_model.cache_info().currsize if runners else 0


FEATURES_DATASET = "tiny-dask-features"


def snapshot_digests(root) -> dict[str, str]:
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root / "sources").rglob("*.parquet"))}


def test_a_backfill_computed_in_partitions_on_a_dask_cluster_writes_the_same_snapshots(home, prefect_harness):
    """Feature computation by partition: the days of a backfill (whole community periods per partition) as
    mapped tasks, in process and on a LocalCluster's worker processes, give byte-identical snapshots."""
    import shutil
    from datetime import timedelta

    from distributed import LocalCluster
    from prefect_dask import DaskTaskRunner

    from features.store import FeatureRepo
    from flows.materialize import day_partitions, materialize
    from infra.settings import get_settings
    from ingest.contract import write_dataset
    from ingest.synthetic import WorldConfig, generate_world

    data = generate_world(WorldConfig.preset("tiny"))
    write_dataset(data, get_settings().data_dir / FEATURES_DATASET, source="synthetic")
    last = data.sessions["ts"].max().date()
    first = last - timedelta(days=15)
    days = [first + timedelta(days=i) for i in range(16)]
    parts = day_partitions(days, 3)
    assert len(parts) == 3 and sum(parts, []) == days  # consecutive, every day once
    root = FeatureRepo.for_dataset(FEATURES_DATASET).root

    def run(flow_fn, partitions):
        shutil.rmtree(root / "sources", ignore_errors=True)  # every file written by this run
        report = flow_fn(dataset=FEATURES_DATASET, start_date=first, end_date=last, partitions=partitions)
        assert [c.day for c in report.days] == days
        return snapshot_digests(root)

    reference = run(materialize, 1)
    assert len(reference) == 2 * len(days)
    assert run(materialize, 3) == reference  # mapped on the default (thread) runner
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        on_dask = materialize.with_options(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
        assert run(on_dask, 3) == reference
        with cluster.get_client() as client:
            ran = client.run(partition_tasks_ran)
    assert len(ran) == 2 and any(ran.values())  # the partitions ran in the worker processes


def partition_tasks_ran() -> bool:
    import sys

    return "flows.materialize" in sys.modules


def test_mining_searches_its_sessions_on_a_dask_cluster_with_the_same_negatives(tmp_path, prefect_harness):
    """Mining's ANN search as mapped tasks (batch-aligned session ranges, the index shipped as FAISS bytes)
    on a LocalCluster's worker processes selects exactly the negatives of the one-process round."""
    from distributed import LocalCluster
    from prefect import flow
    from prefect_dask import DaskTaskRunner

    from ann.index import IndexConfig
    from bench.toy import location_task
    from flows.mine import mine_negatives
    from models.config import LossConfig, ModelConfig, TrainConfig
    from models.mining import HARD_NEGATIVES, MiningConfig, mine_hard_negatives
    from models.train import train

    examples, documents = location_task(n_names=10, n_cities=40, n_examples=1500, seed=5)
    cfg = TrainConfig(model=ModelConfig(trigram_buckets=2048, word_buckets=1024, bigram_buckets=1024,
                                        context_buckets=512, embedding_dim=16, hidden_dims=(32,), output_dim=16),
                      loss=LossConfig(n_corpus_negatives=64), batch_size=128, epochs=1, progress=False,
                      num_threads=1)
    model = train(examples[examples["split"] == "train"].reset_index(drop=True), None, documents, cfg,
                  tmp_path / "model").model
    config = MiningConfig(rank_window=(5, 60), batch_size=128, exact_check_queries=0,
                          index=IndexConfig(kind="ivfpq", nlist=16, nprobe=8, pq_m=8))
    reference = mine_hard_negatives(model, examples, documents, config).examples[HARD_NEGATIVES].tolist()
    assert sum(map(len, reference)) > 0

    @flow
    def mine_on(shards: int):
        return mine_negatives(model, examples, documents, config, shards)

    assert mine_on(3).examples[HARD_NEGATIVES].tolist() == reference  # mapped, default (thread) runner
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        on_dask = mine_on.with_options(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
        assert on_dask(3).examples[HARD_NEGATIVES].tolist() == reference
        with cluster.get_client() as client:
            ran = client.run(mining_tasks_ran)
    assert len(ran) == 2 and any(ran.values())


def mining_tasks_ran() -> bool:
    import sys

    return "models.mining" in sys.modules
