"""Featurizers and towers: stable hashing, trigram/word bags, unknown slots, the text-only switch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bench.toy import location_task
from models.columns import documents_from_examples, to_document_columns, to_example_columns
from models.config import ModelConfig
from models.features import gather_bags
from models.hashing import UNKNOWN, hash_strings
from models.text import normalize_text, text_bags
from models.towers import TwoTowerModel

ROOT = Path(__file__).resolve().parent.parent
TINY = ModelConfig(
    trigram_buckets=512, word_buckets=256, bigram_buckets=256, context_buckets=128, embedding_dim=8,
    hidden_dims=(16,), output_dim=8,
)


@pytest.fixture(scope="module")
def toy():
    return location_task(n_names=4, n_cities=3, n_examples=60, seed=1)


def _bag(b, i):
    return b.ids[b.offsets[i] : b.offsets[i + 1]]


def test_trigrams_carry_word_boundaries_and_words_are_hashed_alone_and_in_pairs():
    b = text_bags(["Mini Cooper!", "mini-cooper", "cooper mini", "", None], 10**6, 10**6, 10**6)
    assert b.n_bags == 15  # 3 bags per text
    # "#mini#cooper#": #mi min ini ni# #co coo oop ope per er# (no trigram straddles the two words)
    assert len(_bag(b, 0)) == 10 and len(_bag(b, 1)) == 2 and len(_bag(b, 2)) == 1
    assert np.array_equal(np.sort(_bag(b, 0)), np.sort(_bag(b, 3)))  # punctuation is a boundary
    assert np.array_equal(np.sort(_bag(b, 0)), np.sort(_bag(b, 6)))  # same trigrams in any word order
    assert np.array_equal(np.sort(_bag(b, 1)), np.sort(_bag(b, 7)))  # same words
    assert not np.array_equal(_bag(b, 2), _bag(b, 8))  # but a different bigram
    for empty in (12, 13, 14):  # None -> unknown slot in every bag
        assert _bag(b, empty).tolist() == [UNKNOWN]
    # id ranges: [unknown | trigrams | unigrams | bigrams]
    assert (_bag(b, 0) >= 1).all() and (_bag(b, 0) <= 10**6).all()
    assert (_bag(b, 1) > 10**6).all() and (_bag(b, 1) <= 2 * 10**6).all()
    assert (_bag(b, 2) > 2 * 10**6).all()
    w = b.weights[b.offsets[0] : b.offsets[1]]
    assert np.allclose(w, 0.1)  # mean of the bag
    assert normalize_text(["  Héllo,  WORLD_x "], 100).tolist() == ["héllo world x"]


def test_hashing_is_stable_across_processes():
    code = (
        "import numpy as np; from models.text import text_bags; from models.hashing import hash_strings;"
        "b = text_bags(['kacis creations', 'Kasie\\'s creations'], 4096, 4096, 4096);"
        "print(b.ids.tolist(), hash_strings(['Louisville', 'KY'], 'city').tolist())"
    )
    outs = []
    for seed in ("1", "2"):  # different str-hash salts: builtin hash() would differ
        env = {**os.environ, "PYTHONHASHSEED": seed}
        outs.append(subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                                   text=True, check=True).stdout)
    here = text_bags(["kacis creations", "Kasie's creations"], 4096, 4096, 4096)
    assert outs[0] == outs[1] == f"{here.ids.tolist()} {hash_strings(['Louisville', 'KY'], 'city').tolist()}\n"
    assert hash_strings(["a"], "city")[0] != hash_strings(["a"], "region")[0]  # kinds are salted apart


def test_context_featurization_handles_missing_values_and_weights(toy):
    examples, _ = toy
    m = TwoTowerModel(TINY)
    df = examples.head(4).copy()
    df["searcher_city"] = [None, np.nan, "", "city001"]
    df["searcher_clusters"] = [[], None, ["k1", "k2"], ["k1"]]
    df["searcher_clusters_weights"] = [[], None, [0.25, 0.75], None]
    t = m.featurize_queries(df)
    fields = [f.column for f in m.query_featurizer.columns.context]
    city, clusters = fields.index("searcher_city"), fields.index("searcher_clusters")
    for r in range(3):
        ids, _, _ = gather_bags(t.context, np.array([r * len(fields) + city]))
        assert ids.tolist() == [UNKNOWN]
    ids, _, _ = gather_bags(t.context, np.array([3 * len(fields) + city]))
    assert ids[0] != UNKNOWN
    for r in (0, 1):
        ids, _, w = gather_bags(t.context, np.array([r * len(fields) + clusters]))
        assert ids.tolist() == [UNKNOWN] and w.tolist() == [1.0]
    ids, _, w = gather_bags(t.context, np.array([2 * len(fields) + clusters]))
    assert len(ids) == 2 and w.tolist() == [0.25, 0.75]
    ids, _, w = gather_bags(t.context, np.array([3 * len(fields) + clusters]))
    assert w.tolist() == [1.0]  # missing weights: uniform
    bad = df.copy()
    bad["searcher_clusters_weights"] = [[], None, [1.0], None]
    with pytest.raises(ValueError, match="aligned"):
        m.featurize_queries(bad)
    with pytest.raises(ValueError, match="searcher_city"):
        m.featurize_queries(df.drop(columns=["searcher_city"]))


def test_take_gathers_the_same_inputs_as_featurizing_the_subset(toy):
    examples, documents = toy
    m = TwoTowerModel(TINY)
    full = m.featurize_documents(documents)
    rows = np.array([5, 0, 3, 3])
    a = full.take(rows)
    b = m.featurize_documents(documents.iloc[rows].reset_index(drop=True)).take()
    for name in ("text_ids", "text_offsets", "text_weights", "ctx_ids", "ctx_offsets", "ctx_weights", "numeric"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_text_only_switch_removes_context_inputs(toy):
    examples, documents = toy
    unified = TwoTowerModel(TINY)
    text_only = TwoTowerModel(TINY.model_copy(update={"use_context": False}))
    assert text_only.query_tower.context is None and text_only.doc_tower.context is None
    assert text_only.query_featurizer.columns.context == () and text_only.query_featurizer.columns.numeric == ()
    assert sum(p.numel() for p in text_only.parameters()) < sum(p.numel() for p in unified.parameters())
    # the text-only model does not even need the context columns, and ignores their values
    moved = examples.head(8).copy()
    moved["searcher_city"] = "elsewhere"
    moved["searcher_friend_count"] = 10_000
    text_cols = ["query"]
    assert np.array_equal(text_only.embed_queries(examples.head(8)), text_only.embed_queries(moved))
    assert text_only.embed_queries(examples.head(8)[text_cols]).shape == (8, TINY.output_dim)
    assert not np.allclose(unified.embed_queries(examples.head(8)), unified.embed_queries(moved))
    docs_moved = documents.assign(city="elsewhere", member_cities=[["x"]] * len(documents))
    assert np.array_equal(text_only.embed_documents(documents), text_only.embed_documents(docs_moved))


def test_embeddings_are_unit_float32_and_text_tables_can_be_shared(toy):
    examples, documents = toy
    m = TwoTowerModel(TINY)
    q = m.embed_queries(examples, batch_size=7)
    d = m.embed_documents(documents, batch_size=5)
    assert q.dtype == np.float32 and q.shape == (len(examples), TINY.output_dim)
    assert np.allclose(np.linalg.norm(d, axis=1), 1, atol=1e-5)
    assert np.allclose(m.embed_documents(to_example_columns(documents)), d, atol=1e-6)  # either convention
    assert m.training  # embedding restored the previous mode
    shared = TwoTowerModel(TINY.model_copy(update={"share_text_tables": True}))
    assert shared.doc_tower.text.weight is shared.query_tower.text.weight
    assert m.doc_tower.text.weight is not m.query_tower.text.weight
    n_sparse = len(shared.sparse_parameters())
    assert n_sparse == 3 and len(m.sparse_parameters()) == 4  # shared table counted once
    assert all(p.grad is None for p in m.parameters())


def test_document_column_conventions_round_trip(toy):
    examples, documents = toy
    prefixed = to_example_columns(documents)
    assert {"doc_title", "doc_city", "doc_member_cities_weights", "doc_type", "doc_id"} <= set(prefixed.columns)
    assert to_document_columns(prefixed).columns.tolist() == documents.columns.tolist()
    assert to_document_columns(documents) is documents
    from_ex = documents_from_examples(examples)
    assert set(from_ex.columns) == set(documents.columns)
    merged = from_ex.merge(documents, on="doc_id", suffixes=("", "_t"))
    assert (merged["title"] == merged["title_t"]).all() and (merged["city"] == merged["city_t"]).all()
    with pytest.raises(ValueError, match="one convention"):
        to_document_columns(pd.concat([documents[["title"]], prefixed[["doc_title"]]], axis=1))


def test_each_text_field_is_cut_to_its_own_limit(toy):
    _, documents = toy
    doc = documents.head(1).assign(title="a " * 200 + "titleword", body="b " * 450 + "bodyword")
    def words(cfg):
        m = TwoTowerModel(cfg)
        t = m.featurize_documents(doc)
        return set(t.text.ids.tolist())
    word = lambda w, cfg: text_bags([w], cfg.trigram_buckets, cfg.word_buckets, cfg.bigram_buckets).ids[-2]  # noqa: E731
    long = TINY.model_copy(update={"max_text_chars": 256, "max_body_chars": 2048})
    short = TINY.model_copy(update={"max_text_chars": 256, "max_body_chars": 256})
    assert word("bodyword", long) in words(long) and word("bodyword", short) not in words(short)
    assert word("titleword", long) not in words(long)  # 400 characters of title: past 256


def test_records_and_frames_featurize_alike(toy, monkeypatch):
    """The online path (records, plain Python) and the batch path (a frame, pandas) must give the same
    tower inputs, or serving would read what training never saw."""
    import models.features as features

    examples, documents = toy
    m = TwoTowerModel(TINY.model_copy(update={"ids": True, "history": True}))
    m.fit_inputs(examples, documents)
    df = examples.copy()
    df.loc[0, "query"] = None
    df.loc[1, "query"] = "  Héllo,  WORLD_x!! knitting   "
    df.loc[2, "searcher_city"] = np.nan
    df.loc[3, "searcher_city"] = ""
    df.loc[4, "searcher_id"] = "never-seen"  # outside the fitted vocabulary -> unknown
    df.loc[5, "searcher_friend_count"] = None
    df.at[6, "searcher_clusters"] = None
    df.at[6, "searcher_clusters_weights"] = None
    df.at[7, "searcher_clusters_weights"] = None
    df.at[8, "searcher_clusters"] = np.array(["k1", "k2"], dtype=object)
    df.at[8, "searcher_clusters_weights"] = [0.25, None]
    records = df.to_dict("records")
    monkeypatch.setattr(features, "SMALL", 0)  # the frame through pandas
    table = m.featurize_queries(df)
    batch = table.take()
    monkeypatch.setattr(features, "SMALL", 10**9)  # each record alone through plain Python
    for i in (0, 1, 2, 3, 4, 5, 6, 7, 8, 20):
        one, ref = m.featurize_queries([records[i]]).take(), table.take(np.array([i]))
        for name in ("text_ids", "text_weights", "ctx_ids", "ctx_weights", "numeric"):
            a, b = getattr(one, name), getattr(ref, name)
            assert a is None and b is None or torch.equal(a, b), (i, name)
    online = m.featurize_queries(records).take()  # all records through plain Python at once
    for name in ("text_ids", "text_offsets", "text_weights", "ctx_ids", "ctx_offsets", "ctx_weights", "numeric"):
        a, b = getattr(online, name), getattr(batch, name)
        assert a is None and b is None or torch.equal(a, b), name
    with pytest.raises(ValueError, match="searcher_city"):
        m.featurize_queries([{k: v for k, v in records[0].items() if k != "searcher_city"}])
