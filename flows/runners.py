"""Where a flow's tasks run: in this process (the laptop default) or on a Dask cluster.

``EBR_DASK_ADDRESS=tcp://scheduler:8786`` sends the heavy mapped steps to that cluster through prefect-dask's
``DaskTaskRunner``: the nightly's document embedding (one task per shard; shards start on batch boundaries,
so the same batches meet the same model), a backfill's feature computation (one task per partition of
days) and mining's ANN search (one task per range of sessions). Results are the same as in process. A flow can also be given a runner per call:
``rebuild_index.with_options(task_runner=DaskTaskRunner(address=...))``.
"""

from __future__ import annotations

import os
from functools import lru_cache

from models.registry import load_registered_model


def task_runner():
    """A DaskTaskRunner on ``EBR_DASK_ADDRESS`` when set, else Prefect's thread pool (one worker: the heavy
    steps already use the cores through torch and FAISS)."""
    address = os.environ.get("EBR_DASK_ADDRESS", "").strip()
    if address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=address)
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=1)


@lru_cache(maxsize=4)
def cached_model(name: str, version: str):
    """A registered model loaded once per worker process (a Dask worker embeds many shards)."""
    return load_registered_model(name, version)[0]
