"""The v2 inputs: searcher history at serving time, id vocabularies, positives from the document table, and
no held-out interaction in any training feature."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.toy import location_task
from examples.build import add_history, attach_history, history_events
from features.history import HistoryConfig, interactions, recent_documents
from models.batches import positive_frame
from models.config import ModelConfig
from models.towers import TwoTowerModel

TINY = ModelConfig(
    trigram_buckets=512, word_buckets=256, bigram_buckets=256, context_buckets=4096, embedding_dim=8,
    hidden_dims=(16,), output_dim=8,
)


def T(s: str) -> pd.Timestamp:
    return pd.Timestamp(s, tz="UTC")


def sessions(rows) -> pd.DataFrame:
    return pd.DataFrame([{"session_id": str(i), "searcher_id": s, "ts": T(t), "query": "", "impressed": [],
                          "clicked": c} for i, (s, t, c) in enumerate(rows)])


def test_history_is_strictly_before_newest_first_and_weighted_by_recency():
    ev = interactions(sessions([("a", "2024-01-01", ["x"]), ("a", "2024-01-05", ["y", "x"]),
                                ("b", "2024-01-02", ["z"]), ("a", "2024-01-10", ["w"])]))
    hist, w = recent_documents(ev, ["a", "a", "a", "b", "c"],
                               [T("2024-01-05"), T("2024-01-11"), T("2024-01-01"), T("2024-01-03"), T("2024-01-03")],
                               HistoryConfig(max_items=2, half_life_days=30))
    assert hist[0] == ["x"]  # the clicks of 01-05 are not before 01-05
    assert hist[1] == ["w", "x"]  # newest first, max 2, x's two clicks merged (ties by id: x before y)
    assert hist[2] == [] and hist[3] == ["z"] and hist[4] == []
    assert w[0] == [1.0] and np.isclose(sum(w[1]), 1.0)
    # x was seen 6 and 10 days earlier, w 1 day earlier: x's two recency weights sum above w's one
    assert w[1][1] > w[1][0]



def test_history_weights_stay_bit_identical_until_the_searcher_acts_again():
    """The nightly online load writes only the searchers whose features changed: a searcher who did nothing
    since yesterday must have exactly yesterday's weights, not weights that differ in the last bit."""
    ev = interactions(sessions([("a", "2024-01-01 08:00", ["x"]), ("a", "2024-01-05 17:30", ["y", "x"]),
                                ("a", "2024-01-09 03:10", ["w"])]))
    days = [T("2024-01-10") + pd.Timedelta(days=d) for d in range(40)]
    hist, w = recent_documents(ev, ["a"] * len(days), days, HistoryConfig(half_life_days=30))
    assert all(h == hist[0] for h in hist) and all(x == w[0] for x in w)  # exact equality, every day
    # and they are the definition's: 0.5 ** (age / half-life), summed per document, renormalized
    at = T("2024-01-10")
    age = {k: (at - T(v)) / pd.Timedelta(days=1) for k, v in
           {"x1": "2024-01-01 08:00", "x2": "2024-01-05 17:30", "y": "2024-01-05 17:30", "w": "2024-01-09 03:10"}.items()}
    raw = {"w": 0.5 ** (age["w"] / 30), "x": 0.5 ** (age["x1"] / 30) + 0.5 ** (age["x2"] / 30),
           "y": 0.5 ** (age["y"] / 30)}
    assert hist[0] == ["w", "x", "y"]  # newest first, ties by id
    assert np.allclose(w[0], [raw[d] / sum(raw.values()) for d in hist[0]], rtol=1e-12)


def test_history_of_an_example_is_what_the_daily_snapshot_serves_and_held_out_rows_stop_at_the_cutoff():
    ev = interactions(sessions([("a", "2024-01-01 10:00", ["x"]), ("a", "2024-01-05 11:00", ["y"]),
                                ("a", "2024-01-09 00:00", ["z"])]))
    ex = pd.DataFrame({"searcher_id": ["a"] * 4, "split": ["train", "train", "train", "test"],
                       "ts": [T("2024-01-01 12:00"), T("2024-01-02 00:00"), T("2024-01-05 12:00"), T("2024-01-10")]})
    out = attach_history(ex, ev, {"test": T("2024-01-05 11:00")})["searcher_history"].tolist()
    # same day: nothing yet (the online store holds the end of the previous day); the test row: up to the cutoff
    assert out == [[], ["x"], ["x"], ["y", "x"]]
    # the daily snapshot of 01-04 (as of the end of that day) holds exactly what a 01-05 example gets
    snap, _ = recent_documents(ev, ["a"], [T("2024-01-05")])
    assert snap[0] == out[2]


def test_no_held_out_interaction_reaches_the_history():
    s = sessions([("a", "2024-01-01", ["x"]), ("a", "2024-01-02", ["y"]), ("a", "2024-01-03", ["t"])])
    s["split"] = ["train", "test", "train"]  # a source's random split: the test click lies in the past
    members = pd.DataFrame({"searcher_id": ["a", "a", "a"], "doc_id": ["m1", "m2", "m3"],
                            "created_at": [T("2023-12-31"), T("2024-01-02"), T("2024-02-01")],
                            "split": ["train", "test", "train"]})
    ev = history_events(s, members)
    assert set(ev["doc_id"]) == {"x", "t", "m1"}  # not the test click y, the test membership m2, nor m3 (later)
    ex = pd.DataFrame({"searcher_id": ["a", "a"], "doc_id": ["t", "y"], "ts": [T("2024-01-03"), T("2024-01-02")],
                       "split": ["train", "test"]})
    out = add_history(ex, s, members)
    assert all("y" not in h and "m2" not in h for h in out["searcher_history"])


def test_lastfm_and_chicago_leave_their_undated_snapshots_out_of_features():
    """46% of Last.fm's held-out tagging targets are in the tagger's own end-of-data play list: undated rows
    must not be memberships that a point-in-time join can see."""
    from ingest.datasets.lastfm import LastfmConfig
    from ingest.datasets.meetup_chicago import ChicagoConfig

    assert LastfmConfig().undated_memberships is False and ChicagoConfig().undated_memberships is False


@pytest.fixture(scope="module")
def toy():
    return location_task(n_names=4, n_cities=3, n_examples=60, seed=1)


def test_ids_below_the_min_count_share_the_unknown_row_and_the_vocabulary_travels_with_the_weights(toy, tmp_path):
    from models.checkpoint import load_model, save_model
    from models.features import gather_bags
    from models.hashing import UNKNOWN

    examples, documents = toy
    model = TwoTowerModel(TINY.model_copy(update={"id_min_count": 3}))
    fitted = model.fit_inputs(examples, documents)
    counts = examples["doc_id"].value_counts()
    assert set(fitted.vocabularies["doc"]) == set(counts.index[counts >= 3])
    rare = counts.index[counts < 3][0]
    frequent = counts.index[counts >= 3][0]
    table = model.featurize_documents(documents[documents["doc_id"].isin([rare, frequent])])
    fields = [f.column for f in model.doc_featurizer.columns.context]
    j = fields.index("doc_id")
    rows = {d: i for i, d in enumerate(documents.loc[documents["doc_id"].isin([rare, frequent]), "doc_id"])}
    ids, _, _ = gather_bags(table.context, np.array([rows[rare] * len(fields) + j]))
    assert ids.tolist() == [UNKNOWN]
    ids, _, _ = gather_bags(table.context, np.array([rows[frequent] * len(fields) + j]))
    assert ids[0] != UNKNOWN
    # standardized counts: the corpus's log counts have mean 0 after fitting
    doc_num = model.featurize_documents(documents).numeric
    assert np.allclose(doc_num.mean(0), 0, atol=1e-5)
    save_model(model, tmp_path / "model.pt")
    loaded = load_model(tmp_path / "model.pt")
    assert list(loaded.fitted.vocabularies["doc"]) == list(fitted.vocabularies["doc"])
    assert np.allclose(loaded.embed_documents(documents), model.embed_documents(documents), atol=1e-6)


def test_a_searcher_id_needs_sessions_not_clicks(toy):
    # one session's several clicks (a SciFact claim's relevant abstracts) do not make a returning searcher
    examples, documents = toy
    ex = examples.head(6).copy()
    ex["searcher_id"] = ["once", "once", "once", "twice", "twice", "new"]
    ex["session_id"] = ["s1", "s1", "s1", "s2", "s3", "s4"]
    fitted = TwoTowerModel(TINY).fit_inputs(ex, documents)
    assert list(fitted.vocabularies["searcher"]) == ["twice"]


def test_positives_come_from_the_document_table_unless_asked_otherwise(toy):
    examples, documents = toy
    ex = examples.head(5).copy()
    ex["doc_member_count"] = -1  # what the example's own point-in-time join said
    ids = pd.Series(np.arange(len(documents)), index=documents["doc_id"])
    pos = ids.loc[ex["doc_id"]].to_numpy()
    corpus = positive_frame(ex, documents, pos, "corpus")
    assert corpus["doc_id"].tolist() == ex["doc_id"].tolist()
    assert corpus["member_count"].tolist() == documents.set_index("doc_id").loc[ex["doc_id"], "member_count"].tolist()
    own = positive_frame(ex, documents, pos, "example")
    assert (own["member_count"] == -1).all()
    # a positive missing from the table keeps its own columns
    pos_missing = pos.copy()
    pos_missing[2] = len(documents)
    mixed = positive_frame(ex, documents, pos_missing, "corpus")
    assert mixed["member_count"].tolist()[2] == -1 and mixed["doc_id"].tolist() == ex["doc_id"].tolist()
    with pytest.raises(ValueError, match="positive_features"):
        positive_frame(ex, documents, pos, "latest")


def test_a_model_saved_before_the_v2_inputs_loads_as_it_was_trained(toy, tmp_path):
    """A v1 model's config has none of the v2 fields: it must rebuild the v1 towers, not the v2 defaults."""
    from models.checkpoint import load_model, model_payload, save_atomic

    examples, documents = toy
    v1 = TINY.model_copy(update={"ids": False, "history": False, "profile": False, "tags": False,
                                 "scale_counts": False, "max_body_chars": TINY.max_text_chars})
    model = TwoTowerModel(v1)
    payload = model_payload(model)
    for field in ("ids", "history", "profile", "tags", "scale_counts", "max_body_chars", "id_min_count"):
        payload["model_config"].pop(field)
    payload.pop("fitted_inputs")
    save_atomic(payload, tmp_path / "model.pt")
    loaded = load_model(tmp_path / "model.pt")
    assert loaded.config == v1
    assert np.allclose(loaded.embed_documents(documents), model.embed_documents(documents), atol=1e-6)
