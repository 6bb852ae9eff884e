"""The quality benchmark's one code path on the tiny world: baselines chosen on validation and the towers
scored by the same code on the same sessions, tabulated."""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny():
    from bench.common import prepare
    from ingest.synthetic import WorldConfig, generate_world

    return prepare("synthetic", generate_world(WorldConfig.preset("tiny")), max_snapshots=4)


def test_every_method_is_scored_on_the_same_sessions_and_tabulated(tiny):
    from bench.rankers import EmbeddingRanker, rank_sessions
    from bench.retrieval_quality import (
        MODELS,
        against_each,
        details,
        headline,
        headline_model,
        is_model,
        run_dataset,
        strongest_baseline,
    )

    args = argparse.Namespace(epochs=1, threads=1, no_progress=True, max_sessions=500, dense="", seeds=2, workers=2)
    suite = run_dataset(tiny, args, MODELS)
    rows = suite.rows
    # the baselines, fitted while the models trained, come first in every table
    order = [is_model(name) for name in rows]
    assert order == sorted(order) and order[0] is False and order[-1] is True
    for name in ("popularity", "recent popularity", "query popularity", "BM25", "ALS (implicit)", "text-only",
                 "unified"):
        assert name in rows, list(rows)
        m = rows[name]["metrics"]["all"]
        assert 0.0 <= m["recall@10"] <= m["recall@100"] <= 1.0
        assert m["n_sessions"] == len(suite.sessions.targets)
    assert rows["ALS (implicit)"]["params"]  # chosen on validation, and said so
    assert set(rows["unified"]["params"]) >= {"temperature", "best epoch"}
    # the unified model's seed ensemble: a row of its own, judged on validation; the headline compares it
    # only where validation chose it, and never counts it as a baseline
    ensemble = rows["unified ×2"]["params"]
    assert ensemble["members"] == "2 seeds" and ensemble["chosen"] in ("yes", "no")
    assert headline_model(suite) == ("unified ×2" if ensemble["chosen"] == "yes" else "unified")
    assert strongest_baseline(suite, 10) not in ("unified", "unified ×2", "text-only")
    # warm and cold partition the sessions
    parts = rows["unified"]["metrics"]
    assert parts["warm"]["n_sessions"] + parts["cold"]["n_sessions"] == parts["all"]["n_sessions"]
    table = headline({"synthetic": suite})
    assert "| Synthetic world (default) |" in table and table.count("\n") == 3
    # the per-dataset section gives each method's seconds and the dataset's time
    section = details({"synthetic": suite}, {"synthetic": tiny}, {"synthetic": 150.0})
    assert "2.5 min in all" in section
    unified_row = next(line for line in section.splitlines() if line.startswith("| unified | "))
    assert unified_row.endswith(f" | {rows['unified']['seconds']:.0f} |")
    # every comparison of the unified model comes with its interval over resampled test searchers
    gain = suite.compare(headline_model(suite), "popularity", 10)
    assert gain.low <= gain.estimate <= gain.high and f"{gain}" in against_each(suite)
    for k in (10, 100):
        assert str(suite.compare(headline_model(suite), strongest_baseline(suite, k), k)) in table
    # a model ranks through the same protocol as a baseline: a ranker over the index, best first
    top = rank_sessions(EmbeddingRanker(_any_model(tiny), tiny.index), suite.sessions, suite.doc_ids, 10)
    assert top.shape == (len(suite.sessions.targets), 10) and (top >= -1).all()


def test_side_work_runs_beside_the_main_work_and_its_error_is_not_lost():
    import threading

    from bench.retrieval_quality import beside

    main_running, side_ran = threading.Event(), threading.Event()

    def side():  # sees the main work under way: not run before it
        if main_running.wait(10):
            side_ran.set()

    def main():  # sees the side work done while it waits: not run after it
        main_running.set()
        assert side_ran.wait(10), "the side work did not run beside the main work"
        return "main"

    assert beside(side, main) == "main"

    done = []

    def failing_side():
        raise ValueError("side failed")

    def main_that_ends():
        done.append("main")
        return "main"

    with pytest.raises(ValueError, match="side failed"):
        beside(failing_side, main_that_ends)
    assert done == ["main"]  # the main work ran to its end first

    def failing_main():
        raise KeyError("main failed")

    with pytest.raises(KeyError, match="main failed"):  # the main work's error comes first
        beside(failing_side, failing_main)


def test_datasets_prepared_ahead_in_a_process_of_their_own_are_the_ones_prepared_in_place(tiny):
    """The benchmark prepares the next datasets in a spawned process while the current one runs: the same
    frames as preparing in place, and a preparation's error reaches the caller when its dataset's turn comes."""
    import pandas as pd

    from bench.retrieval_quality import prepared_ahead

    args = argparse.Namespace(workers=2, quick=True, max_snapshots=4)
    turns = prepared_ahead(["synthetic", "no-such-source"], args)
    name, prepared = next(turns)
    prep = prepared()
    assert name == "synthetic"
    for part in ("train", "valid", "test"):
        pd.testing.assert_frame_equal(prep.parts[part], tiny.parts[part])
    pd.testing.assert_frame_equal(prep.index, tiny.index)
    name, prepared = next(turns)
    assert name == "no-such-source"
    with pytest.raises(ValueError, match="no-such-source"):
        prepared()
    assert next(turns, None) is None


def test_the_dataset_prepared_in_seconds_runs_first_and_the_others_keep_their_order():
    from bench.retrieval_quality import DATASETS, run_order

    assert run_order(list(DATASETS)) == ["scifact", "synthetic", "lastfm", "meetup_montana", "meetup_chicago",
                                         "movielens"]
    assert run_order(["movielens", "lastfm"]) == ["movielens", "lastfm"]


def test_datasets_run_two_at_a_time_and_the_next_starts_when_either_ends():
    import threading

    from bench.retrieval_quality import in_flight

    third_started, log = threading.Event(), []

    def turn(name, prepared, let_next_start):
        log.append(("start", name, prepared()))
        let_next_start()  # nothing to do alone
        if name == "long":  # ends only once the third dataset has started beside it
            assert third_started.wait(30), "the third dataset waited for both before it"
        if name == "third":
            third_started.set()
        log.append(("end", name))

    in_flight(turn, ((n, lambda n=n: n.upper()) for n in ("long", "short", "third")), lanes=2)
    assert log.index(("start", "third", "THIRD")) < log.index(("end", "long"))
    assert ("start", "long", "LONG") in log and ("end", "short") in log


def test_the_next_dataset_waits_while_a_turn_has_the_cores_to_itself():
    """A dataset whose frozen encoder's documents are encoded on every core (SciFact, when the store lacks
    them) starts alone; the next one starts once it lets it, not before, and a turn that never says so lets
    the next start when it ends."""
    import threading
    import time

    from bench.retrieval_quality import in_flight

    log, lock = [], threading.Lock()

    def turn(name, prepared, let_next_start):
        with lock:
            log.append(("start", name))
        if name == "encodes first":
            time.sleep(0.5)  # the next dataset would have started by now without the wait
            with lock:
                log.append(("encoded", name))
            let_next_start()
            time.sleep(0.5)  # the next dataset runs beside this one's rest
        time.sleep(1.0 if name == "never says" else 0.3)  # the other lane ends first: "last" could start
        with lock:
            log.append(("end", name))

    in_flight(turn, ((n, None) for n in ("encodes first", "second", "never says", "last")), lanes=2)
    assert log.index(("encoded", "encodes first")) < log.index(("start", "second"))
    assert log.index(("start", "second")) < log.index(("end", "encodes first"))  # then side by side
    assert log.index(("end", "never says")) < log.index(("start", "last"))


def test_an_error_in_one_dataset_stops_the_others_and_is_raised():
    from bench.parallel_training import Trainer
    from bench.retrieval_quality import in_flight

    other = Trainer(workers=2)  # the runs of the dataset under way beside the failing one
    started = []

    def turn(name, prepared, let_next_start):
        started.append(name)
        if name == "bad":
            raise KeyError("bad dataset")

    with pytest.raises(KeyError, match="bad dataset"):
        in_flight(turn, ((n, None) for n in ("ok", "bad", "never", "never either")), lanes=2)
    assert "never either" not in started
    assert other._closed  # its queued runs were cancelled
    other.close()


def test_a_benchmark_stopped_early_does_not_wait_for_the_preparation_under_way():
    """An error in a dataset's runs ends the benchmark at once: the preparation under way in the background
    (here the default world's, a minute or more) is stopped, not waited for."""
    import multiprocessing
    import time

    from bench.retrieval_quality import prepared_ahead

    turns = prepared_ahead(["synthetic", "synthetic"], argparse.Namespace(workers=2, quick=False, max_snapshots=24))
    next(turns)  # the first turn is given, both preparations queued
    t0 = time.perf_counter()
    turns.close()  # as an error in the first dataset's runs would
    assert time.perf_counter() - t0 < 20, "closing waited for the preparation"
    assert not multiprocessing.active_children()


def _any_model(prep):
    from models.config import ModelConfig
    from models.towers import TwoTowerModel

    model = TwoTowerModel(ModelConfig(trigram_buckets=256, word_buckets=128, bigram_buckets=128,
                                      context_buckets=256, embedding_dim=8, hidden_dims=(8,), output_dim=8))
    model.fit_inputs(prep.parts["train"], prep.corpus)
    return model


def test_validation_period_data_never_reaches_the_features_of_the_validation_index():
    """Validation ranks documents with features computed without the validation period's sessions and
    memberships (the test index never sees the test ones): 30 RSVPs to a young event and every validation
    click pointed at it leave the validation index unchanged, though the training corpus's snapshot of the
    event counts them."""
    import pandas as pd

    from bench.common import prepare
    from examples.splits import split_cutoff
    from ingest.synthetic import WorldConfig, generate_world

    data = generate_world(WorldConfig.preset("tiny"))
    prep = prepare("synthetic", data, max_snapshots=4)
    cut = split_cutoff(prep.parts, "valid")
    valid = prep.parts["valid"]
    born_later = data.documents[pd.to_datetime(data.documents["created_at"], utc=True) > cut]
    target = str(born_later.sort_values("created_at")["doc_id"].iloc[0])
    in_valid = data.sessions["session_id"].isin(set(valid["session_id"]))
    assert in_valid.sum() > 10
    sessions = data.sessions.copy()
    sessions.loc[in_valid, "clicked"] = pd.Series([[target]] * int(in_valid.sum()), index=sessions.index[in_valid])
    last_valid = pd.to_datetime(valid["ts"], utc=True).max()
    rsvps = pd.DataFrame({"searcher_id": data.searchers["searcher_id"].iloc[:30].to_numpy(), "doc_id": target,
                          "created_at": last_valid - pd.Timedelta(minutes=1)})
    memberships = pd.concat([data.memberships, rsvps], ignore_index=True)
    moved = prepare("synthetic", dataclasses.replace(data, sessions=sessions, memberships=memberships),
                    max_snapshots=4)

    def row(frame):
        return frame.set_index("doc_id").loc[target]

    assert row(moved.corpus)["member_count"] > row(prep.corpus)["member_count"] + 20  # shared snapshots count them
    pd.testing.assert_frame_equal(moved.valid_index, prep.valid_index)  # the validation index does not


def test_without_a_validation_split_the_seed_ensemble_is_judged_on_a_slice_then_retrained_on_everything(
        tiny, tmp_path, monkeypatch):
    """SciFact's path: the setting is chosen over folds of the training sessions, the members are judged on
    the baselines' slice (fold 0), and the ensemble served is made of members retrained on the whole
    training split."""
    import time

    import bench.parallel_training as parallel_training
    import bench.retrieval_quality as quality
    from bench.baselines import Baselines
    from bench.retrieval_quality import MODEL_GRID, base_config, fit_model, fit_seed_ensemble

    prep = dataclasses.replace(tiny, parts={**tiny.parts, "valid": tiny.parts["valid"].iloc[:0]}, valid_index=None)
    suite = Baselines(prep, 300, dense=False)
    args = argparse.Namespace(epochs=1, threads=1, no_progress=True)
    monkeypatch.setattr(quality, "MIN_STEPS", 1)  # one epoch per run: 2 settings x 5 folds + 3 more runs
    spans, timed = {}, parallel_training._timed

    def timed_run(run):  # when each run trained
        t0 = time.perf_counter()
        try:
            return timed(run)
        finally:
            spans[run.out.relative_to(tmp_path).as_posix()] = (t0, time.perf_counter())

    monkeypatch.setattr(parallel_training, "_timed", timed_run)
    fitted = fit_model(prep, suite, base_config(args, len(prep.parts["train"])), MODEL_GRID, tmp_path / "grid")
    assert list(fitted.fold_means) == ["0.05", "0.1"]  # each temperature's mean over the folds
    assert fitted.config.loss.temperature == float(max(fitted.fold_means, key=fitted.fold_means.get))
    # the slice's verdict, fixed to "kept" (the single run scores 0.1, the concatenation 0.2) so that the
    # retraining below always runs: the tiny world's own verdict could go either way
    verdicts = iter([0.1, 0.2])
    monkeypatch.setattr(quality, "evaluate_ranker", lambda *a, **kw: {"recall@10": next(verdicts)})
    ensemble, choice = fit_seed_ensemble(prep, suite, fitted, 2, tmp_path / "seeds")
    # the member judged on the slice trained while the final run did, not after it
    assert spans["seeds/1"][0] < spans["grid/final"][1], spans
    assert fitted.validated is not fitted.result  # chosen on the folds, retrained on everything
    assert choice["chosen"] == "yes"
    assert choice["members"] == "2 seeds" and " vs " in choice["validation R@10"]
    assert (ensemble is None) == (choice["chosen"] == "no")  # rejected on the slice: not retrained
    first, second = ensemble.members
    assert first is fitted.result.model
    vocab = {m: m.fitted.vocabularies["doc"] for m in (first, second, fitted.validated.model)}
    assert vocab[second].equals(vocab[first])  # the same whole training split
    assert not vocab[second].equals(vocab[fitted.validated.model])  # not the slice
    q = prep.parts["test"].head(5)
    assert not np.allclose(first.embed_queries(q), second.embed_queries(q))  # another seed, another model
    verdicts = iter([0.2, 0.1])  # rejected on the slice: nothing is retrained on the whole split
    ensemble, choice = fit_seed_ensemble(prep, suite, fitted, 2, tmp_path / "rejected")
    assert ensemble is None and choice["chosen"] == "no"
