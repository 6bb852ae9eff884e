"""The mine flow: iterative offline hard-negative mining rounds (section 6.1.1 of the paper).

Starting from the current registered model of a dataset, each round is a subflow:
mine (``models.mining``: ANN top-K, rank window, false negatives dropped) -> gate the mined examples (Great
Expectations: no negative is a positive, counts per example, share of false negatives) -> publish them as
``dataset/<dataset>-examples-hnm`` -> train with easy and mined negatives mixed at the easy:hard ratio,
warm-started from the previous round's model (easy -> hard), optionally continued with easy negatives only
(hard -> easy) -> evaluate on the validation split (which chooses) and the test split (which reports) ->
register ``model/<dataset>-two-tower-hnm`` with the round's figures -> the round's report as an artifact.

Rounds stop when the validation metric stops improving. The best round, if it beats the starting model on
validation, is registered as the new current version of the starting model's name (``promote``), so the
nightly rebuild serves it. A run is keyed by its inputs and parameters: re-running after a crash skips
the rounds that finished (their models and examples are published) and resumes a killed training from its
checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from examples.build import write_splits
from examples.splits import split_cutoff
from flows.housekeeping import prune_resumable_runs
from flows.runners import task_runner
from flows.train import (
    NAME_PATTERN,
    artifact_key,
    documents_as_of,
    evaluate_model,
    fetch_examples,
    fit,
    laptop_config,
    publish_report,
    read_document_snapshots,
    register,
    servable_index,
)
from infra.atomic import atomic_directory
from infra.names import default_examples_name, default_model_name
from infra.retries import retry_transient
from infra.run_dirs import runs_root
from infra.storage import ArtifactStore
from models.checkpoint import load_model
from models.config import LossConfig, TrainConfig
from models.evaluate import metrics_table
from models.mining import HARD_NEGATIVES, MiningConfig, MiningReport, finish_mining, plan_mining, search_sessions
from models.registry import get_registered, register_model, registered_model_path
from models.rounds import RoundRecord, finished_round, improved, record_of, rounds_markdown, run_key
from validation.gate import enforce, run_gate
from validation.suites import MinedGateConfig, mined_suite

Transfer = Literal["easy_to_hard", "hard_to_easy"]


def _round_training() -> TrainConfig:
    """Each round continues from the previous model: fewer epochs than a training from scratch."""
    return laptop_config().model_copy(update={"epochs": 3})


class MineParams(BaseModel):
    """How many rounds, how to mine, how to train on the mined negatives, where to register."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rounds: int = Field(2, ge=1, le=20, description="mining rounds at most (stops earlier without a gain)")
    mining: MiningConfig = Field(default_factory=MiningConfig, description="how each round mines")
    gate: MinedGateConfig = Field(default_factory=MinedGateConfig, description="bounds of the mined-examples gate")
    config: TrainConfig = Field(default_factory=_round_training, description="training of each round")
    easy_hard_ratio: float | None = Field(
        100.0, gt=0, description="easy:hard negatives per example and step (the paper saturates at 100:1)"
    )
    transfer: Transfer = Field(
        "easy_to_hard", description="easy_to_hard: warm start from the previous model and train with mined "
        "negatives; hard_to_easy: then continue with easy negatives only for easy_epochs",
    )
    easy_epochs: int = Field(2, ge=1, le=50, description="epochs of the easy phase of hard_to_easy")
    metric: str = Field("recall@10", description="validation metric that compares rounds")
    min_gain: float = Field(0.0, ge=0, description="a round must raise the metric by more than this to continue")
    stop_early: bool = Field(True, description="stop at the first round that does not improve on the best")
    base_model: str | None = Field(None, pattern=NAME_PATTERN, description="start from (None: <dataset>-two-tower)")
    model_name: str | None = Field(None, pattern=NAME_PATTERN,
                                   description="rounds are registered as (None: <dataset>-two-tower-hnm)")
    examples_name: str | None = Field(None, pattern=NAME_PATTERN, description="None: <dataset>-examples")
    examples_version: str | None = Field(None, description="None: the current version")
    promote: bool = Field(True, description="register the best round as the new current base model")
    max_eval_sessions: int = Field(10_000, ge=1, le=1_000_000)
    search_shards: int = Field(1, ge=1, le=256, description="mapped tasks searching the sessions' ANN top-K "
                               "(on a Dask cluster with EBR_DASK_ADDRESS); the same negatives for any value")

    def hard_config(self) -> TrainConfig:
        loss = LossConfig.model_validate({
            **self.config.loss.model_dump(), "easy_hard_ratio": self.easy_hard_ratio,
            "extra_negatives": tuple(dict.fromkeys((*self.config.loss.extra_negatives, HARD_NEGATIVES))),
        })
        return self.config.model_copy(update={"loss": loss})

    def easy_config(self) -> TrainConfig:
        loss = LossConfig.model_validate({**self.config.loss.model_dump(), "extra_negatives": (),
                                          "easy_hard_ratio": None})
        return self.config.model_copy(update={"loss": loss, "epochs": self.easy_epochs})

    def names(self, dataset: str) -> tuple[str, str, str]:
        return (self.base_model or default_model_name(dataset), self.model_name or default_model_name(dataset, "hnm"),
                self.examples_name or default_examples_name(dataset))


# --------------------------------------------------------------------------- tasks


@task(retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=5, cache_policy=NO_CACHE)
def starting_model(name: str):
    """(model file, its manifest) of the current registered version of ``name``."""
    av = get_registered(name)
    return registered_model_path(name, av.version), av


@task(cache_policy=NO_CACHE)
def save_inputs(run_dir: Path, frames: dict[str, pd.DataFrame]) -> Path:
    """The round subflows' shared inputs (corpus and evaluation indexes) as parquet in the run directory:
    subflows take paths, not DataFrames, as parameters."""
    out = run_dir / "inputs"
    with atomic_directory(out, marker="corpus.parquet") as tmp:
        for name, frame in frames.items():
            frame.to_parquet(tmp / f"{name}.parquet", index=False)
    return out


@task(cache_policy=NO_CACHE)
def load_model_file(path: Path):
    return load_model(path)


@task(cache_policy=NO_CACHE)
def plan_negatives(model, examples: pd.DataFrame, corpus: pd.DataFrame, config: MiningConfig):
    return plan_mining(model, examples, corpus, config)


@task(cache_policy=NO_CACHE)
def search_negatives(space, start: int, end: int):
    return search_sessions(space, start, end)


@task(cache_policy=NO_CACHE)
def finish_negatives(plan, searched: list):
    return finish_mining(plan, searched)


def mine_negatives(model, examples: pd.DataFrame, corpus: pd.DataFrame, config: MiningConfig, shards: int):
    """Embed and index (one task), search the sessions in ``shards`` mapped tasks (threads here, a Dask
    cluster with EBR_DASK_ADDRESS; batch-aligned ranges, so the same negatives as one search), then gather."""
    from prefect import unmapped

    plan = plan_negatives(model, examples, corpus, config)
    ranges = plan.ranges(shards)
    if len(ranges) == 1:
        searched = [search_negatives(plan.space, *ranges[0])]
    else:
        futures = search_negatives.map(unmapped(plan.space), [a for a, _ in ranges], [b for _, b in ranges])
        searched = [f.result() for f in futures]
    return finish_negatives(plan, searched)


@task(cache_policy=NO_CACHE)
def gate_mined(train: pd.DataFrame, config: MineParams, false_negative_share: float, run_dir: Path, dataset: str,
               round_no: int):
    """Great Expectations over the round's training examples; a failure stops the run before training."""
    from prefect.artifacts import create_markdown_artifact

    suite = mined_suite(HARD_NEGATIVES, config.mining.negatives_per_example, false_negative_share, config.gate)
    report = run_gate(f"mined-round-{round_no}", train, suite)
    report.save(run_dir / "gates")
    create_markdown_artifact(markdown=report.to_markdown(), key=artifact_key("gate", dataset, "mined"),
                             description=f"data gate of mining round {round_no} of {dataset}")
    return enforce(report)


@task(retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=5, cache_policy=NO_CACHE)
def publish_mined(dataset: str, parts: dict[str, pd.DataFrame], out_dir: Path, metadata: dict) -> str:
    frame = pd.concat([parts[s] for s in ("train", "valid", "test")], ignore_index=True)
    write_splits(frame, out_dir, metadata)
    return ArtifactStore.from_settings().publish("dataset", f"{dataset}-examples-hnm", out_dir, metadata).ref


@task(retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=5, cache_policy=NO_CACHE)
def lookup_round(model_name: str, key: str, round_no: int):
    av = finished_round(ArtifactStore.from_settings(), model_name, key, round_no)
    if av is None:
        return None

    return record_of(av), registered_model_path(model_name, av.version)


@task(retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=5, cache_policy=NO_CACHE)
def lookup_mined(dataset: str, key: str, round_no: int):
    """(splits, ref, mining report) of the examples a round of run ``key`` already published, if any."""
    store = ArtifactStore.from_settings()
    av = finished_round(store, f"{dataset}-examples-hnm", key, round_no, kind="dataset")
    if av is None:
        return None
    local = store.fetch("dataset", av.name, av.version)
    parts = {s: pd.read_parquet(local / f"{s}.parquet") for s in ("train", "valid", "test")}
    return parts, av.ref, av.metadata["mining"]


@task(retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=5, cache_policy=NO_CACHE)
def make_current(model_name: str, ref: str) -> None:
    ArtifactStore.from_settings().set_current("model", model_name, ref.rsplit("@", 1)[1], verify=False)  # just published


@task(retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=5, cache_policy=NO_CACHE)
def promote_round(model_path: Path, base_name: str, metrics: dict, config: TrainConfig, feature_service: str,
                  examples_ref: str, extra: dict) -> str:
    return register_model(model_path, base_name, metrics, config, feature_service, examples_ref, extra=extra).ref


# --------------------------------------------------------------------------- one round


@flow(name="mine-round", log_prints=True)
def mine_round(dataset: str, round_no: int, key: str, model_path: Path, inputs: Path, params: MineParams,
               feature_service: str, before: dict | None = None):
    """Mine with the model at ``model_path``, gate, publish the examples, train, evaluate, register.
    ``before``: the previous round's {"valid": ..., "test": ...} metrics, for the report. Returns
    (RoundRecord, the new model's local file)."""
    log = get_run_logger()
    _, round_name, examples_name = params.names(dataset)
    done = lookup_round(round_name, key, round_no)
    if done is not None:
        log.info("round %d of run %s already finished: %s", round_no, key, done[0].model_ref)
        return done

    run_dir = runs_root("mine", dataset) / key / f"round-{round_no}"
    parts, examples_ref, _ = fetch_examples(examples_name, params.examples_version)
    corpus = pd.read_parquet(inputs / "corpus.parquet")
    valid_index = pd.read_parquet(inputs / "valid_index.parquet")
    test_index = pd.read_parquet(inputs / "test_index.parquet")

    t0 = time.perf_counter()
    published = lookup_mined(dataset, key, round_no)  # a round that crashed after publishing its examples
    if published is not None:
        mined_parts, mined_ref, report = published
        log.info("round %d: reusing the published examples %s", round_no, mined_ref)
    else:
        model = load_model_file(model_path)
        mined = mine_negatives(model, parts["train"], corpus, params.mining, params.search_shards)
        gate_mined(mined.examples, params, mined.report.false_negative_share, run_dir, dataset, round_no)
        mined_parts = {"train": mined.examples, **{s: parts[s].assign(**{HARD_NEGATIVES: [[]] * len(parts[s])})
                                                  for s in ("valid", "test")}}
        report = mined.report.model_dump(mode="json")
        meta = {"dataset": dataset, "source_examples": examples_ref, "mining_run": {"key": key, "round": round_no},
                "mining": report, "params": params.model_dump(mode="json")}
        mined_ref = publish_mined(dataset, mined_parts, run_dir / "examples", meta)
    t_mine = time.perf_counter() - t0

    t1 = time.perf_counter()
    hard_cfg = params.hard_config()
    result = fit(mined_parts, corpus, hard_cfg, run_dir / "hard", model_path, feature_service, valid_index)
    trained_cfg = hard_cfg
    if params.transfer == "hard_to_easy":
        trained_cfg = params.easy_config()
        hard = result
        result = fit(parts, corpus, trained_cfg, run_dir / "easy", hard.model_path, feature_service, valid_index)
        hard.checkpoint_path.unlink(missing_ok=True)
    t_train = time.perf_counter() - t1

    seed = trained_cfg.seed
    valid = evaluate_model(result.model, parts, "valid", valid_index, params.max_eval_sessions, seed)
    test = evaluate_model(result.model, parts, "test", test_index, params.max_eval_sessions, seed)
    seconds = {"mining": round(t_mine, 1), "training": round(t_train, 1)}
    extra = {"dataset": dataset, "warm_start_from": str(model_path.name), "best_epoch": result.best_epoch,
             "history": result.history, "evaluation": {"split": "test", "max_sessions": params.max_eval_sessions,
                                                       "seed": seed, "index_documents": len(test_index)},
             "mining_run": {"key": key, "round": round_no, "valid": valid, "transfer": params.transfer,
                            "mining": report, "seconds": seconds}}
    ref = register(result.model_path, round_name, test, trained_cfg, feature_service, mined_ref, extra)
    result.checkpoint_path.unlink(missing_ok=True)
    record = RoundRecord(round_no, ref, valid, test, mined_ref, report, seconds)
    publish_report(artifact_key("mine-round", dataset), _round_markdown(record, MiningReport(**report).to_markdown(),
                                                                        params.metric, before or {}),
                   f"mining round {round_no} of {dataset}")
    log.info("round %d: %s, valid %s %.4f", round_no, ref, params.metric, valid.get(params.metric, float("nan")))
    return record, registered_model_path(round_name, ref.rsplit("@", 1)[1])


def _round_markdown(record, mining_md: str, metric: str, before: dict) -> str:
    rows = {f"before: {s}": before[s] for s in ("valid", "test") if before.get(s)}
    rows.update({f"after: {s}": getattr(record, s) for s in ("valid", "test")})
    ks = ["recall@1", "recall@10", "recall@100", "mrr", "ndcg@10"]
    return "\n".join([
        f"# Mining round {record.round}", "", f"- model: `{record.model_ref}`", f"- examples: `{record.examples_ref}`",
        f"- mining {record.seconds['mining']:.1f} s, training {record.seconds['training']:.1f} s", "",
        "## Mining", "", mining_md, "## Held-out metrics (before: the model the round started from)", "",
        metrics_table(rows, ks), "", f"(rounds are compared on valid {metric})"]) + "\n"


# --------------------------------------------------------------------------- flow


@flow(name="mine", log_prints=True, task_runner=task_runner())
def mine(dataset: str = "synthetic-default", params: MineParams | None = None) -> str:
    """Offline hard-negative mining rounds from the current model of ``dataset``; returns the best model ref."""
    params = params or MineParams()
    log = get_run_logger()
    base_name, round_name, examples_name = params.names(dataset)
    start_path, start_av = starting_model(base_name)
    parts, examples_ref, examples_meta = fetch_examples(examples_name, params.examples_version)
    feature_service = str(examples_meta.get("feature_service") or "")
    # What the rounds compute from (not how many run or which is promoted): more rounds continue a run.
    key = run_key(dataset=dataset, start=start_av.ref, examples=examples_ref,
                  params=params.model_dump(mode="json", exclude={"rounds", "stop_early", "min_gain", "promote",
                                                                  "search_shards"}))
    run_dir = runs_root("mine", dataset) / key
    prune_resumable_runs(runs_root("mine", dataset), key)

    train_end, test_as_of = split_cutoff(parts, "valid"), split_cutoff(parts, "test")
    snapshots = read_document_snapshots(dataset, min(train_end, test_as_of))
    corpus = documents_as_of(snapshots, train_end, include_later=True)
    frames = {
        "corpus": corpus,
        "valid_index": servable_index(dataset, corpus, train_end, parts["train"]),
        "test_index": servable_index(dataset, documents_as_of(snapshots, test_as_of, include_later=True), test_as_of,
                                     parts["train"]),
    }
    inputs = save_inputs(run_dir, frames)

    model0 = load_model_file(start_path)
    seed = params.config.seed
    best = RoundRecord(0, start_av.ref,
                       evaluate_model(model0, parts, "valid", frames["valid_index"], params.max_eval_sessions, seed),
                       evaluate_model(model0, parts, "test", frames["test_index"], params.max_eval_sessions, seed))
    records, paths = [best], {0: start_path}
    stopped = f"all {params.rounds} rounds ran"
    for r in range(1, params.rounds + 1):
        record, path = mine_round(dataset, r, key, paths[r - 1], inputs, params, feature_service,
                                  {"valid": records[-1].valid, "test": records[-1].test})
        records.append(record)
        paths[r] = path
        if improved(record, best, params.metric, params.min_gain):
            best = record
        elif params.stop_early:
            stopped = f"round {r} did not raise valid {params.metric} above round {best.round}'s"
            break

    mined_best = max(records[1:], key=lambda r: r.valid.get(params.metric) or 0.0)
    make_current(round_name, mined_best.model_ref)  # the hnm name serves its best round (e.g. to ensembles)
    result_ref = best.model_ref
    if best.round > 0 and params.promote:
        extra = {"dataset": dataset, "promoted_from": best.model_ref, "mining_run": {"key": key, "round": best.round,
                                                                                  "valid": best.valid}}
        result_ref = promote_round(paths[best.round], base_name, best.test, params.hard_config(), feature_service,
                                   best.examples_ref or examples_ref, extra)
        stopped += f"; round {best.round} registered as `{result_ref}`"
    elif best.round == 0:
        stopped += "; no round beat the starting model, which stays current"
    publish_report(artifact_key("mine", dataset), rounds_markdown(f"Hard-negative mining: {dataset}", records,
                                                                  params.metric, best.round, stopped),
                   f"offline hard-negative mining rounds of {dataset}")
    log.info("mining of %s: best round %d (%s)", dataset, best.round, result_ref)
    return result_ref


if __name__ == "__main__":
    mine()
