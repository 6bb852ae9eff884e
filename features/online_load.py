"""Loading a feature snapshot into the online store: in bounded memory, and only what changed.

Feast's ``materialize`` converts every row of a feature view to protobufs at once, with per-value type
dispatch: its memory grows with the corpus. This loader writes through the same provider call
(``online_write_batch``: any online store Feast supports; tested on SQLite and Redis) with three differences:

- a converter per column type that builds the same protobufs as Feast (byte for byte: tested), with one
  shared proto per repeated scalar value;
- chunks of ``chunk_rows`` entities, so memory stays bounded whatever the corpus size;
- incremental writes: a marker in the online store records which snapshot file it holds (its day and
  digest). When tonight's snapshot follows it, only the entities whose values differ are written (a new
  entity, a new click in the history, a new member). ``feature_ts`` is not compared: an unchanged row keeps
  the time of the snapshot it was written from, whose values it still has.

A full write happens when there is no marker (a new, recreated or flushed store), when the marked file is
gone or was rewritten, or on request (``full=True``). A crash between chunks leaves some entities at
tonight's values and the rest at the marked snapshot's; the marker is written last, so the re-run diffs
against the same snapshot and writes the same rows again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import time
from datetime import date, datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel

from features.compute import CREATED_TIMESTAMP, EVENT_TIMESTAMP, KEYS

if TYPE_CHECKING:
    import feast

log = logging.getLogger(__name__)

EntityName = Literal["searcher", "document"]  # defined here for features.store, which imports this module


class FeatureRepo(Protocol):
    """What a load needs of :class:`features.store.FeatureRepo` (which calls this module, so it is not
    imported here)."""

    online_store: str
    project: str

    @property
    def online_store_path(self) -> Path: ...

    @property
    def store(self) -> feast.FeatureStore: ...

    def source_dir(self, entity: EntityName) -> Path: ...

MARKER = "online_snapshot"
_TABLE = "ebr_online_snapshot"  # in the SQLite online store, next to Feast's tables
NOT_COMPARED = frozenset({"feature_ts"})  # the snapshot's own time: it changes every day by definition


class OnlineLoad(BaseModel):
    """What one load wrote for one entity (also a row of the materialize flow's report)."""

    entity: str
    day: date
    rows: int  # entities in the snapshot
    written: int  # entities written (in at least one feature view)
    full: bool  # every entity was written (no usable previous snapshot, or asked for)
    reason: str
    seconds: float


# --------------------------------------------------------------------------- protobufs


def _value_protos(column: pa.ChunkedArray | pa.Array, value_type) -> list:
    """One ``ValueProto`` per row of ``column``, identical to what Feast's materialization builds."""
    from feast.protos.feast.types.Value_pb2 import DoubleList, StringList, Value
    from feast.value_type import ValueType

    empty = Value()
    if value_type == ValueType.STRING:  # cities, countries, types repeat: one proto per distinct value
        cache: dict[str, Any] = {}
        out = []
        for v in column.to_pylist():
            if v is None:
                out.append(empty)
            elif v in cache:
                out.append(cache[v])
            else:
                out.append(cache.setdefault(v, Value(string_val=v)))
        return out
    if value_type == ValueType.INT64:
        return [empty if v is None else Value(int64_val=v) for v in column.to_pylist()]
    if value_type == ValueType.UNIX_TIMESTAMP:
        micros = pc.fill_null(pc.cast(column, pa.int64()), 0).to_numpy(zero_copy_only=False)
        valid = np.asarray(pc.is_valid(column))
        seconds = np.floor_divide(micros, 1_000_000).tolist()
        return [Value(unix_timestamp_val=s) if ok else empty for s, ok in zip(seconds, valid.tolist())]
    if value_type == ValueType.STRING_LIST:
        return [empty if v is None else Value(string_list_val=StringList(val=v)) for v in column.to_pylist()]
    if value_type == ValueType.DOUBLE_LIST:
        return [empty if v is None else Value(double_list_val=DoubleList(val=v)) for v in column.to_pylist()]
    from feast.type_map import python_values_to_proto_values  # any other type: Feast's own conversion

    return python_values_to_proto_values(column.to_numpy(zero_copy_only=False), value_type)


def feature_rows(table: pa.Table, feature_view, join_key: str, timestamp_field: str, created_field: str) -> list:
    """The ``(entity key, {feature: value}, event_ts, created_ts)`` tuples ``online_write_batch`` takes."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    names = [f.name for f in feature_view.features]
    columns = [_value_protos(table.column(f.name), f.dtype.to_value_type()) for f in feature_view.features]
    keys = [EntityKey(join_keys=[join_key], entity_values=[Value(string_val=k)])
            for k in table.column(join_key).to_pylist()]
    stamps = [_datetimes(table.column(c)) for c in (timestamp_field, created_field)]
    return [(k, dict(zip(names, vals)), e, c) for k, *vals, e, c in zip(keys, *columns, *stamps)]


def _datetimes(column: pa.ChunkedArray) -> list:
    """Naive UTC datetimes, one shared object per distinct value (a snapshot has one time)."""
    cache: dict[Any, datetime] = {}
    out = []
    for v in pc.cast(column, pa.int64()).to_pylist():
        d = cache.get(v)
        if d is None:
            d = cache[v] = pd.Timestamp(v, unit="us").to_pydatetime()  # naive UTC, as Feast passes them
        out.append(d)
    return out


# --------------------------------------------------------------------------- what changed


def _equal_rows(a: pa.ChunkedArray | pa.Array, b: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Row-wise equality of two aligned columns (null equals null), scalars and lists alike."""
    a = a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a
    b = b.combine_chunks() if isinstance(b, pa.ChunkedArray) else b
    both_null = np.asarray(pc.and_(a.is_null(), b.is_null()))
    if not pa.types.is_list(a.type):
        eq = np.asarray(pc.fill_null(pc.equal(a, b), False))
        return eq | both_null
    la = np.asarray(pc.fill_null(pc.list_value_length(a), -1))
    lb = np.asarray(pc.fill_null(pc.list_value_length(b), -1))
    same_len = la == lb
    rows = np.flatnonzero(same_len & (la > 0))
    eq = same_len.copy()
    if len(rows):
        ta, tb = a.take(pa.array(rows)), b.take(pa.array(rows))
        fa, fb = pc.list_flatten(ta), pc.list_flatten(tb)
        differs = ~np.asarray(pc.fill_null(pc.equal(fa, fb), False)) & ~np.asarray(
            pc.and_(fa.is_null(), fb.is_null()))
        parent = np.asarray(pc.list_parent_indices(ta))
        bad = np.bincount(parent[differs], minlength=len(rows)) > 0
        eq[rows[bad]] = False
    return eq | both_null


def changed(new: pa.Table, old: pa.Table, key: str, columns: list[str]) -> np.ndarray:
    """Per row of ``new``: True when its key is not in ``old`` or one of ``columns`` differs there."""
    pos = pd.Index(old.column(key).to_pylist()).get_indexer(new.column(key).to_pylist())
    out = pos < 0
    known = np.flatnonzero(~out)
    if len(known) == 0:
        return out
    idx_new, idx_old = pa.array(known), pa.array(pos[known])
    same = np.ones(len(known), dtype=bool)
    for c in columns:
        same &= _equal_rows(new.column(c).take(idx_new), old.column(c).take(idx_old))
    out[known[~same]] = True
    return out


# --------------------------------------------------------------------------- the marker


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _redis(url: str):
    import redis

    return redis.Redis.from_url(url)


def read_marker(repo: FeatureRepo) -> dict:
    """What the online store holds, per entity: ``{"day", "digest", "loaded_at"}``. The marker lives in the
    store itself (a table of the SQLite file, a key of Redis), so a store that was deleted, recreated or
    flushed has none and gets a full load."""
    if repo.online_store:
        raw = _redis(repo.online_store).get(f"ebr:{repo.project}:{MARKER}")
        return json.loads(raw) if raw else {}
    if not repo.online_store_path.exists():
        return {}
    with sqlite3.connect(repo.online_store_path) as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {_TABLE} (entity TEXT PRIMARY KEY, marker TEXT)")
        return {e: json.loads(m) for e, m in conn.execute(f"SELECT entity, marker FROM {_TABLE}")}


def _write_marker(repo: FeatureRepo, entity: str, value: dict) -> None:
    if repo.online_store:
        marker = {**read_marker(repo), entity: value}
        _redis(repo.online_store).set(f"ebr:{repo.project}:{MARKER}", json.dumps(marker, sort_keys=True))
        return
    with sqlite3.connect(repo.online_store_path) as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {_TABLE} (entity TEXT PRIMARY KEY, marker TEXT)")
        conn.execute(f"INSERT OR REPLACE INTO {_TABLE} VALUES (?, ?)", (entity, json.dumps(value, sort_keys=True)))


# --------------------------------------------------------------------------- the load


def load_snapshot(repo: FeatureRepo, entity: EntityName, day: date, *, full: bool = False,
                  chunk_rows: int = 20_000, progress: bool = True) -> OnlineLoad:
    """Write the ``day`` snapshot of ``entity`` into the online store (see the module docstring)."""
    t0 = time.perf_counter()
    key = KEYS[entity]
    path = repo.source_dir(entity) / f"{day.isoformat()}.parquet"
    if not path.exists():
        raise FileNotFoundError(f"no {entity} snapshot for {day} at {path}; compute it first (materialize)")
    digest = _digest(path)
    table = pq.read_table(path)
    held = read_marker(repo).get(entity, {})
    old: pa.Table | None = None
    if full:
        reason = "full load requested"
    elif not held:
        reason = "the online store holds no recorded snapshot"
    elif held.get("day") == day.isoformat() and held.get("digest") == digest:
        return OnlineLoad(entity=entity, day=day, rows=table.num_rows, written=0, full=False,
                          reason="the online store already holds this snapshot", seconds=time.perf_counter() - t0)
    else:
        held_path = repo.source_dir(entity) / f"{held.get('day')}.parquet"
        if held_path.exists() and _digest(held_path) == held.get("digest"):
            old, reason = pq.read_table(held_path), f"changes since the snapshot of {held['day']}"
        else:
            reason = f"the snapshot of {held.get('day')} the online store holds was rewritten or removed"
    store = repo.store
    provider = store._get_provider()
    views = [fv for fv in store.list_feature_views() if fv.online and key in fv.join_keys]
    written = np.zeros(table.num_rows, dtype=bool)
    for fv in views:
        names = [f.name for f in fv.features]
        mask = (np.ones(table.num_rows, dtype=bool) if old is None
                else changed(table, old, key, [n for n in names if n not in NOT_COMPARED]))
        rows = np.flatnonzero(mask)
        written |= mask
        part = table.select([key, *names, EVENT_TIMESTAMP, CREATED_TIMESTAMP])
        bar = _bar(progress, len(rows), f"online store: {fv.name}")
        for start in range(0, len(rows), chunk_rows):
            chunk = part.take(pa.array(rows[start:start + chunk_rows]))
            provider.online_write_batch(store.config, fv, feature_rows(chunk, fv, key, EVENT_TIMESTAMP,
                                                                       CREATED_TIMESTAMP), None)
            if bar is not None:
                bar.update(chunk.num_rows)
        if bar is not None:
            bar.close()
    _write_marker(repo, entity, {"day": day.isoformat(), "digest": digest,
                                 "loaded_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    result = OnlineLoad(entity=entity, day=day, rows=table.num_rows, written=int(written.sum()),
                        full=old is None, reason=reason, seconds=time.perf_counter() - t0)
    log.info("online store: %s", result)
    return result


def _bar(enabled: bool, total: int, desc: str):
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="row", leave=False)


__all__ = ["OnlineLoad", "changed", "feature_rows", "load_snapshot", "read_marker"]
