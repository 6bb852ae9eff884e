"""Training batches: examples and corpus featurized once, a step gathers rows and draws negatives.

Doc ids become integer ids: the rows of the document table first (0..N-1), then doc_ids that only occur
as positives of examples (N..). Corpus and extra negatives are embedded from the document table. Positives
too by default (``positive_features="corpus"``), so that positives and sampled negatives are drawn from one
feature distribution, the one the index serves; with ``"example"`` a positive uses the example's own
``doc_*`` columns (features as of the example's time; documents absent from the table always do). Mixing
the two lets the model tell a positive from a negative by the age of its aggregates (a document that has
gathered members since) instead of by relevance: measured on MovieLens, recall@10 fell by three quarters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from models.columns import DOC_ID, to_document_columns
from models.config import LossConfig
from models.features import FeatureTable, TowerInputs
from models.sampling import ExtraNegatives, NegativeSampler, click_probabilities
from models.towers import TwoTowerModel


@dataclass
class TrainBatch:
    queries: TowerInputs  # B rows
    positives: TowerInputs  # B rows
    pos_ids: torch.Tensor  # (B,) int64
    negatives: TowerInputs | None  # U unique corpus rows: corpus draws and extra negatives
    corpus_index: torch.Tensor  # (B',) int64 rows of ``negatives``
    shared_ids: torch.Tensor  # (B + B',) int64 doc ids: the batch positives, then the corpus draws
    shared_logq: torch.Tensor  # (B + B',) float32
    pos_logq: torch.Tensor  # (B,) float32
    extra_index: torch.Tensor | None  # (B, K) int64 rows of ``negatives`` (0 where padded)
    extra_ids: torch.Tensor | None  # (B, K) int64 doc ids, -1 = padding

    @property
    def size(self) -> int:
        return self.queries.n_rows

    def to(self, device: str | torch.device) -> "TrainBatch":
        if str(device) == "cpu":
            return self
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return TrainBatch(
            self.queries.to(device), self.positives.to(device), self.pos_ids.to(device),
            None if self.negatives is None else self.negatives.to(device), self.corpus_index.to(device),
            self.shared_ids.to(device),
            self.shared_logq.to(device), self.pos_logq.to(device), mv(self.extra_index), mv(self.extra_ids),
        )


def doc_index(documents: pd.DataFrame, *others: pd.Series) -> pd.Series:
    """doc_id -> integer id: document-table rows first, then unseen ids from ``others`` in order."""
    ids = documents[DOC_ID].astype(str)
    if ids.duplicated().any():
        dup = ids[ids.duplicated()].iloc[0]
        raise ValueError(f"document table has duplicated doc_id(s), e.g. {dup!r}; one row per doc_id")
    known = pd.Index(ids)
    extra = pd.Index(pd.concat([o.astype(str) for o in others])).unique() if others else pd.Index([])
    extra = extra.difference(known, sort=False)
    return pd.Series(np.arange(len(known) + len(extra)), index=known.append(extra))


def positive_frame(examples: pd.DataFrame, documents: pd.DataFrame, pos_ids: np.ndarray, source: str) -> pd.DataFrame:
    """The document rows the positives are embedded from, one per example (see the module docstring)."""
    if source not in ("corpus", "example"):
        raise ValueError(f"positive_features must be 'corpus' or 'example', got {source!r}")
    own = to_document_columns(examples)
    if source == "example":
        return own
    inside = pos_ids < len(documents)
    parts = [documents.iloc[pos_ids[inside]].assign(_row=np.flatnonzero(inside))]
    if not inside.all():
        parts.append(own.loc[~inside, [c for c in documents.columns if c in own.columns]]
                     .assign(_row=np.flatnonzero(~inside)))
    return pd.concat(parts, ignore_index=True).sort_values("_row", kind="stable").reset_index(drop=True)


class TrainingData:
    """Featurized examples and corpus of one run; :meth:`batch` builds a step's :class:`TrainBatch`."""

    def __init__(
        self, model: TwoTowerModel, examples: pd.DataFrame, documents: pd.DataFrame, loss: LossConfig,
        corpus: FeatureTable | None = None, ids: pd.Series | None = None,
        positive_features: str = "corpus",
    ):
        if len(examples) == 0:
            raise ValueError("no training examples")
        self.loss = loss
        self.ids = ids if ids is not None else doc_index(documents, examples[DOC_ID])
        self.queries = model.featurize_queries(examples)
        self.pos_ids = self.ids.loc[examples[DOC_ID].astype(str)].to_numpy(np.int64)
        self.positives = model.featurize_documents(
            positive_frame(examples, documents, self.pos_ids, positive_features)
        )
        self.corpus = corpus if corpus is not None else model.featurize_documents(documents)
        self.n_examples = len(examples)
        self.click_probs = click_probabilities(self.pos_ids, len(self.ids))
        mode = loss.negatives if loss.n_corpus_negatives > 0 else "batch"
        self.sampler = NegativeSampler(mode, loss.n_corpus_negatives, np.arange(len(documents)), self.click_probs)
        row_of_doc = pd.Series(np.arange(len(documents)), index=documents[DOC_ID].astype(str).to_numpy())
        self.extra = ExtraNegatives(examples, loss.extra_negatives, row_of_doc) if loss.extra_negatives else None

    def hard_per_example(self, batch_size: int) -> float:
        """Extra negatives per example and step: ``max_extra_negatives``, or the easy:hard ratio's share of
        the easy ones (the other positives of the batch plus the corpus draws)."""
        if self.loss.easy_hard_ratio is None:
            return float(self.loss.max_extra_negatives)
        return (batch_size - 1 + self.sampler.k) / self.loss.easy_hard_ratio

    def _extra_rows(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        want = self.hard_per_example(len(rows))
        assert self.extra is not None  # batch() asks for extra rows only when there are extra negatives
        extra = self.extra.pick(rows, max(1, int(np.ceil(want))), rng)
        if self.loss.easy_hard_ratio is not None:  # floor or ceil per example, so the mean is the ratio's
            n = np.floor(want) + (rng.random(len(rows)) < want - np.floor(want))
            extra[np.arange(extra.shape[1])[None, :] >= n[:, None]] = -1
        return extra

    def batch(self, rows: np.ndarray, rng: np.random.Generator) -> TrainBatch:
        pos_ids = self.pos_ids[rows]
        shared = self.sampler.sample(pos_ids, rng)
        extra_rows = self._extra_rows(rows, rng) if self.extra else None
        wanted = [shared.corpus_rows] + ([extra_rows[extra_rows >= 0]] if extra_rows is not None else [])
        uniq, inverse = np.unique(np.concatenate(wanted), return_inverse=True)
        negatives = self.corpus.take(uniq) if len(uniq) else None
        corpus_index = inverse[: len(shared.corpus_rows)]
        extra_index = extra_ids = None
        if extra_rows is not None:
            extra_index = np.zeros_like(extra_rows)
            extra_index[extra_rows >= 0] = inverse[len(shared.corpus_rows):]
            extra_ids = np.where(extra_rows >= 0, extra_rows, -1)  # corpus rows are doc ids 0..N-1
        t = torch.from_numpy
        return TrainBatch(
            self.queries.take(rows), self.positives.take(rows), t(pos_ids), negatives,
            t(corpus_index.astype(np.int64)), t(shared.shared_ids), t(shared.shared_logq), t(shared.pos_logq),
            None if extra_index is None else t(extra_index), None if extra_ids is None else t(extra_ids),
        )
