"""Hybrid retrieval (section 4 of the paper): term-only, EBR-only and hybrid expressions on held-out queries.

For each test session the same expressions run through ``serving.engine`` over the term index and the
vector index of the test corpus (the IVF-PQ index the nightly builds where the corpus is large enough,
else exact), with the unified model trained as in ``retrieval_quality`` (temperature chosen on validation):

- term only:           (and (term text:w1) ... )                         the Boolean engine alone
- EBR only:            (nn m :k 100)
- hybrid:              (or (and text...) (nn m :k 100))
- hybrid + scope:      (and (or location/cluster terms) (or (and text...) (nn m :k 100)))   the default
Each retrieved set is ranked by cosine to the query embedding (the score handed to later stages) and
scored with recall@10/100 against the clicked documents: overall, on sessions whose query words all occur
in the clicked document's text ("text matches") and on the others (typos, dropped or extra words). Latency
per query through the engine is reported next to a bare FAISS search of the same index.

    python -m bench.hybrid_retrieval                     # the default synthetic world and SciFact
    python -m bench.hybrid_retrieval --datasets synthetic --quick

Writes ``bench/results/hybrid_retrieval.md``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ann.index import EmbeddingIndex, IndexConfig
from bench.common import prepare_source
from bench.comparison import variant_config
from bench.query_selection import without_nn
from bench.retrieval_quality import MODEL_GRID, RESULTS, base_config, load, machine, write
from models.evaluate import ranking_metrics, session_targets
from serving.engine import Engine
from serving.hybrid import HybridConfig, default_expression
from serving.query import NN
from serving.terms import TermIndex, document_terms, tokens

KEY = "m"


def command() -> str:
    return "python -m bench.hybrid_retrieval " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def expressions(text: str, searcher: dict, k: int) -> dict:
    """The compared expressions of one query: the default builder with and without its scope, its text
    branch alone (None for a query without words) and its nn branch alone."""
    hybrid = default_expression(text, searcher, KEY, HybridConfig(scope=(), nn_k=k))
    return {
        "term only": without_nn(hybrid),
        "EBR only": NN(KEY, k=k),
        "hybrid": hybrid,
        "hybrid + scope (default)": default_expression(text, searcher, KEY, HybridConfig(nn_k=k)),
    }


def searcher_row(row: pd.Series) -> dict:
    return {c[len("searcher_"):]: row[c] for c in row.index if c.startswith("searcher_")}


def run(name: str, args) -> tuple[str, dict]:
    from models.train import train

    prep = prepare_source(name, load(name, args.quick), args.max_snapshots)
    valid = prep.parts["valid"] if len(prep.parts["valid"]) else None
    tower_train, rank_examples = prep.parts["train"], valid
    if valid is None:  # the second stage needs sessions the towers did not train on: 20% of the training ones
        from bench.peers import holdout_sessions

        tower_train, rank_examples = holdout_sessions(prep.parts["train"], 0.2, seed=0)
    base = base_config(args, len(tower_train))
    best = None
    with tempfile.TemporaryDirectory(prefix="ebr-hybrid-") as tmp:
        for i, setting in enumerate(MODEL_GRID if valid is not None else MODEL_GRID[:1]):
            r = train(tower_train, valid, prep.corpus, variant_config(base, setting), Path(tmp) / str(i),
                      resume=False)
            if best is None or (r.best_metric or 0) > (best.best_metric or 0):
                best = r
    model = best.model
    index_docs = prep.index.reset_index(drop=True)
    vecs = np.ascontiguousarray(model.embed_documents(index_docs), dtype=np.float32)
    cfg = IndexConfig(kind="auto")
    index = EmbeddingIndex.build(vecs, np.arange(len(vecs), dtype=np.int64), cfg, progress=False)
    t = time.perf_counter()
    terms = TermIndex.build(index_docs)
    term_seconds = time.perf_counter() - t
    engine = Engine(terms, index, {KEY})

    sessions = session_targets(prep.parts["test"], args.max_sessions, 0, prep.qrels)
    q = model.embed_queries(sessions.queries)
    doc_ids = index_docs["doc_id"].astype(str).to_numpy()
    row_of = pd.Series(np.arange(len(doc_ids)), index=doc_ids)
    doc_terms = document_terms(index_docs).groupby("position")["term"].agg(set)
    texts = sessions.queries["query"].fillna("").astype(str).to_numpy()
    matches = np.array([bool(tokens(t)) and any(
        {f"text:{w}" for w in tokens(t)} <= doc_terms.get(row_of.get(d, -1), set()) for d in targets)
        for t, targets in zip(texts, sessions.targets)])
    k = 100
    tops = {v: np.full((len(texts), k), -1, np.int64) for v in ("term only", "EBR only", "hybrid",
                                                               "hybrid + scope (default)")}
    seconds = {v: [] for v in tops}
    matched = {v: [] for v in tops}
    for i, text in enumerate(texts):
        for v, expr in expressions(text, searcher_row(sessions.queries.iloc[i]), k).items():
            if expr is None:
                continue
            t = time.perf_counter()
            hits = engine.run(expr, q[i:i + 1], k)
            seconds[v].append(time.perf_counter() - t)
            tops[v][i, : len(hits.positions)] = hits.positions
            matched[v].append(hits.matched)
    t = time.perf_counter()
    for i in range(len(q)):
        index.search(q[i:i + 1], k)
    faiss_ms = (time.perf_counter() - t) / len(q) * 1e3

    def metrics(top, mask):
        from bench.rankers import subset_sessions

        return ranking_metrics(top[mask], doc_ids, subset_sessions(sessions, mask), (10, 100))

    lines = ["| expression | R@10 | R@100 | nDCG@10 | text matches R@10 / R@100 | others R@10 / R@100 | "
             "median matched | p50 ms | p99 ms |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    figures = {}
    for v, top in tops.items():
        a, m, o = metrics(top, np.ones(len(texts), bool)), metrics(top, matches), metrics(top, ~matches) \
            if (~matches).any() else None
        s = np.array(seconds[v]) * 1e3
        figures[v] = a
        lines.append(f"| {v} | {a['recall@10']:.4f} | {a['recall@100']:.4f} | {a['ndcg@10']:.4f} | "
                     f"{m['recall@10']:.4f} / {m['recall@100']:.4f} | "
                     + ("-" if o is None else f"{o['recall@10']:.4f} / {o['recall@100']:.4f}")
                     + f" | {np.median(matched[v]) if matched[v] else 0:,.0f} | {np.percentile(s, 50):.2f} | "
                     f"{np.percentile(s, 99):.2f} |")
    # The second stage: LightGBM lambdarank over the hybrid candidates, with and without the cosine.
    from bench.ranking import SecondStage, candidate_features

    def candidates(sess, vecs_q, limit):
        out = []
        for i, text in enumerate(sess.queries["query"].fillna("").astype(str).to_numpy()):
            hits = engine.run(expressions(text, {}, limit)["hybrid"], vecs_q[i:i + 1], limit)
            out.append((hits.positions, hits.scores))
        return out

    # The ranker learns from sessions the towers did not train on (validation; else training sessions): on
    # training sessions the cosine is optimistic, the towers having fit those very clicks.
    rank_source = "validation" if valid is not None else "held-out training"
    train_sessions = session_targets(rank_examples, args.rank_sessions, 1)
    q_train = model.embed_queries(train_sessions.queries)
    train_cands = candidates(train_sessions, q_train, k)
    test_cands = [(tops["hybrid"][i][tops["hybrid"][i] >= 0], None) for i in range(len(texts))]
    rank_lines = ["| second stage | R@10 | nDCG@10 | MRR |", "|---|---:|---:|---:|"]
    base = metrics(tops["hybrid"], np.ones(len(texts), bool))
    rank_lines.append(f"| none (cosine order) | {base['recall@10']:.4f} | {base['ndcg@10']:.4f} | {base['mrr']:.4f} |")

    def feats(sess, i, pos, qv, emb):
        docs = index_docs.iloc[pos]
        cos = vecs[pos] @ qv
        return candidate_features(str(sess.queries["query"].iloc[i] or ""), searcher_row(sess.queries.iloc[i]), docs,
                                  cos, qv, vecs[pos], emb)

    for emb in ("none", "cosine", "hadamard", "raw"):
        t = time.perf_counter()
        X, y = [], []
        for i, (pos, _) in enumerate(train_cands):
            if len(pos) < 2:
                continue
            X.append(feats(train_sessions, i, pos, q_train[i], emb))
            y.append(np.isin(doc_ids[pos], train_sessions.targets[i]).astype(int))
        stage = SecondStage(emb).fit(X, y)
        top = np.full((len(texts), k), -1, np.int64)
        for i, (pos, _) in enumerate(test_cands):
            if len(pos):
                top[i, : len(pos)] = pos[stage.order(feats(sessions, i, pos, q[i], emb))]
        m = metrics(top, np.ones(len(texts), bool))
        rank_lines.append(f"| LightGBM lambdarank, embedding feature: {emb} | {m['recall@10']:.4f} | "
                          f"{m['ndcg@10']:.4f} | {m['mrr']:.4f} |")
        print(rank_lines[-1], f"({time.perf_counter() - t:.0f} s)", flush=True)

    # BM25 and EBR side by side: the union of BM25's top k and the nn top k, ordered by a learned second stage
    # with BM25's score and rank among its features (the term engine's own scoring, which AND-ed terms lack).
    from bench.peers import BM25

    bm25 = BM25(index_docs)

    def union(sess, vecs_q):
        b_rows, b_scores = bm25.rank_scores(sess.queries, k)
        out = []
        for i in range(len(sess.targets)):
            nn_pos = engine.run(NN(KEY, k=k), vecs_q[i:i + 1], k).positions
            b_ok = b_rows[i] >= 0
            pos = np.unique(np.r_[b_rows[i][b_ok], nn_pos])
            b_rank = pd.Series(np.arange(1, b_ok.sum() + 1), index=b_rows[i][b_ok])
            b_score = pd.Series(b_scores[i][b_ok], index=b_rows[i][b_ok])
            n_rank = pd.Series(np.arange(1, len(nn_pos) + 1), index=nn_pos)
            extra = {"bm25": b_score.reindex(pos).fillna(0).to_numpy(), "bm25_rank": b_rank.reindex(pos).fillna(k + 1)
                     .to_numpy(), "nn_rank": n_rank.reindex(pos).fillna(k + 1).to_numpy()}
            out.append((pos, extra, b_rows[i]))
        return out

    u_train, u_test = union(train_sessions, q_train), union(sessions, q)
    fusion_lines = ["| retrieval + ranking | R@10 | R@100 | nDCG@10 | MRR |", "|---|---:|---:|---:|---:|"]

    def add_row(label, top):
        m = metrics(top, np.ones(len(texts), bool))
        fusion_lines.append(f"| {label} | {m['recall@10']:.4f} | {m['recall@100']:.4f} | {m['ndcg@10']:.4f} | "
                            f"{m['mrr']:.4f} |")

    bm_top = np.full((len(texts), k), -1, np.int64)
    for i, (_, _, b_rows) in enumerate(u_test):
        bm_top[i, : len(b_rows)] = b_rows
    add_row("BM25 alone", bm_top)
    add_row("EBR alone (nn top-k by cosine)", tops["EBR only"])
    for emb, label in (("cosine", "BM25 ∪ nn, LightGBM with BM25 and the cosine"),
                       ("none", "BM25 ∪ nn, LightGBM with BM25, without the cosine")):
        X, y = [], []
        for i, (pos, extra, _) in enumerate(u_train):
            if len(pos) >= 2:
                X.append(candidate_features(str(train_sessions.queries["query"].iloc[i] or ""),
                                            searcher_row(train_sessions.queries.iloc[i]), index_docs.iloc[pos],
                                            vecs[pos] @ q_train[i], embedding=emb, extra=extra))
                y.append(np.isin(doc_ids[pos], train_sessions.targets[i]).astype(int))
        stage = SecondStage(emb).fit(X, y)
        top = np.full((len(texts), 2 * k), -1, np.int64)
        for i, (pos, extra, _) in enumerate(u_test):
            if len(pos):
                f = candidate_features(texts[i], searcher_row(sessions.queries.iloc[i]), index_docs.iloc[pos],
                                       vecs[pos] @ q[i], embedding=emb, extra=extra)
                top[i, : len(pos)] = pos[stage.order(f)]
        add_row(label, top[:, :k])
        print(fusion_lines[-1], flush=True)

    # Query selection against always-on EBR, on the hybrid expression (no scope).
    from bench.query_selection import QuerySelection, QuerySelectionConfig

    clicks = prep.parts["train"]
    policies = {"always-on EBR": None,
                "skip navigational repeats": QuerySelectionConfig(),
                "skip navigational + text matches >= 20": QuerySelectionConfig(enough_term_matches=20)}
    sel_lines = ["| policy | nn triggered | R@10 | R@100 | mean ms | p99 ms |", "|---|---:|---:|---:|---:|---:|"]
    searchers = sessions.queries["searcher_id"].astype(str).to_numpy()
    for label, cfg_sel in policies.items():
        policy = QuerySelection.fit(clicks, cfg_sel) if cfg_sel is not None else None
        top = np.full((len(texts), k), -1, np.int64)
        ms, fired = [], 0
        for i, text in enumerate(texts):
            expr = expressions(text, {}, k)["hybrid"]
            t = time.perf_counter()
            use, known = True, None
            if policy is not None:
                text_only = without_nn(expr)
                n_text = len(engine.run(text_only, None, 10**6).positions) if (
                    text_only is not None and cfg_sel.enough_term_matches) else None
                d = policy.decide(searchers[i], text, n_text)
                use, known = d.use_nn, d.known_doc
            if not use:
                expr = without_nn(expr)
            pos = engine.run(expr, q[i:i + 1], k).positions if expr is not None else np.zeros(0, np.int64)
            if known is not None and known in row_of.index:
                kp = row_of[known]
                pos = np.r_[kp, pos[pos != kp]][:k]
            ms.append((time.perf_counter() - t) * 1e3)
            fired += use
            top[i, : len(pos)] = pos
        m = metrics(top, np.ones(len(texts), bool))
        sel_lines.append(f"| {label} | {fired / len(texts):.1%} | {m['recall@10']:.4f} | {m['recall@100']:.4f} | "
                         f"{np.mean(ms):.2f} | {np.percentile(ms, 99):.2f} |")

    st = terms.stats()
    text = "\n".join([
        f"## {name}", "",
        f"{len(texts):,} test sessions ({matches.mean():.0%} text matches), {len(doc_ids):,} documents, index "
        f"{index.kind}; term index {st['terms']:,} terms, {st['postings']:,} postings, {st['bytes'] / 1e6:.2f} MB, "
        f"built in {term_seconds:.1f} s. Bare FAISS top-{k} search of the same index: {faiss_ms:.2f} ms per query.",
        "", *lines, "", f"Second stage over the hybrid expression's top {k} (trained on the candidates of "
        f"{len(train_sessions.targets):,} {rank_source} sessions, labelled by their clicks; R@100 is that of the "
        "candidate set):", "", *rank_lines, "", f"BM25 next to EBR: the union of both top {k}, ordered by a "
        f"LightGBM second stage trained on the same {rank_source} sessions (features as above plus BM25's score and "
        "rank and the nn rank):", "", *fusion_lines, "", "Query selection (the hybrid expression; a navigational repeat puts the remembered document "
        "first; the memory is fitted on the training clicks):", "", *sel_lines, ""])
    print(text, flush=True)
    return text, figures


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="synthetic,scifact")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-sessions", type=int, default=5000)
    p.add_argument("--rank-sessions", type=int, default=5000, help="training sessions for the second stage")
    p.add_argument("--max-snapshots", type=int, default=24)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    sections = [run(n.strip(), args)[0] for n in args.datasets.split(",") if n.strip()]
    text = "\n".join([
        "# Hybrid retrieval: term, EBR and hybrid expressions" + (" (quick mode)" if args.quick else ""), "",
        f"Command: `{command()}` ({(time.perf_counter() - t0) / 60:.1f} min, {args.threads} thread(s)); "
        f"{machine()}.", "", __doc__.split("\n\n")[1], "", *sections])
    write(RESULTS / ("hybrid_retrieval_quick.md" if args.quick else "hybrid_retrieval.md"), text)


if __name__ == "__main__":
    main()
