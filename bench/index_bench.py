"""ANN index benchmark: our ``EmbeddingIndex`` against the plain FAISS calls, and recall against cost.

For each corpus size (clustered synthetic unit vectors, d=64: a Gaussian mixture with one cluster per
20 documents and noise as large as the center, so that neighbours spread over many IVF lists, and the
data gets harder as the clusters get denser), in one run:
- build time (train + add) of ``EmbeddingIndex.build`` and of the same FAISS objects built by hand with the
  same parameters, training sample and seeds (both with the BLAS distance routing the build uses);
- single-query top-10 latency p50/p99 and batch QPS, ours vs plain (queries pre-normalized for plain FAISS,
  so our normalization and checks count as overhead); the goal is an overhead ratio within 1.1x;
- recall@10 against exact search for a range of nprobe, with and without refine, and the radius mode's
  recall (share of the documents with cosine >= radius that are returned);
- for the first size, IVF-PQ training time with FAISS's default distance routing vs the BLAS routing,
  on a 20k and on the full training sample.

    python -m bench.index_bench                              # quick: 100k documents
    python -m bench.index_bench --sizes 100000,1000000       # a few minutes
    python -m bench.index_bench --threads 1                  # on a shared machine: OpenMP threads that
                                                             # wait for a busy core wreck single-query latency

Prints markdown tables and writes them to ``bench/results/index_bench.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np
from tqdm.auto import tqdm

from ann.index import EmbeddingIndex, IndexConfig, blas_distances, exact_search

RESULTS = Path(__file__).resolve().parent / "results" / "index_bench.md"
DIM = 64
DOCS_PER_CLUSTER = 20
NOISE = 0.8  # noise norm relative to the unit cluster center: neighbours spread over several IVF lists
K = 10
NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True)
class BenchConfig:
    sizes: tuple[int, ...] = (100_000,)
    queries: int = 1000  # batch and recall queries
    single: int = 2000  # single-query latency samples (per side)
    radius_queries: int = 200
    threads: int | None = None  # FAISS OpenMP threads (None: FAISS default)
    seed: int = 0


def mixture(n: int, n_clusters: int, seed: int, centers_seed: int = 12345) -> np.ndarray:
    """Gaussian mixture around unit centers; queries drawn with another seed share the centers."""
    centers = np.random.default_rng(centers_seed).standard_normal((n_clusters, DIM), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    out = np.empty((n, DIM), np.float32)
    for start in range(0, n, 200_000):
        stop = min(n, start + 200_000)
        lab = rng.integers(0, n_clusters, stop - start)
        out[start:stop] = centers[lab] + NOISE / math.sqrt(DIM) * rng.standard_normal((stop - start, DIM), dtype=np.float32)
    return out


def unit(x: np.ndarray) -> np.ndarray:
    out = x.copy()
    faiss.normalize_L2(out)
    return out


def plain_build(docs: np.ndarray, ids: np.ndarray, cfg: IndexConfig) -> tuple[faiss.Index, faiss.IndexIVFPQ, float, float]:
    """The same index with plain FAISS calls: normalize, train IVF-PQ on the same sample, wrap, add."""
    t0 = time.perf_counter()
    xb = unit(docs)
    quantizer = faiss.IndexFlatIP(DIM)
    ivf = faiss.IndexIVFPQ(quantizer, DIM, cfg.nlist, cfg.pq_m, cfg.nbits, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.seed = cfg.seed
    ivf.pq.cp.seed = cfg.seed
    n = len(docs)
    rng = np.random.default_rng(cfg.seed)
    sample = np.sort(rng.choice(n, size=cfg.train_size, replace=False)) if cfg.train_size < n else slice(None)
    with blas_distances():
        ivf.train(xb[sample])
    t_train = time.perf_counter() - t0
    index = faiss.IndexIDMap2(faiss.IndexRefineFlat(ivf) if cfg.refine else ivf)
    with blas_distances():
        index.add_with_ids(xb, ids)
    return index, ivf, t_train, time.perf_counter() - t0


def plain_params(cfg: IndexConfig, nprobe: int):
    ivf = faiss.SearchParametersIVF(nprobe=nprobe)
    if not cfg.refine:
        return ivf
    return faiss.IndexRefineSearchParameters(k_factor=cfg.refine_k_factor, base_index_params=ivf)


def latency(ours: EmbeddingIndex, plain: faiss.Index, q: np.ndarray, qn: np.ndarray, cfg: IndexConfig, reps: int):
    """Single-query latencies in ms. Ours and plain run on the same query back to back, in alternating
    order, so that both see the same machine load and neither always gets the lists the other warmed."""
    params = plain_params(cfg, cfg.nprobe)
    a, b = [], []
    for i in range(reps):
        j = i % len(q)
        for side in ((0, 1) if i % 2 == 0 else (1, 0)):
            t = time.perf_counter_ns()
            if side == 0:
                ours.search(q[j : j + 1], K)
            else:
                plain.search(qn[j : j + 1], K, params=params)
            (a if side == 0 else b).append(time.perf_counter_ns() - t)
    return np.array(a) / 1e6, np.array(b) / 1e6


def batch_qps(fn_ours, fn_plain, nq: int, reps: int = 7) -> tuple[float, float]:
    """Batch throughput, best of ``reps``, the two sides alternating."""
    best = [math.inf, math.inf]
    for r in range(reps):
        for side in ((0, 1) if r % 2 == 0 else (1, 0)):
            t = time.perf_counter()
            (fn_ours if side == 0 else fn_plain)()
            best[side] = min(best[side], time.perf_counter() - t)
    return nq / best[0], nq / best[1]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f[f >= 0], t)) / len(t) for f, t in zip(found, truth)]))


def training_routing(docs: np.ndarray, cfg: IndexConfig, reps: int = 2) -> list[tuple[int, float, float]]:
    """IVF-PQ training time with FAISS's default distance routing vs the BLAS routing the build uses,
    on a small (20k) and on the full training sample; alternating, best of ``reps``."""
    rows = []
    for size in sorted({min(20_000, cfg.train_size), cfg.train_size}):
        rng = np.random.default_rng(cfg.seed)
        sample = unit(docs[np.sort(rng.choice(len(docs), size=size, replace=False))])
        nlist = min(cfg.nlist, size // 39)
        best = {False: math.inf, True: math.inf}
        for _ in range(reps):
            for blas in (False, True):
                ivf = faiss.IndexIVFPQ(faiss.IndexFlatIP(DIM), DIM, nlist, cfg.pq_m, cfg.nbits, faiss.METRIC_INNER_PRODUCT)
                t = time.perf_counter()
                with blas_distances() if blas else contextlib.nullcontext():
                    ivf.train(sample)
                best[blas] = min(best[blas], time.perf_counter() - t)
        rows.append((size, nlist, best[False], best[True]))
    return rows


def run_size(n: int, bc: BenchConfig, with_routing: bool) -> dict:
    n_clusters = max(100, n // DOCS_PER_CLUSTER)
    docs = mixture(n, n_clusters, seed=bc.seed)
    q = mixture(bc.queries, n_clusters, seed=bc.seed + 1)
    qn = unit(q)
    ids = (np.random.default_rng(bc.seed).permutation(n).astype(np.int64) * 7919 + 10**12)
    cfg = IndexConfig.for_corpus(n, DIM)
    res: dict = {"n": n, "clusters": n_clusters, "cfg": cfg}

    t = time.perf_counter()
    ours = EmbeddingIndex.build(docs, ids, cfg)
    res["build_ours"] = time.perf_counter() - t
    res["train_ours"] = ours.metadata["build"]["train_seconds"]
    plain, plain_ivf, res["train_plain"], res["build_plain"] = plain_build(docs, ids, cfg)
    res["stats"] = ours.stats()
    with tempfile.TemporaryDirectory() as tmp:
        ours.save(Path(tmp) / "idx")
        res["disk_bytes"] = sum(p.stat().st_size for p in (Path(tmp) / "idx").iterdir())

    # Both give the same answers (same training sample and seeds).
    _, a = ours.search(q, K)
    _, b = plain.search(qn, K, params=plain_params(cfg, cfg.nprobe))
    res["same_results"] = float(np.mean(a == b))

    lat_ours, lat_plain = latency(ours, plain, q, qn, cfg, bc.single)
    res["p50"] = (np.percentile(lat_ours, 50), np.percentile(lat_plain, 50))
    res["p99"] = (np.percentile(lat_ours, 99), np.percentile(lat_plain, 99))
    params = plain_params(cfg, cfg.nprobe)
    res["qps"] = batch_qps(lambda: ours.search(q, K), lambda: plain.search(qn, K, params=params), len(q))

    t = time.perf_counter()
    exact_scores, truth = exact_search(docs, q, K, ids)
    res["exact_qps"] = len(q) / (time.perf_counter() - t)
    rows = []
    for nprobe in tqdm([p for p in NPROBES if p <= cfg.nlist], desc=f"recall vs nprobe (n={n})"):
        t = time.perf_counter()
        _, found = ours.search(q, K, nprobe=nprobe)
        dt = time.perf_counter() - t
        plain_ivf.nprobe = nprobe
        _, pos = plain_ivf.search(qn, K)  # PQ scores alone, no refine
        pq_found = np.where(pos >= 0, ids[np.maximum(pos, 0)], -1)
        rows.append((nprobe, recall(pq_found, truth), recall(found, truth), 1e3 * dt / len(q)))
    res["recall"] = rows

    # Radius mode: radius = median 10th-best exact cosine, so about 10 documents per query qualify.
    nr = min(bc.radius_queries, len(q))
    radius = float(np.median(exact_scores[:nr, K - 1]))
    want = []
    xb = unit(docs)
    for start in range(0, nr, 50):
        sims = qn[start : start + 50] @ xb.T
        want += [set(ids[np.flatnonzero(s >= radius)].tolist()) for s in sims]
    del xb
    total = sum(len(w) for w in want)
    rrows = []
    for nprobe in sorted({p for p in (4, 16, cfg.nprobe, 64, 128, 256) if p <= cfg.nlist}):
        t = time.perf_counter()
        got = ours.range_search(q[:nr], radius, nprobe=nprobe)
        dt = time.perf_counter() - t
        hit = sum(len(w & set(g.tolist())) for w, (g, _) in zip(want, got))
        rrows.append((nprobe, hit / max(total, 1), sum(len(g) for g, _ in got) / nr, 1e3 * dt / nr))
    res["radius"] = (radius, total / nr, rrows)
    if with_routing:
        res["routing"] = training_routing(docs, cfg)
    return res


def render(results: list[dict], bc: BenchConfig, argv: list[str]) -> str:
    threads = faiss.omp_get_max_threads()
    out = [
        "# ANN index benchmark",
        "",
        f"`python -m bench.index_bench {' '.join(argv)}`".replace("  ", " ").replace(" `", "`"),
        "",
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; faiss {faiss.__version__}, {threads} OpenMP thread(s), "
        f"{os.cpu_count()} CPU(s), {platform.processor() or platform.machine()}, Python {platform.python_version()}. "
        f"Clustered synthetic unit vectors (d={DIM}, one Gaussian cluster per {DOCS_PER_CLUSTER} documents, "
        f"noise {NOISE}); {bc.queries} queries from the same mixture; ids are large int64. "
        "Config from `IndexConfig.for_corpus` (refine on). Timings are wall clock on a shared machine.",
        "",
        "## Ours vs plain FAISS (same parameters, same run)",
        "",
        "| docs | nlist | m | nprobe | build ours (s) | build plain (s) | ratio | train ours / plain (s) "
        "| build minus train: ratio "
        "| p50 ours (ms) | p50 plain (ms) | ratio | p99 ours (ms) | p99 plain (ms) | batch QPS ours "
        "| batch QPS plain | ratio | same top-10 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        c = r["cfg"]
        out.append(
            f"| {r['n']:,} | {c.nlist} | {c.pq_m} | {c.nprobe} | {r['build_ours']:.1f} | {r['build_plain']:.1f} "
            f"| {r['build_ours'] / r['build_plain']:.2f} | {r['train_ours']:.1f} / {r['train_plain']:.1f} "
            f"| {(r['build_ours'] - r['train_ours']) / (r['build_plain'] - r['train_plain']):.2f} "
            f"| {r['p50'][0]:.3f} | {r['p50'][1]:.3f} "
            f"| {r['p50'][0] / r['p50'][1]:.2f} | {r['p99'][0]:.3f} | {r['p99'][1]:.3f} | {r['qps'][0]:,.0f} "
            f"| {r['qps'][1]:,.0f} | {r['qps'][1] / r['qps'][0]:.2f} | {100 * r['same_results']:.1f}% |"
        )
    out += [
        "",
        "Ratios are ours / plain for times and plain / ours for QPS (1.00 = no overhead; goal <= 1.10). "
        "Training is the same work on both sides (same sample, seeds and parameters), so its difference is "
        "machine noise; 'build minus train' isolates checks, normalization and adding.",
        "",
        "## Index size",
        "",
        "| docs | code bytes/vec | stored bytes/vec | memory estimate (MB) | on disk (MB) | list imbalance |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        s = r["stats"]
        out.append(
            f"| {r['n']:,} | {s.code_bytes_per_vector:g} | {s.bytes_per_vector:g} | {s.memory_bytes / 1e6:.1f} "
            f"| {r['disk_bytes'] / 1e6:.1f} | {s.imbalance_factor:.2f} |"
        )
    for r in results:
        out += [
            "",
            f"## Recall@{K} vs nprobe, {r['n']:,} docs (exact search: {r['exact_qps']:,.0f} queries/s)",
            "",
            f"| nprobe | recall@{K} PQ only | recall@{K} with refine | ms/query (batch, refine) |",
            "|---:|---:|---:|---:|",
        ]
        out += [f"| {p} | {a:.3f} | {b:.3f} | {ms:.3f} |" for p, a, b, ms in r["recall"]]
        radius, per_q, rows = r["radius"]
        out += [
            "",
            f"Radius mode, {r['n']:,} docs: cosine >= {radius:.3f} ({per_q:.1f} qualifying docs per query on "
            f"average; refine re-scores PQ candidates down to radius - {r['cfg'].range_slack}):",
            "",
            "| nprobe | radius recall | results/query | ms/query |",
            "|---:|---:|---:|---:|",
        ]
        out += [f"| {p} | {rec:.3f} | {cnt:.1f} | {ms:.3f} |" for p, rec, cnt, ms in rows]
    for r in results:
        if "routing" in r:
            out += [
                "",
                f"## IVF-PQ training: FAISS's default distance routing vs BLAS ({r['n']:,} docs, best of 2)",
                "",
                "| train sample | nlist | FAISS default: BLAS from 128k queries (s) | BLAS from 20 queries, as the build does (s) | speed-up |",
                "|---:|---:|---:|---:|---:|",
            ]
            out += [f"| {size:,} | {nl} | {d:.1f} | {b:.1f} | {d / b:.1f}x |" for size, nl, d, b in r["routing"]]
    return "\n".join(out) + "\n"


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> str:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100000", help="comma-separated corpus sizes, e.g. 100000,1000000")
    ap.add_argument("--queries", type=int, default=BenchConfig.queries)
    ap.add_argument("--single", type=int, default=BenchConfig.single, help="single-query latency samples")
    ap.add_argument("--threads", type=int, default=None, help="FAISS OpenMP threads (default: FAISS's)")
    ap.add_argument("--no-routing", action="store_true", help="skip the training distance-routing comparison")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    sizes = tuple(int(s) for s in args.sizes.split(",") if s)
    if not sizes or min(sizes) < 20_000:
        ap.error("--sizes must list corpus sizes >= 20000 (smaller corpora get an exact flat index)")
    bc = BenchConfig(sizes=sizes, queries=args.queries, single=args.single, threads=args.threads)
    if bc.threads:
        faiss.omp_set_num_threads(bc.threads)
    results = [run_size(n, bc, with_routing=(i == 0 and not args.no_routing)) for i, n in enumerate(sizes)]
    text = render(results, bc, argv)
    print(text)
    write_atomic(args.out, text)
    return text


if __name__ == "__main__":
    main()
