"""Offline hard-negative mining, the easy:hard mix, weighted-concat and cascade ensembles (models/)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ann.index import IndexConfig
from bench.toy import location_task
from models.batches import TrainingData
from models.checkpoint import MODEL
from models.config import LossConfig, ModelConfig, TrainConfig
from models.ensemble import (
    Cascade,
    WeightedConcat,
    concat_constant,
    exact_top_k,
    fit_concat_weights,
    load_ensemble,
    rerank,
    save_ensemble,
)
from models.evaluate import evaluate
from models.mining import HARD_NEGATIVES, MiningConfig, mine_hard_negatives
from models.train import train

MODEL_CFG = ModelConfig(
    trigram_buckets=2048, word_buckets=1024, bigram_buckets=1024, context_buckets=512, embedding_dim=16,
    hidden_dims=(64,), output_dim=32,
)


def config(**kw) -> TrainConfig:
    base = dict(model=MODEL_CFG, loss=LossConfig(n_corpus_negatives=64), batch_size=128, epochs=2,
                progress=False, num_threads=1, early_stopping_patience=3)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def task():
    examples, documents = location_task(n_names=10, n_cities=40, n_examples=2000, seed=3)
    return examples, documents


@pytest.fixture(scope="module")
def base(task, tmp_path_factory):
    examples, documents = task
    split = {s: examples[examples["split"] == s].reset_index(drop=True) for s in ("train", "valid", "test")}
    return train(split["train"], split["valid"], documents, config(), tmp_path_factory.mktemp("base"),
                 feature_service="toy_v1")


@pytest.fixture(scope="module")
def text_only(task, tmp_path_factory):
    examples, documents = task
    split = {s: examples[examples["split"] == s].reset_index(drop=True) for s in ("train", "valid", "test")}
    cfg = config(model=MODEL_CFG.model_copy(update={"use_context": False}))
    return train(split["train"], split["valid"], documents, cfg, tmp_path_factory.mktemp("text"),
                 feature_service="toy_v1")


# --------------------------------------------------------------------------- mining


def _ranks(model, examples, documents):
    """1-based rank of every document for each training example's query (exact)."""
    train = examples[examples["split"] == "train"].reset_index(drop=True)
    q = model.embed_queries(train)
    d = model.embed_documents(documents)
    order = np.argsort(-(q @ d.T), axis=1, kind="stable")
    ranks = np.empty_like(order)
    ranks[np.arange(len(order))[:, None], order] = np.arange(1, order.shape[1] + 1)
    return train, ranks


@pytest.mark.parametrize("strategy,window", [("window", (21, 60)), ("hardest", (1, 60))])
def test_mined_negatives_fall_in_the_window_and_are_never_positives(task, base, strategy, window):
    examples, documents = task
    cfg = MiningConfig(strategy=strategy, rank_window=window, negatives_per_example=5,
                       index=IndexConfig(kind="flat"), exact_check_queries=50, false_negative_margin=None)
    result = mine_hard_negatives(base.model, examples, documents, cfg)
    out, report = result.examples, result.report
    assert len(out) == len(examples) and HARD_NEGATIVES in out.columns
    assert all(len(v) == 0 for v in out.loc[out["split"] != "train", HARD_NEGATIVES])
    train, ranks = _ranks(base.model, examples, documents)
    row_of = pd.Series(np.arange(len(documents)), index=documents["doc_id"])
    by_searcher = train.groupby("searcher_id")["doc_id"].agg(set)
    by_query = train.groupby("query")["doc_id"].agg(set)
    negs = out.loc[out["split"] == "train", HARD_NEGATIVES].reset_index(drop=True)
    n_checked = 0
    for i, lst in negs.items():
        assert len(lst) <= 5 and len(set(lst)) == len(lst)
        row = train.iloc[i]
        for d in lst:
            assert d != row["doc_id"]
            assert d not in by_searcher[row["searcher_id"]] and d not in by_query[row["query"]]
            r = ranks[i, row_of[d]]
            if strategy == "window":
                assert window[0] - 1 <= r <= window[1] + 1  # ties may swap neighbours
            n_checked += 1
    assert n_checked > 0.9 * 5 * len(train)
    assert report.examples_with_negatives == len(train) and report.removed_known_positives > 0
    assert report.pool_overlap_with_exact == pytest.approx(1.0)  # a flat index is exact
    if strategy == "hardest":  # exactly the best-ranked documents that are not known positives
        doc_ids = documents["doc_id"].to_numpy()
        for i in range(0, len(train), 97):
            row = train.iloc[i]
            known = by_searcher[row["searcher_id"]] | by_query[row["query"]]
            ranked = [x for x in doc_ids[np.argsort(ranks[i])] if x not in known][:5]
            assert set(negs[i]) == set(ranked)


def test_margin_drops_candidates_scoring_above_the_positive(task, base):
    examples, documents = task
    kw = dict(strategy="hardest", rank_window=(1, 30), negatives_per_example=5, index=IndexConfig(kind="flat"),
              exact_check_queries=0)
    loose = mine_hard_negatives(base.model, examples, documents, MiningConfig(**kw, false_negative_margin=None))
    strict = mine_hard_negatives(base.model, examples, documents, MiningConfig(**kw, false_negative_margin=0.0))
    assert loose.report.removed_by_margin == 0 and strict.report.removed_by_margin > 0
    train = examples[examples["split"] == "train"].reset_index(drop=True)
    q = base.model.embed_queries(train)
    d = base.model.embed_documents(documents)
    row_of = pd.Series(np.arange(len(documents)), index=documents["doc_id"])
    negs = strict.examples.loc[strict.examples["split"] == "train", HARD_NEGATIVES].reset_index(drop=True)
    for i, lst in negs.items():
        pos = float(q[i] @ d[row_of[train.at[i, "doc_id"]]])
        assert all(float(q[i] @ d[row_of[x]]) <= pos + 1e-5 for x in lst)


def test_ann_mining_on_ivf_pq_matches_exact_mostly_and_reports_its_cost(task, base):
    examples, documents = task
    cfg = MiningConfig(rank_window=(11, 100), negatives_per_example=4, exact_check_queries=100,
                       index=IndexConfig(kind="ivfpq", nlist=16, nprobe=8, pq_m=8))
    report = mine_hard_negatives(base.model, examples, documents, cfg).report
    assert report.index_kind == "ivfpq"
    assert report.pool_overlap_with_exact > 0.6
    assert report.ann_seconds_per_query > 0 and report.exact_seconds_per_query > 0
    assert "rank of mined negative" in report.to_markdown()


def test_corpus_shard_searches_a_share_of_the_documents(task, base):
    examples, documents = task
    cfg = MiningConfig(rank_window=(5, 40), corpus_share=0.5, index=IndexConfig(kind="flat"), exact_check_queries=0)
    report = mine_hard_negatives(base.model, examples, documents, cfg).report
    assert report.searched_documents == len(documents) // 2


def test_easy_hard_ratio_sets_the_mean_number_of_hard_negatives(task, base):
    examples, documents = task
    mined = mine_hard_negatives(base.model, examples, documents,
                                MiningConfig(rank_window=(5, 60), negatives_per_example=20,
                                             index=IndexConfig(kind="flat"), exact_check_queries=0)).examples
    train = mined[mined["split"] == "train"].reset_index(drop=True)
    for ratio in (30.0, 100.0):
        loss = LossConfig(n_corpus_negatives=64, extra_negatives=(HARD_NEGATIVES,), easy_hard_ratio=ratio)
        data = TrainingData(base.model, train, documents, loss)
        rng = np.random.default_rng(0)
        counts = []
        for _ in range(30):
            rows = rng.choice(len(train), size=128, replace=False)
            b = data.batch(rows, rng)
            counts.append((b.extra_ids >= 0).sum(1).numpy())
        easy = 128 - 1 + 64
        assert np.mean(np.concatenate(counts)) == pytest.approx(easy / ratio, rel=0.1)


def test_training_with_mined_negatives_runs_and_warm_starts(task, base, tmp_path):
    examples, documents = task
    mined = mine_hard_negatives(base.model, examples, documents,
                                MiningConfig(rank_window=(5, 60), index=IndexConfig(kind="flat"),
                                             exact_check_queries=0)).examples
    split = {s: mined[mined["split"] == s].reset_index(drop=True) for s in ("train", "valid")}
    cfg = config(loss=LossConfig(n_corpus_negatives=64, extra_negatives=(HARD_NEGATIVES,), easy_hard_ratio=50))
    run = train(split["train"], split["valid"], documents, cfg, tmp_path, init_from=base.model_path,
                feature_service="toy_v1")
    assert run.best_metric is not None and run.best_metric > 0.3


# --------------------------------------------------------------------------- ensembles


def test_weighted_concat_cosine_is_the_weighted_sum_of_member_cosines(task, base, text_only):
    examples, documents = task
    q_frame, d_frame = examples.head(30), documents.head(50)
    weights = [1.0, 0.4]
    ens = WeightedConcat([base.model, text_only.model], weights)
    q, d = ens.embed_queries(q_frame), ens.embed_documents(d_frame)
    assert q.shape[1] == ens.output_dim == 64
    assert np.allclose(np.linalg.norm(q, axis=1), 1, atol=1e-5) and np.allclose(np.linalg.norm(d, axis=1), 1, atol=1e-5)
    cos = [m.embed_queries(q_frame) @ m.embed_documents(d_frame).T for m in (base.model, text_only.model)]
    expected = (weights[0] * cos[0] + weights[1] * cos[1]) / concat_constant(weights)
    assert np.allclose(q @ d.T, expected, atol=1e-5)


def test_members_that_featurize_alike_share_one_featurization(task, base, text_only, monkeypatch):
    """An ensemble featurizes a query once per distinct featurizer (featurization costs more than a tower
    on the online path); the vectors are those of each member alone."""
    import copy

    from models.features import FittedInputs

    examples, documents = task
    q_frame, d_frame = examples.head(20), documents.head(30)
    twin = copy.deepcopy(base.model)  # another member trained on the same data: same inputs, other weights
    with torch.no_grad():
        for w in twin.parameters():
            w.mul_(-1.0)
    assert twin.query_featurizer.signature == base.model.query_featurizer.signature
    assert text_only.model.query_featurizer.signature != base.model.query_featurizer.signature  # no context
    calls = {"query": 0, "document": 0}
    for m in (base.model, twin, text_only.model):
        for side, name in (("query", "featurize_queries"), ("document", "featurize_documents")):
            def counted(frame, _f=getattr(m, name), _side=side):
                calls[_side] += 1
                return _f(frame)
            monkeypatch.setattr(m, name, counted)
    ens = WeightedConcat([base.model, twin, text_only.model], [1.0, 0.5, 0.25])
    q, d = ens.embed_queries(q_frame), ens.embed_documents(d_frame)
    assert calls == {"query": 2, "document": 2}
    parts = [w * m.embed_queries(q_frame) for m, w in zip(ens.members, ens.weights)]
    assert np.allclose(q, np.concatenate(parts, axis=1) / np.sqrt(1 + 0.25 + 0.0625), atol=1e-6)
    assert np.allclose(d, np.concatenate([m.embed_documents(d_frame) for m in ens.members], axis=1) / np.sqrt(3),
                       atol=1e-6)
    # another fitted state (another training set's vocabulary) is another signature
    before = twin.query_featurizer.signature
    twin.set_fitted(FittedInputs({"doc": pd.Index(["d1"], dtype=object)}, {}))
    assert twin.query_featurizer.signature != before


def test_a_cascade_of_a_model_with_itself_is_the_model(task, base):
    examples, documents = task
    test = examples[examples["split"] == "test"]
    alone = evaluate(base.model, test, documents)
    twice = evaluate(Cascade(base.model, base.model, rerank_n=50), test, documents)
    for k in ("recall@1", "recall@10", "recall@100"):
        assert twice[k] == pytest.approx(alone[k], abs=1e-9)


def test_cascade_reranks_only_the_first_n():
    cand = np.array([[3, 1, 2, 0]])
    d2 = np.eye(4, dtype=np.float32)
    q2 = np.array([[0.0, 0.1, 0.9, 0.5]], np.float32)  # 2 > 3 > 1 among the first 3; doc 0 (rank 4) stays last
    rows, scores = rerank(cand, q2, d2, rerank_n=3)
    assert rows.tolist() == [[2, 3, 1, 0]]
    assert np.isnan(scores[0, 3]) and scores[0, 0] == pytest.approx(0.9)


def test_text_first_unified_second_cascade_beats_text_only(task, base, text_only):
    examples, documents = task
    test = examples[examples["split"] == "test"]
    text = evaluate(text_only.model, test, documents)
    cascade = evaluate(Cascade(text_only.model, base.model, rerank_n=100), test, documents)
    assert cascade["recall@10"] > text["recall@10"] + 0.2
    q = test.head(5)
    top = exact_top_k(Cascade(text_only.model, base.model, 100), q, documents, 10)
    assert top.shape == (5, 10) and (top >= 0).all()


def test_concat_weights_are_fit_on_validation_and_the_ensemble_saves_and_loads(task, base, text_only, tmp_path):
    examples, documents = task
    valid = examples[examples["split"] == "valid"]
    members = [base.model, text_only.model]
    weights, trials = fit_concat_weights(members, lambda m: evaluate(m, valid, documents)["recall@10"])
    assert len(trials) >= 5 and max(t["score"] for t in trials) == pytest.approx(
        evaluate(WeightedConcat(members, weights), valid, documents)["recall@10"])
    ens = WeightedConcat(members, weights)
    save_ensemble(ens, [base.out_dir / MODEL, text_only.out_dir / MODEL], ["model/a@1", "model/b@1"], tmp_path)
    loaded = load_ensemble(tmp_path)
    assert isinstance(loaded, WeightedConcat) and loaded.weights == weights and loaded.feature_service == "toy_v1"
    assert np.allclose(loaded.embed_queries(valid.head(10)), ens.embed_queries(valid.head(10)), atol=1e-6)
    with pytest.raises(ValueError, match="one weight per member"):
        WeightedConcat(members, [1.0])


def test_quantized_metrics_go_through_an_ivf_pq_index(task, base):
    from ann.index import IndexConfig as IC
    from evaluation.protocol import evaluate_split, quantized_metrics

    examples, documents = task
    parts = {s: examples[examples["split"] == s] for s in ("train", "valid", "test")}
    exact = evaluate_split(base.model, parts, "test", documents)
    # 100 documents: too few to train 256 PQ centroids -> None; with 4-bit codes it builds
    assert quantized_metrics(base.model, parts, "test", documents.head(100)) is None
    q = quantized_metrics(base.model, parts, "test", documents, config=IC(kind="ivfpq", nbits=4, nlist=8, nprobe=8))
    assert q is not None and q["n_sessions"] == exact["n_sessions"]
    assert abs(q["recall@10"] - exact["recall@10"]) < 0.1  # refine re-ranks exactly: close to exact
    casc = quantized_metrics(Cascade(base.model, base.model, 50), parts, "test", documents,
                             config=IC(kind="ivfpq", nbits=4, nlist=8, nprobe=8))
    assert casc["recall@10"] == pytest.approx(q["recall@10"], abs=1e-9)


def test_a_pseudo_searcher_does_not_turn_every_positive_into_a_false_negative():
    from models.mining import known_positive_keys

    train = pd.DataFrame({"searcher_id": ["all"] * 5 + ["u1", "u1"], "query": list("abcde") + ["f", "g"],
                          "doc_id": ["d0", "d1", "d2", "d3", "d4", "d5", "d6"]})
    doc_row = pd.Series(np.arange(7), index=[f"d{i}" for i in range(7)])
    s_keys, q_keys, s_code, _ = known_positive_keys(train, doc_row, pseudo_share=0.5)
    assert set(s_code) == {"u1"} and len(s_keys) == 2  # "all" holds 5 of the 7 pairs: left out
    s_keys, _, s_code, _ = known_positive_keys(train, doc_row)
    assert set(s_code) == {"all", "u1"} and len(s_keys) == 7
    assert len(q_keys) == 7


def test_mining_runs_when_every_searcher_is_a_pseudo_searcher(task, base):
    examples, documents = task
    cfg = MiningConfig(rank_window=(5, 40), index=IndexConfig(kind="flat"), exact_check_queries=0,
                       pseudo_searcher_share=1e-9)  # no searcher keys at all: only same-query positives count
    result = mine_hard_negatives(base.model, examples, documents, cfg)
    assert result.report.examples_with_negatives > 0 and result.report.removed_known_positives > 0


def test_the_search_split_in_ranges_and_pickled_selects_the_same_negatives(task, base):
    """A round searched as batch-aligned session ranges, each with a pickled copy of the search space (what a
    Dask worker gets), selects exactly the negatives of the one-process round, with the same counts."""
    import pickle

    from models.mining import finish_mining, plan_mining, search_sessions

    examples, documents = task
    config = MiningConfig(rank_window=(5, 60), batch_size=64, corpus_share=0.8, exact_check_queries=32,
                          index=IndexConfig(kind="ivfpq", nlist=16, nprobe=8, pq_m=8))
    whole = mine_hard_negatives(base.model, examples, documents, config)
    plan = plan_mining(base.model, examples, documents, config)
    ranges = plan.ranges(3)
    assert len(ranges) == 3 and ranges[0][0] == 0 and ranges[-1][1] == len(plan.space.q_emb)
    assert all(a % 64 == 0 for a, _ in ranges)  # batch boundaries: each batch keeps its seeded draw
    searched = [search_sessions(pickle.loads(pickle.dumps(plan.space)), a, b) for a, b in ranges]
    split = finish_mining(plan, searched)
    assert split.examples[HARD_NEGATIVES].tolist() == whole.examples[HARD_NEGATIVES].tolist()
    assert sum(len(v) for v in whole.examples[HARD_NEGATIVES]) > 0
    keep = {"candidates", "removed_known_positives", "removed_by_margin", "rank_histogram", "sessions",
            "examples_with_negatives", "pool_overlap_with_exact"}
    assert split.report.model_dump(include=keep) == whole.report.model_dump(include=keep)
