"""Independent training runs of the quality benchmark (a grid's settings, folds, seed members) side by side
in worker processes.

One run's steps are sparse embedding-bag updates that a second intra-op thread barely speeds up
(``flows.train.laptop_config``), so on 2 cores two runs of one thread each keep both cores busy where one
run with two threads leaves the second mostly idle. Workers are spawned (a forked child of a process whose
torch thread pool has run can hang); each trains with ``models.train.train`` as the sequential path does and
returns its result without the model, which the parent loads from the run's ``model.pt``: the model a
worker trained, byte for byte, and no pickled encoder or thread lock on the way back.

The frozen pretrained text vectors the parent has already computed are handed to every worker, so that a
worker does not spend minutes encoding a corpus again (``models.pretrained.TextEncoder.preload``).
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pandas as pd

from models.config import TrainConfig


@dataclass
class Run:
    """The arguments of one ``models.train.train`` call (a fresh run: never resumed)."""

    train: pd.DataFrame
    valid: pd.DataFrame | None
    documents: pd.DataFrame
    config: TrainConfig
    out: Path
    consumed: Any = None  # searcher_id -> doc_ids never retrieved for it in validation
    valid_documents: pd.DataFrame | None = None


def _train(run: Run):
    from models.train import train

    return train(run.train, run.valid, run.documents, run.config, run.out, resume=False, consumed=run.consumed,
                 valid_documents=run.valid_documents)


def _train_in_worker(run: Run):
    return dataclasses.replace(_train(run), model=None)  # the model comes back through its file


def _preload(vectors: dict[str, dict[str, Any]]) -> None:
    from models.pretrained import text_encoder

    for name, cache in vectors.items():
        text_encoder(name).preload(cache)


def train_runs(runs: list[Run], workers: int = 1) -> list:
    """``models.train.TrainResult`` of every run, in order: one after the other with ``workers=1`` (each with
    its config's threads), else in up to ``workers`` spawned processes with one torch thread each."""
    workers = min(workers, len(runs))
    if workers <= 1:
        return [_train(r) for r in runs]
    from models.checkpoint import load_model
    from models.pretrained import cached_vectors

    runs = [dataclasses.replace(r, config=r.config.model_copy(update={"num_threads": 1})) for r in runs]
    names = {r.config.model.pretrained_text for r in runs} - {None, ""}
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_preload,
                             initargs=({n: cached_vectors(n) for n in names},)) as pool:
        results = list(pool.map(_train_in_worker, runs))
    return [dataclasses.replace(res, model=load_model(res.model_path)) for res in results]
