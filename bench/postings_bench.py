"""Posting lists at 1M documents: Roaring bitmaps (pyroaring, what serving.terms uses) vs Python sets vs
sorted numpy arrays, side by side in one run.

Terms follow a Zipf distribution over the documents (a few terms in half the corpus, like ``type:`` or
``country:``; most in a handful of documents, like ``text:`` words). Measured: building the posting lists
from (term, position) pairs, their memory, and AND / OR of two lists of given sizes (median of repeats).

    python -m bench.postings_bench --documents 1000000
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from array import array

import numpy as np
from pyroaring import BitMap

from bench.retrieval_quality import RESULTS, machine, write


def timed(fn, repeats: int = 7) -> float:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return float(np.median(out))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--documents", type=int, default=1_000_000)
    p.add_argument("--terms-per-doc", type=int, default=12)
    args = p.parse_args(argv)
    n = args.documents
    rng = np.random.default_rng(0)
    sizes = (1_000, 10_000, 100_000, 500_000)
    lists = {s: np.sort(rng.choice(n, size=s, replace=False)).astype(np.uint32) for s in sizes}

    lines = ["| operation | sizes | pyroaring | Python set | numpy sorted arrays | pyroaring speed-up vs best other |",
             "|---|---|---:|---:|---:|---:|"]
    for a, b in ((1_000, 500_000), (10_000, 100_000), (100_000, 500_000), (500_000, 500_000)):
        la, lb = lists[a], lists[b] if a != b else np.sort(rng.choice(n, size=b, replace=False)).astype(np.uint32)
        ra, rb = BitMap(array("I", la.tobytes())), BitMap(array("I", lb.tobytes()))
        sa, sb = set(la.tolist()), set(lb.tolist())
        for op, fr, fs, fn in (
            ("AND", lambda: ra & rb, lambda: sa & sb, lambda: np.intersect1d(la, lb, assume_unique=True)),
            ("OR", lambda: ra | rb, lambda: sa | sb, lambda: np.union1d(la, lb)),
        ):
            tr, ts, tn = timed(fr), timed(fs, 3), timed(fn)
            lines.append(f"| {op} | {a:,} & {b:,} | {tr * 1e3:.3f} ms | {ts * 1e3:.3f} ms | {tn * 1e3:.3f} ms | "
                         f"{min(ts, tn) / tr:.0f}x |")
            print(lines[-1], flush=True)

    # Building a term index: n documents x terms_per_doc Zipf terms.
    total = n * args.terms_per_doc
    terms = (rng.zipf(1.3, size=total) % 200_000).astype(np.int64)
    pos = np.repeat(np.arange(n, dtype=np.uint32), args.terms_per_doc)
    t = time.perf_counter()
    order = np.lexsort((pos, terms))
    terms_s, pos_s = terms[order], pos[order]
    starts = np.flatnonzero(np.r_[True, terms_s[1:] != terms_s[:-1]])
    ends = np.r_[starts[1:], total]
    bitmaps = []
    for s, e in zip(starts, ends):
        bm = BitMap(array("I", pos_s[s:e].tobytes()))
        bm.run_optimize()
        bitmaps.append(bm)
    build = time.perf_counter() - t
    rb_bytes = sum(len(b.serialize()) for b in bitmaps)
    np_bytes = total * 4
    text = "\n".join([
        "# Posting lists: Roaring bitmaps vs Python sets vs numpy", "",
        f"Command: `python -m bench.postings_bench {' '.join(shlex.quote(a) for a in sys.argv[1:])}`; {machine()}.", "",
        f"{n:,} documents. Set operations on two posting lists of the given sizes, median time:", "", *lines, "",
        f"Building {len(bitmaps):,} posting lists from {total:,} (term, document) pairs ({args.terms_per_doc} Zipf "
        f"terms per document): {build:.1f} s; serialized {rb_bytes / 1e6:.1f} MB against {np_bytes / 1e6:.1f} MB as "
        "uint32 arrays.", ""])
    print(text)
    write(RESULTS / "postings_bench.md", text)


if __name__ == "__main__":
    main()
