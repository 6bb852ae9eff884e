"""The data gates as flow tasks: every flow that reads canonical tables validates them before it writes
anything that serving reads (feature snapshots and the online store, examples, an index).

Each report is kept in the run's directory (the next run of the same flow compares with the newest accepted
one) and shown as an artifact of the run; a failed gate raises ``GateFailed`` and the flow stops there.
"""

from __future__ import annotations

import re
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from infra.settings import get_settings
from ingest.contract import DatasetManifest, read_dataset, read_manifest
from validation.gate import GateReport, enforce, latest_report, run_gate
from validation.suites import GateConfig, examples_suite, input_suite

INPUT_TABLES = ("searchers", "documents", "sessions")
RELATION_TABLES = ("memberships", "friendships")  # gated against the ids of the searchers and documents
# Above this many rows in the gated tables, ``gate_dataset`` validates them in a child process: the memory
# of millions of string ids goes back to the system when it exits instead of staying, freed but held by the
# allocator, under the feature computation that follows (the 1M world holds about 12M rows).
ISOLATE_ABOVE_ROWS = 2_000_000


@task(cache_policy=NO_CACHE)
def gate(name: str, df: pd.DataFrame, config: GateConfig, previous: GateReport | None, run_dir: Path, dataset: str,
         references: dict[str, pd.Index] | None = None):
    """Validate, keep the report with the run (files + UI), then stop the run if it failed."""
    suite = (examples_suite(df.columns, config) if name == "examples"
             else input_suite(name, df.columns, config, references))
    return _record(run_gate(name, df, suite, previous), run_dir, dataset)


@task(cache_policy=NO_CACHE, task_run_name="gate-{report.name}")
def record_gate(report: GateReport, run_dir: Path, dataset: str):
    """Keep a report computed elsewhere (``validate_dataset``) with the run, then stop the run if it failed."""
    return _record(report, run_dir, dataset)


def _record(report: GateReport, run_dir: Path, dataset: str) -> GateReport:
    name = report.name
    report.save(run_dir / "gates")
    create_markdown_artifact(
        markdown=report.to_markdown(),
        key=re.sub(r"[^a-z0-9-]+", "-", f"gate-{dataset}-{name}".lower()),
        description=f"data gate {name} of {dataset}",
    )
    return enforce(report)


def references_of(tables: dict[str, pd.DataFrame]) -> dict[str, pd.Index]:
    """The ids the sessions, memberships and friendships must refer to: those of the searchers and documents
    tables."""
    return {"searcher_id": pd.Index(tables["searchers"]["searcher_id"].astype(str)),
            "doc_id": pd.Index(tables["documents"]["doc_id"].astype(str))}


def gate_inputs(tables: dict[str, pd.DataFrame], config: GateConfig, runs_root: Path, run_dir: Path,
                dataset: str) -> None:
    """The input gates of the given canonical tables (searchers, documents, sessions, memberships,
    friendships), each compared with the newest accepted report of the same flow under ``runs_root``; id
    references are checked when ``tables`` holds the searchers and documents."""
    refs = references_of(tables) if {"searchers", "documents"} <= set(tables) else None
    for name in (*INPUT_TABLES, *RELATION_TABLES):
        if name in tables:
            gate(name, tables[name], config, latest_report(runs_root, name), run_dir, dataset, refs)


def validate_dataset(dataset_path: str, config: GateConfig,
                     previous: dict[str, GateReport | None]) -> tuple[DatasetManifest, list[GateReport]]:
    """Read and validate a dataset's input tables in two reads, the first released before the second: the
    searchers, documents and sessions, then the memberships and friendships against the first two's ids.
    ``previous``: each table's newest accepted report. Every table is validated, also after a failure."""
    def validate(tables: dict[str, pd.DataFrame], references: dict[str, pd.Index]) -> list[GateReport]:
        return [run_gate(n, df, input_suite(n, df.columns, config, references), previous.get(n))
                for n, df in tables.items()]

    core = read_dataset(dataset_path, tables=INPUT_TABLES)
    manifest, tables = core.manifest, {n: getattr(core, n) for n in INPUT_TABLES}
    assert manifest is not None  # read_dataset reads the manifest first (a directory without one raises)
    del core
    references = references_of(tables)
    reports = validate(tables, references)
    del tables
    relations = read_dataset(dataset_path, tables=RELATION_TABLES)
    if relations.manifest != manifest:
        raise RuntimeError(f"dataset {dataset_path} was replaced while the gates read it; run again")
    tables = {n: getattr(relations, n) for n in RELATION_TABLES}
    del relations
    return manifest, reports + validate(tables, references)


def gate_dataset(dataset: str, config: GateConfig, runs_root: Path, run_dir: Path,
                 isolate: bool | None = None) -> DatasetManifest:
    """Gate every input table of ``dataset`` (``validate_dataset``), keep the reports with the run and stop
    it at the first failed one; returns the manifest of the data the gates passed. ``isolate``: validate in a
    child process (None: when the tables hold more than ``ISOLATE_ABOVE_ROWS`` rows)."""
    path = get_settings().dataset_path(dataset)
    gated = (*INPUT_TABLES, *RELATION_TABLES)
    if isolate is None:
        isolate = sum(read_manifest(path).row_counts.get(n, 0) for n in gated) > ISOLATE_ABOVE_ROWS
    previous = {n: latest_report(runs_root, n) for n in gated}
    if not isolate:
        manifest, reports = validate_dataset(str(path), config, previous)
    else:
        # spawn, not fork: a fork of a process with threads (Prefect's) may deadlock
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            try:
                manifest, reports = pool.submit(validate_dataset, str(path), config, previous).result()
            except BrokenProcessPool as exc:
                raise RuntimeError(f"the process validating {dataset} died (out of memory?): {exc}") from exc
    states = [record_gate(report, run_dir, dataset, return_state=True) for report in reports]
    for state in states:
        state.result()  # raises GateFailed of the first table that failed
    return manifest
