"""What every publishing flow does first: clear what a killed run left behind (see ``infra.run_dirs``)."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from infra.retries import retry_transient
from infra.run_dirs import prune_keyed_dirs, sweep_run_dirs
from infra.settings import get_settings
from infra.storage import ArtifactStore


@task(retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=5, cache_policy=NO_CACHE)
def clean_up_leftovers(runs_root: Path) -> dict[str, list[str]]:
    """Delete killed runs' directories (and finished ones past retention) under ``runs_root``, versions
    that a killed publish left without a manifest in the artifact store (older than an hour), complete
    versions beyond the newest ``EBR_KEEP_VERSIONS`` of each artifact (never a current one nor one a kept
    version names), and local copies of artifact versions beyond the newest two of each (never the current
    one)."""
    store = ArtifactStore.from_settings()
    keep = get_settings().keep_versions
    out = {"run_dirs": [p.name for p in sweep_run_dirs(runs_root)], "store_versions": store.gc_incomplete(),
           "old_versions": store.prune(keep) if keep else [], "cached_versions": store.prune_cache()}
    if any(out.values()):
        get_run_logger().info("cleaned up leftovers: %s", out)
    return out


@task(cache_policy=NO_CACHE)
def prune_resumable_runs(runs_root: Path, current: str) -> list[str]:
    """Old mining runs (directories named by their inputs, kept so that a re-run resumes) beyond retention;
    ``current`` is the run about to resume or start, never removed."""
    removed = [p.name for p in prune_keyed_dirs(runs_root, keep={current})]
    if removed:
        get_run_logger().info("removed old mining runs: %s", removed)
    return removed

