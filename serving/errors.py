"""Errors of the retriever: each says what went wrong and what to do about it."""

from __future__ import annotations


class RetrievalError(Exception):
    """Base class of every error the retriever raises."""


class IndexNotFoundError(RetrievalError, LookupError):
    """No published index for the dataset (build one with ``ebr rebuild-index``)."""


class FeatureStoreNotFoundError(RetrievalError, LookupError):
    """No feature store (registry + online store) for the dataset (run the materialize flow)."""


class ModelNotFoundError(RetrievalError, LookupError):
    """The model version named in the index manifest is not in the model registry."""


class IndexModelMismatchError(RetrievalError):
    """The index and its model disagree (e.g. on the feature service): the index must be rebuilt."""


class UnknownSearcherError(RetrievalError, LookupError):
    """The searcher has no features in the online store."""


class EmptyQueryError(RetrievalError, ValueError):
    """A query with no text."""


class InvalidRequestError(RetrievalError, ValueError):
    """A request parameter outside its allowed range (k, radius, nprobe)."""
