"""``ebr serve``: the retriever of a dataset's current published index behind HTTP (FastAPI + uvicorn).

    POST /search    {"query": ..., "searcher_id": ..., "k": 10, "expression": null, "mode": "hybrid"}
    GET  /healthz   ready, the served version, the last refused version and why
    GET  /version   index, model and feature-service versions being served

The service loads the retriever once at start. A watcher thread polls the store's CURRENT pointer of the
index; when a new version is published it loads it aside and swaps one reference, so in-flight requests
finish on the version they started with and none waits for the load. A version that does not load (a
missing model, a corrupt file, a model/index mismatch) is refused and the previous one keeps serving; the
refusal is reported by ``/healthz``. Requests are bounded (body size, query length, k, expression limits
of the query language, a per-request deadline); bad requests get a 4xx with a message, never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

from features.store import FeatureRepo
from infra.storage import ArtifactStore
from serving.engine import UnknownModelKeyError
from serving.errors import EmptyQueryError, InvalidRequestError, RetrievalError, UnknownSearcherError
from serving.index_store import current_index
from serving.query import QuerySyntaxError
from serving.retriever import Retriever

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16_384


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field("", max_length=1000, description="the text the searcher typed (embedded by the nn operator)")
    searcher_id: str = Field(..., min_length=1, max_length=256)
    k: int = Field(10, ge=1, le=1000, description="candidates returned")
    expression: str | None = Field(None, max_length=4096, description="a query-language expression")
    mode: Literal["hybrid", "nn"] = Field("hybrid", description="nn: the embedding search alone")
    radius: float | None = Field(None, ge=-1.0, le=1.0, description="nn mode: cosine threshold")


class CandidateOut(BaseModel):
    doc_id: str
    title: str
    score: float
    rank: int
    source: str


class SearchResponse(BaseModel):
    expression: str | None
    candidates: list[CandidateOut]
    matched: int | None
    index_version: str
    took_ms: float


@dataclass
class Served:
    retriever: Any
    loaded_at: float


class ServingState:
    """The retriever being served and the watcher that swaps in new published versions."""

    def __init__(self, dataset: str, load: Callable[[str | None], Any], current_version: Callable[[], str],
                 poll_seconds: float = 5.0):
        self.dataset, self._load, self._current_version = dataset, load, current_version
        self.poll_seconds = poll_seconds
        self.served: Served | None = None
        self.refused: dict[str, str] = {}  # version -> why it was not served
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.served = Served(self._load(None), time.time())
        self._thread = threading.Thread(target=self._watch, name="index-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def check_once(self) -> str | None:
        """Swap to the store's current version if it is new and loads; returns the version now served."""
        try:
            version = self._current_version()
        except Exception as e:  # noqa: BLE001 - a store hiccup: keep serving, try again later
            log.warning("cannot read the current index version of %s: %s", self.dataset, e)
            return None
        if self.served is not None and version == self.served.retriever.version.version:
            return version
        if version in self.refused:
            return None
        try:
            retriever = self._load(version)
        except Exception as e:  # noqa: BLE001 - a broken version is refused, the old one keeps serving
            self.refused[version] = f"{type(e).__name__}: {e}"
            log.error("refused index version %s of %s: %s", version, self.dataset, e)
            return None
        self.served = Served(retriever, time.time())  # one reference swap: in-flight requests keep theirs
        log.info("now serving %s", retriever.version.ref)
        return version

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.check_once()


class _Bounded:
    """Pure ASGI middleware (Starlette's BaseHTTPMiddleware costs a task and a stream copy per request):
    an oversized body gets a 413 before it is read, an unhandled error a 500 with a message, never a trace."""

    def __init__(self, app, error):
        self.app, self.error = app, error

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        size = dict(scope.get("headers") or ()).get(b"content-length")
        if size is not None and (not size.isdigit() or int(size) > MAX_BODY_BYTES):
            return await self.error(413, f"request body larger than {MAX_BODY_BYTES} bytes")(scope, receive, send)
        started = False

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as e:  # noqa: BLE001 - never a traceback to the client
            log.exception("unhandled error on %s", scope.get("path"))
            if not started:
                await self.error(500, f"internal error ({type(e).__name__}); see the service log")(scope, receive, send)


def create_app(state: ServingState, request_timeout: float = 2.0):
    """The FastAPI app over a started :class:`ServingState`."""
    import orjson
    from fastapi import FastAPI
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response

    app = FastAPI(title="ebr retrieval", version="1")

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse(status_code=status, content={"error": message})

    app.add_middleware(_Bounded, error=error)

    @app.exception_handler(RequestValidationError)
    async def invalid(_, exc: RequestValidationError):
        parts = [f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors()]
        return error(422, "; ".join(parts))

    def run(req: SearchRequest, served: Served) -> bytes:
        """The search, serialized in the worker thread: the response is built from plain dicts and encoded by
        orjson (FastAPI's response-model round trip cost more than the search on small indexes)."""
        r = served.retriever
        t = time.perf_counter()
        if req.mode == "nn" and req.expression is None:
            found = r.retrieve(req.query, req.searcher_id, k=req.k, radius=req.radius)
            expr, matched = None, None
        else:
            res = r.search(req.query, req.searcher_id, k=req.k, expression=req.expression)
            found, expr, matched = res.candidates, res.expression, res.matched
        return orjson.dumps({
            "expression": expr, "matched": matched, "index_version": r.version.ref,
            "took_ms": round((time.perf_counter() - t) * 1e3, 3),
            "candidates": [{"doc_id": str(c.doc_id), "title": str(c.title), "score": c.score, "rank": c.rank,
                            "source": c.source} for c in found],
        })

    @app.post("/search", response_model=SearchResponse)
    async def search(req: SearchRequest):
        served = state.served  # this request's version, whatever is swapped in meanwhile
        assert served is not None  # a started state (create_app's input): start() set it, swaps only replace it
        try:
            body = await asyncio.wait_for(run_in_threadpool(run, req, served), timeout=request_timeout)
            return Response(content=body, media_type="application/json")
        except asyncio.TimeoutError:
            return error(504, f"the search took longer than {request_timeout} s")
        except (QuerySyntaxError, UnknownModelKeyError, EmptyQueryError, InvalidRequestError) as e:
            return error(400, str(e))
        except UnknownSearcherError as e:
            return error(404, str(e))
        except RetrievalError as e:
            return error(409, str(e))

    @app.get("/healthz")
    async def healthz():
        s = state.served
        return {"ready": s is not None, "dataset": state.dataset,
                "index_version": s.retriever.version.ref if s else None, "refused": state.refused}

    @app.get("/version")
    async def version():
        r = state.served.retriever
        m = r.manifest
        return {"index": r.version.ref, "model": m.model.ref, "feature_service": m.feature_service,
                "as_of": m.as_of, "documents": r.index.ntotal, "hybrid": r.engine is not None}

    return app


def state_for(dataset: str, poll_seconds: float = 5.0, threads: int = 1) -> ServingState:
    """A serving state over the configured artifact store and the dataset's Feast repository."""
    store = ArtifactStore.from_settings()
    repo = FeatureRepo.for_dataset(dataset)
    return ServingState(
        dataset,
        load=lambda version: Retriever.load(dataset, store=store, feature_repo=repo, version=version, threads=threads),
        current_version=lambda: current_index(dataset, store).version,
        poll_seconds=poll_seconds,
    )


__all__ = ["SearchRequest", "SearchResponse", "ServingState", "create_app", "state_for"]
