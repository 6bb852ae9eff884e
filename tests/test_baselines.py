"""The baselines and library peers of bench.peers on tiny hand-made data, and the warm/cold split."""

from __future__ import annotations

import inspect
import sys

import numpy as np
import pandas as pd
import pytest

from bench.peers import (
    ALS,
    BM25,
    DenseEncoder,
    Fusion,
    LightFMWarp,
    NearbyPopularity,
    Popularity,
    ProfilePopularity,
    QueryPopularity,
    QueryPopularityALS,
    RecentPopularity,
    fit_on_validation,
    holdout_sessions,
    sentence_encoder,
    session_folds,
)
from bench.rankers import evaluate_ranker, rank_sessions, split_metrics, subset_sessions, warm_sessions
from evaluation.protocol import consumed_documents
from features.query_text import normalize_query
from models.evaluate import session_targets


def clicks(rows: list[tuple], columns=("session_id", "searcher_id", "query", "doc_id")) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(columns))


@pytest.fixture
def docs() -> pd.DataFrame:
    return pd.DataFrame({
        "doc_id": ["d1", "d2", "d3", "d4", "d5"],
        "title": ["Chess club", "Jazz night", "Jazz and chess", "Rugby", "Paris walks"],
        "body": ["", "", "", "", ""],
        "city": ["Paris", "Lyon", "paris ", "Lyon", ""],
    })


class Fixed:
    """A ranker returning the same rows for every query."""

    def __init__(self, rows):
        self.rows = np.asarray(rows, np.int64)
        self.n_docs = 5

    def rank(self, queries, k):
        return np.broadcast_to(self.rows[:k], (len(queries), min(k, len(self.rows)))).copy()


class Scored(Fixed):
    """A fixed ranking with scores (for score fusion)."""

    def __init__(self, rows, scores):
        super().__init__(rows)
        self.scores = np.asarray(scores, float)

    def rank_scores(self, queries, k):
        rows = self.rank(queries, k)
        return rows, np.broadcast_to(self.scores[: rows.shape[1]], rows.shape).copy()


# --------------------------------------------------------------------------- popularity family


def test_normalize_query():
    assert normalize_query("  Hip   Hop\t") == "hip hop"
    assert normalize_query(pd.Series(["A  b", None])).tolist() == ["a b", ""]


def test_query_popularity_ranks_the_querys_clicks_first_and_backfills(docs):
    train = clicks([("s1", "u", "jazz", "d2"), ("s2", "u", "Jazz", "d2"), ("s3", "u", "jazz ", "d3"),
                    ("s4", "u", "chess", "d1"), ("s5", "u", "chess", "d1"), ("s6", "u", "rugby", "d4"),
                    ("s7", "u", "", "d2")])
    qp = QueryPopularity(train, docs)
    # global popularity: d2 (3 clicks), d1 (2), d3, d4 (1 each, table order), d5 (0)
    top = qp.rank(pd.DataFrame({"query": ["  JAZZ", "chess", "tennis", "", None]}), 5)
    assert top[0].tolist() == [1, 2, 0, 3, 4]  # d2 (2 jazz clicks), d3 (1), then popularity
    assert top[1].tolist() == [0, 1, 2, 3, 4]  # d1, then popularity without d1
    assert top[2].tolist() == [1, 0, 2, 3, 4]  # unseen query: popularity
    assert top[3].tolist() == top[2].tolist() and top[4].tolist() == top[2].tolist()
    assert qp.rank(pd.DataFrame({"query": ["jazz"]}), 1).tolist() == [[1]]


def test_recent_popularity_ranks_the_newest_clicks_first_and_backfills_by_all_time(docs):
    day = pd.Timestamp("2024-03-01", tz="UTC")
    ago = [60, 50, 40, 30, 2, 0]
    train = clicks([(f"s{i}", "u", "", d, day - pd.Timedelta(days=a))
                    for i, (d, a) in enumerate(zip(["d1", "d1", "d1", "d4", "d3", "d2"], ago))],
                   columns=("session_id", "searcher_id", "query", "doc_id", "ts"))
    q = pd.DataFrame({"query": ["", ""]})
    # the newest 7 days: d2 and d3 (one click each, then all-time order: both 1, table order), then d1 (3
    # all-time clicks), d4 (1), d5 (0)
    assert RecentPopularity(train, docs, 7).rank(q, 5)[0].tolist() == [1, 2, 0, 3, 4]
    # a window covering everything is plain popularity
    everything = RecentPopularity(train, docs, 365).rank(q, 5)[0].tolist()
    assert everything == Popularity(train, docs).rank(q, 5)[0].tolist()
    with pytest.raises(ValueError, match="positive"):
        RecentPopularity(train, docs, 0)


def test_profile_popularity_follows_the_searchers_segment_and_falls_back_to_everyone(docs):
    day = pd.Timestamp("2024-03-01", tz="UTC")
    f, m = ["gender:F", "age:25-34"], ["gender:M", "age:25-34"]
    train = pd.DataFrame({
        "session_id": [f"s{i}" for i in range(7)], "searcher_id": ["a", "a", "b", "c", "c", "c", "d"],
        "doc_id": ["d5", "d5", "d5", "d2", "d2", "d3", "d1"],
        "searcher_profile": [f, f, f, m, m, m, m],
        "ts": [day] * 6 + [day - pd.Timedelta(days=100)],  # d1: clicked long ago only
    })
    queries = pd.DataFrame({"searcher_profile": [f, m, ["age:25-34"], None]})
    top = ProfilePopularity(train, docs, "gender", days=30, weight=1.0).rank(queries, 5)
    assert top[0].tolist()[:1] == [4]  # women: d5
    assert top[1].tolist()[:2] == [1, 2]  # men: d2, d3
    # without the attribute: everyone's recent clicks (d5 3, d2 2, d3 1), then all-time clicks (d1)
    assert top[2].tolist() == top[3].tolist() == [4, 1, 2, 0, 3]
    # a shared segment (everyone is 25-34) is everyone
    assert ProfilePopularity(train, docs, "age", 30, 1.0).rank(queries, 5)[0].tolist() == [4, 1, 2, 0, 3]
    with pytest.raises(ValueError, match="weight"):
        ProfilePopularity(train, docs, "gender", 30, 1.5)


def test_nearby_popularity_prefers_same_city_documents(docs):
    train = clicks([("s1", "u", "", "d2"), ("s2", "u", "", "d2"), ("s3", "u", "", "d4"), ("s4", "u", "", "d2"),
                    ("s5", "u", "", "d1"), ("s6", "u", "", "d3"), ("s7", "u", "", "d3")])
    nearby = NearbyPopularity(train, docs)
    q = pd.DataFrame({"searcher_city": ["PARIS", "Lyon", None, "Berlin"]})
    top = nearby.rank(q, 5)
    # popularity: d2 (3), d3 (2), d1, d4 (1), d5 (0)
    assert top[0].tolist() == [2, 0, 1, 3, 4]  # Paris: d3, d1 ("paris " matches), then the rest by popularity
    assert top[1].tolist() == [1, 3, 2, 0, 4]  # Lyon: d2, d4
    assert top[2].tolist() == top[3].tolist() == [1, 2, 0, 3, 4]  # no city / a city without documents
    assert NearbyPopularity(train, docs).rank(pd.DataFrame({"query": ["x"]}), 2).tolist() == [[1, 2]]


# --------------------------------------------------------------------------- collaborative filtering


def block_data(n_users: int = 12, n_items: int = 12, seed: int = 0):
    """Two groups of users, each clicking items of its own half of the catalogue; one own item per user held
    out (never clicked by that user in training)."""
    rng = np.random.default_rng(seed)
    half_u, half_i = n_users // 2, n_items // 2
    rows, held = [], {}
    for u in range(n_users):
        own = np.arange(half_i) if u < half_u else np.arange(half_i, n_items)
        h = int(rng.choice(own))
        held[f"u{u}"] = f"i{h}"
        for i in own:
            if i != h:
                for _ in range(int(rng.integers(1, 3))):
                    rows.append((f"s{len(rows)}", f"u{u}", "", f"i{i}"))
    items = pd.DataFrame({"doc_id": [f"i{i}" for i in range(n_items)], "title": "", "body": ""})
    return clicks(rows), items, held


def test_als_recovers_block_structure():
    train, items, held = block_data()
    # two factors for two blocks: more capacity (or less regularization) memorizes each searcher's own
    # clicks, held-out item included, as the "not clicked" it is in training
    als = ALS(train, items, factors=2, regularization=0.1, iterations=15, random_state=0)
    users = sorted(held, key=lambda u: int(u[1:]))
    top = als.rank(pd.DataFrame({"searcher_id": users}), len(items))
    for u, ranking in zip(users, top):
        u_idx, h = int(u[1:]), int(held[u][1:])
        other = set(range(6, 12)) if u_idx < 6 else set(range(6))
        pos = {int(r): p for p, r in enumerate(ranking)}
        assert pos[h] < min(pos[o] for o in other), (u, ranking)
    # deterministic with a fixed seed and one thread
    again = ALS(train, items, factors=2, regularization=0.1, iterations=15, random_state=0)
    np.testing.assert_allclose(again.scores(pd.DataFrame({"searcher_id": users})),
                               als.scores(pd.DataFrame({"searcher_id": users})), rtol=1e-5)
    # a searcher not seen in training gets popularity
    cold = als.rank(pd.DataFrame({"searcher_id": ["nobody"]}), len(items))
    assert cold[0].tolist() == Popularity(train, items).rank(pd.DataFrame({"q": [0]}), len(items))[0].tolist()
    # the recommendation protocol excludes what each searcher clicked: the held-out item comes first
    test = clicks([(f"t{u}", u, "", h) for u, h in held.items()])
    m = evaluate_ranker(als, test, items, ks=(1, 6), consumed=consumed_documents(train))
    assert m["recall@1"] == 1.0


def test_als_confidence_weighting_and_bad_weighting():
    train, items, held = block_data()
    als = ALS(train, items, factors=2, regularization=0.1, weighting="confidence", alpha=10.0)
    test = clicks([(f"t{u}", u, "", h) for u, h in held.items()])
    assert evaluate_ranker(als, test, items, ks=(1,), consumed=consumed_documents(train))["recall@1"] == 1.0
    with pytest.raises(ValueError, match="weighting"):
        ALS(train, items, weighting="tfidf")


def test_query_popularity_als_mixes_query_and_searcher():
    # query "rock": i0 clicked 3 times, i1 twice; searcher a likes i1's block, b likes i0's
    rows = [("r1", "x", "rock", "i0"), ("r2", "y", "rock", "i0"), ("r3", "z", "rock", "i0"),
            ("r4", "x", "rock", "i1"), ("r5", "y", "rock", "i1")]
    rows += [(f"a{i}", "a", "", f"i{j}") for i, j in enumerate([1, 3, 1, 3, 5])]
    rows += [(f"b{i}", "b", "", f"i{j}") for i, j in enumerate([0, 2, 0, 2, 4])]
    train = clicks(rows)
    items = pd.DataFrame({"doc_id": [f"i{i}" for i in range(6)]})
    qp, als = QueryPopularity(train, items), ALS(train, items, factors=2, regularization=0.01)
    q = pd.DataFrame({"query": ["rock", "rock"], "searcher_id": ["a", "b"]})
    assert QueryPopularityALS(qp, als, weight=0.0).rank(q, 2).tolist() == [[0, 1], [0, 1]]
    heavy = QueryPopularityALS(qp, als, weight=5.0).rank(q, 1)
    assert heavy[0, 0] in (1, 3, 5) and heavy[1, 0] in (0, 2, 4)


def test_lightfm_warp_recovers_block_structure():
    pytest.importorskip("lightfm", reason="optional: pip install --no-build-isolation lightfm==1.17")
    train, items, held = block_data(n_users=20, n_items=12)
    model = LightFMWarp(train, items, no_components=8, epochs=30, random_state=0)
    test = clicks([(f"t{u}", u, "", h) for u, h in held.items()])
    m = evaluate_ranker(model, test, items, ks=(1, 6), consumed=consumed_documents(train))
    assert m["recall@6"] >= 0.9  # the held-out item inside the own block's 6


# --------------------------------------------------------------------------- hyperparameters


def test_fit_on_validation_chooses_on_validation_only(docs):
    assert "test" not in inspect.signature(fit_on_validation).parameters
    valid = clicks([("v1", "u", "q", "d1"), ("v2", "u", "q", "d1")])
    calls = []

    def build(documents, first):
        calls.append((len(documents), first))
        return Fixed([first] + [r for r in range(len(documents)) if r != first])

    # d2 would be best on a test split clicking d2; validation clicks d1, so first=0 wins
    res = fit_on_validation(build, {"first": [1, 0, 2]}, valid, docs, ks=(1,), metric="recall@1")
    assert res.params == {"first": 0}
    assert res.table["recall@1"].tolist() == [0.0, 1.0, 0.0]
    assert calls == [(5, 1), (5, 0), (5, 2)]
    assert res.ranker_for(docs) is res.ranker  # same table: the fitted ranker
    other = docs.iloc[:4]
    assert res.ranker_for(other).rows[0] == 0 and calls[-1] == (4, 0)
    with pytest.raises(ValueError, match="validation"):
        fit_on_validation(build, {"first": [0]}, valid.iloc[:0], docs)


def test_holdout_sessions_keeps_sessions_whole():
    ex = clicks([(f"s{i // 2}", "u", "q", f"d{i}") for i in range(40)])
    rest, held = holdout_sessions(ex, 0.25, seed=1)
    assert len(rest) + len(held) == 40 and held["session_id"].nunique() == 5
    assert not set(rest["session_id"]) & set(held["session_id"])
    assert (held.groupby("session_id").size() == 2).all()


def test_session_folds_partition_the_sessions_and_start_with_the_slice():
    ex = clicks([(f"s{i // 2}", "u", "q", f"d{i}") for i in range(46)])  # 23 sessions of 2 clicks
    folds = session_folds(ex, 5, seed=3)
    held = [set(h["session_id"]) for _, h in folds]
    assert sorted(s for h in held for s in h) == sorted(set(ex["session_id"]))  # every session held out once
    assert all(len(r) + len(h) == 46 and not set(r["session_id"]) & hs for (r, h), hs in zip(folds, held))
    assert sorted(map(len, held)) == [4, 4, 5, 5, 5]  # the slice rounds 4.6 up, the rest deal 18 out
    _, slice_ = holdout_sessions(ex, 0.2, seed=3)
    assert held[0] == set(slice_["session_id"])  # fold 0: the slice the baselines choose on
    with pytest.raises(ValueError, match="k >= 2"):
        session_folds(ex, 1)


# --------------------------------------------------------------------------- warm / cold


def test_warm_sessions_and_split_metrics(docs):
    train = clicks([("a", "u1", "Jazz", "d2"), ("b", "u2", "chess", "d1")])
    test = clicks([("t1", "u1", " jazz", "d2"), ("t1", "u1", " jazz", "d3"),  # warm via (jazz, d2)
                   ("t2", "u3", "jazz", "d1"),  # the doc was clicked in training, but for another query: cold
                   ("t3", "u2", "rugby", "d4")])  # cold
    per_row = warm_sessions(test, train)
    assert per_row.tolist() == [True, True, False, False]
    sessions = session_targets(test)
    mask = warm_sessions(sessions, train)
    assert dict(zip(sessions.queries["session_id"], mask)) == {"t1": True, "t2": False, "t3": False}

    ranker = Fixed([1, 0, 3, 2, 4])  # d2 d1 d4 d3 d5
    doc_ids = docs["doc_id"].to_numpy()
    top = rank_sessions(ranker, sessions, doc_ids, 100)
    out = split_metrics(top, doc_ids, sessions, mask, ks=(1, 2))
    assert out["all"] == evaluate_ranker(ranker, test, docs, ks=(1, 2))
    assert out["warm"]["n_sessions"] == 1 and out["warm"]["recall@1"] == pytest.approx(0.5)  # d2 of {d2, d3}
    assert out["cold"]["n_sessions"] == 2
    assert out["cold"]["recall@2"] == pytest.approx((1 + 0) / 2)  # t2: d1 at 2; t3: d4 at 3
    assert split_metrics(top, doc_ids, sessions, np.ones(3, bool), ks=(1,))["cold"] == {"n_sessions": 0.0}
    sub = subset_sessions(sessions, ~mask)
    assert sub.queries["session_id"].tolist() == [s for s, m in zip(sessions.queries["session_id"], mask) if not m]


def test_recommendation_sessions_are_warm_when_the_target_was_clicked(docs):
    train = clicks([("a", "u1", "", "d2")])
    test = clicks([("t1", "u9", "", "d2"), ("t2", "u1", "", "d3")])
    assert warm_sessions(session_targets(test), train).tolist() == [True, False]


# --------------------------------------------------------------------------- text: dense encoder, fusion


def test_fusion_rrf_and_score(docs):
    q = pd.DataFrame({"query": ["jazz"]})
    a, b = Fixed([0, 1, 2]), Fixed([2, 3])
    # rrf, equal weights: d3 (1/63 + 1/61) > d1 (1/61) > d4 (1/62) > d2 (1/62; tie: lower row first)
    assert Fusion([a, b], method="rrf").rank(q, 5).tolist() == [[2, 0, 1, 3, -1]]
    assert Fusion([a, b], [1.0, 0.0]).rank(q, 3).tolist() == [[0, 1, 2]]
    q = pd.DataFrame({"query": ["jazz night"]})
    bm25 = BM25(docs)
    fused = Fusion([bm25], method="score").rank(q, 5)
    assert fused.tolist() == bm25.rank(q, 5).tolist() == [[1, 2, -1, -1, -1]]
    # scores scaled to [0, 1] per ranker: BM25 d2 1, d3 0; the other d3 1, d2 0: the weights decide
    assert Fusion([bm25, Scored([2, 1], [9.0, 1.0])], [0.4, 0.6], method="score").rank(q, 2).tolist() == [[2, 1]]
    assert Fusion([bm25, Scored([2, 1], [9.0, 1.0])], [0.9, 0.1], method="score").rank(q, 2).tolist() == [[1, 2]]
    with pytest.raises(ValueError, match="rank_scores"):
        Fusion([a], method="score")


@pytest.fixture(scope="module")
def encoder_docs() -> pd.DataFrame:
    return pd.DataFrame({
        "doc_id": ["a", "b", "c", "d"],
        "title": ["Stock markets", "Chocolate cake", "Pets", "Football"],
        "body": ["Share prices fell sharply on Monday.", "A recipe for a rich dessert.",
                 "The cat is sleeping on the mat.", "The home team won the final."],
    })


def test_dense_encoder_ranks_a_paraphrase_first(encoder_docs):
    dense = DenseEncoder(encoder_docs, batch_size=8)
    q = pd.DataFrame({"query": ["a kitten dozing on a rug", "equities dropped at the start of the week", ""]})
    rows, scores = dense.rank_scores(q, 4)
    assert rows[0, 0] == 2 and rows[1, 0] == 0
    assert (np.diff(scores[0]) <= 1e-6).all()
    assert (rows[2] == -1).all()  # an empty query retrieves nothing
    # another table reuses the known embeddings
    other = dense.for_documents(encoder_docs.iloc[[2, 0]])
    np.testing.assert_allclose(other.doc_emb, dense.doc_emb[[2, 0]])
    assert other.rank(q.iloc[:1], 1).tolist() == [[0]]
    # BM25 finds no word of the paraphrase; the fusion still does
    assert (BM25(encoder_docs).rank(q.iloc[:1], 4) == -1).all()
    assert Fusion([BM25(encoder_docs), dense], [0.5, 0.5]).rank(q.iloc[:1], 1).tolist() == [[2]]


def test_optional_dependencies_fail_with_the_install_command(monkeypatch):
    train, items, _ = block_data()
    monkeypatch.setitem(sys.modules, "lightfm", None)  # as if not installed
    with pytest.raises(ImportError, match="no-build-isolation lightfm==1.17"):
        LightFMWarp(train, items)
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(ImportError, match="sentence-transformers"):
        sentence_encoder.__wrapped__(None)
