"""The tiny synthetic world as the flow tests use it: canonical tables plus offline feature snapshots."""

from __future__ import annotations

from datetime import timedelta

from infra.settings import get_settings


def snapshot_tiny_world(dataset: str, every_days: int = 3, online: bool = False):
    """Write the tiny world as ``dataset`` with feature snapshots every ``every_days`` days (inside Feast's
    7-day TTL) and apply its Feast repository; ``online`` also materializes them for serving. Returns the
    world's tables."""
    from features.compute import as_of_for_day, compute_features
    from features.store import FeatureRepo
    from ingest.contract import write_dataset
    from ingest.synthetic import WorldConfig, generate_world

    data = generate_world(WorldConfig.preset("tiny"))
    write_dataset(data, get_settings().dataset_path(dataset), source="synthetic")
    repo = FeatureRepo.for_dataset(dataset)
    first, last = data.sessions["ts"].min().date() - timedelta(days=1), data.sessions["ts"].max().date()
    communities: dict = {}
    day = first
    while True:
        repo.write_sources(*compute_features(data, as_of_for_day(day), communities=communities), day=day)
        if day >= last:
            break
        day = min(day + timedelta(days=every_days), last)
    repo.apply()
    if online:
        repo.materialize(as_of_for_day(first) - timedelta(days=1), as_of_for_day(last))
    return data
