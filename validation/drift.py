"""Drift against the previous accepted run: the checks no single-table rule can make.

A table can satisfy every expectation of its schema and still be wrong: every searcher moved to one city,
queries scrambled, a feed that lost half its rows. The gate therefore keeps a small profile of each table
in its report (per column: share of nulls, share of the most common value, the most common values and the
share of rows they cover; for a vocabulary column such as a city, its number of distinct values; for text: mean
length in words; rows per day of the time column) and the next run compares its profile with the previous
accepted one, within the bounds of :class:`DriftBounds`.

Row counts are compared as rows per day of the table's own time span, so that a backfill over a short range
and the nightly over the whole history meet the same bound (a raw count differs by the ratio of the ranges).
An operator who knows a change is real accepts it (``accept_changes``): the report then lists the
differences as accepted instead of failing.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

# The columns profiled per table: categorical columns, and text columns (length in words).
PROFILED = {
    "searchers": {"categorical": ("city", "region", "country", "language"), "text": ()},
    "documents": {"categorical": ("doc_type", "city", "country"), "text": ("title",)},
    "sessions": {"categorical": ("searcher_id", "query"), "text": ("query",)},
    "examples": {"categorical": ("searcher_id", "doc_id"), "text": ("query",)},
}
# Columns whose values come from a vocabulary that does not grow with the table (unlike ids or queries): their
# number of distinct values is compared too (a city column turned free text, or collapsed to a few values).
VOCABULARY = {"searchers": ("city", "region", "country", "language"), "documents": ("doc_type", "city", "country")}
TOP_VALUES = 50  # most common values kept per column (their coverage is compared, whatever the table's size)
MIN_COVERAGE = 0.2  # the coverage check applies where the top values cover at least this share of rows
TIME_COLUMN = {"searchers": "created_at", "documents": "created_at", "sessions": "ts", "examples": "ts",
               "memberships": "created_at", "friendships": "created_at"}


class DriftBounds(BaseModel):
    """How far a table may move from the previous accepted run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    top_share_increase: float = Field(
        0.25, ge=0, le=1, description="largest rise of the most common value's share (e.g. everyone in one city)")
    null_share_increase: float = Field(0.2, ge=0, le=1, description="largest rise of a column's share of nulls")
    top_values_coverage_ratio: float = Field(
        2.0, ge=1, description="largest factor by which the share of rows holding one of the previous run's "
                               "most common values may fall (e.g. scrambled queries, renamed ids)")
    text_length_ratio: float = Field(1.5, ge=1, description="largest factor of change of mean text length")
    distinct_ratio: float = Field(
        2.0, ge=1, description="largest factor of change of the number of distinct values of a vocabulary column "
                               "(cities, countries, languages, document types)")


def time_span_days(df: pd.DataFrame, table: str) -> float | None:
    """Days covered by the table's time column (at least 1), None without one."""
    col = TIME_COLUMN.get(table)
    if col is None or col not in df.columns or not len(df):
        return None
    ts = pd.to_datetime(df[col], utc=True, errors="coerce").dropna()
    if ts.empty:
        return None
    return max(1.0, float((ts.max() - ts.min()) / pd.Timedelta(days=1)))


def profile(df: pd.DataFrame, table: str) -> dict[str, dict[str, float | list[str]]]:
    """Per profiled column: null share, top-value share and the share of the top values (of non-null
    values); text: mean words. Columns absent from ``df`` are skipped."""
    spec = PROFILED.get(table, {"categorical": (), "text": ()})
    out: dict[str, dict[str, float | list[str]]] = {}
    n = len(df)
    for col in spec["categorical"]:
        if col not in df.columns or not n:
            continue
        s = df[col]
        s = s.where(s.astype(str) != "", None) if s.dtype == object else s
        present = s.dropna()
        counts = present.astype(str).value_counts()
        top = counts.iloc[:TOP_VALUES]
        out[col] = {
            "null_share": round(1 - len(present) / n, 6),
            "top_share": round(float(counts.iloc[0]) / len(present), 6) if len(present) else 0.0,
            "top_values": [str(v) for v in top.index],
            "top_values_share": round(float(top.sum()) / len(present), 6) if len(present) else 0.0,
        }
        if col in VOCABULARY.get(table, ()):
            out[col]["distinct"] = int(len(counts))
    for col in spec["text"]:
        if col not in df.columns or not n:
            continue
        words = df[col].dropna().astype(str).str.split().str.len()
        out.setdefault(col, {})["mean_words"] = round(float(words.mean()), 4) if len(words) else 0.0
    return out


def coverage(df: pd.DataFrame, column: str, values: list[str]) -> float:
    """Share of the non-null rows of ``column`` holding one of ``values``."""
    present = df[column].dropna().astype(str)
    present = present[present != ""]
    return float(present.isin(values).mean()) if len(present) else 0.0


def drift(previous: dict[str, dict[str, Any]], current: dict[str, dict[str, Any]],
          bounds: DriftBounds) -> list[dict[str, Any]]:
    """Each profile figure that moved beyond ``bounds``: {column, measure, previous, current, bound}.
    ``current`` carries, per column, ``previous_values_share``: the share of its rows holding one of the
    previous run's top values (see :func:`coverage`)."""
    out = []
    for col, cur in current.items():
        prev = previous.get(col)
        if not prev:
            continue

        def add(measure: str, bound: str) -> None:
            out.append({"column": col, "measure": measure, "previous": prev[measure], "current": cur[measure],
                        "bound": bound})

        if "top_share" in cur and "top_share" in prev and cur["top_share"] - prev["top_share"] > bounds.top_share_increase:
            add("top_share", f"rise <= {bounds.top_share_increase}")
        if "null_share" in cur and "null_share" in prev and cur["null_share"] - prev["null_share"] > bounds.null_share_increase:
            add("null_share", f"rise <= {bounds.null_share_increase}")
        a, b = prev.get("top_values_share"), cur.get("previous_values_share")
        # only where the top values describe the column (not ids: a week's most active searchers differ
        # from a year's, and they cover a sliver of the rows either way)
        if a and a >= MIN_COVERAGE and b is not None and b < a / bounds.top_values_coverage_ratio:
            out.append({"column": col, "measure": "rows holding the previous run's top values", "previous": a,
                        "current": b, "bound": f">= x{1 / bounds.top_values_coverage_ratio:.2f}"})
        a, b = prev.get("distinct"), cur.get("distinct")
        if a and b is not None and not (1 / bounds.distinct_ratio <= b / a <= bounds.distinct_ratio):
            add("distinct", f"x{1 / bounds.distinct_ratio:.2f} .. x{bounds.distinct_ratio:.2f}")
        a, b = prev.get("mean_words"), cur.get("mean_words")
        if a and b and not (1 / bounds.text_length_ratio <= b / a <= bounds.text_length_ratio):
            add("mean_words", f"x{1 / bounds.text_length_ratio:.2f} .. x{bounds.text_length_ratio:.2f}")
    return out


def describe(change: dict[str, Any]) -> str:
    return (f"{change['column']} {change['measure']} {change['previous']:.4g} -> {change['current']:.4g} "
            f"(allowed {change['bound']})")


__all__ = ["DriftBounds", "PROFILED", "TIME_COLUMN", "VOCABULARY", "coverage", "describe", "drift", "profile", "time_span_days"]
