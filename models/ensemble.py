"""Embedding ensembles (section 6.2 of the paper): weighted concatenation and cascades of two-tower models.

Both are retrieval models like a single two-tower model: ``embed_queries`` / ``embed_documents`` give the
vectors one FAISS index serves, ``output_dim`` their width, ``feature_service`` what serving must read.

- :class:`WeightedConcat` (eq. 4-6): the query vector is the concatenation of ``alpha_i * q_i`` and the
  document vector the concatenation of the ``d_i`` (each member's output is unit norm). Both are scaled to
  unit norm as well (by ``1/sqrt(sum alpha_i^2)`` and ``1/sqrt(n)``), so the index's inner product is a
  true cosine, and it equals ``sum_i alpha_i cos(q_i, d_i) / (sqrt(sum alpha_i^2) * sqrt(n))``: a constant
  times the weighted sum of the members' cosines, hence the same ranking (:func:`concat_constant`).
- :class:`Cascade`: the first stage retrieves the top ``rerank_n`` (its vectors are what the index holds),
  the second stage re-scores them with its own towers (the index artifact also keeps the second stage's
  document vectors, ``rescore_documents``). Below rank ``rerank_n`` the first stage's order stands.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from models.checkpoint import load_model
from models.features import Records
from models.knn import top_k

ENSEMBLE_FILE = "ensemble.json"
ENSEMBLE_FORMAT = 1


def _service(members: Sequence[Any]) -> str:
    services = {m.feature_service for m in members if getattr(m, "feature_service", "")}
    if len(services) > 1:
        raise ValueError(f"ensemble members were trained on different feature services {sorted(services)}; "
                         "retrain them on one service so serving reads one set of features")
    return services.pop() if services else ""


def concat_constant(weights: Sequence[float]) -> float:
    """The constant of eq. 6: cos(concatenation) = weighted sum of cosines / this."""
    return math.sqrt(sum(w * w for w in weights)) * math.sqrt(len(weights))


def shared_embeddings(members: Sequence[Any], frame: pd.DataFrame | Records, side: str, batch_size: int
                      ) -> list[np.ndarray]:
    """Each member's embeddings of ``frame``, featurized once per distinct featurizer (members trained on one
    training set featurize alike: on one online query, featurization costs more than a tower's forward pass)."""
    tables: dict[str, Any] = {}
    out = []
    for m in members:
        featurizer = getattr(m, "query_featurizer" if side == "query" else "doc_featurizer", None)
        if featurizer is None:  # a nested ensemble: its own path
            out.append(m.embed_queries(frame, batch_size=batch_size) if side == "query"
                       else m.embed_documents(frame, batch_size=batch_size))
            continue
        key = featurizer.signature
        if key not in tables:
            tables[key] = m.featurize_queries(frame) if side == "query" else m.featurize_documents(frame)
        out.append(m.embed_table(tables[key], side, batch_size))
    return out


class WeightedConcat:
    """Weighted concatenation of member embeddings (see the module docstring)."""

    kind = "weighted_concat"

    def __init__(self, members: Sequence[Any], weights: Sequence[float]):
        if len(members) < 1 or len(members) != len(weights):
            raise ValueError(f"need one weight per member: {len(members)} members, {len(weights)} weights")
        if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
            raise ValueError(f"weights must be >= 0 and not all 0, got {list(weights)}")
        self.members, self.weights = list(members), [float(w) for w in weights]
        self.feature_service = _service(self.members)
        self._q_scale = 1.0 / math.sqrt(sum(w * w for w in self.weights))
        self._d_scale = 1.0 / math.sqrt(len(self.members))

    @property
    def output_dim(self) -> int:
        return sum(m.output_dim for m in self.members)

    def embed_queries(self, frame: pd.DataFrame | Records, batch_size: int = 4096, progress: bool = False) -> np.ndarray:
        parts = [w * e for e, w in zip(shared_embeddings(self.members, frame, "query", batch_size), self.weights)]
        return (np.concatenate(parts, axis=1) * self._q_scale).astype(np.float32)

    def embed_documents(self, frame: pd.DataFrame, batch_size: int = 4096, progress: bool = False) -> np.ndarray:
        parts = shared_embeddings(self.members, frame, "document", batch_size)
        return (np.concatenate(parts, axis=1) * self._d_scale).astype(np.float32)

    def spec(self) -> dict:
        return {"kind": self.kind, "weights": self.weights}


class Cascade:
    """First stage retrieves, second stage re-ranks its top ``rerank_n`` (see the module docstring)."""

    kind = "cascade"

    def __init__(self, first: Any, second: Any, rerank_n: int):
        if rerank_n < 1:
            raise ValueError(f"rerank_n must be >= 1, got {rerank_n}")
        self.members = [first, second]
        self.first, self.second, self.rerank_n = first, second, int(rerank_n)
        self.feature_service = _service(self.members)

    @property
    def output_dim(self) -> int:
        return self.first.output_dim

    @property
    def rescore_dim(self) -> int:
        return self.second.output_dim

    def embed_queries(self, frame: pd.DataFrame | Records, batch_size: int = 4096, progress: bool = False) -> np.ndarray:
        return self.first.embed_queries(frame, batch_size=batch_size)

    def embed_documents(self, frame: pd.DataFrame, batch_size: int = 4096, progress: bool = False) -> np.ndarray:
        return self.first.embed_documents(frame, batch_size=batch_size)

    def rescore_queries(self, frame: pd.DataFrame | Records, batch_size: int = 4096) -> np.ndarray:
        return self.second.embed_queries(frame, batch_size=batch_size)

    def rescore_documents(self, frame: pd.DataFrame, batch_size: int = 4096) -> np.ndarray:
        return self.second.embed_documents(frame, batch_size=batch_size)

    def spec(self) -> dict:
        return {"kind": self.kind, "rerank_n": self.rerank_n}


def rerank(candidates: np.ndarray, q2: np.ndarray, d2: np.ndarray, rerank_n: int) -> tuple[np.ndarray, np.ndarray]:
    """Re-order the first ``rerank_n`` of each row of ``candidates`` (rows of ``d2``; -1 = none) by the
    second stage's cosine; the rest keep their order. Returns (rows, second-stage scores; NaN past n)."""
    cand = np.asarray(candidates, np.int64)
    n = min(rerank_n, cand.shape[1])
    head = cand[:, :n]
    ok = head >= 0
    scores = np.einsum("qe,qne->qn", q2.astype(np.float32), d2[np.clip(head, 0, None)].astype(np.float32))
    scores = np.where(ok, scores, -np.inf)
    order = np.argsort(-scores, axis=1, kind="stable")
    out = cand.copy()
    out[:, :n] = np.take_along_axis(head, order, axis=1)
    out_scores = np.full(cand.shape, np.nan, np.float32)
    out_scores[:, :n] = np.take_along_axis(scores, order, axis=1)
    return out, out_scores


def is_cascade(model: Any) -> bool:
    """Whether ``model`` re-ranks with a second stage (a :class:`Cascade`): the one test every consumer uses."""
    return hasattr(model, "rescore_documents")


def exact_top_k(model: Any, q_frame: pd.DataFrame, doc_frame: pd.DataFrame, k: int,
                exclude_rows: Sequence[np.ndarray] | None = None, doc_first: np.ndarray | None = None,
                doc_second: np.ndarray | None = None, batch_size: int = 4096) -> np.ndarray:
    """Exact ranking of documents for queries by any retrieval model, (n_queries, k) document rows, best
    first: KNN of its embeddings, and for a cascade the second stage re-ranking the first stage's top N.
    ``doc_first`` / ``doc_second`` are the documents' embeddings when already computed."""
    d1 = doc_first if doc_first is not None else model.embed_documents(doc_frame, batch_size=batch_size)
    q1 = model.embed_queries(q_frame, batch_size=batch_size)
    if not is_cascade(model):
        return top_k(q1, d1, k, exclude_rows=exclude_rows)
    d2 = doc_second if doc_second is not None else model.rescore_documents(doc_frame, batch_size=batch_size)
    first = top_k(q1, d1, max(k, model.rerank_n), exclude_rows=exclude_rows)
    rows, _ = rerank(first, model.rescore_queries(q_frame, batch_size=batch_size), d2, model.rerank_n)
    return rows[:, :k]


def save_ensemble(ensemble: WeightedConcat | Cascade, member_files: Sequence[str | Path],
                  member_refs: Sequence[str], out_dir: str | Path) -> Path:
    """Write a self-contained ensemble directory: ``ensemble.json`` and a copy of each member's model file
    (so the ensemble keeps serving when a member's registered version is garbage-collected)."""
    out = Path(out_dir)
    if len(member_files) != len(ensemble.members) or len(member_refs) != len(ensemble.members):
        raise ValueError("need one model file and one registry ref per ensemble member")
    (out / "members").mkdir(parents=True, exist_ok=True)
    members = []
    for i, (src, ref) in enumerate(zip(member_files, member_refs)):
        name = f"members/{i}.pt"
        shutil.copyfile(src, out / name)
        members.append({"file": name, "ref": ref})
    spec = {"format": ENSEMBLE_FORMAT, **ensemble.spec(), "members": members,
            "feature_service": ensemble.feature_service}
    (out / ENSEMBLE_FILE).write_text(json.dumps(spec, indent=2))
    return out / ENSEMBLE_FILE


def load_ensemble(path: str | Path, device: str = "cpu") -> WeightedConcat | Cascade:
    """An ensemble from its directory (or its ``ensemble.json``)."""
    p = Path(path)
    root = p if p.is_dir() else p.parent
    spec = json.loads((root / ENSEMBLE_FILE).read_text())
    if spec.get("format") != ENSEMBLE_FORMAT:
        raise ValueError(f"{root / ENSEMBLE_FILE} is not an ensemble of format {ENSEMBLE_FORMAT}")
    members = [load_model(root / m["file"], device) for m in spec["members"]]
    if spec["kind"] == WeightedConcat.kind:
        return WeightedConcat(members, spec["weights"])
    if spec["kind"] == Cascade.kind:
        return Cascade(members[0], members[1], spec["rerank_n"])
    raise ValueError(f"unknown ensemble kind {spec['kind']!r} in {root / ENSEMBLE_FILE}")


@torch.no_grad()
def fit_concat_weights(members: Sequence[Any], score: Any, grid: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0)
                       ) -> tuple[list[float], list[dict]]:
    """Weights of a weighted concatenation chosen on validation data: member 0 keeps weight 1, each other
    member's weight is searched over ``grid`` one at a time (a coordinate line search), keeping what
    raises ``score(WeightedConcat)`` (the validation metric). Returns (weights, the trials)."""
    weights = [1.0] * len(members)
    trials: list[dict] = []
    best = score(WeightedConcat(members, weights))
    trials.append({"weights": list(weights), "score": best})
    for i in range(1, len(members)):
        for w in grid:
            if w == weights[i]:
                continue
            cand = weights.copy()
            cand[i] = w
            s = score(WeightedConcat(members, cand))
            trials.append({"weights": list(cand), "score": s})
            if s > best:
                best, weights = s, cand
    return weights, trials


__all__ = ["Cascade", "ENSEMBLE_FILE", "WeightedConcat", "concat_constant", "exact_top_k",
           "fit_concat_weights", "is_cascade", "load_ensemble", "rerank", "save_ensemble"]
