"""The canonical data contract: each kind of break is refused with a message naming table, column, row."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from ingest import contract
from ingest.contract import ContractError, empty_table, read_dataset, validate_dataset, write_dataset

T0 = pd.Timestamp("2026-01-01", tz="UTC")


def small_tables() -> dict[str, pd.DataFrame]:
    return {
        "searchers": pd.DataFrame(
            {
                "searcher_id": ["s1", "s2"],
                "city": ["Boston", None],
                "region": ["Massachusetts", None],
                "country": ["US", None],
                "language": ["en", "en"],
                "created_at": [T0, T0],
            }
        ),
        "documents": pd.DataFrame(
            {
                "doc_id": ["d1", "d2", "d3"],
                "doc_type": ["group", "event", "person"],
                "title": ["Runners Club", "Night Run", "John Smith"],
                "body": ["", "weekly", None],
                "city": ["Boston", "Boston", ""],
                "region": ["Massachusetts", "Massachusetts", ""],
                "country": ["US", "US", ""],
                "created_at": [T0, T0, T0],
                "last_active_at": [T0, None, T0],
            }
        ),
        "friendships": pd.DataFrame(
            {"searcher_id": ["s1", "s2"], "friend_id": ["s2", "s1"], "created_at": [T0, T0]}
        ),
        "memberships": pd.DataFrame({"searcher_id": ["s1"], "doc_id": ["d1"], "created_at": [T0]}),
        "sessions": pd.DataFrame(
            {
                "session_id": ["q1", "q2"],
                "searcher_id": ["s1", "s2"],
                "ts": [T0 + pd.Timedelta(hours=1), T0 + pd.Timedelta(hours=2)],
                "query": ["runners club", ""],
                "impressed": [["d1", "d2"], ["d3"]],
                "clicked": [["d1"], []],
            }
        ),
    }


def test_roundtrip_keeps_types_and_values(tmp_path: Path) -> None:
    manifest = write_dataset(small_tables(), tmp_path / "ds", source="unit", params={"k": 1})
    assert manifest.row_counts == {
        "searchers": 2, "documents": 3, "friendships": 2, "memberships": 1, "sessions": 2
    }
    ds = read_dataset(tmp_path / "ds")
    assert ds.manifest.source == "unit" and ds.manifest.params == {"k": 1}
    assert str(ds.sessions["ts"].dtype).endswith("UTC]")
    assert ds.sessions["impressed"].tolist() == [["d1", "d2"], ["d3"]]
    assert ds.sessions["clicked"].tolist() == [["d1"], []]
    assert ds.searchers["city"].tolist()[1] is None
    assert ds.qrels is None


def test_optional_list_columns_read_back_as_lists(tmp_path: Path) -> None:
    tables = small_tables()
    tables["documents"] = tables["documents"].assign(tags=[["running"], [], None])
    write_dataset(tables, tmp_path / "ds")
    tags = read_dataset(tmp_path / "ds").documents["tags"].tolist()
    assert tags == [["running"], [], []] and all(type(t) is list for t in tags)


@pytest.mark.parametrize(
    "table, breaker, column, words",
    [
        ("sessions", lambda df: df.drop(columns=["query"]), "query", "missing column"),
        ("documents", lambda df: df.assign(created_at=["yesterday", "x", "y"]), "created_at", "not timestamp"),
        ("searchers", lambda df: df.assign(searcher_id=["s1", None]), "searcher_id", "null value"),
        ("documents", lambda df: df.assign(doc_id=["d1", "d1", "d3"]), "doc_id", "duplicated key"),
        ("sessions", lambda df: df.assign(clicked=[["d9"], []]), "clicked", "not in documents"),
        ("sessions", lambda df: df.assign(searcher_id=["s1", "s7"]), "searcher_id", "not in searchers"),
        ("memberships", lambda df: df.assign(doc_id=["zz"]), "doc_id", "not in documents"),
        ("sessions", lambda df: df.assign(ts=df["ts"].dt.tz_localize(None)), "ts", "timezone-aware"),
        ("searchers", lambda df: df.assign(searcher_id=["s1", ""]), "searcher_id", "empty id"),
        ("documents", lambda df: df.assign(title=["x" * 5_000_000, "b", "c"]), "title", "longer than 1,000"),
        ("documents", lambda df: df.assign(body=["b", "x" * 100_001, "c"]), "body", "longer than 100,000"),
        ("sessions", lambda df: df.assign(query=["q" * 1_000_001, ""]), "query", "EBR_MAX_QUERY_CHARS"),
    ],
)
def test_breaks_name_table_column_and_row(table, breaker, column, words) -> None:
    tables = small_tables()
    tables[table] = breaker(tables[table])
    with pytest.raises(ContractError) as err:
        validate_dataset(tables)
    assert err.value.table == table
    assert column in (err.value.column or "")
    assert words in str(err.value)
    if words not in ("missing column", "timezone-aware"):
        assert "example row" in str(err.value)


def test_text_bounds_are_settings_and_the_message_cuts_the_text(monkeypatch) -> None:
    tables = small_tables()
    tables["documents"] = tables["documents"].assign(title=["t" * 5_000, "b", "c"])
    with pytest.raises(ContractError) as err:
        validate_dataset(tables)
    assert len(str(err.value)) < 1_000 and "(5,000 characters)" in str(err.value)
    monkeypatch.setenv("EBR_MAX_TITLE_CHARS", "10000")
    validate_dataset(tables)


@pytest.mark.parametrize("column, value, target", [("doc_id", "d404", "documents"),
                                                    ("session_id", "q404", "sessions")])
def test_relevance_labels_name_sessions_and_documents_that_exist(column, value, target) -> None:
    tables = small_tables()
    tables["qrels"] = pd.DataFrame({"session_id": ["q1", "q2"], "doc_id": ["d1", "d3"], "relevance": [1, 2]})
    validate_dataset(tables)
    tables["qrels"].loc[1, column] = value
    with pytest.raises(ContractError, match=f"not in {target}") as err:
        validate_dataset(tables)
    assert (err.value.table, err.value.column) == ("qrels", column) and value in str(err.value)


def test_missing_required_table_is_named() -> None:
    tables = small_tables()
    del tables["friendships"]
    with pytest.raises(ContractError, match="friendships: required table missing"):
        validate_dataset(tables)


def test_empty_tables_are_valid(tmp_path: Path) -> None:
    tables = small_tables()
    tables["friendships"] = empty_table("friendships")
    write_dataset(tables, tmp_path / "ds")
    assert len(read_dataset(tmp_path / "ds").friendships) == 0


def test_crash_mid_write_leaves_previous_dataset_intact(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "ds"
    write_dataset(small_tables(), target, source="v1")
    calls = {"n": 0}
    real = pq.write_table

    def crash_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full (injected)")
        return real(*args, **kwargs)

    monkeypatch.setattr(contract.pq, "write_table", crash_on_third)
    tables = small_tables()
    tables["documents"] = tables["documents"].assign(title="changed")
    with pytest.raises(OSError, match="injected"):
        write_dataset(tables, target, source="v2")
    ds = read_dataset(target)
    assert ds.manifest.source == "v1"
    assert ds.documents["title"].tolist() == ["Runners Club", "Night Run", "John Smith"]
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no temporary leftovers


def test_invalid_dataset_never_reaches_disk(tmp_path: Path) -> None:
    tables = small_tables()
    tables["sessions"] = tables["sessions"].assign(clicked=[["nope"], []])
    with pytest.raises(ContractError):
        write_dataset(tables, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_reading_a_non_dataset_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ebr generate"):
        read_dataset(tmp_path)
