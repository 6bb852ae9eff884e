"""Ingestion flows: the synthetic world or a real dataset, written as a canonical dataset.

Each reads as its steps; the work is done by plain functions in ``ingest/``.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from infra.retries import retry_transient
from infra.settings import get_settings
from ingest.contract import write_dataset
from ingest.datasets import load_source
from ingest.synthetic import WorldConfig, generate_world


def _counts_markdown(title: str, path: Path, row_counts: dict[str, int]) -> str:
    rows = "\n".join(f"| {k} | {v:,} |" for k, v in row_counts.items())
    return f"### {title}\n\nwritten to `{path}`\n\n| table | rows |\n|---|---:|\n{rows}\n"


@task
def build_world(preset: str, seed: int):
    config = WorldConfig.preset(preset).model_copy(update={"seed": seed})
    return generate_world(config), config.model_dump(mode="json")


@task
def read_source(source: str):
    return load_source(source)


@task(retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=5)
def write(dataset, name: str, source: str, params: dict | None = None):
    target = get_settings().dataset_path(name)
    manifest = write_dataset(dataset, target, source=source, params=params)
    return target, manifest.row_counts


@flow(name="generate-world", log_prints=True)
def generate_world_flow(preset: str = "default", seed: int = 0, name: str | None = None) -> str:
    """Generate the synthetic social-search world (``tiny``, ``default``, ``large`` or ``1m``)."""
    world, params = build_world(preset, seed)
    name = name or f"synthetic-{preset}"
    target, counts = write(world, name, "synthetic", params)
    create_markdown_artifact(
        _counts_markdown(f"synthetic world {name}", target, counts), key="dataset-row-counts"
    )
    get_run_logger().info("wrote %s: %s", target, counts)
    return str(target)


@flow(name="ingest-dataset", log_prints=True)
def ingest_dataset_flow(source: str = "lastfm") -> str:
    """Turn a real public dataset into the canonical tables."""
    dataset = read_source(source)
    target, counts = write(dataset, source, source)
    create_markdown_artifact(_counts_markdown(f"dataset {source}", target, counts), key="dataset-row-counts")
    get_run_logger().info("wrote %s: %s", target, counts)
    return str(target)
