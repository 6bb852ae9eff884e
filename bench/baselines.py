"""The strongest simple baselines and library peers per dataset, on the held-out test split, warm and cold.

For MovieLens, Meetup Chicago (both with a time split), Last.fm and SciFact: the dataset prepared by
``bench.common.prepare`` (the same examples, sessions and index as ``bench.retrieval_quality``), then every
baseline of ``bench.peers`` that applies to it, fitted on the training split only, its
hyperparameters chosen on the validation split (SciFact has none: a seeded 20% slice of the training
sessions, the baselines refitted on the whole training split afterwards), scored on the test split with
exact rankings over the whole index: recall@10 / recall@100 / nDCG@10 (graded by qrels on SciFact), and the
same on the warm and cold test sessions (``bench.rankers.warm_sessions``: warm when one of the
session's (query, clicked document) pairs occurs in training; for recommendation datasets, whose sessions
have no query text, when the clicked document was clicked by anyone in training). Recommendation datasets
follow the recommendation protocol: what a searcher clicked in training is never retrieved for it.

    python -m bench.baselines                               # the four datasets
    python -m bench.baselines --datasets lastfm --max-sessions 2000
    python -m bench.baselines --datasets scifact,lastfm --dense lastfm,scifact

Runs single-threaded (OMP/OpenBLAS/MKL threads = 1 unless set) and prints markdown tables.
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # run as a script: one thread each, set before numpy loads; importers keep theirs
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import pickle  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench.peers import (
    ALS,
    ALS_GRID,
    BM25,
    FUSION_WEIGHTS,
    LIGHTFM_GRID,
    PROFILE_GRID,
    QP_ALS_WEIGHTS,
    RECENT_DAYS,
    DenseEncoder,
    Fusion,
    LightFMWarp,
    NearbyPopularity,
    Popularity,
    ProfilePopularity,
    QueryPopularity,
    QueryPopularityALS,
    RecentPopularity,
    fit_on_validation,
    holdout_sessions,
)
from bench.rankers import rank_sessions, split_metrics, warm_sessions
from bench.significance import RelativeDifference, paired_bootstrap  # noqa: E402
from evaluation.protocol import consumed_documents
from models.evaluate import session_recalls, session_targets  # noqa: E402

DATASETS = ("movielens", "meetup_chicago", "lastfm", "scifact")
KS = (10, 100)


def lightfm_available() -> bool:
    try:
        import lightfm  # noqa: F401
    except ImportError:
        return False
    return True


class Baselines:
    """The baselines of one prepared dataset: choose on validation, score on test."""

    def __init__(self, prep, max_sessions: int, dense: bool):
        self.prep, self.max_sessions, self.dense = prep, max_sessions, dense
        parts = prep.parts
        self.train, self.test, self.index = parts["train"], parts["test"], prep.index
        self.recommendation = not prep.has_query_text
        if len(parts.get("valid", [])):
            self.fit_train, self.valid, self.sliced = self.train, parts["valid"], False
        else:
            self.fit_train, self.valid = holdout_sessions(self.train, 0.2, seed=0)
            self.sliced = True
        # the documents validation ranks: what a nightly at the validation cutoff serves (as the test split
        # ranks what is served at its own); a slice of the training sessions ranks the training corpus
        self.corpus = prep.valid_index if prep.valid_index is not None and not self.sliced else prep.corpus
        self.consumed = consumed_documents(self.train) if self.recommendation else None
        self.valid_consumed = consumed_documents(self.fit_train) if self.recommendation else None
        self.sessions = session_targets(self.test, max_sessions, 0, prep.qrels, self.consumed)
        self.warm = warm_sessions(self.sessions, self.train)
        seen = set(self.train["searcher_id"].astype(str))
        self.known = self.sessions.queries["searcher_id"].astype(str).isin(seen).to_numpy()
        self.doc_ids = self.index["doc_id"].astype(str).to_numpy(object)
        self.rows: dict[str, dict] = {}
        self.headline: str | None = None  # the two-tower row the headline compares (set by the benchmark)
        self.choices: dict[str, pd.DataFrame] = {}
        self._dense = None  # (validation encoder, test encoder, seconds) once encode_documents has run
        self.dense_stored = 0  # of the documents the dense encoder needed, how many came from the encoder's store

    # -- what applies
    @property
    def collaborative(self) -> bool:
        """Searchers come back: some test sessions' searchers were seen in training (not SciFact's, each
        claim asked by a searcher of its own), so there are interactions to factorize."""
        return self.train["searcher_id"].nunique() >= 10 and self.known.mean() >= 0.01

    @property
    def profiled(self) -> bool:
        """Searchers have profile attributes (MovieLens: gender, age, occupation) on most test sessions."""
        profile = self.test.get("searcher_profile")
        return profile is not None and profile.map(lambda p: len(p) if isinstance(p, (list, tuple, np.ndarray))
                                                   else 0).gt(0).mean() > 0.5

    @property
    def located(self) -> bool:
        city = self.index.get("city")
        return (city is not None and "searcher_city" in self.test.columns
                and (city.fillna("").astype(str) != "").mean() > 0.1)

    def choose(self, name: str, build_valid, grid, build_test=None):
        res = fit_on_validation(build_valid, grid, self.valid, self.corpus, ks=KS,
                                max_sessions=self.max_sessions, consumed=self.valid_consumed)
        self.choices[name] = res.table
        return res, res.ranker_for(self.index, build=build_test if self.sliced else None)

    def score(self, name: str, ranker, params: dict | None = None, fit_seconds: float = 0.0) -> None:
        t0 = time.perf_counter()
        top = rank_sessions(ranker, self.sessions, self.doc_ids, max(max(KS), 100))
        m = split_metrics(top, self.doc_ids, self.sessions, self.warm, KS)
        by_searcher = split_metrics(top, self.doc_ids, self.sessions, self.known, KS)
        m["known searcher"], m["new searcher"] = by_searcher["warm"], by_searcher["cold"]
        self.rows[name] = {"params": params or {}, "metrics": m, "seconds": fit_seconds + time.perf_counter() - t0,
                           "per_session": session_recalls(top, self.doc_ids, self.sessions, KS)}
        a = m["all"]
        print(f"  {self.prep.name}: {name:<22} R@10 {a['recall@10']:.4f}  R@100 {a['recall@100']:.4f}  "
              f"nDCG@10 {a['ndcg@10']:.4f}"
              f"  {params or ''}  ({self.rows[name]['seconds']:.1f} s)", flush=True)

    def compare(self, method: str, reference: str, k: int) -> RelativeDifference:
        """recall@k of ``method`` relative to ``reference`` on the same test sessions, with its 95% interval
        over resampled searchers (:func:`bench.significance.paired_bootstrap`)."""
        rows = self.rows
        return paired_bootstrap(rows[method]["per_session"][k], rows[reference]["per_session"][k],
                                self.sessions.queries["searcher_id"].to_numpy())

    def encode_documents(self):
        """(encoder over the validation corpus, the same over the index, seconds) of the pretrained encoder,
        computed once: the dense baseline's document vectors, which also fill the towers' sub-model cache
        (one cache per process, :mod:`models.pretrained`). A caller that runs :meth:`run` beside other work
        calls this first, so that the encoder gets the cores to itself and the vectors exist before
        anything else needs them."""
        if self._dense is None:
            from models.pretrained import text_encoder

            stats = text_encoder("all-MiniLM-L6-v2").stats
            before = dict(stats)
            t = time.perf_counter()
            dense_v = DenseEncoder(self.corpus, batch_size=64)
            dense = dense_v.for_documents(self.index)
            self._dense = (dense_v, dense, time.perf_counter() - t)
            self.dense_stored = stats["from_store"] - before["from_store"]
            encoded = stats["encoded"] - before["encoded"]
            print(f"  {self.prep.name}: ({len(self.corpus):,} documents: {encoded:,} encoded, {self.dense_stored:,} "
                  f"read from the encoder's store, {dense_v.encode_seconds:.0f} s)", flush=True)
        return self._dense

    def run(self) -> None:
        train, index = self.train, self.index
        t = time.perf_counter()
        self.score("popularity", Popularity(train, index), fit_seconds=time.perf_counter() - t)
        t = time.perf_counter()
        fit_train = self.fit_train
        res, recent = self.choose("recent popularity", lambda d, days: RecentPopularity(fit_train, d, days),
                                  RECENT_DAYS, lambda d, days: RecentPopularity(train, d, days))
        self.score("recent popularity", recent, res.params, time.perf_counter() - t)
        if self.profiled:
            t = time.perf_counter()
            res, by_profile = self.choose(
                "profile popularity", lambda d, **p: ProfilePopularity(fit_train, d, **p), PROFILE_GRID,
                lambda d, **p: ProfilePopularity(train, d, **p))
            self.score("profile popularity", by_profile, res.params, time.perf_counter() - t)
        if not self.recommendation:
            t = time.perf_counter()
            self.score("query popularity", QueryPopularity(train, index), fit_seconds=time.perf_counter() - t)
            t = time.perf_counter()
            self.score("BM25", BM25(index), fit_seconds=time.perf_counter() - t)
        if self.located:
            t = time.perf_counter()
            self.score("nearby popularity", NearbyPopularity(train, index), fit_seconds=time.perf_counter() - t)
        if self.collaborative:
            t = time.perf_counter()
            res, als = self.choose("ALS", lambda d, **p: ALS(fit_train, d, iterations=15, **p), ALS_GRID,
                                   lambda d, **p: ALS(train, d, iterations=15, **p))
            self.score("ALS (implicit)", als, res.params, time.perf_counter() - t)
            if not self.recommendation:
                t = time.perf_counter()
                qp_v, als_v = QueryPopularity(fit_train, self.corpus), res.ranker
                res_w = fit_on_validation(lambda d, weight: QueryPopularityALS(qp_v, als_v, weight),
                                          {"weight": QP_ALS_WEIGHTS}, self.valid, self.corpus, ks=KS,
                                          max_sessions=self.max_sessions, consumed=self.valid_consumed)
                self.choices["query popularity + ALS"] = res_w.table
                ranker = QueryPopularityALS(QueryPopularity(train, index), als, **res_w.params)
                self.score("query popularity + ALS", ranker, res_w.params, time.perf_counter() - t)
            if lightfm_available():
                t = time.perf_counter()
                res, lfm = self.choose("LightFM", lambda d, **p: LightFMWarp(fit_train, d, **p), LIGHTFM_GRID,
                                       lambda d, **p: LightFMWarp(train, d, **p))
                self.score("LightFM WARP", lfm, res.params, time.perf_counter() - t)
        if self.dense and not self.recommendation:
            dense_v, dense, encode = self.encode_documents()
            # seconds with vectors read from the store are not the encoder's cost: the row says how many
            stored = {"document vectors from the store": f"{self.dense_stored:,} of {len(self.corpus):,}"}
            self.score("dense MiniLM-L6", dense, stored if self.dense_stored else None, fit_seconds=encode)
            t = time.perf_counter()
            bm25_v = BM25(self.corpus)
            res = fit_on_validation(
                lambda d, dense_weight, method: Fusion([bm25_v, dense_v], [1 - dense_weight, dense_weight], method),
                {"dense_weight": FUSION_WEIGHTS, "method": ("rrf", "score")}, self.valid, self.corpus, ks=KS,
                max_sessions=self.max_sessions, consumed=self.valid_consumed)
            self.choices["BM25 + dense"] = res.table
            w, method = res.params["dense_weight"], res.params["method"]
            fused = Fusion([BM25(index), dense], [1 - w, w], method)
            self.score("BM25 + dense fusion", fused, res.params, time.perf_counter() - t)


def table(probe: "Baselines") -> str:
    head = ("| method | chosen on validation | R@10 | R@100 | nDCG@10 | warm R@10 / R@100 | cold R@10 / R@100 | "
            "known searcher R@10 / R@100 | new searcher R@10 / R@100 | seconds |")
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in probe.rows.items():
        m = r["metrics"]
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "-"

        def wc(part):
            x = m[part]
            return "-" if not x.get("n_sessions") else f"{x['recall@10']:.3f} / {x['recall@100']:.3f}"

        a = m["all"]
        lines.append(f"| {name} | {params} | {a['recall@10']:.3f} | {a['recall@100']:.3f} | {a['ndcg@10']:.3f} | "
                     f"{wc('warm')} | {wc('cold')} | {wc('known searcher')} | {wc('new searcher')} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated, from {list(DATASETS)}")
    ap.add_argument("--max-sessions", type=int, default=10_000, help="test / validation sessions evaluated")
    ap.add_argument("--max-snapshots", type=int, default=24, help="feature snapshots per dataset (prepare)")
    ap.add_argument("--dense", default="scifact",
                    help="datasets (with query text) that get the sentence encoder and its fusion with BM25")
    ap.add_argument("--choices", action="store_true", help="print every grid setting's validation metrics")
    ap.add_argument("--cache", default=None,
                    help="a directory of prepared datasets (<name>.pkl): loaded when there, written otherwise")
    args = ap.parse_args(argv)
    os.environ.setdefault("EBR_HOME", tempfile.mkdtemp(prefix="ebr-bench-"))  # nothing lands in the project

    from bench.common import prepare_source
    from ingest.datasets import load_source

    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    dense = {n.strip() for n in args.dense.split(",") if n.strip()}
    out = [f"Command: `python -m bench.baselines {' '.join(shlex.quote(a) for a in sys.argv[1:])}`", ""]
    t_all = time.perf_counter()
    for name in names:
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        cached = Path(args.cache) / f"{name}.pkl" if args.cache else None
        if cached is not None and cached.exists():
            with cached.open("rb") as f:
                prep = pickle.load(f)
            print(f"  prepared {name} read from the cache", flush=True)
        else:
            data = load_source(name)
            prep = prepare_source(name, data, args.max_snapshots)
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                with cached.open("wb") as f:
                    pickle.dump(prep, f)
        t1 = time.perf_counter()
        probe = Baselines(prep, args.max_sessions, name in dense)
        n_s = len(probe.sessions.targets)
        seen = probe.known
        print(f"  load + prepare {t1 - t0:.0f} s; {n_s:,} test sessions, {probe.warm.mean():.1%} warm, "
              f"{seen.mean():.1%} with a searcher seen in training; {len(prep.index):,} documents", flush=True)
        probe.run()
        t2 = time.perf_counter()
        out += [f"### {name}", "",
                f"{n_s:,} test sessions ({int(probe.warm.sum()):,} warm / {int((~probe.warm).sum()):,} cold; "
                f"{seen.mean():.0%} by a searcher seen in training), {len(prep.index):,} documents; "
                f"{'recommendation protocol (consumed excluded)' if probe.recommendation else 'search'}; "
                f"hyperparameters on {'a 20% slice of the training sessions' if probe.sliced else 'the validation split'}. "
                f"Load + prepare {t1 - t0:.0f} s, baselines {t2 - t1:.0f} s.", "", table(probe), ""]
        if args.choices:
            for k, v in probe.choices.items():
                out += [f"{name} / {k} on validation:", "", v.round(4).to_string(index=False), ""]
    out.append(f"Total {(time.perf_counter() - t_all) / 60:.1f} min.")
    print("\n".join(out))


if __name__ == "__main__":
    main()
