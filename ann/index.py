"""The document embedding index: FAISS IVF-PQ (or exact flat) over cosine similarity, with int64 doc ids.

This is the serving layer of the paper's ANN section: each document vector is assigned to a coarse cluster
(IVF, ``nlist`` clusters) and its residual is product-quantized (PQ, ``pq_m`` bytes per vector); a query
scans the ``nprobe`` nearest clusters. Two query modes exist: top-K, and the radius mode the paper prefers
in production (all documents with cosine >= radius). ``refine`` keeps the full vectors next to the codes
and re-ranks the ANN candidates exactly, which buys most of the recall PQ loses for little time.

Vectors are L2-normalized on the way in, so inner product is cosine. The FAISS object is always an
``IndexIDMap2`` around one of: ``IndexFlatIP`` (exact), ``IndexIVFPQ``, or ``IndexRefineFlat(IndexIVFPQ)``,
so a serialized index is an ordinary FAISS index that carries the document ids. The config travels with it
(``save`` writes ``index.faiss`` + ``index.json``; ``to_bytes`` packs both).
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Literal

import faiss
import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from infra.atomic import atomic_directory

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
META_FILE = "index.json"
_MAGIC = b"EBRINDEX"

# Rules of IndexConfig.for_corpus, named so the docs and the code say the same thing.
FLAT_BELOW = 20_000  # exact search over fewer vectors than this costs well under a millisecond per query
NLIST_PER_SQRT_N = 4  # nlist ~ 4 * sqrt(n): the usual IVF balance between coarse and list scan cost
NLIST_MIN, NLIST_MAX = 16, 65_536
MIN_POINTS_PER_CENTROID = 39  # k-means (FAISS) warns below 39 training points per centroid
DIMS_PER_PQ_BYTE = 4  # one PQ sub-quantizer (one byte at nbits=8) per 4 dimensions: d=64 -> 16 bytes
PQ_M_MAX = 64
LISTS_PER_PROBE = 32  # default nprobe = nlist / 32: recall@10 ~0.9 on hard clustered data (bench/index_bench.py)
NPROBE_MIN, NPROBE_MAX = 8, 256


@contextmanager
def blas_distances(threshold: int = 20) -> Iterator[None]:
    """Route FAISS brute-force distance batches of >= ``threshold`` queries through BLAS for a while.

    FAISS 1.15 only uses BLAS from 128,000 queries on. Below that its SIMD loop was several times slower
    here for PQ training on small samples (10-20k vectors: 5-10x) and never clearly faster on larger ones;
    the build also adds in batches smaller than the threshold, which the plain one-shot ``add`` would not.
    """
    previous = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = threshold
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold = previous


class EmbeddingIndexError(ValueError):
    """Bad input to the index (shape, values, ids, parameters)."""


class IndexConfig(BaseModel):
    """How to build and query an index. ``None`` fields are filled by :meth:`resolve` from the corpus size."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["auto", "flat", "ivfpq"] = Field(
        "auto", description="auto: flat below flat_below documents, IVF-PQ above"
    )
    flat_below: int = Field(FLAT_BELOW, ge=1, description="auto picks an exact flat index below this size")
    nlist: int | None = Field(None, ge=1, description="coarse clusters (IVF lists)")
    pq_m: int | None = Field(None, ge=1, description="PQ sub-quantizers = bytes per vector at nbits=8")
    nbits: int = Field(8, ge=4, le=12, description="bits per PQ sub-quantizer code")
    nprobe: int | None = Field(None, ge=1, description="default clusters scanned per query")
    refine: bool = Field(True, description="keep full vectors and re-rank ANN candidates exactly")
    refine_k_factor: float = Field(4.0, ge=1.0, description="ANN candidates per result re-ranked by refine")
    range_slack: float = Field(
        0.05, ge=0.0, le=2.0,
        description="with refine, radius search collects PQ candidates down to radius - slack, "
        "then keeps those whose exact cosine >= radius",
    )
    subset_exact_max: int = Field(
        2048, ge=0,
        description="subset searches over at most this many ids score them exactly (when vectors are "
        "stored) instead of probing IVF lists, which could miss a small subset entirely",
    )
    train_size: int = Field(200_000, ge=1, description="cap on the k-means/PQ training sample")
    add_batch_size: int = Field(100_000, ge=1, description="vectors added per batch")
    seed: int = Field(0, ge=0, description="training sample and k-means seed")
    metric: Literal["cosine"] = Field("cosine", description="inner product over L2-normalized vectors")

    @classmethod
    def for_corpus(cls, n: int, dim: int, **overrides: Any) -> "IndexConfig":
        """Defaults that follow the corpus size (see :meth:`resolve`); ``overrides`` win."""
        return cls(**overrides).resolve(n, dim)

    def resolve(self, n: int, dim: int) -> "IndexConfig":
        """Fill every ``None`` field for a corpus of ``n`` vectors of dimension ``dim``.

        Rules:
        - kind: ``flat`` when n < flat_below (exact is cheap there), else ``ivfpq``;
        - nlist: round(4 * sqrt(n)), at most n // 39 (so k-means gets >= 39 points per centroid),
          bounded to [16, 65536] (and to n);
        - pq_m: the largest divisor of dim that is <= dim / 4 (one byte per 4 dimensions), at most 64;
        - nprobe: nlist / 32, i.e. scan about 3% of the lists, bounded to [8, 256] (and to nlist);
        - train_size: at least max(39 * nlist, 39 * 2**nbits) so both k-means have enough points,
          otherwise the configured cap; never more than n.
        """
        if n <= 0:
            raise EmbeddingIndexError(f"cannot build an index over an empty corpus (n={n}); need n >= 1")
        if dim <= 0:
            raise EmbeddingIndexError(f"dimension must be >= 1, got {dim}")
        kind = self.kind if self.kind != "auto" else ("flat" if n < self.flat_below else "ivfpq")
        if kind == "flat":
            return self.model_copy(update={"kind": "flat"})
        nlist = self.nlist
        if nlist is None:
            nlist = round(NLIST_PER_SQRT_N * math.sqrt(n))
            nlist = min(nlist, n // MIN_POINTS_PER_CENTROID)
            nlist = max(NLIST_MIN, min(NLIST_MAX, nlist))
            nlist = max(1, min(nlist, n))
        pq_m = self.pq_m
        if pq_m is None:
            target = max(1, min(PQ_M_MAX, dim // DIMS_PER_PQ_BYTE))
            pq_m = max(m for m in range(1, target + 1) if dim % m == 0)
        if dim % pq_m:
            divisors = [m for m in range(1, dim + 1) if dim % m == 0]
            raise EmbeddingIndexError(f"pq_m={pq_m} must divide dim={dim}; allowed: {divisors}")
        nprobe = self.nprobe
        if nprobe is None:
            nprobe = max(NPROBE_MIN, min(NPROBE_MAX, round(nlist / LISTS_PER_PROBE)))
        nprobe = min(nprobe, nlist)
        need = max(MIN_POINTS_PER_CENTROID * nlist, MIN_POINTS_PER_CENTROID * 2**self.nbits)
        train_size = min(n, max(self.train_size, need))
        return self.model_copy(
            update={"kind": "ivfpq", "nlist": nlist, "pq_m": pq_m, "nprobe": nprobe, "train_size": train_size}
        )


@dataclass(frozen=True)
class IndexStats:
    """What an index costs; goes into index reports and manifests."""

    kind: str
    ntotal: int
    dim: int
    nlist: int | None
    pq_m: int | None
    nbits: int | None
    nprobe: int | None
    refine: bool
    code_bytes_per_vector: float  # what the ANN scan reads: PQ code, or the float vector for flat
    bytes_per_vector: float  # everything stored per document (code + id + refine vector)
    memory_bytes: int  # estimate of the whole index in RAM
    imbalance_factor: float | None  # IVF list-size imbalance (1.0 = perfectly even)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- input checks


def _as_matrix(x: Any, what: str, dim: int | None = None) -> np.ndarray:
    """A C-contiguous float32 [n, d] matrix; a 1-D vector becomes one row. Values are checked by _normalized."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
        raise EmbeddingIndexError(f"{what} must be a numeric array (float32 preferred), got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise EmbeddingIndexError(f"{what} must be a 2-D array [n, dim], got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise EmbeddingIndexError(f"{what} have dimension {arr.shape[1]}, the index has dimension {dim}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _normalized(arr: np.ndarray, what: str) -> np.ndarray:
    """Rows of a float32 [n, d] matrix scaled to unit length (times the reciprocal norm, as FAISS does).

    Kept lean because every query goes through it: a NaN, inf or all-zero row shows up in the squared
    norms, and only then are the rows inspected for a precise message.
    """
    if arr.shape[0] == 1:  # the single-query path: plain floats are cheaper than array reductions
        sq = float(np.dot(arr[0], arr[0]))
        if 0.0 < sq < math.inf:
            return arr * np.float32(1.0 / math.sqrt(sq))
        sq_norms = np.array([sq])
    else:
        sq_norms = np.einsum("ij,ij->i", arr, arr)
        if len(sq_norms) == 0 or (0.0 < sq_norms.min() and sq_norms.max() < math.inf):
            return arr * (1.0 / np.sqrt(sq_norms))[:, None]
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise EmbeddingIndexError(f"{what} contain NaN or inf values (first at row {row}); all values must be finite")
    zero = ~(sq_norms > 0)
    if zero.any():
        raise EmbeddingIndexError(
            f"{what} contain all-zero vectors (first at row {int(np.flatnonzero(zero)[0])}); "
            "cosine similarity needs non-zero vectors"
        )
    row = int(np.flatnonzero(~(sq_norms < math.inf))[0])
    raise EmbeddingIndexError(f"{what} row {row} is too large to normalize in float32; rescale the vectors")


def _as_ids(ids: Any, n: int) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.dtype.kind not in "iu":
        raise EmbeddingIndexError(f"ids must be an int64 array, got dtype {arr.dtype}")
    if arr.ndim != 1 or arr.shape[0] != n:
        raise EmbeddingIndexError(f"ids must be 1-D with one id per vector ({n}), got shape {arr.shape}")
    if arr.dtype == np.uint64 and n and arr.max() > np.iinfo(np.int64).max:
        raise EmbeddingIndexError("ids must fit in int64")
    arr = arr.astype(np.int64, copy=False)
    if n and arr.min() < 0:
        raise EmbeddingIndexError(f"ids must be >= 0 (-1 marks 'no result'), got {int(arr.min())}")
    uniq = np.unique(arr)
    if uniq.shape[0] != n:
        s = np.sort(arr)
        dup = int(s[1:][s[1:] == s[:-1]][0])
        raise EmbeddingIndexError(f"ids must be unique; {n - uniq.shape[0]} duplicate(s), e.g. {dup}")
    return np.ascontiguousarray(arr)


def _check_k(k: Any) -> int:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k <= 0:
        raise EmbeddingIndexError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _check_nprobe(nprobe: Any) -> None:
    if nprobe is not None and (not isinstance(nprobe, (int, np.integer)) or nprobe <= 0):
        raise EmbeddingIndexError(f"nprobe must be a positive integer or None, got {nprobe!r}")


# --------------------------------------------------------------------------- the index


class EmbeddingIndex:
    """A FAISS index over L2-normalized document vectors with int64 document ids.

    Build with :meth:`build`, restore with :meth:`load` / :meth:`from_bytes`. Scores are cosine
    similarities (exact for flat and for refined results, PQ approximations otherwise).
    """

    def __init__(self, index: faiss.Index, config: IndexConfig, metadata: dict[str, Any] | None = None):
        # Keep the caller's proxy: it owns the C++ object (or holds the references that keep the wrapped
        # indexes alive); a downcast copy would not, and the index would be freed under us.
        top = index
        if not isinstance(top, faiss.IndexIDMap2):
            raise EmbeddingIndexError(f"expected a FAISS IndexIDMap2, got {type(top).__name__}")
        self._top = top
        self._inner = faiss.downcast_index(top.index)
        self._base = self._inner
        self._refine_store: faiss.IndexFlat | None = None
        if isinstance(self._inner, faiss.IndexRefine):
            self._base = faiss.downcast_index(self._inner.base_index)
            self._refine_store = faiss.downcast_index(self._inner.refine_index)
        elif isinstance(self._inner, faiss.IndexFlat):
            self._refine_store = self._inner  # a flat index stores the vectors themselves
        self.config = config
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._params: dict[int, Any] = {}
        self._id_map: np.ndarray | None = None
        self._id_order: np.ndarray | None = None
        self._identity: bool | None = None

    # ----------------------------------------------------------------- construction

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        ids: np.ndarray,
        config: IndexConfig | None = None,
        *,
        metadata: dict[str, Any] | None = None,
        progress: bool = True,
    ) -> "EmbeddingIndex":
        """Normalize, train (IVF-PQ) and add ``vectors`` [n, d] under ``ids`` [n] (int64, unique, >= 0)."""
        arr = np.asarray(vectors)
        if arr.ndim != 2:
            raise EmbeddingIndexError(f"vectors must be a 2-D array [n, dim], got shape {arr.shape}")
        n, dim = arr.shape
        if n == 0:
            raise EmbeddingIndexError("cannot build an index over an empty corpus (0 vectors); need n >= 1")
        t_start = time.perf_counter()
        ids = _as_ids(ids, n)
        cfg = (config or IndexConfig()).resolve(n, dim)
        # Check every row before spending time on training.
        for start in range(0, n, cfg.add_batch_size):
            _normalized(_as_matrix(arr[start : start + cfg.add_batch_size], "vectors"), "vectors")

        if cfg.kind == "flat":
            inner: faiss.Index = faiss.IndexFlatIP(dim)
        else:
            if n < max(cfg.nlist, 2**cfg.nbits):
                raise EmbeddingIndexError(
                    f"IVF-PQ needs at least max(nlist={cfg.nlist}, 2**nbits={2**cfg.nbits}) vectors to train, "
                    f"got {n}; use kind='flat' (or 'auto') for small corpora"
                )
            quantizer = faiss.IndexFlatIP(dim)
            ivf = faiss.IndexIVFPQ(quantizer, dim, cfg.nlist, cfg.pq_m, cfg.nbits, faiss.METRIC_INNER_PRODUCT)
            ivf.cp.seed = cfg.seed
            ivf.pq.cp.seed = cfg.seed
            rng = np.random.default_rng(cfg.seed)
            sample = np.sort(rng.choice(n, size=cfg.train_size, replace=False)) if cfg.train_size < n else None
            train = arr[sample] if sample is not None else arr
            train = _normalized(_as_matrix(train, "vectors"), "vectors")
            log.info("training IVF-PQ (nlist=%d, m=%d) on %d vectors", cfg.nlist, cfg.pq_m, len(train))
            with blas_distances():
                ivf.train(train)
            del train
            inner = faiss.IndexRefineFlat(ivf) if cfg.refine else ivf
        t_trained = time.perf_counter()
        top = faiss.IndexIDMap2(inner)
        with tqdm(total=n, desc=f"index add ({cfg.kind})", unit="vec", disable=not progress) as bar, blas_distances():
            for start in range(0, n, cfg.add_batch_size):
                stop = min(n, start + cfg.add_batch_size)
                batch = _normalized(_as_matrix(arr[start:stop], "vectors"), "vectors")
                top.add_with_ids(batch, ids[start:stop])
                bar.update(stop - start)
        out = cls(top, cfg, metadata)
        out._id_map = ids.copy()
        now = time.perf_counter()
        # How long it took travels with the index (reports, rebuild-time tracking).
        out.metadata["build"] = {
            "train_seconds": round(t_trained - t_start, 3),
            "add_seconds": round(now - t_trained, 3),
            "train_size": cfg.train_size if cfg.kind == "ivfpq" else 0,
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        return out

    # ----------------------------------------------------------------- properties

    @property
    def ntotal(self) -> int:
        return int(self._top.ntotal)

    @property
    def dim(self) -> int:
        return int(self._top.d)

    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def faiss_index(self) -> faiss.Index:
        """The underlying FAISS index (an ``IndexIDMap2``), for callers that need the raw API."""
        return self._top

    def ids(self) -> np.ndarray:
        """The document ids, in insertion order."""
        if self._id_map is None:
            self._id_map = faiss.vector_to_array(self._top.id_map).astype(np.int64, copy=False)
        return self._id_map

    def __len__(self) -> int:
        return self.ntotal

    def __repr__(self) -> str:
        return f"EmbeddingIndex(kind={self.kind!r}, ntotal={self.ntotal}, dim={self.dim})"

    # ----------------------------------------------------------------- query helpers

    def _queries(self, queries: Any) -> np.ndarray:
        q = queries
        if not (
            isinstance(q, np.ndarray) and q.dtype == np.float32 and q.ndim == 2
            and q.shape[1] == self.dim and q.flags.c_contiguous
        ):
            q = _as_matrix(queries, "queries", self.dim)
        return _normalized(q, "queries")

    def _nprobe(self, nprobe: int | None) -> int:
        _check_nprobe(nprobe)
        return int(nprobe if nprobe is not None else (self.config.nprobe or 1))

    def _ivf_params(self, nprobe: int, sel: Any = None) -> Any:
        """Search parameters for the index under the id map (cached per nprobe when no selector)."""
        if self.kind == "flat":
            return faiss.SearchParameters(sel=sel) if sel is not None else None
        if sel is None and nprobe in self._params:
            return self._params[nprobe]
        # FAISS's wrappers keep the selector and nested params alive as long as the outer object.
        ivf = faiss.SearchParametersIVF(nprobe=nprobe) if sel is None else faiss.SearchParametersIVF(sel=sel, nprobe=nprobe)
        if self.config.refine:
            params = faiss.IndexRefineSearchParameters(k_factor=self.config.refine_k_factor, base_index_params=ivf)
        else:
            params = ivf
        if sel is None:
            self._params[nprobe] = params
        return params

    def _positions(self, allowed_ids: Any) -> np.ndarray:
        """Internal positions of the allowed ids that are in the index (unknown ids are ignored)."""
        allowed = np.asarray(allowed_ids)
        if allowed.dtype.kind not in "iu":
            raise EmbeddingIndexError(f"allowed_ids must be an integer (int64) array, got dtype {allowed.dtype}")
        allowed = allowed.astype(np.int64, copy=False).ravel()
        if len(allowed) > 1 and not (allowed[1:] > allowed[:-1]).all():  # a posting list is sorted already
            allowed = np.unique(allowed)
        if self._identity_ids():  # a published index: ids are the positions, nothing to translate
            lo, hi = np.searchsorted(allowed, [0, self.ntotal])
            return allowed[lo:hi]
        id_map = self.ids()
        if self._id_order is None:
            self._id_order = np.argsort(id_map, kind="stable")
        sorted_ids = id_map[self._id_order]
        at = np.searchsorted(sorted_ids, allowed)
        at_c = np.minimum(at, len(sorted_ids) - 1)
        hit = (at < len(sorted_ids)) & (sorted_ids[at_c] == allowed)
        return np.sort(self._id_order[at_c[hit]]).astype(np.int64)

    def _identity_ids(self) -> bool:
        if self._identity is None:
            self._identity = bool(np.array_equal(self.ids(), np.arange(self.ntotal, dtype=np.int64)))
        return self._identity

    def _selector(self, pos: np.ndarray) -> tuple[Any, Any]:
        """A FAISS selector of internal positions, and the buffer it reads (kept alive by the caller).

        A bitmap of ntotal bits is built in well under a millisecond at 1M documents; a hash set of a large
        subset (``IDSelectorBatch``) costs several milliseconds, so the bitmap serves all but small subsets.
        """
        if len(pos) * 64 < self.ntotal:
            return faiss.IDSelectorBatch(pos), pos
        member = np.zeros(self.ntotal, bool)
        member[pos] = True
        bits = np.packbits(member, bitorder="little")
        return faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits)), bits

    def _finish(self, scores: np.ndarray, labels: np.ndarray, translate: bool) -> tuple[np.ndarray, np.ndarray]:
        if not translate and labels.size and labels[:, -1].min() >= 0:
            return scores, labels  # FAISS pads at the end of a row: a full last column means no padding
        missing = labels < 0
        if translate:
            labels = np.where(missing, -1, self.ids()[np.where(missing, 0, labels)])
        if missing.any():
            scores = np.where(missing, -np.inf, scores).astype(np.float32)
        return scores, labels

    # ----------------------------------------------------------------- queries

    def search(self, queries: Any, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by cosine: (scores [nq, k] float32, ids [nq, k] int64), best first.

        Slots without a result (k > ntotal, or too few candidates in the probed lists) have id -1 and
        score -inf.
        """
        k = _check_k(k)
        q = self._queries(queries)
        params = self._ivf_params(self._nprobe(nprobe))
        scores, labels = self._top.search(q, k, params=params)
        return self._finish(scores, labels, translate=False)

    def search_subset(
        self, queries: Any, k: int, allowed_ids: Any, nprobe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` restricted to ``allowed_ids`` (ids not in the index are ignored).

        Large subsets use FAISS's selector inside the IVF scan (``SearchParametersIVF(sel=IDSelectorBatch)``):
        a constrained NN search, so allowed documents outside the probed lists are not found. The sparser
        the subset, the farther its nearest members, so without an explicit ``nprobe`` the default is scaled
        by ntotal / len(subset) (up to nlist): the scan then meets about as many allowed documents as an
        unrestricted search would. Subsets of at most ``subset_exact_max`` ids are scored exactly from the
        stored vectors when the index keeps them (flat, or refine), which is both exact and faster.
        """
        k = _check_k(k)
        q = self._queries(queries)
        nprobe_ = self._nprobe(nprobe)
        pos = self._positions(allowed_ids)
        if nprobe is None and self.kind == "ivfpq" and len(pos):
            nlist = self.config.nlist
            assert nlist is not None  # an IVF-PQ index's config is resolved (build, or the saved resolved one)
            nprobe_ = min(nlist, math.ceil(nprobe_ * self.ntotal / len(pos)))
        if len(pos) == 0:
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        if self._refine_store is not None and len(pos) <= self.config.subset_exact_max:
            vecs = self._refine_store.reconstruct_batch(pos)
            sims = q @ vecs.T  # [nq, len(pos)]
            kk = min(k, len(pos))
            top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
            top_s = np.take_along_axis(sims, top, axis=1)
            order = np.argsort(-top_s, axis=1, kind="stable")
            top = np.take_along_axis(top, order, axis=1)
            scores = np.full((len(q), k), -np.inf, np.float32)
            labels = np.full((len(q), k), -1, np.int64)
            scores[:, :kk] = np.take_along_axis(top_s, order, axis=1)
            labels[:, :kk] = self.ids()[pos[top]]
            return scores, labels
        sel, buffer = self._selector(pos)
        params = self._ivf_params(nprobe_, sel=sel)
        scores, labels = self._inner.search(q, k, params=params)
        del buffer  # the selector read it during the search
        return self._finish(scores, labels, translate=True)

    def cosines(self, query: Any, ids: Any) -> np.ndarray:
        """Cosine of one query [1, dim] (or [dim]) to each of ``ids`` (float32, in the given order), from
        the stored vectors (flat, or IVF-PQ with refine); NaN where the index keeps no full vectors."""
        q = self._queries(np.asarray(query, np.float32).reshape(1, -1))[0]
        ids = np.asarray(ids, np.int64)
        if self._refine_store is None or len(ids) == 0:
            return np.full(len(ids), np.nan, np.float32)
        if self._identity_ids():
            if ids.min() < 0 or ids.max() >= self.ntotal:
                raise EmbeddingIndexError("cosines(): some ids are not in the index")
            pos = ids
        else:
            if self._id_order is None:
                self._id_order = np.argsort(self.ids(), kind="stable")
            id_map = self.ids()
            at = np.searchsorted(id_map[self._id_order], ids).clip(max=len(id_map) - 1)
            pos = self._id_order[at]
            if not np.array_equal(id_map[pos], ids):
                raise EmbeddingIndexError("cosines(): some ids are not in the index")
        out = np.empty(len(ids), np.float32)
        for s in range(0, len(ids), 65_536):  # bounded memory for large matched sets
            out[s : s + 65_536] = self._refine_store.reconstruct_batch(pos[s : s + 65_536]) @ q
        return out

    def range_search(
        self, queries: Any, radius: float, nprobe: int | None = None, max_results: int | None = None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """All documents with cosine >= ``radius`` per query: a list of (ids, scores), best first.

        Flat: exact. IVF-PQ with refine: PQ candidates down to ``radius - range_slack`` from the probed
        lists, kept when their exact cosine >= radius (a subset of the exact answer). Without refine the
        PQ-approximate scores decide. ``max_results`` keeps the best ones per query.
        """
        if isinstance(radius, bool) or not isinstance(radius, (int, float, np.floating, np.integer)) or not (
            -1.0 <= float(radius) <= 1.0
        ):
            raise EmbeddingIndexError(f"radius is a cosine similarity and must be in [-1, 1], got {radius!r}")
        if max_results is not None and (not isinstance(max_results, (int, np.integer)) or max_results <= 0):
            raise EmbeddingIndexError(f"max_results must be a positive integer or None, got {max_results!r}")
        q = self._queries(queries)
        nprobe_ = self._nprobe(nprobe)
        # FAISS keeps inner products strictly above the radius; step one float below to keep ">=".
        r32 = np.float32(radius)
        below = float(np.nextafter(r32, np.float32(-np.inf)))
        if self.kind == "ivfpq" and self.config.refine:
            base_params = faiss.SearchParametersIVF(nprobe=nprobe_)
            probe_r = float(np.nextafter(np.float32(max(-1.0, float(radius) - self.config.range_slack)), np.float32(-np.inf)))
            lims, _, labels = self._base.range_search(q, probe_r, params=base_params)
            exact = np.empty(len(labels), np.float32)
            if len(labels):
                assert self._refine_store is not None  # refine: the index is an IndexRefine, which keeps the vectors
                vecs = self._refine_store.reconstruct_batch(labels)
                owner = np.repeat(np.arange(len(q)), np.diff(lims).astype(np.int64))
                exact = np.einsum("ij,ij->i", vecs, q[owner])
            keep = exact >= r32
            scores_all, ids_all = exact, self.ids()[labels] if len(labels) else labels.astype(np.int64)
        else:
            params = None if self.kind == "flat" else faiss.SearchParametersIVF(nprobe=nprobe_)
            lims, scores_all, ids_all = self._top.range_search(q, below, params=params)
            keep = None
        out: list[tuple[np.ndarray, np.ndarray]] = []
        for i in range(len(q)):
            lo, hi = int(lims[i]), int(lims[i + 1])
            s, d = scores_all[lo:hi], ids_all[lo:hi]
            if keep is not None:
                m = keep[lo:hi]
                s, d = s[m], d[m]
            order = np.argsort(-s, kind="stable")
            if max_results is not None:
                order = order[:max_results]
            out.append((d[order].astype(np.int64), s[order].astype(np.float32)))
        return out

    # ----------------------------------------------------------------- introspection

    def stats(self) -> IndexStats:
        n, d, c = self.ntotal, self.dim, self.config
        if self.kind == "flat":
            code = 4.0 * d
            per_vec = code + 8
            memory = int(n * per_vec)
            return IndexStats("flat", n, d, None, None, None, None, False, code, per_vec, memory, None)
        assert c.nlist is not None and c.pq_m is not None  # an IVF-PQ index's config is resolved
        code = c.pq_m * c.nbits / 8.0
        per_vec = code + 8 + 8 + (4.0 * d if c.refine else 0.0)  # code + list id + id map (+ vector)
        fixed = c.nlist * d * 4 + (2**c.nbits) * d * 4  # coarse centroids + PQ codebooks
        invlists = self._base.invlists
        imbalance = float(invlists.imbalance_factor()) if n else None
        return IndexStats(
            "ivfpq", n, d, c.nlist, c.pq_m, c.nbits, c.nprobe, c.refine, code, per_vec,
            int(n * per_vec + fixed), imbalance,
        )

    # ----------------------------------------------------------------- persistence

    def set_default_nprobe(self, nprobe: int) -> None:
        """The nprobe used when a search names none (saved with the index): what ANN tuning chose."""
        _check_nprobe(nprobe)
        if self.kind == "flat":
            raise EmbeddingIndexError("a flat index has no nprobe")
        self.config = self.config.model_copy(update={"nprobe": int(min(nprobe, self.config.nlist or nprobe))})

    def _meta(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "config": self.config.model_dump(),
            "dim": self.dim,
            "ntotal": self.ntotal,
            "faiss_version": faiss.__version__,
            "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "metadata": self.metadata,
        }

    @classmethod
    def _from_parts(cls, index: faiss.Index, meta: dict[str, Any], where: str) -> "EmbeddingIndex":
        if meta.get("format_version") != FORMAT_VERSION:
            raise EmbeddingIndexError(
                f"{where}: index format {meta.get('format_version')!r} is not supported; expected {FORMAT_VERSION}"
            )
        out = cls(index, IndexConfig(**meta["config"]), meta.get("metadata"))
        if out.ntotal != meta["ntotal"] or out.dim != meta["dim"]:
            raise EmbeddingIndexError(
                f"{where}: FAISS index has ntotal={out.ntotal}, dim={out.dim} but its metadata says "
                f"ntotal={meta['ntotal']}, dim={meta['dim']}; the files do not belong together"
            )
        return out

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``index.faiss`` and ``index.json`` into directory ``path``, atomically (replacing it)."""
        target = Path(path)
        with atomic_directory(target, marker=META_FILE) as tmp:  # never over a directory not ours
            faiss.write_index(self._top, str(tmp / INDEX_FILE))
            (tmp / META_FILE).write_text(json.dumps(self._meta(), indent=2, sort_keys=True, default=str))
        return target

    @classmethod
    def load(cls, path: str | os.PathLike) -> "EmbeddingIndex":
        """Read a directory written by :meth:`save`."""
        root = Path(path)
        if not (root / META_FILE).exists() or not (root / INDEX_FILE).exists():
            raise FileNotFoundError(f"{root} is not a saved index (needs {INDEX_FILE} and {META_FILE})")
        meta = json.loads((root / META_FILE).read_text())
        return cls._from_parts(faiss.read_index(str(root / INDEX_FILE)), meta, str(root))

    def to_bytes(self) -> bytes:
        """One self-describing blob: magic, JSON metadata length and text, then the serialized FAISS index."""
        meta = json.dumps(self._meta(), sort_keys=True, default=str).encode()
        blob = faiss.serialize_index(self._top)
        return b"".join([_MAGIC, struct.pack("<Q", len(meta)), meta, blob.tobytes()])

    @classmethod
    def from_bytes(cls, data: bytes) -> "EmbeddingIndex":
        if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + 8:
            raise EmbeddingIndexError("not an index blob written by EmbeddingIndex.to_bytes (bad magic)")
        start = len(_MAGIC) + 8
        (size,) = struct.unpack("<Q", data[len(_MAGIC) : start])
        meta = json.loads(data[start : start + size].decode())
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8, offset=start + size))
        return cls._from_parts(index, meta, "index blob")


# --------------------------------------------------------------------------- exact oracle


def exact_search(
    doc_vectors: np.ndarray, queries: np.ndarray, k: int, ids: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` cosine (IndexFlatIP over normalized vectors): (scores, ids or row positions)."""
    k = _check_k(k)
    docs = _normalized(_as_matrix(doc_vectors, "doc_vectors"), "doc_vectors")
    if len(docs) == 0:
        raise EmbeddingIndexError("doc_vectors is empty; need at least one document")
    q = _normalized(_as_matrix(queries, "queries", docs.shape[1]), "queries")
    flat = faiss.IndexFlatIP(docs.shape[1])
    flat.add(docs)
    with blas_distances():
        scores, labels = flat.search(q, k)
    missing = labels < 0
    if ids is not None:
        ids = _as_ids(ids, len(docs))
        labels = np.where(missing, -1, ids[np.where(missing, 0, labels)])
    scores = np.where(missing, -np.inf, scores).astype(np.float32)
    return scores, labels.astype(np.int64)


__all__ = [
    "EmbeddingIndex",
    "EmbeddingIndexError",
    "IndexConfig",
    "IndexStats",
    "blas_distances",
    "exact_search",
]
