"""The held-out protocol, the baselines on hand-made corpora, and the comparison runner on a tiny task."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.comparison import compare_models, comparison_markdown, variant_config
from bench.peers import BM25, Popularity
from bench.rankers import evaluate_ranker
from evaluation.protocol import consumed_documents, protocol_exclusions
from examples.build import fill_static_document_fields
from examples.splits import split_cutoff
from features.corpus import index_documents, served_documents
from models.config import LossConfig, ModelConfig, TrainConfig
from models.evaluate import exclusion_rows, ranking_metrics, retrieval_metrics, session_targets
from models.knn import top_k


def T(s: str) -> pd.Timestamp:
    return pd.Timestamp(s, tz="UTC")


# --------------------------------------------------------------------------- baselines


@pytest.fixture
def corpus() -> pd.DataFrame:
    return pd.DataFrame({
        "doc_id": ["d1", "d2", "d3", "d4"],
        "title": ["Chess Club Paris", "Jazz Band", "Chess and Jazz", "Rugby"],
        "body": ["a club for chess players in paris", "live jazz", "", "the rugby team of lyon"],
    })


def sessions_frame(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    """(session_id, query, clicked doc_id) -> examples."""
    return pd.DataFrame(rows, columns=["session_id", "query", "doc_id"])


def test_bm25_ranks_by_term_matches(corpus):
    bm25 = BM25(corpus)
    top = bm25.rank(pd.DataFrame({"query": ["jazz", "chess", "lyon rugby", "tennis", ""]}), 3)
    # tokens after stopwords: d1 chess club paris club chess players paris (7), d2 jazz band live jazz (4),
    # d3 chess jazz (2), d4 rugby rugby team lyon (4); Lucene BM25, k1=1.5, b=0.75, avgdl 4.25:
    # jazz: d2 (tf 2) 1.456 idf > d3 (tf 1) 1.312 idf; chess: d3 1.312 idf > d1 (tf 2, long) 1.183 idf
    assert top[0].tolist() == [1, 2, -1]  # nothing else matches
    assert top[1].tolist() == [2, 0, -1]
    assert top[2][0] == 3 and (top[2][1:] == -1).all()
    assert (top[3] == -1).all() and (top[4] == -1).all()  # unknown term, empty query: nothing


def test_bm25_metrics_on_known_sessions(corpus):
    ex = sessions_frame([("s1", "jazz", "d2"), ("s2", "rugby lyon", "d4"), ("s3", "chess", "d1"), ("s4", "tennis", "d1")])
    m = evaluate_ranker(BM25(corpus), ex, corpus, ks=(1, 10))
    # s1 and s2 hit at rank 1, s3's d1 comes second (after "Chess and Jazz"), s4 retrieves nothing
    assert m["recall@1"] == pytest.approx(2 / 4)
    assert m["recall@10"] == pytest.approx(3 / 4)
    assert m["mrr"] == pytest.approx((1 + 1 + 1 / 2 + 0) / 4)


def test_popularity_ranks_train_clicks(corpus):
    train = sessions_frame([("a", "", "d3"), ("b", "", "d3"), ("c", "", "d3"), ("d", "", "d1"), ("e", "", "d1"),
                            ("f", "", "d4")])
    pop = Popularity(train, corpus)
    assert pop.rank(pd.DataFrame({"query": ["x", "y"]}), 10).tolist() == [[2, 0, 3, 1]] * 2
    test = sessions_frame([("t1", "", "d3"), ("t2", "", "d1"), ("t3", "", "d2")])
    m = evaluate_ranker(pop, test, corpus, ks=(1, 2, 10))
    assert m["recall@1"] == pytest.approx(1 / 3)
    assert m["recall@2"] == pytest.approx(2 / 3)
    assert m["recall@10"] == pytest.approx(1.0)
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 4) / 3)


@pytest.mark.parametrize("graded", [False, True])
def test_ranking_metrics_equal_the_model_metrics(graded):
    rng = np.random.default_rng(0)
    ex = pd.DataFrame({"session_id": rng.integers(0, 200, 600).astype(str),
                       "doc_id": rng.integers(0, 330, 600).astype(str)})  # some targets are not indexed
    qrels = pd.DataFrame({"session_id": ex["session_id"], "doc_id": ex["doc_id"],
                          "relevance": rng.integers(0, 3, 600)}) if graded else None
    sessions = session_targets(ex, qrels=qrels)
    ids = np.arange(300).astype(str)
    q = rng.normal(size=(len(sessions.targets), 8)).astype(np.float32)
    d = rng.normal(size=(300, 8)).astype(np.float32)
    expected = retrieval_metrics(q, d, ids, sessions)
    got = ranking_metrics(top_k(q, d, 100), ids, sessions)
    for k, v in got.items():
        assert v == pytest.approx(expected[k], abs=1e-12), k


# --------------------------------------------------------------------------- the held-out protocol


def test_index_documents_takes_the_newest_snapshot_not_after_the_cutoff():
    snaps = pd.DataFrame({
        "doc_id": ["a", "a", "a", "b", "c", "c"],
        "feature_ts": [T("2024-01-01"), T("2024-01-02"), T("2024-01-03"), T("2024-01-03"), T("2024-01-02"),
                       T("2024-01-04")],
        "member_count": [1, 2, 3, 10, 5, 6],
    })
    out = index_documents(snaps, T("2024-01-02 12:00")).set_index("doc_id")["member_count"].to_dict()
    assert out == {"a": 2, "b": 10, "c": 5}  # b was born later: its first snapshot
    assert index_documents(snaps, T("2024-01-02"), include_later=False)["doc_id"].tolist() == ["a", "c"]
    with pytest.raises(ValueError, match="timezone-aware"):
        index_documents(snaps, pd.Timestamp("2024-01-02"))


def test_split_cutoff_and_static_fill():
    parts = {"train": pd.DataFrame({"ts": [T("2024-01-01"), T("2024-01-05")]}),
             "valid": pd.DataFrame({"ts": [T("2024-01-07")]}), "test": pd.DataFrame({"ts": [T("2024-01-09")]})}
    assert split_cutoff(parts, "valid") == T("2024-01-05")
    assert split_cutoff(parts, "test") == T("2024-01-07")
    with pytest.raises(ValueError, match="split must be one of"):
        split_cutoff(parts, "train")
    ex = pd.DataFrame({"doc_id": ["a", "b"], "doc_title": ["A at the time", None], "doc_member_count": [3, None],
                       "doc_feature_ts": [T("2024-01-01"), pd.NaT]})
    docs = pd.DataFrame({"doc_id": ["a", "b"], "title": ["A now", "B"], "member_count": [9, 9]})
    out = fill_static_document_fields(ex, docs)
    assert out["doc_title"].tolist() == ["A at the time", "B"]  # only the hole, only static fields
    assert out["doc_member_count"].isna().tolist() == [False, True]


def test_variant_config_merges_and_rejects():
    base = TrainConfig(epochs=2)
    cfg = variant_config(base, {"model": {"use_context": False}, "loss": {"kind": "triplet"}})
    assert (cfg.model.use_context, cfg.loss.kind, cfg.epochs, cfg.loss.negatives) == (False, "triplet", 2, "mixed")
    assert variant_config(base, LossConfig(negatives="batch")).loss.negatives == "batch"
    with pytest.raises(ValueError, match="not allowed"):
        variant_config(base, {"loss": {"extra_negatives": ["clicked"]}})
    with pytest.raises(TypeError, match="a variant must be"):
        variant_config(base, 3)


# --------------------------------------------------------------------------- the comparison


def test_compare_models_one_row_per_variant():
    from bench.toy import location_task

    examples, documents = location_task(n_names=8, n_cities=12, n_examples=1500, seed=1)
    parts = {s: examples[examples["split"] == s].reset_index(drop=True) for s in ("train", "valid", "test")}
    small = ModelConfig(trigram_buckets=2048, word_buckets=1024, bigram_buckets=1024, context_buckets=512,
                        embedding_dim=16, hidden_dims=(32,), output_dim=16)
    base = TrainConfig(model=small, loss=LossConfig(n_corpus_negatives=32), batch_size=128, epochs=3,
                       progress=False, num_threads=1, early_stopping_patience=3)
    variants = {"unified": {}, "text-only": {"model": {"use_context": False}},
                "triplet": {"loss": {"kind": "triplet"}}}
    table = compare_models(parts["train"], parts["valid"], parts["test"], documents, variants, base=base)
    assert list(table.index) == list(variants)
    metrics = ["recall@1", "recall@10", "recall@50", "recall@100", "mrr", "ndcg@10"]
    assert ((table[metrics] >= 0) & (table[metrics] <= 1)).all().all()
    assert (table["n_sessions"] == len(parts["test"])).all()
    # the copies of a name differ only by city: text alone cannot beat 10 / n_cities at recall@10
    assert table.loc["text-only", "recall@10"] <= 10 / 12 + 0.05
    assert table.loc["unified", "recall@10"] > table.loc["text-only", "recall@10"] + 0.1
    md = comparison_markdown(table, reference="text-only")
    assert md.count("\n") == 2 + len(variants) and "| text-only |" in md and "ref" in md


# --------------------------------------------------------------------------- the recommendation protocol


def test_consumed_documents_are_never_retrieved_by_models_or_baselines():
    rng = np.random.default_rng(3)
    ids = [f"d{i}" for i in range(30)]
    index = pd.DataFrame({"doc_id": ids})
    train = pd.DataFrame({"searcher_id": ["a", "a", "b"], "doc_id": ["d0", "d1", "d2"]})
    test = pd.DataFrame({"session_id": ["1", "2"], "searcher_id": ["a", "b"], "doc_id": ["d3", "d2"]})
    consumed = consumed_documents(train)
    assert sorted(consumed["a"]) == ["d0", "d1"] and list(consumed["b"]) == ["d2"]
    sessions = session_targets(test, consumed=consumed)
    rows = exclusion_rows(sessions.exclude, ids)
    q, d = rng.normal(size=(2, 8)).astype(np.float32), rng.normal(size=(30, 8)).astype(np.float32)
    top = top_k(q, d, 30, exclude_rows=rows)
    assert not np.isin(top[0], [0, 1]).any() and not np.isin(top[1], [2]).any()
    assert (top[0, -2:] == -1).all() and (top[0, :-2] >= 0).all()  # 28 left for searcher a
    # the same exclusions for a ranker: popularity would put d0..d2 first
    pop = Popularity(pd.DataFrame({"doc_id": ["d0"] * 3 + ["d1"] * 2 + ["d2"]}), index)
    got = evaluate_ranker(pop, test, index, ks=(1, 10), consumed=consumed)
    # b's only target d2 was consumed in training: a miss for every method; a's target d3 ranks 2nd
    assert got["recall@1"] == 0.0 and got["recall@10"] == 0.5
    plain = evaluate_ranker(pop, test, index, ks=(1, 10))
    assert plain["recall@1"] == 0.0 and plain["recall@10"] == 1.0


def test_the_recommendation_protocol_applies_where_sessions_have_no_query_text():
    train = pd.DataFrame({"searcher_id": ["a", "b"], "doc_id": ["d0", "d1"], "query": ["", ""]})
    assert {k: list(v) for k, v in protocol_exclusions({"train": train}).items()} == {"a": ["d0"], "b": ["d1"]}
    assert protocol_exclusions({"train": train.assign(query=["rock", ""])}) is None


def test_the_evaluation_index_serves_no_event_that_already_started():
    documents = pd.DataFrame({
        "doc_id": ["past", "soon", "group", "undated"], "doc_type": ["event", "event", "group", "event"],
        "starts_at": [T("2024-01-01"), T("2024-03-01"), pd.NaT, pd.NaT],
        "created_at": T("2023-06-01"), "last_active_at": T("2024-01-25"),
    })
    index = pd.DataFrame({"doc_id": ["group", "past", "soon", "undated"], "title": ["g", "p", "s", "u"]})
    no_clicks = pd.DataFrame({"doc_id": pd.Series([], dtype=object), "ts": pd.Series([], dtype="datetime64[ns, UTC]")})
    got = served_documents(index, documents, T("2024-02-01"), no_clicks)
    assert got["doc_id"].tolist() == ["group", "soon", "undated"] and got["title"].tolist() == ["g", "s", "u"]
    assert served_documents(index, documents.drop(columns="starts_at"), T("2024-02-01"), no_clicks).equals(index)
    # RSVPs before the start (Meetup): the filter applies; clicks after the start (people look past events
    # up, as in the synthetic world): started events stay served
    before = pd.DataFrame({"doc_id": ["past", "soon"], "ts": [T("2023-12-01"), T("2024-01-15")]})
    assert served_documents(index, documents, T("2024-02-01"), before)["doc_id"].tolist() == ["group", "soon", "undated"]
    after = pd.DataFrame({"doc_id": ["past", "soon"], "ts": [T("2024-01-20"), T("2024-01-15")]})
    assert served_documents(index, documents, T("2024-02-01"), after).equals(index)
    # a group without activity in the 90 days before the cutoff is not served either
    stale = documents.assign(last_active_at=[T("2024-01-25"), T("2024-01-25"), T("2023-09-01"), T("2024-01-25")])
    assert "group" not in served_documents(index, stale, T("2024-02-01"), after)["doc_id"].tolist()
