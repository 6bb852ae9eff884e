"""A retrieval request and the candidates it returns.

The request is the unit a query language compiles to: the paper's ``(nn :radius r :nprobe p)`` operator is a
:class:`NNRequest` (``radius``/``nprobe``), and a Boolean term filter around it restricts the search to the
documents the terms matched (``Retriever.candidates_within``). Checks run once where a request is made, so the
query path itself does no validation work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from serving.errors import EmptyQueryError, InvalidRequestError

MAX_K = 10_000


@dataclass(frozen=True)
class Candidate:
    """One retrieved document.

    ``score`` is the cosine similarity between the query embedding and the document embedding (in [-1, 1];
    exact for flat and refined indexes). It is meant as a feature for the later ranking stages, not as a
    final relevance score.
    """

    doc_id: str
    title: str
    score: float
    rank: int  # 1 = best
    source: str = "nn"  # hybrid retrieval: "nn" (found by the nn operator) or "term" (by terms only)


@dataclass(frozen=True)
class NNRequest:
    """A nearest-neighbour request: query text, who searches, and how to search.

    ``k`` bounds the number of results; with ``radius`` (a cosine threshold, the mode the paper prefers in
    production) only documents scoring >= radius come back, at most ``k`` of them. ``nprobe`` overrides the
    index's default number of IVF lists scanned (ignored by an exact flat index).
    """

    query: str
    searcher_id: str
    k: int = 10
    radius: float | None = None
    nprobe: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.query, str) or not self.query.strip():
            raise EmptyQueryError(
                f"empty query {self.query!r}: give the text the searcher typed (e.g. \"runners club\")"
            )
        if not isinstance(self.searcher_id, str) or not self.searcher_id.strip():
            raise InvalidRequestError(f"searcher_id must be a non-empty string, got {self.searcher_id!r}")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k <= MAX_K:
            raise InvalidRequestError(f"k must be an integer in [1, {MAX_K}], got {self.k!r}")
        if self.radius is not None and (
            isinstance(self.radius, bool) or not isinstance(self.radius, (int, float))
            or not math.isfinite(self.radius) or not -1.0 <= self.radius <= 1.0
        ):
            raise InvalidRequestError(f"radius is a cosine similarity and must be in [-1, 1] or None, got {self.radius!r}")
        if self.nprobe is not None and (isinstance(self.nprobe, bool) or not isinstance(self.nprobe, int)
                                        or self.nprobe < 1):
            raise InvalidRequestError(f"nprobe must be a positive integer or None, got {self.nprobe!r}")
