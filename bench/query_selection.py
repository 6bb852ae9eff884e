"""Query selection (section 4 of the paper): decide per query whether the nn branch runs at all.

EBR costs an embedding and an ANN search per query and adds little where the term engine already answers:
- **navigational repeats**: the searcher typed this text before and clicked the same document each time
  (at least ``min_repeats`` times): the answer is known, the remembered document goes first;
- **enough term matches**: the text branch (within the scope) already matched at least
  ``enough_term_matches`` documents.
Otherwise the nn branch runs. :func:`without_nn` rewrites an expression for the skipped case, so the same
engine serves both. The policy is measured against always-on EBR in ``bench/hybrid_retrieval.py``
(trigger rate, cost, recall).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from serving.query import NN, And, Expr, Not, Or, Term


def normalize(text: str | None) -> str:
    """The query text as the rest of the project compares queries (:func:`bench.peers.normalize_query`)."""
    from features.query_text import normalize_query

    return normalize_query(str(text or ""))


class QuerySelectionConfig(BaseModel):
    """When to skip the nn branch."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    navigational: bool = Field(True, description="skip EBR for a searcher's repeated navigational query")
    min_repeats: int = Field(2, ge=1, description="same (searcher, text) -> same click at least this many times")
    enough_term_matches: int | None = Field(
        None, ge=1, description="skip EBR when the text branch already matches this many documents (None: never)"
    )


@dataclass(frozen=True)
class Decision:
    use_nn: bool
    reason: str  # "navigational", "enough term matches", "default"
    known_doc: str | None = None


class QuerySelection:
    """The policy with its memory of navigational repeats (fitted on past sessions)."""

    def __init__(self, config: QuerySelectionConfig | None = None, memory: dict[tuple[str, str], str] | None = None):
        self.config = config or QuerySelectionConfig()
        self.memory = memory or {}

    @classmethod
    def fit(cls, clicks: pd.DataFrame, config: QuerySelectionConfig | None = None) -> "QuerySelection":
        """Learn the navigational repeats from past clicks (searcher_id, query, doc_id; one row per click):
        a (searcher, normalized text) whose every click went to one document, at least ``min_repeats`` times."""
        from features.query_text import normalize_query

        config = config or QuerySelectionConfig()
        c = clicks[["searcher_id", "query", "doc_id"]].astype(str)
        c = c.assign(query=normalize_query(c["query"]))
        c = c[c["query"] != ""]
        g = c.groupby(["searcher_id", "query"])["doc_id"].agg(["nunique", "first", "size"])
        nav = g[(g["nunique"] == 1) & (g["size"] >= config.min_repeats)]
        return cls(config, {(s, q): d for (s, q), d in nav["first"].items()})

    def decide(self, searcher_id: str, text: str, term_matches: int | None = None) -> Decision:
        if self.config.navigational:
            doc = self.memory.get((str(searcher_id), normalize(text)))
            if doc is not None:
                return Decision(False, "navigational", doc)
        if (self.config.enough_term_matches is not None and term_matches is not None
                and term_matches >= self.config.enough_term_matches):
            return Decision(False, "enough term matches")
        return Decision(True, "default")


def without_nn(expr: Expr) -> Expr | None:
    """``expr`` with its nn operators removed (an ``or`` keeps its other branches; an ``and`` whose nn
    child goes keeps its other children); None when nothing is left."""
    if isinstance(expr, NN):
        return None
    if isinstance(expr, Term):
        return expr
    if isinstance(expr, Not):
        child = without_nn(expr.child)
        return None if child is None else Not(child)
    kept = tuple(c for c in (without_nn(c) for c in expr.children) if c is not None)
    if not kept:
        return None
    if len(kept) == 1 and isinstance(expr, Or):
        return kept[0]
    return And(kept) if isinstance(expr, And) else Or(kept)


__all__ = ["Decision", "QuerySelection", "QuerySelectionConfig", "normalize", "without_nn"]
