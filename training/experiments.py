"""Offline experiments: the held-out protocol, plain baselines and the side-by-side model comparison.

One protocol serves the train/evaluate flows, the comparison report and the benchmarks, so their figures
are comparable:

- **the index**: a held-out split is retrieved from the documents as the index stood when the data the
  model learned from ended (:func:`split_cutoff`): each document with its newest feature snapshot not
  after the cutoff, and documents created later with their first snapshot (a nightly rebuild adds them).
  Nothing that happened after the cutoff reaches a document that already existed.
- **the metrics**: the paper's recall@K (eq. 1) over up to 10,000 held-out sessions with exact KNN over
  the whole index, MRR and nDCG@10 (graded by qrels where the source has them), from
  :mod:`models.evaluate`; :func:`ranking_metrics` computes the same figures from any ranking, so the
  popularity and BM25 baselines are scored on exactly the same sessions and index.
- **the comparison** (:func:`compare_models`): variants of one base :class:`TrainConfig` trained on the same
  examples and evaluated on the same test sessions: text-only vs unified, triplet vs softmax, batch vs
  mixed negatives, with and without online hard negatives, random vs impressed negatives.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from features.schema import DOC_CATEGORICAL, DOC_TEXT, SEARCHER_CATEGORICAL, SPLITS, doc_column, searcher_column
from models.config import LossConfig, ModelConfig, TrainConfig
from models.evaluate import EvalSessions, evaluate, session_targets

DEFAULT_KS = (1, 10, 50, 100)
FEATURE_TS = "feature_ts"
# A document's own fields, fixed at its creation (the rest of its features are aggregates over time).
STATIC_DOC_FIELDS = (*DOC_TEXT, *DOC_CATEGORICAL)


# --------------------------------------------------------------------------- the held-out protocol


def split_cutoff(parts: Mapping[str, pd.DataFrame], split: str) -> pd.Timestamp:
    """The newest example time a model evaluated on ``split`` could have learned from.

    valid: the newest train example; test: the newest train or valid example. With a time split this is
    the start of the held-out period; with a source's random split (MovieLens, Meetup Chicago) it is the
    end of the data, whose adapters keep held-out interactions out of the feature inputs.
    """
    if split not in SPLITS[1:]:
        raise ValueError(f"split must be one of {list(SPLITS[1:])}, got {split!r}")
    before = SPLITS[: SPLITS.index(split)]
    times = [pd.to_datetime(parts[s]["ts"], utc=True) for s in before if s in parts and len(parts[s])]
    if not times:
        raise ValueError(f"no {' or '.join(before)} examples: nothing a model evaluated on {split!r} learned from")
    return max(t.max() for t in times)


def index_documents(snapshots: pd.DataFrame, as_of: datetime | pd.Timestamp, include_later: bool = True) -> pd.DataFrame:
    """One row per document from feature snapshot rows (``doc_id``, ``feature_ts``, features).

    Each document gets its newest snapshot with ``feature_ts <= as_of``; with ``include_later``, documents
    without one get their first snapshot after ``as_of``. Sorted by ``doc_id``.
    """
    missing = [c for c in ("doc_id", FEATURE_TS) if c not in snapshots.columns]
    if missing:
        raise ValueError(f"document snapshots lack column(s) {missing}; present: {list(snapshots.columns)}")
    as_of = pd.Timestamp(as_of)
    if as_of.tzinfo is None:
        raise ValueError(f"as_of must be timezone-aware (UTC), got {as_of}")
    ts = pd.to_datetime(snapshots[FEATURE_TS], utc=True)
    order = np.argsort(ts.to_numpy(dtype="datetime64[ns]"), kind="stable")
    s = snapshots.iloc[order]
    early = (ts <= as_of).to_numpy()[order]
    parts = [s[early].drop_duplicates("doc_id", keep="last")]
    if include_later:
        later = s[~early]
        parts.append(later[~later["doc_id"].isin(parts[0]["doc_id"])].drop_duplicates("doc_id", keep="first"))
    drop = [c for c in ("event_timestamp", "created_timestamp") if c in s.columns]
    out = pd.concat(parts, ignore_index=True).drop(columns=drop)
    return out.sort_values("doc_id", kind="stable").reset_index(drop=True)


def _fill(examples: pd.DataFrame, table: pd.DataFrame, key: str, fields: Sequence[str], column, ts_column: str
          ) -> pd.DataFrame:
    hole = examples[ts_column].isna() if ts_column in examples.columns else pd.Series(True, index=examples.index)
    if not hole.any():
        return examples
    static = table.drop_duplicates(key).set_index(key)
    out = examples.copy()
    ids = out.loc[hole, key].astype(str)
    for f in fields:
        if f not in static.columns:
            continue
        col = column(f)
        values = static[f].reindex(ids).to_numpy(dtype=object)
        if col not in out.columns:
            out[col] = None
        current = out.loc[hole, col].to_numpy(dtype=object)
        out.loc[hole, col] = np.where(pd.isna(current), values, current)
    return out


def fill_static_document_fields(examples: pd.DataFrame, documents: pd.DataFrame) -> pd.DataFrame:
    """Fill a document's own fields (title, body, type, location) where the point-in-time join found no
    snapshot (a document created after the last snapshot before the session). Those fields exist from the
    document's creation, so this adds nothing from the future; member aggregates stay missing."""
    return _fill(examples, documents, "doc_id", STATIC_DOC_FIELDS, doc_column, "doc_feature_ts")


def fill_static_searcher_fields(examples: pd.DataFrame, searchers: pd.DataFrame) -> pd.DataFrame:
    """The same for the searcher's own fields (city, region, country, language) of a searcher who joined
    after the last snapshot before the session; social features and counts stay missing."""
    return _fill(examples, searchers, "searcher_id", SEARCHER_CATEGORICAL, searcher_column, "searcher_feature_ts")


def document_snapshots_from_repo(repo, as_of: datetime | pd.Timestamp) -> pd.DataFrame:
    """The document snapshot rows of a :class:`features.store.FeatureRepo` that :func:`index_documents`
    needs for ``as_of``: the newest day written not after it, and every later day."""
    days = repo.source_days("document")
    if not days:
        raise FileNotFoundError(f"no document snapshots under {repo.root}; run the materialize flow first")
    from features.compute import as_of_for_day

    as_of = pd.Timestamp(as_of)
    first = 0
    for i, day in enumerate(days):
        if pd.Timestamp(as_of_for_day(day)) <= as_of:
            first = i
    frames = [repo.read_source("document", d) for d in tqdm(days[first:], desc="read document snapshots",
                                                              unit="day", disable=None)]
    return pd.concat(frames, ignore_index=True)


def evaluate_split(
    model, parts: Mapping[str, pd.DataFrame], split: str, index: pd.DataFrame, ks: Sequence[int] = DEFAULT_KS,
    max_sessions: int = 10_000, qrels: pd.DataFrame | None = None, seed: int = 0,
) -> dict[str, float]:
    """A model's metrics on one held-out split against ``index`` (exact KNN over all its documents)."""
    examples = parts.get(split)
    if examples is None or examples.empty:
        raise ValueError(f"the {split!r} split has no examples to evaluate on")
    return evaluate(model, examples, index, ks=ks, max_sessions=max_sessions, qrels=qrels, seed=seed)


# --------------------------------------------------------------------------- baselines


class Ranker(Protocol):
    """A baseline: for each session query (a frame row), the top ``k`` rows of the document table."""

    def rank(self, queries: pd.DataFrame, k: int) -> np.ndarray: ...


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


def ranking_metrics(
    top: np.ndarray, doc_ids: Sequence[str], sessions: EvalSessions, ks: Sequence[int] = DEFAULT_KS,
    ndcg_k: int = 10, mrr_k: int = 100,
) -> dict[str, float]:
    """The metrics of :func:`models.evaluate.retrieval_metrics` from a ranking: ``top`` is (sessions, k)
    document-table rows, best first, -1 for empty slots. Same definitions, same missing-target rule."""
    n = len(sessions.targets)
    if n == 0 or len(top) != n:
        raise ValueError(f"need one ranking per session: {len(top)} rankings for {n} sessions")
    row_of = pd.Series(np.arange(len(doc_ids)), index=pd.Index(np.asarray(doc_ids, dtype=object).astype(str)))
    disc = 1.0 / np.log2(np.arange(2, ndcg_k + 2))
    recall = {k: np.zeros(n) for k in ks}
    rr, ndcg = np.zeros(n), np.zeros(n)
    for i in range(n):
        ranked = top[i]
        targets = sessions.targets[i]
        rows = row_of.reindex(np.asarray(targets, dtype=object).astype(str)).dropna().to_numpy(np.int64)
        hit = np.isin(ranked, rows) & (ranked >= 0)
        for k in ks:
            recall[k][i] = hit[:k].sum() / max(len(targets), 1)
        g_ids, g_rel = sessions.graded[i]
        grade: dict[int, float] = {}
        for r, v in zip(row_of.reindex(np.asarray(g_ids, dtype=object).astype(str)).to_numpy(), g_rel):
            if not np.isnan(r):
                grade[int(r)] = max(grade.get(int(r), 0.0), float(v))
        gain = np.array([grade.get(int(r), 0.0) if r >= 0 else 0.0 for r in ranked[: max(mrr_k, ndcg_k)]])
        relevant = np.flatnonzero(gain[:mrr_k] > 0)
        rr[i] = 1.0 / (relevant[0] + 1) if len(relevant) else 0.0
        g = gain[:ndcg_k]
        dcg = ((2.0 ** g - 1) * disc[: len(g)]).sum()
        ideal = -np.sort(-np.asarray(g_rel, float))[:ndcg_k]
        idcg = ((2.0 ** ideal - 1) * disc[: len(ideal)]).sum()
        ndcg[i] = dcg / idcg if idcg > 0 else 0.0
    out = {f"recall@{k}": float(recall[k].mean()) for k in ks}
    out["mrr"] = float(rr.mean())
    out[f"ndcg@{ndcg_k}"] = float(ndcg.mean())
    out["n_sessions"] = float(n)
    out["n_documents"] = float(len(doc_ids))
    return out


def evaluate_ranker(
    ranker: Ranker, examples: pd.DataFrame, index: pd.DataFrame, ks: Sequence[int] = DEFAULT_KS,
    max_sessions: int = 10_000, qrels: pd.DataFrame | None = None, seed: int = 0,
) -> dict[str, float]:
    """A baseline's metrics on the same sessions (same sample, same seed) as :func:`models.evaluate.evaluate`."""
    sessions = session_targets(examples, max_sessions, seed, qrels)
    top = ranker.rank(sessions.queries, max(max(ks), 100))
    return ranking_metrics(top, index["doc_id"].astype(str).to_numpy(), sessions, ks)


# --------------------------------------------------------------------------- the comparison

Variant = TrainConfig | ModelConfig | LossConfig | Mapping[str, Any]

# The report of "the unified embedding model": each row changes one thing of the default recipe (unified
# towers, sampled softmax, mixed negatives); the count-free row isolates the raw log1p count inputs; the
# triplet rows test online hard negatives, which only the
# triplet loss uses; the last two train with per-example negatives (4 per click, next to the hardest batch
# negative) drawn at random from the corpus vs taken from the session's non-clicked impressions.
REPORT_VARIANTS: dict[str, dict[str, Any]] = {
    "unified · softmax · mixed (default)": {},
    "text-only · softmax · mixed": {"model": {"use_context": False}},
    "unified without count features · softmax · mixed": {"model": {"counts": False}},
    "unified · softmax · batch": {"loss": {"negatives": "batch"}},
    "text-only · softmax · batch": {"model": {"use_context": False}, "loss": {"negatives": "batch"}},
    "unified · triplet · mixed · online hard (2)": {"loss": {"kind": "triplet", "online_hard_negatives": 2}},
    "unified · triplet · mixed · all negatives": {"loss": {"kind": "triplet", "online_hard_negatives": 0}},
    "unified · triplet · batch · online hard (2)": {
        "loss": {"kind": "triplet", "negatives": "batch", "online_hard_negatives": 2}},
    "unified · triplet · clicks + random negatives": {
        "loss": {"kind": "triplet", "negatives": "batch", "online_hard_negatives": 1,
                 "extra_negatives": ["random_negatives"]}},
    "unified · triplet · clicks + impressions as negatives": {
        "loss": {"kind": "triplet", "negatives": "batch", "online_hard_negatives": 1,
                 "extra_negatives": ["impressed_negatives"]}},
}


def _merge(base: dict, over: Mapping[str, Any]) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def variant_config(base: TrainConfig, variant: Variant) -> TrainConfig:
    """``base`` with a variant applied: a whole TrainConfig, a ModelConfig or LossConfig replacing that part,
    or nested overrides such as ``{"model": {"use_context": False}, "loss": {"kind": "triplet"}}``."""
    if isinstance(variant, TrainConfig):
        return variant
    if isinstance(variant, ModelConfig):
        return base.model_copy(update={"model": variant})
    if isinstance(variant, LossConfig):
        return base.model_copy(update={"loss": variant})
    if isinstance(variant, Mapping):
        return TrainConfig.model_validate(_merge(base.model_dump(mode="json"), variant))
    raise TypeError(
        f"a variant must be a TrainConfig, ModelConfig, LossConfig or a dict of overrides, got {type(variant).__name__}"
    )


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60] or "variant"


def compare_models(
    train: pd.DataFrame,
    valid: pd.DataFrame | None,
    test: pd.DataFrame,
    documents: pd.DataFrame,
    variants: Mapping[str, Variant],
    base: TrainConfig | None = None,
    index: pd.DataFrame | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    max_sessions: int = 10_000,
    qrels: pd.DataFrame | None = None,
    seed: int = 0,
    out_dir: str | Path | None = None,
    feature_service: str = "",
) -> pd.DataFrame:
    """Train every variant on the same examples, evaluate each on the same test sessions; one row each.

    ``documents`` is the training corpus (mixed negatives, validation); ``index`` the documents the test
    sessions retrieve from (default: ``documents``). Columns: recall@K, mrr, ndcg@10, best_epoch,
    train_seconds, examples_per_s. Models go under ``out_dir`` (default: a temporary directory).
    """
    from models.train import train as fit

    if not variants:
        raise ValueError("no variants to compare")
    base = base or TrainConfig()
    configs = {name: variant_config(base, v) for name, v in variants.items()}  # fail before any training
    index = documents if index is None else index
    rows = []
    with tempfile.TemporaryDirectory(prefix="ebr-compare-") as tmp:
        root = Path(out_dir) if out_dir is not None else Path(tmp)
        for name, cfg in tqdm(configs.items(), desc="compare models", unit="variant", disable=None):
            t0 = time.perf_counter()
            result = fit(train, valid, documents, cfg, root / _slug(name), resume=False,
                         feature_service=feature_service)
            seconds = time.perf_counter() - t0
            metrics = evaluate(result.model, test, index, ks=ks, max_sessions=max_sessions, qrels=qrels, seed=seed)
            rows.append({"variant": name, **metrics, "best_epoch": result.best_epoch, "train_seconds": seconds,
                         "examples_per_s": result.examples_per_s})
    return pd.DataFrame(rows).set_index("variant")


def comparison_markdown(
    table: pd.DataFrame, reference: str | None = None, ks: Sequence[int] = DEFAULT_KS, ndcg: bool = False,
) -> str:
    """A markdown table of :func:`compare_models` (or any frame with the same metric columns): recall@K,
    MRR, nDCG@10 when ``ndcg``, and recall@10 relative to the ``reference`` row (default: the first)."""
    if table.empty:
        raise ValueError("empty comparison table")
    reference = reference or table.index[0]
    if reference not in table.index:
        raise ValueError(f"reference {reference!r} is not a row; rows: {list(table.index)}")
    metrics = [f"recall@{k}" for k in ks] + ["mrr"] + (["ndcg@10"] if ndcg else [])
    ref = table.loc[reference, "recall@10"]
    head = ["variant", *metrics, "recall@10 vs ref", "best epoch", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name, row in table.iterrows():
        rel = "ref" if name == reference else (f"{row['recall@10'] / ref - 1:+.1%}" if ref > 0 else "n/a")
        epoch = row.get("best_epoch")
        secs = row.get("train_seconds")
        cells = [f"{row[m]:.4f}" if pd.notna(row.get(m)) else "n/a" for m in metrics]
        cells += [rel, "-" if epoch is None or pd.isna(epoch) else f"{int(epoch)}",
                  "-" if secs is None or pd.isna(secs) else f"{secs:.0f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_json_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """Plain floats (for manifests and Prefect artifacts)."""
    return {k: float(v) for k, v in metrics.items()}


__all__ = [
    "BM25", "DEFAULT_KS", "Popularity", "REPORT_VARIANTS", "Ranker", "compare_models", "comparison_markdown",
    "document_snapshots_from_repo", "evaluate_ranker", "evaluate_split", "fill_static_document_fields",
    "fill_static_searcher_fields",
    "index_documents", "ranking_metrics", "split_cutoff", "variant_config",
]
