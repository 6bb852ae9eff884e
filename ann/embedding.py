"""Batch document embedding into a file on disk, so memory stays bounded by one batch.

The document tower embeds the corpus batch by batch (featurizing one batch at a time too); each batch goes
straight into a float32 ``[n, dim]`` memory-mapped file. The index build and the validation then read that
file in chunks, and the operating system pages it in and out as needed: no step holds all embeddings and
their featurized inputs at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from infra.atomic import atomic_file


class DocumentEmbedder(Protocol):
    def embed_documents(self, frame: pd.DataFrame, batch_size: int = ...) -> np.ndarray: ...


def embed_rows(model: DocumentEmbedder, rows: pd.DataFrame, dim: int, batch_size: int) -> np.ndarray:
    """Embeddings of ``rows``, one batch of ``batch_size`` at a time: the unit of work of the nightly, in
    process or on a Dask worker (shards start on batch boundaries, so both paths form the same batches)."""
    out = np.empty((len(rows), dim), np.float32)
    for start in range(0, len(rows), batch_size):
        stop = min(len(rows), start + batch_size)
        vecs = model.embed_documents(rows.iloc[start:stop], batch_size=batch_size)
        if vecs.shape != (stop - start, dim):
            raise ValueError(f"the document tower returned shape {vecs.shape}, expected {(stop - start, dim)}")
        out[start:stop] = vecs
    return out


def shard_bounds(n: int, shards: int, batch_size: int) -> list[tuple[int, int]]:
    """``shards`` (at most) contiguous row ranges of about equal size, each starting on a batch boundary."""
    if n < 1 or shards < 1 or batch_size < 1:
        raise ValueError(f"need n, shards and batch_size >= 1, got {n}, {shards}, {batch_size}")
    batches = -(-n // batch_size)
    per = -(-batches // shards)
    return [(b * batch_size, min(n, (b + per) * batch_size)) for b in range(0, batches, per)]


@contextmanager
def _npy_file(path: Path, shape: tuple[int, int]) -> Iterator[np.memmap]:
    """A float32 .npy memmap to fill, written under a temporary name and renamed when the block ends
    without an error, so a crashed run never leaves a partial file that looks finished."""
    with atomic_file(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        yield out
        out.flush()
        del out


def write_vectors_to_file(parts: list[np.ndarray], path: Path) -> np.memmap:
    """Concatenate ``parts`` (in order) into an .npy file (written atomically) and open it read-only."""
    with _npy_file(path, (sum(len(p) for p in parts), parts[0].shape[1])) as out:
        at = 0
        for p in parts:
            out[at : at + len(p)] = p
            at += len(p)
    return np.load(path, mmap_mode="r")


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
    with _npy_file(path, (n, dim)) as out, \
            tqdm(total=n, desc="embed documents", unit="doc", disable=not progress) as bar:
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            out[start:stop] = embed_rows(model, corpus.iloc[start:stop], dim, batch_size)
            bar.update(stop - start)
    return np.load(path, mmap_mode="r")


__all__ = ["embed_documents_to_file", "embed_rows", "shard_bounds", "write_vectors_to_file"]
