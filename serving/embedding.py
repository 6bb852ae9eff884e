"""Batch document embedding into a file on disk, so memory stays bounded by one batch.

The document tower embeds the corpus batch by batch (featurizing one batch at a time too); each batch goes
straight into a float32 ``[n, dim]`` memory-mapped file. The index build and the validation then read that
file in chunks, and the operating system pages it in and out as needed: no step holds all embeddings and
their featurized inputs at once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
from tqdm.auto import tqdm


class DocumentEmbedder(Protocol):
    def embed_documents(self, frame: pd.DataFrame, batch_size: int = ...) -> np.ndarray: ...


def embed_documents_to_file(
    model: DocumentEmbedder,
    corpus: pd.DataFrame,
    path: Path,
    dim: int,
    batch_size: int = 8192,
    progress: bool = True,
) -> np.memmap:
    """Embed ``corpus`` rows in order into ``path`` and return the file opened read-only ([n, dim] float32).

    The file is written under a temporary name and renamed when complete, so a crashed run never leaves a
    partial embeddings file that looks finished.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(corpus)
    if n == 0:
        raise ValueError("the corpus is empty: nothing to embed (did the selection filters remove everything?)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
    try:
        with tqdm(total=n, desc="embed documents", unit="doc", disable=not progress) as bar:
            for start in range(0, n, batch_size):
                stop = min(n, start + batch_size)
                vecs = model.embed_documents(corpus.iloc[start:stop], batch_size=batch_size)
                if vecs.shape != (stop - start, dim):
                    raise ValueError(f"the document tower returned shape {vecs.shape}, expected {(stop - start, dim)}")
                out[start:stop] = vecs
                bar.update(stop - start)
        out.flush()
        del out
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return np.load(path, mmap_mode="r")


__all__ = ["embed_documents_to_file"]
