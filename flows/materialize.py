"""The materialize flow: canonical tables -> daily feature snapshots -> Feast offline sources -> online store.

Steps: gate the canonical tables -> for each day, compute the snapshot as of the end of the day and write it
(one parquet file per entity and day, replaced atomically; a backfill's days in ``partitions`` mapped tasks)
-> apply the feature repository -> load the online store -> publish per-day row counts as a markdown artifact.

Nightly runs (no dates) take yesterday relative to the run's scheduled start; a backfill passes any range.
Re-running a range rewrites the same files with the same content, so a run that crashed half way is
simply run again. The work is done by plain functions in ``features.compute`` and ``features.store``.
"""

from __future__ import annotations

import re
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm.auto import tqdm

from features.compute import (
    FEATURE_TABLES,
    SESSION_COLUMNS,
    FeatureConfig,
    as_of_for_day,
    cluster_anchor,
    compute_features,
    days_between,
)
from features.online_load import OnlineLoad
from features.store import FeatureRepo
from flows.gates import gate_dataset
from flows.housekeeping import clean_up_leftovers
from flows.runners import task_runner
from infra.retries import retry_transient
from infra.run_dirs import run_dir, runs_root
from infra.settings import get_settings
from ingest.contract import read_dataset
from validation.suites import GateConfig

MAX_DAYS = 3660


class MaterializeParams(BaseModel):
    """Validated flow parameters; ``days()`` resolves omitted dates for nightly runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: str = Field("synthetic-default", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=100)
    start_date: date | None = None
    end_date: date | None = None
    # Snapshot cadence of a backfill: 1 = daily; up to the feature views' 7-day TTL, so that every event in
    # the range still finds a snapshot (a long history can be backfilled weekly in a seventh of the time).
    every_days: int = Field(1, ge=1, le=7)
    # Mapped tasks computing the days (flows.runners: threads here, a Dask cluster with EBR_DASK_ADDRESS).
    partitions: int = Field(1, ge=1, le=256)
    # Validate the input tables in a child process (None: when they are large; see flows.gates).
    isolate_gates: bool | None = None

    @model_validator(mode="after")
    def _ordered(self) -> MaterializeParams:
        if self.start_date and self.end_date:
            if self.end_date < self.start_date:
                raise ValueError(f"end_date {self.end_date} is before start_date {self.start_date}")
            if (self.end_date - self.start_date).days + 1 > MAX_DAYS:
                raise ValueError(f"a run covers at most {MAX_DAYS} days; split the backfill")
        return self

    def days(self, scheduled: datetime | None = None) -> list[date]:
        """The days to materialize: the given range (a missing end is the start and vice versa), or the day
        before ``scheduled`` (the run's scheduled start, UTC) when both are omitted."""
        start, end = self.start_date, self.end_date
        if start is None and end is None:
            when = scheduled or datetime.now(timezone.utc)
            if when.tzinfo is None:
                when = when.replace(tzinfo=timezone.utc)
            start = end = when.astimezone(timezone.utc).date() - timedelta(days=1)
        start, end = start or end, end or start
        assert start is not None and end is not None  # one of them is given, or both were set above
        days = days_between(start, end)
        picked = days[:: self.every_days]
        return picked if picked[-1] == days[-1] else [*picked, days[-1]]


class DayCounts(BaseModel):
    day: date
    searchers: int
    documents: int
    seconds: float


class MaterializeReport(BaseModel):
    dataset: str
    root: str
    days: list[DayCounts]
    window_start: datetime
    window_end: datetime
    materialize_seconds: float
    online: list[OnlineLoad] = []

    def to_markdown(self) -> str:
        lines = [
            f"# Feature materialization: {self.dataset}",
            "",
            f"Online store loaded with snapshots from {self.window_start:%Y-%m-%d %H:%M} to "
            f"{self.window_end:%Y-%m-%d %H:%M} UTC in {self.materialize_seconds:.1f} s.",
            "",
            "| day | searcher rows | document rows | compute + write (s) |",
            "|---|---:|---:|---:|",
            *[f"| {d.day} | {d.searchers} | {d.documents} | {d.seconds:.2f} |" for d in self.days],
            "",
            "| online store | snapshot | entities | written | load | seconds |",
            "|---|---|---:|---:|---|---:|",
            *[f"| {o.entity} | {o.day} | {o.rows} | {o.written} | {'full' if o.full else 'changes only'}: "
              f"{o.reason} | {o.seconds:.1f} |" for o in self.online],
        ]
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- tasks


def day_partitions(days: list[date], n: int, config: FeatureConfig | None = None) -> list[list[date]]:
    """``days`` in at most ``n`` partitions of consecutive days, each a whole number of community periods
    (one community detection per period, never repeated in two partitions), near-equal in days."""
    config = config or FeatureConfig()
    groups: list[list[date]] = []
    for day in days:
        anchor = cluster_anchor(as_of_for_day(day), config.cluster_period_days)
        if groups and cluster_anchor(as_of_for_day(groups[-1][0]), config.cluster_period_days) == anchor:
            groups[-1].append(day)
        else:
            groups.append([day])
    n = max(1, min(n, len(groups)))
    parts: list[list[date]] = [[]]
    placed = 0
    for i, group in enumerate(groups):
        # the next partition starts when this group would fill this one past its share more than it lacks
        # without it, or when every group left is needed to give each partition still to start one
        share_reached = placed + len(group) / 2 >= len(days) * len(parts) / n
        if parts[-1] and len(parts) < n and (share_reached or len(groups) - i <= n - len(parts)):
            parts.append([])
        parts[-1].extend(group)
        placed += len(group)
    return parts


@task(retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=2, cache_policy=NO_CACHE)
def compute_partition(dataset_path: str, manifest: Any, root: str, days: list[date]) -> list[DayCounts]:
    """Compute and write the snapshots of ``days`` (one partition): in this process, or on a Dask worker
    that shares the file system (it reads the canonical tables itself; only the counts travel back)."""
    data = read_dataset(Path(dataset_path), tables=FEATURE_TABLES, columns={"sessions": SESSION_COLUMNS})
    if data.manifest != manifest:
        raise RuntimeError(f"dataset {dataset_path} was replaced while this run read it; run it again")
    repo = FeatureRepo(root)
    communities: dict = {}  # one community detection per anchor period across the partition
    counts = []
    for day in tqdm(days, desc="materialize: days", unit="day"):
        t0 = time.perf_counter()
        searchers, documents = compute_features(data, as_of_for_day(day), FeatureConfig(), communities)
        repo.write_sources(searchers, documents, day)
        counts.append(DayCounts(day=day, searchers=len(searchers), documents=len(documents),
                                seconds=time.perf_counter() - t0))
    return counts


@task(retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=2, cache_policy=NO_CACHE)
def apply_repo(root: str) -> None:
    FeatureRepo(root).apply()


@task(retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=5, cache_policy=NO_CACHE)
def materialize_online(root: str, first_day: date, last_day: date,
                       full: bool = False) -> tuple[datetime, datetime, list[OnlineLoad]]:
    """Load the range into the online store, up to the newest written day: the online store keeps one row
    per key, so a backfill of an old range must not leave older values there. Only the entities that changed
    since the snapshot the store holds are written (``full``: all of them)."""
    repo = FeatureRepo(root)
    newest = max([last_day, *repo.source_days("searcher"), *repo.source_days("document")])
    start, end = as_of_for_day(first_day), as_of_for_day(newest)
    return start, end, repo.materialize(start, end, full=full, progress=True)


@task(cache_policy=NO_CACHE)
def publish_report(report: MaterializeReport) -> None:
    create_markdown_artifact(
        markdown=report.to_markdown(),
        key=re.sub(r"[^a-z0-9-]+", "-", f"materialize-{report.dataset}".lower()),
        description=f"feature snapshots of {report.dataset}",
    )


# --------------------------------------------------------------------------- flow


@flow(name="materialize", log_prints=True, task_runner=task_runner())
def materialize(
    dataset: str = "synthetic-default",
    start_date: date | None = None,
    end_date: date | None = None,
    every_days: int = 1,
    gates: GateConfig | None = None,
    full_online: bool = False,
    partitions: int = 1,
    isolate_gates: bool | None = None,
) -> MaterializeReport:
    """Compute, write and materialize the feature snapshots of ``dataset`` for a range of days (daily, or
    every ``every_days`` days for a long backfill). The canonical tables pass the input gates first: nothing
    reaches the feature sources or the online store from a table that fails them. The online store gets
    only what changed since the snapshot it holds; ``full_online`` rewrites every entity. ``partitions`` > 1
    computes the days of a backfill as that many mapped tasks (whole community periods each), on a Dask
    cluster with ``EBR_DASK_ADDRESS``: the same snapshots as one partition. ``isolate_gates``: validate the
    tables in a child process that returns its memory when it exits (default: when they are large)."""
    params = MaterializeParams(dataset=dataset, start_date=start_date, end_date=end_date, every_days=every_days,
                               partitions=partitions, isolate_gates=isolate_gates)
    days = params.days(flow_run.scheduled_start_time)
    log = get_run_logger()
    root = str(FeatureRepo.for_dataset(params.dataset).root)
    log.info("materializing %s for %s .. %s into %s", params.dataset, days[0], days[-1], root)

    runs = runs_root("materialize", params.dataset)
    clean_up_leftovers(runs)
    with run_dir(runs, flow_run.id) as rdir:
        manifest = gate_dataset(params.dataset, gates or GateConfig(), runs, rdir, params.isolate_gates)
    # The gates saw the whole tables; each partition reads the fraction the features use and checks that it
    # is the dataset the gates passed.
    parts = day_partitions(days, params.partitions)
    dataset_path = str(get_settings().dataset_path(params.dataset))
    if len(parts) == 1:
        counts = compute_partition(dataset_path, manifest, root, parts[0])
    else:
        log.info("computing %d days in %d partitions on %s", len(days), len(parts), type(task_runner()).__name__)
        futures = compute_partition.map(unmapped(dataset_path), unmapped(manifest), unmapped(root), parts)
        counts = [c for f in futures for c in f.result()]
    apply_repo(root)
    t0 = time.perf_counter()
    start, end, online = materialize_online(root, days[0], days[-1], full_online)
    report = MaterializeReport(
        dataset=params.dataset, root=root, days=counts, window_start=start, window_end=end,
        materialize_seconds=time.perf_counter() - t0, online=online,
    )
    publish_report(report)
    return report


if __name__ == "__main__":
    materialize()
