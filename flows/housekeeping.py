"""What every publishing flow does first: clear what a killed run left behind (see ``infra.run_dirs``)."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from infra.retries import retry_transient


@task(retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=5, cache_policy=NO_CACHE)
def clean_up_leftovers(runs_root: Path) -> dict[str, list[str]]:
    """Delete killed runs' directories (and finished ones past retention) under ``runs_root``, and versions
    that a killed publish left without a manifest in the artifact store (older than an hour)."""
    from infra.run_dirs import sweep_run_dirs
    from infra.storage import ArtifactStore

    out = {"run_dirs": [p.name for p in sweep_run_dirs(runs_root)],
           "store_versions": ArtifactStore.from_settings().gc_incomplete()}
    if out["run_dirs"] or out["store_versions"]:
        get_run_logger().info("cleaned up leftovers: %s", out)
    return out
