"""The expectation suites: what the canonical inputs and the joined training examples must satisfy.

Input suites are derived from the canonical contract (ingest/contract.py), so a new column there is checked
here without a second list to maintain: presence, types, nulls, unique keys, timestamp ranges. On top come
the rules the contract cannot state: value ranges, the share of sessions with a click, and for examples the
point-in-time rule (no feature row newer than the example) and weights of multi-valued features in [0, 1].
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from examples.build import EXTRA_COLUMNS, FEATURE_TS_COLUMNS
from features.schema import DOC_NUMERIC, EXAMPLE_KEYS, SEARCHER_NUMERIC, SPLITS, doc_column, searcher_column
from ingest.contract import SCHEMAS, Column, TableSchema
from validation.drift import DriftBounds
from validation.gate import GateSuite

HAS_CLICK = "_has_click"  # derived: 1.0 when a session has at least one click
UNKNOWN_SEARCHER = "_unknown_searcher"  # derived: the session's searcher_id when it is not a searcher, else ""
UNKNOWN_DOCS = "_unknown_doc_ids"  # derived: impressed or clicked doc_ids that are not documents, else ""
_GATED_TABLES = ("searchers", "documents", "sessions", "memberships", "friendships")
# Scalar id columns of the relation tables and the table they refer to (the sessions' ids: above).
ID_REFERENCES = {
    "memberships": {"searcher_id": "searcher_id", "doc_id": "doc_id"},
    "friendships": {"searcher_id": "searcher_id", "friend_id": "searcher_id"},
}
OPTIONAL_TABLES = ("memberships", "friendships")  # a source may have none (no social graph, no joins)
_RANGES = {"lat": (-90.0, 90.0), "lon": (-180.0, 180.0), "age": (0, 150)}
_GE_TYPES = {"string": "str", "int64": "int64", "float64": "float64", "timestamp": "Timestamp"}


def unknown_column(column: str) -> str:
    """Derived: the row's ``column`` value when it is not in the table it refers to, else ""."""
    return f"_unknown_{column}"


class GateConfig(BaseModel):
    """Bounds of the data gates."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_click_rate: float = Field(0.01, ge=0, le=1, description="lowest share of sessions with a click")
    max_click_rate: float = Field(1.0, ge=0, le=1, description="highest share of sessions with a click")
    row_count_tolerance: float | None = Field(
        0.5, ge=0, description="allowed relative change of a row count against the previous run (None: off)"
    )
    earliest: datetime = Field(
        datetime(1970, 1, 1, tzinfo=timezone.utc), description="no timestamp may be older than this"
    )
    future_slack: timedelta = Field(
        timedelta(days=1), description="timestamps may be at most this far after the time of the check"
    )
    weight_sum_tolerance: float = Field(1e-3, gt=0, description="multi-valued weights must sum to 1 +/- this")
    min_feature_coverage: float = Field(
        0.5, ge=0, le=1,
        description="least share of examples that found a feature snapshot (catches a missing materialization)",
    )
    drift: DriftBounds = Field(default_factory=DriftBounds,
                               description="bounds of the change of each table's profile against the previous run")
    accept_changes: bool = Field(
        False, description="record row-count and drift changes against the previous run instead of failing "
                           "(an operator's decision that a change is real; the report lists what was accepted)")

    @model_validator(mode="after")
    def _ordered(self) -> "GateConfig":
        if self.min_click_rate > self.max_click_rate:
            raise ValueError(
                f"min_click_rate ({self.min_click_rate}) must not exceed max_click_rate ({self.max_click_rate})"
            )
        return self


def _gx():
    import great_expectations as gx

    return gx.expectations


def _time_bounds(config: GateConfig) -> tuple[pd.Timestamp, pd.Timestamp]:
    earliest = pd.Timestamp(config.earliest)
    earliest = earliest.tz_localize("UTC") if earliest.tzinfo is None else earliest.tz_convert("UTC")
    return earliest, pd.Timestamp.now(tz="UTC") + config.future_slack


def _column_expectations(table: str, c: Column, config: GateConfig) -> list:
    E = _gx()
    out = [E.ExpectColumnToExist(column=c.name, description=f"column {table}.{c.name} is present")]
    if not c.nullable:
        out.append(E.ExpectColumnValuesToNotBeNull(column=c.name, description=f"no nulls in {table}.{c.name}"))
    if c.kind == "list_string":
        out.append(
            E.ExpectColumnValuesToBeInTypeList(
                column=c.name, type_list=["list"], description=f"{table}.{c.name} holds lists of ids"
            )
        )
    else:
        out.append(
            E.ExpectColumnValuesToBeOfType(
                column=c.name, type_=_GE_TYPES[c.kind], description=f"{table}.{c.name} is {c.kind} (UTC when a time)"
            )
        )
    if c.kind == "timestamp":
        lo, hi = _time_bounds(config)
        out.append(
            E.ExpectColumnValuesToBeBetween(
                column=c.name, min_value=lo, max_value=hi,
                description=f"{table}.{c.name} is a plausible time (not before {lo.date()}, not in the future)",
            )
        )
    if c.name in _RANGES:
        lo, hi = _RANGES[c.name]
        out.append(
            E.ExpectColumnValuesToBeBetween(
                column=c.name, min_value=lo, max_value=hi, description=f"{table}.{c.name} in range"
            )
        )
    return out


def table_expectations(schema: TableSchema, columns: Iterable[str], config: GateConfig) -> list:
    """Contract checks of one canonical table; optional columns are checked when ``columns`` has them."""
    E = _gx()
    present = set(columns)
    cols = [*schema.columns, *[c for c in schema.optional if c.name in present]]
    out = [e for c in cols for e in _column_expectations(schema.name, c, config)]
    if len(schema.key) == 1:
        out.append(
            E.ExpectColumnValuesToBeUnique(column=schema.key[0], description=f"{schema.name} ids are unique")
        )
    elif schema.key:
        out.append(
            E.ExpectCompoundColumnsToBeUnique(
                column_list=list(schema.key), description=f"{schema.name} keys {schema.key} are unique"
            )
        )
    if schema.name == "documents":
        out.append(
            E.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A="last_active_at", column_B="created_at", or_equal=True,
                ignore_row_if="either_value_is_missing",
                description="a document is not active before it was created",
            )
        )
    if schema.name == "sessions":
        out.append(
            E.ExpectColumnMeanToBeBetween(
                column=HAS_CLICK, min_value=config.min_click_rate, max_value=config.max_click_rate,
                description="share of sessions with a click within the configured bounds",
            )
        )
        if "split" in present:
            out.append(
                E.ExpectColumnValuesToBeInSet(
                    column="split", value_set=list(SPLITS), description=f"source split is one of {list(SPLITS)}"
                )
            )
    return out


def _derive_sessions(references: dict[str, pd.Index] | None):
    """Derived columns of the sessions gate: whether a session has a click, and the ids it names that the
    searchers and documents tables of the same run do not hold (referential integrity)."""
    def derive(df: pd.DataFrame) -> pd.DataFrame:
        out = {}
        if "clicked" in df.columns:
            out[HAS_CLICK] = df["clicked"].map(lambda v: float(v is not None and len(v) > 0)).astype("float64")
        if references and "searcher_id" in references and "searcher_id" in df.columns:
            known = df["searcher_id"].isin(references["searcher_id"]).to_numpy()
            out[UNKNOWN_SEARCHER] = np.where(known, "", df["searcher_id"].astype(str).to_numpy())
        if references and "doc_id" in references:
            docs = set(references["doc_id"])
            cols = [c for c in ("clicked", "impressed") if c in df.columns]
            out[UNKNOWN_DOCS] = [
                " ".join(sorted({str(d) for c in cols for d in (row[c] if row[c] is not None else ()) if d not in docs}))
                for row in df[cols].to_dict("records")
            ] if cols else ""
        return df.assign(**out)

    return derive


def _derive_references(table: str, references: dict[str, pd.Index]):
    """Derived columns of a relation table: each id that the searchers or documents of the run do not hold."""
    def derive(df: pd.DataFrame) -> pd.DataFrame:
        out = {}
        for column, kind in ID_REFERENCES[table].items():
            if column in df.columns and kind in references:
                ids = df[column].astype(str)
                known = ids.isin(references[kind]).to_numpy()
                out[unknown_column(column)] = np.where(known, "", ids.to_numpy(dtype=object))
        return df.assign(**out)

    return derive


def _relation_expectations(table: str, references: dict[str, pd.Index]) -> list:
    E = _gx()
    what = {"searcher_id": "searchers", "doc_id": "documents"}
    return [E.ExpectColumnValuesToBeInSet(
        column=unknown_column(column), value_set=[""],
        description=f"every {table}.{column} is in the {what[kind]} table (referential integrity)")
        for column, kind in ID_REFERENCES[table].items() if kind in references]


def _reference_expectations(references: dict[str, pd.Index] | None) -> list:
    E = _gx()
    out = []
    if references and "searcher_id" in references:
        out.append(E.ExpectColumnValuesToBeInSet(
            column=UNKNOWN_SEARCHER, value_set=[""],
            description="every session's searcher_id is in the searchers table (referential integrity)"))
    if references and "doc_id" in references:
        out.append(E.ExpectColumnValuesToBeInSet(
            column=UNKNOWN_DOCS, value_set=[""],
            description="every impressed and clicked doc_id is in the documents table (referential integrity)"))
    return out


def input_suite(table: str, columns: Iterable[str], config: GateConfig | None = None,
                references: dict[str, pd.Index] | None = None) -> GateSuite:
    """The gate of one canonical input table (searchers, documents, sessions, memberships or friendships).
    ``references``: the ids that the sessions', memberships' and friendships' id columns must refer to (the
    searchers and documents of the run). Memberships and friendships may be empty (a source without them);
    against a previous run that had rows, the row-count bound still applies."""
    if table not in _GATED_TABLES:
        raise ValueError(f"no input gate for table {table!r}; gated tables: {list(_GATED_TABLES)}")
    config = config or GateConfig()
    columns = list(columns)
    schema = SCHEMAS[table]
    if table in ID_REFERENCES:
        refs = references or {}
        expectations = lambda: table_expectations(schema, columns, config) + _relation_expectations(table, refs)  # noqa: E731
        derive = _derive_references(table, refs) if refs else None
    else:
        ids = references if table == "sessions" else None  # not refs: that name holds a dict above
        expectations = lambda: table_expectations(schema, columns, config) + _reference_expectations(ids)  # noqa: E731
        derive = _derive_sessions(ids) if table == "sessions" else None
    return GateSuite(
        name=table, expectations=expectations, derive=derive,
        min_rows=0 if table in OPTIONAL_TABLES else 1,
        row_count_tolerance=config.row_count_tolerance,
        table=table, drift=config.drift, accept_changes=config.accept_changes,
    )


# --------------------------------------------------------------------------- examples


def weight_columns(columns: Iterable[str]) -> list[str]:
    return [c for c in columns if c.endswith("_weights")]


def _list_stats(values: pd.Series) -> pd.DataFrame:
    """min, max and sum of each list (NaN for empty or missing lists), vectorized through explode."""
    lists = values.map(lambda v: [] if v is None or (isinstance(v, float) and np.isnan(v)) else list(v))
    flat = pd.to_numeric(lists.explode(), errors="coerce")
    grouped = flat.groupby(level=0)
    stats = pd.DataFrame({"min": grouped.min(), "max": grouped.max(), "sum": grouped.sum(min_count=1)})
    return stats.reindex(values.index)


def feature_columns(columns: Iterable[str]) -> list[str]:
    """The joined feature columns of examples (``searcher_*`` and ``doc_*``), without weights and
    snapshot times, which follow their feature."""
    keys = set(EXAMPLE_KEYS) | set(FEATURE_TS_COLUMNS)
    return [c for c in columns if c.startswith(("searcher_", "doc_")) and c not in keys
            and not c.endswith("_weights")]


def _derive_examples(df: pd.DataFrame) -> pd.DataFrame:
    extra = {}
    for col in weight_columns(df.columns):
        stats = _list_stats(df[col])
        for k in ("min", "max", "sum"):
            extra[f"{col}__{k}"] = stats[k].astype("float64")
    return df.assign(**extra) if extra else df


def examples_expectations(columns: Iterable[str], config: GateConfig) -> list:
    E = _gx()
    present = list(columns)
    out = [
        E.ExpectColumnToExist(column=c, description=f"example column {c} is present")
        for c in (*EXAMPLE_KEYS, *EXTRA_COLUMNS, *FEATURE_TS_COLUMNS)
    ]
    out += [
        E.ExpectColumnValuesToNotBeNull(column=c, description=f"no nulls in example key {c}")
        for c in EXAMPLE_KEYS
    ]
    out += [
        E.ExpectColumnValuesToBeUnique(column="example_id", description="example ids are unique"),
        E.ExpectCompoundColumnsToBeUnique(
            column_list=["session_id", "doc_id"], description="one example per (session, document)"
        ),
        E.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS), description="split is known"),
        E.ExpectColumnValuesToBeOfType(column="ts", type_="Timestamp", description="example time is UTC"),
    ]
    lo, hi = _time_bounds(config)
    out.append(
        E.ExpectColumnValuesToBeBetween(
            column="ts", min_value=lo, max_value=hi, description="example time is plausible"
        )
    )
    for ts in FEATURE_TS_COLUMNS:
        out.append(
            E.ExpectColumnValuesToNotBeNull(
                column=ts, mostly=config.min_feature_coverage,
                description=f"at least {config.min_feature_coverage:.0%} of examples found a snapshot ({ts})",
            )
        )
        out.append(
            E.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A="ts", column_B=ts, or_equal=True, ignore_row_if="either_value_is_missing",
                description=f"{ts} is not after the example time (no feature from the future)",
            )
        )
    # Per feature, the share of examples that have it: the report lists each one's missing share, so a
    # feature that training sees missing while serving always has it (train/serve skew) shows by name.
    for col in feature_columns(present):
        out.append(
            E.ExpectColumnValuesToNotBeNull(
                column=col, mostly=config.min_feature_coverage,
                description=f"at least {config.min_feature_coverage:.0%} of examples have feature {col}",
            )
        )
    numeric = [searcher_column(n) for n in SEARCHER_NUMERIC] + [doc_column(n) for n in DOC_NUMERIC]
    for col in (c for c in numeric if c in present):
        out.append(
            E.ExpectColumnValuesToBeBetween(column=col, min_value=0, description=f"{col} is not negative")
        )
    tol = config.weight_sum_tolerance
    for col in weight_columns(present):
        out += [
            E.ExpectColumnValuesToBeBetween(
                column=f"{col}__min", min_value=0.0, max_value=1.0, description=f"every weight of {col} in [0, 1]"
            ),
            E.ExpectColumnValuesToBeBetween(
                column=f"{col}__max", min_value=0.0, max_value=1.0, description=f"every weight of {col} in [0, 1]"
            ),
            E.ExpectColumnValuesToBeBetween(
                column=f"{col}__sum", min_value=1.0 - tol, max_value=1.0 + tol,
                description=f"non-empty weights of {col} sum to 1",
            ),
        ]
    return out


def examples_suite(columns: Iterable[str], config: GateConfig | None = None) -> GateSuite:
    """The gate of the joined training examples (all splits together)."""
    config = config or GateConfig()
    columns = list(columns)
    return GateSuite(
        name="examples",
        expectations=lambda: examples_expectations(columns, config),
        derive=_derive_examples,
        row_count_tolerance=config.row_count_tolerance,
        table="examples", drift=config.drift, accept_changes=config.accept_changes,
    )


# --------------------------------------------------------------------------- mined hard negatives

MINED_COUNT = "_hard_negative_count"
MINED_IS_POSITIVE = "_hard_negative_is_positive"
FALSE_NEGATIVE_SHARE = "_false_negative_share"


class MinedGateConfig(BaseModel):
    """Bounds of the gate on the examples of a hard-negative mining round."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_share_with_negatives: float = Field(
        0.5, ge=0, le=1, description="least share of training examples that got at least one mined negative"
    )
    max_false_negative_share: float = Field(
        0.9, ge=0, le=1,
        description="most of the candidates that may be dropped as false negatives (more: the model or the "
        "window is wrong, e.g. the window lies inside the positives)",
    )


def _derive_mined(column: str, false_negative_share: float):
    def derive(df: pd.DataFrame) -> pd.DataFrame:
        session_pos = df.groupby(df["session_id"].astype(str))["doc_id"].agg(lambda s: set(s.astype(str)))
        own = session_pos.reindex(df["session_id"].astype(str)).to_numpy(object)
        lists = df[column].to_numpy(object)
        count = np.fromiter((len(v) if v is not None else 0 for v in lists), np.int64, len(df))
        hit = np.fromiter((any(str(x) in p for x in (v if v is not None else ())) for v, p in zip(lists, own)),
                          bool, len(df))
        return df.assign(**{MINED_COUNT: count, MINED_IS_POSITIVE: hit,
                            FALSE_NEGATIVE_SHARE: np.full(len(df), float(false_negative_share))})
    return derive


def mined_suite(column: str, max_per_example: int, false_negative_share: float,
                config: MinedGateConfig | None = None) -> GateSuite:
    """The gate of one mining round's training examples: no mined negative is a positive of its session,
    counts per example within bounds, enough examples got negatives, and the share of candidates removed as
    false negatives (from the round's report) below the bound."""
    config = config or MinedGateConfig()

    def expectations() -> list:
        E = _gx()
        return [
            E.ExpectColumnToExist(column=column, description=f"the mined column {column} is present"),
            E.ExpectColumnValuesToBeInSet(column=MINED_IS_POSITIVE, value_set=[False],
                                          description="no mined negative is a positive of its own session"),
            E.ExpectColumnValuesToBeBetween(column=MINED_COUNT, min_value=0, max_value=max_per_example,
                                            description=f"at most {max_per_example} mined negatives per example"),
            E.ExpectColumnValuesToBeBetween(
                column=MINED_COUNT, min_value=1, mostly=config.min_share_with_negatives,
                description=f"at least {config.min_share_with_negatives:.0%} of examples got mined negatives"),
            E.ExpectColumnMaxToBeBetween(
                column=FALSE_NEGATIVE_SHARE, max_value=config.max_false_negative_share,
                description=f"at most {config.max_false_negative_share:.0%} of the candidates were false negatives"),
        ]

    return GateSuite(name="mined", expectations=expectations, derive=_derive_mined(column, false_negative_share),
                     row_count_tolerance=None)
