"""Reading a feature service's online rows on the query path: Feast's own store call, without its response.

``FeatureStore.get_online_features`` resolves the service against the registry, groups and deduplicates the
entity rows, builds a protobuf response and converts it back to Python on every call: about 0.6 ms for one
searcher, ten times the online store's own read. :class:`OnlineReader` resolves the service once, then per
call reads each feature view's rows and converts each value as Feast's converter does:

- SQLite: the store's own query on its own table names and key encoding, on a connection of the reader
  (one per thread), without the per-row timestamp conversion of Feast's connection;
- any other store (Redis): the provider's ``online_read``, the call ``get_online_features`` ends in.

The rows are those ``get_online_features(...).to_dict()`` gives (tested on both stores).

The registry is read once, when the reader is made: a feature service changed later (a new feature view)
needs a new reader, which serving makes when it loads a new index version.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from infra.patches import feast_sqlite_table

if TYPE_CHECKING:
    from features.store import FeatureRepo


# Value kinds whose Python value is the proto field itself (scalars) or its repeated values (lists): what
# Feast's converter returns for them, without its chain of checks (a third of a batch read's time). The
# other kinds (timestamps, sets, maps, JSON, UUIDs, decimals) go through Feast's converter.
_SCALARS = frozenset({"string_val", "int64_val", "int32_val", "double_val", "float_val", "bool_val", "bytes_val"})
_LISTS = frozenset({"string_list_val", "int64_list_val", "int32_list_val", "double_list_val", "float_list_val",
                    "bool_list_val", "bytes_list_val"})


def _python_value(value, feast_converter):
    kind = value.WhichOneof("val")
    if kind is None:
        return None
    if kind in _SCALARS:
        return getattr(value, kind)
    if kind in _LISTS:
        return list(getattr(value, kind).val)
    return feast_converter(value)


class OnlineReader:
    """The online rows of one feature service for one join key (``searcher_id`` or ``doc_id``)."""

    def __init__(self, repo: FeatureRepo, service, join_key: str):
        from feast.type_map import feast_value_type_to_python_type

        store = repo.store
        self.join_key = join_key
        self._config = store.config
        self._provider = store._get_provider()  # the object get_online_features reads through
        self._to_python = feast_value_type_to_python_type
        # (feature view, the service's features of it); a projection may select a subset of a view
        self._views = []
        for projection in service.feature_view_projections:
            view = store.get_feature_view(projection.name)
            self._views.append((view, [f.name for f in projection.features]))
        self.names = [n for _, names in self._views for n in names]
        # SQLite: the store's own SELECT on a connection of this reader (one per thread), without the
        # store's per-row timestamp conversion (a quarter of a batch read); other stores: the provider.
        self._sqlite_path = repo.online_store_path if store.config.online_store.type == "sqlite" else None
        self._local = threading.local()

    def _keys(self, ids: Sequence[str]) -> list:
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        return [EntityKey(join_keys=[self.join_key], entity_values=[Value(string_val=str(i))]) for i in ids]

    def rows(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        """One dict per id, in order: feature name -> Python value (None where the store has no value)."""
        unique = list(dict.fromkeys(str(i) for i in ids))
        keys = self._keys(unique)
        reads = self._read_sqlite(keys) if self._sqlite_path is not None else self._read_provider(keys)
        by_id: dict[str, dict[str, Any]] = {i: {} for i in unique}
        to_python = self._to_python
        for (_, names), read in zip(self._views, reads):
            for i, values in zip(unique, read):
                row = by_id[i]
                for n in names:
                    v = None if values is None else values.get(n)
                    row[n] = None if v is None else _python_value(v, to_python)
        return [by_id[str(i)] for i in ids]

    def _read_provider(self, keys: list) -> list[list]:
        """Per feature view, per key: feature name -> value proto (None: no row)."""
        # a copy of the names: the Redis store appends its timestamp key to the list it is given
        return [[values for _, values in self._provider.online_read(
                    config=self._config, table=view, entity_keys=keys, requested_features=list(names))]
                for view, names in self._views]

    def _read_sqlite(self, keys: list) -> list[list]:
        """What the SQLite store's ``online_read`` returns for ``keys``: its query on its table, with its key
        encoding."""
        from feast.infra.key_encoding_utils import serialize_entity_key
        from feast.protos.feast.types.Value_pb2 import Value

        con = getattr(self._local, "con", None)
        if con is None:
            con = self._local.con = sqlite3.connect(str(self._sqlite_path), check_same_thread=False)
        config = self._config
        version = config.entity_key_serialization_version
        blobs = [serialize_entity_key(k, entity_key_serialization_version=version) for k in keys]
        out = []
        for view, _ in self._views:
            table = feast_sqlite_table(config, view)
            found: dict[bytes, dict] = {}
            for start in range(0, len(blobs), 900):  # SQLite's bound on the parameters of one statement
                part = blobs[start:start + 900]
                cur = con.execute(f"SELECT entity_key, feature_name, value FROM {table} "
                                  f"WHERE entity_key IN ({','.join('?' * len(part))})", part)
                for key, name, blob in cur.fetchall():
                    v = Value()
                    v.ParseFromString(blob)
                    found.setdefault(key, {})[name] = v
            out.append([found.get(b) for b in blobs])
        return out


__all__ = ["OnlineReader"]
