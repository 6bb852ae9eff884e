"""What every publishing flow does first: clear what a killed run left behind (see ``infra.run_dirs``), and
what every flow command does first: mark Crashed the runs whose process was killed."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from infra.retries import retry_transient
from infra.run_dirs import process_alive, prune_keyed_dirs, sweep_run_dirs
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


PROCESS_TAG = "ebr-process:"  # + host:pid, on every run an ebr command starts (cli.runtime)


def process_tag() -> str:
    """The tag that names this process on the runs it starts."""
    return f"{PROCESS_TAG}{socket.gethostname()}:{os.getpid()}"


def crash_dead_runs(page: int = 200) -> list[str]:
    """Mark Crashed the flow runs still Running (or Pending) whose ``ebr`` process on this host is gone: a
    command killed with SIGKILL cannot report its own end, and the UI would show it running forever (runs
    started by a worker are the worker's to mark). Returns their ids."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    host = socket.gethostname()
    live = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING,
                                                                                     StateType.PENDING])))
    crashed = []
    with get_client(sync_client=True) as client:
        runs, offset = [], 0
        while True:  # the API returns at most 200 a page
            batch = client.read_flow_runs(flow_run_filter=live, limit=page, offset=offset)
            runs += batch
            if len(batch) < page:
                break
            offset += page
        for run in runs:
            tag = next((t for t in run.tags if t.startswith(PROCESS_TAG)), None)
            if tag is None:
                continue
            where, _, pid = tag[len(PROCESS_TAG):].rpartition(":")
            if where != host or not pid.isdigit() or process_alive(int(pid)):
                continue
            client.set_flow_run_state(run.id, Crashed(message=f"its process {pid} on {host} is gone (killed)"),
                                      force=True)
            crashed.append(str(run.id))
    if crashed:
        logging.getLogger(__name__).warning("marked %d run(s) of killed ebr commands as Crashed: %s", len(crashed),
                                            crashed)
    return crashed
