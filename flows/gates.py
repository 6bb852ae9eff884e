"""The data gates as flow tasks: every flow that reads canonical tables validates them before it writes
anything that serving reads (feature snapshots and the online store, examples, an index).

Each report is kept in the run's directory (the next run of the same flow compares with the newest accepted
one) and shown as an artifact of the run; a failed gate raises ``GateFailed`` and the flow stops there.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from validation.gate import GateReport, latest_report
from validation.suites import GateConfig

INPUT_TABLES = ("searchers", "documents", "sessions")
RELATION_TABLES = ("memberships", "friendships")  # gated against the ids of the searchers and documents


@task(cache_policy=NO_CACHE)
def gate(name: str, df: pd.DataFrame, config: GateConfig, previous: GateReport | None, run_dir: Path, dataset: str,
         references: dict[str, pd.Index] | None = None):
    """Validate, keep the report with the run (files + UI), then stop the run if it failed."""
    from validation.gate import enforce, run_gate
    from validation.suites import examples_suite, input_suite

    suite = (examples_suite(df.columns, config) if name == "examples"
             else input_suite(name, df.columns, config, references))
    report = run_gate(name, df, suite, previous)
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
                dataset: str, references: dict[str, pd.Index] | None = None) -> None:
    """The input gates of the given canonical tables (searchers, documents, sessions, memberships,
    friendships), each compared with the newest accepted report of the same flow under ``runs_root``.
    ``references``: the ids of the run's searchers and documents, when ``tables`` does not hold them."""
    refs = references_of(tables) if {"searchers", "documents"} <= set(tables) else references
    for name in (*INPUT_TABLES, *RELATION_TABLES):
        if name in tables:
            gate(name, tables[name], config, latest_report(runs_root, name), run_dir, dataset, refs)
