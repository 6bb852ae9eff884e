"""Section 6 of the paper on our data: online and offline hard-negative mining, hard positives, ensembles.

One table per dataset in the style of the paper's: the unified model (the default recipe); the paper's
triplet loss with and without online hard negatives; offline hard-negative mining (rank 101-500 vs the
hardest, rounds 1 and 2, easy:hard ratios, easy->hard vs hard->easy transfer, from scratch); the weighted
concatenation of the unified and the HNM model; the two cascades of the paper (unified -> HNM,
text-only -> unified); on the synthetic world also clicks vs hard positives. Every row: recall@10 and
recall@100 (nDCG@10 where qrels exist) on the test split with exact KNN and through the IVF-PQ index the
nightly rebuild builds (its refine step included), and the training/mining time. Every setting (the
softmax temperature, epochs, concatenation weights, cascade depth) is chosen on the validation split; a
source without one (SciFact) holds out 20% of its training sessions for it and trains on the rest.

    python -m bench.advanced_training                                   # synthetic, lastfm, scifact
    python -m bench.advanced_training --datasets synthetic --quick      # the tiny world, a smoke run
    python -m bench.advanced_training --mining-cost                     # ANN vs exact mining at 100k-1M docs

Writes ``bench/results/advanced_training.md`` (``mining_cost.md`` for ``--mining-cost``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ann.index import IndexConfig
from bench.common import Prepared, prepare, prepare_source
from bench.comparison import variant_config
from bench.peers import holdout_sessions
from bench.retrieval_quality import RESULTS, base_config, load, machine, write
from evaluation.protocol import consumed_documents, evaluate_split, quantized_metrics
from models.ensemble import Cascade, WeightedConcat, fit_concat_weights
from models.mining import HARD_NEGATIVES, MiningConfig, mine_hard_negatives

DATASETS = ("synthetic", "lastfm", "scifact", "meetup_chicago", "movielens", "meetup_montana")
DEFAULT = "synthetic,lastfm,scifact"
TEMPERATURES = (0.05, 0.1)


def command() -> str:
    return "python -m bench.advanced_training " + " ".join(shlex.quote(a) for a in sys.argv[1:])


@dataclass
class Row:
    name: str
    group: str
    exact: dict
    quantized: dict | None
    seconds: float
    note: str = ""


@dataclass
class Bench:
    """One dataset's training inputs and what has been measured on it."""

    prep: Prepared
    args: argparse.Namespace
    tmp: Path
    train: pd.DataFrame = None
    valid: pd.DataFrame = None
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        parts = self.prep.parts
        if len(parts["valid"]):
            self.train, self.valid = parts["train"], parts["valid"]
        else:  # choose settings on 20% of the training sessions, train on the rest
            self.train, self.valid = holdout_sessions(parts["train"], 0.2, seed=0)
            self.notes.append("no validation split: 20% of the training sessions are held out to choose "
                              "settings; models train on the other 80%")
        self.recommendation = not self.prep.has_query_text
        self.valid_consumed = consumed_documents(self.train) if self.recommendation else None
        self.test_consumed = consumed_documents(self.prep.parts["train"]) if self.recommendation else None
        self.base = base_config(self.args, len(self.train))
        if not len(parts["valid"]):  # a few hundred held-out sessions are too noisy to stop on: run every epoch
            self.base = self.base.model_copy(update={"early_stopping_patience": self.base.epochs})
        self.n = 0

    # -- training and scoring
    def fit(self, cfg, examples: pd.DataFrame | None = None, init_from=None):
        from models.train import train

        self.n += 1
        return train(examples if examples is not None else self.train, self.valid, self.prep.corpus, cfg,
                     self.tmp / f"run-{self.n}", init_from=init_from, resume=False, consumed=self.valid_consumed)

    def valid_score(self, model) -> float:
        parts = {"train": self.train, "valid": self.valid}
        return evaluate_split(model, parts, "valid", self.prep.corpus, max_sessions=self.args.max_sessions,
                              consumed=self.valid_consumed)["recall@10"]

    def score(self, name: str, group: str, model, seconds: float, note: str = "") -> Row:
        parts = self.prep.parts
        kw = dict(max_sessions=self.args.max_sessions, qrels=self.prep.qrels, consumed=self.test_consumed)
        exact = evaluate_split(model, parts, "test", self.prep.index, **kw)
        quant = quantized_metrics(model, parts, "test", self.prep.index, **kw)
        row = Row(name, group, exact, quant, seconds, note)
        self.rows.append(row)
        q = "-" if quant is None else f"{quant['recall@10']:.4f}"
        print(f"  {name:<44} R@10 {exact['recall@10']:.4f} R@100 {exact['recall@100']:.4f} "
              f"nDCG@10 {exact['ndcg@10']:.4f} | IVF-PQ R@10 {q} ({seconds:.0f} s) {note}", flush=True)
        return row

    def hard_cfg(self, ratio: float | None, epochs: int):
        return variant_config(self.base, {"loss": {"extra_negatives": (HARD_NEGATIVES,), "easy_hard_ratio": ratio,
                                                   "max_extra_negatives": 4}, "epochs": epochs})

    def mine(self, model, strategy: str = "window"):
        cfg = MiningConfig(strategy=strategy, rank_window=(101, 500) if strategy == "window" else (1, 500),
                           negatives_per_example=20, index=IndexConfig(kind="ivfpq"), exact_check_queries=1000)
        t = time.perf_counter()
        res = mine_hard_negatives(model, self.train, self.prep.corpus, cfg)
        return res.examples, res.report, time.perf_counter() - t


def run_dataset(prep: Prepared, args) -> Bench:
    with tempfile.TemporaryDirectory(prefix="ebr-advanced-") as tmp:
        b = Bench(prep, args, Path(tmp))
        return _run(b)


def _run(b: Bench) -> Bench:
    a = b.args
    # The unified model, its temperature chosen on validation (the baseline every row is compared with).
    t = time.perf_counter()
    best = None
    for temp in TEMPERATURES:
        cfg = variant_config(b.base, {"loss": {"temperature": temp}})
        r = b.fit(cfg)
        if best is None or (r.best_metric or 0) > (best[1].best_metric or 0):
            best = (cfg, r)
    cfg_u, unified = best
    b.base = cfg_u
    b.score("unified (softmax, mixed negatives)", "baseline", unified.model, time.perf_counter() - t,
            f"T={cfg_u.loss.temperature}")
    t = time.perf_counter()
    text = b.fit(variant_config(cfg_u, {"model": {"use_context": False}}))
    b.score("text-only", "baseline", text.model, time.perf_counter() - t)

    # The paper's loss: triplet on cosine distance, all batch negatives vs the 2 hardest (online HNM).
    for n_hard, label in ((0, "triplet, every batch negative"), (2, "triplet + online HNM (2 hardest)")):
        t = time.perf_counter()
        r = b.fit(variant_config(cfg_u, {"loss": {"kind": "triplet", "online_hard_negatives": n_hard}}))
        b.score(label, "online HNM", r.model, time.perf_counter() - t)

    # Offline HNM: mine with the unified model, train warm-started (easy -> hard) at easy:hard 100:1.
    ex1, rep1, mine1 = b.mine(unified.model)
    b.notes.append(f"round-1 mining: {rep1.sessions:,} queries, {rep1.index_kind} over {rep1.searched_documents:,} "
                   f"documents, pool overlap with exact {rep1.pool_overlap_with_exact:.3f}, "
                   f"{rep1.false_negative_share:.1%} of candidates dropped as false negatives, {mine1:.0f} s")
    t = time.perf_counter()
    r1 = b.fit(b.hard_cfg(100.0, a.hnm_epochs), ex1, init_from=unified.model_path)
    b.score("offline HNM r1: rank 101-500, 100:1 (easy -> hard)", "offline HNM", r1.model,
            mine1 + time.perf_counter() - t)
    ex2, _, mine2 = b.mine(r1.model)
    t = time.perf_counter()
    r2 = b.fit(b.hard_cfg(100.0, a.hnm_epochs), ex2, init_from=r1.model_path)
    b.score("offline HNM r2 (mined with r1)", "offline HNM", r2.model, mine2 + time.perf_counter() - t)
    exh, _, mineh = b.mine(unified.model, "hardest")
    t = time.perf_counter()
    rh = b.fit(b.hard_cfg(100.0, a.hnm_epochs), exh, init_from=unified.model_path)
    b.score("offline HNM r1: hardest, 100:1", "offline HNM", rh.model, mineh + time.perf_counter() - t)
    for ratio in a.ratios:
        t = time.perf_counter()
        r = b.fit(b.hard_cfg(ratio, a.hnm_epochs), ex1, init_from=unified.model_path)
        b.score(f"offline HNM r1: rank 101-500, {ratio:g}:1", "offline HNM", r.model, mine1 + time.perf_counter() - t)
    t = time.perf_counter()
    rs = b.fit(b.hard_cfg(100.0, b.base.epochs), ex1)
    b.score("hard model: r1's negatives, from scratch", "transfer", rs.model, mine1 + time.perf_counter() - t)
    t = time.perf_counter()
    rhe = b.fit(variant_config(cfg_u, {"epochs": a.hnm_epochs}), init_from=rs.model_path)
    b.score("hard -> easy: the hard model, then easy negatives", "transfer", rhe.model, time.perf_counter() - t)

    # Ensembles: weights and depth chosen on validation.
    t = time.perf_counter()
    weights, _ = fit_concat_weights([unified.model, r1.model], b.valid_score)
    b.score(f"weighted concat: unified + HNM r1 (w={weights[1]:g})", "ensemble",
            WeightedConcat([unified.model, r1.model], weights), time.perf_counter() - t)
    for first, second, label in ((unified.model, r1.model, "cascade: unified -> HNM r1"),
                                 (text.model, unified.model, "cascade: text-only -> unified")):
        t = time.perf_counter()
        n = max(a.rerank_grid, key=lambda n: b.valid_score(Cascade(first, second, n)))
        b.score(f"{label} (N={n})", "ensemble", Cascade(first, second, n), time.perf_counter() - t)

    # Hard positives (where sessions fail and are reformulated: the synthetic world).
    hp = b.train["is_hard_positive"].astype(bool) if "is_hard_positive" in b.train.columns else None
    if hp is not None and hp.sum() >= 100:
        for mask, label in ((~hp, "clicks only"), (hp, "hard positives only")):
            t = time.perf_counter()
            r = b.fit(cfg_u, b.train[mask.to_numpy()].reset_index(drop=True))
            b.score(f"{label} ({int(mask.sum()):,} examples)", "hard positives", r.model, time.perf_counter() - t)
        b.notes.append(f"the baseline trains on clicks + hard positives ({len(hp):,} examples, "
                       f"{hp.mean():.1%} hard positives)")
    return b


def table(b: Bench) -> str:
    base = b.rows[0].exact
    graded = b.prep.qrels is not None
    head = "| group | model | R@10 | R@100 | " + ("nDCG@10 | " if graded else "") + \
        "vs unified R@10 | IVF-PQ R@10 | IVF-PQ R@100 | time (s) | note |"
    lines = [head, "|---|---|---:|---:|" + ("---:|" if graded else "") + "---:|---:|---:|---:|---|"]
    for r in b.rows:
        e, q = r.exact, r.quantized
        rel = (e["recall@10"] / base["recall@10"] - 1) if base["recall@10"] else float("nan")
        lines.append(
            f"| {r.group} | {r.name} | {e['recall@10']:.4f} | {e['recall@100']:.4f} | "
            + (f"{e['ndcg@10']:.4f} | " if graded else "")
            + f"{rel:+.1%} | " + ("- | - | " if q is None else f"{q['recall@10']:.4f} | {q['recall@100']:.4f} | ")
            + f"{r.seconds:.0f} | {r.note} |")
    return "\n".join(lines) + "\n"


def main_bench(args) -> str:
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    bad = [n for n in names if n not in DATASETS]
    if bad:
        raise SystemExit(f"unknown dataset(s) {bad}; allowed: {list(DATASETS)}")
    t0 = time.perf_counter()
    sections = []
    for name in names:
        print(f"== {name}", flush=True)
        prep = prepare_source(name, load(name, args.quick), args.max_snapshots)
        b = run_dataset(prep, args)
        n_test = int(b.rows[0].exact["n_sessions"])
        sections += [f"## {name}", "", f"{len(b.train):,} training examples, {len(b.valid):,} validation, "
                     f"{n_test:,} test sessions, {len(prep.index):,} documents in the index.", "", table(b)]
        sections += [f"- {n}" for n in b.notes] + [""]
    total = time.perf_counter() - t0
    text = "\n".join([
        "# Hard-negative mining, hard positives and ensembles (section 6 of the paper)"
        + (" (quick mode)" if args.quick else ""), "",
        f"Command: `{command()}` ({total / 60:.1f} min, {args.threads} torch thread(s)); {machine()}.", "",
        "Test split of each dataset as in `retrieval_quality.md`; exact KNN over the index, and the same through "
        "the IVF-PQ index of the nightly rebuild (`IndexConfig(kind='ivfpq')` sized for the corpus, refine on; "
        "a cascade re-scores the index's top N exactly, as the retriever does). Offline HNM: mined with "
        "`models.mining` (IVF-PQ search, 20 negatives per example among ranks 101-500 or the hardest, known "
        "positives of the searcher or query and candidates above the positive dropped), trained with "
        f"`easy_hard_ratio` (easy = batch - 1 + corpus negatives per example), {args.hnm_epochs} epochs "
        "warm-started from the unified model (easy -> hard) unless said otherwise; rows choose nothing on test. "
        "Time: training (and mining) of that row.", "",
        *sections,
    ])
    write(RESULTS / (args.out or ("advanced_training_quick.md" if args.quick else "advanced_training.md")), text)
    return text


def main_mining_cost(args) -> str:
    """Mining with ANN vs exact KNN at corpus sizes beyond the default world: the synthetic default model
    mines its training queries against documents of a larger world, embedded from their own fields."""
    import torch

    from ingest.synthetic import WorldConfig, generate_world
    from models.mining import sessions_of
    from models.train import train

    t0 = time.perf_counter()
    prep = prepare("synthetic", load("synthetic", False), max_snapshots=args.max_snapshots)
    with tempfile.TemporaryDirectory(prefix="ebr-mining-cost-") as tmp:
        model = train(prep.parts["train"], prep.parts["valid"], prep.corpus, base_config(args), Path(tmp) / "m",
                      resume=False).model
    train_ex = prep.parts["train"]
    _, first = sessions_of(train_ex)
    rng = np.random.default_rng(0)
    q_frame = train_ex.iloc[np.sort(rng.choice(first, size=min(args.cost_queries, len(first)), replace=False))]
    q = np.ascontiguousarray(model.embed_queries(q_frame), dtype=np.float32)
    lines = ["| documents | index | nprobe | ANN ms/query | exact ms/query | speed-up | window pool overlap | "
             "build (s) |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
    docs = generate_world(WorldConfig.preset(args.cost_world)).documents
    from features.schema import DOC_MULTI, DOC_NUMERIC, weights_of

    for col in DOC_MULTI:  # no member aggregates: empty lists, as for a document the nightly has not seen yet
        docs[col] = [[] for _ in range(len(docs))]
        docs[weights_of(col)] = [[] for _ in range(len(docs))]
    for col in DOC_NUMERIC:
        docs[col] = np.nan
    d_all = np.ascontiguousarray(model.embed_documents(docs), dtype=np.float32)
    from ann.index import EmbeddingIndex
    from models.knn import top_k

    for n in [int(x) for x in args.cost_sizes.split(",")]:
        if n > len(d_all):
            continue
        d = d_all[:n]
        te = time.perf_counter()
        exact = top_k(q, d, 500)
        t_exact = (time.perf_counter() - te) / len(q)
        for refine in (True, False):
            tb = time.perf_counter()
            cfg = IndexConfig(kind="ivfpq", refine=refine).resolve(n, d.shape[1])
            index = EmbeddingIndex.build(d, np.arange(n, dtype=np.int64), cfg, progress=False)
            build = time.perf_counter() - tb
            for nprobe in sorted({max(1, cfg.nprobe // 2), cfg.nprobe, min(cfg.nlist, cfg.nprobe * 2)}):
                ta = time.perf_counter()
                _, ann = index.search(q, 500, nprobe=nprobe)
                t_ann = (time.perf_counter() - ta) / len(q)
                overlap = np.mean([len(np.intersect1d(x[100:], y[100:])) / 400 for x, y in zip(ann, exact)])
                lines.append(f"| {n:,} | IVF-PQ nlist={cfg.nlist} m={cfg.pq_m}{' + refine' if refine else ''} | "
                             f"{nprobe} | {t_ann * 1e3:.3f} | {t_exact * 1e3:.3f} | {t_exact / t_ann:.1f}x | "
                             f"{overlap:.3f} | {build:.0f} |")
                print(lines[-1], flush=True)
    total = time.perf_counter() - t0
    text = "\n".join([
        "# Offline mining: ANN vs exact top-500", "",
        f"Command: `{command()}` ({total / 60:.1f} min, torch threads {torch.get_num_threads()}); {machine()}.", "",
        f"{len(q):,} training queries of the default synthetic world, embedded by the unified model trained on it; "
        f"documents of the `{args.cost_world}` world embedded by the same model from their own fields (title, "
        "body, type, location; no member aggregates, which that world was not materialized for). Exact: one "
        "batched matrix product and top-k (torch); ANN: the project's IVF-PQ index (what `models.mining` "
        "searches), with its exact refine step (the default) and without. Overlap: share of the exact ranks 101-500 that the ANN's ranks 101-500 "
        "also hold (the pool the window strategy samples from).", "", *lines, ""])
    write(RESULTS / "mining_cost.md", text)
    return text


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default=DEFAULT)
    p.add_argument("--quick", action="store_true", help="the tiny synthetic world (smoke run)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--hnm-epochs", type=int, default=3, help="epochs of each warm-started HNM training")
    p.add_argument("--ratios", default="10,1000", help="easy:hard ratios besides 100")
    p.add_argument("--rerank-grid", default="20,50,100,200")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-sessions", type=int, default=10_000)
    p.add_argument("--max-snapshots", type=int, default=24)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", default=None, help="results file name under bench/results/")
    p.add_argument("--mining-cost", action="store_true", help="ANN vs exact mining at larger corpus sizes")
    p.add_argument("--cost-world", default="large", help="synthetic preset whose documents are mined against")
    p.add_argument("--cost-sizes", default="20000,100000")
    p.add_argument("--cost-queries", type=int, default=2000)
    args = p.parse_args(argv)
    args.ratios = tuple(float(x) for x in args.ratios.split(",") if x.strip())
    args.rerank_grid = tuple(int(x) for x in args.rerank_grid.split(",") if x.strip())
    args.dense = ()
    import torch

    torch.set_num_threads(args.threads)
    print(main_mining_cost(args) if args.mining_cost else main_bench(args))


if __name__ == "__main__":
    main()
