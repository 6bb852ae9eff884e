"""The training loop: seeded, resumable, validated per epoch with recall@K, early-stopped.

``train(...)`` is the one entry point (the CLI and flows call it). Determinism: the order of examples in
epoch e is a permutation drawn from ``(seed, e)`` and the negatives of step s from ``(seed, e, s)``, so a
run resumed from a checkpoint replays exactly the steps an uninterrupted run would take; the global RNG
states (dropout) are checkpointed too. Embedding tables learn with SparseAdam (a step touches only the
rows of its batch; ``models.sparse_adam``: PyTorch's update, cheaper row reads and writes), the MLPs with Adam.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from examples.splits import recent_examples
from models.batches import TrainingData, doc_index
from models.checkpoint import (
    CHECKPOINT,
    FORMAT_VERSION,
    MODEL,
    load_file,
    model_from_payload,
    model_payload,
    rng_state,
    save_atomic,
    save_model,
    set_rng_state,
)
from models.columns import DOC_ID
from models.config import TrainConfig, resolve_device
from models.evaluate import retrieval_metrics, session_targets
from models.features import FittedInputs
from models.objective import RetrievalObjective
from models.sparse_adam import RowSparseAdam
from models.towers import TwoTowerModel

# Fields that may change between a run and its resumption; anything else must match.
_RESUMABLE_CHANGES = {
    "epochs", "progress", "early_stopping_patience", "checkpoint_every_steps", "device", "num_threads", "resumable",
}


@dataclass(frozen=True)
class StepInfo:
    """Passed to callbacks after every optimizer step (and after its checkpoint, if any)."""

    epoch: int
    step_in_epoch: int
    global_step: int
    loss: float


@dataclass
class TrainResult:
    model: TwoTowerModel  # the best model (by the validation metric), in eval mode
    out_dir: Path
    model_path: Path
    checkpoint_path: Path
    metric: str
    best_metric: float | None
    best_epoch: int | None
    history: list[dict] = field(default_factory=list)  # per epoch: loss, examples/s, validation metrics
    global_step: int = 0
    stopped_early: bool = False
    resumed_from_step: int | None = None

    @property
    def examples_per_s(self) -> float:
        ex = sum(h["examples"] for h in self.history)
        sec = sum(h["train_seconds"] for h in self.history)
        return ex / sec if sec else float("nan")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _check_inputs(examples_train: pd.DataFrame, documents: pd.DataFrame) -> None:
    for name, df, col in (("examples_train", examples_train, DOC_ID), ("documents", documents, DOC_ID)):
        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"{name} must be a pandas DataFrame, got {type(df).__name__}")
        if col not in df.columns:
            raise ValueError(f"{name} lacks column {col!r}; present: {list(df.columns)}")
    if len(examples_train) < 2:
        raise ValueError(f"need at least 2 training examples, got {len(examples_train)}")
    if len(documents) == 0:
        raise ValueError("the document table is empty")


def _comparable(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in _RESUMABLE_CHANGES}


def _warm_start(model: TwoTowerModel, init_from: Path) -> None:
    p = Path(init_from)
    if p.is_dir():
        p = p / MODEL if (p / MODEL).exists() else p / CHECKPOINT
    payload = load_file(p)
    try:
        model.load_state_dict(payload["model_state"])
        model.set_fitted(FittedInputs.from_dict(payload.get("fitted_inputs")))  # the ids its rows belong to
    except RuntimeError as exc:
        raise ValueError(
            f"cannot warm start from {p}: its model config {payload['model_config']} does not match "
            f"{model.config.model_dump(mode='json')} ({str(exc).splitlines()[0]})"
        ) from None


def train(
    examples_train: pd.DataFrame,
    examples_valid: pd.DataFrame | None,
    documents: pd.DataFrame,
    config: TrainConfig | None = None,
    out_dir: str | Path = "model",
    init_from: Path | None = None,
    feature_service: str = "",
    resume: bool = True,
    callbacks: Sequence[Callable[[StepInfo], None]] = (),
    consumed: Mapping[str, Sequence[str] | np.ndarray] | None = None,
    valid_documents: pd.DataFrame | None = None,
) -> TrainResult:
    """Train a two-tower model on examples; write ``checkpoint.pt`` and ``model.pt`` under ``out_dir``.

    - ``documents``: the document table (unprefixed columns, one row per doc_id): corpus negatives and
      (unless ``valid_documents`` is given) the index that validation retrieves from.
    - ``resume``: continue from ``out_dir/checkpoint.pt`` when present (same config required, except
      epochs, patience, checkpoint frequency, progress and device); a finished run is returned as is.
    - ``init_from``: warm start from an earlier model or training directory (weights only; ignored when
      resuming).
    - ``feature_service``: name/version of the feature service the examples came from; stored with the
      weights.
    - ``consumed``: searcher_id -> doc_ids never retrieved for that searcher in validation (the
      recommendation protocol of :mod:`evaluation.protocol`), so early stopping scores what the test scores.
    - ``valid_documents``: the index validation retrieves from, when it is not ``documents``: what a
      nightly at the validation cutoff would serve (``features.corpus.served_documents``: the production
      selection), as the test split is ranked against what is served at its cutoff.
    """
    cfg = config or TrainConfig()
    _check_inputs(examples_train, documents)
    examples_train = recent_examples(examples_train, cfg.train_window_days)
    threads = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _train(examples_train, examples_valid, documents, cfg, Path(out_dir), init_from,
                      feature_service, resume, callbacks, consumed, valid_documents)
    finally:
        torch.set_num_threads(threads)


def _train(
    examples_train: pd.DataFrame, examples_valid: pd.DataFrame | None, documents: pd.DataFrame,
    cfg: TrainConfig, out_dir: Path, init_from: Path | None, feature_service: str, resume: bool,
    callbacks: Sequence[Callable[[StepInfo], None]], consumed: Mapping[str, Sequence[str] | np.ndarray] | None = None,
    valid_documents: pd.DataFrame | None = None,
) -> TrainResult:
    device = resolve_device(cfg.device)
    ckpt_path, model_path = out_dir / CHECKPOINT, out_dir / MODEL
    cfg_json = cfg.model_dump(mode="json")

    _seed_everything(cfg.seed)
    model = TwoTowerModel(cfg.model)
    model.feature_service = feature_service
    state = load_file(ckpt_path) if resume and ckpt_path.exists() else None
    if state is not None:
        if _comparable(state["train_config"]) != _comparable(cfg_json):
            raise ValueError(
                f"{ckpt_path} belongs to a run with a different config; use another out_dir or resume=False"
            )
        if state["feature_service"] != feature_service:
            raise ValueError(
                f"{ckpt_path} was trained on feature service {state['feature_service']!r}, not "
                f"{feature_service!r}; use another out_dir or resume=False"
            )
        model.load_state_dict(state["model_state"])
        model.set_fitted(FittedInputs.from_dict(state.get("fitted_inputs")))
    elif init_from is not None:
        _warm_start(model, init_from)
    else:
        model.fit_inputs(examples_train, documents)
    model.to(device)

    best_payload = None  # resumable=False: the best epoch's model, written once at the end

    def result(history, best, best_epoch, step, stopped, resumed) -> TrainResult:
        if best_payload is not None:
            save_atomic(best_payload, model_path)
        best_model = model_from_payload(best_payload or load_file(model_path), device)
        return TrainResult(best_model, out_dir, model_path, ckpt_path, cfg.early_stopping_metric, best,
                           best_epoch, history, step, stopped, resumed)

    if state is not None and (state["stopped_early"] or state["epoch"] >= cfg.epochs):
        return result(state["history"], state["best_metric"], state["best_epoch"], state["global_step"],
                      state["stopped_early"], state["global_step"])

    ids = doc_index(documents, examples_train[DOC_ID])
    data = TrainingData(model, examples_train, documents, cfg.loss, ids=ids,
                        positive_features=cfg.positive_features)
    valid = None
    if examples_valid is not None and len(examples_valid):
        sessions = session_targets(examples_valid, cfg.valid_max_sessions, cfg.seed, consumed=consumed)
        valid = (sessions, model.featurize_queries(sessions.queries))
    valid_index = data.corpus if valid_documents is None else model.featurize_documents(valid_documents)
    doc_ids = (documents if valid_documents is None else valid_documents)[DOC_ID].astype(str).to_numpy()

    objective = RetrievalObjective(model, cfg.loss)
    opt_sparse = RowSparseAdam(model.sparse_parameters(), lr=cfg.sparse_lr)
    opt_dense = torch.optim.Adam(model.dense_parameters(), lr=cfg.lr)

    n, bs = len(examples_train), cfg.batch_size
    steps_per_epoch = math.ceil(n / bs)
    epoch, step0, global_step = 0, 0, 0
    history: list[dict] = []
    best, best_epoch, bad_epochs, stopped = None, None, 0, False
    run = {"loss_sum": 0.0, "examples": 0, "seconds": 0.0}
    resumed = None
    if state is not None:
        opt_sparse.load_state_dict(state["optimizers"]["sparse"])
        opt_dense.load_state_dict(state["optimizers"]["dense"])
        set_rng_state(state["rng"])
        epoch, step0, global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        history, best, best_epoch = state["history"], state["best_metric"], state["best_epoch"]
        bad_epochs, run, resumed = state["bad_epochs"], state["running"], global_step
        stopped = state["stopped_early"]

    def checkpoint(epoch_: int, step_: int, finished: bool = False) -> None:
        save_atomic({
            "format_version": FORMAT_VERSION,
            "model_config": cfg.model.model_dump(mode="json"),
            "train_config": cfg_json,
            "feature_service": feature_service,
            "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "fitted_inputs": model.fitted.as_dict(),
            "optimizers": {"sparse": opt_sparse.state_dict(), "dense": opt_dense.state_dict()},
            "rng": rng_state(),
            "epoch": epoch_, "step_in_epoch": step_, "global_step": global_step,
            "history": history, "best_metric": best, "best_epoch": best_epoch, "bad_epochs": bad_epochs,
            "running": dict(run), "finished": finished, "stopped_early": stopped,
        }, ckpt_path)

    model.train()
    while epoch < cfg.epochs and not stopped:
        perm = np.random.default_rng([cfg.seed, epoch]).permutation(n)
        bar = tqdm(total=steps_per_epoch, initial=step0, desc=f"train epoch {epoch + 1}/{cfg.epochs}",
                   unit="step", disable=not cfg.progress, leave=False)
        t0 = time.perf_counter()
        for step in range(step0, steps_per_epoch):
            rows = perm[step * bs : (step + 1) * bs]
            if len(rows) < 2:  # a lone last example has no in-batch negatives
                continue
            batch = data.batch(rows, np.random.default_rng([cfg.seed, epoch, step])).to(device)
            loss = objective(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss is {loss.item()} at epoch {epoch + 1} step {step}; lower lr/sparse_lr or raise temperature"
                )
            opt_sparse.zero_grad(set_to_none=True)
            opt_dense.zero_grad(set_to_none=True)
            loss.backward()
            opt_sparse.step()
            opt_dense.step()
            global_step += 1
            lv = loss.item()
            run["loss_sum"] += lv * len(rows)
            run["examples"] += len(rows)
            if cfg.checkpoint_every_steps and global_step % cfg.checkpoint_every_steps == 0:
                run["seconds"] += time.perf_counter() - t0
                checkpoint(epoch, step + 1)
                t0 = time.perf_counter()
            bar.update(1)
            if cfg.progress and (step % 10 == 0 or step == steps_per_epoch - 1):
                secs = run["seconds"] + time.perf_counter() - t0
                bar.set_postfix(loss=f"{lv:.4f}", ex_s=f"{run['examples'] / max(secs, 1e-9):,.0f}")
            for cb in callbacks:
                cb(StepInfo(epoch, step, global_step, lv))
        bar.close()
        run["seconds"] += time.perf_counter() - t0

        record: dict[str, Any] = {
            "epoch": epoch + 1, "train_loss": run["loss_sum"] / max(run["examples"], 1),
            "examples": run["examples"], "train_seconds": run["seconds"],
            "examples_per_s": run["examples"] / max(run["seconds"], 1e-9),
        }
        improved = False
        if valid is not None:
            sessions, qtable = valid
            q = model.embed_table(qtable, "query")
            d = model.embed_table(valid_index, "document")
            metrics = retrieval_metrics(q, d, doc_ids, sessions, cfg.eval_ks)
            record["valid"] = metrics
            value = metrics[cfg.early_stopping_metric]
            improved = best is None or value > best
            if improved:
                best, best_epoch, bad_epochs = value, epoch + 1, 0
            else:
                bad_epochs += 1
                stopped = bad_epochs >= cfg.early_stopping_patience
        else:
            improved, best_epoch = True, epoch + 1  # no validation: the last epoch is the model
        history.append(record)
        if improved and cfg.resumable:
            save_model(model, model_path, feature_service, train_config=cfg_json,
                       epoch=epoch + 1, metrics=record.get("valid", {}))
        elif improved:  # a copy: training goes on updating the tensors in place
            best_payload = model_payload(model, feature_service, train_config=cfg_json, epoch=epoch + 1,
                                         metrics=record.get("valid", {}))
            best_payload["model_state"] = {k: v.clone() for k, v in best_payload["model_state"].items()}
        epoch, step0 = epoch + 1, 0
        run = {"loss_sum": 0.0, "examples": 0, "seconds": 0.0}
        if cfg.resumable:
            checkpoint(epoch, 0, finished=stopped or epoch >= cfg.epochs)

    return result(history, best, best_epoch, global_step, stopped, resumed)
