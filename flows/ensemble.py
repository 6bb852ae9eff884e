"""The ensemble flow: weighted-concatenation and cascade ensembles of registered models (section 6.2).

Steps: resolve the members (registered model names; the aliases ``unified``, ``text`` and ``hnm`` name the
dataset's unified, text-only and offline-HNM models, ``seedN`` the unified recipe trained with seed N (a seed
ensemble: ``unified,seed1,seed2``), and a missing one is trained first: ``train`` for all but the HNM model,
one ``mine`` round for it) -> fit the concatenation weights (a line search) or the cascade's
re-rank depth N on the validation split -> evaluate members and ensemble on the test split, exactly and on
the IVF-PQ index the nightly rebuild would build (the paper: quantization costs an ensemble more) ->
register the ensemble as a version of ``model/<dataset>-ensemble`` (its members' files and versions, weights
or N, feature service) -> the comparison table as an artifact. ``rebuild-index --model-name
<dataset>-ensemble`` then serves it; ``promote`` also makes it the dataset's current two-tower model.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Literal

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict, Field, field_validator

from evaluation.protocol import evaluate_split, quantized_metrics
from examples.splits import split_cutoff
from flows.housekeeping import clean_up_leftovers
from flows.mine import MineParams, mine
from flows.train import (
    NAME_PATTERN,
    TrainParams,
    artifact_key,
    documents_as_of,
    fetch_examples,
    laptop_config,
    publish_report,
    read_document_snapshots,
    servable_index,
    train,
)
from infra.names import default_examples_name, default_model_name
from infra.retries import retry_transient
from infra.run_dirs import run_dir, runs_root
from infra.storage import ArtifactStore
from models.config import TrainConfig
from models.ensemble import Cascade, WeightedConcat, fit_concat_weights, save_ensemble
from models.registry import load_registered_model, register_ensemble, registered_model_path

ALIASES = ("unified", "text", "hnm")
SEED_ALIAS = re.compile(r"^seed([1-9][0-9]{0,2})$")  # seedN: the unified recipe trained with seed N
DEFAULT_MEMBERS = {"weighted_concat": ("unified", "hnm"), "cascade": ("text", "unified")}


def seed_of(alias: str) -> int | None:
    """N of a ``seedN`` alias (another run of the unified recipe, for a seed ensemble), else None."""
    m = SEED_ALIAS.match(alias)
    return int(m.group(1)) if m else None


def is_alias(member: str) -> bool:
    """A member the flow can train where it is missing: ``unified``, ``text``, ``hnm`` or ``seedN``."""
    return member in ALIASES or seed_of(member) is not None


class EnsembleParams(BaseModel):
    """Which ensemble, of which members, fit how."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["weighted_concat", "cascade"] = Field("weighted_concat", description="how members combine")
    members: tuple[str, ...] = Field(
        (), description="registered model names (name or name@version) or the aliases unified, text, hnm and "
        "seedN (the unified recipe trained with seed N: unified,seed1,seed2 is a seed ensemble); empty: "
        "unified+hnm (weighted_concat) or text then unified (cascade: first stage, second stage)",
    )
    train_missing: bool = Field(True, description="train an alias member that is not registered yet")
    member_config: TrainConfig = Field(default_factory=laptop_config,
                                       description="training of a missing unified or text member")
    member_mining: MineParams = Field(default_factory=lambda: MineParams(rounds=1, promote=False),
                                      description="the mining run that makes a missing hnm member")
    weight_grid: tuple[float, ...] = Field((0.25, 0.5, 1.0, 2.0, 4.0), description="weights tried per member")
    rerank_grid: tuple[int, ...] = Field((20, 50, 100, 200), description="cascade depths N tried")
    metric: str = Field("recall@10", description="validation metric the weights or N maximize")
    model_name: str | None = Field(None, pattern=NAME_PATTERN, description="None: <dataset>-ensemble")
    promote: bool = Field(False, description="also register it as the current <dataset>-two-tower")
    max_eval_sessions: int = Field(10_000, ge=1, le=1_000_000)

    @field_validator("members")
    @classmethod
    def _names(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for m in v:
            name = m.split("@", 1)[0]
            if not is_alias(m) and not re.match(NAME_PATTERN, name):
                raise ValueError(f"member {m!r} is neither an alias ({', '.join(ALIASES)}, seedN) nor a model name")
        return v

    def member_list(self) -> tuple[str, ...]:
        members = self.members or DEFAULT_MEMBERS[self.kind]
        if self.kind == "cascade" and len(members) != 2:
            raise ValueError(f"a cascade has 2 members (first stage, second stage), got {list(members)}")
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {list(members)}")
        return members


def alias_name(alias: str, dataset: str) -> str:
    if seed_of(alias) is not None:
        return default_model_name(dataset, alias)
    return {"unified": default_model_name(dataset), "text": default_model_name(dataset, "text"),
            "hnm": default_model_name(dataset, "hnm")}.get(alias, alias.split("@", 1)[0])


# --------------------------------------------------------------------------- tasks


@task(retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=5, cache_policy=NO_CACHE)
def is_registered(name: str) -> bool:
    return ArtifactStore.from_settings().current("model", name) is not None


@task(retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=5, cache_policy=NO_CACHE)
def load_member(name: str, version: str | None):
    """(model, its manifest, its local model file)."""
    model, av = load_registered_model(name, version)
    return model, av, registered_model_path(name, av.version)


@task(cache_policy=NO_CACHE)
def fit_ensemble(kind: str, members: list, parts: dict, index: pd.DataFrame, params: EnsembleParams, seed: int):
    """(ensemble, the trials) with weights or depth chosen on the validation split."""
    def score(model) -> float:
        return evaluate_split(model, parts, "valid", index, max_sessions=params.max_eval_sessions, seed=seed)[
            params.metric]

    if kind == "weighted_concat":
        weights, trials = fit_concat_weights(members, score, params.weight_grid)
        return WeightedConcat(members, weights), trials
    trials = [{"rerank_n": n, "score": score(Cascade(members[0], members[1], n))} for n in params.rerank_grid]
    best = max(trials, key=lambda t: t["score"])
    return Cascade(members[0], members[1], best["rerank_n"]), trials


@task(cache_policy=NO_CACHE)
def compare(named: dict, parts: dict, index: pd.DataFrame, max_sessions: int, seed: int) -> dict:
    """Test metrics of each model, exact and on the IVF-PQ index the nightly rebuild would build."""
    out = {}
    for name, model in named.items():
        out[name] = {"exact": evaluate_split(model, parts, "test", index, max_sessions=max_sessions, seed=seed),
                     "quantized": quantized_metrics(model, parts, "test", index, max_sessions=max_sessions,
                                                    seed=seed)}
    return out


@task(retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=5, cache_policy=NO_CACHE)
def register_ensemble_version(ensemble, files: list[Path], refs: list[str], out_dir: Path, name: str,
                              metrics: dict, config: dict, examples_ref: str, extra: dict) -> str:
    save_ensemble(ensemble, files, refs, out_dir)
    return register_ensemble(out_dir, name, metrics, config, examples_ref, extra=extra).ref


def comparison_markdown(title: str, results: dict, trials: list[dict], chosen: str, facts: dict) -> str:
    ks = ("recall@1", "recall@10", "recall@100")
    lines = [f"# {title}", "", "| model | " + " | ".join(ks) + " | " + " | ".join(f"IVF-PQ {k}" for k in ks[1:])
             + " |", "|---|" + "---:|" * (len(ks) + 2)]
    for name, r in results.items():
        q = r["quantized"]
        lines.append(f"| {name} | " + " | ".join(f"{r['exact'][k]:.4f}" for k in ks) + " | "
                     + " | ".join("-" if q is None else f"{q[k]:.4f}" for k in ks[1:]) + " |")
    lines += ["", f"Chosen on the validation split: {chosen}.", "", "| trial | valid score |", "|---|---:|"]
    lines += [f"| {', '.join(f'{k}={v}' for k, v in t.items() if k != 'score')} | {t['score']:.4f} |" for t in trials]
    lines += [""] + [f"- **{k}**: {v}" for k, v in facts.items()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- flow


@flow(name="ensemble", log_prints=True)
def ensemble(dataset: str = "synthetic-default", params: EnsembleParams | None = None) -> str:
    """Fit, evaluate and register an ensemble of ``dataset``'s models; returns its model ref."""
    params = params or EnsembleParams()
    log = get_run_logger()
    members = params.member_list()
    names = [alias_name(m, dataset) for m in members]
    for alias, name in zip(members, names):
        if is_alias(alias) and not is_registered(name):
            if not params.train_missing:
                raise LookupError(f"member {alias} ({name}) is not registered and train_missing is off")
            log.info("member %s (%s) is not registered: training it", alias, name)
            if alias == "hnm":
                mine(dataset, params.member_mining)
            else:
                cfg = params.member_config
                if alias == "text":
                    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"use_context": False})})
                if (seed := seed_of(alias)) is not None:
                    cfg = cfg.model_copy(update={"seed": seed})
                train(dataset, TrainParams(config=cfg, model_name=name))

    loaded = [load_member(n, m.split("@", 1)[1] if "@" in m else None) for m, n in zip(members, names)]
    models = [m for m, _, _ in loaded]
    refs = [av.ref for _, av, _ in loaded]
    parts, examples_ref, _ = fetch_examples(default_examples_name(dataset), None)
    train_end, test_as_of = split_cutoff(parts, "valid"), split_cutoff(parts, "test")
    snapshots = read_document_snapshots(dataset, min(train_end, test_as_of))
    valid_index = servable_index(dataset, documents_as_of(snapshots, train_end, include_later=True), train_end,
                                 parts["train"])
    test_index = servable_index(dataset, documents_as_of(snapshots, test_as_of, include_later=True), test_as_of,
                                parts["train"])
    seed = 0
    t0 = time.perf_counter()
    fitted, trials = fit_ensemble(params.kind, models, parts, valid_index, params, seed)
    fit_seconds = time.perf_counter() - t0
    chosen = (f"weights {fitted.weights}" if params.kind == "weighted_concat" else f"N = {fitted.rerank_n}")
    results = compare({**{f"{m} (`{r}`)": mdl for m, r, mdl in zip(members, refs, models)},
                       f"{params.kind} ({chosen})": fitted}, parts, test_index, params.max_eval_sessions, seed)
    metrics = list(results.values())[-1]["exact"]

    model_name = params.model_name or f"{dataset}-ensemble"
    runs = runs_root("ensemble", dataset)
    clean_up_leftovers(runs)
    config = {"kind": params.kind, "members": refs, "params": params.model_dump(mode="json"), "trials": trials}
    extra = {"dataset": dataset, "evaluation": {"split": "test", "max_sessions": params.max_eval_sessions,
                                                "seed": seed, "index_documents": len(test_index)},
             "comparison": {k: v["exact"] for k, v in results.items()},
             "quantized": {k: v["quantized"] for k, v in results.items()}, "fit_seconds": round(fit_seconds, 1)}
    files = [p for _, _, p in loaded]
    with run_dir(runs, flow_run.id, remove=True) as out_dir:  # registered: the store has the files
        ref = register_ensemble_version(fitted, files, refs, out_dir / "ensemble", model_name, metrics, config,
                                        examples_ref, extra)
        if params.promote:
            register_ensemble_version(fitted, files, refs, out_dir / "promoted", default_model_name(dataset), metrics,
                                      config, examples_ref, {**extra, "promoted_from": ref})
    facts = {"ensemble": f"`{ref}`", "members": ", ".join(f"`{r}`" for r in refs), "examples": f"`{examples_ref}`",
             "test index": f"{len(test_index)} documents", "fitting": f"{fit_seconds:.1f} s",
             "serve it": f"`ebr rebuild-index --dataset {dataset} --model-name {model_name}`"}
    publish_report(artifact_key("ensemble", dataset, params.kind),
                   comparison_markdown(f"Ensemble ({params.kind}): {dataset}", results, trials, chosen, facts),
                   f"{params.kind} ensemble of {dataset}")
    log.info("registered %s (%s): test recall@10 %.4f", ref, chosen, metrics.get("recall@10", float("nan")))
    return ref


if __name__ == "__main__":
    ensemble()
