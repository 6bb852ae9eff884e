"""Offline hard-negative mining (section 6.1.1 of the paper): one round over the training examples.

A round embeds each training session's query with the current model and the corpus with its document tower,
retrieves each query's top-K from an ANN index (the project's FAISS layer, optionally over a random shard of
the corpus: only semi-hard negatives are needed), and selects hard negatives per session:
- ``window``: uniformly among the candidates ranked in ``rank_window`` (default 101-500, the paper's best);
- ``hardest``: the best-ranked candidates (for comparison; the paper found them worse).
False negatives are dropped first: documents that are positives of the same searcher or of the same
(normalized, non-empty) query anywhere in the training data, and candidates scoring above the session's best
positive minus ``false_negative_margin``. The result is the examples' ``hard_negatives`` list column
(training examples only; held-out examples keep empty lists) and a :class:`MiningReport`: counts, the rank
distribution of what was kept, and what the ANN search cost next to exact KNN on a sample of the queries,
with the overlap of the two mined pools.

A round has three phases, so that a flow can spread the search: :func:`plan_mining` (embed, index, known
positives), :func:`search_sessions` over batch-aligned ranges of the sessions (each batch draws with its own
seed: any split selects the same negatives; the search space pickles, its index as FAISS bytes) and
:func:`finish_mining`. :func:`mine_hard_negatives` runs the three in this process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal, cast

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ann.embedding import shard_bounds
from ann.index import EmbeddingIndex, IndexConfig
from features.query_text import normalize_query
from models.columns import DOC_ID

HARD_NEGATIVES = "hard_negatives"
RANK_BINS = (1, 11, 51, 101, 201, 501, 1001)  # edges of the rank histogram in the report


class MiningConfig(BaseModel):
    """How one round mines: which ranks, how many per example, which index, which false negatives."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: Literal["window", "hardest"] = Field(
        "window", description="window: uniform among ranks in rank_window; hardest: the best-ranked candidates"
    )
    rank_window: tuple[int, int] = Field((101, 500), description="1-based ranks (inclusive) to sample from")
    negatives_per_example: int = Field(20, ge=1, le=1000, description="mined negatives kept per example")
    corpus_share: float = Field(
        1.0, gt=0.0, le=1.0, description="search a seeded random shard of this share of the corpus"
    )
    false_negative_margin: float | None = Field(
        0.0, ge=-2.0, le=2.0,
        description="drop candidates whose cosine exceeds the session's best positive minus this margin "
        "(None: keep them)",
    )
    index: IndexConfig = Field(
        default_factory=lambda: IndexConfig(kind="auto"),
        description="the ANN index searched (auto: exact flat below flat_below documents, IVF-PQ above)",
    )
    nprobe: int | None = Field(None, ge=1, description="IVF lists scanned per query (None: the index default)")
    pseudo_searcher_share: float = Field(
        0.05, gt=0.0, le=1.0, description="a searcher holding more than this share of the training's distinct "
        "(searcher, positive) pairs is a pseudo-searcher (one for every query, as in SciFact): its positives "
        "are not treated as false negatives of each other",
    )
    exact_check_queries: int = Field(
        256, ge=0, description="queries also mined with exact KNN to measure the ANN's cost and pool overlap"
    )
    batch_size: int = Field(4096, ge=1, description="queries embedded and searched per batch")
    seed: int = 0

    @model_validator(mode="after")
    def _window(self) -> "MiningConfig":
        lo, hi = self.rank_window
        if not 1 <= lo <= hi:
            raise ValueError(f"rank_window must be 1 <= first <= last, got {self.rank_window}")
        if hi > 5000:
            raise ValueError(f"rank_window ends at {hi}: mining retrieves that many per query; keep it <= 5000")
        return self

    @property
    def retrieve_k(self) -> int:
        """How deep each query's candidate list goes."""
        return self.rank_window[1]


class MiningReport(BaseModel):
    """What a round did, for its Prefect artifact and the examples' manifest."""

    model_config = ConfigDict(extra="forbid")

    strategy: str
    rank_window: tuple[int, int]
    sessions: int
    examples: int
    corpus_documents: int
    searched_documents: int
    retrieve_k: int
    index_kind: str
    candidates: int = Field(description="candidates in the rank window (or in the top-K for hardest)")
    removed_known_positives: int = Field(description="positives of the same searcher or query")
    removed_by_margin: int = Field(description="scored above the best positive minus the margin")
    selected_per_session: float
    examples_with_negatives: int
    negatives_per_example: dict[str, float] = Field(description="min / mean / max over training examples")
    rank_histogram: dict[str, int] = Field(description="ranks of the selected negatives")
    embed_seconds: float
    ann_seconds: float
    exact_check_queries: int
    ann_seconds_per_query: float | None
    exact_seconds_per_query: float | None
    pool_overlap_with_exact: float | None = Field(
        description="share of the exact search's candidate pool that the ANN pool also holds (check sample)"
    )

    @property
    def false_negative_share(self) -> float:
        total = self.candidates
        return (self.removed_known_positives + self.removed_by_margin) / total if total else 0.0

    def to_markdown(self) -> str:
        r = self
        speed = "-"
        if r.ann_seconds_per_query and r.exact_seconds_per_query:
            speed = (f"{r.ann_seconds_per_query * 1e3:.3f} ms ANN vs {r.exact_seconds_per_query * 1e3:.3f} ms "
                     f"exact per query ({r.exact_seconds_per_query / r.ann_seconds_per_query:.1f}x)")
        lines = [
            f"- strategy **{r.strategy}**, ranks {r.rank_window[0]}-{r.rank_window[1]}, {r.index_kind} index over "
            f"{r.searched_documents:,} of {r.corpus_documents:,} documents",
            f"- {r.sessions:,} training sessions ({r.examples:,} examples); {r.examples_with_negatives:,} examples "
            f"got negatives (min/mean/max {r.negatives_per_example['min']:.0f} / "
            f"{r.negatives_per_example['mean']:.1f} / {r.negatives_per_example['max']:.0f})",
            f"- false negatives removed: {r.removed_known_positives:,} known positives, {r.removed_by_margin:,} "
            f"above the margin ({r.false_negative_share:.1%} of {r.candidates:,} candidates)",
            f"- time: embedding {r.embed_seconds:.1f} s, ANN search {r.ann_seconds:.1f} s; {speed}",
            "- mined pool overlap with exact KNN: "
            + ("-" if r.pool_overlap_with_exact is None else f"{r.pool_overlap_with_exact:.3f}")
            + f" ({r.exact_check_queries} queries)",
            "",
            "| rank of mined negative | count |",
            "|---|---:|",
            *[f"| {k} | {v:,} |" for k, v in r.rank_histogram.items()],
        ]
        return "\n".join(lines) + "\n"


@dataclass
class MiningResult:
    examples: pd.DataFrame  # the input examples plus the hard_negatives list column
    report: MiningReport


def sessions_of(train: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(session code of each example, first example row of each session)."""
    key = train["session_id"].astype(str) if "session_id" in train.columns else pd.Series(
        np.arange(len(train)).astype(str))
    codes, _ = pd.factorize(key.to_numpy())
    first = pd.Series(np.arange(len(train))).groupby(codes).first().to_numpy()
    return codes.astype(np.int64), first


def known_positive_keys(train: pd.DataFrame, doc_row: pd.Series, pseudo_share: float | None = None
                        ) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    """int64 keys (owner code * n_docs + corpus row) of every (searcher, positive) and (query, positive) pair
    of the training examples, sorted; plus the searcher and query code maps. Searchers holding more than
    ``pseudo_share`` of the distinct (searcher, positive) pairs are left out of the searcher keys."""
    n = len(doc_row)
    rows = doc_row.reindex(train[DOC_ID].astype(str).to_numpy()).to_numpy()
    ok = ~pd.isna(rows)
    rows = rows[ok].astype(np.int64)
    searchers = train["searcher_id"].astype(str).to_numpy()[ok]
    if pseudo_share is not None:
        distinct = pd.Series(rows).groupby(searchers).nunique()
        pseudo = distinct > pseudo_share * distinct.sum()
        searchers = np.where(pd.Series(searchers).map(pseudo).to_numpy(bool), "", searchers)
    s_codes, s_uniq = pd.factorize(searchers)
    q_text = cast(pd.Series, normalize_query(train["query"])).to_numpy(object)[ok]  # a Series in, a Series out
    q_codes, q_uniq = pd.factorize(q_text)
    has_q = q_text != ""
    real = searchers != ""
    searcher_keys = np.unique(s_codes[real].astype(np.int64) * n + rows[real])
    query_keys = np.unique(q_codes[has_q].astype(np.int64) * n + rows[has_q])
    return (searcher_keys, query_keys, {s: i for i, s in enumerate(s_uniq) if s != ""},
            {q: i for i, q in enumerate(q_uniq) if q != ""})


def _member(keys: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    if len(sorted_keys) == 0:
        return np.zeros(np.shape(keys), bool)
    pos = np.searchsorted(sorted_keys, keys).clip(max=len(sorted_keys) - 1)
    return sorted_keys[pos] == keys


def _search(index: EmbeddingIndex | None, doc_emb: np.ndarray | None, q: np.ndarray, k: int,
            nprobe: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows) of the top-k: through ``index``, or exact (matmul) over ``doc_emb`` when it is None."""
    if index is not None:
        return index.search(q, k, nprobe=nprobe)
    assert doc_emb is not None  # an exact search is always given the vectors
    import torch

    scores = torch.from_numpy(np.ascontiguousarray(q)) @ torch.from_numpy(doc_emb).T
    val, idx = scores.topk(min(k, doc_emb.shape[0]), dim=1)
    return val.numpy(), idx.numpy().astype(np.int64)


def select_candidates(
    rows: np.ndarray, scores: np.ndarray, session_of_query: np.ndarray, known: np.ndarray,
    best_positive: np.ndarray, config: MiningConfig, rng: np.random.Generator,
) -> tuple[pd.DataFrame, dict]:
    """From per-query ranked candidates (rows/scores [Q, K], -1 = none) to the selected negatives.

    ``known`` [Q, K] marks known positives; ``best_positive`` [Q] is each query's best positive cosine (NaN:
    unknown). Returns (frame of session, rank, row; stats of what was removed).
    """
    q_n, k = rows.shape
    rank = np.broadcast_to(np.arange(1, k + 1), rows.shape)
    valid = rows >= 0
    lo, hi = config.rank_window
    in_pool = valid & (rank >= lo) & (rank <= hi) if config.strategy == "window" else valid
    margin_drop = np.zeros_like(in_pool)
    if config.false_negative_margin is not None:
        threshold = (best_positive - config.false_negative_margin)[:, None]
        margin_drop = in_pool & ~known & np.nan_to_num(scores > threshold, nan=False)
    keep = in_pool & ~known & ~margin_drop
    stats = {"candidates": int(in_pool.sum()), "removed_known_positives": int((in_pool & known).sum()),
             "removed_by_margin": int(margin_drop.sum())}
    qi, col = np.nonzero(keep)
    frame = pd.DataFrame({"session": session_of_query[qi], "rank": col + 1, "row": rows[qi, col]})
    if config.strategy == "window":  # a uniform sample per session: order by a random key
        frame["key"] = rng.random(len(frame))
        frame = frame.sort_values(["session", "key"], kind="stable")
    frame = frame.drop_duplicates(["session", "row"])
    frame = frame.groupby("session", sort=False).head(config.negatives_per_example)
    return frame[["session", "rank", "row"]].reset_index(drop=True), stats


@dataclass
class SearchSpace:
    """What searching a range of sessions needs. Picklable (the index travels as FAISS's serialized bytes):
    a mapped task on a Dask worker searches its range of sessions with it."""

    index: EmbeddingIndex  # over the searched documents; ids are positions in ``shard``
    shard: np.ndarray  # corpus rows of the searched documents
    q_emb: np.ndarray  # (sessions, dim) query embeddings
    q_searcher: np.ndarray  # per session: its searcher's code in searcher_keys (-1: none)
    q_query: np.ndarray  # per session: its normalized query's code in query_keys (-1: none)
    searcher_keys: np.ndarray  # sorted searcher * n_docs + row keys of known positives
    query_keys: np.ndarray
    best_positive: np.ndarray  # per session: its best positive's cosine (NaN: none in the corpus)
    n_docs: int
    k: int
    config: MiningConfig

    def __getstate__(self):
        return {**self.__dict__, "index": self.index.to_bytes()}

    def __setstate__(self, state):
        self.__dict__.update({**state, "index": EmbeddingIndex.from_bytes(state["index"])})


@dataclass
class SearchedRange:
    """The candidates kept for a range of sessions, with its counts and ANN time."""

    selected: pd.DataFrame
    totals: dict[str, int]
    ann_seconds: float


@dataclass
class MiningPlan:
    """A round after embedding and indexing (:func:`plan_mining`), before the search."""

    space: SearchSpace
    examples: pd.DataFrame
    is_train: np.ndarray
    codes: np.ndarray  # per training example: its session
    doc_ids: np.ndarray
    index_kind: str
    embed_seconds: float
    shard_emb: np.ndarray
    check_sample: np.ndarray  # sessions also searched exactly, for the ANN-vs-exact figures

    def ranges(self, shards: int = 1) -> list[tuple[int, int]]:
        """Session ranges for ``shards`` searches, on batch boundaries: each batch keeps its seeded draw, so
        any split selects the same negatives."""
        return shard_bounds(len(self.space.q_emb), shards, self.space.config.batch_size)


def plan_mining(model, examples: pd.DataFrame, documents: pd.DataFrame, config: MiningConfig) -> MiningPlan:
    """Embed the training sessions' queries and the corpus, index the searched shard of it, and collect the
    known positives: everything the search needs."""
    if DOC_ID not in documents.columns or documents.empty:
        raise ValueError("mining needs a non-empty document table with a doc_id column")
    is_train = (examples["split"] == "train").to_numpy() if "split" in examples.columns else np.ones(
        len(examples), bool)
    train = examples.loc[is_train].reset_index(drop=True)
    if train.empty:
        raise ValueError("no training examples to mine hard negatives for")
    doc_ids = documents[DOC_ID].astype(str).to_numpy(object)
    n_docs = len(doc_ids)
    doc_row = pd.Series(np.arange(n_docs), index=pd.Index(doc_ids))
    rng = np.random.default_rng(config.seed)

    t0 = time.perf_counter()
    doc_emb = np.ascontiguousarray(model.embed_documents(documents), dtype=np.float32)
    codes, first = sessions_of(train)
    q_frame = train.iloc[first].reset_index(drop=True)
    q_emb = np.ascontiguousarray(model.embed_queries(q_frame), dtype=np.float32)
    embed_seconds = time.perf_counter() - t0

    # A seeded random shard of the corpus (the paper: semi-hard negatives do not need the whole index).
    shard = np.arange(n_docs)
    if config.corpus_share < 1.0:
        shard = np.sort(rng.choice(n_docs, size=max(1, round(n_docs * config.corpus_share)), replace=False))
    shard_emb = np.ascontiguousarray(doc_emb[shard])
    k = min(config.retrieve_k, len(shard))
    index_cfg = config.index.resolve(len(shard), shard_emb.shape[1])
    index = EmbeddingIndex.build(shard_emb, np.arange(len(shard), dtype=np.int64), index_cfg, progress=False)

    # Positives: known pairs (false negatives) and each session's best positive cosine (the margin rule).
    searcher_keys, query_keys, s_code, q_code = known_positive_keys(train, doc_row, config.pseudo_searcher_share)
    pos_rows = doc_row.reindex(train[DOC_ID].astype(str).to_numpy()).to_numpy(dtype=np.float64)
    pos_score = np.full(len(train), np.nan)
    inside = ~np.isnan(pos_rows)
    pos_score[inside] = np.einsum("ij,ij->i", q_emb[codes[inside]], doc_emb[pos_rows[inside].astype(np.int64)])
    best_positive = pd.Series(pos_score).groupby(codes).max().reindex(range(len(first))).to_numpy()
    q_searcher = np.array([s_code.get(s, -1) for s in q_frame["searcher_id"].astype(str)], np.int64)
    q_norm = cast(pd.Series, normalize_query(q_frame["query"]))  # a Series in, a Series out
    q_query = np.array([q_code.get(q, -1) for q in q_norm.to_numpy(object)], np.int64)
    space = SearchSpace(index, shard, q_emb, q_searcher, q_query, searcher_keys, query_keys, best_positive,
                        n_docs, k, config)
    n_check = min(config.exact_check_queries, len(q_emb))
    check = np.sort(rng.choice(len(q_emb), size=n_check, replace=False)) if n_check else np.zeros(0, np.int64)
    return MiningPlan(space, examples, is_train, codes, doc_ids, index_cfg.kind, embed_seconds, shard_emb, check)


def search_sessions(space: SearchSpace, start: int, end: int) -> SearchedRange:
    """Candidates of sessions ``start``..``end`` (batch-aligned): ANN top-K, known positives and the margin
    removed, negatives drawn per batch with the batch's own seed."""
    config, index, n_docs = space.config, space.index, space.n_docs
    selected, totals, ann_seconds = [], {"candidates": 0, "removed_known_positives": 0, "removed_by_margin": 0}, 0.0
    for s in range(start, end, config.batch_size):
        e = min(end, s + config.batch_size)
        t = time.perf_counter()
        scores, hits = _search(index, None, space.q_emb[s:e], space.k, config.nprobe)
        ann_seconds += time.perf_counter() - t
        rows = np.where(hits >= 0, space.shard[np.clip(hits, 0, None)], -1)
        q_searcher, q_query = space.q_searcher[s:e, None], space.q_query[s:e, None]
        known = (_member(q_searcher * n_docs + rows, space.searcher_keys) & (q_searcher >= 0)) | (
            _member(q_query * n_docs + rows, space.query_keys) & (q_query >= 0))
        frame, stats = select_candidates(rows, scores, np.arange(s, e), known, space.best_positive[s:e], config,
                                         np.random.default_rng([config.seed, s]))
        selected.append(frame)
        for key in totals:
            totals[key] += stats[key]
    return SearchedRange(pd.concat(selected, ignore_index=True), totals, ann_seconds)


def finish_mining(plan: MiningPlan, searched: list[SearchedRange]) -> MiningResult:
    """The ranges' candidates back to the examples, the ANN-vs-exact check on a sample, the report."""
    space, config = plan.space, plan.space.config
    chosen = pd.concat([r.selected for r in searched], ignore_index=True)
    totals = {key: sum(r.totals[key] for r in searched) for key in searched[0].totals}
    ann_seconds = sum(r.ann_seconds for r in searched)
    k, n_q = space.k, len(space.q_emb)

    # ANN vs exact on a sample of the queries: cost per query and overlap of the candidate pools.
    overlap = exact_per_query = ann_per_query = None
    sample = plan.check_sample
    n_check = len(sample)
    if n_check:
        t = time.perf_counter()
        _, ann_hits = _search(space.index, plan.shard_emb, space.q_emb[sample], k, config.nprobe)
        ann_per_query = (time.perf_counter() - t) / n_check
        t = time.perf_counter()
        _, exact_hits = _search(None, plan.shard_emb, space.q_emb[sample], k, None)
        exact_per_query = (time.perf_counter() - t) / n_check
        lo = config.rank_window[0] if config.strategy == "window" else 1
        shared = [len(np.intersect1d(a[lo - 1:], b[lo - 1:])) / max(len(b[lo - 1:]), 1)
                  for a, b in zip(ann_hits, exact_hits)]
        overlap = float(np.mean(shared))

    # Back to examples: every example of a session gets the session's negatives.
    doc_ids, examples, is_train, codes = plan.doc_ids, plan.examples, plan.is_train, plan.codes
    per_session = chosen.groupby("session")["row"].agg(list)
    lists = per_session.reindex(range(n_q)).to_numpy(object)
    neg_ids = [[doc_ids[r] for r in v] if isinstance(v, list) else [] for v in lists]
    out = examples.copy()
    column = np.empty(len(out), object)
    column[:] = [[] for _ in range(len(out))]
    train_pos = np.flatnonzero(is_train)
    for i, c in zip(train_pos, codes):
        column[i] = neg_ids[c]
    out[HARD_NEGATIVES] = column
    counts = np.array([len(column[i]) for i in train_pos])
    edges = [e for e in RANK_BINS if e <= k] + [k + 1]
    hist = np.histogram(chosen["rank"].to_numpy(), bins=edges)[0] if len(chosen) else np.zeros(len(edges) - 1)
    report = MiningReport(
        strategy=config.strategy, rank_window=config.rank_window, sessions=n_q, examples=int(is_train.sum()),
        corpus_documents=space.n_docs, searched_documents=len(space.shard), retrieve_k=k,
        index_kind=plan.index_kind, **totals, selected_per_session=len(chosen) / max(n_q, 1),
        examples_with_negatives=int((counts > 0).sum()),
        negatives_per_example={"min": float(counts.min()), "mean": float(counts.mean()), "max": float(counts.max())},
        rank_histogram={f"{a}-{b - 1}": int(c) for a, b, c in zip(edges[:-1], edges[1:], hist)},
        embed_seconds=round(plan.embed_seconds, 3), ann_seconds=round(ann_seconds, 3), exact_check_queries=n_check,
        ann_seconds_per_query=ann_per_query, exact_seconds_per_query=exact_per_query,
        pool_overlap_with_exact=overlap,
    )
    return MiningResult(out, report)


def mine_hard_negatives(model, examples: pd.DataFrame, documents: pd.DataFrame,
                        config: MiningConfig | None = None, progress: bool = False) -> MiningResult:
    """One mining round over the ``train`` examples (``split`` column; all rows when absent) against
    ``documents`` (the corpus the model trains on), in this process. See the module docstring; a flow maps
    :func:`search_sessions` over :meth:`MiningPlan.ranges` instead (the same result)."""
    plan = plan_mining(model, examples, documents, config or MiningConfig())
    return finish_mining(plan, [search_sessions(plan.space, a, b) for a, b in plan.ranges()])


__all__ = ["HARD_NEGATIVES", "MiningConfig", "MiningPlan", "MiningReport", "MiningResult", "SearchSpace",
           "SearchedRange", "finish_mining", "mine_hard_negatives", "plan_mining", "search_sessions",
           "select_candidates"]
