"""The ``ebr`` command line: thin wrappers over the typed functions of the other packages.

Heavy imports (torch, feast, prefect) happen inside the commands so that ``ebr --help`` stays fast.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

import typer

from cli.runtime import Cli, prepare_flow_command, quiet_console

app = Cli(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Embedding-based retrieval: data, features, training, index and search.",
)


FLOW_COMMANDS = {"materialize", "training-data", "train", "mine", "ensemble", "evaluate", "nightly", "demo",
                 "rebuild-index"}


@app.callback()
def _options(ctx: typer.Context,
             debug: bool = typer.Option(False, "--debug", help="show full tracebacks on errors")) -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry from a laptop tool
    if debug:
        os.environ["EBR_DEBUG"] = "1"
    if ctx.invoked_subcommand == "demo" and not debug:
        quiet_console()  # the demo's output is its tables and progress bars; runs keep their logs in Prefect
    if ctx.invoked_subcommand in FLOW_COMMANDS:
        prepare_flow_command(debug)


def _settings():
    from infra.settings import get_settings

    return get_settings()


def _invalid(exc: Exception) -> typer.BadParameter:
    """One readable line from a pydantic ValidationError (or any ValueError)."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return typer.BadParameter(str(exc))
    parts = []
    for e in errors():
        where = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return typer.BadParameter("; ".join(parts))


def _human_size(path: Path) -> str:
    total: float = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    for unit in ("B", "KiB", "MiB", "GiB"):
        if total < 1024 or unit == "GiB":
            return f"{total:.1f} {unit}" if unit != "B" else f"{total} B"
        total /= 1024
    return f"{total:.1f} GiB"


def _print_counts(manifest, path: Path, seconds: float) -> None:
    counts = ", ".join(f"{k}={v:,}" for k, v in manifest.row_counts.items())
    typer.echo(f"wrote {path} ({_human_size(path)}) in {seconds:.1f}s: {counts}")


@app.command()
def generate(
    preset: str = typer.Option("default", help="world size: tiny, default, large or 1m"),
    seed: int = typer.Option(0, help="random seed (same seed, same world)"),
    name: Optional[str] = typer.Option(None, help="dataset name (default: synthetic-<preset>)"),
    force: bool = typer.Option(False, "--force", help="replace a dataset of that name generated otherwise"),
) -> None:
    """Generate the synthetic social-search world and write it as a canonical dataset. The same preset and
    seed give the same world, so writing it again changes nothing; a dataset of that name made otherwise (its
    features, models and indexes describe it) is replaced only with --force."""
    from ingest.contract import MANIFEST, read_manifest, write_dataset
    from ingest.synthetic import WorldConfig, generate_world

    try:
        config = WorldConfig.preset(preset).model_copy(update={"seed": seed})
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--preset") from None
    try:
        target = _settings().dataset_path(name if name is not None else f"synthetic-{preset}")
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--name") from None
    params = config.model_dump(mode="json")
    if (target / MANIFEST).exists() and not force:
        existing = read_manifest(target)
        if existing.source != "synthetic" or existing.params != params:
            typer.echo(f"error: dataset {target.name!r} already exists ({existing.source}, "
                       f"{'other parameters' if existing.source == 'synthetic' else 'another source'}) and its "
                       "features, models and indexes describe it; pass --force to replace it, or choose --name",
                       err=True)
            raise typer.Exit(2)
    start = time.perf_counter()
    world = generate_world(config)
    manifest = write_dataset(world, target, source="synthetic", params=params)
    _print_counts(manifest, target, time.perf_counter() - start)


@app.command()
def ingest(
    source: str = typer.Argument(..., help="lastfm, meetup_montana, meetup_chicago, movielens or scifact"),
    datasets_dir: Optional[Path] = typer.Option(
        None, help="where the public datasets are (default: EBR_DATASETS_DIR or ../shared/datasets)"
    ),
) -> None:
    """Turn a real public dataset into the canonical tables."""
    from ingest.contract import write_dataset
    from ingest.datasets import ADAPTERS, load_source

    if source not in ADAPTERS:
        raise typer.BadParameter(f"unknown source {source!r}; one of {sorted(ADAPTERS)}")
    start = time.perf_counter()
    try:
        dataset = load_source(source, datasets_dir)
    except FileNotFoundError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    target = _settings().dataset_path(source)
    manifest = write_dataset(dataset, target, source=source)
    _print_counts(manifest, target, time.perf_counter() - start)


@app.command("datasets")
def list_datasets() -> None:
    """List the canonical datasets written so far, with their row counts."""
    from ingest.contract import MANIFEST, DatasetManifest

    root = _settings().data_dir
    found = sorted(p for p in root.glob("*") if (p / MANIFEST).exists()) if root.exists() else []
    if not found:
        typer.echo(f"no datasets under {root}; create one with 'ebr generate' or 'ebr ingest'")
        return
    for p in found:
        m = DatasetManifest.from_json((p / MANIFEST).read_text())
        counts = ", ".join(f"{k}={v:,}" for k, v in m.row_counts.items())
        typer.echo(f"{p.name:24s} {m.source:12s} {m.created_at}  {counts}")


def _parse_day(value: Optional[str], name: str):
    from datetime import date

    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"expected YYYY-MM-DD, got {value!r}", param_hint=name) from None


def explicit_split(test_start, valid_start):
    """The split of explicit cutoff days (midnight UTC); a given test cutoff replaces a source's own split."""
    from datetime import datetime, time, timezone

    from examples.splits import SplitConfig

    at = lambda d: None if d is None else datetime.combine(d, time.min, tzinfo=timezone.utc)  # noqa: E731
    try:
        return SplitConfig(test_start=at(test_start), valid_start=at(valid_start),
                           use_source_split=test_start is None)
    except ValueError as e:  # pydantic's ValidationError: valid_start must come before test_start
        message = e.errors()[0]["msg"] if hasattr(e, "errors") else str(e)
        raise typer.BadParameter(message, param_hint="--valid-start") from None


@app.command()
def materialize(
    dataset: str = typer.Option("synthetic-default", help="canonical dataset (see 'ebr datasets')"),
    start: Optional[str] = typer.Option(None, help="first day YYYY-MM-DD (default: yesterday)"),
    end: Optional[str] = typer.Option(None, help="last day YYYY-MM-DD (default: the start day)"),
    every_days: int = typer.Option(1, min=1, max=7, help="snapshot cadence of a backfill"),
    accept_changes: bool = typer.Option(
        False, "--accept-changes", help="accept row-count and drift changes of the canonical tables against "
        "the previous run (a real change); the gate report records them"),
    full_online: bool = typer.Option(
        False, "--full-online", help="write every entity to the online store, not only those that changed "
        "since the snapshot it holds"),
    partitions: int = typer.Option(
        1, min=1, max=256, help="compute the days as this many mapped tasks (whole community periods each); "
        "they run on a Dask cluster when EBR_DASK_ADDRESS is set"),
) -> None:
    """Compute feature snapshots for a range of days and load them into Feast (a backfill when dated)."""
    from flows.materialize import materialize as flow
    from validation.suites import GateConfig

    gates = GateConfig(accept_changes=True) if accept_changes else None
    report = flow(dataset, _parse_day(start, "--start"), _parse_day(end, "--end"), every_days, gates=gates,
                  full_online=full_online, partitions=partitions)
    typer.echo(f"materialized {len(report.days)} snapshot(s) of {dataset} into {report.root}")
    for o in report.online:
        typer.echo(f"online store: {o.entity} snapshot {o.day}: {o.written:,} of {o.rows:,} written "
                   f"({'full' if o.full else 'changes only'}: {o.reason}) in {o.seconds:.1f} s")


@app.command("training-data")
def training_data(
    dataset: str = typer.Option("synthetic-default", help="canonical dataset"),
    end: Optional[str] = typer.Option(None, help="last day of sessions YYYY-MM-DD (default: all)"),
    accept_changes: bool = typer.Option(
        False, "--accept-changes", help="accept row-count and drift changes against the previous run (a real "
        "change); the gate report records them"),
    test_start: Optional[str] = typer.Option(
        None, help="explicit time cutoff YYYY-MM-DD: sessions from this day on are held out for test (replaces "
        "the newest-10%% rule and a source's own split; features and index are evaluated as of it)"),
    valid_start: Optional[str] = typer.Option(
        None, help="training sessions from this day on are the validation split (default: the newest 10%%)"),
) -> None:
    """Build point-in-time training examples behind the Great Expectations gate and publish them."""
    from flows.training_data import TrainingDataParams
    from flows.training_data import training_data as flow
    from validation.gate import GateFailed
    from validation.suites import GateConfig

    split = explicit_split(_parse_day(test_start, "--test-start"), _parse_day(valid_start, "--valid-start"))
    try:
        params = TrainingDataParams(gates=GateConfig(accept_changes=accept_changes), split=split)
        ref = flow(dataset, end_date=_parse_day(end, "--end"), params=params)
    except GateFailed as exc:
        typer.echo(f"the training data did not pass the gate; nothing was published:\n{exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"published {ref}")


@app.command()
def train(
    dataset: str = typer.Option("synthetic-default", help="dataset whose published examples to use"),
    pretrained_text: Optional[str] = typer.Option(
        None, help="add a frozen pretrained text encoder to the towers (all-MiniLM-L6-v2; for text-heavy "
        "corpora; needs the 'pretrained' extra, ~8 ms per online query)",
    ),
    pretrained_weight: float = typer.Option(4.0, min=0.01, max=100.0, help="its weight in the concatenation"),
    epochs: Optional[int] = typer.Option(
        None, min=1, max=1000, help="most epochs (default: the recipe's 6; early stopping on validation may "
        "stop sooner): the training budget of a large corpus"),
    window_days: Optional[float] = typer.Option(
        None, min=0.01, help="train on the newest N days of the training split only (default: all of it): "
        "where tastes drift, recent clicks predict the next ones better; compare on validation"),
    seed: int = typer.Option(
        0, min=0, help="random seed of the initialization and example order: runs of one recipe with other "
        "seeds, registered under their own --model-name, make a seed ensemble (ebr ensemble --members "
        "unified,NAME,...; the aliases seed1, seed2, ... train them)"),
    model_name: Optional[str] = typer.Option(None, help="register under this name (default: <dataset>-two-tower)"),
) -> None:
    """Train the unified two-tower model, evaluate it on held-out sessions and register it."""
    from infra.names import InvalidNameError, check_name
    from models.pretrained import ENCODERS

    if model_name is not None:
        try:
            check_name(model_name, "model name")
        except InvalidNameError as exc:
            raise typer.BadParameter(str(exc), param_hint="--model-name") from None
    if pretrained_text is not None and pretrained_text not in ENCODERS:
        raise typer.BadParameter(f"unknown encoder {pretrained_text!r}; known: {', '.join(ENCODERS)}",
                                 param_hint="--pretrained-text")
    from flows.train import TrainParams, laptop_config
    from flows.train import train as flow

    cfg = laptop_config()
    if pretrained_text is not None:
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(
            update={"pretrained_text": pretrained_text, "pretrained_weight": pretrained_weight})})
    if epochs is not None:
        cfg = cfg.model_copy(update={"epochs": epochs})
    if window_days is not None:
        cfg = cfg.model_copy(update={"train_window_days": window_days})
    cfg = cfg.model_copy(update={"seed": seed})
    typer.echo(f"registered {flow(dataset, TrainParams(config=cfg, model_name=model_name))}")


@app.command()
def mine(
    dataset: str = typer.Option("synthetic-default", help="dataset whose current model starts the rounds"),
    rounds: int = typer.Option(2, min=1, max=20, help="mining rounds at most (stops earlier without a gain)"),
    strategy: str = typer.Option("window", help="window (sample ranks in --window) or hardest"),
    window: str = typer.Option("101-500", help="ranks to sample hard negatives from, FIRST-LAST"),
    ratio: float = typer.Option(100.0, min=0.01, help="easy:hard negatives per example in training"),
    transfer: str = typer.Option("easy_to_hard", help="easy_to_hard, or hard_to_easy (then an easy phase)"),
    no_promote: bool = typer.Option(False, "--no-promote", help="do not make the best round the current model"),
) -> None:
    """Offline hard-negative mining rounds: mine, gate, retrain, evaluate; register the best round."""
    from pydantic import ValidationError

    lo, _, hi = window.partition("-")
    if not (lo.strip().isdigit() and hi.strip().isdigit()):
        raise typer.BadParameter(f"--window must be FIRST-LAST ranks, e.g. 101-500; got {window!r}")
    try:
        from flows.mine import MineParams
        from models.mining import MiningConfig

        params = MineParams(rounds=rounds, mining=MiningConfig(strategy=strategy, rank_window=(int(lo), int(hi))),
                            easy_hard_ratio=ratio, transfer=transfer, promote=not no_promote)
    except (ValueError, ValidationError) as exc:
        raise _invalid(exc) from None
    from flows.mine import mine as flow
    from validation.gate import GateFailed

    try:
        ref = flow(dataset, params)
    except GateFailed as exc:
        typer.echo(f"the mined examples did not pass the gate; nothing was trained on them:\n{exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"best model: {ref}")


@app.command()
def ensemble(
    dataset: str = typer.Option("synthetic-default"),
    kind: str = typer.Option("weighted_concat", help="weighted_concat or cascade"),
    members: Optional[str] = typer.Option(
        None, help="comma-separated registered model names or the aliases unified, text, hnm and seedN (the "
        "unified recipe with seed N; unified,seed1,seed2 is a seed ensemble; default: unified,hnm for "
        "weighted_concat; text,unified for cascade)"),
    promote: bool = typer.Option(False, help="also make the ensemble the dataset's current two-tower model"),
) -> None:
    """Fit a weighted-concat or cascade ensemble on validation data, evaluate it and register it."""
    from pydantic import ValidationError

    try:
        from flows.ensemble import EnsembleParams

        names = tuple(m.strip() for m in members.split(",") if m.strip()) if members else ()
        params = EnsembleParams(kind=kind, members=names, promote=promote)
        params.member_list()
    except (ValueError, ValidationError) as exc:
        raise _invalid(exc) from None
    from flows.ensemble import ensemble as flow

    ref = flow(dataset, params)
    typer.echo(f"registered {ref}; serve it with: ebr rebuild-index --dataset {dataset} "
               f"--model-name {params.model_name or dataset + '-ensemble'}")


@app.command()
def evaluate(
    dataset: str = typer.Option("synthetic-default"),
    model_name: Optional[str] = typer.Option(None, help="registered model (default: <dataset>-two-tower)"),
    model_version: Optional[str] = typer.Option(None, help="a registered version (default: the current one)"),
    split: str = typer.Option("test", help="valid or test"),
) -> None:
    """Evaluate a registered model on a held-out split (recall@K with exact KNN)."""
    from flows.evaluate import evaluate as flow
    from infra.names import default_model_name
    from models.evaluate import metrics_table

    metrics = flow(dataset, model_name=model_name, model_version=model_version, split=split)
    typer.echo(metrics_table({model_name or default_model_name(dataset): metrics}))


@app.command()
def nightly(
    dataset: str = typer.Option("synthetic-default"),
    start: Optional[str] = typer.Option(None, help="first day YYYY-MM-DD (default: yesterday)"),
    end: Optional[str] = typer.Option(None, help="last day YYYY-MM-DD"),
    every_days: int = typer.Option(1, min=1, max=7, help="snapshot cadence of a backfill"),
    retrain: str = typer.Option("auto", help="auto (weekly or when no model), always or never"),
    accept_changes: bool = typer.Option(
        False, "--accept-changes", help="accept changes against the previous run (data gate drift and row "
        "counts, a drop of indexed documents): an operator's decision, recorded in the reports"),
    report_json: Optional[Path] = typer.Option(
        None, "--report-json", help="also write the run's report (steps with wall time and peak memory, "
        "metrics) as JSON to this file"),
) -> None:
    """The nightly chain: materialize, validate, retrain when due, rebuild the index, evaluate."""
    if retrain not in ("auto", "always", "never"):
        raise typer.BadParameter(f"expected auto, always or never, got {retrain!r}", param_hint="--retrain")
    first, last = _parse_day(start, "--start"), _parse_day(end, "--end")  # before the slow imports
    from flows.nightly import nightly as flow

    report = flow(dataset, first, last, every_days, retrain, accept_changes=accept_changes)
    typer.echo(report.to_markdown())
    if report_json is not None:
        report_json.write_text(report.model_dump_json(indent=1))


@app.command()
def demo(
    preset: str = typer.Option("default", help="size of the synthetic world: tiny or default"),
    searches: int = typer.Option(3, min=0, max=20, help="example searches to run at the end"),
) -> None:
    """The end-to-end job on the embedded default: world, features, gated examples, training, evaluation,
    a validated index, and a few searches."""
    from datetime import timedelta

    from flows.nightly import nightly as nightly_flow
    from infra.storage import ArtifactStore
    from ingest.synthetic import WorldConfig

    start = time.perf_counter()
    generate(preset=preset, seed=0, name=None, force=False)
    dataset = f"synthetic-{preset}"
    world = WorldConfig.preset(preset)
    first, last = world.start.date(), (world.end - timedelta(days=1)).date()
    # A weekly backfill of the world's weeks, then one retrain and one index rebuild at its end (the production
    # index selection: features.index_selection.SelectionConfig's defaults).
    report = nightly_flow(dataset, first, last, every_days=7, retrain="always")
    typer.echo("")
    typer.echo(report.to_markdown())
    typer.echo(f"index published in the artifact store {ArtifactStore.from_settings().backend.describe()} as {report.index}")
    if searches:
        _example_searches(dataset, searches)
    typer.echo(f"\ndemo finished in {time.perf_counter() - start:.0f}s; try: ebr search --dataset {dataset} "
               f"--searcher <id> \"<query>\"")


def _describe_index(retriever) -> None:
    """What index selection kept, and what was built: from the manifest published with the index."""
    from features.index_selection import SelectionReport

    m = retriever.manifest
    typer.echo(SelectionReport.model_validate(m.selection).to_markdown())
    v = m.validation
    typer.echo(f"index: {m.stats.get('kind')} over {m.counts.get('indexed', 0):,} documents; "
               f"ANN recall@{v.get('k', 10)} vs exact search {v.get('recall_at_k', float('nan')):.3f}")


def _example_searches(dataset: str, n: int) -> None:
    """Replay a few of the newest sessions whose clicked document is in the index (marked with *)."""
    from ingest.contract import read_table
    from serving.retriever import Retriever

    retriever = Retriever.load(dataset)
    _describe_index(retriever)
    sessions = read_table(_settings().dataset_path(dataset), "sessions").tail(2000)
    sessions = sessions[(sessions["query"].fillna("") != "") & (sessions["clicked"].map(len) > 0)]
    sessions = sessions[sessions["clicked"].map(lambda c: len(retriever.positions_of(c)) > 0)]
    for row in sessions.sample(n=min(n, len(sessions)), random_state=0).itertuples():
        found = retriever.retrieve(row.query, row.searcher_id, k=5)
        typer.echo(f"\nsearcher {row.searcher_id} typed {row.query!r} (clicked {', '.join(row.clicked)}):")
        for c in found:
            mark = "*" if c.doc_id in row.clicked else " "
            typer.echo(f"  {mark} {c.rank:>2}  {c.score:.3f}  {c.doc_id:<10} {c.title}")


@app.command()
def search(
    query: str = typer.Argument(..., help="the query text, e.g. \"runners club\""),
    dataset: str = typer.Option("synthetic-default", help="dataset whose published index to search"),
    searcher: str = typer.Option(..., "--searcher", help="searcher id (its features come from the online store)"),
    k: int = typer.Option(10, "--k", min=1, max=10_000, help="number of candidates (the cap in radius mode)"),
    radius: Optional[float] = typer.Option(
        None, min=-1.0, max=1.0, help="cosine threshold: only documents scoring >= radius"
    ),
    nprobe: Optional[int] = typer.Option(None, min=1, help="IVF lists to scan (default: the index's)"),
    hybrid: bool = typer.Option(
        False, "--hybrid", help="hybrid retrieval: the searcher's location and social terms AND (text terms OR nn)"),
    expr: Optional[str] = typer.Option(
        None, "--expr", help="a query-language expression, e.g. \"(and (term location:seattle) (nn default :k 50))\"; "
        "its nn operators embed QUERY"),
    scope: str = typer.Option(
        "location,cluster", help="--hybrid: the searcher's terms that constrain both branches, comma-separated "
        "(location, region, country, cluster; \"\" for none)"),
) -> None:
    """Retrieve candidate documents for a query typed by a searcher, with their cosine scores."""
    from pydantic import ValidationError

    from serving.errors import RetrievalError
    from serving.hybrid import HybridConfig
    from serving.query import QuerySyntaxError, parse
    from serving.retriever import Retriever

    try:
        hybrid_config = HybridConfig(scope=tuple(f.strip() for f in scope.split(",") if f.strip()))
    except ValidationError as exc:
        raise _invalid(exc) from None
    if expr is not None:
        try:
            parse(expr)  # a typo is reported before the slow load
        except QuerySyntaxError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
    try:
        retriever = Retriever.load(dataset, threads=1)
        start = time.perf_counter()
        if hybrid or expr is not None:
            result = retriever.search(query, searcher, k=k, expression=expr, config=hybrid_config)
            found, mode = result.candidates, f"hybrid, {result.matched} matched: {result.expression}"
        else:
            found = retriever.retrieve(query, searcher, k=k, radius=radius, nprobe=nprobe)
            mode = f"radius {radius}" if radius is not None else f"top {k}"
        ms = (time.perf_counter() - start) * 1000
    except (RetrievalError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{len(found)} candidates ({mode}) from {retriever.version.ref} in {ms:.1f} ms")
    if found:
        width = max(len(c.doc_id) for c in found)
        typer.echo(f"{'rank':>4}  {'score':>7}  {'via':<4}  {'doc_id':<{width}}  title")
        for c in found:
            typer.echo(f"{c.rank:>4}  {c.score:>7.4f}  {c.source:<4}  {c.doc_id:<{width}}  {c.title}")


@app.command()
def serve(
    dataset: str = typer.Option("synthetic-default", help="dataset whose current published index to serve"),
    host: str = typer.Option("127.0.0.1", help="interface to listen on (beyond loopback: set EBR_SERVE_TOKEN)"),
    port: int = typer.Option(8000, min=1, max=65535),
    workers: int = typer.Option(1, min=1, max=256, help="worker processes, each with its own copy of the index"),
    max_queue: int = typer.Option(64, min=1, max=100_000,
                                  help="requests a worker admits (running or waiting); beyond: 503 + Retry-After"),
    poll_seconds: float = typer.Option(5.0, min=0.5, max=3600, help="how often to look for a new index version"),
    timeout: float = typer.Option(2.0, min=0.01, max=60, help="per-request deadline in seconds"),
    body_timeout: float = typer.Option(5.0, min=0.01, max=600, help="seconds to receive a request body"),
    version: Optional[str] = typer.Option(None, help="serve this index version and never swap (default: current)"),
    access_log: bool = typer.Option(True, "--access-log/--no-access-log", help="one JSON line per request"),
    insecure: bool = typer.Option(False, "--insecure", help="serve a non-loopback address without a token"),
) -> None:
    """Serve hybrid retrieval over HTTP: POST /search, POST /search/batch, GET /healthz, /version, /livez,
    /readyz, /metrics; new index versions are swapped in as they are published."""
    import os
    import tempfile

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # before FAISS loads: no OpenMP team spinning per request
    import uvicorn

    from serving.errors import RetrievalError
    from serving.service import CONFIG_ENV, ServeConfig, check_exposure, create_app, serve_token, state_for

    config = ServeConfig(dataset=dataset, host=host, port=port, workers=workers,
                         max_queue=max_queue, request_timeout=timeout, body_timeout=body_timeout,
                         poll_seconds=poll_seconds, version=version, access_log=access_log, insecure=insecure)
    token = serve_token()
    try:
        check_exposure(config, token)
        state = state_for(dataset, poll_seconds, pinned=version)
        state.start()  # in this process first: a bad store or version fails here, before any worker starts
    except RetrievalError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    assert state.served is not None  # start() serves a version or raises
    typer.echo(f"serving {state.served.retriever.version.ref} on http://{host}:{port} with {workers} worker(s)"
               + ("" if token else " (no token)"))
    if workers == 1:
        uvicorn.run(create_app(state, config=config, token=token, on_close=state.stop), host=host, port=port,
                    log_level="info", access_log=False)
        return
    state.stop()
    del state  # each worker loads its own copy
    os.environ[CONFIG_ENV] = config.model_dump_json()
    # the workers' metric files: a directory of this run's own (Feast, imported above, points the variable at
    # a directory of its own; the workers read it when they start)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="ebr-serve-metrics-")
    uvicorn.run("serving.service:app_from_env", factory=True, workers=workers, host=host, port=port,
                log_level="info", access_log=False)


@app.command("rebuild-index")
def rebuild_index_command(
    dataset: str = typer.Option("synthetic-default", help="dataset to index"),
    model_name: Optional[str] = typer.Option(None, help="registered model (default: <dataset>-two-tower)"),
    as_of: Optional[str] = typer.Option(None, help="YYYY-MM-DD: index as of the end of this day (default: newest)"),
    kind: str = typer.Option("auto", help="index kind: auto, flat or ivfpq"),
    nprobe: Optional[int] = typer.Option(
        None, min=1, help="default IVF lists scanned per query (default: tuned, the least meeting --target-recall)"),
    min_recall: float = typer.Option(0.9, min=0.0, max=1.0, help="least ANN recall@10 vs exact search to publish"),
    target_recall: Optional[float] = typer.Option(
        None, min=0.0, max=1.0, help="ANN tuning target (default: min-recall + 0.01)"),
    tune: bool = typer.Option(True, "--tune/--no-tune", help="choose nprobe from a measured recall/cost curve"),
    max_drop: float = typer.Option(
        0.2, min=0.0, max=1.0, help="largest share of documents (overall, per type) the new version may lose"),
    accept_drop: bool = typer.Option(
        False, "--accept-drop",
        help="publish despite a larger drop of documents, ANN recall or held-out recall (a real change); "
        "recorded in the report"),
    accept_changes: bool = typer.Option(
        False, "--accept-changes", help="accept drift and row-count changes of the documents table against the "
        "previous rebuild (a real change); the gate report records them"),
) -> None:
    """Rebuild, validate and publish the document index (the nightly flow, run now)."""
    from datetime import date

    from pydantic import ValidationError

    from ann.index import IndexConfig
    from ann.tuning import TuningConfig
    from features.corpus import CorpusError
    from flows.rebuild_index import RebuildParams, rebuild_index
    from infra.storage import ArtifactNotFoundError
    from serving.index_validation import IndexValidationError, ValidationConfig
    from validation.suites import GateConfig

    try:
        day = date.fromisoformat(as_of) if as_of else None
        params = RebuildParams(
            index=IndexConfig(kind=kind, nprobe=nprobe),
            validation=ValidationConfig(min_recall=min_recall, max_drop=max_drop, accept_drop=accept_drop),
            tuning=TuningConfig(enabled=tune, target_recall=target_recall),
            gates=GateConfig(accept_changes=accept_changes),
        )
    except (ValueError, ValidationError) as exc:
        raise typer.BadParameter(str(exc)) from None
    try:
        ref = rebuild_index(dataset=dataset, model_name=model_name, as_of=day, params=params)
    except IndexValidationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except (FileNotFoundError, CorpusError, ArtifactNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"published {ref}")


# --------------------------------------------------------------------------- versions

versions_app = Cli(no_args_is_help=True, pretty_exceptions_enable=False,
                    help="Artifact versions (datasets, models, indexes) on the local or an S3 store.")
app.add_typer(versions_app, name="versions")


def _store(url: Optional[str]):
    from infra.storage import ArtifactStore

    if url is None:
        return ArtifactStore.from_settings()
    s = _settings()
    return ArtifactStore.from_url(url, s.s3_endpoint_url, s.s3_region)


STORE_OPT = typer.Option(None, "--store", help="a directory or s3://bucket/prefix (default: EBR_STORAGE_URL)")


@versions_app.command("list")
def versions_list(kind: Optional[str] = typer.Argument(None, help="dataset, model or index"),
                  name: Optional[str] = typer.Argument(None), store: Optional[str] = STORE_OPT) -> None:
    """Without arguments every artifact and its current version; with KIND NAME its versions, oldest first."""
    st = _store(store)
    if kind is None:
        for k in st.list_kinds():
            for n in st.list_names(k):
                cur = st.current(k, n)
                typer.echo(f"{k}/{n}  current {cur.version if cur else '-'}  ({len(st.list_versions(k, n))} versions)")
        return
    if name is None:
        raise typer.BadParameter("give NAME with KIND (e.g. ebr versions list model synthetic-default-two-tower)")
    cur = st.current(kind, name)
    for av in st.list_versions(kind, name):
        mark = "*" if cur is not None and av.version == cur.version else " "
        typer.echo(f"{mark} {av.version}  {av.created_at}  {av.total_size / 1e6:9.1f} MB  {len(av.files)} files")


@versions_app.command("show")
def versions_show(kind: str, name: str, version: Optional[str] = typer.Argument(None, help="default: current"),
                  store: Optional[str] = STORE_OPT) -> None:
    """The manifest of a version (files, checksums, metadata) as JSON."""
    import json

    typer.echo(json.dumps(_store(store).get(kind, name, version).to_json(), indent=1, sort_keys=True))


@versions_app.command("current")
def versions_current(kind: str, name: str, store: Optional[str] = STORE_OPT) -> None:
    """The ref of the current version."""
    typer.echo(_store(store).get(kind, name).ref)


@versions_app.command("rollback")
def versions_rollback(kind: str, name: str, version: str, store: Optional[str] = STORE_OPT) -> None:
    """Make an earlier (or later) complete version current; a running `ebr serve` swaps to it."""
    typer.echo(f"current: {_store(store).set_current(kind, name, version).ref}")


@versions_app.command("gc")
def versions_gc(keep: int = typer.Option(10, min=1, help="newest versions kept per artifact"),
                dry_run: bool = typer.Option(False, "--dry-run", help="list what would go, delete nothing"),
                store: Optional[str] = STORE_OPT) -> None:
    """Delete incomplete versions (a killed publish) and complete ones beyond the newest KEEP, never a current
    version nor one a kept version names (an index's model, an ensemble's members, a model's examples)."""
    st = _store(store)
    incomplete = st.gc_incomplete(dry_run=dry_run)
    pruned = st.prune(keep, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for ref in incomplete + pruned:
        typer.echo(f"{verb} {ref}")
    typer.echo(f"{verb} {len(incomplete)} incomplete and {len(pruned)} old versions")


@versions_app.command("copy")
def versions_copy(kind: str, name: str, version: Optional[str] = typer.Argument(None, help="default: current"),
                  to: str = typer.Option(..., "--to", help="destination store: a directory or s3://bucket/prefix"),
                  make_current: bool = typer.Option(False, "--current", help="make it current there"),
                  store: Optional[str] = STORE_OPT) -> None:
    """Copy a version to another store under the same version id (e.g. local -> S3), verified there."""
    av = _store(store).copy_version(kind, name, version, _store(to), make_current)
    typer.echo(f"copied {av.ref} to {to}{' (current)' if make_current else ''}")


encoder_store_app = Cli(no_args_is_help=True, pretty_exceptions_enable=False,
                        help="The frozen text encoders' stored document vectors (EBR_ENCODER_STORE).")
app.add_typer(encoder_store_app, name="encoder-store")


def _encoder_store_dir() -> Path:
    directory = _settings().encoder_store_dir
    if directory is None:
        raise typer.BadParameter("the encoder store is off (EBR_ENCODER_STORE=off)")
    return directory


@encoder_store_app.command("list")
def encoder_store_list() -> None:
    """Each store file (one per encoder and version): its vectors, size on disk and last use."""
    from datetime import date, timedelta

    from models.vector_store import VectorStore

    directory = _encoder_store_dir()
    files = sorted(directory.glob("*.sqlite")) if directory.is_dir() else []
    if not files:
        typer.echo(f"no stored vectors in {directory}")
    for path in files:
        store = VectorStore(path, dim=0)
        try:
            n, last = len(store), store.last_used()
        finally:
            store.close()
        size = sum(f.stat().st_size for f in path.parent.glob(path.name + "*"))
        used = "-" if last is None else (date(1970, 1, 1) + timedelta(days=last)).isoformat()
        typer.echo(f"{path.name}  {n:,} vectors  {size / 1e6:.1f} MB  last used {used}")


@encoder_store_app.command("prune")
def encoder_store_prune(
        unused_days: int = typer.Option(..., "--unused-days", min=0,
                                        help="drop vectors neither stored nor read in this many days"),
        dry_run: bool = typer.Option(False, "--dry-run", help="count what would go, delete nothing")) -> None:
    """Drop the documents no job has asked for in UNUSED_DAYS days (left the corpus, or an encoder version
    no longer run: its file goes once empty). Run it while no job encodes: it rewrites the files."""
    from models.vector_store import prune_directory

    verb = "would remove" if dry_run else "removed"
    directory = _encoder_store_dir()
    done = prune_directory(directory, unused_days, dry_run=dry_run) if directory.is_dir() else []
    for p in done:
        gone = f" (the file{' would go' if dry_run else ' went'} too)" if p.deleted_file else ""
        typer.echo(f"{p.path.name}: {verb} {p.removed:,} vectors, {p.left:,} kept{gone}")
    typer.echo(f"{verb} {sum(p.removed for p in done):,} vectors in {len(done)} file(s) of {directory}")


if __name__ == "__main__":  # pragma: no cover
    app()
