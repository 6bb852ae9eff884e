"""Plain baselines a practitioner tries first, as :class:`evaluation.protocol.Ranker` objects."""

from __future__ import annotations

import numpy as np
import pandas as pd

class Popularity:
    """Documents ranked by their clicks in the training examples (the same list for every query)."""

    def __init__(self, train: pd.DataFrame, documents: pd.DataFrame):
        clicks = train["doc_id"].astype(str).value_counts()
        counts = clicks.reindex(documents["doc_id"].astype(str)).fillna(0).to_numpy()
        self.order = np.argsort(-counts, kind="stable")  # ties: document-table order

    def rank(self, queries: pd.DataFrame, k: int) -> np.ndarray:
        top = self.order[: min(k, len(self.order))]
        return np.broadcast_to(top, (len(queries), len(top))).copy()


class BM25:
    """Okapi BM25 (``bm25s``, Lucene variant, English stopwords) over each document's title + body."""

    def __init__(self, documents: pd.DataFrame, k1: float = 1.5, b: float = 0.75):
        import bm25s

        self._bm25s = bm25s
        text = (documents["title"].fillna("").astype(str) + " " + documents["body"].fillna("").astype(str)).tolist()
        self.n_docs = len(text)
        self.retriever = bm25s.BM25(k1=k1, b=b)
        self.retriever.index(bm25s.tokenize(text, stopwords="en", show_progress=False), show_progress=False)

    def rank(self, queries: pd.DataFrame, k: int) -> np.ndarray:
        k = min(k, self.n_docs)
        texts = queries["query"].fillna("").astype(str).tolist()
        tokens = self._bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)
        vocab = self.retriever.vocab_dict
        tokens = [[t for t in q if t in vocab] for q in tokens]
        out = np.full((len(texts), k), -1, np.int64)
        have = [i for i, q in enumerate(tokens) if q]  # a query without a known term retrieves nothing
        if have:
            docs, scores = self.retriever.retrieve([tokens[i] for i in have], k=k, show_progress=False)
            out[have] = np.where(scores > 0, docs, -1)  # zero-score documents do not match at all
        return out
