"""The term index: every indexed document as a bag of terms, posting lists as compressed bitmaps.

Terms are named as the paper names them (section 4): ``text:<token>`` (normalized words of the title and
body), ``location:<city>``, ``region:<region>``, ``country:<country>``, ``type:<doc_type>``,
``cluster:<social cluster>`` (the clusters of the document's members) and ``tag:<tag>`` where documents have
tags. A posting list is the set of index positions (the rows of the FAISS index) holding the term, as a
Roaring bitmap (pyroaring): intersections and unions of million-document lists take microseconds to
milliseconds, and the lists compress to a few bytes per posting.

The index is saved as one parquet file (term, serialized bitmap) next to the FAISS index of the same
published version, so terms and embeddings always describe the same documents.
"""

from __future__ import annotations

import re
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyroaring import BitMap

TERMS_FILE = "terms.parquet"
_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)  # runs of letters and digits
_VALUE = re.compile(r"[^\w]+", re.UNICODE)


def tokens(text: str | None) -> list[str]:
    """Normalized words of a text: lower-cased runs of letters and digits."""
    return _TOKEN.findall(str(text).lower()) if text else []


def value_term(field: str, value: str | None) -> str | None:
    """``field:value`` with the value lower-cased and every run of non-word characters as one ``_``
    (``location:menlo_park``); None for an empty value."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    v = _VALUE.sub("_", str(value).strip().lower()).strip("_")
    return f"{field}:{v}" if v else None


def as_list(cell) -> list:
    """A list-valued feature cell as a list (missing: [])."""
    if cell is None or (isinstance(cell, float) and np.isnan(cell)):
        return []
    return list(cell)


def document_terms(corpus: pd.DataFrame) -> pd.DataFrame:
    """Long frame (position, term): the terms of each corpus row (position = row order), deduplicated."""
    parts: list[tuple[np.ndarray, list[str]]] = []

    def add(positions: Iterable[int], terms: list[str]) -> None:
        parts.append((np.fromiter(positions, np.int64, len(terms)), terms))

    for col in ("title", "body"):
        if col in corpus.columns:
            toks = [tokens(t) for t in corpus[col].to_numpy(object)]
            add((i for i, ts in enumerate(toks) for _ in ts), [f"text:{t}" for ts in toks for t in ts])
    for field, col in (("location", "city"), ("region", "region"), ("country", "country"), ("type", "doc_type")):
        if col in corpus.columns:
            terms = [value_term(field, v) for v in corpus[col].to_numpy(object)]
            keep = [i for i, t in enumerate(terms) if t]
            add(keep, [t for t in terms if t])
    for field, col in (("cluster", "member_clusters"), ("tag", "tags")):
        if col in corpus.columns:
            vals = [[value_term(field, v) for v in as_list(c)] for c in corpus[col].to_numpy(object)]
            add((i for i, vs in enumerate(vals) for v in vs if v), [v for vs in vals for v in vs if v])
    if not parts:
        return pd.DataFrame({"position": np.zeros(0, np.int64), "term": pd.Series([], dtype=object)})
    frame = pd.DataFrame({"position": np.concatenate([p for p, _ in parts]),
                          "term": [t for _, ts in parts for t in ts]})
    return frame.drop_duplicates().reset_index(drop=True)


@dataclass
class TermIndex:
    """Posting lists (term -> bitmap of index positions) over ``n_documents`` documents."""

    postings: dict[str, BitMap]
    n_documents: int

    @classmethod
    def build(cls, corpus: pd.DataFrame) -> "TermIndex":
        """The term index of a corpus in index order (row i = index position i)."""
        long = document_terms(corpus)
        postings: dict[str, BitMap] = {}
        if len(long):
            long = long.sort_values(["term", "position"], kind="stable")
            terms = long["term"].to_numpy(object)
            pos = long["position"].to_numpy(np.uint32)
            starts = np.flatnonzero(np.r_[True, terms[1:] != terms[:-1]])
            ends = np.r_[starts[1:], len(terms)]
            for s, e in zip(starts, ends):
                b = BitMap(array("I", pos[s:e].tobytes()))
                b.run_optimize()  # run containers for dense lists (type:, country:)
                postings[terms[s]] = b
        return cls(postings, len(corpus))

    def get(self, term: str) -> BitMap:
        """The posting list of ``term`` (empty when no document has it)."""
        return self.postings.get(term, BitMap())

    def universe(self) -> BitMap:
        out = BitMap()
        out.add_range(0, self.n_documents)
        return out

    @property
    def n_terms(self) -> int:
        return len(self.postings)

    @property
    def n_postings(self) -> int:
        return sum(len(b) for b in self.postings.values())

    def covered(self) -> int:
        """Documents holding at least one term."""
        return len(BitMap.union(*self.postings.values())) if self.postings else 0

    def stats(self) -> dict:
        per_field: dict[str, int] = {}
        for t in self.postings:
            f = t.split(":", 1)[0]
            per_field[f] = per_field.get(f, 0) + 1
        return {"documents": self.n_documents, "terms": self.n_terms, "postings": self.n_postings,
                "documents_with_terms": self.covered(), "terms_per_field": per_field,
                "bytes": sum(len(b.serialize()) for b in self.postings.values())}

    # -- persistence
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        terms = sorted(self.postings)
        table = pa.table({"term": pa.array(terms, pa.string()),
                          "postings": pa.array([self.postings[t].serialize() for t in terms], pa.binary())})
        pq.write_table(table.replace_schema_metadata({"n_documents": str(self.n_documents)}), path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "TermIndex":
        table = pq.read_table(path)
        meta = table.schema.metadata or {}
        if b"n_documents" not in meta:
            raise ValueError(f"{path} is not a term index (no n_documents in its metadata)")
        terms = table.column("term").to_pylist()
        blobs = table.column("postings").to_pylist()
        return cls({t: BitMap.deserialize(b) for t, b in zip(terms, blobs)}, int(meta[b"n_documents"]))


__all__ = ["TERMS_FILE", "TermIndex", "as_list", "document_terms", "tokens", "value_term"]
