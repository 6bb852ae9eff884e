"""Published document indexes: one artifact of kind ``index`` per dataset, with its doc-id mapping and manifest.

A version's files::

    index/index.faiss   the FAISS index (ids are int64 positions 0..n-1)
    index/index.json    its IndexConfig and counts (written by EmbeddingIndex.save)
    docs.parquet        position -> doc_id, title, doc_type (for display and for mapping results back)
    rescore.npy         only for a cascade model: the second stage's document vectors, row i = position i
    terms.parquet       the term index: posting lists of the documents' terms over the same positions

and its manifest metadata is an :class:`IndexManifest`: which model version embedded the documents, which
feature service and snapshot fed them, the selection report, the index parameters and stats, the counts and the
validation figures. Publishing goes through :class:`infra.storage.ArtifactStore`, so readers see the previous
version until the new one is complete, and earlier versions stay for rollback (:func:`rollback_index`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from ann.index import EmbeddingIndex
from infra.atomic import atomic_directory
from infra.storage import ArtifactNotFoundError, ArtifactStore, ArtifactVersion
from serving.index_validation import CurrentVersion
from serving.terms import TERMS_FILE, TermIndex  # the term index over the same positions

INDEX_KIND = "index"
INDEX_DIR = "index"
DOCS_FILE = "docs.parquet"
RESCORE_FILE = "rescore.npy"  # a cascade's second-stage document vectors, rows = positions
POSITION = "position"
DOC_MAP_COLUMNS = (POSITION, "doc_id", "title", "doc_type")
MANIFEST_FORMAT = 1


class IndexArtifactError(ValueError):
    """A staged or fetched index artifact whose files do not belong together."""


class IndexNotPublishedError(LookupError):
    """No current index for a dataset (or no such version)."""


class ModelRef(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    version: str
    ref: str


class IndexManifest(BaseModel):
    """What made a published index: the metadata of its artifact version (the config travels with it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: int = MANIFEST_FORMAT
    dataset: str
    as_of: str = Field(description="ISO time the documents were selected as of")
    snapshot_day: str = Field(description="day of the document feature snapshot that fed the embeddings")
    model: ModelRef
    feature_service: str = Field(description="feature service version the model was trained on (e.g. v1)")
    selection: dict[str, Any] = Field(description="SelectionReport: documents removed by each filter")
    index_config: dict[str, Any] = Field(description="the resolved IndexConfig")
    stats: dict[str, Any] = Field(description="IndexStats: kind, sizes, list imbalance")
    counts: dict[str, int] = Field(description="canonical, selected, without_snapshot, indexed documents")
    type_counts: dict[str, int] | None = Field(None, description="indexed documents per doc_type")
    validation: dict[str, Any] = Field(description="IndexValidation: ANN recall against exact search, ...")
    terms: dict[str, Any] | None = Field(None, description="term index stats (terms, postings, per field)")
    ann_tuning: dict[str, Any] | None = Field(
        None, description="TuningResult: the recall/cost curve over nprobe and the chosen default")
    embed_seconds: float | None = None
    build_seconds: float | None = None
    flow_run_id: str | None = None


# --------------------------------------------------------------------------------------------- doc map


def doc_map_frame(documents: pd.DataFrame) -> pd.DataFrame:
    """The mapping of a corpus in index order: position i is the i-th row of ``documents``."""
    missing = [c for c in ("doc_id", "title") if c not in documents.columns]
    if missing:
        raise IndexArtifactError(f"documents lack column(s) {missing} needed for the doc-id mapping")
    n = len(documents)
    return pd.DataFrame({
        POSITION: np.arange(n, dtype=np.int64),
        "doc_id": documents["doc_id"].astype(str).to_numpy(),
        "title": documents["title"].fillna("").astype(str).to_numpy(),
        "doc_type": (documents["doc_type"].fillna("").astype(str).to_numpy() if "doc_type" in documents.columns
                     else np.full(n, "", dtype=object)),
    })


def read_doc_map(path: Path) -> pd.DataFrame:
    return pq.read_table(path).to_pandas()


def _check_doc_map(doc_map: pd.DataFrame, index: EmbeddingIndex, where: str) -> None:
    missing = [c for c in DOC_MAP_COLUMNS if c not in doc_map.columns]
    if missing:
        raise IndexArtifactError(f"{where}: {DOCS_FILE} lacks column(s) {missing}")
    n = len(doc_map)
    if index.ntotal != n:
        raise IndexArtifactError(f"{where}: the index holds {index.ntotal} vectors but {DOCS_FILE} maps {n}")
    if not np.array_equal(doc_map[POSITION].to_numpy(), np.arange(n)):
        raise IndexArtifactError(f"{where}: {DOCS_FILE} positions are not 0..{n - 1} in order")
    if not np.array_equal(np.sort(index.ids()), np.arange(n)):
        raise IndexArtifactError(f"{where}: index ids are not the positions 0..{n - 1}")
    if doc_map["doc_id"].duplicated().any():
        dup = doc_map.loc[doc_map["doc_id"].duplicated(), "doc_id"].iloc[0]
        raise IndexArtifactError(f"{where}: doc_id {dup!r} appears twice in {DOCS_FILE}")


# --------------------------------------------------------------------------------------------- staging


def stage_index(index: EmbeddingIndex, doc_map: pd.DataFrame, dest: Path, rescore: np.ndarray | None = None,
                terms: TermIndex | None = None) -> Path:
    """Write an artifact directory (index + mapping, + the term index, + a cascade's second-stage vectors)
    at ``dest``: built under a temp name, then renamed."""
    _check_doc_map(doc_map, index, "staged index")
    _check_rescore(rescore, len(doc_map), "staged index")
    if terms is not None:
        _check_terms(terms, len(doc_map), "staged index")
    dest = Path(dest)
    with atomic_directory(dest, marker=DOCS_FILE) as tmp:  # never over a directory not ours
        index.save(tmp / INDEX_DIR)
        if terms is not None:
            terms.save(tmp / TERMS_FILE)
        pq.write_table(pa.Table.from_pandas(doc_map[list(DOC_MAP_COLUMNS)], preserve_index=False), tmp / DOCS_FILE)
        if rescore is not None:
            out = np.lib.format.open_memmap(tmp / RESCORE_FILE, mode="w+", dtype=np.float32, shape=rescore.shape)
            for s in range(0, len(rescore), 100_000):
                out[s : s + 100_000] = rescore[s : s + 100_000]
            out.flush()
            del out
    return dest


def _check_rescore(rescore: np.ndarray | None, n: int, where: str) -> None:
    if rescore is not None and (rescore.ndim != 2 or rescore.shape[0] != n):
        raise IndexArtifactError(f"{where}: {RESCORE_FILE} has shape {rescore.shape}, expected ({n}, dim)")


def _check_terms(terms: TermIndex, n: int, where: str) -> None:
    """The term index covers exactly the indexed documents, and each has terms (at least its type)."""
    if terms.n_documents != n:
        raise IndexArtifactError(f"{where}: the term index covers {terms.n_documents} documents, the index {n}")
    top = max((p.max() for p in terms.postings.values() if len(p)), default=-1)
    if top >= n:
        raise IndexArtifactError(f"{where}: a posting list names position {top}, past the {n} documents")
    covered = terms.covered()
    if covered != n:
        raise IndexArtifactError(f"{where}: {n - covered} of {n} documents have no term in the term index")


def _load_terms(root: Path) -> TermIndex | None:
    path = Path(root) / TERMS_FILE
    return TermIndex.load(path) if path.is_file() else None


def _load_rescore(root: Path) -> np.ndarray | None:
    path = Path(root) / RESCORE_FILE
    return np.load(path, mmap_mode="r") if path.is_file() else None


def check_staged(src: Path) -> None:
    """The publish gate on the local files: the index loads and its ids are exactly the mapping's positions."""
    src = Path(src)
    if not (src / DOCS_FILE).is_file():
        raise IndexArtifactError(f"{src} holds no {DOCS_FILE}: not a staged index")
    doc_map = read_doc_map(src / DOCS_FILE)
    _check_doc_map(doc_map, EmbeddingIndex.load(src / INDEX_DIR), str(src))
    _check_rescore(_load_rescore(src), len(doc_map), str(src))
    terms = _load_terms(src)
    if terms is not None:
        _check_terms(terms, len(doc_map), str(src))


def staged_size(src: Path) -> int:
    return sum(p.stat().st_size for p in Path(src).rglob("*") if p.is_file())


# --------------------------------------------------------------------------------------------- publish / load


def publish_index(store: ArtifactStore, dataset: str, src: Path, manifest: IndexManifest) -> ArtifactVersion:
    """Upload a staged directory as a new version of ``index/<dataset>`` and make it current.

    The files are checked first (:func:`check_staged`); any failure before the store moves its CURRENT
    pointer (a bad file, an upload error) leaves the previous version current.
    """
    return store.publish(INDEX_KIND, dataset, Path(src), manifest.model_dump(mode="json"), validate=check_staged)


@dataclass
class PublishedIndex:
    """A fetched, loaded index version."""

    index: EmbeddingIndex
    doc_map: pd.DataFrame
    manifest: IndexManifest
    version: ArtifactVersion
    path: Path
    rescore: np.ndarray | None = None  # a cascade's second-stage document vectors (memory-mapped)
    terms: TermIndex | None = None  # when the version has one


def not_published_message(dataset: str, store: ArtifactStore, version: str | None = None) -> str:
    what = f"version {version!r} of the index" if version else "published index"
    return (f"no {what} for dataset {dataset!r} in {store.backend.describe()}; "
            f"run 'ebr rebuild-index --dataset {dataset}' first")


def current_index(dataset: str, store: ArtifactStore | None = None, version: str | None = None) -> ArtifactVersion:
    """The manifest of the current (or a given) index version, without downloading the files."""
    store = store or ArtifactStore.from_settings()
    try:
        return store.get(INDEX_KIND, dataset, version)
    except ArtifactNotFoundError as e:
        raise IndexNotPublishedError(f"{not_published_message(dataset, store, version)} ({e})") from e


def current_version(dataset: str, store: ArtifactStore | None = None) -> CurrentVersion | None:
    """What a new index is compared with (:class:`serving.index_validation.CurrentVersion`): the current
    version's ref, indexed documents per type and validated ANN recall; None before the first publish."""
    try:
        av = current_index(dataset, store)
    except IndexNotPublishedError:
        return None
    m = av.metadata or {}
    counts = m.get("type_counts") or {"all": int((m.get("counts") or {}).get("indexed", 0))}
    validation = m.get("validation") or {}
    return CurrentVersion(av.ref, {str(k): int(v) for k, v in counts.items()},
                          recall_at_k=validation.get("recall_at_k"), k=validation.get("k"),
                          kind=(m.get("stats") or {}).get("kind"),
                          held_out_recall_at_k=validation.get("held_out_recall_at_k"))


def load_index(dataset: str, store: ArtifactStore | None = None, version: str | None = None) -> PublishedIndex:
    """Fetch (verified against the manifest's sha256, cached locally) and load an index version."""
    store = store or ArtifactStore.from_settings()
    av = current_index(dataset, store, version)
    local = store.fetch(INDEX_KIND, dataset, av.version)
    index = EmbeddingIndex.load(local / INDEX_DIR)
    doc_map = read_doc_map(local / DOCS_FILE)
    _check_doc_map(doc_map, index, av.ref)
    rescore = _load_rescore(local)
    _check_rescore(rescore, len(doc_map), av.ref)
    terms = _load_terms(local)
    if terms is not None:
        _check_terms(terms, len(doc_map), av.ref)
    return PublishedIndex(index, doc_map, IndexManifest.model_validate(av.metadata), av, local, rescore, terms)


def rollback_index(dataset: str, version: str, store: ArtifactStore | None = None) -> ArtifactVersion:
    """Make an earlier complete version current again."""
    store = store or ArtifactStore.from_settings()
    return store.set_current(INDEX_KIND, dataset, version)


__all__ = [
    "DOCS_FILE",
    "INDEX_DIR",
    "INDEX_KIND",
    "IndexArtifactError",
    "IndexManifest",
    "IndexNotPublishedError",
    "ModelRef",
    "PublishedIndex",
    "RESCORE_FILE",
    "TERMS_FILE",
    "check_staged",
    "current_index",
    "doc_map_frame",
    "load_index",
    "publish_index",
    "read_doc_map",
    "rollback_index",
    "stage_index",
    "staged_size",
]
