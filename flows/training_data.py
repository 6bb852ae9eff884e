"""The training-data flow: canonical tables -> gated, point-in-time joined, time-split training examples.

Steps: read the dataset -> gate the inputs -> build examples -> join features through Feast -> gate the
examples -> write train/valid/test -> publish as the artifact ``dataset/<dataset>-examples``. A failed gate
stops the run before anything downstream; its report stays in the run directory
(``<home>/runs/training-data/<dataset>/<run>/gates/``) and in the Prefect UI as a markdown artifact.
The work is done by plain functions in ``examples/`` and ``validation/``.
"""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict, Field

from examples.build import ExampleConfig, add_history, build_examples, join_features, write_splits
from examples.splits import SplitConfig, sessions_until
from features.compute import FEATURE_TS
from features.store import FEATURE_SERVICE_VERSION, FeatureRepo
from flows.gates import INPUT_TABLES, gate, references_of
from flows.housekeeping import clean_up_leftovers
from infra.names import default_examples_name
from infra.retries import retry_transient
from infra.run_dirs import finish_run_dir, new_run_dir, runs_root
from infra.settings import get_settings
from infra.storage import ArtifactStore
from ingest.contract import read_dataset
from validation.gate import latest_report
from validation.suites import GateConfig

GATES = (*INPUT_TABLES, "memberships", "examples")


class TrainingDataParams(BaseModel):
    """Everything that shapes the examples besides the dataset and the end date."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    examples: ExampleConfig = Field(default_factory=ExampleConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    gates: GateConfig = Field(default_factory=GateConfig)
    feature_service: str | None = Field(None, description="Feast feature service (None: the current version)")


# --------------------------------------------------------------------------- tasks


@task(retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=2, cache_policy=NO_CACHE)
def read_canonical(dataset: str):
    return read_dataset(get_settings().dataset_path(dataset), tables=(*INPUT_TABLES, "memberships"))


@task(cache_policy=NO_CACHE)
def make_examples(sessions: pd.DataFrame, documents: pd.DataFrame, params: TrainingDataParams):
    return build_examples(sessions, documents, params.examples, params.split)


@task(retries=1, retry_condition_fn=retry_transient, retry_delay_seconds=2, cache_policy=NO_CACHE)
def join_point_in_time(examples: pd.DataFrame, dataset: str, service: str | None):
    root = get_settings().home / "features" / dataset
    if not root.is_dir():
        raise FileNotFoundError(
            f"no feature repository for {dataset!r} at {root}; run the materialize flow for it first"
        )
    return join_features(examples, FeatureRepo(root), service, feature_ts_column=FEATURE_TS)


@task(cache_policy=NO_CACHE)
def history_at_serving_time(examples: pd.DataFrame, sessions: pd.DataFrame, memberships: pd.DataFrame,
                            params: TrainingDataParams):
    """The searcher history as the daily snapshot serves it at each example's time (not as of the possibly
    older snapshot the join found), and as of the cutoff for held-out splits."""
    return add_history(examples, sessions, memberships, params.split)


@task(retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=2, cache_policy=NO_CACHE)
def write_examples(examples: pd.DataFrame, out_dir: Path, config: dict) -> dict[str, int]:
    return write_splits(examples, out_dir, config)


@task(retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=5, cache_policy=NO_CACHE)
def publish(dataset: str, src: Path, metadata: dict) -> str:
    return ArtifactStore.from_settings().publish("dataset", default_examples_name(dataset), src, metadata).ref


# --------------------------------------------------------------------------- flow


@flow(name="training-data", log_prints=True)
def training_data(
    dataset: str = "synthetic-default",
    end_date: date | None = None,
    params: TrainingDataParams | None = None,
) -> str:
    """Build the gated training examples of ``dataset`` from sessions up to ``end_date`` and publish them."""
    params = params or TrainingDataParams()
    log = get_run_logger()
    clean_up_leftovers(runs_root("training-data", dataset))
    previous = {name: latest_report(runs_root("training-data", dataset), name) for name in GATES}
    run_dir = new_run_dir(runs_root("training-data", dataset), flow_run.id)
    try:
        data = read_canonical(dataset)
        sessions = sessions_until(data.sessions, end_date)
        inputs = {"searchers": data.searchers, "documents": data.documents, "sessions": sessions,
                  "memberships": data.memberships}  # the history feature reads the memberships
        references = references_of(inputs)
        for name in inputs:
            gate(name, inputs[name], params.gates, previous[name], run_dir, dataset, references)

        examples = make_examples(sessions, data.documents, params)
        joined = join_point_in_time(examples, dataset, params.feature_service)
        if "searcher_history" in joined.columns:  # services from v2 on serve the history
            joined = history_at_serving_time(joined, sessions, data.memberships, params)
        report = gate("examples", joined, params.gates, previous["examples"], run_dir, dataset)

        config = {
            "dataset": dataset,
            "end_date": end_date.isoformat() if end_date else None,
            "params": params.model_dump(mode="json"),
            "feature_service": params.feature_service or FEATURE_SERVICE_VERSION,
            "source": data.manifest.__dict__ if data.manifest else None,
            "run_dir": run_dir.name,
            "gates_passed": list(GATES),
        }
        counts = write_examples(joined, run_dir / "examples", config)
        ref = publish(dataset, run_dir / "examples", {**config, "rows": counts, "examples_gate_rows": report.row_count})
        shutil.rmtree(run_dir / "examples", ignore_errors=True)  # published: the store has them
    finally:
        finish_run_dir(run_dir)  # the gate reports stay for the next run's comparison
    log.info("published %s: %s", ref, counts)
    return ref
