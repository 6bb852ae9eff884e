"""The HTTP edge of `ebr serve` under hostile and heavy traffic, over a real uvicorn server on 127.0.0.1: the
token, bodies bounded as they stream (chunked, slow), strict request types, bounded admission with 503 and
Retry-After, requests dropped past their deadline before any work, probes and Prometheus metrics.

The retriever behind it is a stand-in: its search for "hold" blocks the worker (searches run on its event
loop) until the test releases it, so that requests pile up exactly while the test sends them; its search for
"slow" takes a fixed time past the deadline. tests/test_service.py covers the real retriever."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from contextlib import contextmanager
from types import SimpleNamespace

import httpx
import pytest

from serving.request import Candidate
from serving.service import InsecureBindError, ServeConfig, ServingState, check_exposure, create_app, is_loopback

TOKEN = "s3cret-token"


class HeldRetriever:
    """Answers ``retrieve`` with one candidate: for "hold" once the test releases it, for "slow" after
    ``slow`` seconds; counts the searches it ran."""

    def __init__(self, version: str = "20260101T000000Z-00000001", slow: float = 0.0):
        self.version = SimpleNamespace(version=version, ref=f"index/stub@{version}")
        self.release = threading.Event()
        self.holding = threading.Event()
        self.slow, self.ran = slow, 0

    def retrieve(self, query, searcher_id, k=10, radius=None):
        if query == "hold":
            self.holding.set()
            self.release.wait()
        elif query == "slow":
            time.sleep(self.slow)
        self.ran += 1
        return [Candidate(doc_id="d1", title="t", score=0.5, rank=1)]

    def retrieve_many(self, queries, searcher_ids, k=10, nprobe=None):
        return [self.retrieve(q, s, k) for q, s in zip(queries, searcher_ids)]

    def search(self, query, searcher_id, k=10, expression=None):
        return SimpleNamespace(candidates=self.retrieve(query, searcher_id, k), expression="(nn default)", matched=1)


@contextmanager
def running(config: ServeConfig, token: str | None = None, retriever: HeldRetriever | None = None):
    import uvicorn

    retriever = retriever or HeldRetriever()
    versions = {"current": retriever.version.version}
    state = ServingState("stub", load=lambda v: retriever, current_version=lambda: versions["current"],
                         poll_seconds=3600)
    state.start()
    server = uvicorn.Server(uvicorn.Config(create_app(state, config=config, token=token), host="127.0.0.1",
                                           port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}", port=port, state=state, retriever=retriever,
                              versions=versions)
    finally:
        retriever.release.set()
        server.should_exit = True
        thread.join(timeout=30)
        state.stop()


BODY = {"query": "q", "searcher_id": "s", "k": 3, "mode": "nn"}


def test_a_token_guards_every_route_but_the_probes():
    with running(ServeConfig(access_log=False), token=TOKEN) as srv, httpx.Client(base_url=srv.url) as c:
        for path in ("/healthz", "/version", "/metrics"):
            assert c.get(path).status_code == 401, path
        r = c.post("/search", json=BODY)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and "bearer token" in r.text
        assert c.post("/search", json=BODY, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.post("/search", json=BODY, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert c.get("/livez").status_code == 200 and c.get("/readyz").status_code == 200
        assert srv.retriever.ran == 1  # refused requests never reached the retriever


def test_serving_beyond_loopback_needs_a_token_or_insecure():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.7") and not is_loopback("example.org")
    with pytest.raises(InsecureBindError, match="EBR_SERVE_TOKEN"):
        check_exposure(ServeConfig(host="0.0.0.0"), None)
    check_exposure(ServeConfig(host="0.0.0.0"), TOKEN)
    check_exposure(ServeConfig(host="0.0.0.0", insecure=True), None)
    check_exposure(ServeConfig(), None)


def test_the_cli_refuses_a_public_address_without_a_token(monkeypatch):
    from typer.testing import CliRunner

    from cli.main import app

    monkeypatch.delenv("EBR_SERVE_TOKEN", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))  # serve sets it: restore it
    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--dataset", "nowhere"])
    assert result.exit_code == 2 and "refusing to serve on 0.0.0.0 without a token" in result.output


def test_bodies_are_bounded_as_they_stream_and_in_time():
    config = ServeConfig(access_log=False, body_timeout=0.5)
    with running(config) as srv, httpx.Client(base_url=srv.url) as c:
        def chunks():  # no Content-Length: the size is only known as the chunks arrive
            for _ in range(64):
                yield b" " * 4096

        r = c.post("/search", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and "larger than" in r.json()["error"]
        # a body slower than its Content-Length: answered when the read deadline passes, the connection freed
        with socket.create_connection(("127.0.0.1", srv.port)) as s:
            s.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{\"query\":")
            s.settimeout(120)
            answer = b""
            while b"not received within" not in answer and (chunk := s.recv(4096)):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408") and b"not received within" in answer
        assert srv.retriever.ran == 0


@pytest.mark.parametrize("payload,message", [
    ({**BODY, "k": True}, "k: Input should be a valid integer"),
    ({**BODY, "k": "3"}, "k: Input should be a valid integer"),
    ({**BODY, "searcher_id": 7}, "searcher_id: Input should be a valid string"),
])
def test_request_types_are_strict(payload, message):
    with running(ServeConfig(access_log=False)) as srv, httpx.Client(base_url=srv.url) as c:
        r = c.post("/search", json=payload)
        assert r.status_code == 422 and message in r.json()["error"]


def test_a_hybrid_query_without_text_or_expression_is_a_bad_request():
    with running(ServeConfig(access_log=False)) as srv, httpx.Client(base_url=srv.url) as c:
        r = c.post("/search", json={"query": "  ", "searcher_id": "s"})
        assert r.status_code == 400 and "empty query" in r.json()["error"]
        assert srv.retriever.ran == 0


def raw_post(port: int, body: dict) -> socket.socket:
    """A request written whole into the server's socket (it lands in the kernel's buffer even while the
    worker is busy); read its answer with :func:`answer`."""
    data = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
              + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return s


def answer(s: socket.socket) -> tuple[int, bytes]:
    s.settimeout(120)
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    s.close()
    return int(out.split(b" ", 2)[1]), out


def hold_the_worker(srv) -> threading.Thread:
    """A request whose search blocks the worker until ``srv.retriever.release`` is set."""
    t = threading.Thread(target=lambda: httpx.post(f"{srv.url}/search", json={**BODY, "query": "hold"}, timeout=120))
    t.start()
    assert srv.retriever.holding.wait(120)
    return t


def test_beyond_the_queue_bound_requests_get_503_with_retry_after():
    config = ServeConfig(access_log=False, max_queue=2)
    held = HeldRetriever(slow=0.2)
    with running(config, retriever=held) as srv:
        first = hold_the_worker(srv)
        waiting = [raw_post(srv.port, {**BODY, "query": "slow"}) for _ in range(6)]  # arrive while it is busy
        held.release.set()
        first.join()
        answers = [answer(s) for s in waiting]
    statuses = [status for status, _ in answers]
    # when the worker is free they enter as the loop reads them: never more than two at once, the others are
    # shed at once (how many in each turn of the loop depends on how the six are read: at least one is shed)
    assert statuses.count(503) >= 1 and set(statuses) <= {200, 503}, statuses
    shed = next(raw for status, raw in answers if status == 503)
    assert b"retry-after: 1" in shed.lower() and b"overloaded" in shed
    assert held.ran == 1 + statuses.count(200)


def test_a_request_that_waited_past_its_deadline_is_dropped_before_any_work():
    config = ServeConfig(access_log=False, max_queue=8, request_timeout=0.5)
    held = HeldRetriever(slow=1.0)  # longer than the deadline: whoever waits for it has waited too long
    with running(config, retriever=held) as srv:
        first = hold_the_worker(srv)
        waiting = [raw_post(srv.port, {**BODY, "query": "slow"}) for _ in range(3)]
        held.release.set()
        first.join()
        answers = [answer(s) for s in waiting]
        with httpx.Client(base_url=srv.url) as c:
            metrics = c.get("/metrics").text
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200, 504, 504], statuses  # the first of the three searched; the others waited for it
    assert all(b"waited longer than 0.5 s" in raw for status, raw in answers if status == 504)
    assert held.ran == 2  # the held search and one slow one: the expired requests never searched
    assert 'ebr_shed_requests_total{reason="deadline"} 2.0' in metrics


def test_probes_and_metrics_follow_the_served_version():
    with running(ServeConfig(access_log=False)) as srv, httpx.Client(base_url=srv.url) as c:
        assert c.get("/livez").json() == {"live": True}
        assert c.get("/readyz").status_code == 200
        assert c.post("/search", json=BODY).status_code == 200
        assert c.post("/search/batch", json={"queries": [{"query": "a", "searcher_id": "s"}] * 3}).status_code == 200
        metrics = c.get("/metrics").text
        assert 'ebr_requests_total{route="/search",status="200"} 1.0' in metrics, [
            line for line in metrics.splitlines() if line.startswith("ebr_")]
        assert 'ebr_requests_total{route="/search/batch",status="200"} 1.0' in metrics
        assert 'ebr_request_seconds_bucket{le="5.0",route="/search"} 1.0' in metrics
        assert f'ebr_served_version{{version="{srv.retriever.version.ref}"}} 1.0' in metrics
        # the store moves to a version that does not load: still live, no longer ready, and it says why
        srv.versions["current"] = "20260202T000000Z-00000002"
        def corrupt(version):
            raise RuntimeError("corrupt index")

        srv.state._load = corrupt
        assert srv.state.check_once() is None
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["current_version"] == "20260202T000000Z-00000002"
        assert c.get("/livez").status_code == 200 and "ebr_refused_versions 1.0" in c.get("/metrics").text


def test_a_pinned_version_is_served_and_never_swapped():
    held = HeldRetriever()
    state = ServingState("stub", load=lambda v: held, current_version=lambda: "20990101T000000Z-0000000f",
                         pinned=held.version.version)
    state.start()
    assert state.check_once() == held.version.version and state.ready
    state.stop()


def test_access_log_lines_are_json():
    import json
    import logging

    class Lines(logging.Handler):
        def __init__(self):
            super().__init__()
            self.lines: list[str] = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    lines = Lines()
    logger = logging.getLogger("ebr.access")
    logger.addHandler(lines)
    try:
        with running(ServeConfig()) as srv, httpx.Client(base_url=srv.url) as c:
            c.post("/search", json=BODY)
    finally:  # the server has stopped: every request's line is written
        logger.removeHandler(lines)
    line = json.loads(lines.lines[0])
    assert line["path"] == "/search" and line["status"] == 200 and line["index_version"].startswith("index/stub@")
    with running(ServeConfig(access_log=False)) as srv, httpx.Client(base_url=srv.url) as c:
        logger.addHandler(lines)
        try:
            c.post("/search", json=BODY)
        finally:
            logger.removeHandler(lines)
    assert len(lines.lines) == 1  # --no-access-log writes none


def test_a_fresh_worker_serves_the_newest_good_version_when_the_current_one_is_damaged():
    versions = {v: HeldRetriever(v) for v in ("20260101T000000Z-00000001", "20260102T000000Z-00000002")}
    current = "20260103T000000Z-00000003"  # its index.faiss was truncated in the store

    def load(version):
        if version in (None, current):
            raise RuntimeError("index.faiss: truncated")
        if version == "20260102T000000Z-00000002":
            raise RuntimeError("model missing")
        return versions[version]

    state = ServingState("stub", load=load, current_version=lambda: current, poll_seconds=3600,
                         older_versions=lambda: [current, "20260102T000000Z-00000002", "20260101T000000Z-00000001"])
    state.start()
    try:
        assert state.served.retriever is versions["20260101T000000Z-00000001"]
        assert set(state.refused) == {current, "20260102T000000Z-00000002"} and "truncated" in state.refused[current]
        assert not state.ready and state.current == current  # /readyz says 503: not the store's current version
        assert state.check_once() is None  # the damaged current version is not retried on every poll
    finally:
        state.stop()
    nothing = ServingState("stub", load=load, current_version=lambda: current, older_versions=lambda: [current])
    with pytest.raises(RuntimeError, match="truncated"):
        nothing.start()  # no good version at all: the start fails, as before
