"""The hybrid retrieval core: term index, query language, Boolean semantics and the (constrained) nn operator."""

from __future__ import annotations

import random
import time

import numpy as np
import pandas as pd
import pytest
from pyroaring import BitMap

from ann.index import EmbeddingIndex, IndexConfig
from serving.engine import Engine, EngineConfig, UnknownModelKeyError
from serving.query import (
    MAX_DEPTH,
    NN,
    And,
    Not,
    Or,
    QuerySyntaxError,
    Term,
    parse,
    unparse,
)
from serving.terms import TermIndex, document_terms, tokens, value_term

# --------------------------------------------------------------------------- parser

VALID = [
    ("(term location:seattle)", Term("location:seattle")),
    ("(and (term text:john) (term text:smithe))", And((Term("text:john"), Term("text:smithe")))),
    ("(or (term a:b))", Or((Term("a:b"),))),
    ("(not (term type:event))", Not(Term("type:event"))),
    ("(nn unified :radius 0.24 :nprobe 16)", NN("unified", radius=0.24, nprobe=16)),
    ("(nn unified :k 100)", NN("unified", k=100)),
    ("  ( nn   m@v1   :k 5 :radius -0.5 )  ", NN("m@v1", radius=-0.5, k=5)),
]


@pytest.mark.parametrize("text,expected", VALID)
def test_valid_expressions_parse_and_round_trip(text, expected):
    assert parse(text) == expected
    assert parse(unparse(expected)) == expected


def test_the_papers_expression_parses():
    text = ("(and (or (term location:seattle) (term location:menlo_park)) "
            "(or (and (term text:john) (term text:smithe)) (nn unified :radius 0.24 :nprobe 16)))")
    e = parse(text)
    assert unparse(e) == text


@pytest.mark.parametrize("text,message,position", [
    ("", "empty query", 0),
    ("(term)", "expected a term", 5),
    ("(term seattle)", "expected a term field:value", 6),
    ("(and)", "at least one expression", 4),
    ("(xor (term a:b))", "unknown operator 'xor'", 1),
    ("(term a:b", "unexpected end of query, expected ')'", 9),
    ("(term a:b))", "unexpected ')' after the end", 10),
    ("term a:b", "expected '('", 0),
    ("(nn m)", "needs :radius", 4),
    ("(nn m :radius 2)", ":radius must be a cosine", 14),
    ("(nn m :k 0)", ":k must be in [1, 10000]", 9),
    ("(nn m :k x)", ":k must be an integer", 9),
    ("(nn m :k 1 :k 2)", "given twice", 11),
    ("(nn m :foo 1)", "unknown nn option ':foo'", 6),
    ("(nn :k 5)", "expected a model key", 4),
])
def test_invalid_expressions_say_what_and_where(text, message, position):
    with pytest.raises(QuerySyntaxError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")) as err:
        parse(text)
    assert err.value.position == position


def test_limits_keep_hostile_input_cheap():
    deep = "(not " * (MAX_DEPTH + 1) + "(term a:b)" + ")" * (MAX_DEPTH + 1)
    with pytest.raises(QuerySyntaxError, match="nested deeper"):
        parse(deep)
    wide = "(or " + " ".join(f"(term t:{i})" for i in range(300)) + ")"
    with pytest.raises(QuerySyntaxError, match="more than 256"):
        parse(wide)
    with pytest.raises(QuerySyntaxError, match="longer than"):
        parse("(term a:" + "x" * 5000 + ")")


def test_fuzzed_input_raises_only_syntax_errors_quickly():
    rng = random.Random(0)
    pieces = ["(", ")", "and", "or", "not", "term", "nn", ":k", ":radius", ":nprobe", "a:b", "text:x", "0.5",
              "-1", "1e9", "nan", "m", " ", "\n", "é", "\x00", "((", "))"]
    seeds = [t for t, _ in VALID]
    t0 = time.perf_counter()
    for i in range(3000):
        if i % 2:
            text = "".join(rng.choice(pieces) + rng.choice(["", " "]) for _ in range(rng.randint(0, 30)))
        else:  # mutate a valid expression
            s = list(rng.choice(seeds))
            for _ in range(rng.randint(1, 4)):
                j = rng.randrange(len(s) + 1)
                op = rng.random()
                if op < 0.4 and s:
                    del s[min(j, len(s) - 1)]
                elif op < 0.8:
                    s.insert(j, rng.choice("() :.-ax1"))
                elif s:
                    s[min(j, len(s) - 1)] = rng.choice("()x ")
            text = "".join(s)
        try:
            e = parse(text)
        except QuerySyntaxError:
            continue
        assert parse(unparse(e)) == e
    assert time.perf_counter() - t0 < 10


# --------------------------------------------------------------------------- term index


def corpus(n=300, seed=0):
    rng = np.random.default_rng(seed)
    words = ["john", "smith", "smithe", "chess", "club", "jazz", "band", "yoga", "runners"]
    cities = ["Seattle", "Menlo Park", "Boston", None]
    return pd.DataFrame({
        "doc_id": [f"d{i}" for i in range(n)],
        "title": [" ".join(rng.choice(words, size=rng.integers(1, 3))).title() for _ in range(n)],
        "body": ["" if i % 3 else "a jazz night" for i in range(n)],
        "city": [cities[i % 4] for i in range(n)],
        "region": ["WA" if i % 4 == 0 else "CA" for i in range(n)],
        "country": "US",
        "doc_type": np.where(np.arange(n) % 2, "person", "group"),
        "member_clusters": [[f"k{i % 5}", f"k{(i + 1) % 5}"] if i % 2 == 0 else [] for i in range(n)],
    })


def test_document_terms_are_named_like_the_papers():
    c = corpus(8)
    terms = document_terms(c)
    first = set(terms.loc[terms["position"] == 0, "term"])
    assert {"location:seattle", "region:wa", "country:us", "type:group", "cluster:k0", "cluster:k1"} <= first
    assert {f"text:{t}" for t in tokens(c.at[0, "title"])} <= first and "text:jazz" in first
    assert value_term("location", "Menlo Park") == "location:menlo_park" and value_term("location", None) is None
    assert not any(t.startswith("location:") for t in terms.loc[terms["position"] == 3, "term"])  # no city


def test_term_index_posting_lists_and_persistence(tmp_path):
    c = corpus()
    ti = TermIndex.build(c)
    oracle = document_terms(c).groupby("term")["position"].agg(set)
    assert set(ti.postings) == set(oracle.index)
    for t, s in oracle.items():
        assert set(ti.get(t)) == s
    assert len(ti.get("text:nothing")) == 0
    loaded = TermIndex.load(ti.save(tmp_path / "terms.parquet"))
    assert loaded.n_documents == ti.n_documents and loaded.postings == ti.postings
    assert ti.stats()["documents_with_terms"] == len(c)


# --------------------------------------------------------------------------- execution


@pytest.fixture(scope="module")
def served():
    c = corpus(400, seed=1)
    rng = np.random.default_rng(2)
    vecs = rng.normal(size=(len(c), 16)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    index = EmbeddingIndex.build(vecs, np.arange(len(c), dtype=np.int64), IndexConfig(kind="flat"), progress=False)
    terms = TermIndex.build(c)
    sets = [set(document_terms(c).query("position == @i")["term"]) for i in range(len(c))]
    return c, vecs, index, terms, sets


def _oracle(e, sets, n, allowed=None):
    universe = set(range(n)) if allowed is None else allowed
    if isinstance(e, Term):
        return {i for i in universe if e.term in sets[i]}
    if isinstance(e, And):
        cur = universe
        for ch in e.children:
            cur = _oracle(ch, sets, n, cur)
        return cur
    if isinstance(e, Or):
        return set().union(*(_oracle(ch, sets, n, allowed) for ch in e.children))
    if isinstance(e, Not):
        return universe - _oracle(e.child, sets, n, allowed)
    raise TypeError(e)


def _random_expr(rng, vocab, depth=0):
    r = rng.random()
    if depth >= 3 or r < 0.35:
        return Term(rng.choice(vocab))
    if r < 0.6:
        return And(tuple(_random_expr(rng, vocab, depth + 1) for _ in range(rng.randint(1, 3))))
    if r < 0.85:
        return Or(tuple(_random_expr(rng, vocab, depth + 1) for _ in range(rng.randint(1, 3))))
    return Not(_random_expr(rng, vocab, depth + 1))


def test_boolean_semantics_match_a_brute_force_oracle(served):
    c, _, index, terms, sets = served
    engine = Engine(terms, index, {"m"})
    vocab = sorted(terms.postings) + ["text:absent"]
    rng = random.Random(3)
    for _ in range(300):
        e = _random_expr(rng, vocab)
        hits = engine.run(e, None, limit=len(c))
        assert set(hits.positions.tolist()) == _oracle(e, sets, len(c)), unparse(e)
        assert hits.matched == len(_oracle(e, sets, len(c)))


@pytest.mark.parametrize("share", [0.05, 0.9])  # id selector vs post-filtering
def test_constrained_nn_equals_exact_filtered_knn(served, share):
    c, vecs, index, terms, _ = served
    engine = Engine(terms, index, {"m"}, EngineConfig(post_filter_min_share=share))
    rng = np.random.default_rng(4)
    for term in ("location:seattle", "type:person", "text:jazz", "cluster:k2"):
        allowed = np.array(sorted(terms.get(term)))
        q = rng.normal(size=(1, 16)).astype(np.float32)
        q /= np.linalg.norm(q)
        hits = engine.run(parse(f"(and (term {term}) (nn m :k 10))"), q, limit=10)
        sims = vecs[allowed] @ q[0]
        expected = allowed[np.argsort(-sims, kind="stable")[:10]]
        assert hits.positions.tolist() == expected.tolist()
        assert np.allclose(hits.scores, np.sort(sims)[::-1][:10], atol=1e-5) and hits.from_nn.all()


def test_radius_returns_every_document_within_it_and_term_matches_carry_cosines(served):
    c, vecs, index, terms, _ = served
    engine = Engine(terms, index, {"m"})
    q = vecs[7:8].copy()
    hits = engine.run(parse("(nn m :radius 0.5)"), q, limit=1000)
    sims = vecs @ q[0]
    assert set(hits.positions.tolist()) == set(np.flatnonzero(sims >= 0.5).tolist())
    hybrid = engine.run(parse("(or (term text:jazz) (nn m :radius 0.5))"), q, limit=1000)
    jazz = set(terms.get("text:jazz"))
    assert set(hybrid.positions.tolist()) == jazz | set(np.flatnonzero(sims >= 0.5).tolist())
    assert np.allclose(hybrid.scores, sims[hybrid.positions], atol=1e-5)  # term-only matches scored too
    assert list(hybrid.scores) == sorted(hybrid.scores, reverse=True)
    only_terms = [p for p, f in zip(hybrid.positions, hybrid.from_nn) if not f]
    assert only_terms and all(p in jazz for p in only_terms)


def test_unknown_model_key_and_missing_vector_are_errors(served):
    _, _, index, terms, _ = served
    engine = Engine(terms, index, {"unified"})
    with pytest.raises(UnknownModelKeyError, match="known keys: \\['unified'\\]"):
        engine.run(parse("(nn other :k 3)"), np.ones((1, 16), np.float32) / 4, limit=3)
    with pytest.raises(ValueError, match="query vector"):
        engine.run(parse("(nn unified :k 3)"), None, limit=3)
    with pytest.raises(ValueError, match="same published version"):
        Engine(TermIndex({}, 3), index, {"unified"})
    assert isinstance(terms.get("x:y"), BitMap)


# --------------------------------------------------------------------------- query selection


def test_query_selection_skips_navigational_repeats_and_well_answered_text():
    from bench.query_selection import QuerySelection, QuerySelectionConfig

    clicks = pd.DataFrame({
        "searcher_id": ["a", "a", "a", "b", "b", "c"],
        "query": ["John Smith", "john  smith", "jazz", "jazz", "jazz", "yoga"],
        "doc_id": ["d1", "d1", "d2", "d3", "d4", "d5"],
    })
    sel = QuerySelection.fit(clicks, QuerySelectionConfig(min_repeats=2, enough_term_matches=50))
    assert sel.memory == {("a", "john smith"): "d1"}  # b's jazz went to two documents; a's jazz only once
    d = sel.decide("a", "JOHN SMITH")
    assert not d.use_nn and d.reason == "navigational" and d.known_doc == "d1"
    assert sel.decide("b", "jazz", term_matches=3).use_nn
    assert sel.decide("b", "jazz", term_matches=80).reason == "enough term matches"
    assert QuerySelection.fit(clicks, QuerySelectionConfig(navigational=False)).decide("a", "john smith").use_nn


def test_without_nn_keeps_the_term_branches():
    from bench.query_selection import without_nn

    e = parse("(and (or (term location:x) (term cluster:k1)) (or (and (term text:a) (term text:b)) (nn m :k 5)))")
    assert unparse(without_nn(e)) == "(and (or (term location:x) (term cluster:k1)) (and (term text:a) (term text:b)))"
    assert without_nn(parse("(nn m :k 5)")) is None
    assert unparse(without_nn(parse("(or (term a:b) (nn m :k 5))"))) == "(term a:b)"


# --------------------------------------------------------------------------- second stage


def test_candidate_features_and_a_second_stage_that_learns_them():
    from bench.ranking import SecondStage, candidate_features

    c = corpus(60, seed=5)
    searcher = {"city": "Seattle", "region": "WA", "country": "US", "clusters": ["k1"], "clusters_weights": [1.0]}
    f = candidate_features("john smith", searcher, c, np.linspace(1, 0, len(c)), embedding="cosine")
    assert {"text_share", "location_match", "social_match", "cosine", "type_group"} <= set(f.columns)
    seattle = (c["city"] == "Seattle").to_numpy()
    assert (f["location_match"].to_numpy() == seattle).all()
    words = [set(tokens(t)) for t in c["title"]]
    assert np.allclose(f["text_share"], [len({"john", "smith"} & w) / 2 for w in words])
    assert np.allclose(f["social_match"], [1.0 if "k1" in (m or []) else 0.0 for m in c["member_clusters"]])
    # clicks go to the searcher's city: the ranker learns to put those first
    rng = np.random.default_rng(0)
    groups = [rng.permutation(len(c))[:20] for _ in range(200)]
    X = [f.iloc[g].reset_index(drop=True) for g in groups]
    y = [seattle[g].astype(int) for g in groups]
    stage = SecondStage("cosine", n_estimators=30).fit(X, y)
    order = stage.order(f)
    assert seattle[order[: seattle.sum()]].all()
    with pytest.raises(ValueError, match="query and document vectors"):
        candidate_features("x", searcher, c, np.zeros(len(c)), embedding="raw")
