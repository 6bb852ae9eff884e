"""`ebr serve` end to end over HTTP on 127.0.0.1: search (hybrid and nn), bad requests, a hot swap to a new
index version during requests, and a broken version refused while the old one keeps serving."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from infra.storage import ArtifactStore
from tests.test_rebuild_index import build_tiny_world, stage_plain

pytestmark = [pytest.mark.slow, pytest.mark.server]

DATASET = "tiny-service"
QUERY = "munich runners club"


@pytest.fixture(scope="module")
def world(home):
    return build_tiny_world(DATASET, epochs=1)


def publish(world, home, name: str, manifest_update: dict | None = None) -> str:
    from serving.index_store import publish_index

    staged, manifest, *_ = stage_plain(world, home / "staging" / name)
    if manifest_update:
        manifest = manifest.model_copy(update=manifest_update)
    return publish_index(ArtifactStore.from_settings(), DATASET, staged, manifest).version


@pytest.fixture(scope="module")
def service(world, home):
    import uvicorn

    from serving.service import create_app, state_for

    first = publish(world, home, "v1")
    state = state_for(DATASET, poll_seconds=3600)  # the tests trigger the watcher's check themselves
    state.start()
    server = uvicorn.Server(uvicorn.Config(create_app(state, request_timeout=10.0), host="127.0.0.1", port=0,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        yield client, state, first
    server.should_exit = True
    thread.join(timeout=10)
    state.stop()


def searcher(world) -> str:
    return str(world.data.sessions["searcher_id"].iloc[0])


def test_health_version_and_search(service, world):
    client, state, first = service
    h = client.get("/healthz").json()
    assert h["ready"] and h["index_version"].endswith(first) and h["refused"] == {}
    v = client.get("/version").json()
    assert v["index"].endswith(first) and v["model"] == world.model_version.ref and v["hybrid"] is True
    r = client.post("/search", json={"query": QUERY, "searcher_id": searcher(world), "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["expression"].startswith("(and ") and 1 <= len(body["candidates"]) <= 5
    assert [c["rank"] for c in body["candidates"]] == list(range(1, len(body["candidates"]) + 1))
    nn = client.post("/search", json={"query": QUERY, "searcher_id": searcher(world), "k": 3, "mode": "nn"}).json()
    direct = state.served.retriever.retrieve(QUERY, searcher(world), k=3)
    assert [c["doc_id"] for c in nn["candidates"]] == [c.doc_id for c in direct]
    assert nn["expression"] is None and all(c["source"] == "nn" for c in nn["candidates"])


@pytest.mark.parametrize("payload,status,message", [
    ({"query": QUERY, "k": 3}, 422, "searcher_id: Field required"),
    ({"query": QUERY, "searcher_id": "x", "k": 0}, 422, "k: Input should be greater than or equal to 1"),
    ({"query": QUERY, "searcher_id": "x", "bogus": 1}, 422, "bogus: Extra inputs are not permitted"),
    ({"query": QUERY, "searcher_id": "SEARCHER", "expression": "(and (term a:b)"}, 400, "position"),
    ({"query": QUERY, "searcher_id": "SEARCHER", "expression": "(nn other :k 3)"}, 400, "known keys"),
    ({"query": " ", "searcher_id": "SEARCHER", "mode": "nn"}, 400, "empty query"),
    ({"query": QUERY, "searcher_id": "nobody"}, 404, "has no features"),
])
def test_bad_requests_get_a_4xx_with_a_message(service, world, payload, status, message):
    client, _, _ = service
    payload = {k: (searcher(world) if v == "SEARCHER" else v) for k, v in payload.items()}
    r = client.post("/search", json=payload)
    assert r.status_code == status, r.text
    assert message in r.json()["error"] and "Traceback" not in r.text


def test_oversized_and_malformed_bodies_are_refused(service):
    client, _, _ = service
    r = client.post("/search", content=b"{" + b" " * 20_000 + b"}", headers={"content-type": "application/json"})
    assert r.status_code == 413 and "larger than" in r.json()["error"]
    r = client.post("/search", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "Traceback" not in r.text


def test_a_new_version_is_swapped_in_during_requests_and_a_broken_one_is_refused(service, world, home):
    from serving.index_store import ModelRef

    client, state, first = service
    errors, served_versions, stop = [], set(), threading.Event()

    def load():
        with httpx.Client(base_url=str(client.base_url), timeout=30) as c:
            while not stop.is_set():
                r = c.post("/search", json={"query": QUERY, "searcher_id": searcher(world), "k": 5})
                if r.status_code != 200:
                    errors.append(r.text)
                else:
                    served_versions.add(r.json()["index_version"])

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        second = publish(world, home, "v2")
        assert state.check_once() == second  # loaded aside, then swapped
        time.sleep(0.5)
        # a version naming a model that is not in the registry: refused, the old one keeps serving
        mv = world.model_version
        broken = publish(world, home, "v3", {"model": ModelRef(name=mv.name, version="20990101T000000Z-deadbeef",
                                                               ref=f"model/{mv.name}@20990101T000000Z-deadbeef")})
        assert state.check_once() is None
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert {v.rsplit("@", 1)[1] for v in served_versions} == {first, second}
    h = client.get("/healthz").json()
    assert h["index_version"].endswith(second) and broken in h["refused"] and "not in the model registry" in \
        h["refused"][broken]
    ready = client.get("/readyz")  # serving, but not the store's current version
    assert ready.status_code == 503 and ready.json()["current_version"] == broken


def test_the_batch_route_returns_what_each_query_alone_returns(service, world):
    client, state, _ = service
    who = [searcher(world)] * 3
    texts = [QUERY, "running", "club"]
    r = client.post("/search/batch", json={"queries": [{"query": q, "searcher_id": s} for q, s in zip(texts, who)],
                                           "k": 4})
    assert r.status_code == 200, r.text
    got = [[c["doc_id"] for c in res] for res in r.json()["results"]]
    assert got == [[c.doc_id for c in state.served.retriever.retrieve(q, s, k=4)] for q, s in zip(texts, who)]
    r = client.post("/search/batch", json={"queries": [{"query": QUERY, "searcher_id": "nobody"}]})
    assert r.status_code == 404 and "nobody" in r.json()["error"]


def test_workers_serve_hot_swap_and_add_up_their_metrics(service, world, home):
    """`ebr serve --workers 2` as an operator starts it: each worker process loads the index, answers, swaps
    to a newly published version, and /metrics sums the workers' counters."""
    import os
    import re
    import signal
    import socket
    import subprocess
    import sys
    from pathlib import Path

    publish(world, home, "workers-v1")  # the current version (an earlier test left a broken one current)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "EBR_HOME": str(home)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--dataset", DATASET, "--port", str(port),
                             "--workers", "2", "--poll-seconds", "0.5", "--no-access-log"],
                            cwd=Path(__file__).resolve().parent.parent, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    fresh = httpx.Limits(max_keepalive_connections=0)  # a new connection per request: any worker may answer
    try:
        with httpx.Client(base_url=url, timeout=60, limits=fresh) as c:
            while True:  # until a worker answers (the process has not died meanwhile)
                assert proc.poll() is None, proc.stdout.read()
                try:
                    if c.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            body = {"query": QUERY, "searcher_id": searcher(world), "k": 3}
            assert all(c.post("/search", json=body).status_code == 200 for _ in range(20))
            metrics = c.get("/metrics").text
            counted = sum(float(v) for v in re.findall(r'ebr_requests_total\{route="/search",status="200"\} (\S+)',
                                                       metrics))
            assert counted == 20
            newer = publish(world, home, "workers-v2")
            seen = 0
            while seen < 20:  # twenty answers in a row from the new version: every worker swapped
                assert proc.poll() is None
                version = c.post("/search", json=body).json()["index_version"]
                seen = seen + 1 if version.endswith(newer) else 0
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
