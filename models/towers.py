"""The unified two-tower model: a query tower and a document tower mapping into one cosine space.

Each tower concatenates its feature embeddings (text bags, context bags, log counts), passes them through
an MLP and L2-normalizes the result, so a dot product is the cosine of the paper's eq. 3. The towers are
independent after training: documents are embedded offline in batch, queries online. The text-only model
is the same class with ``ModelConfig.use_context=False``: no context table, no context input.
"""

from __future__ import annotations

from typing import cast

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from models.columns import DOC_ID, ID_KINDS, document_columns, query_columns, to_document_columns
from models.compact_bags import CompactEmbeddingBag
from models.config import ModelConfig
from models.features import FeatureTable, Featurizer, FittedInputs, Records, TowerInputs, log_counts
from models.pretrained import ENCODERS

_INIT_STD = 0.1


def _table(rows: int, dim: int) -> nn.EmbeddingBag:
    # sparse gradients: a step touches only the rows of its batch (SparseAdam); dense updates are 20x slower.
    # Compact: one gradient row per distinct id, not per lookup (long texts repeat rows; models.compact_bags)
    t = CompactEmbeddingBag(rows, dim)
    nn.init.normal_(t.weight, std=_INIT_STD)
    return t


class PretrainedMix(nn.Module):
    """Weighted concatenation of a tower's own unit embedding and the frozen pretrained text vector: with
    both parts unit-norm the cosine of two outputs is (cos_own + w^2 cos_pretrained) / (1 + w^2), the
    paper's weighted-concatenation ensemble, trained jointly so that the towers learn what the pretrained
    encoder misses. ``w`` is fixed (a buffer, chosen on validation): learned on the training clicks it
    would drift towards the towers' own part, which can memorize them, at the cost of held-out queries.
    One instance is shared by both towers: the same ``w`` on each side."""

    w: torch.Tensor  # a registered buffer

    def __init__(self, weight: float):
        super().__init__()
        self.register_buffer("w", torch.tensor(float(weight)))

    @property
    def weight(self) -> float:
        return float(self.w)

    def forward(self, own: torch.Tensor, pretrained: torch.Tensor) -> torch.Tensor:
        # an empty text has the zero vector: normalizing leaves the own part alone then
        return F.normalize(torch.cat([own, self.w * pretrained], dim=1), dim=-1)


class Tower(nn.Module):
    """Feature embeddings -> concatenation -> MLP -> L2-normalized embedding."""

    def __init__(
        self, cfg: ModelConfig, n_text_bags: int, n_ctx_fields: int, n_numeric: int,
        text_table: nn.EmbeddingBag | None = None, mix: PretrainedMix | None = None,
    ):
        super().__init__()
        self.mix = mix
        d = cfg.embedding_dim
        self.text = text_table if text_table is not None else _table(cfg.text_rows, d)
        self.context = _table(cfg.context_buckets, d) if n_ctx_fields else None
        self.n_numeric = n_numeric
        layers: list[nn.Module] = []
        width = d * (n_text_bags + n_ctx_fields) + n_numeric
        for h in cfg.hidden_dims:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if cfg.dropout:
                layers.append(nn.Dropout(cfg.dropout))
            width = h
        layers.append(nn.Linear(width, cfg.output_dim))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: TowerInputs) -> torch.Tensor:
        b = x.n_rows
        parts = [self.text(x.text_ids, x.text_offsets, per_sample_weights=x.text_weights).view(b, -1)]
        if self.context is not None:
            parts.append(self.context(x.ctx_ids, x.ctx_offsets, per_sample_weights=x.ctx_weights).view(b, -1))
        if self.n_numeric:
            parts.append(x.numeric)
        own = F.normalize(self.mlp(torch.cat(parts, dim=1)), dim=-1)  # (B, cfg.output_dim), unit norm
        if self.mix is None:
            return own
        if x.pretrained is None:
            raise ValueError("this tower concatenates pretrained text vectors: featurize with the model's own "
                             "featurizer (ModelConfig.pretrained_text)")
        return self.mix(own, x.pretrained)  # (B, cfg.output_dim + encoder dim), unit norm


class TwoTowerModel(nn.Module):
    """Query tower + document tower, rebuilt from its :class:`ModelConfig` alone."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.feature_service = ""  # name of the feature service the model was trained on (set by training)
        self.query_featurizer = Featurizer(cfg, query_columns(cfg), "query")
        self.doc_featurizer = Featurizer(cfg, document_columns(cfg), "document")
        qc, dc = self.query_featurizer.columns, self.doc_featurizer.columns
        self.mix = PretrainedMix(cfg.pretrained_weight) if cfg.pretrained_text else None
        self.query_tower = Tower(cfg, self.query_featurizer.n_text_bags, len(qc.context), len(qc.numeric),
                                 mix=self.mix)
        self.doc_tower = Tower(
            cfg, self.doc_featurizer.n_text_bags, len(dc.context), len(dc.numeric),
            text_table=self.query_tower.text if cfg.share_text_tables else None, mix=self.mix,
        )

    @property
    def output_dim(self) -> int:
        """Width of the embeddings (what an index over them holds)."""
        cfg = self.config
        return cfg.output_dim + (ENCODERS[cfg.pretrained_text] if cfg.pretrained_text else 0)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def sparse_parameters(self) -> list[nn.Parameter]:
        """Embedding tables (sparse gradients: SparseAdam); shared tables appear once."""
        seen, out = set(), []
        for m in self.modules():
            if isinstance(m, nn.EmbeddingBag) and id(m.weight) not in seen:
                seen.add(id(m.weight))
                out.append(cast(nn.Parameter, m.weight))  # torch annotates an EmbeddingBag's weight as a Tensor
        return out

    def dense_parameters(self) -> list[nn.Parameter]:
        sparse = {id(p) for p in self.sparse_parameters()}
        return [p for p in self.parameters() if id(p) not in sparse]

    @property
    def fitted(self) -> FittedInputs:
        return self.query_featurizer.fitted

    def set_fitted(self, fitted: FittedInputs) -> None:
        """Both towers featurize with the same fitted state (one id vocabulary per kind)."""
        self.query_featurizer.fitted = self.doc_featurizer.fitted = fitted

    def fit_inputs(self, examples_train: pd.DataFrame, documents: pd.DataFrame) -> FittedInputs:
        """Learn the id vocabularies (document ids with at least ``id_min_count`` training examples, searcher
        ids with at least ``id_min_count`` training sessions) and the count statistics (query side over the
        examples, document side over the corpus), and use them. A searcher id is counted by sessions: one
        session's several clicks (a SciFact claim's relevant abstracts) would give an embedding that only
        memorizes that session, and is never served again."""
        cfg = self.config
        id_column = {"doc": DOC_ID, "searcher": "searcher_id"}  # where training counts each id kind
        kinds = {f.kind for f in (*self.query_featurizer.columns.context, *self.doc_featurizer.columns.context)
                 if f.kind in ID_KINDS}  # the document id, the history (document ids), the searcher id
        vocab: dict[str, pd.Index] = {}
        for kind in sorted(kinds):
            ids = examples_train[id_column[kind]].astype(str)
            if kind == "searcher" and "session_id" in examples_train.columns:
                counts = examples_train["session_id"].groupby(ids.to_numpy()).nunique()
            else:
                counts = ids.value_counts()
            vocab[kind] = pd.Index(sorted(counts.index[counts >= cfg.id_min_count]), dtype=object)
        numeric: dict[str, tuple[list[float], list[float]]] = {}
        if cfg.scale_counts:
            for what, feat, frame in (("query", self.query_featurizer, examples_train),
                                      ("document", self.doc_featurizer, to_document_columns(documents))):
                cols = feat.columns.numeric
                if cols and all(c in frame.columns for c in cols):
                    x = log_counts(frame, cols)
                    numeric[what] = (x.mean(0).tolist(), np.maximum(x.std(0), 1e-3).tolist())
        fitted = FittedInputs(vocab, numeric)
        self.set_fitted(fitted)
        return fitted

    def featurize_queries(self, frame: pd.DataFrame | Records) -> FeatureTable:
        """A frame of queries, or records (dicts with the same keys: the online path, no pandas)."""
        return self.query_featurizer(frame)

    def featurize_documents(self, frame: pd.DataFrame) -> FeatureTable:
        """Accepts a document table or example-convention (``doc_``-prefixed) columns."""
        return self.doc_featurizer(to_document_columns(frame))

    @torch.no_grad()
    def embed_table(
        self, table: FeatureTable, side: str, batch_size: int = 4096, progress: bool = False
    ) -> np.ndarray:
        """Embeddings of a featurized frame, in batches, in eval mode; (n_rows, output_dim) float32."""
        if side not in ("query", "document"):
            raise ValueError(f"side must be 'query' or 'document', got {side!r}")
        tower = self.query_tower if side == "query" else self.doc_tower
        was_training = self.training
        if was_training:  # toggling modes walks every submodule: skip it on the serving path
            self.eval()
        try:
            out = np.empty((table.n_rows, self.output_dim), np.float32)
            dev = self.device
            if table.n_rows <= batch_size:  # one query online: no progress bar, no row gather
                out[:] = tower(table.take().to(dev)).float().cpu().numpy()
                return out
            starts = range(0, table.n_rows, batch_size)
            for s in tqdm(starts, desc=f"embed {side}s", unit="batch", disable=not progress, leave=False):
                rows = np.arange(s, min(s + batch_size, table.n_rows))
                out[rows] = tower(table.take(rows).to(dev)).float().cpu().numpy()
            return out
        finally:
            if was_training:
                self.train()

    def embed_queries(self, frame: pd.DataFrame | Records, batch_size: int = 4096, progress: bool = False) -> np.ndarray:
        """Query embeddings of a frame with ``query`` and ``searcher_*`` columns."""
        return self.embed_table(self.featurize_queries(frame), "query", batch_size, progress)

    def embed_documents(self, frame: pd.DataFrame, batch_size: int = 4096, progress: bool = False) -> np.ndarray:
        """Document embeddings of a document table (or ``doc_``-prefixed columns)."""
        return self.embed_table(self.featurize_documents(frame), "document", batch_size, progress)
