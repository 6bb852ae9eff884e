"""The train flow: published examples -> two-tower training -> held-out evaluation -> a registered model.

Steps: fetch the examples (the current ``dataset/<dataset>-examples`` version, or a given one) -> read the
document snapshots of the dataset's feature repository -> train (``models.train``; optionally warm-started
from the current registered model, optionally with an extra-negatives column such as the ``hard_negatives``
of an offline mining round) -> evaluate on the held-out split against the whole index -> register the model
version with its metrics and config -> publish the metrics table as a Prefect markdown artifact.
The work is done by plain functions in ``models/``, ``examples/`` and ``evaluation/``; only I/O steps retry.

The laptop defaults (:func:`laptop_config`) use smaller hashed tables than ``ModelConfig``'s defaults:
2^16 rows per text n-gram range and 2^15 context rows (a ~60 MB model, ~180 MB checkpoint with SparseAdam
state instead of ~0.8 GB); that is still several rows per distinct trigram, word and feature value of the
default synthetic world and of the real datasets.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Literal

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict, Field

from evaluation.protocol import evaluate_split, protocol_exclusions
from examples.build import fill_static_document_fields
from examples.splits import split_cutoff
from features.corpus import document_snapshots_from_repo, index_documents, served_documents
from features.store import FeatureRepo
from flows.housekeeping import clean_up_leftovers
from infra.names import NAME_PATTERN, default_examples_name, default_model_name
from infra.retries import retry_transient
from infra.run_dirs import finish_run_dir, new_run_dir, runs_root
from infra.settings import get_settings
from infra.storage import ArtifactStore
from ingest.contract import read_dataset
from models.config import LossConfig, ModelConfig, TrainConfig
from models.evaluate import metrics_table
from models.registry import get_registered, register_model, registered_model_path
from models.train import train as train_model

ExtraNegatives = Literal["random_negatives", "impressed_negatives", "hard_negatives"]


def laptop_config() -> TrainConfig:
    """The flow's default recipe: unified towers, sampled softmax with mixed negatives, laptop-sized tables."""
    return TrainConfig(
        model=ModelConfig(trigram_buckets=2**16, word_buckets=2**16, bigram_buckets=2**16, context_buckets=2**15),
        loss=LossConfig(kind="softmax", negatives="mixed"),
        epochs=6,
        early_stopping_patience=2,
        # Sparse embedding-bag steps gain little from intra-op threads, and OpenMP threads that busy-wait
        # collapse when the cores are shared (measured: 8.5k examples/s with 1 thread, 0.4k with 2 while
        # another job ran). Raise it on a dedicated machine.
        num_threads=1,
    )


class TrainParams(BaseModel):
    """What to train on, how, and where to register it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    config: TrainConfig = Field(default_factory=laptop_config, description="model, loss and optimization")
    model_name: str | None = Field(
        None, pattern=NAME_PATTERN, description="registered model name (None: '<dataset>-two-tower')"
    )
    examples_name: str | None = Field(
        None, pattern=NAME_PATTERN,
        description="examples artifact (None: '<dataset>-examples'; a mining round publishes its own)",
    )
    examples_version: str | None = Field(None, description="examples version (None: the current one)")
    warm_start: bool = Field(False, description="start from the weights of the current registered model")
    extra_negatives: tuple[ExtraNegatives, ...] = Field(
        (), description="example list columns used as extra negatives (added to config.loss.extra_negatives)"
    )
    eval_split: Literal["valid", "test"] = Field("test", description="held-out split the registered metrics are on")
    max_eval_sessions: int = Field(10_000, ge=1, le=1_000_000, description="held-out sessions evaluated")
    keep_checkpoint: bool = Field(
        False, description="keep the resumable checkpoint (optimizer state) in the run directory after registering"
    )

    def train_config(self) -> TrainConfig:
        """``config`` with ``extra_negatives`` added to its loss: what is trained and registered."""
        if not self.extra_negatives:
            return self.config
        cols = tuple(dict.fromkeys((*self.config.loss.extra_negatives, *self.extra_negatives)))
        loss = LossConfig.model_validate({**self.config.loss.model_dump(), "extra_negatives": cols})
        return self.config.model_copy(update={"loss": loss})

    def names(self, dataset: str) -> tuple[str, str]:
        return self.model_name or default_model_name(dataset), self.examples_name or default_examples_name(dataset)


def artifact_key(*parts: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


# --------------------------------------------------------------------------- tasks (shared with evaluate)


@task(retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=5, cache_policy=NO_CACHE)
def fetch_examples(name: str, version: str | None) -> tuple[dict[str, pd.DataFrame], str, dict]:
    """(train/valid/test frames, the examples ref, its metadata)."""
    store = ArtifactStore.from_settings()
    av = store.get("dataset", name, version)
    local = store.fetch("dataset", name, av.version)
    parts = {s: pd.read_parquet(local / f"{s}.parquet") for s in ("train", "valid", "test")}
    return parts, av.ref, av.metadata


@task(retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=2, cache_policy=NO_CACHE)
def read_document_snapshots(dataset: str, as_of: pd.Timestamp) -> pd.DataFrame:
    return document_snapshots_from_repo(FeatureRepo.for_dataset(dataset), as_of)


@task(cache_policy=NO_CACHE)
def documents_as_of(snapshots: pd.DataFrame, as_of: pd.Timestamp, include_later: bool) -> pd.DataFrame:
    return index_documents(snapshots, as_of, include_later=include_later)


@task(retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=2, cache_policy=NO_CACHE)
def servable_index(dataset: str, index: pd.DataFrame, as_of: pd.Timestamp, train: pd.DataFrame) -> pd.DataFrame:
    """The evaluation index as the nightly rebuilds from ``as_of`` on serve it: the production index selection,
    decided by the training clicks as a rebuild decides it (:func:`features.corpus.served_documents`)."""
    documents = read_dataset(get_settings().dataset_path(dataset), tables=("documents",)).documents
    return served_documents(index, documents, as_of, train[["doc_id", "ts"]])


@task(cache_policy=NO_CACHE)
def evaluate_model(model, parts: dict, split: str, index: pd.DataFrame, max_sessions: int, seed: int) -> dict:
    return evaluate_split(model, parts, split, index, max_sessions=max_sessions, seed=seed)


@task(cache_policy=NO_CACHE)
def publish_report(key: str, markdown: str, description: str) -> None:
    create_markdown_artifact(markdown=markdown, key=key, description=description)


def metrics_markdown(title: str, label: str, metrics: dict, facts: dict) -> str:
    lines = [f"# {title}", "", metrics_table({label: metrics}), ""]
    lines += [f"- **{k}**: {v}" for k, v in facts.items()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- train-only tasks


@task(retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=5, cache_policy=NO_CACHE)
def warm_start_from(model_name: str) -> tuple[Path, str]:
    av = get_registered(model_name)
    return registered_model_path(model_name, av.version), av.ref


@task(cache_policy=NO_CACHE)
def fit(parts: dict, corpus: pd.DataFrame, config: TrainConfig, out_dir: Path, init_from: Path | None,
        feature_service: str, valid_index: pd.DataFrame | None = None):
    train_ex = fill_static_document_fields(parts["train"], corpus)
    valid = parts["valid"] if len(parts["valid"]) else None
    return train_model(train_ex, valid, corpus, config, out_dir, init_from=init_from, feature_service=feature_service,
                 consumed=protocol_exclusions(parts), valid_documents=valid_index)


@task(retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=5, cache_policy=NO_CACHE)
def register(model_dir: Path, name: str, metrics: dict, config: TrainConfig, feature_service: str,
             examples_ref: str, extra: dict) -> str:
    return register_model(model_dir, name, metrics, config, feature_service, examples_ref, extra=extra).ref


# --------------------------------------------------------------------------- flow


@flow(name="train", log_prints=True)
def train(dataset: str = "synthetic-default", params: TrainParams | None = None) -> str:
    """Train a two-tower model on the published examples of ``dataset``, evaluate it, register it."""
    params = params or TrainParams()
    config = params.train_config()
    log = get_run_logger()
    model_name, examples_name = params.names(dataset)
    clean_up_leftovers(runs_root("train", dataset))
    run_dir = new_run_dir(runs_root("train", dataset), flow_run.id)
    try:
        parts, examples_ref, examples_meta = fetch_examples(examples_name, params.examples_version)
        feature_service = str(examples_meta.get("feature_service") or "")
        train_end = split_cutoff(parts, "valid")
        index_as_of = split_cutoff(parts, params.eval_split)
        snapshots = read_document_snapshots(dataset, min(train_end, index_as_of))
        corpus = documents_as_of(snapshots, train_end, include_later=True)
        index = servable_index(dataset, documents_as_of(snapshots, index_as_of, include_later=True), index_as_of,
                               parts["train"])

        init_from, warm_ref = (warm_start_from(model_name) if params.warm_start else (None, None))
        # early stopping ranks what a nightly at the validation cutoff serves, as the evaluation does at its own
        valid_index = servable_index(dataset, corpus, train_end, parts["train"])
        result = fit(parts, corpus, config, run_dir / "model", init_from, feature_service, valid_index)
        metrics = evaluate_model(result.model, parts, params.eval_split, index, params.max_eval_sessions, config.seed)

        evaluation = {
            "split": params.eval_split, "max_sessions": params.max_eval_sessions, "seed": config.seed,
            "index_as_of": index_as_of.isoformat(), "index_documents": len(index), "examples": examples_ref,
        }
        extra = {
            "dataset": dataset, "evaluation": evaluation, "warm_start_from": warm_ref,
            "best_epoch": result.best_epoch, "history": result.history, "run_dir": run_dir.name,
        }
        ref = register(result.model_path, model_name, metrics, config, feature_service, examples_ref, extra)
        if not params.keep_checkpoint:
            shutil.rmtree(run_dir / "model", ignore_errors=True)  # registered: the store has the model
    finally:
        finish_run_dir(run_dir)  # a killed run keeps its marker: the next run removes its files

    facts = {"model": f"`{ref}`", "examples": f"`{examples_ref}`", "feature service": feature_service or "-",
             "split": f"{params.eval_split} ({int(metrics['n_sessions'])} sessions, {len(index)} documents, "
                      f"exact KNN)", "best epoch": result.best_epoch, "warm start": warm_ref or "no",
             "extra negatives": list(config.loss.extra_negatives) or "none"}
    publish_report(artifact_key("train", dataset), metrics_markdown(f"Training run: {model_name}", model_name,
                                                                    metrics, facts),
                   f"held-out metrics of {ref}")
    log.info("registered %s: recall@10 %.4f on %s", ref, metrics.get("recall@10", float("nan")), params.eval_split)
    return ref


if __name__ == "__main__":
    train()
