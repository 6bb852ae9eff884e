"""A thin typed wrapper around ``feast.FeatureStore`` for one dataset's feature store.

The repository is code (``features/repo``); its runtime directory (``root``) holds what one dataset needs:
``feature_store.yaml`` rendered with absolute paths, ``registry.db``, ``online_store.db`` and the offline
sources ``sources/<entity>_features/<YYYY-MM-DD>.parquet`` (one file per daily snapshot, replaced
atomically, so writing a day twice is harmless). Several datasets coexist under different roots.

Feast is imported lazily: importing this module is cheap.
"""

from __future__ import annotations

import copy
import logging
import re
import string
from collections.abc import Sequence
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.compute import (
    CREATED_TIMESTAMP,
    DOCUMENT_COLUMNS,
    EVENT_TIMESTAMP,
    FEATURE_TS,
    KEYS,
    SEARCHER_COLUMNS,
    as_of_for_day,
    check_as_of,
)
from features.compute import compute_features as compute_features  # re-exported: part of this API
from features.online_load import EntityName, load_snapshot
from features.repo import FEATURE_SERVICE_VERSION, PROJECT
from features.schema import DOC_MULTI, DOC_NUMERIC, DOC_TIMES, SEARCHER_MULTI, SEARCHER_NUMERIC
from infra.atomic import atomic_file
from infra.names import check_name
from infra.settings import get_settings

if TYPE_CHECKING:
    import feast

log = logging.getLogger(__name__)


class _FileRegistryNote(logging.Filter):
    """Feast warns that serve_features_while_materializing targets SQL registries; on the file registry it
    does take effect (tests/test_feast_store.py), so the warning would only mislead an operator."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "serve_features_while_materializing" not in record.getMessage()


logging.getLogger("feast.repo_config").addFilter(_FileRegistryNote())

ENTITIES: tuple[EntityName, ...] = ("searcher", "document")
COLUMNS: dict[str, tuple[str, ...]] = {"searcher": SEARCHER_COLUMNS, "document": DOCUMENT_COLUMNS}
TEMPLATE = Path(__file__).resolve().parent / "repo" / "feature_store.yaml"
_ROW = "__row__"

_TIMESTAMP = pa.timestamp("us", tz="UTC")


def arrow_type(column: str) -> pa.DataType:
    """Parquet type of a feature-table column (kept equal to the Feast schema: a test checks it)."""
    if column.endswith("_weights"):
        return pa.list_(pa.float64())
    if column in (*SEARCHER_MULTI, *DOC_MULTI):
        return pa.list_(pa.string())
    if column in (*SEARCHER_NUMERIC, *DOC_NUMERIC):
        return pa.int64()
    if column in (*DOC_TIMES, FEATURE_TS, EVENT_TIMESTAMP, CREATED_TIMESTAMP):
        return _TIMESTAMP
    return pa.string()


def arrow_schema(entity: EntityName) -> pa.Schema:
    return pa.schema([pa.field(c, arrow_type(c)) for c in COLUMNS[_check_entity(entity)]])


def _check_entity(entity: str) -> str:
    if entity not in KEYS:
        raise ValueError(f"entity must be one of {list(KEYS)}, got {entity!r}")
    return entity


def _to_arrow(df: pd.DataFrame, entity: EntityName) -> pa.Table:
    schema = arrow_schema(entity)
    if df.empty:  # a day before any data: empty columns have no element type to infer
        return schema.empty_table()
    arrays = []
    for f in schema:
        s = df[f.name]
        if pa.types.is_timestamp(f.type):
            s = pd.to_datetime(s, utc=True).astype("datetime64[us, UTC]")
        arrays.append(pa.array(s, type=f.type, from_pandas=True))
    return pa.Table.from_arrays(arrays, schema=schema)


def _atomic_write_parquet(table: pa.Table, path: Path) -> None:
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp)


def online_store_yaml(url: str, root: Path) -> str:
    """The ``online_store:`` block of feature_store.yaml for a store URL ("" = SQLite under ``root``)."""
    if not url:
        return f"online_store:\n    type: sqlite\n    path: {root.as_posix()}/online_store.db"
    m = re.fullmatch(r"redis://([^:/]+):(\d+)(?:/(\d+))?", url)
    if not m:
        raise ValueError(f"unsupported online store {url!r}: expected '' (SQLite) or redis://HOST:PORT[/DB]")
    host, port, db = m.group(1), m.group(2), m.group(3) or "0"
    return f'online_store:\n    type: redis\n    connection_string: "{host}:{port},db={db}"'


class FeatureRepo:
    """One dataset's feature store: offline sources, registry, online store."""

    FEATURE_SERVICE_VERSION: str = FEATURE_SERVICE_VERSION

    def __init__(self, root: Path | str, project: str = PROJECT, online_store: str = ""):
        """``online_store``: "" for a SQLite file under ``root``, or ``redis://HOST:PORT[/DB]``."""
        if not re.fullmatch(r"[A-Za-z0-9_]+", project):
            raise ValueError(f"project must contain only letters, digits and underscores, got {project!r}")
        self.root = Path(root).expanduser().resolve()
        self.project = project
        self.online_store = online_store
        self._online_yaml = online_store_yaml(online_store, self.root)
        self._store: feast.FeatureStore | None = None
        self._services: dict[str, feast.FeatureService] = {}  # parsed services (parsing costs ms per call)

    @classmethod
    def for_dataset(cls, dataset: str, home: Path | None = None) -> FeatureRepo:
        """The default location: ``<settings.home>/features/<dataset>``."""
        settings = get_settings()
        name = check_name(dataset, "dataset name")
        # A shared server holds every dataset: one Feast project (key prefix) each.
        project = PROJECT if not settings.online_store else f"{PROJECT}_{re.sub(r'[^A-Za-z0-9]', '_', name)}"
        return cls((home or settings.home) / "features" / name, project, settings.online_store)

    # ----------------------------------------------------------------------------------------- paths

    @property
    def config_path(self) -> Path:
        return self.root / "feature_store.yaml"

    @property
    def registry_path(self) -> Path:
        return self.root / "registry.db"

    @property
    def online_store_path(self) -> Path:
        """The SQLite online store's file (unused with a server online store)."""
        return self.root / "online_store.db"

    def has_online_store(self) -> bool:
        """A registry and, on SQLite, its online tables' file: what serving needs to read features."""
        return self.registry_path.exists() and (bool(self.online_store) or self.online_store_path.exists())

    def source_dir(self, entity: EntityName) -> Path:
        return self.root / "sources" / f"{_check_entity(entity)}_features"

    def source_days(self, entity: EntityName = "searcher") -> list[date]:
        """Days that have a snapshot written, in order."""
        d = self.source_dir(entity)
        if not d.is_dir():
            return []
        return sorted(date.fromisoformat(p.stem) for p in d.glob("*.parquet") if not p.name.startswith("."))

    # ----------------------------------------------------------------------------------------- offline

    def write_sources(
        self, searcher_features: pd.DataFrame, document_features: pd.DataFrame, day: date | None = None
    ) -> None:
        """Write daily snapshots (one parquet file per entity and day, replaced atomically).

        With ``day`` every row must belong to that day's snapshot (``snapshot_day(event_timestamp) == day``)
        and an empty frame writes an empty snapshot; without it, rows are split by their snapshot day.
        """
        self._write_entity("searcher", searcher_features, day)
        self._write_entity("document", document_features, day)

    def _write_entity(self, entity: EntityName, df: pd.DataFrame, day: date | None) -> None:
        key = KEYS[entity]
        missing = [c for c in COLUMNS[entity] if c not in df.columns]
        if missing:
            raise ValueError(f"{entity} features lack column(s) {missing}; expected {list(COLUMNS[entity])}")
        # the same rule as compute.snapshot_day, vectorized
        days = (pd.to_datetime(df[EVENT_TIMESTAMP], utc=True) - pd.Timedelta(microseconds=1)).dt.date
        if day is not None:
            wrong = days[days != day]
            if len(wrong):
                raise ValueError(
                    f"{entity} features: {len(wrong)} row(s) belong to snapshot day {wrong.iloc[0]}, not {day}; "
                    "a day's snapshot has event_timestamp in (day 00:00, day+1 00:00] UTC"
                )
            groups = [(day, df)]
        else:
            groups = [(d, part) for d, part in df.groupby(days, sort=True)]
        for d, part in groups:
            dup = part[key].duplicated()
            if dup.any():
                raise ValueError(f"{entity} features for {d}: duplicated {key} {part.loc[dup, key].iloc[0]!r}; "
                                 "one row per key per snapshot")
            part = part.sort_values(key, kind="mergesort")
            _atomic_write_parquet(_to_arrow(part, entity), self.source_dir(entity) / f"{d.isoformat()}.parquet")

    def read_source(self, entity: EntityName, day: date | None = None) -> pd.DataFrame:
        """The offline rows of one day (or of all days), as written."""
        files = ([self.source_dir(entity) / f"{day.isoformat()}.parquet"] if day
                 else [self.source_dir(entity) / f"{d.isoformat()}.parquet" for d in self.source_days(entity)])
        if not files:
            return arrow_schema(entity).empty_table().to_pandas()
        return pa.concat_tables([pq.read_table(f) for f in files]).to_pandas()

    # ----------------------------------------------------------------------------------------- registry

    def render_config(self) -> None:
        """Write ``feature_store.yaml`` with absolute paths (only when its content changes)."""
        text = string.Template(TEMPLATE.read_text()).safe_substitute(
            root=self.root.as_posix(), project=self.project, online_store=self._online_yaml)
        if self.config_path.exists() and self.config_path.read_text() == text:
            return
        with atomic_file(self.config_path) as tmp:
            tmp.write_text(text)
        self._store = None

    @property
    def store(self) -> feast.FeatureStore:
        if self._store is None:
            from feast import FeatureStore

            self.render_config()
            self._store = FeatureStore(repo_path=str(self.root))
        return self._store

    def reset(self) -> None:
        """Forget the registry and the online store together (deleting only one of them breaks apply)."""
        self._store = None
        self._services.clear()
        for p in (self.registry_path, self.online_store_path):
            p.unlink(missing_ok=True)

    def declared_objects(self) -> list:
        """The declarations of ``features/repo/definitions.py`` with source paths made absolute.

        Copies, so several roots in one process never share mutated objects.
        """
        from features.repo import definitions as d  # imports Feast: only where the declarations are needed

        objects = copy.deepcopy([*d.ENTITIES, *d.SOURCES, *d.FEATURE_VIEWS, *d.FEATURE_SERVICES])
        sources = {id(s) for s in objects if type(s).__name__ == "FileSource"}
        for obj in objects:
            if id(obj) in sources and not Path(obj.path).is_absolute():
                obj.file_options.uri = (self.root / obj.path).as_posix()
        return objects

    def apply(self) -> None:
        """Register the declarations (and drop registered objects that are no longer declared)."""
        if not self.online_store and self.registry_path.exists() and not self.online_store_path.exists():
            # `feast apply` then sees no change and materialize fails with "no such table": start both afresh
            log.warning("online store %s is missing: recreating the registry with it", self.online_store_path)
            self.reset()
        for entity in ENTITIES:
            self.source_dir(entity).mkdir(parents=True, exist_ok=True)
        objects = self.declared_objects()
        store = self.store
        names = {(type(o).__name__, o.name) for o in objects}
        stale = [
            o for o in (*store.list_feature_services(), *store.list_feature_views(), *store.list_data_sources())
            if (type(o).__name__, o.name) not in names
        ]
        store.apply(objects, objects_to_delete=stale, partial=False)
        self._services.clear()

    # ----------------------------------------------------------------------------------------- online

    def materialize(self, start: datetime, end: datetime, *, full: bool = False, progress: bool = False) -> list:
        """Load the newest snapshot with ``start <= event_timestamp <= end`` of each entity into the online
        store; returns one :class:`features.online_load.OnlineLoad` per entity loaded.

        Every snapshot holds every entity that exists at its time (``features.compute``), so the newest one
        in the window carries the newest row of every key (checked: an older file of the window with a key the
        newest lacks is an error). The online store keeps one row per key: callers that backfill an old range
        extend ``end`` to the newest written day. Only the entities that changed since the snapshot the store
        holds are written, unless ``full`` (see ``features.online_load``).
        """
        s, e = check_as_of(start), check_as_of(end)
        if e < s:
            raise ValueError(f"materialize end {end} is before start {start}")
        if not self.registry_path.exists():
            raise RuntimeError(f"no registry at {self.registry_path}; call apply() first")
        loads = []
        for entity in ENTITIES:
            days = [d for d in self.source_days(entity) if s <= as_of_for_day(d) <= e]
            if not days:
                continue
            self._check_newest_holds_all(entity, days)
            loads.append(load_snapshot(self, entity, days[-1], full=full, progress=progress))
        return loads

    def _check_newest_holds_all(self, entity: EntityName, days: list[date]) -> None:
        key = KEYS[entity]
        newest = set(pq.read_table(self.source_dir(entity) / f"{days[-1]}.parquet", columns=[key])
                     .column(key).to_pylist())
        for d in days[:-1]:
            keys = pq.read_table(self.source_dir(entity) / f"{d}.parquet", columns=[key]).column(key).to_pylist()
            lost = [k for k in keys if k not in newest]
            if lost:
                raise ValueError(f"{entity} snapshot {d} has {len(lost)} key(s) that the newer snapshot "
                                 f"{days[-1]} lacks (e.g. {lost[0]!r}); a snapshot must hold every entity "
                                 "that exists at its time")

    # ----------------------------------------------------------------------------------------- reads

    def service_name(self, entity: EntityName, service: str | None = None,
                     role: Literal["training", "serving"] = "training") -> str:
        """A full service name: ``None`` -> ``<entity>_<role>_<FEATURE_SERVICE_VERSION>``, ``"v2"`` -> ``<entity>_<role>_v2``."""
        _check_entity(entity)
        if service is None:
            return f"{entity}_{role}_{self.FEATURE_SERVICE_VERSION}"
        if re.fullmatch(r"v\d+", service):
            return f"{entity}_{role}_{service}"
        return service

    def _service(self, entity: str, service: str | None, role: str):
        name = self.service_name(entity, service, role)  # type: ignore[arg-type]
        svc = self._services.get(name)
        if svc is None:
            try:
                svc = self.store.get_feature_service(name)
            except Exception as exc:  # feast raises FeatureServiceNotFoundException
                known = sorted(s.name for s in self.store.list_feature_services())
                raise ValueError(f"unknown feature service {name!r}; registered: {known} (did you apply()?)") from exc
            self._services[name] = svc
        views = {p.name for p in svc.feature_view_projections}
        if f"{entity}_features" not in views or any(not v.startswith(f"{entity}_") for v in views):
            raise ValueError(f"feature service {name!r} reads {sorted(views)}, not the {entity} features")
        return svc

    @staticmethod
    def _fields(svc) -> list:
        return [f for p in svc.feature_view_projections for f in p.features]

    @staticmethod
    def _normalize(df: pd.DataFrame, fields: list) -> pd.DataFrame:
        from feast.types import Int64, UnixTimestamp

        for f in fields:
            if f.dtype == Int64:
                df[f.name] = pd.to_numeric(df[f.name]).astype("Int64")
            elif f.dtype == UnixTimestamp:
                df[f.name] = pd.to_datetime(df[f.name], utc=True).astype("datetime64[us, UTC]")
        return df

    def feature_names(self, entity: EntityName, service: str | None = None,
                      role: Literal["training", "serving"] = "training") -> list[str]:
        return [f.name for f in self._fields(self._service(entity, service, role))]

    def historical_features(
        self, entity_df: pd.DataFrame, entity: EntityName, service: str | None = None
    ) -> pd.DataFrame:
        """Point-in-time join: for every row, the newest snapshot with ``event_timestamp`` not after the
        row's, within the view's TTL (nulls when there is none).

        ``entity_df`` has the key column and ``event_timestamp`` (tz-aware). Returns ``entity_df``'s rows in
        its order and index, with the service's feature columns appended (``feature_ts`` tells which
        snapshot a row got). ``service`` defaults to ``<entity>_training_<FEATURE_SERVICE_VERSION>``.
        """
        key = KEYS[_check_entity(entity)]
        missing = [c for c in (key, EVENT_TIMESTAMP) if c not in entity_df.columns]
        if missing:
            raise ValueError(f"entity_df lacks column(s) {missing}; it needs {key!r} and {EVENT_TIMESTAMP!r}")
        ts = pd.to_datetime(entity_df[EVENT_TIMESTAMP])
        if ts.dt.tz is None:
            raise ValueError(f"entity_df.{EVENT_TIMESTAMP} must be timezone-aware (UTC)")
        svc = self._service(entity, service, "training")
        fields = self._fields(svc)
        names = [f.name for f in fields]
        clash = sorted(set(names) & (set(entity_df.columns) - {key, EVENT_TIMESTAMP}))
        if clash:
            raise ValueError(f"entity_df columns {clash} would be overwritten by features")
        out = entity_df.copy()
        if entity_df.empty:
            for n in names:
                out[n] = pd.Series(dtype=object)
            return self._normalize(out, fields)
        frame = pd.DataFrame({
            key: entity_df[key].astype(str).to_numpy(),
            EVENT_TIMESTAMP: ts.dt.tz_convert("UTC").reset_index(drop=True),
            _ROW: np.arange(len(entity_df)),
        })
        joined = self.store.get_historical_features(entity_df=frame, features=svc).to_df()
        if len(joined) != len(frame):
            raise RuntimeError(f"point-in-time join returned {len(joined)} rows for {len(frame)} entity rows")
        # Feast does not keep row order: put rows back by their row number.
        joined = joined.set_index(_ROW).reindex(np.arange(len(frame)))
        for n in names:
            out[n] = joined[n].to_numpy()
        return self._normalize(out, fields)

    def online_features(
        self, ids: Sequence[str], entity: EntityName, service: str | None = None
    ) -> pd.DataFrame:
        """The latest materialized features of ``ids`` (in that order; nulls for unknown ids).

        ``service`` defaults to ``<entity>_serving_<FEATURE_SERVICE_VERSION>``.
        """
        key = KEYS[_check_entity(entity)]
        svc = self._service(entity, service, "serving")
        fields = self._fields(svc)
        names = [f.name for f in fields]
        ids = [str(i) for i in ids]
        if not ids:
            return self._normalize(pd.DataFrame({key: [], **{n: [] for n in names}}), fields)
        resp = self.store.get_online_features(features=svc, entity_rows=[{key: i} for i in ids]).to_df()
        out = resp[[key, *names]].reset_index(drop=True)
        return self._normalize(out, fields)


__all__ = ["ENTITIES", "FEATURE_SERVICE_VERSION", "FeatureRepo", "KEYS", "arrow_schema", "compute_features"]
