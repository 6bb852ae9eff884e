"""The whole chain on the tiny synthetic world, every step through its real flow under a temporary Prefect API:
generate -> materialize (Feast offline + online) -> training_data (point-in-time join, GE gates) -> train (tiny
model) -> ``ebr rebuild-index`` (FAISS, validation, publish) -> the retriever finds what searchers clicked.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pandas as pd
import pytest

from infra.settings import get_settings

pytestmark = pytest.mark.slow

DATASET = "tiny-e2e"
K = 10
N_SESSIONS = 60


def test_generate_to_retrieve(home, prefect_harness):
    from typer.testing import CliRunner

    from cli.main import app
    from flows.materialize import materialize
    from flows.train import TrainParams, train
    from flows.training_data import training_data
    from ingest.contract import write_dataset
    from ingest.synthetic import WorldConfig, generate_world
    from models.config import LossConfig, ModelConfig, TrainConfig
    from serving.index_store import load_index
    from serving.retriever import Retriever

    world = generate_world(WorldConfig.preset("tiny"))
    write_dataset(world, get_settings().data_dir / DATASET, source="synthetic")
    first, last = world.sessions["ts"].min().date() - timedelta(days=1), world.sessions["ts"].max().date()
    materialize(dataset=DATASET, start_date=first, end_date=last)
    examples_ref = training_data(dataset=DATASET)

    tiny = TrainConfig(
        model=ModelConfig(trigram_buckets=4096, word_buckets=2048, bigram_buckets=2048, context_buckets=1024,
                          embedding_dim=16, hidden_dims=(64,), output_dim=32),
        loss=LossConfig(kind="softmax", negatives="mixed", n_corpus_negatives=64),
        batch_size=128, epochs=2, progress=False, num_threads=1,
    )
    model_ref = train(dataset=DATASET, params=TrainParams(config=tiny, max_eval_sessions=300))
    result = CliRunner().invoke(app, ["rebuild-index", "--dataset", DATASET, "--min-recall", "0.95"])
    assert result.exit_code == 0, result.output
    index_ref = re.search(r"published (index/\S+)", result.stdout).group(1)

    published = load_index(DATASET)
    assert published.version.ref == index_ref and published.manifest.model.ref == model_ref
    assert published.manifest.snapshot_day == last.isoformat()
    assert published.manifest.validation["query_source"] == "held-out"
    assert published.index.ntotal == published.manifest.counts["indexed"] > 0

    # training sessions with a click: is a clicked document among the retrieved candidates for its query?
    from infra.storage import ArtifactStore
    from ingest.contract import read_dataset

    name, _, version = examples_ref.removeprefix("dataset/").partition("@")
    examples_dir = ArtifactStore.from_settings().fetch("dataset", name, version)
    train_ids = set(pd.read_parquet(examples_dir / "train.parquet", columns=["session_id"])["session_id"])
    s = read_dataset(get_settings().data_dir / DATASET, tables=("sessions",)).sessions
    s = s[s["session_id"].isin(train_ids) & (s["query"].str.strip() != "") & (s["clicked"].map(len) > 0)]
    s = s.sample(N_SESSIONS, random_state=0)

    retriever = Retriever.load(DATASET)
    hits = [bool({c.doc_id for c in retriever.retrieve(q, who, k=K)} & set(clicked))
            for q, who, clicked in zip(s["query"], s["searcher_id"], s["clicked"])]
    # the chain learned something real: far above a random pick of K documents from the index
    random_rate = K / published.index.ntotal
    print(f"clicked document in the top {K} for {sum(hits)} of {len(hits)} training sessions "
          f"(random: {random_rate:.3f})")
    assert sum(hits) / len(hits) > 8 * random_rate, f"{sum(hits)} of {len(hits)} sessions found their click"
