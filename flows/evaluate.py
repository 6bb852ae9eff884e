"""The evaluate flow: any registered model against a held-out split of a dataset's published examples.

Steps: load the registered model version -> fetch the examples (by default the version the model was
trained on, when it was trained on this dataset; else the current one) -> build the index as the train flow
does (:mod:`evaluation.protocol`: documents as of the end of the data the model learned from) -> exact-KNN
metrics -> a markdown table artifact. With the model's own examples, split and evaluation seed it reproduces
the metrics registered with the model.
"""

from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from examples.splits import split_cutoff
from flows.train import (
    artifact_key,
    documents_as_of,
    evaluate_model,
    fetch_examples,
    metrics_markdown,
    publish_report,
    read_document_snapshots,
    servable_index,
)
from infra.names import default_examples_name, default_model_name
from infra.retries import retry_transient
from models.registry import load_registered_model


@task(retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=5, cache_policy=NO_CACHE)
def load_model_version(name: str, version: str | None):
    model, av = load_registered_model(name, version)
    return model, av.ref, av.metadata


def _examples_of(metadata: dict, examples_name: str) -> str | None:
    """The examples version a model was trained on, if it is a version of ``examples_name``."""
    ref = str(metadata.get("examples") or "")  # "dataset/<name>@<version>"
    head, _, version = ref.partition("@")
    return version if head == f"dataset/{examples_name}" and version else None


@flow(name="evaluate", log_prints=True)
def evaluate(
    dataset: str = "synthetic-default",
    model_name: str | None = None,
    model_version: str | None = None,
    split: Literal["valid", "test"] = "test",
    examples_version: str | None = None,
    max_sessions: int | None = None,
) -> dict[str, float]:
    """Metrics of a registered model (None: ``<dataset>-two-tower``, its current version) on ``split``."""
    log = get_run_logger()
    model_name = model_name or default_model_name(dataset)
    examples = default_examples_name(dataset)
    model, model_ref, meta = load_model_version(model_name, model_version)
    recorded = meta.get("evaluation") or {}
    version = examples_version or _examples_of(meta, examples)
    parts, examples_ref, _ = fetch_examples(examples, version)
    max_sessions = max_sessions or int(recorded.get("max_sessions", 10_000))
    seed = int(recorded.get("seed", (meta.get("config") or {}).get("seed", 0)))

    index_as_of = split_cutoff(parts, split)
    snapshots = read_document_snapshots(dataset, index_as_of)
    index = servable_index(dataset, documents_as_of(snapshots, index_as_of, include_later=True), index_as_of,
                           parts["train"])
    metrics = evaluate_model(model, parts, split, index, max_sessions, seed)

    facts = {"model": f"`{model_ref}`", "examples": f"`{examples_ref}`",
             "split": f"{split} ({int(metrics['n_sessions'])} sessions, {len(index)} documents, exact KNN)",
             "feature service": meta.get("feature_service") or "-"}
    publish_report(artifact_key("evaluate", dataset, model_name),
                   metrics_markdown(f"Evaluation: {model_name}", model_ref, metrics, facts),
                   f"metrics of {model_ref} on {split} of {examples_ref}")
    log.info("%s on %s of %s: recall@10 %.4f", model_ref, split, examples_ref, metrics.get("recall@10", float("nan")))
    return metrics


if __name__ == "__main__":
    evaluate()
