"""The data gate catches each kind of corruption with a message that names it; clean frames pass."""

from __future__ import annotations

import pandas as pd
import pytest

from examples.build import ExampleConfig, build_examples
from ingest.contract import SCHEMAS, validate_table
from validation.gate import GateFailed, GateReport, enforce, latest_report, run_gate
from validation.suites import GateConfig, examples_suite, input_suite


def T(s: str) -> pd.Timestamp:
    return pd.Timestamp(s, tz="UTC")


@pytest.fixture(scope="module")
def tables() -> dict[str, pd.DataFrame]:
    searchers = pd.DataFrame(
        {
            "searcher_id": ["u1", "u2", "u3"],
            "city": ["Paris", "Lyon", None],
            "region": ["IDF", "ARA", None],
            "country": ["FR", "FR", None],
            "language": ["fr", "fr", "en"],
            "created_at": [T("2023-01-01"), T("2023-02-01"), T("2023-03-01")],
            "lat": [48.85, 45.76, None],
        }
    )
    documents = pd.DataFrame(
        {
            "doc_id": [f"d{i}" for i in range(1, 7)],
            "doc_type": ["group"] * 6,
            "title": [f"title {i}" for i in range(1, 7)],
            "body": [""] * 6,
            "city": ["Paris"] * 6,
            "region": ["IDF"] * 6,
            "country": ["FR"] * 6,
            "created_at": [T("2023-01-01")] * 6,
            "last_active_at": [T("2023-06-01")] * 6,
        }
    )
    sessions = pd.DataFrame(
        {
            "session_id": ["s1", "s2", "s3", "s4"],
            "searcher_id": ["u1", "u1", "u2", "u3"],
            "ts": [T("2024-01-01 10:00"), T("2024-01-01 10:10"), T("2024-01-02"), T("2024-01-03")],
            "query": ["pizza", "pizza near me", "", "jazz"],
            "impressed": [["d1", "d2"], ["d3", "d4"], ["d1", "d5"], ["d2", "d3"]],
            "clicked": [[], ["d3"], ["d1"], ["d3", "d2"]],
        }
    )
    return {
        "searchers": validate_table(searchers, SCHEMAS["searchers"]),
        "documents": validate_table(documents, SCHEMAS["documents"]),
        "sessions": validate_table(sessions, SCHEMAS["sessions"]),
    }


@pytest.fixture(scope="module")
def examples(tables) -> pd.DataFrame:
    ex = build_examples(tables["sessions"], tables["documents"], ExampleConfig(random_negatives=2))
    n = len(ex)
    return ex.assign(
        searcher_feature_ts=ex["ts"] - pd.Timedelta(days=1),
        doc_feature_ts=ex["ts"] - pd.Timedelta(hours=1),
        searcher_friend_count=[3] * n,
        searcher_clusters=[["c1", "c2"]] * n,
        searcher_clusters_weights=[[0.25, 0.75]] * n,
        doc_member_cities=[["Paris"]] * n,
        doc_member_cities_weights=[[1.0]] * n,
    )


def gate(table: str, df: pd.DataFrame, config: GateConfig | None = None, previous=None) -> GateReport:
    suite = examples_suite(df.columns, config) if table == "examples" else input_suite(table, df.columns, config)
    return run_gate(table, df, suite, previous)


def only_failure(report: GateReport, expectation: str, column: str | None):
    assert not report.passed
    hits = [f for f in report.failures if f.expectation == expectation and f.column == column]
    assert hits, f"expected {expectation} on {column}; got {report.failures}"
    return hits[0]


@pytest.mark.parametrize("table", ["searchers", "documents", "sessions", "examples"])
def test_clean_frames_pass(tables, examples, table):
    df = examples if table == "examples" else tables[table]
    report = gate(table, df)
    assert report.passed, report.to_markdown()
    assert report.failures == [] and report.row_count == len(df) and report.evaluated > 5
    assert enforce(report) is report


def test_nulls_are_caught(tables):
    df = tables["searchers"].copy()
    df.loc[1, "searcher_id"] = None
    report = gate("searchers", df)
    f = only_failure(report, "expect_column_values_to_not_be_null", "searcher_id")
    assert f.unexpected_count == 1
    assert "no nulls in searchers.searcher_id" in report.to_markdown()


def test_duplicated_ids_are_caught(tables):
    df = pd.concat([tables["documents"], tables["documents"].iloc[[2]]], ignore_index=True)
    report = gate("documents", df)
    f = only_failure(report, "expect_column_values_to_be_unique", "doc_id")
    assert f.unexpected_count == 2 and f.examples == ["d3", "d3"]


def test_out_of_range_values_are_caught(tables, examples):
    df = tables["searchers"].copy()
    df.loc[0, "lat"] = 200.0
    f = only_failure(gate("searchers", df), "expect_column_values_to_be_between", "lat")
    assert f.unexpected_count == 1 and f.examples == ["200.0"]

    bad = examples.copy()
    bad.at[0, "searcher_clusters_weights"] = [1.5, -0.5]
    report = gate("examples", bad)
    f = only_failure(report, "expect_column_values_to_be_between", "searcher_clusters_weights__min")
    assert f.unexpected_count == 1
    only_failure(report, "expect_column_values_to_be_between", "searcher_clusters_weights__max")


def test_click_rate_bounds(tables):
    never = tables["sessions"].assign(clicked=[[] for _ in range(len(tables["sessions"]))])
    f = only_failure(gate("sessions", never), "expect_column_mean_to_be_between", "_has_click")
    assert "observed 0.0" in f.detail
    # 3 of the 4 sessions clicked: 0.75 is above a 0.5 ceiling
    f = only_failure(
        gate("sessions", tables["sessions"], GateConfig(max_click_rate=0.5)),
        "expect_column_mean_to_be_between", "_has_click",
    )
    assert "observed 0.75" in f.detail


def test_missing_column_is_caught_once(tables):
    report = gate("sessions", tables["sessions"].drop(columns=["query"]))
    only_failure(report, "expect_column_to_exist", "query")
    assert [f.column for f in report.failures] == ["query"]  # no follow-up errors for the same column


def test_empty_input_always_fails(tables, examples):
    for table, df in (("documents", tables["documents"]), ("examples", examples)):
        report = gate(table, df.iloc[:0])
        f = only_failure(report, "expect_table_row_count_to_be_between", None)
        assert "empty input" in f.detail and report.row_count == 0
    # even with the row-count tolerance switched off
    report = gate("documents", tables["documents"].iloc[:0], GateConfig(row_count_tolerance=None))
    only_failure(report, "expect_table_row_count_to_be_between", None)


def test_feature_timestamp_after_event_is_caught(examples):
    shifted = examples.copy()
    shifted.loc[[1, 2], "doc_feature_ts"] = shifted.loc[[1, 2], "ts"] + pd.Timedelta(seconds=1)
    report = gate("examples", shifted)
    f = only_failure(report, "expect_column_pair_values_a_to_be_greater_than_b", "ts,doc_feature_ts")
    assert f.unexpected_count == 2
    assert "not after the example time" in f.detail
    assert len(report.failures) == 1
    # equal times are allowed (a feature written at the session's instant is not from the future)
    same = examples.assign(doc_feature_ts=examples["ts"])
    assert gate("examples", same).passed


def test_missing_features_are_caught(examples):
    none = examples.assign(doc_feature_ts=pd.Series(pd.NaT, index=examples.index, dtype="datetime64[ns, UTC]"))
    f = only_failure(gate("examples", none), "expect_column_values_to_not_be_null", "doc_feature_ts")
    assert f.unexpected_count == len(examples) and "found a snapshot" in f.detail
    assert gate("examples", none, GateConfig(min_feature_coverage=0)).passed


def test_naive_timestamps_are_caught(tables):
    df = tables["sessions"].assign(ts=tables["sessions"]["ts"].dt.tz_localize(None))
    only_failure(gate("sessions", df), "expect_column_values_to_be_of_type", "ts")


def test_row_count_against_previous_run(tables):
    df = tables["documents"]
    previous = GateReport(name="documents", passed=True, row_count=20)
    report = gate("documents", df, previous=previous)  # 6 rows < 20 * 0.5
    f = only_failure(report, "expect_table_row_count_to_be_between", None)
    assert report.row_bounds == (10, 30) and "observed 6" in f.detail
    assert gate("documents", df, previous=GateReport(name="documents", passed=True, row_count=8)).passed
    assert gate("documents", df, GateConfig(row_count_tolerance=None), previous=previous).passed


def test_enforce_raises_with_markdown_and_reports_round_trip(tables, tmp_path):
    df = tables["searchers"].copy()
    df.loc[0, "searcher_id"] = None
    report = gate("searchers", df)
    with pytest.raises(GateFailed) as err:
        enforce(report)
    assert str(err.value) == report.to_markdown()
    assert "FAILED" in str(err.value) and "searcher_id" in str(err.value)
    assert err.value.report is report

    json_path, md_path = report.save(tmp_path / "run-1" / "gates")
    assert GateReport.load(json_path) == report
    assert md_path.read_text() == report.to_markdown()
    good = gate("searchers", tables["searchers"])
    good.save(tmp_path / "run-0" / "gates")
    # the newest passing report is the baseline; a failed run does not move it
    assert latest_report(tmp_path, "searchers") == good
    assert latest_report(tmp_path, "searchers", passed_only=False) == report
    assert latest_report(tmp_path / "nowhere", "searchers") is None


def test_a_feature_missing_in_most_examples_is_named(examples):
    """Training that sees a feature missing while serving always has it is skew: the gate names the feature."""
    bad = examples.copy()
    bad["searcher_friend_count"] = [None] * (len(bad) - 1) + [3]
    f = only_failure(gate("examples", bad), "expect_column_values_to_not_be_null", "searcher_friend_count")
    assert f.unexpected_count == len(bad) - 1
    assert gate("examples", bad, GateConfig(min_feature_coverage=0.0)).passed


# --------------------------------------------------------------------------- references and drift


def refs(tables):
    return {"searcher_id": pd.Index(tables["searchers"]["searcher_id"]),
            "doc_id": pd.Index(tables["documents"]["doc_id"])}


def test_a_click_on_a_missing_document_or_an_unknown_searcher_fails_the_gate(tables):
    df = tables["sessions"].copy()
    assert run_gate("sessions", df, input_suite("sessions", df.columns, None, refs(tables))).passed
    df.at[1, "clicked"] = ["d3", "d404"]  # passed the gate before: a click on a document that does not exist
    df.loc[2, "searcher_id"] = "ghost"
    report = run_gate("sessions", df, input_suite("sessions", df.columns, None, refs(tables)))
    docs = only_failure(report, "expect_column_values_to_be_in_set", "_unknown_doc_ids")
    assert docs.unexpected_count == 1 and docs.examples == ["d404"] and "referential integrity" in docs.detail
    who = only_failure(report, "expect_column_values_to_be_in_set", "_unknown_searcher")
    assert who.examples == ["ghost"]


def test_drift_against_the_previous_run_fails_unless_accepted(tables):
    df = pd.concat([tables["searchers"]] * 10, ignore_index=True)
    df["searcher_id"] = [f"u{i}" for i in range(len(df))]
    df["city"] = [f"c{i % 10}" for i in range(len(df))]
    first = gate("searchers", df)
    assert first.passed and first.profile["city"]["top_share"] == pytest.approx(0.1)
    moved = df.assign(city="Paris")  # every searcher moved to one city: each row is still valid
    report = gate("searchers", moved, previous=first)
    f = only_failure(report, "drift_against_previous_run", "city")
    assert "top_share 0.1 -> 1" in f.detail and "accept_changes" in f.detail
    accepted = gate("searchers", moved, GateConfig(accept_changes=True), previous=first)
    assert accepted.passed and any("city top_share" in a for a in accepted.accepted)
    assert "Accepted by the operator" in accepted.to_markdown()
    # the city column half turned free text (a source changed its export): no city dominates and most rows
    # still hold the old values, but ten cities became 24 values
    variants = df.assign(city=[c if i < 16 else f"{c} (zone {i})" for i, c in enumerate(df["city"])])
    report = gate("searchers", variants, previous=first)
    assert first.profile["city"]["distinct"] == 10
    assert "city distinct 10 -> 24" in only_failure(report, "drift_against_previous_run", "city").detail
    grown = df.assign(city=[f"c{i % 12}" for i in range(len(df))])  # two new cities: within bounds
    assert gate("searchers", grown, previous=first).passed
    blank = df.assign(city=[None if i % 2 else c for i, c in enumerate(df["city"])])  # half lost their city
    assert "city null_share 0 -> 0.5" in only_failure(gate("searchers", blank, previous=first),
                                                       "drift_against_previous_run", "city").detail

    sessions = pd.concat([tables["sessions"]] * 5, ignore_index=True).assign(
        session_id=[f"s{i}" for i in range(20)])
    base = gate("sessions", sessions)
    scrambled = sessions.assign(query=[f"q{i} x{i} y{i} z{i} w{i}" for i in range(20)])  # every query new, longer
    report = gate("sessions", scrambled, previous=base)
    assert {f.column for f in report.failures if f.expectation == "drift_against_previous_run"} == {"query"}


def test_row_counts_compare_rows_per_day_so_a_backfill_does_not_break_the_nightly(tables):
    one_week = pd.DataFrame({
        "session_id": [f"s{i}" for i in range(70)], "searcher_id": ["u1"] * 70,
        "ts": [T("2024-01-01") + pd.Timedelta(hours=2.4 * i) for i in range(70)],  # 10 a day for a week
        "query": ["pizza"] * 70, "impressed": [["d1"]] * 70, "clicked": [["d1"]] * 70,
    })
    backfill = gate("sessions", validate_table(one_week, SCHEMAS["sessions"]))
    assert backfill.passed and backfill.days == pytest.approx(6.9, abs=0.01)
    four_weeks = pd.concat([one_week.assign(ts=one_week["ts"] + pd.Timedelta(days=7 * w),
                                            session_id=one_week["session_id"] + f"-{w}") for w in range(4)],
                           ignore_index=True)
    nightly = gate("sessions", validate_table(four_weeks, SCHEMAS["sessions"]), previous=backfill)
    assert nightly.passed  # 4x the rows over 4x the days: the same rate (a raw count would be +300%)
    lost = four_weeks.iloc[::4]  # the same span with a quarter of the rows
    report = gate("sessions", validate_table(lost.reset_index(drop=True), SCHEMAS["sessions"]), previous=nightly)
    only_failure(report, "expect_table_row_count_to_be_between", None)
    assert gate("sessions", validate_table(lost.reset_index(drop=True), SCHEMAS["sessions"]),
                GateConfig(accept_changes=True), previous=nightly).passed


def test_memberships_and_friendships_are_gated_on_the_ids_they_name(tables):
    """Every id column is checked against the table it refers to: a membership of a missing document and a
    friendship with an unknown searcher fail, named; a source without a social graph (empty tables) passes,
    and a previous run that had rows bounds the next one."""
    from ingest.contract import empty_table

    memberships = validate_table(pd.DataFrame({
        "searcher_id": ["u1", "u2", "u3"], "doc_id": ["d1", "d2", "d3"],
        "created_at": [T("2023-05-01"), T("2023-05-02"), T("2023-05-03")]}), SCHEMAS["memberships"])
    friendships = validate_table(pd.DataFrame({
        "searcher_id": ["u1", "u2"], "friend_id": ["u2", "u1"],
        "created_at": [T("2023-05-01"), T("2023-05-01")]}), SCHEMAS["friendships"])
    for name, df in (("memberships", memberships), ("friendships", friendships)):
        assert run_gate(name, df, input_suite(name, df.columns, None, refs(tables))).passed, name
    bad = memberships.copy()
    bad.loc[1, "doc_id"] = "d404"
    bad.loc[2, "searcher_id"] = "ghost"
    report = run_gate("memberships", bad, input_suite("memberships", bad.columns, None, refs(tables)))
    assert only_failure(report, "expect_column_values_to_be_in_set", "_unknown_doc_id").examples == ["d404"]
    who = only_failure(report, "expect_column_values_to_be_in_set", "_unknown_searcher_id")
    assert who.examples == ["ghost"] and "memberships.searcher_id is in the searchers table" in who.detail
    stranger = friendships.copy()
    stranger.loc[1, "friend_id"] = "u404"
    report = run_gate("friendships", stranger, input_suite("friendships", stranger.columns, None, refs(tables)))
    assert only_failure(report, "expect_column_values_to_be_in_set", "_unknown_friend_id").examples == ["u404"]

    none = empty_table("friendships")
    first = run_gate("friendships", none, input_suite("friendships", none.columns, None, refs(tables)))
    assert first.passed  # a source without friendships
    previous = run_gate("friendships", friendships, input_suite("friendships", friendships.columns, None, refs(tables)))
    gone = run_gate("friendships", none, input_suite("friendships", none.columns, None, refs(tables)), previous)
    assert only_failure(gone, "expect_table_row_count_to_be_between", None)  # the graph vanished since
