"""Independent training runs of the quality benchmark (grid settings, windows, folds, seed members) side by
side in worker processes.

One run's steps are sparse embedding-bag updates that a second intra-op thread barely speeds up
(``flows.train.laptop_config``), so on 2 cores two runs of one thread each keep both cores busy where one
run with two threads leaves the second mostly idle. Workers are spawned (a forked child of a process whose
torch thread pool has run can hang); each trains with ``models.train.train`` as the sequential path does and
returns its result without the model, which the parent loads from the run's ``model.pt``: the model a
worker trained, byte for byte, and no pickled encoder or thread lock on the way back.

A :class:`Trainer` keeps its workers for the whole of a dataset and takes runs from several threads of the
parent at once: each model's chain of dependent runs (its grid, then its window, then its seed members)
queues its next runs as soon as its own previous ones are done, so that one model's lone run trains beside
another model's instead of alone. Starting workers costs seconds each time (importing torch and the model
code), paid once per dataset instead of once per call.

The frozen pretrained text vectors the parent has already computed are handed to every worker, so that a
worker does not spend minutes encoding a corpus again (``models.pretrained.TextEncoder.preload``).
"""

from __future__ import annotations

import dataclasses
import threading
import time
import weakref
from collections import defaultdict
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


def _timed(run: Run):
    t0 = time.perf_counter()
    result = _train(run)
    return result, time.perf_counter() - t0


def _train_in_worker(run: Run):
    result, seconds = _timed(run)
    return dataclasses.replace(result, model=None), seconds  # the model comes back through its file


def _preload(vectors: dict[str, dict[str, Any]]) -> None:
    from models.pretrained import text_encoder

    for name, cache in vectors.items():
        text_encoder(name).preload(cache)


_OPEN: "weakref.WeakSet[Trainer]" = weakref.WeakSet()  # for close_all


def close_all(wait: bool = False) -> None:
    """Closes every open :class:`Trainer` of this process: an error in one dataset's runs stops the others'
    (their queued runs are cancelled)."""
    for trainer in list(_OPEN):
        trainer.close(wait=wait)


class Trainer:
    """Trains runs in ``workers`` spawned processes of one torch thread each, kept until :meth:`close`;
    with ``workers=1``, in the calling thread with each config's threads. :meth:`train` may be called from
    several threads at once. ``pretrained``: the encoders whose vectors the parent has computed so far, handed
    to every worker at its start.

    ``seconds[account]`` sums the training time of the runs trained for that account (each run's own time in
    its process), whatever else ran beside them.
    """

    def __init__(self, workers: int = 1, pretrained: set[str] | frozenset[str] = frozenset()):
        self.workers = workers
        self.seconds: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()
        self._queued: set = set()  # futures not done yet, to cancel on close
        self._pool = None
        self._closed = False
        if workers > 1:
            from models.pretrained import cached_vectors

            self._pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_preload,
                                             initargs=({n: cached_vectors(n) for n in pretrained},))
        _OPEN.add(self)

    def add(self, account: str, seconds: float) -> None:
        with self._lock:
            self.seconds[account] += seconds

    def train(self, runs: list[Run], account: str = "") -> list:
        """``models.train.TrainResult`` of every run, in order."""
        if self._closed:
            raise RuntimeError("this Trainer is closed: it takes no more runs")
        if self._pool is None:
            timed = [_timed(r) for r in runs]
        else:
            from models.checkpoint import load_model

            runs = [dataclasses.replace(r, config=r.config.model_copy(update={"num_threads": 1})) for r in runs]
            futures = [self._pool.submit(_train_in_worker, r) for r in runs]
            with self._lock:
                self._queued.update(futures)
            for f in futures:
                f.add_done_callback(self._done)
            timed = [(dataclasses.replace(res, model=load_model(res.model_path)), s)
                     for res, s in (f.result() for f in futures)]
        self.add(account, sum(s for _, s in timed))
        return [res for res, _ in timed]

    def _done(self, future) -> None:
        with self._lock:
            self._queued.discard(future)

    def close(self, wait: bool = True) -> None:
        """Stops the workers once their current runs end (``wait=False``: without waiting for them); queued
        runs are cancelled, so that a thread waiting for one gets an error instead of waiting on."""
        self._closed = True
        _OPEN.discard(self)
        if self._pool is None:
            return
        with self._lock:
            queued = list(self._queued)
        for f in queued:  # the executor cancels its own only while it is still referenced: do it here
            f.cancel()  # a no-op for the runs under way
        self._pool.shutdown(wait=wait, cancel_futures=True)
        self._pool = None

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

