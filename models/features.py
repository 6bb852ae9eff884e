"""Featurization of frames into tower inputs: hashed ids, bag offsets and weights, numeric columns.

A frame is featurized once into a :class:`FeatureTable` (numpy, CSR bags); a training step only gathers
the rows of its batch (:meth:`FeatureTable.take`), a handful of vectorized numpy calls. Texts are
featurized per unique string, since queries and titles repeat across examples.

Every tower reads two embedding tables through ``EmbeddingBag(mode="sum", per_sample_weights)``:
- text: per text field the bags of :func:`models.text.text_bags` (means of trigram/word/bigram rows);
- context: per categorical field one bag with one hashed id (weight 1), per multi-valued field a bag of
  hashed ids with their weights (the paper's weighted multi-hot). Missing values, empty lists and unknown
  strings map to the reserved row 0.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain
from typing import Any

import numpy as np
import pandas as pd
import torch

from models.columns import ContextField, TowerColumns, check_columns
from models.config import ModelConfig
from models.hashing import UNKNOWN, hash_strings, to_buckets
from models.text import Bags, assemble_bags, is_missing, text_bags


@dataclass
class TowerInputs:
    """One batch of tower inputs (torch). Bags are flattened row-major: row r, field f -> bag r*F + f."""

    n_rows: int
    text_ids: torch.Tensor  # (nnz_text,) int64
    text_offsets: torch.Tensor  # (n_rows * n_text_bags,) int64
    text_weights: torch.Tensor  # (nnz_text,) float32
    ctx_ids: torch.Tensor | None = None  # (nnz_ctx,) int64
    ctx_offsets: torch.Tensor | None = None  # (n_rows * n_ctx_fields,) int64
    ctx_weights: torch.Tensor | None = None  # (nnz_ctx,) float32
    numeric: torch.Tensor | None = None  # (n_rows, n_numeric) float32
    pretrained: torch.Tensor | None = None  # (n_rows, encoder dim) float32 unit vectors, frozen

    def to(self, device: str | torch.device) -> "TowerInputs":
        if str(device) == "cpu":
            return self
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return TowerInputs(
            self.n_rows, self.text_ids.to(device, non_blocking=True), self.text_offsets.to(device, non_blocking=True),
            self.text_weights.to(device, non_blocking=True),
            move(self.ctx_ids), move(self.ctx_offsets), move(self.ctx_weights), move(self.numeric),
            move(self.pretrained),
        )


def gather_bags(bags: Bags, which: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, start offsets, weights) of the selected bags, in the order given."""
    starts = bags.offsets[which]
    lens = bags.offsets[which + 1] - starts
    new_off = np.zeros(len(which), np.int64)
    if len(which) > 1:
        np.cumsum(lens[:-1], out=new_off[1:])
    pos = np.repeat(starts - new_off, lens) + np.arange(int(lens.sum()), dtype=np.int64)
    return bags.ids[pos], new_off, bags.weights[pos]


@dataclass
class FeatureTable:
    """A featurized frame (numpy): gather any rows into :class:`TowerInputs`."""

    n_rows: int
    text: Bags  # n_text_kinds bags per unique text
    text_index: np.ndarray  # (n_rows, n_text_fields) int64 rows of unique texts
    n_text_kinds: int
    context: Bags | None  # n_ctx_fields bags per row
    n_ctx_fields: int
    numeric: np.ndarray | None  # (n_rows, n_numeric) float32
    pretrained: np.ndarray | None = None  # (n_rows, encoder dim) float32: the frozen text sub-model's vectors
    _all: TowerInputs | None = field(default=None, repr=False, compare=False)  # take() of every row, kept

    def take(self, rows: np.ndarray | None = None) -> TowerInputs:
        """The tower inputs of ``rows`` (all rows when None: made once, then shared by the towers of an
        ensemble's members; towers only read their inputs)."""
        if rows is None:
            if self._all is None:
                self._all = self._take(np.arange(self.n_rows))
            return self._all
        return self._take(np.asarray(rows, dtype=np.int64))

    def _take(self, rows: np.ndarray) -> TowerInputs:
        k = self.n_text_kinds
        tb = (self.text_index[rows][:, :, None] * k + np.arange(k)).reshape(-1)
        ti, to, tw = gather_bags(self.text, tb)
        out = TowerInputs(len(rows), torch.from_numpy(ti), torch.from_numpy(to), torch.from_numpy(tw))
        if self.context is not None:
            f = self.n_ctx_fields
            cb = (rows[:, None] * f + np.arange(f)).reshape(-1)
            ci, co, cw = gather_bags(self.context, cb)
            out.ctx_ids, out.ctx_offsets, out.ctx_weights = (
                torch.from_numpy(ci), torch.from_numpy(co), torch.from_numpy(cw)
            )
        if self.numeric is not None:
            out.numeric = torch.from_numpy(np.ascontiguousarray(self.numeric[rows]))
        if self.pretrained is not None:
            out.pretrained = torch.from_numpy(np.ascontiguousarray(self.pretrained[rows]))
        return out


def _is_list(v) -> bool:
    return isinstance(v, (list, tuple, np.ndarray))


# Up to this many values, featurization loops in Python instead of calling pandas: one online query costs
# microseconds this way, where pandas' per-call overhead costs milliseconds. Both paths give equal tables.
SMALL = 64

Records = Sequence[Mapping[str, Any]]  # rows as dicts: the online path (one query, no DataFrame)


@lru_cache(maxsize=1 << 16)
def _bucket(value: str, kind: str, buckets: int) -> int:
    return int(to_buckets(hash_strings([value], kind), buckets - 1, offset=1)[0])


def _hash_values(values: np.ndarray, kind: str, buckets: int, vocabulary: pd.Index | None = None) -> np.ndarray:
    """Hashed context rows of an object array of strings; None/NaN/'' and, when a ``vocabulary`` is given,
    values outside it -> the unknown row."""
    if len(values) <= SMALL:
        out = np.full(len(values), UNKNOWN, np.int64)
        for i, v in enumerate(values):
            if not is_missing(v) and (t := str(v)) and (vocabulary is None or t in vocabulary):
                out[i] = _bucket(t, kind, buckets)
        return out
    s = pd.Series(values, dtype=object)
    missing = s.isna().to_numpy() | (s.astype(str) == "").to_numpy()
    if vocabulary is not None:
        missing |= ~s.astype(str).isin(vocabulary).to_numpy()
    codes, uniques = pd.factorize(s.where(~missing, None), use_na_sentinel=True)
    table = to_buckets(hash_strings([str(u) for u in uniques], kind), buckets - 1, offset=1)
    out = np.full(len(s), UNKNOWN, np.int64)
    out[codes >= 0] = table[codes[codes >= 0]]
    return out


def _context_field(columns: Mapping[str, np.ndarray], n: int, field: ContextField, buckets: int,
                   vocabulary: pd.Index | None = None):
    """(row, id, weight) triples of one context field."""
    if not field.multi:
        ids = _hash_values(columns[field.column], field.kind, buckets, vocabulary)
        return np.arange(n, dtype=np.int64), ids, None
    lists = columns[field.column]
    weights = columns[field.weights_column]
    lens = np.fromiter((len(v) if _is_list(v) else 0 for v in lists), np.int64, n)
    rows = np.repeat(np.arange(n, dtype=np.int64), lens)
    flat_values = np.array(list(chain.from_iterable(v for v in lists if _is_list(v))), dtype=object)
    ids = _hash_values(flat_values, field.kind, buckets, vocabulary)
    wlens = np.fromiter((len(v) if _is_list(v) else 0 for v in weights), np.int64, n)
    bad = np.flatnonzero((wlens != lens) & (wlens > 0))
    if len(bad):
        r = int(bad[0])
        raise ValueError(
            f"{field.weights_column} has {wlens[r]} weights for {lens[r]} values of {field.column} in row {r}; "
            "the two list columns must be aligned"
        )
    uniform = np.repeat(1.0 / np.maximum(lens, 1), lens).astype(np.float32)
    given = np.repeat((wlens == lens) & (lens > 0), lens)
    w = uniform.copy()
    if given.any():
        given_rows = weights[(wlens == lens) & (lens > 0)]
        flat = np.fromiter((np.nan if x is None else x for x in chain.from_iterable(given_rows)), np.float64,
                           int(given.sum()))
        w[given] = np.where(np.isnan(flat), uniform[given], flat)  # missing weights: a uniform mean
    return rows, ids, w


@dataclass
class FittedInputs:
    """What featurization learns from the training data; saved with the weights (``as_dict``).

    - ``vocabularies``: per id kind (``doc``, ``searcher``), the ids seen at least ``id_min_count`` times
      in training; the others map to the unknown row (the paper's rule for rare high-cardinality ids);
    - ``numeric``: per tower, the mean and standard deviation of each log1p count column.
    """

    vocabularies: dict[str, pd.Index]
    numeric: dict[str, tuple[list[float], list[float]]]

    def as_dict(self) -> dict:
        return {"vocabularies": {k: v.tolist() for k, v in self.vocabularies.items()},
                "numeric": {k: [list(m), list(s)] for k, (m, s) in self.numeric.items()}}

    @classmethod
    def from_dict(cls, d: dict | None) -> "FittedInputs":
        d = d or {}
        return cls({k: pd.Index(v, dtype=object) for k, v in d.get("vocabularies", {}).items()},
                   {k: (list(m), list(s)) for k, (m, s) in d.get("numeric", {}).items()})


def _number(v) -> float:
    """pd.to_numeric(errors="coerce") of one value."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return np.nan


def log_counts(frame: pd.DataFrame | Mapping[str, np.ndarray], columns) -> np.ndarray:
    """log1p of non-negative count columns (missing -> 0), (rows, columns) float64."""
    def values(c):
        col = frame[c]
        if len(col) <= SMALL and not isinstance(col, pd.Series):
            return np.fromiter((_number(v) for v in col), np.float64, len(col))
        return pd.to_numeric(pd.Series(col, dtype=object) if not isinstance(col, pd.Series) else col,
                             errors="coerce").to_numpy(np.float64)

    vals = np.column_stack([values(c) for c in columns])
    return np.log1p(np.clip(np.nan_to_num(vals, nan=0.0), 0, None))


def column_arrays(data: pd.DataFrame | Records, cols: TowerColumns, what: str) -> tuple[int, dict[str, np.ndarray]]:
    """(rows, the tower's required columns as object arrays) of a frame or of records."""
    if isinstance(data, pd.DataFrame):
        check_columns(data, cols, what)
        return len(data), {c: data[c].to_numpy(object) for c in cols.required()}
    records = list(data)
    missing = sorted({c for r in records for c in cols.required() if c not in r})
    if missing:
        raise ValueError(f"{what} records lack key(s) {missing} (None and empty lists are fine)")
    out = {}
    for c in cols.required():
        a = np.empty(len(records), object)
        for i, r in enumerate(records):
            a[i] = r[c]  # element-wise: a list value stays one element
        out[c] = a
    return len(records), out


class Featurizer:
    """Turns frames into :class:`FeatureTable` for one tower; its state is the config plus the
    :class:`FittedInputs` that training sets (``fitted``; empty before: every id known, counts unscaled)."""

    # The config fields featurization reads (the rest shape the towers): two featurizers with equal values,
    # columns and fitted state give equal tables (``signature``).
    CONFIG_FIELDS = ("word_ngrams", "max_text_chars", "max_body_chars", "trigram_buckets", "word_buckets",
                     "bigram_buckets", "context_buckets", "pretrained_text")
    _signature: str | None  # computed on first use, reset when ``fitted`` changes

    def __init__(self, cfg: ModelConfig, columns: TowerColumns, what: str):
        self.cfg, self.columns, self.what = cfg, columns, what
        self.n_text_kinds = 3 if cfg.word_ngrams else 1
        self.fitted = FittedInputs({}, {})
        self._encoder = None  # the pretrained text encoder, loaded on first use

    @property
    def fitted(self) -> FittedInputs:
        return self._fitted

    @fitted.setter
    def fitted(self, value: FittedInputs) -> None:
        self._fitted, self._signature = value, None

    @property
    def signature(self) -> str:
        """A digest of everything the tables depend on: an ensemble whose members featurize alike (members
        trained on one training set) featurizes a query once for all of them."""
        if self._signature is None:
            state = {"config": {f: getattr(self.cfg, f) for f in self.CONFIG_FIELDS}, "what": self.what,
                     "columns": repr(self.columns), "fitted": self._fitted.as_dict()}
            self._signature = hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()
        return self._signature

    @property
    def encoder(self):
        """The frozen pretrained text sub-model (``ModelConfig.pretrained_text``), or None."""
        if self._encoder is None and self.cfg.pretrained_text:
            from models.pretrained import text_encoder  # sentence-transformers: only models that use it

            self._encoder = text_encoder(self.cfg.pretrained_text)
        return self._encoder

    @property
    def n_text_bags(self) -> int:
        return len(self.columns.text) * self.n_text_kinds

    def __call__(self, data: pd.DataFrame | Records) -> FeatureTable:
        """The table of a frame, or of records (dicts: the online path, same result without pandas)."""
        cfg = self.cfg
        n, columns = column_arrays(data, self.columns, self.what)
        # each field cut to its own limit first (raw characters), so one text_bags call serves all fields
        limits = [cfg.max_body_chars if c == "body" else cfg.max_text_chars for c in self.columns.text]
        cut = [("" if is_missing(t) else str(t))[:m] for c, m in zip(self.columns.text, limits) for t in columns[c]]
        if len(cut) <= SMALL:
            first: dict[str, int] = {}
            codes = np.fromiter((first.setdefault(t, len(first)) for t in cut), np.int64, len(cut))
            uniques = list(first)
        else:
            codes, uniques = pd.factorize(pd.Series(cut, dtype=object))
        text = text_bags(
            uniques, cfg.trigram_buckets, cfg.word_buckets, cfg.bigram_buckets,
            cfg.word_ngrams, max(limits, default=cfg.max_text_chars),
        )
        text_index = codes.astype(np.int64).reshape(len(self.columns.text), n).T.copy()

        context = None
        f = len(self.columns.context)
        if f:
            bag_parts, id_parts, w_parts = [], [], []
            for j, field in enumerate(self.columns.context):
                rows, ids, w = _context_field(columns, n, field, cfg.context_buckets,
                                              self.fitted.vocabularies.get(field.kind))
                bag_parts.append(rows * f + j)
                id_parts.append(ids)
                w_parts.append(np.ones(len(ids), np.float32) if w is None else w)
            context = assemble_bags(
                np.concatenate(bag_parts), np.concatenate(id_parts), n * f, weights=np.concatenate(w_parts)
            )

        numeric = None
        if self.columns.numeric:
            numeric = log_counts(columns, self.columns.numeric)
            if self.what in self.fitted.numeric:
                mean, std = self.fitted.numeric[self.what]
                numeric = (numeric - np.asarray(mean)) / np.asarray(std)
            numeric = numeric.astype(np.float32)
        pretrained = None
        if self.encoder is not None:  # one text per row, its fields joined (the encoder truncates it itself)
            raw = [[("" if is_missing(t) else str(t)).strip() for t in columns[c]] for c in self.columns.text]
            pretrained = self.encoder.encode([" ".join(s for s in row if s) for row in zip(*raw)],
                                             persist=self.what == "document")
        return FeatureTable(n, text, text_index, self.n_text_kinds, context, f, numeric, pretrained)

