"""Text featurizer: character trigrams with word-boundary marks plus hashed word unigrams and bigrams.

A text is lower-cased, every run of non-word characters becomes one boundary, and each word is wrapped in
``#`` marks: "Mini Cooper!" -> ``#mini#cooper#``. Its trigrams are those that do not straddle two words
(``#mi, min, ini, ni#, #co, ...``); its words are hashed alone and in adjacent pairs (the paper's +1.5%).
The whole batch of texts is processed as one array of code points, so the cost is a few numpy passes,
not a Python loop per character.

Output: three bags per text (trigrams, unigrams, bigrams; only the first without word n-grams), each a
list of rows of one text table laid out as ``[unknown | trigram buckets | unigram buckets | bigram
buckets]``, with weights 1/len so that a ``mode="sum"`` EmbeddingBag returns the bag's mean. Empty bags
hold the reserved unknown row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from models.hashing import UNKNOWN, mix64, salt64, to_buckets

_MARK = ord("#")
_P = np.uint64(0x100000001B3)  # FNV prime, the polynomial base of the word hash
_SALT_TRI, _SALT_UNI, _SALT_BI = salt64("text:trigram"), salt64("text:word"), salt64("text:bigram")


@dataclass(frozen=True)
class Bags:
    """A ragged batch of bags (CSR): bag b holds ``ids[offsets[b]:offsets[b+1]]`` with ``weights``."""

    ids: np.ndarray  # (nnz,) int64
    weights: np.ndarray  # (nnz,) float32
    offsets: np.ndarray  # (n_bags + 1,) int64

    @property
    def n_bags(self) -> int:
        return len(self.offsets) - 1


_NON_WORD = re.compile(r"[\W_]+")


def is_missing(v) -> bool:
    """None, NaN, NaT and pd.NA: what ``pd.isna`` calls missing for one scalar."""
    return v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and v != v)


def normalize_one(text, max_chars: int) -> str:
    """One text as :func:`normalize_text` makes it (the online path: no pandas)."""
    s = "" if is_missing(text) else str(text)
    return _NON_WORD.sub(" ", s.lower()).strip()[:max_chars].rstrip()


def normalize_text(texts: Sequence[str | None] | pd.Series, max_chars: int) -> pd.Series:
    """Lower-case, non-word runs -> one space, trimmed, cut to ``max_chars``; None/NaN -> ''."""
    return pd.Series([normalize_one(t, max_chars) for t in texts], dtype=object)


def _word_hashes(codes: np.ndarray, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Polynomial hash of every ``#``-delimited word and the text row it belongs to."""
    is_char = codes != _MARK
    c = codes[is_char]
    if len(c) == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    starts_mask = is_char & np.r_[True, ~is_char[:-1]]
    word_of_char = np.cumsum(starts_mask)[is_char] - 1
    first = np.flatnonzero(np.r_[True, word_of_char[1:] != word_of_char[:-1]])
    pos = np.arange(len(c)) - first[word_of_char]
    with np.errstate(over="ignore"):
        powers = np.ones(int(pos.max()) + 1, dtype=np.uint64)
        powers[1:] = np.cumprod(np.full(len(powers) - 1, _P, dtype=np.uint64))
        h = np.add.reduceat(c * powers[pos], first)
        lengths = np.diff(np.r_[first, len(c)]).astype(np.uint64)
        h = mix64(h + lengths * _P)
    return h, row[is_char][first]


def text_bags(
    texts: Sequence[str | None] | pd.Series,
    trigram_buckets: int,
    word_buckets: int = 1,
    bigram_buckets: int = 1,
    word_ngrams: bool = True,
    max_chars: int = 256,
) -> Bags:
    """Bags of hashed text-table rows: per text [trigrams, unigrams, bigrams] (or [trigrams])."""
    # A Python pass per text (pandas' string methods loop in Python too), then numpy over all code points.
    marked = ["#" + normalize_one(t, max_chars).replace(" ", "#") + "#" for t in texts]
    n_texts = len(marked)
    n_kinds = 3 if word_ngrams else 1
    lens = np.fromiter(map(len, marked), np.int64, n_texts)
    codes = np.frombuffer("".join(marked).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    row = np.repeat(np.arange(n_texts, dtype=np.int64), lens)

    # character trigrams: three 21-bit code points pack exactly into one uint64 before mixing
    i = np.arange(max(len(codes) - 2, 0))
    ok = (row[i] == row[i + 2]) & (codes[i + 1] != _MARK) if len(i) else np.zeros(0, bool)
    i = i[ok]
    key = (codes[i] << np.uint64(42)) | (codes[i + 1] << np.uint64(21)) | codes[i + 2]
    bag_parts = [row[i] * n_kinds]
    id_parts = [to_buckets(mix64(key ^ _SALT_TRI), trigram_buckets, offset=1)]

    if word_ngrams:
        wh, wrow = _word_hashes(codes, row)
        bag_parts.append(wrow * n_kinds + 1)
        id_parts.append(to_buckets(mix64(wh ^ _SALT_UNI), word_buckets, offset=1 + trigram_buckets))
        same = wrow[1:] == wrow[:-1] if len(wrow) else np.zeros(0, bool)
        with np.errstate(over="ignore"):
            bh = mix64(mix64(wh[:-1][same]) * _P + wh[1:][same]) ^ _SALT_BI if len(wh) else wh
        bag_parts.append(wrow[:-1][same] * n_kinds + 2 if len(wrow) else wrow)
        id_parts.append(
            to_buckets(mix64(bh), bigram_buckets, offset=1 + trigram_buckets + word_buckets)
        )

    return assemble_bags(np.concatenate(bag_parts), np.concatenate(id_parts), n_texts * n_kinds, mean=True)


def assemble_bags(
    bag: np.ndarray, ids: np.ndarray, n_bags: int, weights: np.ndarray | None = None, mean: bool = False
) -> Bags:
    """CSR from (bag, id[, weight]) triples; empty bags get the unknown row with weight 1.

    ``mean=True`` sets weights to 1/len (a bag mean); otherwise ``weights`` (default 1) are kept.
    """
    counts = np.bincount(bag, minlength=n_bags)
    empty = np.flatnonzero(counts == 0)
    bag = np.concatenate([bag, empty])
    ids = np.concatenate([ids, np.full(len(empty), UNKNOWN, np.int64)])
    w = np.ones(len(bag), np.float32)
    if weights is not None and not mean:
        w[: len(weights)] = weights
    order = np.argsort(bag, kind="stable")
    bag, ids, w = bag[order], ids[order], w[order]
    counts = np.maximum(counts, 1)
    if mean:
        w = (1.0 / counts[bag]).astype(np.float32)
    offsets = np.zeros(n_bags + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    return Bags(ids=ids.astype(np.int64), weights=w.astype(np.float32), offsets=offsets)
