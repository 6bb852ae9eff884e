"""The online query path, measured where a search stack meets it: in-process, batched and over HTTP.

    python -m bench.online_path [--dataset synthetic-default] [--queries 2000] [--scale 50] [--concurrency 4]

Needs the dataset's published index, its model and its Feast online store (``./run demo`` makes them for the
default world). Two corpora:

- the published index as it is (the default world: 20,000 documents);
- ``--scale`` times larger (50 -> 1,000,000 documents): every published document vector and its replicas,
  each replica the vector plus Gaussian noise (renormalized; cosine ~0.9 to its original), in an IVF-PQ index
  sized by ``IndexConfig.for_corpus``; the term index repeats each document's terms for its replicas. This
  corpus measures latency at 1M documents with the real model, features and query language; it is not a
  quality benchmark.

For each corpus, in one run and one process thread: plain FAISS on precomputed query vectors; a posting-list
intersection of the hybrid expression's Boolean part; the bare pipeline of the same steps as one query (a
SQLite read of the searcher's online rows, the query tower's forward pass on precomputed inputs, the FAISS
search); the retriever (nn top-k, then hybrid); batches of 1024 through ``Retriever.retrieve_many`` next to
FAISS alone on the same batch; and ``ebr serve`` in its own process under a bounded load generator on
127.0.0.1 (1 and ``--concurrency`` clients). Also: a fresh process's retriever load and a whole ``ebr search``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.retrieval_quality import RESULTS, machine, write

K = 10
BATCH = 1024
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Lat:
    p50: float
    p99: float
    qps: float | None = None

    def cells(self) -> list[str]:
        return [f"{self.p50:.2f}", f"{self.p99:.2f}", "-" if self.qps is None else f"{self.qps:,.0f}"]


def latencies(fn, items, warmup: int = 20) -> Lat:
    for it in items[:warmup]:
        fn(it)
    ms = []
    t0 = time.perf_counter()
    for it in items:
        t = time.perf_counter()
        fn(it)
        ms.append((time.perf_counter() - t) * 1e3)
    wall = time.perf_counter() - t0
    return Lat(float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), len(items) / wall)


# ------------------------------------------------------------------------------------------ inputs


def test_queries(dataset: str, n: int, retriever) -> list[tuple[str, str]]:
    """The newest ``n`` sessions with a query whose searcher the online store knows."""
    from infra.settings import get_settings
    from serving.errors import UnknownSearcherError

    sessions = pd.read_parquet(get_settings().dataset_path(dataset) / "sessions.parquet",
                               columns=["searcher_id", "ts", "query"])
    sessions = sessions.dropna(subset=["query"]).sort_values("ts").tail(n * 2)
    pairs = list(zip(sessions["query"].astype(str), sessions["searcher_id"].astype(str)))
    known = []
    for q, s in pairs:
        try:
            retriever.searcher_features(s)
        except UnknownSearcherError:
            continue
        if q.strip():
            known.append((q, s))
        if len(known) == n:
            break
    return known


def scaled_index(published, scale: int, seed: int = 0):
    """``published`` with every document replicated ``scale`` times (see the module docstring)."""
    from pyroaring import BitMap

    from ann.index import EmbeddingIndex, IndexConfig
    from serving.index_store import PublishedIndex
    from serving.terms import TermIndex

    base = published.index.faiss_index
    n, dim = published.index.ntotal, published.index.dim
    vectors = np.vstack([base.reconstruct(i) for i in range(n)]).astype(np.float32)  # ids are the positions
    rng = np.random.default_rng(seed)
    big = np.empty((n * scale, dim), np.float32)
    big[:n] = vectors
    for r in range(1, scale):
        v = vectors + 0.5 * rng.standard_normal(vectors.shape, dtype=np.float32) / np.sqrt(dim)
        big[r * n:(r + 1) * n] = v / np.linalg.norm(v, axis=1, keepdims=True)
    index = EmbeddingIndex.build(big, np.arange(n * scale, dtype=np.int64),
                                 IndexConfig.for_corpus(n * scale, dim), progress=True)
    del big
    dm = published.doc_map
    doc_map = pd.DataFrame({
        "position": np.arange(n * scale, dtype=np.int64),
        "doc_id": np.concatenate([dm["doc_id"].astype(str).to_numpy() + ("" if r == 0 else f"~{r}") for r in range(scale)]),
        "title": np.tile(dm["title"].to_numpy(object), scale),
        "doc_type": np.tile(dm["doc_type"].to_numpy(object), scale),
    })
    postings = {}
    for term, b in published.terms.postings.items():
        out = BitMap(b)
        for r in range(1, scale):
            out |= b.shift(r * n)
        out.run_optimize()
        postings[term] = out
    terms = TermIndex(postings, n * scale)
    return PublishedIndex(index, doc_map, published.manifest, published.version, published.path, None, terms)


# ------------------------------------------------------------------------------------------ measurements


def raw_faiss(index):
    """The FAISS index under ours, set to scan as many lists as ours does by default (our wrapper passes
    nprobe per search; a raw FAISS call uses the index's own setting)."""
    import faiss

    raw = index.faiss_index
    if index.kind != "flat":
        faiss.extract_index_ivf(raw).nprobe = index.config.nprobe or 1
    return raw


def bare_pipeline(retriever, pairs):
    """(one-query function, what it does): a SQLite read of the searcher's online rows, the query tower on
    precomputed inputs, the FAISS search. The irreducible work of one query."""
    import torch
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    from serving.request import NNRequest

    repo = retriever.features
    project = repo.store.project
    tables = [f"{project}_{p.name}" for p in retriever._service.feature_view_projections]
    con = sqlite3.connect(str(repo.online_store_path), check_same_thread=False)
    sql = [f"SELECT feature_name, value FROM {t} WHERE entity_key = ?" for t in tables]
    keys = {s: serialize_entity_key(EntityKey(join_keys=["searcher_id"], entity_values=[Value(string_val=s)]), 3)
            for _, s in pairs}
    members = getattr(retriever.model, "members", [retriever.model])
    inputs = {}
    for q, s in pairs:
        rec = retriever.query_record(NNRequest(q, s, K))
        inputs[(q, s)] = [m.featurize_queries(rec).take() for m in members]
    faiss_index = raw_faiss(retriever.index)
    qvec = {p: retriever.model.embed_queries(retriever.query_record(NNRequest(*p, K))) for p in pairs}

    def one(pair):
        for stmt in sql:
            con.execute(stmt, (keys[pair[1]],)).fetchall()
        with torch.no_grad():
            for m, x in zip(members, inputs[pair]):
                m.query_tower(x)
        faiss_index.search(qvec[pair], K)

    return one, qvec


def service_latency(env: dict, dataset: str, pairs, concurrency: int, mode: str, n: int) -> Lat:
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--dataset", dataset, "--port", str(port),
                             "--poll-seconds", "3600"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ebr serve exited: {proc.stderr.read()[-2000:]}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).json().get("ready"):
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError("ebr serve was not ready within 300 s")
            time.sleep(0.2)
        return load(url, pairs, concurrency, mode, n)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def load(url: str, pairs, concurrency: int, mode: str, n: int) -> Lat:
    """``concurrency`` clients, each sending its requests one after another over one keep-alive connection
    (a bounded, closed-loop load). The clients use the standard library's http.client: a heavier client
    (httpx costs ~0.5 ms a request in Python) would count its own work as the service's."""
    import http.client
    import json
    from urllib.parse import urlparse

    host = urlparse(url)
    lock = threading.Lock()
    ms: list[float] = []
    errors: list[str] = []
    per = max(1, n // concurrency)

    def client(c: int) -> None:
        conn = http.client.HTTPConnection(host.hostname, host.port, timeout=10)
        try:
            for i in range(per + 10):
                q, s = pairs[(c * per + i) % len(pairs)]
                body = json.dumps({"query": q, "searcher_id": s, "k": K, "mode": mode})
                t = time.perf_counter()
                conn.request("POST", "/search", body, {"Content-Type": "application/json"})
                r = conn.getresponse()
                data = r.read()
                took = (time.perf_counter() - t) * 1e3
                if r.status != 200:
                    errors.append(f"{r.status} {data[:200]!r}")
                elif i >= 10:  # the first requests warm the connection
                    with lock:
                        ms.append(took)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, e.g. {errors[0]}")
    return Lat(float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), len(ms) / wall)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fresh_process(code: str, env: dict) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - t


def corpus_section(label: str, retriever, pairs, env: dict, dataset: str, args) -> list[str]:
    from pyroaring import BitMap

    from serving.hybrid import HybridConfig, scope_terms
    from serving.terms import tokens

    rows: list[tuple[str, Lat, str]] = []
    bare, qvec = bare_pipeline(retriever, pairs)
    faiss_index = raw_faiss(retriever.index)
    rows.append(("plain FAISS search (precomputed query vector)", latencies(lambda p: faiss_index.search(qvec[p], K), pairs), "reference"))
    terms, cfg = retriever.engine.terms, HybridConfig()
    scope = {p: scope_terms(retriever.searcher_features(p[1]), cfg) for p in pairs}

    def boolean(p):
        where = BitMap.union(*[terms.get(t) for t in scope[p]]) if scope[p] else terms.universe()
        words = list(dict.fromkeys(tokens(p[0])))[: cfg.max_text_terms]
        text = BitMap.intersection(*[terms.get(f"text:{w}") for w in words]) if words else BitMap()
        return where & text

    rows.append(("posting lists: the hybrid expression's Boolean part (pyroaring)", latencies(boolean, pairs), "reference"))
    bare_lat = latencies(bare, pairs)
    rows.append(("bare pipeline: SQLite read + query tower + FAISS", bare_lat, "reference"))
    nn = latencies(lambda p: retriever.retrieve(p[0], p[1], k=K), pairs)
    rows.append(("retriever.retrieve (nn top-10)", nn, f"{nn.p99 / bare_lat.p99:.2f}x bare p99"))
    hy = latencies(lambda p: retriever.search(p[0], p[1], k=K), pairs)
    rows.append(("retriever.search (hybrid, default expression)", hy, f"{hy.p99 / bare_lat.p99:.2f}x bare p99"))

    batch_pairs = (pairs * (BATCH // len(pairs) + 1))[:BATCH]
    qs, ss = [p[0] for p in batch_pairs], [p[1] for p in batch_pairs]
    qmat = np.vstack([qvec[p] for p in batch_pairs])
    faiss_t = min(_timed(lambda: faiss_index.search(qmat, K)) for _ in range(3))
    ours_t = min(_timed(lambda: retriever.retrieve_many(qs, ss, k=K)) for _ in range(3))
    batch = [("FAISS alone, batch of 1024 precomputed vectors", BATCH / faiss_t),
             ("retriever.retrieve_many, batch of 1024 (features + towers + FAISS)", BATCH / ours_t)]

    service = []
    if not args.no_service:
        for mode, ref in (("nn", nn), ("hybrid", hy)):
            for c in (1, args.concurrency):
                lat = service_latency(env, dataset, pairs, c, mode, args.requests)
                service.append((mode, c, lat, lat.p50 / ref.p50))

    lines = [f"## {label}", "",
             f"{retriever.index.ntotal:,} documents, index {retriever.index.kind} (nprobe "
             f"{retriever.index.config.nprobe or '-'}); model {retriever.manifest.model.ref}; "
             f"{len(pairs)} test queries, one at a time, 1 thread.", "",
             "| step | p50 ms | p99 ms | QPS | vs |", "|---|---:|---:|---:|---|"]
    lines += [f"| {name} | {' | '.join(lat.cells())} | {vs} |" for name, lat, vs in rows]
    lines += ["", "| batched | QPS | ratio to FAISS alone |", "|---|---:|---:|"]
    lines += [f"| {name} | {qps:,.0f} | {qps / batch[0][1]:.2f} |" for name, qps in batch]
    if service:
        lines += ["", f"`ebr serve` in its own process (uvicorn, 1 worker, retriever threads 1), {args.requests} "
                  "requests per row from closed-loop clients on 127.0.0.1; latency as the client sees it:", "",
                  "| mode | clients | p50 ms | p99 ms | QPS | p50 vs in-process |", "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {m} | {c} | {' | '.join(lat.cells())} | {ratio:.2f}x |" for m, c, lat, ratio in service]
    return lines + [""]


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="synthetic-default")
    ap.add_argument("--queries", type=int, default=1000, help="test queries timed one at a time")
    ap.add_argument("--requests", type=int, default=1000, help="HTTP requests per service row")
    ap.add_argument("--scale", type=int, default=50, help="the large corpus: this many copies (1 = skip it)")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--no-service", action="store_true", help="skip the HTTP rows")
    ap.add_argument("--output", default=str(RESULTS / "online_path.md"))
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()

    from infra.settings import Settings
    from infra.storage import ArtifactStore
    from serving.index_store import load_index, publish_index, stage_index
    from serving.retriever import Retriever

    retriever = Retriever.load(args.dataset, threads=1)
    pairs = test_queries(args.dataset, args.queries, retriever)
    if not pairs:
        raise SystemExit(f"no test query of {args.dataset!r} has a searcher in the online store")
    q, s = pairs[0]
    load_s = fresh_process(f"from serving.retriever import Retriever; Retriever.load({args.dataset!r}, threads=1)", env)
    search_s = fresh_process("import sys; from cli.main import app; sys.argv=['ebr','search',"
                             f"{q!r},'--dataset',{args.dataset!r},'--searcher',{s!r}]; app()", env)
    sections = corpus_section(f"{retriever.index.ntotal:,} documents (the published index)", retriever, pairs,
                              env, args.dataset, args)
    if args.scale > 1:
        t = time.perf_counter()
        big = scaled_index(load_index(args.dataset), args.scale)
        build_s = time.perf_counter() - t
        large = Retriever(args.dataset, big, retriever.model, retriever.features)
        with tempfile.TemporaryDirectory(prefix="ebr-online-") as tmp:
            # The service reads the large corpus from its own artifact store (the same model registry, copied).
            store_dir = Path(tmp) / "artifacts"
            shutil.copytree(ArtifactStore.from_settings().backend.root / "model", store_dir / "model")
            staged = stage_index(big.index, big.doc_map, Path(tmp) / "staged", terms=big.terms)
            publish_index(ArtifactStore.from_settings(Settings(storage_url=str(store_dir))), args.dataset, staged, big.manifest)
            shutil.rmtree(staged)
            sections += corpus_section(f"{large.index.ntotal:,} documents ({args.scale} copies; built in "
                                       f"{build_s:.0f} s)", large, pairs, {**env, "EBR_STORAGE_URL": str(store_dir)},
                                       args.dataset, args)
    text = "\n".join([
        "# Online query path: retriever, bare pipeline, FAISS, posting lists, HTTP service", "",
        f"Command: `python -m bench.online_path {' '.join(shlex.quote(a) for a in (argv or sys.argv[1:]))}` "
        f"({(time.perf_counter() - started) / 60:.1f} min); {machine()}.", "",
        __doc__.split("\n\n", 2)[2].strip(), "",
        f"A fresh process: `Retriever.load` {load_s:.1f} s (imports included); a whole `ebr search` {search_s:.1f} s.",
        "", *sections])
    print(text)
    write(Path(args.output), text)


if __name__ == "__main__":
    main()
