"""recall@K (eq. 1), MRR and nDCG@10 on hand-made embeddings with known rankings."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from models.evaluate import evaluate, metrics_table, retrieval_metrics, session_targets
from models.knn import top_k


class FixedEmbedder:
    """Embeds by lookup: queries by their text, documents by doc_id (an exact oracle)."""

    def __init__(self, queries: dict[str, list[float]], docs: dict[str, list[float]]):
        self.q, self.d = queries, docs

    def embed_queries(self, frame, batch_size=0):
        return np.array([self.q[t] for t in frame["query"]], np.float32)

    def embed_documents(self, frame, batch_size=0):
        return np.array([self.d[i] for i in frame["doc_id"]], np.float32)


DOCS = pd.DataFrame({"doc_id": ["a", "b", "c", "d"]})
# scores of query "x" against a, b, c, d: 4, 3, 2, 1 -> ranking a, b, c, d
EMB = FixedEmbedder(
    {"x": [1.0, 0.0], "y": [0.0, 1.0]},
    {"a": [4.0, 1.0], "b": [3.0, 2.0], "c": [2.0, 3.0], "d": [1.0, 4.0]},
)


def test_recall_is_the_share_of_the_session_targets_found_in_top_k():
    examples = pd.DataFrame({
        "session_id": ["s1", "s1", "s2", "s3"],
        "query": ["x", "x", "y", "x"],
        "doc_id": ["b", "d", "d", "zz"],  # s1 clicked b and d; s2 clicked d; s3 clicked a doc not indexed
    })
    m = evaluate(EMB, examples, DOCS, ks=(1, 2, 4))
    # s1 (ranking a,b,c,d): targets {b,d} -> @1 0, @2 1/2, @4 1; s2 (ranking d,c,b,a): 1,1,1; s3: 0,0,0
    assert m["recall@1"] == pytest.approx((0 + 1 + 0) / 3)
    assert m["recall@2"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert m["recall@4"] == pytest.approx((1 + 1 + 0) / 3)
    assert m["n_sessions"] == 3 and m["targets_missing"] == 1
    # MRR: s1 first hit at rank 2, s2 at rank 1, s3 none
    assert m["mrr"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    # nDCG@10, binary: s1 dcg = 1/log2(3) + 1/log2(5), idcg = 1 + 1/log2(3)
    s1 = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert m["ndcg@10"] == pytest.approx((s1 + 1 + 0) / 3)


def test_graded_targets_from_qrels_drive_ndcg_and_mrr():
    examples = pd.DataFrame({"session_id": ["s1"], "query": ["x"], "doc_id": ["a"]})
    qrels = pd.DataFrame({"session_id": ["s1", "s1", "s1"], "doc_id": ["c", "b", "a"], "relevance": [3, 1, 0]})
    m = evaluate(EMB, examples, DOCS, ks=(1,), qrels=qrels)
    assert m["recall@1"] == 1.0  # recall keeps the clicked target set
    # ranking a(0), b(1), c(3): dcg = (2^1-1)/log2(3) + (2^3-1)/log2(4); ideal c, b: 7 + 1/log2(3)
    dcg = 1 / math.log2(3) + 7 / 2
    idcg = 7 + 1 / math.log2(3)
    assert m["ndcg@10"] == pytest.approx(dcg / idcg)
    assert m["mrr"] == pytest.approx(1 / 2)  # first doc with relevance > 0 is b at rank 2


def test_sessions_are_sampled_up_to_the_limit_and_grouped():
    examples = pd.DataFrame({
        "session_id": [f"s{i // 2}" for i in range(40)], "query": ["x"] * 40,
        "doc_id": ["a", "b"] * 20,
    })
    s = session_targets(examples, max_sessions=5, seed=3)
    assert len(s.queries) == 5 and all(t.tolist() == ["a", "b"] for t in s.targets)
    again = session_targets(examples, max_sessions=5, seed=3)
    assert s.queries["session_id"].tolist() == again.queries["session_id"].tolist()
    assert len(session_targets(examples).targets) == 20


def test_exact_knn_and_markdown_table():
    rng = np.random.default_rng(0)
    q, d = rng.normal(size=(7, 5)), rng.normal(size=(50, 5))
    assert np.array_equal(top_k(q, d, 10, chunk=3), np.argsort(-(q @ d.T), axis=1)[:, :10])
    table = metrics_table({"text": {"recall@10": 0.5, "mrr": 0.25}, "unified": {"recall@10": 0.75}})
    lines = table.strip().splitlines()
    assert lines[0] == "| model | recall@10 | mrr |"
    assert lines[2] == "| text | 0.5000 | 0.2500 |" and lines[3] == "| unified | 0.7500 | n/a |"
    with pytest.raises(ValueError, match="no evaluation sessions"):
        retrieval_metrics(q[:0], d, [str(i) for i in range(50)], session_targets(pd.DataFrame(
            {"session_id": [], "query": [], "doc_id": []})))


def test_exact_knn_bounds_its_score_matrix_on_a_large_corpus(monkeypatch):
    """At 1M documents a block of 2,048 queries is an 8 GB score matrix (it killed training on the 1M world):
    blocks shrink with the corpus, and the results do not change."""
    import torch

    import models.knn as ev

    rng = np.random.default_rng(1)
    q, d = rng.normal(size=(40, 8)).astype(np.float32), rng.normal(size=(300, 8)).astype(np.float32)
    expected = top_k(q, d, 10)
    shapes = []
    real_topk = torch.Tensor.topk
    monkeypatch.setattr(torch.Tensor, "topk", lambda self, *a, **k: shapes.append(tuple(self.shape)) or real_topk(self, *a, **k))
    monkeypatch.setattr(ev, "SCORE_BLOCK", 300 * 7)  # room for 7 queries' scores
    assert np.array_equal(top_k(q, d, 10), expected)
    assert max(s[0] for s in shapes) == 7 and sum(s[0] for s in shapes) == 40

