"""Which input columns each tower reads, and the two naming conventions of document features.

Convention: a **document table** (one row per ``doc_id``: the corpus for mixed negatives, evaluation and
batch embedding) uses the canonical, unprefixed names of ``ingest.contract.DOCUMENTS`` plus the document
feature columns of ``features.schema`` (``title``, ``city``, ``member_cities``, ``member_cities_weights``,
``member_count``, ...). A **training example** carries the same features prefixed ``doc_`` (``doc_title``,
``doc_city``, ...; ``doc_type`` keeps its name), as ``features.schema.doc_column`` defines.
:func:`to_document_columns` and :func:`to_example_columns` convert one into the other, and
:func:`documents_from_examples` builds a document table from examples.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from features.schema import (
    DOC_CATEGORICAL,
    DOC_MULTI,
    DOC_NUMERIC,
    DOC_TEXT,
    SEARCHER_CATEGORICAL,
    SEARCHER_MULTI,
    SEARCHER_NUMERIC,
    doc_column,
    searcher_column,
    weights_of,
)
from models.config import ModelConfig

QUERY_TEXT = "query"
DOC_ID = "doc_id"

# Feature kind of each context column: columns of one kind share hash salts, so a searcher's city and a
# document's member city hash to the same value (within a tower's table, or across shared tables).
_KIND = {
    "city": "city", "region": "region", "country": "country", "language": "language",
    "clusters": "cluster", "member_cities": "city", "member_clusters": "cluster", "doc_type": "doc_type",
    "history": "doc", "doc_id": "doc", "searcher_id": "searcher", "profile": "profile", "tags": "tag",
}
# Kinds whose values are ids with a learned vocabulary (the min-frequency rule of ModelConfig.id_min_count).
ID_KINDS = ("doc", "searcher")
_GROUP = {
    "city": "location", "region": "location", "country": "location", "language": "location",
    "member_cities": "location", "clusters": "social", "member_clusters": "social", "doc_type": "doc_type",
    "friend_count": "counts", "member_count": "counts", "active_members_30d": "counts",
    "history": "history", "doc_id": "ids", "searcher_id": "ids", "profile": "profile", "tags": "tags",
}


@dataclass(frozen=True)
class ContextField:
    column: str  # column name in the frame the tower reads
    kind: str  # hash salt
    multi: bool  # a list column with an aligned ``<column>_weights`` column

    @property
    def weights_column(self) -> str:
        return weights_of(self.column)


@dataclass(frozen=True)
class TowerColumns:
    """Inputs of one tower, in the order they are concatenated."""

    text: tuple[str, ...]
    context: tuple[ContextField, ...]
    numeric: tuple[str, ...]

    def required(self) -> list[str]:
        cols = list(self.text) + [f.column for f in self.context] + list(self.numeric)
        return cols + [f.weights_column for f in self.context if f.multi]


def _enabled(cfg: ModelConfig, name: str) -> bool:
    return cfg.use_context and bool(getattr(cfg, _GROUP[name]))


def query_columns(cfg: ModelConfig) -> TowerColumns:
    """Query tower inputs, named as in a training example (``query``, ``searcher_*``)."""
    ctx = [ContextField(searcher_column(n), _KIND[n], False) for n in SEARCHER_CATEGORICAL if _enabled(cfg, n)]
    ctx += [ContextField(searcher_column(n), _KIND[n], True) for n in SEARCHER_MULTI if _enabled(cfg, n)]
    if _enabled(cfg, "searcher_id"):
        ctx.append(ContextField("searcher_id", _KIND["searcher_id"], False))
    num = tuple(searcher_column(n) for n in SEARCHER_NUMERIC if _enabled(cfg, n))
    return TowerColumns(text=(QUERY_TEXT,), context=tuple(ctx), numeric=num)


def document_columns(cfg: ModelConfig) -> TowerColumns:
    """Document tower inputs, named as in a document table (unprefixed)."""
    text = DOC_TEXT if cfg.doc_body else DOC_TEXT[:1]
    ctx = [ContextField(n, _KIND[n], False) for n in DOC_CATEGORICAL if _enabled(cfg, n)]
    ctx += [ContextField(n, _KIND[n], True) for n in DOC_MULTI if _enabled(cfg, n)]
    if _enabled(cfg, DOC_ID):
        ctx.append(ContextField(DOC_ID, _KIND[DOC_ID], False))
    num = tuple(n for n in DOC_NUMERIC if _enabled(cfg, n))
    return TowerColumns(text=tuple(text), context=tuple(ctx), numeric=num)


def _document_feature_names() -> list[str]:
    names = list(DOC_TEXT) + list(DOC_CATEGORICAL) + list(DOC_NUMERIC)
    for n in DOC_MULTI:
        names += [n, weights_of(n)]
    return names


def to_example_columns(documents: pd.DataFrame) -> pd.DataFrame:
    """Document table -> example convention (``title`` -> ``doc_title``; ``doc_id``/``doc_type`` kept)."""
    mapping = {n: doc_column(n) for n in _document_feature_names() if n in documents.columns}
    return documents.rename(columns=mapping)


def to_document_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Example convention -> document table names; a frame already unprefixed is returned as is."""
    mapping = {doc_column(n): n for n in _document_feature_names() if doc_column(n) != n}
    present = {k: v for k, v in mapping.items() if k in frame.columns}
    if not present:
        return frame
    clashes = [v for v in present.values() if v in frame.columns]
    if clashes:
        raise ValueError(
            f"frame has both prefixed and unprefixed document columns {clashes}; keep one convention"
        )
    return frame.rename(columns=present)


def documents_from_examples(examples: pd.DataFrame) -> pd.DataFrame:
    """One row per ``doc_id`` (the latest by ``ts`` when present), in document-table convention."""
    cols = [DOC_ID] + [doc_column(n) for n in _document_feature_names() if doc_column(n) in examples.columns]
    df = examples.sort_values("ts", kind="stable") if "ts" in examples.columns else examples
    df = df[cols].drop_duplicates(DOC_ID, keep="last").reset_index(drop=True)
    return to_document_columns(df)


def check_columns(frame: pd.DataFrame, cols: TowerColumns, what: str) -> None:
    """Raise a ValueError naming the missing columns and how to switch their feature group off."""
    missing = [c for c in cols.required() if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{what} frame lacks column(s) {missing}; present: {list(frame.columns)}. Provide them "
            "(None/NaN/empty lists are fine: they map to the unknown slot) or switch their feature group "
            "off in ModelConfig (use_context, location, social, counts, doc_type, doc_body, ids, history, profile, "
            "tags)"
        )
