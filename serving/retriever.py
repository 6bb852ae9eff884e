"""The retriever: (query text, searcher) -> candidate documents with their cosine scores.

Loaded once per process (:meth:`Retriever.load`): the current published index of a dataset, its doc-id
mapping, the query tower of the model version its manifest names, and a handle on the dataset's Feast online
store. Per query the work is one online lookup of the searcher's features (the serving feature service of
the version the model was trained on, so serving reads what training read), one query-tower forward pass and
one FAISS search.

Hybrid retrieval (a Boolean term language with an ``(nn :radius :nprobe)`` operator) builds on two entry
points: :meth:`Retriever.embed` turns a request into its query vector once, and
:meth:`Retriever.candidates_within` runs the nn operator restricted to the documents the terms allowed
(FAISS's id selector inside the IVF scan, or exact scoring for small sets).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from features.compute import FEATURE_TS, SEARCHER_KEY
from features.online_read import OnlineReader
from features.schema import searcher_column
from features.store import FeatureRepo
from infra.storage import ArtifactNotFoundError, ArtifactStore
from models.ensemble import Cascade, WeightedConcat, is_cascade, rerank
from models.registry import load_registered_model
from serving.engine import Engine
from serving.errors import (
    FeatureStoreNotFoundError,
    IndexModelMismatchError,
    IndexNotFoundError,
    InvalidRequestError,
    ModelNotFoundError,
    UnknownSearcherError,
)
from serving.hybrid import default_expression
from serving.index_store import IndexManifest, IndexNotPublishedError, PublishedIndex, load_index
from serving.query import has_nn, parse, unparse
from serving.request import Candidate, NNRequest

if TYPE_CHECKING:
    from features.store import FeatureRepo
    from infra.storage import ArtifactStore
    from models.towers import TwoTowerModel

log = logging.getLogger(__name__)



def set_threads(threads: int) -> None:
    """Intra-op threads of torch and FAISS for this process."""
    import faiss
    import torch

    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)


@dataclass(frozen=True)
class HybridResult:
    expression: str  # the expression that ran (canonical text: edit it and send it back)
    candidates: list[Candidate]
    matched: int  # documents the expression matched before the limit


class Retriever:
    """Embedding-based retrieval over one published index (see the module docstring)."""

    def __init__(self, dataset: str, published: PublishedIndex, model: TwoTowerModel | WeightedConcat | Cascade,
                 features: FeatureRepo):
        self.dataset = dataset
        self.index = published.index
        self.manifest: IndexManifest = published.manifest
        self.version = published.version
        self.model = model
        self.features = features
        self.service_name = features.service_name("searcher", self.manifest.feature_service or None, "serving")
        try:
            # Resolved once; per query the reader (features.online_read) asks the online store for the rows.
            self._service = features.store.get_feature_service(self.service_name)
        except Exception as e:  # feast raises FeatureServiceNotFoundException
            raise FeatureStoreNotFoundError(
                f"the feature store of dataset {dataset!r} has no service {self.service_name!r}, which model "
                f"{self.manifest.model.ref} needs; run the materialize flow (it applies the repository) ({e})"
            ) from e

        self._reader = OnlineReader(features, self._service, SEARCHER_KEY)
        self._names = [n for n in self._reader.names if n != FEATURE_TS]
        # A cascade model: the index holds its first stage; the second re-scores the first stage's top N.

        self.rescore = published.rescore if is_cascade(model) else None
        if is_cascade(model) and self.rescore is None:
            raise IndexModelMismatchError(
                f"model {self.manifest.model.ref} is a cascade but index {published.version.ref} has no "
                f"second-stage vectors; run 'ebr rebuild-index --dataset {dataset}'"
            )
        # Hybrid retrieval (serving/): the term index published with the vectors, and the nn keys it accepts.
        self.model_keys = {self.manifest.model.name, "default"}
        self.engine = None
        if published.terms is not None:
            self.engine = Engine(published.terms, self.index, self.model_keys)
        self._doc_ids = published.doc_map["doc_id"].to_numpy(dtype=object)
        self._titles = published.doc_map["title"].to_numpy(dtype=object)
        self._doc_id_list, self._title_list = self._doc_ids.tolist(), self._titles.tolist()  # faster to index
        self._position = pd.Index(self._doc_ids)

    # ------------------------------------------------------------------------------------------- loading

    @classmethod
    def load(
        cls,
        dataset: str,
        store: ArtifactStore | None = None,
        feature_repo: FeatureRepo | None = None,
        version: str | None = None,
        threads: int | None = None,
    ) -> Retriever:
        """The current (or a given) index version of ``dataset`` with its model and feature store.

        ``threads`` sets the process's torch and FAISS thread counts: for one query at a time, 1 thread is
        fastest (a multi-threaded forward pass or search over one row mostly waits on its threads). None
        leaves them alone (a process that also trains or builds indexes keeps its own setting).
        """
        if threads is not None:
            set_threads(threads)
        store = store or ArtifactStore.from_settings()
        try:
            published = load_index(dataset, store, version)
        except IndexNotPublishedError as e:
            raise IndexNotFoundError(str(e)) from e
        ref = published.manifest.model
        try:
            model, _ = load_registered_model(ref.name, ref.version, store=store)
        except ArtifactNotFoundError as e:
            raise ModelNotFoundError(
                f"index {published.version.ref} was built with model {ref.ref}, which is not in the model "
                f"registry of {store.backend.describe()}; restore that model version or run "
                f"'ebr rebuild-index --dataset {dataset}' with a registered model ({e})"
            ) from e
        if model.feature_service and model.feature_service != published.manifest.feature_service:
            raise IndexModelMismatchError(
                f"model {ref.ref} was trained on feature service {model.feature_service!r} but index "
                f"{published.version.ref} records {published.manifest.feature_service!r}; run 'ebr rebuild-index --dataset {dataset}'"
            )
        repo = feature_repo or FeatureRepo.for_dataset(dataset)
        if not repo.has_online_store():
            raise FeatureStoreNotFoundError(
                f"no Feast registry and online store for dataset {dataset!r} under {repo.root}; "
                "run the materialize flow for the dataset first"
            )
        for tower_model in _two_tower_models(model):  # a pretrained text encoder loads now, not on the first query
            _ = tower_model.query_featurizer.encoder
        out = cls(dataset, published, model, repo)
        log.info("retriever for %s: %s (%d documents), model %s", dataset, published.version.ref,
                 out.index.ntotal, ref.ref)
        return out

    # ------------------------------------------------------------------------------------------- queries

    def retrieve(
        self, query: str, searcher_id: str, k: int = 10, radius: float | None = None, nprobe: int | None = None
    ) -> list[Candidate]:
        """Candidates for ``query`` typed by ``searcher_id``, best first.

        Top-``k`` by cosine; with ``radius`` (the mode the paper prefers) only documents with cosine >=
        radius, at most ``k``. Each candidate's ``score`` is that cosine: a feature for the later ranking
        stages, not a final relevance score. Raises :class:`EmptyQueryError`, :class:`InvalidRequestError`
        or :class:`UnknownSearcherError` (a searcher without features in the online store).
        """
        return self.run(NNRequest(query, searcher_id, k, radius, nprobe))

    def run(self, request: NNRequest) -> list[Candidate]:
        """Execute one nn request over the whole index (a cascade: its first stage retrieves the top N, at
        least k, which its second stage re-scores; the scores are then the second stage's cosines)."""
        frame = self.query_record(request)
        q = self.model.embed_queries(frame)
        depth = request.k if self.rescore is None else max(request.k, self._cascade.rerank_n)
        if request.radius is None:
            scores, ids = self.index.search(q, depth, nprobe=request.nprobe)
            ids, scores = ids[0], scores[0]
        else:
            (ids, scores), = self.index.range_search(q, request.radius, nprobe=request.nprobe, max_results=depth)
        if self.rescore is not None:
            ids, scores = self._rerank(frame, ids)
        return self._candidates(ids[: request.k], scores[: request.k])

    def retrieve_many(self, queries: Sequence[str], searcher_ids: Sequence[str], k: int = 10,
                      nprobe: int | None = None) -> list[list[Candidate]]:
        """Top-``k`` candidates of many queries at once (offline scoring, backfills, load replays): one online
        read of all searchers, one featurization and forward pass, one FAISS search. Same results as
        :meth:`retrieve` per query; an unknown searcher raises :class:`UnknownSearcherError` naming it."""
        if len(queries) != len(searcher_ids):
            raise InvalidRequestError(f"{len(queries)} queries but {len(searcher_ids)} searcher ids")
        if not len(queries):
            return []
        for text, sid in zip(queries, searcher_ids):
            NNRequest(text, sid, k, None, nprobe)  # the same checks as one request
        records = [self._record(q, s, f) for q, s, f in
                   zip(queries, searcher_ids, self.searchers_features(searcher_ids))]
        q = self.model.embed_queries(records)
        depth = k if self.rescore is None else max(k, self._cascade.rerank_n)
        scores, ids = self.index.search(q, depth, nprobe=nprobe)
        out = []
        for i in range(len(records)):
            row_ids, row_scores = ids[i], scores[i]
            if self.rescore is not None:
                row_ids, row_scores = self._rerank([records[i]], row_ids)
            out.append(self._candidates(row_ids[:k], row_scores[:k]))
        return out

    def _rerank(self, frame: list[dict], ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A cascade's second stage over the first stage's candidates: the top N re-ordered, every
        candidate scored by the second stage's cosine."""
        ids = ids[ids >= 0]
        if not len(ids):
            return ids, np.zeros(0, np.float32)
        cascade, rescore = self._cascade, self.rescore
        assert rescore is not None  # callers re-rank only when the index has second-stage vectors
        q2 = cascade.rescore_queries(frame)
        rows = rerank(ids[None, :], q2, rescore, cascade.rerank_n)[0][0]
        return rows, (np.asarray(rescore[rows]) @ q2[0]).astype(np.float32)

    @property
    def _cascade(self) -> Cascade:
        """The model, when ``self.rescore`` is set: only a cascade has second-stage vectors (``__init__``)."""
        assert isinstance(self.model, Cascade)
        return self.model

    def search(self, query: str, searcher_id: str, k: int = 10, expression: str | None = None,
               config=None) -> "HybridResult":
        """Hybrid retrieval: ``expression`` (the query language of :mod:`serving.query`) or, without one,
        the paper's expression built from ``query`` and the searcher's location and social terms
        (:func:`serving.hybrid.default_expression`). Candidates carry their cosine to the query embedding
        and whether the nn operator or only terms found them; the expression used comes back with them."""
        if self.engine is None:
            raise IndexNotFoundError(
                f"index {self.version.ref} has no term index (published before hybrid retrieval); run "
                f"'ebr rebuild-index --dataset {self.dataset}'"
            )
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 10_000:
            raise InvalidRequestError(f"k must be an integer in [1, 10000], got {k!r}")
        row = self.searcher_features(searcher_id)
        expr = parse(expression) if expression else default_expression(query, row, self.manifest.model.name, config)
        q = None
        if has_nn(expr) or (query or "").strip():  # term-only matches are ranked by their cosine too
            q = self.model.embed_queries([self._record(query or "", searcher_id, row)])
        hits = self.engine.run(expr, q, k)
        out = [Candidate(self._doc_ids[p], self._titles[p], float(s), i + 1, "nn" if f else "term")
               for i, (p, s, f) in enumerate(zip(hits.positions.tolist(), hits.scores.tolist(), hits.from_nn.tolist()))]
        return HybridResult(unparse(expr), out, hits.matched)

    def candidates_within(self, request: NNRequest, allowed_doc_ids: Sequence[str],
                          query_vector: np.ndarray | None = None) -> list[Candidate]:
        """The nn request restricted to ``allowed_doc_ids`` (unknown ids are ignored): a constrained NN search.

        ``query_vector`` (from :meth:`embed`) lets several operators of one hybrid query share one forward pass.
        """
        q = self.embed(request) if query_vector is None else query_vector
        allowed = self.positions_of(allowed_doc_ids)
        scores, ids = self.index.search_subset(q, request.k, allowed, nprobe=request.nprobe)
        scores, ids = scores[0], ids[0]
        if request.radius is not None:
            keep = scores >= np.float32(request.radius)
            scores, ids = scores[keep], ids[keep]
        return self._candidates(ids, scores)

    def embed(self, request: NNRequest) -> np.ndarray:
        """The query embedding [1, dim] of a request: online searcher features + query tower."""
        return self.model.embed_queries(self.query_record(request))

    def query_record(self, request: NNRequest) -> list[dict]:
        """The query tower's input of a request (one record: the featurizer's path without pandas): its text
        and the searcher's online features."""
        return [self._record(request.query, request.searcher_id, self.searcher_features(request.searcher_id))]

    @staticmethod
    def _record(query: str, searcher_id: str, features: dict) -> dict:
        return {"query": query, SEARCHER_KEY: searcher_id, **{searcher_column(n): v for n, v in features.items()}}

    def searcher_features(self, searcher_id: str) -> dict:
        """The searcher's online features (the model's serving service), as a dict of feature -> value."""
        return self.searchers_features([searcher_id])[0]

    def searchers_features(self, searcher_ids: Sequence[str]) -> list[dict]:
        """The online features of each searcher, in one online read; :class:`UnknownSearcherError` names
        the first searcher without any."""
        rows = self._reader.rows(searcher_ids)
        missing = [s for s, r in zip(searcher_ids, rows) if r.get(FEATURE_TS) is None]
        if missing:
            raise UnknownSearcherError(
                f"searcher {missing[0]!r}{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''} has no "
                f"features in the online store of dataset {self.dataset!r}; check the id (it must be in the "
                "dataset's searchers table) or run the materialize flow for the days since the searcher joined"
            )
        return [{n: r[n] for n in self._names} for r in rows]

    def positions_of(self, doc_ids: Sequence[str]) -> np.ndarray:
        """Index ids (int64 positions) of the given doc_ids that are in the index."""
        pos = self._position.get_indexer(pd.Index([str(d) for d in doc_ids], dtype=object))
        return pos[pos >= 0].astype(np.int64)

    def _candidates(self, ids: np.ndarray, scores: np.ndarray) -> list[Candidate]:
        ids_list = ids.tolist()
        n = ids_list.index(-1) if -1 in ids_list else len(ids_list)  # FAISS pads missing results at the end
        doc_ids, titles = self._doc_id_list, self._title_list
        return [Candidate(doc_ids[i], titles[i], s, rank)
                for rank, (i, s) in enumerate(zip(ids_list[:n], scores[:n].tolist()), 1)]


__all__ = ["Candidate", "HybridResult", "NNRequest", "Retriever", "set_threads"]


def _two_tower_models(model) -> list:
    """The two-tower models inside a registered model: itself, an ensemble's members, a cascade's stages."""
    parts = list(getattr(model, "members", ()))
    parts += [m for m in (getattr(model, "first", None), getattr(model, "second", None)) if m is not None]
    if not parts:
        return [model] if hasattr(model, "query_featurizer") else []
    return [t for p in parts for t in _two_tower_models(p)]
