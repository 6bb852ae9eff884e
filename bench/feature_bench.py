"""Feature store and community detection benchmark.

Measures, in one run:
- materialization throughput (rows/s) from the DuckDB offline sources into the SQLite online store;
- online lookup latency p50/p99 for 1 and for 1,000 searchers, through Feast (``FeatureRepo.online_features``
  and the raw ``get_online_features().to_dict()``) and through a direct read of the same keys from the online
  store's SQLite file (SELECT + protobuf decode: the floor that Feast's own overhead sits on);
- community detection (igraph Leiden and Louvain) on random planted-community graphs, and the whole social
  cluster pipeline of ``features.compute`` on the same graph (graph from string ids, detection, labels,
  top-k lists).

    python -m bench.feature_bench                          # 100k-row store, graphs of 100k and 1M nodes
    python -m bench.feature_bench --sizes 100000 --rows 20000   # quick

Prints markdown tables and writes them to ``bench/results/feature_bench.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from features.compute import (
    CREATED_TIMESTAMP,
    DOCUMENT_COLUMNS,
    EVENT_TIMESTAMP,
    FEATURE_TS,
    SEARCHER_COLUMNS,
    as_of_for_day,
    top_k_lists,
)
from features.social import (
    CommunityConfig,
    cluster_labels,
    detect_communities,
    make_graph,
    neighbour_cluster_weights,
)
from features.store import FeatureRepo

RESULTS = Path(__file__).resolve().parent / "results" / "feature_bench.md"
DAY = date(2024, 1, 1)


@dataclass(frozen=True)
class BenchConfig:
    rows: int = 100_000  # searchers in the store (documents: rows // 5)
    sizes: tuple[int, ...] = (100_000, 1_000_000)
    edges_per_node: int = 10
    community_size: int = 100
    algorithms: tuple[str, ...] = ("leiden", "multilevel")
    repeats_single: int = 300
    repeats_batch: int = 30
    batch: int = 1000
    seed: int = 0


# --------------------------------------------------------------------------- data


def random_features(n_searchers: int, n_docs: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Feature frames shaped like compute_features' output (random values, one snapshot)."""
    rng = np.random.default_rng(seed)
    ts = pd.Timestamp(as_of_for_day(DAY))
    cities = np.array([f"city{i}" for i in range(500)], dtype=object)
    clusters = np.array([f"c_s{i:07d}" for i in range(5000)], dtype=object)

    def lists(n: int, vocab: np.ndarray, k: int):
        labs = [vocab[rng.choice(len(vocab), k, replace=False)].tolist() for _ in range(n)]
        w = rng.random((n, k))
        w = (w / w.sum(axis=1, keepdims=True)).tolist()
        return labs, w

    s = pd.DataFrame({"searcher_id": [f"s{i:07d}" for i in range(n_searchers)]})
    s["city"] = cities[rng.integers(0, len(cities), n_searchers)]
    s["region"], s["country"], s["language"] = "region", "US", "en"
    s["clusters"], s["clusters_weights"] = lists(n_searchers, clusters, 3)
    s["friend_count"] = rng.integers(0, 200, n_searchers)
    d = pd.DataFrame({"doc_id": [f"d{i:07d}" for i in range(n_docs)]})
    d["title"] = [f"group number {i}" for i in range(n_docs)]
    d["body"] = "a group about things people like to do together"
    d["doc_type"], d["city"], d["region"], d["country"] = "group", cities[rng.integers(0, 500, n_docs)], "r", "US"
    d["member_cities"], d["member_cities_weights"] = lists(n_docs, cities, 4)
    d["member_clusters"], d["member_clusters_weights"] = lists(n_docs, clusters, 4)
    d["member_count"] = rng.integers(1, 1000, n_docs)
    d["active_members_30d"] = d["member_count"] // 2
    d["last_active_at"] = ts - pd.Timedelta(hours=1)
    for df in (s, d):
        df[FEATURE_TS] = df[EVENT_TIMESTAMP] = df[CREATED_TIMESTAMP] = ts
    return s[list(SEARCHER_COLUMNS)], d[list(DOCUMENT_COLUMNS)]


def planted_graph(n: int, edges_per_node: int, community_size: int, seed: int):
    """n nodes in n / community_size planted communities; 90% of the ~n * edges_per_node edges inside."""
    rng = np.random.default_rng(seed)
    k = max(n // community_size, 1)
    comm = rng.integers(0, k, n)
    order = np.argsort(comm, kind="stable")
    sizes = np.bincount(comm, minlength=k)
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    m = n * edges_per_node
    u = rng.integers(0, n, m)
    v = rng.integers(0, n, m)
    intra = rng.random(m) < 0.9
    cu = comm[u]
    pos = starts[cu] + (rng.random(m) * sizes[cu]).astype(np.int64)
    v[intra] = order[pos[intra]]
    return u, v, comm


# --------------------------------------------------------------------------- measurements


def percentiles(samples: list[float]) -> tuple[float, float]:
    a = np.asarray(samples) * 1000.0
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def bench_store(cfg: BenchConfig, workdir: Path) -> tuple[list[str], list[str]]:
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value
    from feast.type_map import feast_value_type_to_python_type

    s, d = random_features(cfg.rows, max(cfg.rows // 5, 1), cfg.seed)
    repo = FeatureRepo(workdir / "store")
    t = time.perf_counter()
    repo.write_sources(s, d, DAY)
    write_s = time.perf_counter() - t
    repo.apply()
    start = end = as_of_for_day(DAY)
    mat_rows = []
    for view, n in (("searcher_features", len(s)), ("document_features", len(d))):
        t = time.perf_counter()
        repo.store.materialize(start, end, feature_views=[view])
        sec = time.perf_counter() - t
        mat_rows.append(f"| {view} | {n:,} | {sec:.2f} | {n / sec:,.0f} |")

    rng = np.random.default_rng(cfg.seed + 1)
    ids = s["searcher_id"].to_numpy()
    service = repo.store.get_feature_service("searcher_serving_v1")
    names = repo.feature_names("searcher", role="serving")
    table = f"{repo.project}_searcher_features"
    conn = sqlite3.connect(repo.online_store_path)
    version = repo.store.config.entity_key_serialization_version

    def direct(keys: list[str]) -> dict[str, dict]:
        blobs = [
            serialize_entity_key(EntityKey(join_keys=["searcher_id"], entity_values=[Value(string_val=k)]),
                                 entity_key_serialization_version=version)
            for k in keys
        ]
        by_blob = dict(zip(blobs, keys))
        out: dict[str, dict] = {k: {} for k in keys}
        q = f"SELECT entity_key, feature_name, value FROM {table} WHERE entity_key IN ({','.join('?' * len(blobs))})"
        for blob, feature, value in conn.execute(q, blobs):
            out[by_blob[blob]][feature] = feast_value_type_to_python_type(Value.FromString(value))
        return out

    ways = {
        "Feast: FeatureRepo.online_features (DataFrame)": lambda k: repo.online_features(k, "searcher"),
        "Feast: get_online_features().to_dict()": lambda k: repo.store.get_online_features(
            features=service, entity_rows=[{"searcher_id": x} for x in k]).to_dict(),
        "direct SQLite read + protobuf decode": direct,
    }
    # the same keys give the same values both ways
    probe = ids[:5].tolist()
    via_feast = repo.online_features(probe, "searcher").set_index("searcher_id")
    via_sql = direct(probe)
    for k in probe:
        assert via_sql[k]["friend_count"] == via_feast.loc[k, "friend_count"], k
        assert set(via_sql[k]) >= set(names) - {"searcher_id"}, via_sql[k].keys()

    lat_rows = []
    for batch, repeats in ((1, cfg.repeats_single), (cfg.batch, cfg.repeats_batch)):
        for name, fn in ways.items():
            fn(rng.choice(ids, batch, replace=False).tolist())  # warm up
            samples = []
            for _ in tqdm(range(repeats), desc=f"online lookups x{batch}: {name[:24]}", leave=False):
                keys = rng.choice(ids, batch, replace=False).tolist()
                t = time.perf_counter()
                fn(keys)
                samples.append(time.perf_counter() - t)
            p50, p99 = percentiles(samples)
            lat_rows.append(f"| {batch:,} | {name} | {repeats} | {p50:.2f} | {p99:.2f} |")
    conn.close()
    mat = [
        f"Offline sources: {len(s):,} searcher + {len(d):,} document rows, one daily snapshot "
        f"(parquet write {write_s:.2f} s).",
        "",
        "| feature view | rows | materialize (s) | rows/s |",
        "|---|---:|---:|---:|",
        *mat_rows,
    ]
    lat = [
        f"Online store: SQLite, {len(s):,} searchers; random keys; latency in ms.",
        "",
        "| keys per lookup | path | lookups | p50 (ms) | p99 (ms) |",
        "|---:|---|---:|---:|---:|",
        *lat_rows,
    ]
    return mat, lat


def bench_communities(cfg: BenchConfig) -> list[str]:
    import igraph as ig

    rows = []
    for n in cfg.sizes:
        u, v, truth = planted_graph(n, cfg.edges_per_node, cfg.community_size, cfg.seed)
        ids = np.array([f"s{i:07d}" for i in range(n)], dtype=object)  # zero-padded: sorted order = index order
        t = time.perf_counter()
        graph = make_graph(ids, ids[u], ids[v])
        build = time.perf_counter() - t
        for algorithm in cfg.algorithms:
            config = CommunityConfig(algorithm=algorithm, seed=cfg.seed)
            t = time.perf_counter()
            membership = detect_communities(graph, config)
            detect = time.perf_counter() - t
            t = time.perf_counter()
            labels = cluster_labels(graph.ids, membership, config.min_cluster_size)
            weights = neighbour_cluster_weights(graph, labels, 0.5)
            top_k_lists(weights["node"].to_numpy(), weights["cluster"].to_numpy(), weights["weight"].to_numpy(),
                        8, pd.Index(np.arange(graph.n)))
            lists = time.perf_counter() - t
            nmi = ig.compare_communities(membership.tolist(), truth.tolist(), method="nmi")
            rows.append(
                f"| {n:,} | {len(graph.u):,} | {algorithm} | {build:.1f} | {detect:.1f} | {lists:.1f} | "
                f"{build + detect + lists:.1f} | {len(set(membership.tolist())):,} | {len(set(truth.tolist())):,} "
                f"| {nmi:.3f} |"
            )
            print(rows[-1], flush=True)
    return [
        f"Planted-community graphs: communities of about {cfg.community_size} nodes, about "
        f"{cfg.edges_per_node} edge draws per node (90% inside), seed {cfg.seed}. "
        "Graph build = string ids to a deduplicated igraph edge list; lists = labels + neighbour mix + top-8.",
        "",
        "| nodes | edges | algorithm | graph build (s) | detection (s) | labels + lists (s) | pipeline (s) "
        "| communities found | planted | NMI vs planted |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
    ]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=BenchConfig.rows, help="searchers in the store benchmark")
    p.add_argument("--sizes", default=",".join(map(str, BenchConfig.sizes)),
                   help="comma-separated graph sizes (nodes) for community detection")
    p.add_argument("--algorithms", default=",".join(BenchConfig.algorithms), help="leiden,multilevel")
    p.add_argument("--skip-store", action="store_true")
    p.add_argument("--skip-communities", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    algorithms = tuple(x for x in a.algorithms.split(",") if x)
    for x in algorithms:
        if x not in ("leiden", "multilevel"):
            p.error(f"--algorithms must be among leiden, multilevel; got {x!r}")
    cfg = BenchConfig(rows=a.rows, sizes=tuple(int(x) for x in a.sizes.split(",") if x), algorithms=algorithms)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    out = [
        "# Feature benchmark",
        "",
        f"Python {platform.python_version()}, {os.cpu_count()} cores, load average {load:.1f} at start "
        "(the machine may be shared: compare rows of one run, not runs).",
        "",
    ]
    if not a.skip_store:
        with tempfile.TemporaryDirectory(prefix="feature-bench-") as tmp:
            mat, lat = bench_store(cfg, Path(tmp))
        out += ["## Materialization (offline DuckDB -> online SQLite)", "", *mat, "", "## Online lookups", "", *lat, ""]
        print("\n".join(mat + [""] + lat), flush=True)
    if not a.skip_communities:
        com = bench_communities(cfg)
        out += ["## Community detection", "", *com, ""]
    text = "\n".join(out)
    print(text)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = a.out.with_name(f".{a.out.name}.tmp")
    tmp_out.write_text(text)
    os.replace(tmp_out, a.out)


if __name__ == "__main__":
    main()
