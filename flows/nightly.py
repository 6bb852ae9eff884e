"""The nightly chain: materialize -> validate -> (retrain when due) -> rebuild the index -> evaluate.

Each step is the deployed flow of its own, run here as a subflow, so its figures (feature snapshot counts,
gate reports, training metrics, index validation, evaluation) appear as Prefect artifacts in the UI under
this run. A failed gate or index validation stops the chain: nothing after it runs, nothing is published.

With no dates the run covers yesterday relative to its scheduled start (the nightly schedule); a date range
makes it a backfill of the features followed by one retrain/rebuild at the end of the range.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from pydantic import BaseModel

from flows.evaluate import evaluate
from flows.materialize import materialize
from flows.rebuild_index import RebuildParams, rebuild_index
from flows.train import TrainParams, artifact_key, train
from flows.training_data import TrainingDataParams, training_data
from infra.names import default_model_name
from infra.resources import StepFigures, measured
from infra.retries import retry_transient
from infra.storage import ArtifactStore
from validation.suites import GateConfig

Retrain = Literal["auto", "always", "never"]


class NightlyReport(BaseModel):
    dataset: str
    days: list[date]
    examples: str
    model: str
    retrained: bool
    retrain_reason: str = ""
    index: str
    metrics: dict[str, float]
    steps: list[StepFigures] = []

    def to_markdown(self) -> str:
        ks = [k for k in self.metrics if k.startswith(("recall@", "mrr", "ndcg"))]
        head = "| " + " | ".join(ks) + " |\n|" + "---:|" * len(ks)
        row = "| " + " | ".join(f"{self.metrics[k]:.4f}" for k in ks) + " |"
        return "\n".join(
            [
                f"# Nightly run: {self.dataset}",
                "",
                f"- feature snapshots: {self.days[0]} .. {self.days[-1]} ({len(self.days)} days)",
                f"- training examples: `{self.examples}`",
                f"- model: `{self.model}` ({'retrained tonight' if self.retrained else 'unchanged'}: {self.retrain_reason})",
                f"- index: `{self.index}`",
                "",
                "Held-out evaluation of the serving model (exact KNN):",
                "",
                head,
                row,
                "",
                "| step | wall time (s) | peak memory of the run (GB) |",
                "|---|---:|---:|",
                *[f"| {s.step} | {s.seconds:.1f} | {s.peak_rss_gb:.2f} |" for s in self.steps],
                f"| whole chain | {sum(s.seconds for s in self.steps):.1f} | "
                f"{max((s.peak_rss_gb for s in self.steps), default=0.0):.2f} |",
                "",
            ]
        )


def failure_markdown(dataset: str, step: str, exc: BaseException) -> str:
    """What stopped the chain, with the report that explains it when there is one (a data gate's or the
    index validation's): nothing after that step ran and nothing from it was published."""
    lines = [f"# Nightly run: {dataset}: FAILED at {step}", "",
             f"`{type(exc).__name__}`: nothing after {step} ran; what is current stays current.", ""]
    report = getattr(exc, "report", None)  # validation.gate.GateFailed
    validation = getattr(exc, "validation", None)  # serving.index_validation.IndexValidationError
    if report is not None and hasattr(report, "to_markdown"):
        lines.append(report.to_markdown())
    elif validation is not None and hasattr(validation, "to_markdown"):
        lines.append(validation.to_markdown())
    else:
        lines.append(str(exc))
    return "\n".join(lines) + "\n"


class NoModelError(RuntimeError):
    """retrain="never" and nothing to serve: the chain stops before any work."""


def retrain_decision(mode: Retrain, has_model: bool, run_day: date, weekday: int) -> tuple[bool, str]:
    """(retrain?, why). "always" retrains; "auto" retrains when there is no model yet or on the weekly
    retraining day (0 = Monday); "never" never does, and without a model there is nothing to serve."""
    if mode == "never":
        if not has_model:
            raise NoModelError("retrain='never' but no model is registered yet: train one first ('ebr train') "
                               "or run with retrain='auto'")
        return False, "retrain=never"
    if mode == "always":
        return True, "retrain=always"
    if not has_model:
        return True, "no registered model yet"
    if run_day.weekday() == weekday:
        return True, f"weekly retraining day ({run_day:%A})"
    return False, f"not the weekly retraining day ({date(2024, 1, 1 + weekday):%A})"


def retrain_due(mode: Retrain, has_model: bool, run_day: date, weekday: int) -> bool:
    return retrain_decision(mode, has_model, run_day, weekday)[0]


@task(retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=5)
def has_registered_model(name: str) -> bool:
    return ArtifactStore.from_settings().current("model", name) is not None


@flow(name="nightly", log_prints=True)
def nightly(
    dataset: str = "synthetic-default",
    start_date: date | None = None,
    end_date: date | None = None,
    every_days: int = 1,
    retrain: Retrain = "auto",
    retrain_weekday: int = 6,
    train_params: TrainParams | None = None,
    rebuild_params: RebuildParams | None = None,
    accept_changes: bool = False,
) -> NightlyReport:
    """Run the whole chain for ``dataset``; see the module docstring. ``accept_changes``: an operator's
    decision that tonight's changes against the previous run are real (data gate drift and row counts, a drop
    of indexed documents); the reports record what was accepted."""
    log = get_run_logger()
    model_name = (train_params.model_name if train_params else None) or default_model_name(dataset)
    scheduled = flow_run.scheduled_start_time or datetime.now(timezone.utc)
    run_day = end_date or (scheduled.date() - timedelta(days=1))
    steps: list[StepFigures] = []  # wall time and peak memory per step, in the report
    step = "retrain decision"

    def run(name: str, fn, *args, **kwargs):
        nonlocal step
        step = name
        with measured(name) as fig:
            steps.append(fig)
            return fn(*args, **kwargs)

    try:
        # decided before any work, so that retrain="never" without a model stops here with nothing changed
        due, why = retrain_decision(retrain, has_registered_model(model_name), run_day, retrain_weekday)
        log.info("retrain: %s (%s)", "yes" if due else "no", why)
        gates = GateConfig(accept_changes=True) if accept_changes else None
        report = run("materialize", materialize, dataset, start_date, end_date, every_days, gates=gates)
        days = [d.day for d in report.days]
        data_params = TrainingDataParams(gates=GateConfig(accept_changes=True)) if accept_changes else None
        examples = run("training data", training_data, dataset, end_date=days[-1], params=data_params)
        if accept_changes:
            rebuild_params = rebuild_params or RebuildParams()
            rebuild_params = rebuild_params.model_copy(
                update={"validation": rebuild_params.validation.model_copy(update={"accept_drop": True}),
                        "gates": rebuild_params.gates.model_copy(update={"accept_changes": True})})
        if due:
            model = run("train", train, dataset, train_params)
        else:
            model = f"model/{model_name} (current)"
            log.info("not retraining (%s): serving the current %s", why, model_name)
        index = run("rebuild-index", rebuild_index, dataset, model_name=model_name, as_of=days[-1],
                    params=rebuild_params)
        metrics = run("evaluate", evaluate, dataset, model_name=model_name)
    except Exception as exc:
        # The failure, and the gate or validation report behind it, on the nightly run itself: one click
        # from the run list in the UI, not two levels down in a subflow.
        create_markdown_artifact(markdown=failure_markdown(dataset, step, exc), key=artifact_key("nightly", dataset),
                                 description=f"nightly chain of {dataset}: FAILED at {step}")
        raise
    result = NightlyReport(
        dataset=dataset, days=days, examples=examples, model=model, retrained=due, retrain_reason=why, index=index,
        metrics={k: float(v) for k, v in metrics.items()}, steps=steps,
    )
    create_markdown_artifact(markdown=result.to_markdown(), key=artifact_key("nightly", dataset),
                             description=f"nightly chain of {dataset}")
    return result


if __name__ == "__main__":
    nightly()
