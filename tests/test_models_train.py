"""End to end: the model learns, location lifts recall, a crashed run resumes exactly, warm start works."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from bench.toy import location_task
from models.checkpoint import CHECKPOINT, MODEL, load_file, load_model, read_model_info
from models.config import LossConfig, ModelConfig, TrainConfig
from models.evaluate import evaluate
from models.train import StepInfo, train

MODEL_CFG = ModelConfig(
    trigram_buckets=2048, word_buckets=1024, bigram_buckets=1024, context_buckets=512, embedding_dim=16,
    hidden_dims=(64,), output_dim=32,
)
N_NAMES, N_CITIES = 10, 24


def config(**kw) -> TrainConfig:
    base = dict(model=MODEL_CFG, loss=LossConfig(n_corpus_negatives=64), batch_size=128, epochs=3,
                progress=False, num_threads=1, early_stopping_patience=3)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def task():
    examples, documents = location_task(n_names=N_NAMES, n_cities=N_CITIES, n_examples=3000, seed=0)
    split = {s: examples[examples["split"] == s].reset_index(drop=True) for s in ("train", "valid", "test")}
    return split, documents


@pytest.fixture(scope="module")
def unified_run(task, tmp_path_factory):
    split, documents = task
    out = tmp_path_factory.mktemp("unified")
    return train(split["train"], split["valid"], documents, config(), out, feature_service="toy_v1")


def test_unified_model_learns_and_beats_text_only(task, unified_run, tmp_path):
    split, documents = task
    text_only = train(split["train"], split["valid"], documents,
                      config(model=MODEL_CFG.model_copy(update={"use_context": False})), tmp_path)
    m_uni = evaluate(unified_run.model, split["test"], documents)
    m_txt = evaluate(text_only.model, split["test"], documents)
    random_recall10 = 10 / len(documents)
    text_ceiling = 10 / N_CITIES  # same-named copies are indistinguishable by text
    assert m_uni["recall@10"] > 0.9 > 10 * random_recall10
    assert m_txt["recall@10"] > 5 * random_recall10  # text alone finds the right name...
    assert m_txt["recall@10"] < text_ceiling + 0.15  # ...but not the right city
    assert m_uni["recall@10"] > m_txt["recall@10"] + 0.3
    assert m_uni["recall@1"] > 3 * m_txt["recall@1"]
    # history: validation recall per epoch, the best epoch picked by it
    hist = unified_run.history
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    assert unified_run.best_metric == max(h["valid"]["recall@10"] for h in hist)
    assert hist[-1]["train_loss"] < hist[0]["train_loss"] and hist[0]["examples_per_s"] > 0


def test_saved_model_reloads_with_its_config_and_feature_service(task, unified_run):
    split, documents = task
    loaded = load_model(unified_run.out_dir)
    assert loaded.config == MODEL_CFG and loaded.feature_service == "toy_v1"
    q = split["test"].head(20)
    assert np.allclose(loaded.embed_queries(q), unified_run.model.embed_queries(q), atol=1e-6)
    info = read_model_info(unified_run.model_path)
    assert info["epoch"] == unified_run.best_epoch and "recall@10" in info["metrics"]
    files = sorted(p.name for p in unified_run.out_dir.iterdir())
    assert files == sorted([CHECKPOINT, MODEL])  # no temporary files left behind


def test_finished_run_is_returned_without_training_and_config_changes_are_refused(task, unified_run):
    split, documents = task
    calls: list[StepInfo] = []
    again = train(split["train"], split["valid"], documents, config(), unified_run.out_dir,
                  feature_service="toy_v1", callbacks=[calls.append])
    assert calls == [] and again.global_step == unified_run.global_step
    with pytest.raises(ValueError, match="different config"):
        train(split["train"], split["valid"], documents, config(lr=1e-4), unified_run.out_dir,
              feature_service="toy_v1")
    with pytest.raises(ValueError, match="feature service 'toy_v1'"):
        train(split["train"], split["valid"], documents, config(), unified_run.out_dir, feature_service="v2")


def test_a_run_that_is_not_resumable_writes_the_same_best_model_once(task, unified_run, tmp_path):
    split, documents = task
    run = train(split["train"], split["valid"], documents, config(resumable=False), tmp_path,
                feature_service="toy_v1")
    assert sorted(p.name for p in tmp_path.iterdir()) == [MODEL]  # no checkpoint, no temporary file
    assert unified_run.best_epoch < len(unified_run.history)  # the best model is not the last epoch's...
    assert run.best_epoch == unified_run.best_epoch
    expected = load_file(unified_run.model_path)["model_state"]
    for states in (load_file(run.model_path)["model_state"], run.model.state_dict()):
        assert states.keys() == expected.keys()
        for k in expected:  # ...so a copy that training kept updating would differ here
            assert torch.equal(states[k], expected[k]), k
    assert [h["valid"] for h in run.history] == [h["valid"] for h in unified_run.history]
    assert read_model_info(run.model_path)["epoch"] == unified_run.best_epoch
    assert load_model(tmp_path).feature_service == "toy_v1"
    with pytest.raises(ValueError, match="resumable"):
        config(resumable=False, checkpoint_every_steps=3)


class Crash(RuntimeError):
    pass


def test_resume_after_crash_reaches_the_same_weights(task, tmp_path):
    split, documents = task
    train_ex = split["train"].head(900).copy()
    rng = np.random.default_rng(0)
    ids = documents["doc_id"].to_numpy()
    train_ex["hard_negatives"] = [list(rng.choice(ids, size=3)) for _ in range(len(train_ex))]
    cfg = config(
        epochs=2, checkpoint_every_steps=3,
        loss=LossConfig(kind="triplet", margin=0.3, n_corpus_negatives=32, online_hard_negatives=2,
                        extra_negatives=("hard_negatives",)),
        model=MODEL_CFG.model_copy(update={"dropout": 0.1}),  # dropout consumes the torch RNG
    )
    straight = train(train_ex, split["valid"], documents, cfg, tmp_path / "a")

    def crash_at_step_11(info: StepInfo) -> None:
        if info.global_step == 11:
            raise Crash("injected")

    with pytest.raises(Crash):
        train(train_ex, split["valid"], documents, cfg, tmp_path / "b", callbacks=[crash_at_step_11])
    partial = load_file(tmp_path / "b" / CHECKPOINT)
    assert partial["global_step"] == 9 and partial["epoch"] == 1  # 8 steps per epoch: mid epoch 2
    resumed = train(train_ex, split["valid"], documents, cfg, tmp_path / "b")
    assert resumed.resumed_from_step == 9 and resumed.global_step == straight.global_step == 16
    a = load_file(tmp_path / "a" / CHECKPOINT)["model_state"]
    b = load_file(tmp_path / "b" / CHECKPOINT)["model_state"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [h["valid"] for h in straight.history] == [h["valid"] for h in resumed.history]
    # and the run without the resume state differs (the test can fail): another seed
    other = train(train_ex, None, documents, cfg.model_copy(update={"seed": 1}), tmp_path / "c")
    c = load_file(other.checkpoint_path)["model_state"]
    assert not torch.equal(a["query_tower.mlp.0.weight"], c["query_tower.mlp.0.weight"])


def test_warm_start_loads_weights(task, unified_run, tmp_path):
    split, documents = task
    frozen = config(epochs=1, lr=1e-9, sparse_lr=1e-9)  # steps this small leave the weights in place
    warm = train(split["train"], None, documents, frozen, tmp_path / "warm", init_from=unified_run.out_dir)
    cold = train(split["train"], None, documents, frozen, tmp_path / "cold")
    src = unified_run.model.state_dict()
    for k, v in warm.model.state_dict().items():
        assert torch.allclose(v, src[k], atol=1e-5), k
    assert not torch.allclose(cold.model.state_dict()["doc_tower.mlp.0.weight"], src["doc_tower.mlp.0.weight"])
    r_warm = evaluate(warm.model, split["test"], documents)["recall@10"]
    assert r_warm == pytest.approx(evaluate(unified_run.model, split["test"], documents)["recall@10"], abs=0.02)
    with pytest.raises(ValueError, match="cannot warm start"):
        train(split["train"], None, documents,
              config(epochs=1, model=MODEL_CFG.model_copy(update={"output_dim": 16})), tmp_path / "bad",
              init_from=unified_run.out_dir)


def test_inputs_are_checked_where_they_enter(task, tmp_path):
    split, documents = task
    with pytest.raises(ValueError, match="lacks column 'doc_id'"):
        train(split["train"].drop(columns=["doc_id"]), None, documents, config(), tmp_path)
    with pytest.raises(ValueError, match="duplicated doc_id"):
        train(split["train"], None, pd.concat([documents, documents.head(1)]), config(), tmp_path)
    with pytest.raises(ValueError, match="early_stopping_metric"):
        TrainConfig(early_stopping_metric="recall@7")


def test_validation_ranks_the_documents_it_is_given(task, tmp_path):
    """train(valid_documents=...): early stopping scores retrieval from that index (what a nightly at the
    validation cutoff serves), while negatives still come from the whole corpus."""
    split, documents = task
    served = documents[documents["doc_type"] == "event"].reset_index(drop=True)  # half of them
    result = train(split["train"], split["valid"], documents, config(epochs=1), tmp_path,
                   valid_documents=served)
    valid = result.history[0]["valid"]
    assert valid["n_documents"] == len(served) < len(documents)
    targets_in_served = split["valid"]["doc_id"].isin(set(served["doc_id"])).mean()
    assert valid["targets_missing"] > 0 and 0.3 < targets_in_served < 0.7


def test_a_training_window_keeps_the_newest_days_only(task, tmp_path):
    """train_window_days: only the examples of the newest N days train (counted per epoch), the window is
    saved with the model's config, and a frame without times is refused with the reason."""
    from examples.splits import recent_examples

    split, documents = task
    train_split = split["train"]
    ts = pd.to_datetime(train_split["ts"], utc=True)
    newest_day = recent_examples(train_split, 1.0)
    assert len(newest_day) == int((ts > ts.max() - pd.Timedelta(days=1)).sum())
    assert 0 < len(newest_day) < len(train_split)
    assert recent_examples(train_split, None) is train_split
    with pytest.raises(ValueError, match="needs a 'ts' column"):
        recent_examples(train_split.drop(columns=["ts"]), 1.0)

    result = train(train_split, split["valid"], documents, config(epochs=1, train_window_days=1.0), tmp_path)
    assert result.history[0]["examples"] == len(newest_day)
    assert read_model_info(result.model_path)["train_config"]["train_window_days"] == 1.0
