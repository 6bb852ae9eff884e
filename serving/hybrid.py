"""From plain text to the paper's hybrid expression: the searcher's scope AND (text terms OR nn).

    (and (or (term location:<searcher city>) (term cluster:<searcher cluster>) ...)
         (or (and (term text:<token>) ...) (nn <model> :k 100)))

The scope (the searcher's location and social terms, section 4 of the paper) constrains both branches; the
text branch finds exact name matches, the nn branch what text misses (misspellings, social and location
matches), and inside the ``and`` it is a constrained nn search. Every part is configurable: an empty scope
gives ``(or text nn)``; the expression is returned with the results so that a user can see and edit it.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from serving.query import NN, And, Expr, Or, Term
from serving.terms import as_list, tokens, value_term

ScopeField = Literal["location", "region", "country", "cluster"]
_SCOPE_COLUMN = {"location": "city", "region": "region", "country": "country"}


class HybridConfig(BaseModel):
    """How plain text becomes an expression."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    scope: tuple[ScopeField, ...] = Field(
        ("location", "cluster"), description="searcher terms OR-ed into the constraint (empty: no constraint)"
    )
    max_clusters: int = Field(3, ge=0, le=32, description="the searcher's heaviest social clusters in the scope")
    text_branch: bool = Field(True, description="OR the AND of the query's text terms with the nn branch")
    nn_k: int = Field(100, ge=1, le=10_000, description="the nn branch's top-k (when no radius)")
    nn_radius: float | None = Field(None, ge=-1.0, le=1.0, description="radius mode of the nn branch")
    nprobe: int | None = Field(None, ge=1, description="IVF lists scanned by the nn branch")
    max_text_terms: int = Field(8, ge=1, le=64, description="text terms kept from the query")


def scope_terms(searcher: dict, config: HybridConfig) -> list[str]:
    """The searcher's location and social terms (from its online features)."""
    out: list[str] = []
    for field in config.scope:
        if field == "cluster":
            clusters = as_list(searcher.get("clusters"))
            weights = as_list(searcher.get("clusters_weights")) or [1.0] * len(clusters)
            order: np.ndarray | list[int] = (
                np.argsort(-np.asarray(weights, float), kind="stable")[: config.max_clusters] if clusters else [])
            out += [t for i in order if (t := value_term("cluster", clusters[i]))]
        else:
            t = value_term(field, searcher.get(_SCOPE_COLUMN[field]))
            if t:
                out.append(t)
    return list(dict.fromkeys(out))


def default_expression(text: str, searcher: dict, model_key: str, config: HybridConfig | None = None) -> Expr:
    """The hybrid expression for ``text`` typed by a searcher with online features ``searcher``."""
    config = config or HybridConfig()
    nn = NN(model_key, radius=config.nn_radius, k=None if config.nn_radius is not None else config.nn_k,
            nprobe=config.nprobe)
    words = list(dict.fromkeys(tokens(text)))[: config.max_text_terms]
    match: Expr = nn
    if config.text_branch and words:
        text_part = Term(f"text:{words[0]}") if len(words) == 1 else And(tuple(Term(f"text:{w}") for w in words))
        match = Or((text_part, nn))
    scope = scope_terms(searcher, config)
    if not scope:
        return match
    where = Term(scope[0]) if len(scope) == 1 else Or(tuple(Term(t) for t in scope))
    return And((where, match))


__all__ = ["HybridConfig", "default_expression", "scope_terms"]
