"""Examples from hand-made sessions with known answers: positives, negatives, hard positives, time split."""

from __future__ import annotations

from datetime import date, datetime, timezone

import pandas as pd
import pytest
from pydantic import ValidationError

from examples.build import ExampleConfig, build_examples, sample_random_negatives
from examples.splits import SplitConfig, partition, sessions_until, split_sessions
from features.schema import EXAMPLE_KEYS


def T(s: str) -> pd.Timestamp:
    return pd.Timestamp(s, tz="UTC")


DOCS = pd.DataFrame({"doc_id": [f"d{i}" for i in range(1, 9)]})


def make_sessions(rows: list[tuple]) -> pd.DataFrame:
    cols = ["session_id", "searcher_id", "ts", "query", "impressed", "clicked"]
    df = pd.DataFrame(rows, columns=cols)
    df["ts"] = pd.to_datetime(df["ts"], utc=True, format="ISO8601")
    return df


# s1 fails ("pizza", no click) and 10 minutes later s2 of the same searcher clicks d3: a hard positive.
# s3 is a recommendation (empty query) with a click; s5 an unclicked recommendation (not a failed search).
SESSIONS = make_sessions(
    [
        ("s1", "u1", "2024-01-01 10:00", "pizza", ["d1", "d2"], []),
        ("s2", "u1", "2024-01-01 10:10", "pizza near me", ["d3", "d4"], ["d3", "d3"]),
        ("s3", "u2", "2024-01-02", "", ["d1", "d5"], ["d1"]),
        ("s4", "u1", "2024-01-03", "jazz", ["d2", "d3", "d6"], ["d3", "d2"]),
        ("s5", "u2", "2024-01-04", None, ["d4"], []),
        ("s6", "u3", "2024-01-05", "chess", ["d5", "d7"], ["d5"]),
        ("s7", "u3", "2024-01-06", "go", ["d8"], ["d8"]),
        ("s8", "u2", "2024-01-07", "film", ["d6"], ["d6"]),
    ]
)
NO_HOLDOUT = SplitConfig(test_fraction=0, valid_fraction=0)


def test_one_example_per_clicked_document():
    ex = build_examples(SESSIONS, DOCS, ExampleConfig(hard_positives=False, random_negatives=0), NO_HOLDOUT)
    assert list(ex.columns[: len(EXAMPLE_KEYS)]) == list(EXAMPLE_KEYS)
    pairs = set(zip(ex["session_id"], ex["doc_id"]))
    assert pairs == {("s2", "d3"), ("s3", "d1"), ("s4", "d3"), ("s4", "d2"), ("s6", "d5"), ("s7", "d8"), ("s8", "d6")}
    assert ex["example_id"].is_unique and (ex["example_id"] == ex["session_id"] + ":" + ex["doc_id"]).all()
    assert not ex["is_hard_positive"].any()
    row = ex.set_index("example_id")
    assert row.loc["s3:d1", "query"] == ""  # recommendation sessions are kept
    assert row.loc["s2:d3", "impressed_negatives"] == ["d4"]  # impressions minus clicks
    assert row.loc["s4:d2", "impressed_negatives"] == ["d6"]
    assert row.loc["s4:d2", "ts"] == T("2024-01-03")
    assert ex["ts"].is_monotonic_increasing


def test_hard_positive_from_failed_session():
    ex = build_examples(SESSIONS, DOCS, ExampleConfig(random_negatives=0, hard_positive_window_minutes=15), NO_HOLDOUT)
    hard = ex[ex["is_hard_positive"]]
    assert list(hard["example_id"]) == ["s1:d3"]
    h = hard.iloc[0]
    # the failed query and time, the later session's click; the failed session's impressions as negatives
    assert (h["query"], h["searcher_id"], h["ts"]) == ("pizza", "u1", T("2024-01-01 10:00"))
    assert h["impressed_negatives"] == ["d1", "d2"]
    assert len(ex) == 8
    # outside the window: no hard positive
    short = build_examples(SESSIONS, DOCS, ExampleConfig(random_negatives=0, hard_positive_window_minutes=5), NO_HOLDOUT)
    assert not short["is_hard_positive"].any()


def test_hard_positive_needs_same_searcher_and_a_query():
    other = SESSIONS.assign(searcher_id=SESSIONS["searcher_id"].where(SESSIONS["session_id"] != "s2", "u9"))
    ex = build_examples(other, DOCS, ExampleConfig(random_negatives=0), NO_HOLDOUT)
    assert not ex["is_hard_positive"].any()
    # a failed recommendation (empty query) followed by a click is not a failed search
    rec = SESSIONS.assign(query=SESSIONS["query"].where(SESSIONS["session_id"] != "s1", ""))
    assert not build_examples(rec, DOCS, ExampleConfig(random_negatives=0), NO_HOLDOUT)["is_hard_positive"].any()


def test_hard_positives_stay_in_training_unless_asked():
    held = SplitConfig(test_start=datetime(2024, 1, 1, tzinfo=timezone.utc), valid_fraction=0)  # everything test
    assert not build_examples(SESSIONS, DOCS, ExampleConfig(random_negatives=0), held)["is_hard_positive"].any()
    ex = build_examples(SESSIONS, DOCS, ExampleConfig(random_negatives=0, hard_positives_in_eval=True), held)
    assert list(ex.loc[ex["is_hard_positive"], "split"]) == ["test"]


def test_random_negatives_avoid_positives_and_are_seeded():
    ex = build_examples(SESSIONS, DOCS, ExampleConfig(random_negatives=50, seed=7), NO_HOLDOUT)
    clicked = SESSIONS.set_index("session_id")["clicked"]
    for sid, negs, hard in zip(ex["session_id"], ex["random_negatives"], ex["is_hard_positive"]):
        assert len(negs) == 50
        positives = set(clicked["s2"] if hard else clicked[sid])
        assert not positives & set(negs)
        assert set(negs) <= set(DOCS["doc_id"])
    again = build_examples(SESSIONS, DOCS, ExampleConfig(random_negatives=50, seed=7), NO_HOLDOUT)
    other = build_examples(SESSIONS, DOCS, ExampleConfig(random_negatives=50, seed=8), NO_HOLDOUT)
    assert again["random_negatives"].tolist() == ex["random_negatives"].tolist()
    assert other["random_negatives"].tolist() != ex["random_negatives"].tolist()


def test_random_negatives_are_uniform_over_the_rest_of_the_corpus():
    corpus = [f"d{i}" for i in range(10)]
    negs = sample_random_negatives([["d0", "d1"]] * 2000, corpus, k=10, seed=1)
    counts = pd.Series([d for row in negs for d in row]).value_counts()
    assert set(counts.index) == set(corpus) - {"d0", "d1"}
    # 20,000 draws over 8 documents: 2,500 each, binomial sd about 47
    assert (counts - 2500).abs().max() < 250
    assert sample_random_negatives([["a"]], ["a", "b"], k=3) == [["b", "b", "b"]]
    with pytest.raises(ValueError, match="corpus has 2 document"):
        sample_random_negatives([["a", "b"]], ["a", "b"], k=1)


def test_time_split_by_fractions_keeps_time_order():
    sessions = make_sessions(
        [(f"s{i}", "u1", f"2024-01-{i + 1:02d}", "q", ["d1"], ["d1"]) for i in range(20)]
    )
    split = split_sessions(sessions, SplitConfig(test_fraction=0.2, valid_fraction=0.25))
    assert split.value_counts().to_dict() == {"train": 12, "valid": 4, "test": 4}
    ts = sessions["ts"]
    assert ts[split == "train"].max() < ts[split == "valid"].min()
    assert ts[split == "valid"].max() < ts[split == "test"].min()
    assert set(sessions.loc[split == "test", "session_id"]) == {"s16", "s17", "s18", "s19"}
    parts = partition(build_examples(sessions, DOCS, ExampleConfig(random_negatives=0), SplitConfig(test_fraction=0.2, valid_fraction=0.25)))
    assert [len(parts[s]) for s in ("train", "valid", "test")] == [12, 4, 4]


def test_time_split_by_cut_dates_and_ties():
    sessions = make_sessions(
        [("a", "u1", "2024-01-01", "q", [], []), ("b", "u1", "2024-01-05", "q", [], []),
         ("c", "u1", "2024-01-05", "q", [], []), ("d", "u1", "2024-01-09", "q", [], [])]
    )
    cfg = SplitConfig(valid_start="2024-01-04", test_start=date(2024, 1, 9))
    assert list(split_sessions(sessions, cfg)) == ["train", "valid", "valid", "test"]
    # a fraction cut never separates sessions of the same instant
    assert list(split_sessions(sessions, SplitConfig(test_fraction=0.25, valid_fraction=0.34))) == [
        "train", "valid", "valid", "test"
    ]
    with pytest.raises(ValidationError, match="valid_start"):
        SplitConfig(valid_start="2024-02-01", test_start="2024-01-01")


def test_source_split_is_used_and_valid_carved_from_train():
    sessions = make_sessions(
        [(f"s{i}", "u1", f"2024-01-{i + 1:02d}", "q", ["d1"], ["d1"]) for i in range(10)]
    )
    sessions["split"] = ["train"] * 5 + ["test"] * 2 + ["train"] * 3  # a source split need not follow time
    split = split_sessions(sessions, SplitConfig(valid_fraction=0.25))
    assert list(split) == ["train"] * 5 + ["test"] * 2 + ["train", "valid", "valid"]
    with_valid = sessions.assign(split=["train"] * 8 + ["valid", "test"])
    assert list(split_sessions(with_valid, SplitConfig())) == list(with_valid["split"])
    ignored = split_sessions(sessions, SplitConfig(use_source_split=False, test_fraction=0.1, valid_fraction=0))
    assert list(ignored) == ["train"] * 9 + ["test"]
    with pytest.raises(ValueError, match="allowed"):
        split_sessions(sessions.assign(split=["holdout"] * 10), SplitConfig())


def test_an_explicit_cutoff_day_replaces_the_source_split():
    """`ebr training-data --test-start DAY --valid-start DAY`: train before, evaluate after, whatever split
    the source carries."""
    import typer

    from cli.main import explicit_split

    sessions = make_sessions(
        [(f"s{i}", "u1", f"2024-01-{i + 1:02d}", "q", ["d1"], ["d1"]) for i in range(10)]
    )
    sessions["split"] = ["train"] * 5 + ["test"] * 2 + ["train"] * 3
    split = split_sessions(sessions, explicit_split(date(2024, 1, 9), date(2024, 1, 7)))
    assert list(split) == ["train"] * 6 + ["valid"] * 2 + ["test"] * 2
    assert list(split_sessions(sessions, explicit_split(None, None))) == list(
        split_sessions(sessions, SplitConfig()))  # no cutoff given: the default rules
    with pytest.raises(typer.BadParameter, match="valid_start"):
        explicit_split(date(2024, 1, 5), date(2024, 1, 7))


def test_sessions_until_includes_the_whole_end_day():
    kept = sessions_until(SESSIONS, date(2024, 1, 3))
    assert list(kept["session_id"]) == ["s1", "s2", "s3", "s4"]
    assert len(sessions_until(SESSIONS, None)) == len(SESSIONS)


def test_no_sessions_give_no_examples():
    ex = build_examples(SESSIONS.iloc[:0], DOCS, ExampleConfig(), NO_HOLDOUT)
    assert ex.empty and list(ex.columns[: len(EXAMPLE_KEYS)]) == list(EXAMPLE_KEYS)


def test_write_splits_writes_every_split_and_replaces(tmp_path):
    from examples.build import write_splits

    ex = build_examples(SESSIONS, DOCS, ExampleConfig(random_negatives=2), SplitConfig(test_fraction=0.2, valid_fraction=0.2))
    out = tmp_path / "examples"
    counts = write_splits(ex, out, {"dataset": "hand-made"})
    assert counts == ex["split"].value_counts().reindex(["train", "valid", "test"], fill_value=0).to_dict()
    back = pd.concat([pd.read_parquet(out / f"{s}.parquet") for s in ("train", "valid", "test")], ignore_index=True)
    assert sorted(back["example_id"]) == sorted(ex["example_id"])
    assert back.set_index("example_id").loc["s2:d3", "impressed_negatives"].tolist() == ["d4"]
    config = __import__("json").loads((out / "config.json").read_text())
    assert config == {"dataset": "hand-made", "rows": counts}
    write_splits(ex.iloc[:1], out, {"dataset": "again"})
    assert len(pd.read_parquet(out / "train.parquet")) + len(pd.read_parquet(out / "test.parquet")) <= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["examples"]  # no temporary leftovers
