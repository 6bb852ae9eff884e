"""The gate a rebuilt index passes before it is published: ANN recall against exact search, counts and size.

ANN recall and held-out recall are measured by :mod:`ann.recall`; this module holds the thresholds, the
comparison with the current version and the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from ann.index import EmbeddingIndex
from ann.recall import held_out_recall, recall_at_k
from infra.storage import ArtifactNotFoundError, ArtifactStore

HELD_OUT_SPLITS = ("test", "valid")


class ValidationConfig(BaseModel):
    """Thresholds of the index gate."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    k: int = Field(10, ge=1, le=1000, description="recall@k of the ANN index against exact search")
    min_recall: float = Field(0.9, ge=0.0, le=1.0, description="least ANN recall@k to publish")
    n_queries: int = Field(1000, ge=1, le=100_000, description="queries sampled for the recall measurement")
    max_index_bytes: int | None = Field(None, ge=1, description="largest index artifact to publish (None: any)")
    max_drop: float = Field(
        0.2, ge=0.0, le=1.0,
        description="largest share of documents, overall and of each document type, that a new version may "
                    "lose against the current one (a broken input, not a real change, empties a type)")
    max_recall_drop: float = Field(
        0.05, ge=0.0, le=1.0,
        description="largest fall of ANN recall@k against the current version's (absolute): an index that "
                    "serves worse than last night's is not published, even above min_recall")
    max_held_out_drop: float = Field(
        0.2, ge=0.0, le=1.0,
        description="largest relative fall of held-out recall@k (the held-out clicks the new index returns in its "
                    "top k) against the current version's: a corpus or model that loses what searchers click")
    accept_drop: bool = Field(
        False, description="publish despite a drop beyond max_drop, max_recall_drop or max_held_out_drop (a "
                           "legitimate change); recorded in the report")
    seed: int = Field(0, ge=0, description="query sample seed")


class IndexValidation(BaseModel):
    """Figures of one validation (they go into the index manifest and the run report)."""

    k: int
    recall_at_k: float
    min_recall: float
    n_queries: int
    query_source: str
    nprobe: int | None
    expected_documents: int
    indexed_documents: int
    index_bytes: int
    max_index_bytes: int | None
    failures: list[str]
    compared_with: str | None = None  # the version that was current
    current_recall_at_k: float | None = None  # its ANN recall@k (same k), when its manifest has one
    max_recall_drop: float | None = None
    # share of sampled held-out (query, clicked document) pairs whose document the index returns in its top k
    held_out_recall_at_k: float | None = None
    current_held_out_recall_at_k: float | None = None
    max_held_out_drop: float | None = None
    count_changes: list[dict[str, Any]] = []  # per doc type (and "all"): before, after, change
    accepted: list[str] = []  # drops beyond bounds published anyway (accept_drop)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_markdown(self) -> str:
        verdict = "passed" if self.passed else "FAILED: " + "; ".join(self.failures)
        return "\n".join([
            f"Validation {verdict}",
            "",
            "| check | value | bound |",
            "|---|---:|---:|",
            f"| ANN recall@{self.k} vs exact ({self.n_queries} {self.query_source} queries, nprobe "
            f"{self.nprobe if self.nprobe is not None else '-'}) | {self.recall_at_k:.4f} | >= {self.min_recall} |",
            *([f"| ANN recall@{self.k} of the current version `{self.compared_with}` | "
               f"{self.current_recall_at_k:.4f} | new >= current - {self.max_recall_drop} |"]
              if self.current_recall_at_k is not None else []),
            *([f"| held-out recall@{self.k} (clicked documents in the top {self.k}) | "
               f"{self.held_out_recall_at_k:.4f} | "
               + (f"current `{self.compared_with}`: {self.current_held_out_recall_at_k:.4f}, new >= x"
                  f"{1 - self.max_held_out_drop:.2f} |"
                  # validate_index sets both or neither
                  if self.current_held_out_recall_at_k is not None and self.max_held_out_drop is not None
                  else "- |")] if self.held_out_recall_at_k is not None else []),
            f"| documents indexed | {self.indexed_documents} | = {self.expected_documents} |",
            f"| index bytes | {self.index_bytes} | <= {self.max_index_bytes or 'any'} |",
            *([""] if self.compared_with else []),
            *([f"Documents against the current version `{self.compared_with}`:", "",
               "| documents | current | new | change |", "|---|---:|---:|---:|",
               *(f"| {c['type']} | {c['before']} | {c['after']} | {c['change']:+.1%} |" for c in self.count_changes)]
              if self.compared_with else []),
            *(["", "**Accepted by the operator** (accept_drop): " + "; ".join(self.accepted)] if self.accepted else []),
        ])


def count_changes(before: dict[str, int], after: dict[str, int]) -> list[dict[str, Any]]:
    """Per document type and overall ("all"): counts before and after, and the relative change."""
    rows = []
    for t in ["all", *sorted((set(before) | set(after)) - {"all"})]:
        b = before.get(t, 0) if t != "all" else sum(v for k, v in before.items())
        a = after.get(t, 0) if t != "all" else sum(v for k, v in after.items())
        rows.append({"type": t, "before": b, "after": a, "change": (a - b) / b if b else 0.0})
    return rows


def drop_failures(changes: list[dict[str, Any]], max_drop: float) -> list[str]:
    """One failure naming every count (overall or of a type) that lost more than ``max_drop``; [] if none."""
    drops = [f"{c['type'] if c['type'] != 'all' else 'all documents'} {c['before']} -> {c['after']} "
             f"({c['change']:+.1%})" for c in changes if c["before"] and c["change"] < -max_drop]
    if not drops:
        return []
    return [f"documents would drop against the current version beyond -{max_drop:.0%}: {', '.join(drops)}; "
            "if this is a real change, rebuild with accept_drop (ebr rebuild-index --accept-drop)"]


@dataclass(frozen=True)
class CurrentVersion:
    """What the validation compares a new index with: the version it would replace."""

    ref: str
    type_counts: dict[str, int]
    recall_at_k: float | None = None  # its validation's ANN recall@k
    k: int | None = None
    kind: str | None = None  # flat or ivfpq: recall is compared between indexes of one kind (a corpus that
    # outgrows the exact index moves to IVF-PQ by configuration, and loses the exact index's recall of 1)
    held_out_recall_at_k: float | None = None  # its held-out recall@k (compared at the same k, any kind)


class IndexValidationError(RuntimeError):
    """A rebuilt index that must not be published; ``validation`` holds the figures."""

    def __init__(self, validation: IndexValidation):
        self.validation = validation
        super().__init__(
            "index validation failed, nothing was published and the previous index stays current: "
            + "; ".join(validation.failures)
        )


def sample_rows(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Sorted positions of a seeded sample of ``min(size, n)`` rows."""
    if size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


class QueryEmbedder(Protocol):
    def embed_queries(self, frame: pd.DataFrame, batch_size: int = ...) -> np.ndarray: ...


def held_out_sample(
    model: QueryEmbedder, model_meta: dict[str, Any], n: int, seed: int = 0, store: ArtifactStore | None = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """Query embeddings of up to ``n`` distinct (searcher, query) pairs of the held-out examples the model's
    manifest names (``examples``: ``dataset/<name>@<version>``): real queries the model did not train on, with
    the document each one's example clicked (ids as strings).

    None when the manifest names no examples or they hold no held-out rows.
    """
    head, _, version = str(model_meta.get("examples") or "").partition("@")
    kind, _, name = head.partition("/")
    if kind != "dataset" or not name or not version:
        return None
    store = store or ArtifactStore.from_settings()
    try:
        local = store.fetch("dataset", name, version)
    except ArtifactNotFoundError:
        return None
    for split in HELD_OUT_SPLITS:
        path = Path(local) / f"{split}.parquet"
        if path.is_file():
            frame = pd.read_parquet(path)
            frame = frame[frame["query"].fillna("").astype(str).str.strip() != ""]
            if len(frame):
                frame = frame.drop_duplicates(["searcher_id", "query"]).reset_index(drop=True)
                sample = frame.iloc[sample_rows(len(frame), n, seed)]
                return model.embed_queries(sample), sample["doc_id"].astype(str).to_numpy()
    return None


def validate_index(
    index: EmbeddingIndex,
    vectors: np.ndarray,
    queries: np.ndarray,
    config: ValidationConfig,
    query_source: str,
    expected_documents: int,
    index_bytes: int,
    type_counts: dict[str, int] | None = None,
    current: CurrentVersion | None = None,
    targets: np.ndarray | None = None,
) -> IndexValidation:
    """Measure the gate's figures and list every failed check (an empty list means publishable).
    ``current``: the version being replaced, to bound the drop of documents, of ANN recall and of held-out
    recall. ``targets``: per query, the index position of the document its held-out example clicked (-1: not
    in the index, a miss)."""
    if len(queries) == 0:
        raise ValueError("no validation queries")
    k = min(config.k, max(1, index.ntotal))
    recall = recall_at_k(index, vectors, queries, k) if index.ntotal else 0.0
    failures = []
    if index.ntotal != expected_documents:
        failures.append(f"the index holds {index.ntotal} documents, the corpus has {expected_documents}")
    if recall < config.min_recall:
        failures.append(f"ANN recall@{k} {recall:.4f} is below min_recall {config.min_recall}")
    if config.max_index_bytes is not None and index_bytes > config.max_index_bytes:
        failures.append(f"the index takes {index_bytes} bytes, more than max_index_bytes {config.max_index_bytes}")
    changes, drops = [], []
    comparable = current is not None and current.k == k and current.kind == index.kind
    current_recall = current.recall_at_k if current is not None and comparable else None
    if current is not None and type_counts is not None:
        changes = count_changes(current.type_counts, type_counts)
        drops = drop_failures(changes, config.max_drop)
    if current_recall is not None and recall < current_recall - config.max_recall_drop:
        drops.append(f"ANN recall@{k} would fall from {current_recall:.4f} (current version) to {recall:.4f}, "
                     f"more than {config.max_recall_drop}; if this is a real change, rebuild with accept_drop "
                     "(ebr rebuild-index --accept-drop)")
    held_out = held_out_recall(index, queries, targets, k) if targets is not None else None
    current_held_out = (current.held_out_recall_at_k if current is not None and current.k == k and held_out is not None
                        else None)
    if (current_held_out is not None and held_out is not None
            and held_out < current_held_out * (1 - config.max_held_out_drop)):
        drops.append(f"held-out recall@{k} would fall from {current_held_out:.4f} (current version) to "
                     f"{held_out:.4f}, more than {config.max_held_out_drop:.0%}; if this is a real change, rebuild "
                     "with accept_drop (ebr rebuild-index --accept-drop)")
    accepted = drops if config.accept_drop else []
    if not config.accept_drop:
        failures += drops
    return IndexValidation(
        k=k, recall_at_k=recall, min_recall=config.min_recall, n_queries=len(queries), query_source=query_source,
        nprobe=index.config.nprobe, expected_documents=expected_documents, indexed_documents=index.ntotal,
        index_bytes=index_bytes, max_index_bytes=config.max_index_bytes, failures=failures,
        compared_with=current.ref if current is not None else None, count_changes=changes, accepted=accepted,
        current_recall_at_k=current_recall, max_recall_drop=config.max_recall_drop if current_recall is not None
        else None, held_out_recall_at_k=held_out, current_held_out_recall_at_k=current_held_out,
        max_held_out_drop=config.max_held_out_drop if current_held_out is not None else None,
    )


__all__ = [
    "CurrentVersion",
    "IndexValidation",
    "IndexValidationError",
    "ValidationConfig",
    "count_changes",
    "drop_failures",
    "held_out_sample",
    "sample_rows",
    "validate_index",
]
