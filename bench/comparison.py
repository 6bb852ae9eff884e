"""The side-by-side model comparison: variants of one recipe trained on the same examples, evaluated on the
same held-out sessions with the protocol of :mod:`evaluation.protocol`.

Variants: text-only vs unified, triplet vs softmax, batch vs mixed negatives, with and without online hard
negatives, random vs impressed negatives.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from evaluation.protocol import DEFAULT_KS
from models.config import LossConfig, ModelConfig, TrainConfig
from models.evaluate import evaluate

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


# What each input of the unified model is worth on a dataset: each row switches one group off (or, for
# positives, embeds them from the example's point-in-time document columns instead of the document table).
FEATURE_ABLATION: dict[str, dict[str, Any]] = {
    "unified (default)": {},
    "without ids": {"model": {"ids": False}},
    "without history": {"model": {"history": False}},
    "without profile": {"model": {"profile": False}},
    "without tags": {"model": {"tags": False}},
    "without counts": {"model": {"counts": False}},
    "without location": {"model": {"location": False}},
    "without social": {"model": {"social": False}},
    "positives from the example's own columns": {"positive_features": "example"},
    "text-only": {"model": {"use_context": False}},
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
    consumed: Mapping[str, Sequence[str]] | None = None,
    valid_index: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Train every variant on the same examples, evaluate each on the same test sessions; one row each.

    ``documents`` is the training corpus (mixed negatives, validation); ``index`` the documents the test
    sessions retrieve from (default: ``documents``), ``valid_index`` those validation retrieves from
    (default: ``documents``). Columns: recall@K, mrr, ndcg@10, best_epoch,
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
                         feature_service=feature_service, consumed=consumed, valid_documents=valid_index)
            seconds = time.perf_counter() - t0
            metrics = evaluate(result.model, test, index, ks=ks, max_sessions=max_sessions, qrels=qrels, seed=seed,
                               consumed=consumed)
            rows.append({"variant": name, **metrics, "best_epoch": result.best_epoch, "valid_metric": result.best_metric,
                         "train_seconds": seconds,
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
