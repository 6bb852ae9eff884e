"""The data gate: run a Great Expectations suite over a DataFrame and decide whether the pipeline may go on.

A gate is one GE validation (ephemeral context, pandas data source, whole-dataframe batch) turned into a
``GateReport`` that a person can read (markdown, in the run directory and the Prefect UI) and the next run can
compare against (JSON: the row count is checked against the previous report's). ``enforce`` raises
``GateFailed`` so that nothing downstream of a bad input runs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from infra.atomic import atomic_file
from validation.drift import coverage, describe, drift, profile, time_span_days

REPORT_FORMAT = 1
MAX_EXAMPLES = 5


@dataclass(frozen=True)
class GateSuite:
    """What a gate checks: GE expectations plus the row-count policy.

    ``expectations`` is a factory so that each run gets fresh GE objects (an expectation belongs to one suite).
    ``derive`` adds computed columns the expectations look at (e.g. whether a session has a click, the min/max
    of list-valued weights), because GE checks columns of scalars.
    ``row_count_tolerance``: with a previous report, the row count must stay within previous * (1 +/- tol),
    scaled by the ratio of the two runs' time spans when both have one (rows per day: a backfill over a week
    and a nightly over the whole history meet the same bound).
    ``table`` names the profile kept for drift checks (``validation.drift``); ``drift`` bounds the change of
    that profile against the previous report; ``accept_changes`` records such changes instead of failing.
    """

    name: str
    expectations: Callable[[], Sequence[Any]]
    derive: Callable[[pd.DataFrame], pd.DataFrame] | None = None
    min_rows: int = 1
    max_rows: int | None = None
    row_count_tolerance: float | None = 0.5
    table: str | None = None
    drift: Any = None  # validation.drift.DriftBounds
    accept_changes: bool = False

    def row_bounds(self, previous: GateReport | None, days: float | None = None) -> tuple[int, int | None]:
        lo, hi = self.min_rows, self.max_rows
        if previous is not None and self.row_count_tolerance is not None and previous.row_count > 0:
            tol = self.row_count_tolerance
            expected: float = previous.row_count
            if days and previous.days:
                expected = previous.row_count * days / previous.days
            lo = max(lo, math.ceil(expected * (1 - tol)))
            grown = math.floor(expected * (1 + tol))
            hi = grown if hi is None else min(hi, grown)
        return lo, hi


@dataclass(frozen=True)
class GateFailure:
    """One failed expectation: which, on what column, how many rows, a few offending values, and why."""

    expectation: str
    column: str | None
    unexpected_count: int | None
    examples: list[str]
    detail: str = ""


@dataclass
class GateReport:
    name: str
    passed: bool
    row_count: int
    failures: list[GateFailure] = field(default_factory=list)
    evaluated: int = 0
    row_bounds: tuple[int, int | None] = (1, None)
    previous_row_count: int | None = None
    created_at: str = ""
    format: int = REPORT_FORMAT
    days: float | None = None  # time span of the table's rows
    profile: dict = field(default_factory=dict)  # validation.drift.profile
    accepted: list[str] = field(default_factory=list)  # changes against the previous run, accepted by the operator

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> GateReport:
        data = json.loads(text)
        data["failures"] = [GateFailure(**f) for f in data.get("failures", [])]
        data["row_bounds"] = tuple(data.get("row_bounds", (1, None)))
        return cls(**data)

    def to_markdown(self) -> str:
        status = "PASSED" if self.passed else "FAILED"
        lo, hi = self.row_bounds
        prev = f", previous run {self.previous_row_count}" if self.previous_row_count is not None else ""
        lines = [
            f"## Data gate `{self.name}`: {status}",
            "",
            f"- rows: {self.row_count} (allowed {lo} to {hi if hi is not None else 'unbounded'}{prev})",
            f"- expectations evaluated: {self.evaluated}, failed: {len(self.failures)}",
            f"- checked at: {self.created_at}",
        ]
        if self.accepted:
            lines += ["", "Accepted by the operator (accept_changes): " + "; ".join(self.accepted)]
        if self.failures:
            lines += [
                "",
                "| expectation | column | unexpected rows | examples | why |",
                "|---|---|---|---|---|",
            ]
            for f in self.failures:
                count = "" if f.unexpected_count is None else str(f.unexpected_count)
                examples = ", ".join(f.examples).replace("|", "\\|")
                lines.append(
                    f"| {f.expectation} | {f.column or ''} | {count} | {examples} | {f.detail.replace('|', '/')} |"
                )
        return "\n".join(lines) + "\n"

    def save(self, directory: Path) -> tuple[Path, Path]:
        """Write ``<name>.json`` and ``<name>.md`` atomically; returns both paths."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = directory / f"{self.name}.json", directory / f"{self.name}.md"
        for path, text in zip(paths, (self.to_json(), self.to_markdown())):
            with atomic_file(path) as tmp:
                tmp.write_text(text)
        return paths

    @classmethod
    def load(cls, path: Path) -> GateReport:
        return cls.from_json(Path(path).read_text())


class GateFailed(Exception):
    """A data gate failed; the message is the markdown report."""

    def __init__(self, report: GateReport):
        self.report = report
        super().__init__(report.to_markdown())


def enforce(report: GateReport) -> GateReport:
    """Raise GateFailed when the report did not pass; otherwise hand it back."""
    if not report.passed:
        raise GateFailed(report)
    return report


# --------------------------------------------------------------------------- running a suite


def _context():
    """A fresh in-memory GE context with progress bars and analytics off (nothing written to disk)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    context.config.analytics_enabled = False
    return context


def _short(value: Any, limit: int = 60) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _columns(kwargs: dict) -> list[str]:
    cols = [kwargs[k] for k in ("column", "column_A", "column_B") if kwargs.get(k)]
    return cols + list(kwargs.get("column_list") or [])


def _exception_message(info: Any) -> str | None:
    """GE nests exception info per metric; return the first message of a raised exception."""
    if not isinstance(info, dict):
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    for value in info.values():
        if isinstance(value, dict) and value.get("raised_exception"):
            return str(value.get("exception_message"))
    return None


def _bounds_text(kwargs: dict) -> str:
    lo, hi = kwargs.get("min_value"), kwargs.get("max_value")
    if lo is None and hi is None:
        return ""
    return f"allowed [{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"


def _failure(res: Any, missing: set[str]) -> GateFailure | None:
    cfg = res.expectation_config
    kwargs = dict(cfg.kwargs)
    cols = _columns(kwargs)
    error = _exception_message(res.exception_info)
    if error is not None and set(cols) & missing:
        return None  # the missing column is already reported by its expect_column_to_exist
    result = res.result or {}
    count = result.get("unexpected_count")
    examples = [_short(v) for v in (result.get("partial_unexpected_list") or [])[:MAX_EXAMPLES]]
    parts = [cfg.description or ""]
    if cfg.type == "expect_table_row_count_to_be_between" and result.get("observed_value") == 0:
        parts.insert(0, "empty input")
    if error is not None:
        parts.append(f"error: {error}")
    if "observed_value" in result:
        parts.append(f"observed {_short(result['observed_value'])}")
    parts.append(_bounds_text(kwargs))
    detail = "; ".join(p for p in parts if p)
    column = cols[0] if len(cols) == 1 else (",".join(cols) or None)
    return GateFailure(cfg.type, column, None if count is None else int(count), examples, detail)


def run_gate(
    name: str, df: pd.DataFrame, suite: GateSuite, previous: GateReport | None = None
) -> GateReport:
    """Validate ``df`` with ``suite`` (plus the row-count bounds, from ``previous`` when given)."""
    import great_expectations as gx

    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"gate {name!r} needs a pandas DataFrame, got {type(df).__name__}")

    frame = suite.derive(df) if suite.derive is not None else df
    # One consolidated block per dtype: GE's metrics otherwise make pandas merge the object blocks again and
    # again (on the 1M world's friendships, a third of the gate's time).
    frame = frame.copy()
    days = time_span_days(df, suite.table) if suite.table else None
    lo, hi = suite.row_bounds(previous, days)
    accepted: list[str] = []
    if suite.accept_changes and previous is not None and not lo <= len(df) <= (hi if hi is not None else len(df)):
        accepted.append(f"row count {len(df)} outside [{lo}, {hi}] (previous run {previous.row_count})")
        lo, hi = suite.min_rows, suite.max_rows
    context = _context()
    asset = context.data_sources.add_pandas(f"{name}-source").add_dataframe_asset(f"{name}-frame")
    batch = asset.add_batch_definition_whole_dataframe(f"{name}-batch")
    gx_suite = context.suites.add(gx.ExpectationSuite(name=f"{suite.name}-suite"))
    gx_suite.add_expectation(
        gx.expectations.ExpectTableRowCountToBeBetween(
            min_value=lo, max_value=hi,
            description="row count within bounds (never empty; within tolerance of the previous run)",
        )
    )
    for expectation in suite.expectations():
        gx_suite.add_expectation(expectation)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{name}-validation", data=batch, suite=gx_suite)
    )
    try:
        result = definition.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY")
    finally:
        # GE keeps its newest context as a process-wide project context, whose data source caches the batch:
        # without this the validated frame stays alive after the gate.
        context.data_sources.delete(f"{name}-source")
    missing = {
        r.expectation_config.kwargs["column"]
        for r in result.results
        if r.expectation_config.type == "expect_column_to_exist" and not r.success
    }
    failures = [f for r in result.results if not r.success and (f := _failure(r, missing)) is not None]
    table_profile = profile(df, suite.table) if suite.table else {}
    if suite.drift is not None and previous is not None and previous.profile:
        compared = {c: {**p, "previous_values_share": coverage(df, c, previous.profile[c]["top_values"])}
                    if "top_values" in previous.profile.get(c, {}) else p for c, p in table_profile.items()}
        for change in drift(previous.profile, compared, suite.drift):
            if suite.accept_changes:
                accepted.append(describe(change))
            else:
                failures.append(GateFailure(
                    "drift_against_previous_run", change["column"], None, [],
                    f"{describe(change)}; if the change is real, re-run with accept_changes"))
    failures.sort(key=lambda f: (f.expectation != "expect_table_row_count_to_be_between", f.column or ""))
    return GateReport(
        name=name,
        passed=not failures,
        row_count=len(df),
        failures=failures,
        evaluated=len(result.results),
        row_bounds=(lo, hi),
        previous_row_count=previous.row_count if previous is not None else None,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        days=days, profile=table_profile, accepted=accepted,
    )


def latest_report(runs_dir: Path, name: str, passed_only: bool = True) -> GateReport | None:
    """The newest saved report called ``name`` under ``runs_dir/<run>/gates/`` (run dirs sort by time)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return None
    for run in sorted((p for p in runs_dir.iterdir() if p.is_dir()), reverse=True):
        path = run / "gates" / f"{name}.json"
        if path.exists():
            report = GateReport.load(path)
            if report.passed or not passed_only:
                return report
    return None
