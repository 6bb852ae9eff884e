"""Retrieval quality per dataset: the two-tower models against the strongest simple baselines and peers.

For each dataset (the default synthetic world and every real dataset with an adapter) the same code path
(``bench.common.prepare``): examples from ``examples.build``, features joined point-in-time from
snapshots computed with ``features.compute``, every method fitted on the training split only with its
settings chosen on validation (``bench.baselines``: popularity, per-query popularity, nearby popularity,
BM25, implicit's ALS, per-query popularity + ALS, LightFM where installed, a pretrained sentence encoder
and its fusion with BM25), and every method scored by the same code on the same held-out test sessions
against the same index with exact rankings: recall@10/100 (the paper's eq. 1), warm and cold sessions apart,
plus nDCG@10 where qrels exist.

    python -m bench.retrieval_quality                      # all default datasets (writes the results file)
    python -m bench.retrieval_quality --datasets synthetic,scifact --quick
    python -m bench.retrieval_quality --compare            # the model comparison on the default world
    python -m bench.retrieval_quality --ablation --datasets movielens,meetup_montana   # what each input is worth

Both cores stay busy: two worker processes per dataset train the models' independent runs
(``bench.parallel_training``), the baselines are fitted meanwhile in the parent, two datasets run at a time
(``--lanes``; a dataset whose frozen encoder lacks its documents' vectors encodes them first, alone, on
``--threads``), and the next datasets are prepared in a process of their own, SciFact (prepared in seconds)
running first (``--workers 1``: everything one after the other, training with ``--threads``). The results
are tabulated in the order asked.

Prints markdown and writes ``bench/results/retrieval_quality.md`` (``model_comparison.md`` with
``--compare``; ``*_quick.md`` in quick mode) with the command that produced it.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import sys
import tempfile
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path

import pandas as pd

from bench.baselines import Baselines, table
from bench.common import Prepared, prepare, prepare_source
from bench.comparison import FEATURE_ABLATION, REPORT_VARIANTS, compare_models, comparison_markdown, variant_config
from bench.parallel_training import Run, Trainer, close_all
from bench.peers import BM25, Popularity, session_folds
from bench.rankers import EmbeddingRanker, evaluate_ranker
from evaluation.protocol import consumed_documents
from models.config import TrainConfig

RESULTS = Path(__file__).resolve().parent / "results"
DATASETS = ("synthetic", "lastfm", "meetup_montana", "meetup_chicago", "movielens", "scifact")
OPTIONAL = ()
# run before the others: SciFact is prepared in seconds (the synthetic world, first in the table, takes minutes
# to generate, and nothing else could run meanwhile)
RUN_FIRST = ("scifact",)
LABELS = {
    "synthetic": "Synthetic world (default)", "lastfm": "Last.fm (HetRec 2011)",
    "meetup_montana": "Meetup Montana", "meetup_chicago": "Meetup Chicago", "movielens": "MovieLens 100k",
    "scifact": "BEIR SciFact",
}
MODEL_GRID = ({"loss": {"temperature": 0.05}}, {"loss": {"temperature": 0.1}})
# The unified model also tries documents at their point-in-time features: each positive embedded with the
# features it had at its example's time and the batch's other positives as the only negatives, so that every
# document of a step is seen as of a click (corpus negatives carry the end-of-training features: next to
# them, a positive's younger aggregates give it away). Where the served documents are young (new events)
# this is what transfers; where popularity carries the signal the corrected corpus negatives win.
POINT_IN_TIME = {"loss": {"negatives": "batch", "temperature": 0.1}, "positive_features": "example"}
# (temperature 0.1 with corpus negatives was never the unified model's choice on any dataset's validation:
# left out of its grid to pay for the seed ensemble)
UNIFIED_GRID = (MODEL_GRID[0], POINT_IN_TIME)
# Then, on the setting validation picked, training on the newest days only (TrainConfig.train_window_days),
# where the training split spans more than that: where tastes drift, the recent clicks predict the next ones.
WINDOW_DAYS = (90.0,)
MODELS = {"text-only": {"model": {"use_context": False}}, "unified": {}}
# the frozen pretrained text sub-model (models.pretrained) for the datasets of --dense; its weight in the
# concatenation is chosen on validation (by folds of the training sessions where there is no validation split)
PRETRAINED = {"unified + MiniLM": {"model": {"pretrained_text": "all-MiniLM-L6-v2"}}}
PRETRAINED_GRID = tuple({"model": {"pretrained_weight": w}} for w in (2.0, 4.0, 8.0))


def load(name: str, quick: bool):
    if name == "synthetic":
        from ingest.synthetic import WorldConfig, generate_world

        return generate_world(WorldConfig.preset("tiny" if quick else "default"))
    from ingest.datasets import load_source

    return load_source(name)


MIN_STEPS = 600
# folds of the training sessions that choose a setting where a source has no validation split (SciFact)
FOLDS = 5
SLICED = (f"{FOLDS} folds of the training sessions (models' settings), the first of them (baselines' settings "
          "and the seed ensemble)")


def base_config(args, n_train: int | None = None) -> TrainConfig:
    """The flow's recipe; on a small training split (SciFact: 919 examples, 2 steps per epoch at batch 512)
    smaller batches and more epochs, so that every model gets at least ``MIN_STEPS`` optimizer steps. Runs
    are not resumable: a failed benchmark is run again, so no per-epoch checkpoint is written (the models
    are the same)."""
    from flows.train import laptop_config

    cfg = laptop_config()
    update = {"epochs": args.epochs, "num_threads": args.threads, "progress": not args.no_progress,
              "resumable": False}
    if n_train is not None:
        batch = min(cfg.batch_size, max(64, n_train // 50))
        steps = math.ceil(n_train / batch)
        update.update(batch_size=batch, epochs=min(max(args.epochs, math.ceil(MIN_STEPS / steps)), 60))
    return cfg.model_copy(update=update)


def run_dataset(prep: Prepared, args, variants: dict, let_next_start=lambda: None) -> Baselines:
    """Every baseline and library peer that applies (:class:`bench.baselines.Baselines`, settings chosen on
    validation) and the two-tower models, scored by the same code on the same test sessions: one row each.
    The headline model (unified, or unified + MiniLM where the dataset runs it) is also trained with
    ``args.seeds`` seeds and concatenated (:func:`fit_seed_ensemble`): a row of its own, and the headline's
    model where validation prefers it to the single one.

    The models are fitted side by side (:func:`fit_variants`); a model's seconds are its runs' training
    time, each in its own process, its validation of the ensemble and its scoring. With worker processes
    the baselines are fitted meanwhile in this process (:func:`beside`): they are single-threaded, and
    would otherwise leave a core idle before the first run starts. The pretrained encoder's documents are
    encoded (or read from its store) before both, on ``args.threads`` threads, and only then may the next
    dataset start beside this one (``let_next_start``, :func:`in_flight`): the towers' sub-model reads the
    same vectors, and on one thread beside another dataset's training the encoding of a corpus the store
    lacks would hold up this dataset's every run.

    Recommendation datasets (no query text) follow the recommendation protocol: what a searcher consumed
    in training is never retrieved for it, by any method.
    """
    suite = Baselines(prep, args.max_sessions, dense=prep.name in args.dense)
    if prep.name in args.dense:
        variants = {**variants, **PRETRAINED}
    if suite.dense and not suite.recommendation:
        with torch_threads(args.threads):  # the cores are the encoder's: the next dataset waits (in_flight)
            suite.encode_documents()
    let_next_start()
    ensembled = headline_variant(variants)
    with tempfile.TemporaryDirectory(prefix="ebr-quality-") as tmp:
        if args.workers > 1:
            fits, seconds = beside(suite.run, lambda: fit_variants(prep, suite, args, variants, Path(tmp)))
        else:  # one process trains with every thread: nothing beside it
            suite.run()
            fits, seconds = fit_variants(prep, suite, args, variants, Path(tmp))
        for name, (fitted, ensemble, choice) in fits.items():
            cfg, result = fitted.config, fitted.result
            params = {"temperature": cfg.loss.temperature}
            if cfg.positive_features == "example":
                params["documents"] = "point-in-time (batch negatives)"
            if cfg.train_window_days:
                params["window"] = f"{cfg.train_window_days:g} days"
            if cfg.model.pretrained_text:
                params["pretrained weight"] = cfg.model.pretrained_weight
            if fitted.fold_means:
                params[f"{FOLDS}-fold R@10"] = " / ".join(f"{k}: {v:.4f}" for k, v in fitted.fold_means.items())
            params.update({"best epoch": result.best_epoch, "batch": cfg.batch_size, "max epochs": cfg.epochs})
            if choice is not None and ensemble is None:  # rejected on the slice: said in the model's own row
                params["seed ensemble"] = f"{choice['validation R@10']}, not kept"
            suite.score(name, EmbeddingRanker(result.model, prep.index), params, fit_seconds=seconds.get(name, 0.0))
            if name != ensembled:
                continue
            suite.headline = name
            if ensemble is not None:
                label = ensemble_label(name, args.seeds)
                suite.score(label, EmbeddingRanker(ensemble, prep.index), choice, fit_seconds=seconds.get(label, 0.0))
                if choice["chosen"] == "yes":
                    suite.headline = label
    return suite


@contextmanager
def torch_threads(n: int):
    """This process's torch threads set to ``n`` for the block, restored after it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def beside(side, main):
    """``main()``'s result, with ``side()`` run in a thread of its own meanwhile; ``side``'s error is raised
    (once ``main`` is done) before ``main``'s result is returned, ``main``'s own error before either."""
    with ThreadPoolExecutor(1, thread_name_prefix="beside") as pool:
        other = pool.submit(side)
        try:
            result = main()
        finally:
            error = other.exception()  # waits: the side work ends before anything goes on
        if error is not None:
            raise error
        return result


def ensemble_label(name: str, seeds: int) -> str:
    return f"{name} ×{seeds}"


def fit_variants(prep: Prepared, suite: Baselines, args, variants: dict, out: Path):
    """({model name: (Fitted, seed ensemble or None, what validation said of the ensemble or None)}, {row:
    seconds}): every model fitted with its grid (:func:`fit_model`), the headline also with its seed
    ensemble (:func:`fit_seed_ensemble`). With ``args.workers > 1`` each model's chain of runs is driven by a
    thread of its own over one :class:`bench.parallel_training.Trainer`, so that the runs of different models
    train side by side; the parent's own work (loading models, validating the ensemble) then takes one torch
    thread, leaving the cores to the workers."""
    base = base_config(args, len(prep.parts["train"]))
    ensembled = headline_variant(variants)
    pretrained = {variant_config(base, v).model.pretrained_text for v in variants.values()} - {None, ""}

    def fit(name: str, trainer: Trainer):
        # the pretrained weight is always chosen; the temperature and the unified model's documents only
        # where there is a validation split
        grid = (PRETRAINED_GRID if name in PRETRAINED else MODEL_GRID[:1] if not len(prep.parts["valid"])
                else UNIFIED_GRID if name == "unified" else MODEL_GRID)
        fitted = fit_model(prep, suite, variant_config(base, variants[name]), grid, out / name, trainer, name)
        if name != ensembled or args.seeds < 2:
            return fitted, None, None
        return (fitted, *fit_seed_ensemble(prep, suite, fitted, args.seeds, out / f"{name}-seeds", trainer,
                                           ensemble_label(name, args.seeds)))

    with Trainer(args.workers, pretrained) as trainer:
        if trainer.workers == 1:
            return {name: fit(name, trainer) for name in variants}, dict(trainer.seconds)
        pool = ThreadPoolExecutor(len(variants), thread_name_prefix="fit")
        try:
            with torch_threads(1):
                futures = {name: pool.submit(fit, name, trainer) for name in variants}
                fits = {name: f.result() for name, f in futures.items()}
        except BaseException:
            trainer.close(wait=False)  # the other models' queued runs are cancelled: their threads end
            raise
        finally:
            pool.shutdown()
    return fits, dict(trainer.seconds)


@dataclass
class Fitted:
    """A model fitted by :func:`fit_model`: its config, the run trained on the whole training split, and the
    run its setting was judged by on validation (the same run where there is a validation split)."""

    config: TrainConfig
    final: object  # models.train.TrainResult, or a Future of it while it trains (fit_by_folds)
    validated: object
    fold_means: dict | None = None  # setting -> mean recall@10 over the folds (no validation split)

    @property
    def result(self):
        """The run trained on the whole training split (waits for it while it trains)."""
        return self.final.result() if isinstance(self.final, Future) else self.final


def fit_model(prep: Prepared, suite: Baselines, base: TrainConfig, grid, out: Path, trainer: Trainer | None = None,
              account: str = "") -> Fitted:
    """The grid setting with the best validation recall@10, trained on the training split. Like the
    baselines' settings, it is chosen on the validation split; where a source has none (SciFact), by the mean
    over :data:`FOLDS` folds of the training sessions (:func:`fit_by_folds`), and then retrained on the whole
    training split. Without a validation split a one-setting grid is trained once, on the whole split.
    Independent runs train side by side in ``trainer``'s processes (:mod:`bench.parallel_training`; None:
    one after the other), their time counted under ``account``."""
    trainer = trainer or Trainer()
    valid = prep.parts["valid"] if len(prep.parts["valid"]) else None
    if valid is None and len(grid) == 1:
        cfg = variant_config(base, grid[0])
        (result,) = trainer.train([Run(prep.parts["train"], None, prep.corpus, cfg, out / "0")], account)
        return Fitted(cfg, result, None)
    if valid is None:
        return fit_by_folds(prep, suite, base, grid, out, trainer, account)
    fit, check, valid_index = validation_data(prep, suite)

    def run(cfg: TrainConfig, name: str) -> Run:
        return Run(fit, check, prep.corpus, cfg, out / name, suite.valid_consumed, valid_index)

    configs = [variant_config(base, setting) for setting in grid]
    results = trainer.train([run(cfg, str(i)) for i, cfg in enumerate(configs)], account)
    best = max(zip(configs, results), key=lambda cr: cr[1].best_metric or 0.0)  # ties: the first setting
    ts = pd.to_datetime(fit["ts"], utc=True)
    span_days = (ts.max() - ts.min()) / pd.Timedelta(days=1)
    windows = [best[0].model_copy(update={"train_window_days": d}) for d in WINDOW_DAYS if d < span_days]
    for cfg, result in zip(windows, trainer.train([run(c, f"window-{c.train_window_days:g}") for c in windows],
                                                  account)):
        if (result.best_metric or 0.0) > (best[1].best_metric or 0.0):
            best = (cfg, result)
    return Fitted(best[0], best[1], best[1])


def fit_by_folds(prep: Prepared, suite: Baselines, base: TrainConfig, grid, out: Path, trainer: Trainer,
                 account: str = "") -> Fitted:
    """Where a source has no validation split: each setting trained on every fold's rest and judged on its
    held-out sessions (:func:`bench.peers.session_folds`); the best mean recall@10 wins and is
    retrained on the whole training split with the epoch budget every model of such a source gets (one
    fold is too small to pick an epoch with). That last run trains in the background (:attr:`Fitted.result`
    waits for it), so that the seed ensemble's members, judged on the slice, train beside it instead of after
    it. One 20% slice of SciFact's training claims (~160) is too small
    to choose on alone: one claim moves its recall@10 by more than 0.005, and the settings differ by a few
    hundredths. Fold 0 is the baselines' slice, so its run is the one the seed ensemble is judged against."""
    folds = session_folds(prep.parts["train"], FOLDS, seed=0)
    if not folds[0][1]["session_id"].equals(suite.valid["session_id"]):
        raise AssertionError("fold 0 must be the baselines' slice (Baselines: holdout_sessions(train, 1 / FOLDS))")
    configs = [variant_config(base, setting) for setting in grid]
    runs = [Run(fit, held, prep.corpus, cfg, out / f"{i}-fold{f}",
                None if prep.has_query_text else consumed_documents(fit))
            for i, cfg in enumerate(configs) for f, (fit, held) in enumerate(folds)]
    results = trainer.train(runs, account)
    per_setting = [results[i * len(folds):(i + 1) * len(folds)] for i in range(len(configs))]
    means = [sum(r.best_metric or 0.0 for r in rs) / len(rs) for rs in per_setting]
    i = max(range(len(configs)), key=means.__getitem__)  # ties: the first setting
    final = in_background(
        lambda: trainer.train([Run(prep.parts["train"], None, prep.corpus, configs[i], out / "final")], account)[0])
    return Fitted(configs[i], final, per_setting[i][0],
                  fold_means={setting_label(g): m for g, m in zip(grid, means)})


def in_background(work) -> Future:
    """``work()`` started in a thread of its own; the Future gives its result or raises its error."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="background")
    try:
        return pool.submit(work)
    finally:
        pool.shutdown(wait=False)  # takes no more work; the thread ends with this one


def setting_label(setting: dict) -> str:
    """A grid setting in a row's words: its leaf values (``{"model": {"pretrained_weight": 4.0}}`` -> "4")."""
    leaves = []
    for v in setting.values():
        leaves += [f"{x:g}" if isinstance(x, float) else str(x) for x in (v.values() if isinstance(v, dict) else [v])]
    return ", ".join(leaves)


def validation_data(prep: Prepared, suite: Baselines):
    """(examples trained on, examples validated on, the documents validation ranks or None for the corpus):
    the validation split, or the baselines' slice of the training sessions where a source has none."""
    if len(prep.parts["valid"]):
        return prep.parts["train"], prep.parts["valid"], prep.valid_index
    return suite.fit_train, suite.valid, None


def fit_seed_ensemble(prep: Prepared, suite: Baselines, fitted: Fitted, seeds: int, out: Path,
                      trainer: Trainer | None = None, account: str = ""):
    """(ensemble or None, what validation said): the chosen setting trained again with ``seeds - 1`` more
    seeds and the runs concatenated with equal weights, the paper's weighted-concatenation ensemble (eq. 4-6:
    one index, one inner product; members of one recipe are exchangeable, so no weight is fitted). Runs of
    one recipe differ by their initialization and example order, and their errors partly cancel. Judged like
    every setting: validation recall@10 of the concatenation against the single run's, both by
    :func:`bench.rankers.evaluate_ranker`. Where a source has no validation split the members are
    judged on the slice of the training sessions, then retrained on the whole training split if kept (None
    if not: what validation rejects is not paid for twice). Runs and validation are counted under
    ``account``."""
    from models.ensemble import WeightedConcat

    trainer = trainer or Trainer()
    fit, check, valid_index = validation_data(prep, suite)
    documents = suite.corpus

    def recall(model) -> float:
        t0 = time.perf_counter()
        try:
            return evaluate_ranker(EmbeddingRanker(model, documents), check, documents, ks=(10, 100),
                                   max_sessions=suite.max_sessions, consumed=suite.valid_consumed)["recall@10"]
        finally:
            trainer.add(account, time.perf_counter() - t0)

    configs = [fitted.config.model_copy(update={"seed": fitted.config.seed + i}) for i in range(seeds)]
    have = [fitted.validated] if fitted.validated is not None else []  # the chosen run is the first member
    validated = have + trainer.train([Run(fit, check, prep.corpus, cfg, out / str(cfg.seed), suite.valid_consumed,
                                          valid_index) for cfg in configs[len(have):]], account)
    ensemble = WeightedConcat([r.model for r in validated], [1.0] * seeds)
    single, concat = recall(validated[0].model), recall(ensemble)
    choice = {"members": f"{seeds} seeds", "validation R@10": f"{concat:.4f} vs {single:.4f} single",
              "chosen": "yes" if concat > single else "no"}
    if len(prep.parts["valid"]):  # a validation split: the members are trained on the training split
        return ensemble, choice
    if choice["chosen"] == "no":  # judged on the slice and not kept: no members on the whole split to pay for
        return None, choice
    final = trainer.train([Run(prep.parts["train"], None, prep.corpus, cfg, out / f"{cfg.seed}-final")
                           for cfg in configs[1:]], account)
    return WeightedConcat([fitted.result.model] + [r.model for r in final], [1.0] * seeds), choice


MODEL_NAMES = (*MODELS, *PRETRAINED)


def is_model(name: str) -> bool:
    """A two-tower row (a model or its seed ensemble, "unified ×3"), not a baseline's."""
    return name.split(" ×")[0] in MODEL_NAMES


def strongest_baseline(suite: Baselines, k: int = 10) -> str:
    """The baseline with the best test recall@k (for the headline only: nothing is tuned on it)."""
    rows = {n: v for n, v in suite.rows.items() if not is_model(n)}
    return max(rows, key=lambda n: rows[n]["metrics"]["all"][f"recall@{k}"])


def headline_model(suite: Baselines) -> str:
    """The unified model of the headline: with the pretrained text sub-model where the dataset runs it
    (--dense: chosen per dataset before any run, for text-heavy corpora), the hashed-text towers elsewhere;
    its seed ensemble where validation preferred it (:func:`run_dataset`)."""
    return suite.headline or headline_variant(suite.rows)


def headline_variant(names) -> str:
    """Of the model names given, the one the headline compares: unified + MiniLM where it runs, else unified."""
    return next((n for n in PRETRAINED if n in names), "unified")


def headline(results: dict[str, Baselines]) -> str:
    """One row per dataset: the models' recall, and the unified model against the strongest baseline at
    each K (which may differ between K), with the 95% interval over resampled searchers."""
    head = ["dataset", "test sessions (searchers)", "documents", "popularity", "text-only", "unified",
            "strongest baseline at R@10: unified vs it", "strongest baseline at R@100: unified vs it"]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, suite in results.items():
        def cell(method: str) -> str:
            a = suite.rows[method]["metrics"]["all"]
            return f"{a['recall@10']:.3f} / {a['recall@100']:.3f}"

        unified = headline_model(suite)
        versus = []
        for k in (10, 100):
            best = strongest_baseline(suite, k)
            value = suite.rows[best]["metrics"]["all"][f"recall@{k}"]
            versus.append(f"{best} {value:.3f}: {suite.compare(unified, best, k) if value > 0 else 'n/a'}")
        label = "" if unified == "unified" else f" ({unified})"
        searchers = suite.sessions.queries["searcher_id"].nunique()
        lines.append(f"| {LABELS.get(name, name)} | {len(suite.sessions.targets):,} ({searchers:,}) | "
                     f"{len(suite.index):,} | {cell('popularity')} | {cell('text-only')} | {cell(unified)}{label} | "
                     f"{versus[0]} | {versus[1]} |")
    return "\n".join(lines) + "\n"


def details(results: dict[str, Baselines], preps: dict[str, Prepared], seconds: dict[str, float],
            lanes: int = 1) -> str:
    out = []
    for name, suite in results.items():
        p = preps[name]
        n = " / ".join(f"{len(p.parts[s]):,}" for s in ("train", "valid", "test"))
        out += [f"### {LABELS.get(name, name)}", "",
                f"Examples train / valid / test: {n}; {p.snapshots} feature snapshots (every {p.snapshot_step_days} "
                f"days); {len(suite.sessions.targets):,} test sessions from "
                f"{suite.sessions.queries['searcher_id'].nunique():,} searchers, {suite.warm.mean():.0%} warm, "
                f"{suite.known.mean():.0%} by a searcher seen in training; "
                f"{'recommendation protocol (consumed excluded)' if suite.recommendation else 'search'}; settings "
                f"chosen on {SLICED if suite.sliced else 'the validation split'}; "
                f"prepared in {sum(p.seconds.values()):.0f} s; {seconds[name] / 60:.1f} min in all, from its turn "
                "to its last row (column 'seconds': each method's fitting, its settings' and seeds' runs included, "
                "and scoring; a model's runs are counted each in its own process, two training at a time per "
                f"dataset, while the baselines are fitted beside them{' and another dataset runs' if lanes > 1 else ''}"
                ", so that the rows add up to more than the dataset's minutes; "
                f"{f'{lanes} datasets run at a time, so that their minutes overlap (the next starts once the frozen encoder has the documents of the one before); ' if lanes > 1 else ''}"
                "each dataset is prepared in a process of its own while the ones before it run (SciFact "
                "first), and only the wait for it, if any, counts in its minutes).", "", table(suite), "",
                against_each(suite), ""]
    return "\n".join(out)


def against_each(suite: Baselines) -> str:
    """One line: the headline model's recall@10 and @100 relative to every other method, with intervals."""
    unified = headline_model(suite)
    cells = []
    for name, row in suite.rows.items():
        if name == unified:
            continue
        diffs = [str(suite.compare(unified, name, k)) if row["metrics"]["all"][f"recall@{k}"] > 0 else "n/a"
                 for k in (10, 100)]
        cells.append(f"{name} {diffs[0]}, {diffs[1]}")
    return (f"{unified} relative to each method, recall@10 and recall@100 [95% interval over resampled test "
            f"searchers]: " + "; ".join(cells) + ".")


def graded(results: dict[str, Baselines]) -> str:
    out = []
    for name, suite in results.items():
        if suite.prep.qrels is not None:
            cells = ", ".join(f"{m} {r['metrics']['all']['ndcg@10']:.3f}" for m, r in suite.rows.items())
            out.append(f"- {LABELS.get(name, name)} nDCG@10 (graded by the test qrels): {cells}.")
    return "\n".join(out)


def machine() -> str:
    import torch

    return (f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}, {datetime.now(timezone.utc):%Y-%m-%d}")


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def command() -> str:
    return "python -m bench.retrieval_quality " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def load_and_prepare(name: str, quick: bool, max_snapshots: int) -> Prepared:
    return prepare_source(name, load(name, quick), max_snapshots)


def _one_thread() -> None:
    """A preparing process takes one core: the other is the runs'."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1)


def prepared_ahead(names: list[str], args):
    """(name, a call that returns the dataset prepared) in order. With worker processes the datasets are
    prepared one after the other in a process of their own, each while the ones before it run: loading and
    preparing is single-threaded, and would otherwise leave a core idle. The call then waits for its dataset
    (and raises what its preparation raised). Closed early (an error in a dataset's runs, ^C), the
    preparation under way is terminated, not waited for. With one worker, each is prepared when its turn
    comes."""
    if args.workers == 1:
        for name in names:
            yield name, lambda name=name: load_and_prepare(name, args.quick, args.max_snapshots)
        return
    pool = get_context("spawn").Pool(1, initializer=_one_thread)
    finished = False
    try:
        pending = [pool.apply_async(load_and_prepare, (name, args.quick, args.max_snapshots)) for name in names]
        for name, result in zip(names, pending):
            yield name, result.get
        finished = True
    finally:
        if finished:
            pool.close()
        else:  # stopped early (an error, ^C): the preparation under way is not waited for
            pool.terminate()
        pool.join()


def in_flight(turn, turns, lanes: int) -> None:
    """``turn(name, prepared, let_next_start)`` for each of ``turns`` in order, ``lanes`` datasets at a time: a
    dataset starts as soon as one before it ends, so that a dataset's last lone run and its scoring share the
    cores with the next dataset's work instead of leaving one idle. Each turn calls ``let_next_start()`` once
    the work that needs the cores to itself is done (the frozen encoder's documents, encoded on every
    thread): the next dataset starts only then, or when the turn ends. The first error stops new turns
    and closes the trainers under way (their queued runs are cancelled); it is raised once the turns under
    way have ended."""
    if lanes <= 1:
        for name, prepared in turns:
            turn(name, prepared, lambda: None)
        return
    pool = ThreadPoolExecutor(lanes, thread_name_prefix="dataset")
    running: set = set()
    try:
        for name, prepared in turns:
            while len(running) >= lanes:
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    future.result()
            may_follow = threading.Event()
            future = pool.submit(turn, name, prepared, may_follow.set)
            future.add_done_callback(lambda _, ended=may_follow: ended.set())
            running.add(future)
            may_follow.wait()
            if future.done():
                future.result()  # its error, before anything else starts
        for future in as_completed(running):
            future.result()
    except BaseException:
        close_all()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_order(names: list[str]) -> list[str]:
    """The datasets in the order they run: those of :data:`RUN_FIRST` first (their preparation takes seconds,
    so that the first runs start at once while the next datasets are prepared beside them), then the others
    in the order asked."""
    return sorted(names, key=lambda n: n not in RUN_FIRST)


def main_quality(args) -> str:
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    bad = [n for n in names if n not in DATASETS + OPTIONAL]
    if bad:
        raise SystemExit(f"unknown dataset(s) {bad}; allowed: {list(DATASETS + OPTIONAL)}")
    results, preps, seconds = {}, {}, {}
    t0 = time.perf_counter()

    def turn(name: str, prepared, let_next_start) -> None:
        t = time.perf_counter()
        preps[name] = prepared()
        print(f"== {name}", flush=True)
        results[name] = run_dataset(preps[name], args, MODELS, let_next_start)
        seconds[name] = time.perf_counter() - t
        print(f"== {name} done ({seconds[name] / 60:.1f} min)", flush=True)

    in_flight(turn, prepared_ahead(run_order(names), args), args.lanes)
    total = time.perf_counter() - t0
    results = {name: results[name] for name in names}  # tabulated in the order asked
    world = "tiny" if args.quick else "default"
    text = "\n".join([
        "# Retrieval quality: two-tower models and plain baselines" + (" (quick mode)" if args.quick else ""),
        "",
        f"Command: `{command()}` ({total / 60:.1f} min, "
        f"{'1 torch thread per process' if args.workers > 1 else f'{args.threads} torch thread(s)'}); {machine()}.",
        "",
        "Test split of each dataset, by time: Last.fm its newest months, Meetup Montana, MovieLens and Meetup "
        "Chicago the newest 10% of sessions (the last two have random splits of their own, not used), the "
        "synthetic world the newest 10%; SciFact its test qrels. At most "
        f"{args.max_sessions:,} sessions, exact rankings over the index a nightly rebuild at the end of the training data would serve (every document known then or born later, through the production index selection: no group inactive for 90 days, and no event that had already started where training shows events are not clicked once started, as on Meetup: `features.corpus.served_documents`). recall@K = |top-K ∩ clicked| / |clicked| "
        "per session (eq. 1), averaged. Models: the default recipe (sampled softmax, mixed negatives B'=256 "
        "with log-Q correction; laptop-sized hashed tables, see `flows/train.py`), trained on the training split "
        f"only with early stopping on the validation split and the softmax temperature (0.05 or 0.1; the unified "
        "model 0.05) chosen on it; the unified model also tries its documents at point-in-time features "
        "(each positive as of its click, "
        "batch negatives; setting 'documents'), chosen on validation like the rest; then every model tries, on "
        "the setting chosen, training on the newest 90 days only (`TrainConfig.train_window_days`; where "
        "the training split spans more), kept where validation improves (setting 'window'). The headline model "
        f"is also trained with {args.seeds} seeds on its chosen setting and the runs concatenated with equal weights "
        f"(the paper's weighted-concatenation ensemble, one index; row 'unified ×{args.seeds}'); the headline "
        "compares the ensemble where its validation recall@10 beats the single run's. Validation ranks what a "
        "nightly at its cutoff would serve, with documents born later recomputed without the validation "
        "sessions (`bench.common.validation_index`). 'unified + MiniLM' (SciFact) adds the frozen "
        "all-MiniLM-L6-v2 sub-model, its weight (2, 4 or 8) chosen by its mean validation recall@10 over "
        f"{FOLDS} folds of the training claims (column '{FOLDS}-fold R@10') and then trained on all of them; "
        "the frozen encoder's document vectors are read from its store on disk where an earlier run left them "
        "(`models.vector_store`: row 'dense MiniLM-L6' then says how many, and its seconds omit their encoding) "
        f"(at most {args.epochs} epochs; small splits get "
        f"smaller batches and more epochs, at least {MIN_STEPS} steps: column 'batch, max epochs'); text-only = the same "
        "towers without any context input (no ids, history, profile, tags, location, social, counts, type). "
        "Recommendation datasets (no query text) follow the recommendation protocol for every method: what a "
        f"searcher clicked in training is never retrieved for it. Synthetic world: preset `{world}`, seed 0. "
        "The last two columns give the headline model's recall relative to the strongest baseline at each K "
        "and, in brackets, its 95% interval over resampled test searchers (each with all its sessions: "
        "`bench.significance.paired_bootstrap`); an interval containing 0 is a tie on this test split.",
        "",
        headline(results),
        graded(results),
        "",
        "## Every method per dataset",
        "",
        "Warm: a test session one of whose (query, clicked document) pairs occurs in training (without query "
        "text: whose clicked document anyone clicked in training); cold: the others. Known searcher: the "
        "session's searcher has training examples; new searcher: it has none. Each baseline's settings are in "
        "the second column, chosen on validation (grids in `bench/peers.py`); a model's row gives its "
        "best epoch on validation.",
        "",
        details(results, preps, seconds, args.lanes),
        "Features: every dataset goes through the same code: `examples.build.build_examples`, then "
        "`features.compute.compute_features` snapshots and `examples.build.join_features` with the as-of rule "
        "of the Feast repository (newest snapshot not after the session). The snapshots are computed in memory at "
        f"up to {args.max_snapshots} evenly spaced day ends instead of Feast's daily ones (the column 'snapshots'): "
        "Last.fm spans 2005-2011 and Meetup 2008-2016, daily snapshots cost thousands of `compute_features` "
        "calls and Feast's 7-day TTL would drop coarser ones; the in-memory join gives exactly Feast's rows on "
        "the same snapshots (tests/test_train_flow.py). Features are thus up to one period stale, never from the "
        "future. Held-out test sessions, test-marked memberships and memberships made after the training data "
        "are left out of the feature inputs. The searcher's history (recent clicks and joins) is taken as the "
        "daily snapshot would serve it at each training example's time, and as of the end of the training data "
        "for held-out sessions (`examples.build.add_history`). A searcher's or document's own fields "
        "(location, profile, title, body, type) fill the gap where no snapshot preceded a session; their "
        "aggregates stay missing. Positives are embedded from the document table like every sampled negative "
        "(`models.batches`). The index: each document's newest snapshot up to the end of the training data, "
        "documents born later with their first snapshot (`features.corpus.index_documents`).",
        "",
    ])
    write(RESULTS / ("retrieval_quality_quick.md" if args.quick else "retrieval_quality.md"), text)
    return text


def main_compare(args) -> str:
    t0 = time.perf_counter()
    prep = prepare("synthetic", load("synthetic", args.quick), max_snapshots=args.max_snapshots)
    test = prep.parts["test"]
    table = compare_models(prep.parts["train"], prep.parts["valid"], test, prep.corpus, REPORT_VARIANTS,
                           base=base_config(args), index=prep.index, max_sessions=args.max_sessions,
                           valid_index=prep.valid_index)
    base = {"popularity": evaluate_ranker(Popularity(prep.parts["train"], prep.index), test, prep.index,
                                          max_sessions=args.max_sessions),
            "BM25 (title + body)": evaluate_ranker(BM25(prep.index), test, prep.index,
                                                   max_sessions=args.max_sessions)}
    full = pd.concat([table, pd.DataFrame(base).T])
    total = time.perf_counter() - t0
    print(full[["recall@1", "recall@10", "recall@50", "recall@100", "mrr"]].round(4).to_string(), flush=True)
    world = "tiny" if args.quick else "default"
    text = "\n".join([
        "# The unified embedding model: comparison on the synthetic world" + (" (quick mode)" if args.quick else ""),
        "",
        f"Command: `{command()}` ({total / 60:.1f} min, {args.threads} torch thread(s)); {machine()}.",
        "",
        f"Synthetic world preset `{world}` (seed 0): {len(prep.parts['train']):,} training / "
        f"{len(prep.parts['valid']):,} validation examples, {int(table.iloc[0]['n_sessions']):,} test sessions "
        f"(the newest 10%), {len(prep.index):,} documents in the index, exact KNN. Every row is trained on the "
        f"same examples with the same seed, early-stopped on validation recall@10 (at most {args.epochs} epochs); "
        "each changes one thing of the default recipe (first row). `recall@10 vs ref` is relative to the first "
        "row. The last two model rows add 4 per-example negatives per click next to the single hardest batch "
        "negative: drawn uniformly from the corpus vs taken from the session's non-clicked impressions.",
        "",
        comparison_markdown(full),
    ])
    write(RESULTS / ("model_comparison_quick.md" if args.quick else "model_comparison.md"), text)
    return text


def main_ablation(args) -> str:
    """:data:`bench.comparison.FEATURE_ABLATION` on each dataset: what every input is worth."""
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    t0 = time.perf_counter()
    sections = []
    for name in names:
        print(f"== {name}", flush=True)
        prep = prepare_source(name, load(name, args.quick), args.max_snapshots)
        valid = prep.parts["valid"] if len(prep.parts["valid"]) else None
        consumed = None if prep.has_query_text else consumed_documents(prep.parts["train"])
        table = compare_models(prep.parts["train"], valid, prep.parts["test"], prep.corpus, FEATURE_ABLATION,
                               base=base_config(args, len(prep.parts["train"])), index=prep.index,
                               max_sessions=args.max_sessions, qrels=prep.qrels, consumed=consumed,
                               valid_index=prep.valid_index if valid is not None else None)
        print(table[["valid_metric", "recall@10", "recall@100"]].round(4).to_string(), flush=True)
        lines = ["| variant | validation recall@10 | recall@10 | recall@100 | best epoch |", "|---|---:|---:|---:|---:|"]
        for variant, row in table.iterrows():
            v = "n/a" if row["valid_metric"] is None or pd.isna(row["valid_metric"]) else f"{row['valid_metric']:.4f}"
            lines.append(f"| {variant} | {v} | {row['recall@10']:.4f} | {row['recall@100']:.4f} | {int(row['best_epoch'])} |")
        sections += [f"## {LABELS.get(name, name)}", "", "\n".join(lines), ""]
    total = time.perf_counter() - t0
    text = "\n".join([
        "# Feature ablation of the unified model" + (" (quick mode)" if args.quick else ""), "",
        f"Command: `{command()}` ({total / 60:.1f} min, {args.threads} torch thread(s)); {machine()}.", "",
        "Same preparation, splits and protocol as `retrieval_quality.md` (temperature 0.05); every row trained on "
        "the same examples with the same seed and early-stopped on validation; each switches one input off. "
        "Small validation splits (Meetup Montana: 765 examples) make rows noisy: read the validation column "
        "before the test ones.", "", *sections,
    ])
    write(RESULTS / ("feature_ablation_quick.md" if args.quick else "feature_ablation.md"), text)
    return text


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default=",".join(DATASETS),
                    help=f"comma-separated, from {list(DATASETS + OPTIONAL)} (default: {','.join(DATASETS)})")
    ap.add_argument("--quick", action="store_true", help="tiny synthetic world, 2 epochs, 2,000 test sessions")
    ap.add_argument("--compare", action="store_true", help="run the model comparison on the synthetic world instead")
    ap.add_argument("--ablation", action="store_true",
                    help="switch each input of the unified model off in turn, on --datasets (feature_ablation.md)")
    ap.add_argument("--epochs", type=int, default=None, help="max epochs per model (default 6, quick 2)")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads for training and for the pretrained encoder (default 2)")
    ap.add_argument("--seeds", type=int, default=3,
                    help="seeds of the headline model's ensemble (weighted concatenation); 1: no ensemble")
    ap.add_argument("--workers", type=int, default=2,
                    help="processes that train independent runs (settings, folds, seeds) side by side, 1 torch "
                         "thread each (default 2; 1: one after the other with --threads)")
    ap.add_argument("--lanes", type=int, default=None,
                    help="datasets run at a time, their runs sharing the cores (default 2 with --workers > 1, "
                         "else 1)")
    ap.add_argument("--max-sessions", type=int, default=None, help="held-out sessions evaluated (default 10,000)")
    ap.add_argument("--max-snapshots", type=int, default=None, help="feature snapshots per dataset (default 24)")
    ap.add_argument("--no-progress", action="store_true", help="no training progress bars")
    ap.add_argument("--dense", default="scifact",
                    help="datasets that get the pretrained sentence encoder and its fusion with BM25 (default scifact)")
    args = ap.parse_args(argv)
    args.lanes = args.lanes if args.lanes is not None else (2 if args.workers > 1 else 1)
    if min(args.seeds, args.threads, args.workers, args.lanes) < 1:
        ap.error("--seeds, --threads, --workers and --lanes must be at least 1")
    import torch

    # the pretrained encoder's threads (training sets its own per run); with datasets side by side every
    # core is busy anyway, and the parent's work of one dataset takes one thread
    torch.set_num_threads(1 if args.lanes > 1 else args.threads)
    args.dense = {n.strip() for n in args.dense.split(",") if n.strip()}
    args.epochs = args.epochs or (2 if args.quick else 6)
    args.max_sessions = args.max_sessions or (2_000 if args.quick else 10_000)
    args.max_snapshots = args.max_snapshots or (8 if args.quick else 24)
    os.environ.setdefault("EBR_HOME", tempfile.mkdtemp(prefix="ebr-bench-"))  # nothing lands in the project
    # the frozen encoder's document vectors outlive the run (a pure function of the text: models.vector_store)
    os.environ.setdefault("EBR_ENCODER_STORE", str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                                                   / "ebr" / "encoders"))
    print(main_compare(args) if args.compare else main_ablation(args) if args.ablation else main_quality(args))


if __name__ == "__main__":
    main()
