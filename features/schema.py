"""Column names of the feature tables, shared by feature computation, Feast, training data and models.

Two entities carry features:
- the searcher (query side): location and social context, as of a time;
- the document (index side): its own text and admin-tagged location plus aggregates over its members.

Multi-valued features are pairs of aligned list columns: ``<name>`` (ids, list of strings) and
``<name>_weights`` (list of floats, summing to 1 when not empty). The model combines them as weighted sums
of embedding lookups (the paper's weighted multi-hot).

A training example is one (searcher, query, clicked document, time) row joined point-in-time with the
searcher's features (prefixed ``searcher_``) and the document's features (prefixed ``doc_``).
"""

from __future__ import annotations

# --- searcher features (entity key: searcher_id) -------------------------------------------------
SEARCHER_CATEGORICAL = ("city", "region", "country", "language")
SEARCHER_MULTI = ("clusters", "history", "profile")  # + "<name>_weights"; history: features.history
SEARCHER_ATTRIBUTES = ("age", "gender", "occupation")  # optional searcher columns that make up "profile"
SEARCHER_NUMERIC = ("friend_count",)

# --- document features (entity key: doc_id) ------------------------------------------------------
DOC_TEXT = ("title", "body")
DOC_CATEGORICAL = ("doc_type", "city", "region", "country")
DOC_MULTI = ("member_cities", "member_clusters", "tags")  # + "<name>_weights"; tags: the source's own labels
DOC_NUMERIC = ("member_count", "active_members_30d")
DOC_TIMES = ("last_active_at",)


def weights_of(name: str) -> str:
    """The weights column that goes with a multi-valued feature column."""
    return f"{name}_weights"


def searcher_column(name: str) -> str:
    """Name of a searcher feature inside a training example."""
    return f"searcher_{name}"


def doc_column(name: str) -> str:
    """Name of a document feature inside a training example (doc_type keeps its own name)."""
    return name if name.startswith("doc_") else f"doc_{name}"


# --- training examples -----------------------------------------------------------------------------
# Keys and labels of one example; features follow with the prefixes above.
EXAMPLE_KEYS = ("example_id", "session_id", "searcher_id", "query", "doc_id", "ts", "split")
# Optional list columns of doc_ids:
#   "impressed_negatives": impressions that were not clicked (for the experiment that uses them)
#   "hard_negatives": extra negatives per example (offline hard-negative mining rounds)
SPLITS = ("train", "valid", "test")
