"""The canonical data contract: the tables every source is turned into.

Everything after ingestion reads only these tables, so it does not care whether they came from the
synthetic world or from a real dataset. A dataset is a directory of parquet files, one per table, plus
``manifest.json`` (source, parameters, row counts). It is written by :func:`write_dataset` and read by
:func:`read_dataset`; nothing else writes these files.

Rules checked on every write (a break raises :class:`ContractError` naming table, column and an example row):
required columns present, types coercible, no nulls where not allowed, unique ids, timestamps in UTC,
and cross-table references (a clicked or impressed document must exist, a session's searcher must exist).
Writes are atomic: tables go to a temporary sibling directory that replaces the target only when all of
them are written, so a reader never sees a half-written dataset.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from infra.atomic import atomic_directory
from infra.settings import get_settings

CONTRACT_VERSION = 1

Kind = Literal["string", "int64", "float64", "timestamp", "list_string"]

_ARROW_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int64": pa.int64(),
    "float64": pa.float64(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "list_string": pa.list_(pa.string()),
}


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    nullable: bool = False
    description: str = ""
    max_chars: str | None = None  # a text's bound: the name of the setting that holds it (infra.settings)


@dataclass(frozen=True)
class TableSchema:
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...] = ()  # columns whose combination must be unique
    optional: tuple[Column, ...] = ()  # typed when present, may be absent
    description: str = ""

    @property
    def required_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column | None:
        for c in (*self.columns, *self.optional):
            if c.name == name:
                return c
        return None


SEARCHERS = TableSchema(
    "searchers",
    (
        Column("searcher_id", "string", description="stable id of the person who searches"),
        Column("city", "string", nullable=True, description="home city (empty when unknown)"),
        Column("region", "string", nullable=True, description="admin region of the home city"),
        Column("country", "string", nullable=True, description="ISO 3166 alpha-2 country code"),
        Column("language", "string", nullable=True, description="ISO 639-1 language code"),
        Column("created_at", "timestamp", description="when the searcher joined"),
    ),
    key=("searcher_id",),
    optional=(
        Column("lat", "float64", nullable=True),
        Column("lon", "float64", nullable=True),
        Column("age", "int64", nullable=True),
        Column("gender", "string", nullable=True),
        Column("occupation", "string", nullable=True),
    ),
    description="people who search (or receive recommendations)",
)

DOCUMENTS = TableSchema(
    "documents",
    (
        Column("doc_id", "string"),
        Column("doc_type", "string", description="group, event, person, artist, movie, paper, ..."),
        Column("title", "string", nullable=True, max_chars="max_title_chars"),
        Column("body", "string", nullable=True, max_chars="max_body_chars"),
        Column("city", "string", nullable=True, description="admin-tagged city (may be empty)"),
        Column("region", "string", nullable=True),
        Column("country", "string", nullable=True),
        Column("created_at", "timestamp"),
        Column("last_active_at", "timestamp", nullable=True),
    ),
    key=("doc_id",),
    optional=(
        Column("lat", "float64", nullable=True),
        Column("lon", "float64", nullable=True),
        Column("starts_at", "timestamp", nullable=True, description="event start (events only)"),
        Column("tags", "list_string", nullable=True),
    ),
    description="what is retrieved: groups, events, people, artists, movies, papers",
)

FRIENDSHIPS = TableSchema(
    "friendships",
    (
        Column("searcher_id", "string"),
        Column("friend_id", "string"),
        Column("created_at", "timestamp"),
    ),
    key=("searcher_id", "friend_id"),
    description="directed friend edges (a symmetric friendship is two rows)",
)

MEMBERSHIPS = TableSchema(
    "memberships",
    (
        Column("searcher_id", "string"),
        Column("doc_id", "string"),
        Column("created_at", "timestamp"),
    ),
    key=("searcher_id", "doc_id"),
    optional=(Column("weight", "float64", nullable=True, description="e.g. play count, rating"),),
    description="joins, RSVPs, listens: a searcher's lasting link to a document",
)

SESSIONS = TableSchema(
    "sessions",
    (
        Column("session_id", "string"),
        Column("searcher_id", "string"),
        Column("ts", "timestamp"),
        Column("query", "string", nullable=True, description="empty for recommendation", max_chars="max_query_chars"),
        Column("impressed", "list_string", description="doc_ids shown, in rank order"),
        Column("clicked", "list_string", description="doc_ids clicked (may be empty: a failed session)"),
    ),
    key=("session_id",),
    optional=(
        Column("split", "string", nullable=True, description="a source's own split: train/valid/test"),
    ),
    description="search or recommendation sessions",
)

QRELS = TableSchema(
    "qrels",
    (
        Column("session_id", "string"),
        Column("doc_id", "string"),
        Column("relevance", "int64"),
    ),
    key=("session_id", "doc_id"),
    optional=(Column("split", "string", nullable=True),),
    description="graded relevance labels, for sources that come with them",
)

SCHEMAS: dict[str, TableSchema] = {
    s.name: s for s in (SEARCHERS, DOCUMENTS, FRIENDSHIPS, MEMBERSHIPS, SESSIONS, QRELS)
}
REQUIRED_TABLES = ("searchers", "documents", "friendships", "memberships", "sessions")
MANIFEST = "manifest.json"


class ContractError(ValueError):
    """A table breaks the canonical contract."""

    def __init__(self, table: str, column: str | None, problem: str, example: Any = None):
        self.table, self.column, self.problem, self.example = table, column, problem, example
        where = f"{table}.{column}" if column else table
        msg = f"{where}: {problem}"
        if example is not None:
            msg += f"; example row: {example}"
        super().__init__(msg)


# --------------------------------------------------------------------------- validation


def _example(df: pd.DataFrame, mask: np.ndarray | pd.Series) -> dict:
    row = df[np.asarray(mask)].iloc[0]
    return {k: _shown(v.tolist() if isinstance(v, np.ndarray) else v) for k, v in row.to_dict().items()}


def _shown(value: Any, limit: int = 200) -> Any:
    """A value as an error message shows it: a long text cut (a 5 MB title is not a message)."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]}... ({len(value):,} characters)"
    return value


def _to_list_column(values: pd.Series, table: str, col: str) -> pd.Series:
    """Lists of string ids. Columns that already hold lists of strings pass through untouched (fast path)."""
    try:
        pa.array(values, type=pa.list_(pa.string()), from_pandas=True)
        return values
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass  # e.g. lists of ints: convert element-wise below

    def conv(v):
        if isinstance(v, (list, tuple, np.ndarray)):
            return [str(x) for x in v]
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return None
        raise TypeError(type(v).__name__)

    try:
        return values.map(conv)
    except TypeError as exc:
        bad = values.map(lambda v: not isinstance(v, (list, tuple, np.ndarray)) and v is not None)
        raise ContractError(
            table, col, f"expected a list of ids, got {exc}", _example(values.to_frame(), bad)
        ) from None


def _coerce(df: pd.DataFrame, schema: TableSchema, c: Column) -> pd.Series:
    s = df[c.name]
    try:
        if c.kind == "string":
            out = s.astype("string").astype(object).where(s.notna(), None)
        elif c.kind == "int64":
            if s.isna().any():
                out = s.astype("Int64")
            else:
                out = s.astype("int64")
        elif c.kind == "float64":
            out = s.astype("float64")
        elif c.kind == "timestamp":
            if pd.api.types.is_datetime64_any_dtype(s) and getattr(s.dt, "tz", None) is None:
                raise ContractError(
                    schema.name, c.name, "timestamps must be timezone-aware (UTC), got naive values"
                )
            if isinstance(s.dtype, pd.DatetimeTZDtype):
                out = s.dt.tz_convert("UTC")  # already typed: skip the slow parsing path
            else:
                out = pd.to_datetime(s, utc=True)
        elif c.kind == "list_string":
            out = _to_list_column(s, schema.name, c.name)
        else:  # pragma: no cover - schema definitions are static
            raise AssertionError(c.kind)
    except ContractError:
        raise
    except (ValueError, TypeError) as exc:
        # Find one offending row for the message.
        bad = np.zeros(len(s), dtype=bool)
        for i, v in enumerate(s):
            try:
                if c.kind == "int64":
                    int(v)
                elif c.kind == "float64":
                    float(v)
                elif c.kind == "timestamp":
                    pd.Timestamp(v)
            except (ValueError, TypeError):
                bad[i] = True
                break
        example = _example(df, bad) if bad.any() else None
        raise ContractError(schema.name, c.name, f"values are not {c.kind}: {exc}", example) from None
    return out


def validate_table(df: pd.DataFrame, schema: TableSchema) -> pd.DataFrame:
    """Check one table against its schema; return it with canonical dtypes and column order."""
    if not isinstance(df, pd.DataFrame):
        raise ContractError(schema.name, None, f"expected a pandas DataFrame, got {type(df).__name__}")
    missing = [n for n in schema.required_names if n not in df.columns]
    if missing:
        raise ContractError(
            schema.name, missing[0], f"missing column(s) {missing}; present: {list(df.columns)}"
        )
    df = df.reset_index(drop=True)
    out = {}
    known = [*schema.columns, *[c for c in schema.optional if c.name in df.columns]]
    for c in known:
        s = _coerce(df, schema, c)
        if not c.nullable:
            nulls = s.isna().to_numpy()
            if nulls.any():
                raise ContractError(
                    schema.name, c.name, f"{int(nulls.sum())} null value(s) where none are allowed",
                    _example(df, nulls),
                )
            if c.kind == "string":
                empty = (s == "").to_numpy()
                if c.name.endswith("_id") and empty.any():
                    raise ContractError(
                        schema.name, c.name, f"{int(empty.sum())} empty id(s)", _example(df, empty)
                    )
        if c.max_chars is not None:
            limit = getattr(get_settings(), c.max_chars)
            long = (s.str.len() > limit).fillna(False).to_numpy(dtype=bool)
            if long.any():
                raise ContractError(
                    schema.name, c.name, f"{int(long.sum())} value(s) longer than {limit:,} characters (the "
                    f"bound EBR_{c.max_chars.upper()} sets)", _example(df, long),
                )
        out[c.name] = s
    extras = [n for n in df.columns if n not in out]
    for n in extras:  # extra attributes pass through untouched
        out[n] = df[n]
    result = pd.DataFrame(out)
    if schema.key:
        dup = result.duplicated(list(schema.key), keep="first").to_numpy()
        if dup.any():
            raise ContractError(
                schema.name, ",".join(schema.key),
                f"{int(dup.sum())} duplicated key(s); ids must be unique", _example(result, dup),
            )
    return result


def _check_refs(
    tables: dict[str, pd.DataFrame], table: str, col: str, target: str, target_col: str
) -> None:
    if table not in tables or target not in tables:
        return
    df = tables[table]
    known = pd.Index(tables[target][target_col])
    s = df[col]
    column = SCHEMAS[table].column(col)
    assert column is not None  # callers name a column of the table's schema
    if column.kind == "list_string":
        arr = pa.array(s, type=pa.list_(pa.string()), from_pandas=True)
        flat = arr.flatten()
        ok = pc.is_in(flat, value_set=pa.array(known.to_numpy(dtype=object), type=pa.string()))
        bad_flat = np.flatnonzero(~ok.to_numpy(zero_copy_only=False))
        if len(bad_flat):
            parents = pc.list_parent_indices(arr).to_numpy()
            bad_rows = np.unique(parents[bad_flat])
            mask = np.zeros(len(df), dtype=bool)
            mask[bad_rows] = True
            missing = flat[int(bad_flat[0])].as_py()
            raise ContractError(
                table, col,
                f"{len(bad_rows)} row(s) reference {target_col}s that are not in {target} "
                f"(e.g. {missing!r})", _example(df, mask),
            )
    else:
        bad = ~s.isin(known).to_numpy()
        if bad.any():
            raise ContractError(
                table, col,
                f"{int(bad.sum())} row(s) reference {target_col}s that are not in {target}",
                _example(df, bad),
            )


def validate_dataset(tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Validate every table and the references between them."""
    unknown = sorted(set(tables) - set(SCHEMAS))
    if unknown:
        raise ContractError(unknown[0], None, f"unknown table; allowed tables: {sorted(SCHEMAS)}")
    missing = [t for t in REQUIRED_TABLES if t not in tables]
    if missing:
        raise ContractError(missing[0], None, f"required table missing; required: {list(REQUIRED_TABLES)}")
    out = {name: validate_table(df, SCHEMAS[name]) for name, df in tables.items()}
    _check_refs(out, "sessions", "searcher_id", "searchers", "searcher_id")
    _check_refs(out, "sessions", "clicked", "documents", "doc_id")
    _check_refs(out, "sessions", "impressed", "documents", "doc_id")
    _check_refs(out, "memberships", "searcher_id", "searchers", "searcher_id")
    _check_refs(out, "memberships", "doc_id", "documents", "doc_id")
    _check_refs(out, "friendships", "searcher_id", "searchers", "searcher_id")
    _check_refs(out, "friendships", "friend_id", "searchers", "searcher_id")
    _check_refs(out, "qrels", "session_id", "sessions", "session_id")
    _check_refs(out, "qrels", "doc_id", "documents", "doc_id")
    return out


# --------------------------------------------------------------------------- I/O


def _arrow_table(df: pd.DataFrame, schema: TableSchema) -> pa.Table:
    fields, arrays = [], []
    for name in df.columns:
        c = schema.column(name)
        typ = _ARROW_TYPES[c.kind] if c else None
        arr = pa.array(df[name], type=typ, from_pandas=True) if typ else pa.array(df[name], from_pandas=True)
        arrays.append(arr)
        fields.append(pa.field(name, arr.type, nullable=True))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


@dataclass
class DatasetManifest:
    source: str
    params: dict[str, Any] = field(default_factory=dict)
    row_counts: dict[str, int] = field(default_factory=dict)
    created_at: str = ""
    contract_version: int = CONTRACT_VERSION
    notes: str = ""

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str) -> "DatasetManifest":
        return cls(**json.loads(text))


@dataclass
class CanonicalDataset:
    """The canonical tables of one source, in memory."""

    searchers: pd.DataFrame
    documents: pd.DataFrame
    friendships: pd.DataFrame
    memberships: pd.DataFrame
    sessions: pd.DataFrame
    qrels: pd.DataFrame | None = None
    manifest: DatasetManifest | None = None

    def tables(self) -> dict[str, pd.DataFrame]:
        t = {n: getattr(self, n) for n in REQUIRED_TABLES}
        if self.qrels is not None:
            t["qrels"] = self.qrels
        return t

    def row_counts(self) -> dict[str, int]:
        return {n: len(df) for n, df in self.tables().items()}


def empty_table(name: str) -> pd.DataFrame:
    """An empty table with the schema's required columns (e.g. no friendships for a source)."""
    schema = SCHEMAS[name]
    cols = {}
    for c in schema.columns:
        if c.kind == "timestamp":
            cols[c.name] = pd.Series([], dtype="datetime64[ns, UTC]")
        elif c.kind == "int64":
            cols[c.name] = pd.Series([], dtype="int64")
        elif c.kind == "float64":
            cols[c.name] = pd.Series([], dtype="float64")
        else:
            cols[c.name] = pd.Series([], dtype=object)
    return pd.DataFrame(cols)


def write_dataset(
    dataset: CanonicalDataset | dict[str, pd.DataFrame],
    path: str | os.PathLike,
    source: str = "",
    params: dict[str, Any] | None = None,
    notes: str = "",
) -> DatasetManifest:
    """Validate and write all tables atomically to ``path`` (replacing what was there)."""
    tables = dataset.tables() if isinstance(dataset, CanonicalDataset) else dict(dataset)
    if isinstance(dataset, CanonicalDataset) and dataset.manifest is not None:
        source = source or dataset.manifest.source
        params = params if params is not None else dataset.manifest.params
        notes = notes or dataset.manifest.notes
    valid = validate_dataset(tables)
    target = Path(path)
    manifest = DatasetManifest(
        source=source,
        params=dict(params or {}),
        row_counts={n: len(df) for n, df in valid.items()},
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        notes=notes,
    )
    with atomic_directory(target, marker=MANIFEST) as tmp:
        for name, df in valid.items():
            pq.write_table(_arrow_table(df, SCHEMAS[name]), tmp / f"{name}.parquet")
        (tmp / MANIFEST).write_text(manifest.to_json())
    return manifest


def read_table(path: str | os.PathLike, name: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read one canonical table of a dataset written by :func:`write_dataset` (only ``columns`` if given)."""
    if name not in SCHEMAS:
        raise ValueError(f"unknown table {name!r}; allowed tables: {sorted(SCHEMAS)}")
    f = Path(path) / f"{name}.parquet"
    if not f.exists():
        raise FileNotFoundError(f"no table {name!r} in dataset {path} (looked for {f})")
    df = pq.read_table(f, columns=list(columns) if columns is not None else None).to_pandas()
    schema = SCHEMAS[name]
    for c in (*schema.columns, *schema.optional):
        if c.kind == "list_string" and c.name in df.columns:  # arrow gives numpy arrays: lists, as written
            df[c.name] = df[c.name].map(lambda v: [] if v is None else list(v))
    return df


def read_manifest(path: str | os.PathLike) -> DatasetManifest:
    """The manifest of a dataset directory (its source, parameters and row counts), without its tables."""
    root = Path(path)
    if not (root / MANIFEST).exists():
        raise FileNotFoundError(
            f"{root} is not a canonical dataset (no {MANIFEST}); create one with 'ebr generate' or 'ebr ingest'"
        )
    return DatasetManifest.from_json((root / MANIFEST).read_text())


def read_dataset(path: str | os.PathLike, tables: Iterable[str] | None = None,
                 columns: Mapping[str, Sequence[str]] | None = None) -> CanonicalDataset:
    """Read a dataset directory; ``tables`` limits which tables are loaded (others are empty), ``columns``
    which columns of a table (e.g. what feature computation reads: a fraction of the memory)."""
    root = Path(path)
    manifest = read_manifest(root)
    wanted = set(tables) if tables is not None else set(SCHEMAS)
    loaded: dict[str, pd.DataFrame | None] = {}
    for name in SCHEMAS:
        exists = (root / f"{name}.parquet").exists()
        if name in wanted and exists:
            loaded[name] = read_table(root, name, (columns or {}).get(name))
        elif name in REQUIRED_TABLES:
            loaded[name] = empty_table(name)
        else:
            loaded[name] = None
    return CanonicalDataset(manifest=manifest, **loaded)
