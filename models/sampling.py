"""Negative sampling for the two-tower objective: batch, mixed, extra per-example negatives, log-Q.

- Batch negatives: the other positives of the batch. They follow the click distribution, so popular
  documents are over-sampled as negatives; the log-Q correction subtracts ``log(B * p_click(d))``, the
  expected number of times ``d`` is in a batch of B.
- Mixed negative sampling (the blog post): plus B' documents drawn uniformly from the whole corpus of N,
  which reaches documents that are never clicked; their correction is ``log(B' / N)``.
- A sampled negative with the query's own positive doc_id is an *accidental hit*: masked out.
- Extra negatives: up to k doc_ids per example from list columns (offline hard negatives, random ones,
  impressions), drawn per step.
All randomness comes from the ``numpy.random.Generator`` passed in, so a step can be replayed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch

from models.text import Bags


def accidental_hits(pos_ids: torch.Tensor, cand_ids: torch.Tensor) -> torch.Tensor:
    """(B, M) bool, True where candidate j is query i's own positive document."""
    return cand_ids[None, :] == pos_ids[:, None]


def click_probabilities(pos_ids: np.ndarray, n_ids: int) -> np.ndarray:
    """p(d): share of training examples whose positive is d (the in-batch sampling distribution)."""
    counts = np.bincount(np.asarray(pos_ids, dtype=np.int64), minlength=n_ids).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def batch_log_q(probs: np.ndarray, ids: np.ndarray, batch_size: int) -> np.ndarray:
    """log of the expected count of each in-batch candidate in a batch of ``batch_size``."""
    return np.log(batch_size * np.maximum(probs[ids], 1e-12)).astype(np.float32)


def uniform_log_q(n_samples: int, n_corpus: int) -> float:
    """log(B' / N): each corpus document's expected count among B' uniform draws."""
    return float(np.log(n_samples / n_corpus))


@dataclass
class SharedNegatives:
    corpus_rows: np.ndarray  # (B',) rows of the corpus table that were drawn
    shared_ids: np.ndarray  # (B + B',) doc ids: the batch positives, then the corpus draws
    shared_logq: np.ndarray  # (B + B',) float32
    pos_logq: np.ndarray  # (B,) float32

    def hit_mask(self, pos_ids: np.ndarray) -> np.ndarray:
        """(B, B + B') bool of usable negatives: accidental hits (incl. each query's own positive) out."""
        return ~accidental_hits(torch.from_numpy(pos_ids), torch.from_numpy(self.shared_ids)).numpy()


class NegativeSampler:
    """Draws the shared negatives of a batch (``batch`` or ``mixed``) with their log-Q."""

    def __init__(
        self, mode: Literal["batch", "mixed"], n_corpus_negatives: int, corpus_ids: np.ndarray,
        click_probs: np.ndarray,
    ):
        if mode not in ("batch", "mixed"):
            raise ValueError(f"negatives must be 'batch' or 'mixed', got {mode!r}")
        if mode == "mixed" and (n_corpus_negatives < 1 or len(corpus_ids) == 0):
            raise ValueError("mixed negatives need n_corpus_negatives >= 1 and a non-empty document table")
        self.mode, self.k = mode, n_corpus_negatives if mode == "mixed" else 0
        self.corpus_ids = np.asarray(corpus_ids, dtype=np.int64)
        self.click_probs = click_probs

    def sample(self, pos_ids: np.ndarray, rng: np.random.Generator) -> SharedNegatives:
        b = len(pos_ids)
        pos_logq = batch_log_q(self.click_probs, pos_ids, b)
        rows = rng.integers(0, len(self.corpus_ids), size=self.k) if self.k else np.zeros(0, np.int64)
        ids = np.concatenate([pos_ids, self.corpus_ids[rows]])
        logq = np.concatenate(
            [pos_logq, np.full(self.k, uniform_log_q(self.k, len(self.corpus_ids)) if self.k else 0.0, np.float32)]
        )
        return SharedNegatives(rows.astype(np.int64), ids.astype(np.int64), logq.astype(np.float32), pos_logq)


class ExtraNegatives:
    """Per-example negative doc_ids (list columns), kept as corpus rows; unknown doc_ids are dropped."""

    def __init__(self, examples: pd.DataFrame, columns: tuple[str, ...], row_of_doc: pd.Series):
        missing = [c for c in columns if c not in examples.columns]
        if missing:
            raise ValueError(
                f"extra_negatives columns {missing} not in the examples; present: {list(examples.columns)}"
            )
        n = len(examples)
        per_row: list[list] = [[] for _ in range(n)]
        for c in columns:
            for r, v in enumerate(examples[c].to_numpy(object)):
                if isinstance(v, (list, tuple, np.ndarray)) and len(v):
                    per_row[r].extend(v)
        lens = np.fromiter((len(v) for v in per_row), np.int64, n)
        flat = pd.Series([x for v in per_row for x in v], dtype=object)
        rows = flat.map(row_of_doc).to_numpy(dtype=np.float64, na_value=np.nan)
        keep = ~np.isnan(rows)
        row_of_entry = np.repeat(np.arange(n), lens)[keep]
        counts = np.bincount(row_of_entry, minlength=n)
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        self.bags = Bags(rows[keep].astype(np.int64), np.ones(int(keep.sum()), np.float32), offsets)
        self.n_dropped = int((~keep).sum())

    def pick(self, rows: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        """(len(rows), k) corpus rows: up to k distinct entries per example, at random; -1 pads."""
        starts = self.bags.offsets[rows]
        lens = self.bags.offsets[rows + 1] - starts
        out = np.full((len(rows), k), -1, np.int64)
        total = int(lens.sum())
        if total == 0:
            return out
        which = np.repeat(np.arange(len(rows)), lens)
        pos = np.repeat(starts - np.r_[0, np.cumsum(lens)[:-1]], lens) + np.arange(total)
        order = np.lexsort((rng.random(total), which))  # shuffle within each example
        which, pos = which[order], pos[order]
        first = np.r_[0, np.cumsum(lens)[:-1]]
        rank = np.arange(total) - first[which]
        ok = rank < k
        out[which[ok], rank[ok]] = self.bags.ids[pos[ok]]
        return out
