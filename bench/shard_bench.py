"""Document shards against one index over the same corpus: build time, recall and per-query cost.

    python -m bench.shard_bench [--docs 1000000] [--shards 4] [--queries 500]

The corpus is the index benchmark's clustered synthetic vectors (d=64, one Gaussian cluster per 20
documents). One IVF-PQ index over all documents (``IndexConfig.for_corpus``) is compared with ``--shards``
indexes over ``id % shards``, each sized for its own part, searched by fan-out and merge
(``bench.shards``). Latency is reported for a sequential fan-out (one process, as here) and for a parallel
one (the slowest shard plus the merge, what shards on separate cores or machines cost). Recall@10 is against
exact search over the whole corpus, at each index's default nprobe and at a common nprobe per shard.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

import numpy as np

from ann.index import EmbeddingIndex, IndexConfig, exact_search
from bench.index_bench import DOCS_PER_CLUSTER, mixture, unit
from bench.retrieval_quality import RESULTS, machine, write
from bench.shards import ShardedIndex, merge_top_k

K = 10


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f[f >= 0], t)) / len(t) for f, t in zip(found, truth)]))


def per_query_ms(fn, queries: np.ndarray) -> np.ndarray:
    out = np.empty(len(queries))
    for j in range(len(queries)):
        t = time.perf_counter()
        fn(queries[j : j + 1])
        out[j] = (time.perf_counter() - t) * 1e3
    return out


def main(argv: list[str] | None = None) -> None:
    import faiss

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--output", default=str(RESULTS / "shard_bench.md"))
    args = ap.parse_args(argv)
    faiss.omp_set_num_threads(1)
    started = time.perf_counter()

    docs = unit(mixture(args.docs, args.docs // DOCS_PER_CLUSTER, seed=0))
    ids = np.arange(args.docs, dtype=np.int64)
    queries = unit(mixture(args.queries, args.docs // DOCS_PER_CLUSTER, seed=1))
    _, truth = exact_search(docs, queries, K, ids)

    t = time.perf_counter()
    one = EmbeddingIndex.build(docs, ids, IndexConfig.for_corpus(args.docs, docs.shape[1]), progress=False)
    one_build = time.perf_counter() - t
    t = time.perf_counter()
    sharded = ShardedIndex.build(docs, ids, args.shards)
    shard_build = time.perf_counter() - t

    rows = []
    for label, nprobe in (("default nprobe of each index", None), ("nprobe of the single index on every shard",
                                                                   one.config.nprobe)):
        _, found_one = one.search(queries, K)
        _, found_sh = sharded.search(queries, K, nprobe=nprobe)
        one_ms = per_query_ms(lambda q: one.search(q, K), queries)
        shard_ms = np.stack([per_query_ms(lambda q, s=s: s.search(q, K, nprobe=nprobe), queries)
                             for s in sharded.shards])
        parts = [s.search(queries[:1], K, nprobe=nprobe) for s in sharded.shards]
        merge_ms = per_query_ms(lambda q: merge_top_k([p[0] for p in parts], [p[1] for p in parts], K), queries)
        rows.append((label, recall(found_one, truth), recall(found_sh, truth), one_ms,
                     shard_ms.sum(0) + merge_ms, shard_ms.max(0) + merge_ms,
                     [s.config.nprobe if nprobe is None else nprobe for s in sharded.shards]))

    p = lambda x, q: float(np.percentile(x, q))  # noqa: E731
    lines = [
        "# Document shards vs one index", "",
        f"Command: `python -m bench.shard_bench {' '.join(shlex.quote(a) for a in (argv or sys.argv[1:]))}` "
        f"({(time.perf_counter() - started) / 60:.1f} min); {machine()}, 1 FAISS thread.", "",
        __doc__.split("\n\n", 2)[2].strip(), "",
        f"{args.docs:,} documents; one index: nlist {one.config.nlist}, nprobe {one.config.nprobe}, built in "
        f"{one_build:.0f} s; {len(sharded.shards)} shards of ~{args.docs // len(sharded.shards):,}: nlist "
        f"{sharded.shards[0].config.nlist}, default nprobe {sharded.shards[0].config.nprobe}, built in "
        f"{shard_build:.0f} s (one after another).", "",
        "| probes | recall@10 one index | recall@10 shards | one index p50 / p99 ms | shards sequential p50 / p99 ms "
        "| shards parallel p50 / p99 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, r1, rs, one_ms, seq, par, probes in rows:
        lines.append(f"| {label} ({probes[0] or 'exact'} per shard) | {r1:.3f} | {rs:.3f} | {p(one_ms, 50):.2f} / {p(one_ms, 99):.2f} "
                     f"| {p(seq, 50):.2f} / {p(seq, 99):.2f} | {p(par, 50):.2f} / {p(par, 99):.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    write(__import__("pathlib").Path(args.output), text)


if __name__ == "__main__":
    main()
