"""A learned second stage over retrieved candidates: the cosine as a ranking feature (section 4 of the paper).

Retrieval hands each candidate's cosine to the query embedding to the later stages. This module is such a
stage: LightGBM's lambdarank over per-candidate features, trained on training sessions (the candidates the
hybrid expression retrieves for them, labelled by the clicks):

- text: the share of the query's words in the document's text terms, all of them, the title equal to the query;
- location: the document's city / region / country equals the searcher's;
- social: the weight of the searcher's clusters among the document's member clusters;
- document: log member count, log active members, type;
- embedding (``embedding=``): ``cosine`` (the paper's choice), ``hadamard`` (the element-wise product of the
  two vectors, whose sum is the cosine), ``raw`` (both vectors side by side) or ``none``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from serving.terms import as_list, tokens, value_term

EmbeddingFeature = Literal["none", "cosine", "hadamard", "raw"]
DOC_TYPES = ("person", "group", "event", "page", "artist", "movie", "article")


def _set(cell) -> set:
    return set(as_list(cell))


def candidate_features(query: str, searcher: dict, docs: pd.DataFrame, cosines: np.ndarray,
                       q_vec: np.ndarray | None = None, d_vecs: np.ndarray | None = None,
                       embedding: EmbeddingFeature = "cosine", extra: dict[str, np.ndarray] | None = None
                       ) -> pd.DataFrame:
    """One row of features per candidate document (``docs``: document-table rows of the candidates);
    ``extra``: more per-candidate columns (e.g. a term engine's BM25 score and rank)."""
    words = set(tokens(query))
    n = len(docs)
    doc_words = [set(tokens(t)) | set(tokens(b)) for t, b in zip(docs.get("title", [""] * n), docs.get("body", [""] * n))]
    share = np.array([len(words & w) / len(words) if words else 0.0 for w in doc_words])
    f = {
        "text_share": share,
        "text_all": (share == 1.0).astype(float),
        "title_equal": np.array([" ".join(tokens(t)) == " ".join(tokens(query)) for t in docs.get("title", [""] * n)],
                                float),
    }
    for field, col in (("location", "city"), ("region", "region"), ("country", "country")):
        mine = value_term(field, searcher.get(col))
        f[f"{field}_match"] = np.array([mine is not None and value_term(field, v) == mine
                                        for v in docs.get(col, [None] * n)], float)
    names = as_list(searcher.get("clusters"))
    clusters = dict(zip(names, as_list(searcher.get("clusters_weights")) or [1.0] * len(names)))
    f["social_match"] = np.array([sum(clusters.get(c, 0.0) for c in _set(m)) for m in
                                  docs.get("member_clusters", [None] * n)], float)
    for col in ("member_count", "active_members_30d"):
        f[f"log_{col}"] = np.log1p(pd.to_numeric(docs.get(col, pd.Series([0] * n)), errors="coerce").fillna(0)
                                   .to_numpy(float))
    types = docs.get("doc_type", pd.Series([""] * n)).astype(str).to_numpy()
    for t in DOC_TYPES:
        f[f"type_{t}"] = (types == t).astype(float)
    out = pd.DataFrame(f)
    if embedding == "cosine":
        out["cosine"] = cosines
    elif embedding in ("hadamard", "raw"):
        if q_vec is None or d_vecs is None:
            raise ValueError(f"embedding={embedding!r} needs the query and document vectors")
        prod = d_vecs * q_vec[None, :] if embedding == "hadamard" else np.concatenate(
            [np.repeat(q_vec[None, :], n, 0), d_vecs], axis=1)
        out = pd.concat([out, pd.DataFrame(prod, columns=[f"emb_{j}" for j in range(prod.shape[1])])], axis=1)
    elif embedding != "none":
        raise ValueError(f"embedding must be none, cosine, hadamard or raw; got {embedding!r}")
    for name, values in (extra or {}).items():
        out[name] = np.asarray(values, float)
    return out


class SecondStage:
    """LightGBM lambdarank over candidate features (one group per query)."""

    def __init__(self, embedding: EmbeddingFeature = "cosine", n_estimators: int = 200, seed: int = 0):
        self.embedding, self.n_estimators, self.seed = embedding, n_estimators, seed
        self.model = None
        self.columns: list[str] = []

    def fit(self, features: list[pd.DataFrame], labels: list[np.ndarray]) -> "SecondStage":
        import lightgbm as lgb

        keep = [i for i, y in enumerate(labels) if 0 < y.sum() < len(y)]  # groups that can teach an order
        if not keep:
            raise ValueError("no training query has both a clicked and a non-clicked candidate")
        X = pd.concat([features[i] for i in keep], ignore_index=True)
        y = np.concatenate([labels[i] for i in keep])
        self.columns = list(X.columns)
        self.model = lgb.LGBMRanker(objective="lambdarank", n_estimators=self.n_estimators, learning_rate=0.05,
                                    num_leaves=31, min_child_samples=20, random_state=self.seed, n_jobs=1,
                                    verbose=-1)
        self.model.fit(X, y, group=[len(features[i]) for i in keep])
        return self

    def order(self, features: pd.DataFrame) -> np.ndarray:
        """Candidate rows best first."""
        if self.model is None:
            raise RuntimeError("fit the second stage first")
        scores = self.model.predict(features[self.columns])
        return np.argsort(-scores, kind="stable")


__all__ = ["SecondStage", "candidate_features"]
