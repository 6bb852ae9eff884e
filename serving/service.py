"""``ebr serve``: the retriever of a dataset's current published index behind HTTP (FastAPI + uvicorn).

    POST /search        {"query": ..., "searcher_id": ..., "k": 10, "expression": null, "mode": "hybrid"}
    POST /search/batch  {"queries": [{"query": ..., "searcher_id": ...}, ...], "k": 10}: nn top-k, one pass
    GET  /healthz       the served version, the last refused version and why
    GET  /version       index, model and feature-service versions being served
    GET  /livez         the process answers (no token needed)
    GET  /readyz        200 while serving the store's current version (or the pinned one), else 503
    GET  /metrics       Prometheus: requests by route and status, latency histograms, queue depth, versions

Each worker process loads the retriever once (the index is read into the worker's memory, not shared). A
watcher thread polls the store's CURRENT pointer of the index; when a new version is published it loads it
aside and swaps one reference, so in-flight requests finish on the version they started with and none
waits for the load. A version that does not load is refused and the previous one keeps serving; ``/healthz``
reports it and ``/readyz`` turns 503 until the store's current version is served again.

A worker runs one search at a time on its event loop's thread, with one OpenMP thread for FAISS: a single
query keeps one core busy, and handing it to other threads only adds their fight over the interpreter lock
(more cores are used by more worker processes). Admission is bounded: at most ``max_queue`` requests of a
worker are admitted (running or waiting for the searches before them), beyond that a 503 with
``Retry-After``; a request still waiting when its deadline passes is dropped before it uses any CPU. Bodies are bounded as they stream (size, and a read deadline for slow
senders), and with a token (``EBR_SERVE_TOKEN``) every route but the probes needs ``Authorization: Bearer``.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

from features.store import FeatureRepo
from infra.settings import get_settings
from infra.storage import ArtifactStore
from serving.engine import UnknownModelKeyError
from serving.errors import EmptyQueryError, InvalidRequestError, RetrievalError, UnknownSearcherError
from serving.index_store import INDEX_KIND, current_index
from serving.query import QuerySyntaxError
from serving.retriever import Retriever

log = logging.getLogger(__name__)
access_log = logging.getLogger("ebr.access")

MAX_BODY_BYTES = 16_384
MAX_BATCH_BODY_BYTES = 1_048_576
MAX_BATCH_QUERIES = 1024
PROBES = frozenset({"/livez", "/readyz"})  # answered without a token: a load balancer's health checks
CONFIG_ENV = "EBR_SERVE_CONFIG"  # the config a worker process reads (``ebr serve --workers N``)


class ServeConfig(BaseModel):
    """How ``ebr serve`` runs; saved in the environment of its worker processes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: str = "synthetic-default"
    host: str = Field("127.0.0.1", description="interface to listen on")
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=256, description="processes, each with its own copy of the index")
    max_queue: int = Field(64, ge=1, le=100_000, description="requests per worker running or waiting; then 503")
    request_timeout: float = Field(2.0, gt=0, le=60, description="per-request deadline in seconds")
    body_timeout: float = Field(5.0, gt=0, le=600, description="seconds to receive a request body")
    poll_seconds: float = Field(5.0, ge=0.5, le=3600, description="how often to look for a new index version")
    version: str | None = Field(None, description="serve this index version and never swap (None: the current)")
    access_log: bool = Field(True, description="one JSON line per request on stderr")
    insecure: bool = Field(False, description="allow a non-loopback address without a token")


class InsecureBindError(RetrievalError):
    """Serving beyond this machine without a token."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: only what resolves to loopback is safe, and names can change
        return False


def serve_token() -> str | None:
    """``EBR_SERVE_TOKEN``, or None when unset or empty."""
    token = get_settings().serve_token
    return token.get_secret_value() if token is not None and token.get_secret_value() else None


def check_exposure(config: ServeConfig, token: str | None) -> None:
    """Refuse a non-loopback address without a token, unless the operator said ``--insecure``."""
    if token or config.insecure or is_loopback(config.host):
        return
    raise InsecureBindError(
        f"refusing to serve on {config.host} without a token: anyone who reaches it could query it. Set "
        "EBR_SERVE_TOKEN (clients then send 'Authorization: Bearer <token>'), bind 127.0.0.1, or pass --insecure")


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    query: str = Field("", max_length=1000, description="the text the searcher typed (embedded by the nn operator)")
    searcher_id: str = Field(..., min_length=1, max_length=256)
    k: int = Field(10, ge=1, le=1000, description="candidates returned")
    expression: str | None = Field(None, max_length=4096, description="a query-language expression")
    mode: Literal["hybrid", "nn"] = Field("hybrid", description="nn: the embedding search alone")
    radius: float | None = Field(None, ge=-1.0, le=1.0, description="nn mode: cosine threshold")


class BatchQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    query: str = Field(..., max_length=1000)
    searcher_id: str = Field(..., min_length=1, max_length=256)


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    queries: list[BatchQuery] = Field(..., min_length=1, max_length=MAX_BATCH_QUERIES)
    k: int = Field(10, ge=1, le=1000)
    nprobe: int | None = Field(None, ge=1, le=65536)


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
    """The retriever being served and the watcher that swaps in new published versions; with ``pinned``,
    that version only."""

    def __init__(self, dataset: str, load: Callable[[str | None], Any], current_version: Callable[[], str],
                 poll_seconds: float = 5.0, pinned: str | None = None,
                 older_versions: Callable[[], list[str]] | None = None):
        self.dataset, self._load, self._current_version = dataset, load, current_version
        self._older_versions = older_versions or (lambda: [])
        self.poll_seconds, self.pinned = poll_seconds, pinned
        self.served: Served | None = None
        self.current: str | None = None  # the store's current version, as last read
        self.refused: dict[str, str] = {}  # version -> why it was not served
        self.on_swap: Callable[[str], None] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Load the pinned or the current version; when the current one does not load, the newest older one
        that does (a corrupt publish must not keep a fresh worker down), with the refusal in ``/healthz``."""
        if self.pinned is not None:
            self.served = Served(self._load(self.pinned), time.time())
            return
        try:
            self.served = Served(self._load(None), time.time())
        except Exception as e:  # noqa: BLE001 - any failure of the current version: try the older ones
            current = self._current_version()
            self.refused[current] = f"{type(e).__name__}: {e}"
            for version in self._older_versions():
                if version == current:
                    continue
                try:
                    self.served = Served(self._load(version), time.time())
                except Exception as older:  # noqa: BLE001
                    self.refused[version] = f"{type(older).__name__}: {older}"
                    continue
                log.error("the current index version %s of %s does not load (%s): serving %s instead", current,
                          self.dataset, e, version)
                break
            else:
                raise
        served = self.served.retriever.version.version
        self.current = next(iter(self.refused), served)  # the refused current version keeps /readyz at 503
        self._thread = threading.Thread(target=self._watch, name="index-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def ready(self) -> bool:
        """Serving the version it should: the pinned one, or the store's current one."""
        if self.served is None:
            return False
        return self.served.retriever.version.version == (self.pinned or self.current)

    def check_once(self) -> str | None:
        """Swap to the store's current version if it is new and loads; returns the version now served."""
        if self.pinned is not None:
            return self.pinned
        try:
            version = self._current_version()
        except Exception as e:  # noqa: BLE001 - a store hiccup: keep serving, try again later
            log.warning("cannot read the current index version of %s: %s", self.dataset, e)
            return None
        self.current = version
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
        if self.on_swap is not None:
            self.on_swap(retriever.version.ref)
        return version

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.check_once()


# --------------------------------------------------------------------------- metrics


class Metrics:
    """The service's Prometheus metrics. Under several workers each process writes its values to files in
    ``PROMETHEUS_MULTIPROC_DIR`` (set by ``ebr serve`` before they start) and ``/metrics`` adds them up
    (prometheus-client's multiprocess mode). Alone, a worker shows its own: the variable alone says nothing,
    since importing Feast sets it to a directory of its own."""

    def __init__(self, multiprocess: bool = False) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("ebr_requests", "requests by route and status", ["route", "status"],
                                registry=self.registry)
        self.latency = Histogram("ebr_request_seconds", "request latency by route", ["route"], registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        self.queue = Gauge("ebr_queue_depth", "requests running or waiting", registry=self.registry,
                           multiprocess_mode="livesum")
        self.shed = Counter("ebr_shed_requests", "requests refused with 503 (queue full) or dropped past their "
                            "deadline", ["reason"], registry=self.registry)
        self.version = Gauge("ebr_served_version", "1 for the index version a worker serves", ["version"],
                             registry=self.registry, multiprocess_mode="liveall")
        self.refused = Gauge("ebr_refused_versions", "index versions refused since start", registry=self.registry,
                             multiprocess_mode="max")
        self._served: str | None = None
        self.multiprocess = multiprocess

    def served(self, ref: str) -> None:
        if self._served is not None and self._served != ref:
            self.version.labels(self._served).set(0)
        self.version.labels(ref).set(1)
        self._served = ref

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=os.environ["PROMETHEUS_MULTIPROC_DIR"])
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


# --------------------------------------------------------------------------- the HTTP edge


class _Guard:
    """Pure ASGI middleware (Starlette's BaseHTTPMiddleware costs a task and a stream copy per request): the
    token, the body read in full within its size and time bounds before the app sees it (chunked bodies are
    counted as they arrive), metrics and the access log, and a 500 with a message instead of a traceback."""

    def __init__(self, app, error, metrics: Metrics, token: str | None, body_timeout: float,
                 current_ref: Callable[[], str | None], access: bool):
        self.app, self.error, self.metrics = app, error, metrics
        self.token = token.encode() if token else None
        self.body_timeout, self.current_ref, self.access = body_timeout, current_ref, access

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        path = scope.get("path", "")
        status = [500]

        async def tracked(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self._handle(scope, receive, tracked, path, status)
        finally:
            route = path if path in ROUTES else "other"
            took = time.perf_counter() - t0
            self.metrics.requests.labels(route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(took)
            if self.access:
                access_log.info(json.dumps({
                    "ts": round(time.time(), 3), "method": scope.get("method"), "path": path, "status": status[0],
                    "ms": round(took * 1e3, 3), "client": (scope.get("client") or ("", 0))[0],
                    "index_version": self.current_ref()}))

    async def _handle(self, scope, receive, send, path, status):
        headers = dict(scope.get("headers") or ())
        if self.token is not None and path not in PROBES:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, b"Bearer " + self.token):
                return await self.error(401, "missing or wrong bearer token (Authorization: Bearer <token>)",
                                        {"WWW-Authenticate": "Bearer"})(scope, receive, send)
        if scope.get("method") in ("POST", "PUT", "PATCH"):
            limit = MAX_BATCH_BODY_BYTES if path == "/search/batch" else MAX_BODY_BYTES
            size = headers.get(b"content-length")
            if size is not None and (not size.isdigit() or int(size) > limit):
                return await self.error(413, f"request body larger than {limit} bytes")(scope, receive, send)
            body = await self._read_body(receive, limit)
            if isinstance(body, int):  # a status: the body broke a bound
                if body == 0:
                    status[0] = 499  # the client went away before sending its body: no answer to give
                    return None
                message = (f"request body larger than {limit} bytes" if body == 413 else
                           f"request body not received within {self.body_timeout} s")
                return await self.error(body, message)(scope, receive, send)
            receive = _replay(body, receive)
        started = False

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as e:  # noqa: BLE001 - never a traceback to the client
            log.exception("unhandled error on %s", path)
            if not started:
                await self.error(500, f"internal error ({type(e).__name__}); see the service log")(scope, receive, send)

    async def _read_body(self, receive, limit: int) -> bytes | int:
        """The whole body, or 413 past ``limit`` bytes, 408 past the read deadline, 0 on a disconnect."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        chunks, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                return 408
            if message["type"] == "http.disconnect":
                return 0
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return 413
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive):
    sent = False

    async def again():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: the disconnect, when it comes

    return again


ROUTES = frozenset({"/search", "/search/batch", "/healthz", "/version", "/livez", "/readyz", "/metrics"})


def create_app(state: ServingState, request_timeout: float = 2.0, config: ServeConfig | None = None,
               token: str | None = None, on_close: Callable[[], None] | None = None):
    """The FastAPI app over a started :class:`ServingState`; ``on_close`` runs when the server stops."""
    from contextlib import asynccontextmanager

    import orjson
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response

    config = config or ServeConfig(dataset=state.dataset, request_timeout=request_timeout)
    timeout = config.request_timeout
    metrics = Metrics(multiprocess=config.workers > 1)
    admitted = [0]  # requests of this worker running or waiting for the searches before them
    arrivals = [0]  # requests admitted since start: settle() watches it move
    if state.served is not None:
        metrics.served(state.served.retriever.version.ref)
    state.on_swap = metrics.served

    @asynccontextmanager
    async def lifespan(_app):
        yield
        if on_close is not None:
            on_close()

    app = FastAPI(title="ebr retrieval", version="1", lifespan=lifespan)

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse(status_code=status, content={"error": message}, headers=headers)

    def current_ref() -> str | None:
        s = state.served
        return s.retriever.version.ref if s is not None else None

    if config.access_log:
        access_log.setLevel(logging.INFO)
        if not access_log.handlers:  # one JSON line per request on stderr, not through uvicorn's formatter
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(message)s"))
            access_log.addHandler(handler)
            access_log.propagate = False
    app.add_middleware(_Guard, error=error, metrics=metrics, token=token, body_timeout=config.body_timeout,
                       current_ref=current_ref, access=config.access_log)

    @app.exception_handler(RequestValidationError)
    async def invalid(_, exc: RequestValidationError):
        parts = [f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors()]
        return error(422, "; ".join(parts))

    def search_body(req: SearchRequest, served: Served) -> bytes:
        """The search, serialized in the search thread: the response is built from plain dicts and encoded by
        orjson (FastAPI's response-model round trip cost more than the search on small indexes)."""
        r = served.retriever
        t = time.perf_counter()
        if req.mode == "nn" and req.expression is None:
            found = r.retrieve(req.query, req.searcher_id, k=req.k, radius=req.radius)
            expr, matched = None, None
        else:
            if req.expression is None and not req.query.strip():
                raise EmptyQueryError("empty query: give query text, or an expression")
            res = r.search(req.query, req.searcher_id, k=req.k, expression=req.expression)
            found, expr, matched = res.candidates, res.expression, res.matched
        return orjson.dumps({
            "expression": expr, "matched": matched, "index_version": r.version.ref,
            "took_ms": round((time.perf_counter() - t) * 1e3, 3), "candidates": _candidates(found)})

    def batch_body(req: BatchRequest, served: Served) -> bytes:
        r = served.retriever
        t = time.perf_counter()
        found = r.retrieve_many([q.query for q in req.queries], [q.searcher_id for q in req.queries], k=req.k,
                                nprobe=req.nprobe)
        return orjson.dumps({"index_version": r.version.ref, "took_ms": round((time.perf_counter() - t) * 1e3, 3),
                             "results": [_candidates(c) for c in found]})

    def _candidates(found) -> list[dict]:
        return [{"doc_id": str(c.doc_id), "title": str(c.title), "score": c.score, "rank": c.rank,
                 "source": c.source} for c in found]

    async def settle() -> None:
        """Give the loop the turns it takes to accept, read and admit the requests that arrived during the last
        search (at least three, and until a turn admits none), so that they count against the bound and wait
        their turn here instead of unseen in the socket queue."""
        turns, seen = 0, -1
        while turns < 3 or arrivals[0] != seen:
            seen = arrivals[0]
            await asyncio.sleep(0)
            turns += 1

    async def run(work: Callable[..., bytes], req: Any) -> Response:
        if admitted[0] >= config.max_queue:
            metrics.shed.labels("queue_full").inc()
            return error(503, f"overloaded: {config.max_queue} requests already admitted; retry shortly",
                         headers={"Retry-After": "1"})
        arrived = time.monotonic()
        admitted[0] += 1
        arrivals[0] += 1
        metrics.queue.inc()
        try:
            await settle()  # the requests that came meanwhile enter too; each then waits here for those before it
            if time.monotonic() - arrived > timeout:  # its deadline passed while it waited: no work for it
                metrics.shed.labels("deadline").inc()
                return error(504, f"the search waited longer than {timeout} s")
            served = state.served  # this request's version, whatever is swapped in meanwhile
            assert served is not None  # a started state (create_app's input): start() set it, swaps replace it
            return Response(content=work(req, served), media_type="application/json")
        except (QuerySyntaxError, UnknownModelKeyError, EmptyQueryError, InvalidRequestError) as e:
            return error(400, str(e))
        except UnknownSearcherError as e:
            return error(404, str(e))
        except RetrievalError as e:
            return error(409, str(e))
        finally:
            admitted[0] -= 1
            metrics.queue.dec()

    @app.post("/search", response_model=SearchResponse)
    async def search(req: SearchRequest):
        return await run(search_body, req)

    @app.post("/search/batch")
    async def search_batch(req: BatchRequest):
        return await run(batch_body, req)

    @app.get("/healthz")
    async def healthz():
        s = state.served
        return {"ready": state.ready, "dataset": state.dataset, "index_version": s.retriever.version.ref if s else None,
                "current_version": state.current, "pinned": state.pinned, "refused": state.refused}

    @app.get("/livez")
    async def livez():
        return {"live": True}

    @app.get("/readyz")
    async def readyz():
        body = {"ready": state.ready, "index_version": current_ref(), "current_version": state.current,
                "pinned": state.pinned}
        return body if state.ready else JSONResponse(status_code=503, content=body)

    @app.get("/metrics")
    async def prometheus():
        metrics.refused.set(len(state.refused))
        data, content_type = metrics.exposition()
        return Response(content=data, media_type=content_type)

    @app.get("/version")
    async def version():
        r = state.served.retriever
        m = r.manifest
        return {"index": r.version.ref, "model": m.model.ref, "feature_service": m.feature_service,
                "as_of": m.as_of, "documents": r.index.ntotal, "hybrid": r.engine is not None}

    return app


def state_for(dataset: str, poll_seconds: float = 5.0, threads: int = 1, pinned: str | None = None) -> ServingState:
    """A serving state over the configured artifact store and the dataset's Feast repository."""
    store = ArtifactStore.from_settings()
    repo = FeatureRepo.for_dataset(dataset)
    return ServingState(
        dataset,
        load=lambda version: Retriever.load(dataset, store=store, feature_repo=repo, version=version, threads=threads),
        current_version=lambda: current_index(dataset, store).version,
        poll_seconds=poll_seconds,
        pinned=pinned,
        older_versions=lambda: [av.version for av in reversed(store.list_versions(INDEX_KIND, dataset))],
    )


def app_from_env():
    """The app of one worker process of ``ebr serve --workers N`` (uvicorn's factory): the config from
    :data:`CONFIG_ENV`, its own serving state and watcher."""
    config = ServeConfig.model_validate_json(os.environ[CONFIG_ENV])
    state = state_for(config.dataset, config.poll_seconds, pinned=config.version)
    state.start()
    return create_app(state, config=config, token=serve_token(), on_close=state.stop)


__all__ = ["CONFIG_ENV", "InsecureBindError", "ServeConfig", "SearchRequest", "SearchResponse", "ServingState",
           "app_from_env", "check_exposure", "create_app", "serve_token", "state_for"]
