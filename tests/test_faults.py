"""Fault suite: flow commands killed (SIGKILL) at seeded random points, then run again.

For each step that writes what later steps or serving read (materialize, training data, train,
rebuild-index): a clean run gives the reference; then
the same command is killed part way, several times, and finally run to the end. Required: the re-run
succeeds, nothing half-written is visible (every listed version is complete and verifies, the current one
included), the result equals the clean one (same rows, same documents, same vectors), and the killed
runs' directories are gone after the re-run.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from infra.settings import PROJECT_ROOT, get_settings
from infra.storage import ArtifactStore
from tests.test_rebuild_index import build_tiny_world

DATASET = "tiny-faults"
KILLS = 2
pytestmark = [pytest.mark.slow, pytest.mark.faults]


@pytest.fixture(scope="module")
def world(home, prefect_harness):
    from prefect.settings import PREFECT_API_URL

    build_tiny_world(DATASET, epochs=1)
    return {**os.environ, "EBR_HOME": str(home), "PREFECT_API_URL": PREFECT_API_URL.value(),
            "OMP_NUM_THREADS": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


COMMANDS = {
    "materialize": (["materialize", "--dataset", DATASET, "--start", "2024-04-20", "--end", "2024-04-28"],
                    "features", DATASET),
    "training-data": (["training-data", "--dataset", DATASET], "dataset", f"{DATASET}-examples"),
    "train": (["train", "--dataset", DATASET], "model", f"{DATASET}-two-tower"),
    "rebuild-index": (["rebuild-index", "--dataset", DATASET, "--kind", "flat"], "index", DATASET),
}


def run(args: list[str], env: dict, kill_after: float | None = None) -> tuple[int, float]:
    """An ``ebr`` command (see :func:`run_python`)."""
    return run_python(["-m", "cli.main", *args], env, kill_after)


def run_python(argv: list[str], env: dict, kill_after: float | None = None) -> tuple[int, float]:
    """(exit code, seconds) of ``python <argv>``, SIGKILLed after ``kill_after`` seconds if still running;
    without a kill it must succeed."""
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *argv], cwd=PROJECT_ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if kill_after is not None:
        try:
            proc.wait(kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    err = proc.communicate(timeout=600)[1]
    if kill_after is None:
        assert proc.returncode == 0, err[-3000:]
    return proc.returncode, time.perf_counter() - t


def content(kind: str, name: str):
    """What a version holds, independent of its id and time: rows or vectors (features: the offline
    snapshots and the online rows)."""
    if kind == "features":
        from features.store import FeatureRepo

        repo = FeatureRepo.for_dataset(name)
        ids = repo.read_source("searcher")["searcher_id"].drop_duplicates().tolist()
        online = repo.online_features(ids, "searcher").drop(columns=["feature_ts"], errors="ignore")
        return {"searchers": repo.read_source("searcher"), "documents": repo.read_source("document"),
                "online": online}
    store = ArtifactStore.from_settings()
    av = store.get(kind, name)
    local = store.fetch(kind, name, av.version)
    if kind == "dataset":
        return {p.name: pd.read_parquet(p).sort_values("example_id").reset_index(drop=True)
                for p in sorted(local.glob("*.parquet"))}
    if kind == "index":
        from serving.index_store import load_index

        loaded = load_index(name)
        return loaded.doc_map["doc_id"].tolist(), loaded.index.faiss_index.index.reconstruct_n(0, loaded.index.ntotal)
    import torch

    state = torch.load(local / "model.pt", map_location="cpu", weights_only=False)
    return {k: v for k, v in state["state_dict"].items()} if "state_dict" in state else state


def same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, tuple):
        return all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, pd.DataFrame):
        return a.equals(b)
    if hasattr(a, "shape"):
        return np.array_equal(np.asarray(a), np.asarray(b))
    return a == b


@pytest.mark.parametrize("step", list(COMMANDS))
def test_a_killed_step_reruns_to_the_same_result_with_nothing_half_visible(world, step):
    args, kind, name = COMMANDS[step]
    _, clean_seconds = run(args, world)
    reference = content(kind, name)
    store = ArtifactStore.from_settings()
    versioned = kind != "features"  # feature snapshots are files replaced atomically, not store versions
    before = len(store.list_versions(kind, name)) if versioned else 0

    rng = random.Random(f"{step}-kills")
    killed = 0
    for _ in range(KILLS):
        code, _ = run(args, world, kill_after=rng.uniform(0.3, 0.9) * clean_seconds)
        killed += code == -signal.SIGKILL
        if versioned:
            for av in store.list_versions(kind, name):  # whatever was killed, nothing incomplete is listed
                store.verify(av)
            store.verify(store.get(kind, name))
    run(args, world)

    assert killed >= 1, "no run was killed part way: the kill points came after the end"
    assert same(content(kind, name), reference), f"{step}: the re-run differs from the clean run"
    if versioned:
        assert len(store.list_versions(kind, name)) <= before + KILLS + 1
    runs = get_settings().home / "runs" / step / DATASET
    if runs.is_dir():
        assert not [p for p in runs.iterdir() if (p / "RUNNING").exists()]  # killed runs' directories swept


def test_concurrent_runs_of_one_step_leave_a_complete_current_version(world):
    """Two rebuilds at once (a scheduled run and a manual one): each publishes a complete version or fails
    with a message; the current version is complete and holds what a single run holds."""
    args, kind, name = COMMANDS["rebuild-index"]
    run(args, world)
    reference = content(kind, name)
    procs = [subprocess.Popen([sys.executable, "-m", "cli.main", *args], cwd=PROJECT_ROOT, env=world,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(600), p.stderr.read()) for p in procs]
    assert any(code == 0 for code, _ in results), results
    for code, err in results:
        assert code == 0 or "Traceback" not in err  # a failure is one readable line
    store = ArtifactStore.from_settings()
    for av in store.list_versions(kind, name):
        store.verify(av)
    assert same(content(kind, name), reference)


MINE = """
import sys
from flows.mine import MineParams, mine
from models.config import LossConfig, ModelConfig, TrainConfig
from models.mining import MiningConfig
from ann.index import IndexConfig
tiny = ModelConfig(trigram_buckets=4096, word_buckets=2048, bigram_buckets=2048, context_buckets=1024,
                   embedding_dim=16, hidden_dims=(64,), output_dim=32)  # the tiny world's model
config = TrainConfig(model=tiny, loss=LossConfig(n_corpus_negatives=64), batch_size=128, epochs=1,
                     progress=False, num_threads=1)
mining = MiningConfig(rank_window=(11, 100), negatives_per_example=8, exact_check_queries=50,
                      index=IndexConfig(kind="flat"))
mine(dataset=sys.argv[1], params=MineParams(rounds=1, config=config, mining=mining, stop_early=False,
                                            promote=False, max_eval_sessions=200))
"""


def run_mine(dataset: str, env: dict, kill_after: float | None = None) -> tuple[int, float]:
    return run_python(["-c", MINE, dataset], env, kill_after)


def test_a_killed_mining_run_resumes_to_the_result_of_an_uninterrupted_one(world):
    """Mining rounds resume from what finished; killed part way and re-run, a dataset's round ends with the
    same model as an identical dataset's uninterrupted round (same seed: same world, same starting model)."""
    first, twin = f"{DATASET}-mine-a", f"{DATASET}-mine-b"  # fresh worlds: the steps above retrained DATASET
    build_tiny_world(first, epochs=1)
    build_tiny_world(twin, epochs=1)
    _, clean_seconds = run_mine(first, world)
    reference = content("model", f"{first}-two-tower-hnm")

    rng = random.Random("mine-kills")
    killed = 0
    for _ in range(KILLS):
        code, _ = run_mine(twin, world, kill_after=rng.uniform(0.3, 0.9) * clean_seconds)
        killed += code == -signal.SIGKILL
    run_mine(twin, world)
    assert killed >= 1
    assert same(content("model", f"{twin}-two-tower-hnm"), reference)
    store = ArtifactStore.from_settings()
    for kind, name in (("model", f"{twin}-two-tower-hnm"), ("dataset", f"{twin}-examples-hnm")):
        for av in store.list_versions(kind, name):
            store.verify(av)


def _temporary_servers(prefect_home: str) -> list:
    """The running Prefect API servers started under ``prefect_home`` (uvicorn processes of flow commands)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "uvicorn" in " ".join(proc.info["cmdline"] or []) and proc.environ().get("PREFECT_HOME") == prefect_home:
                found.append(proc)
        except psutil.Error:
            pass
    return found


def test_many_flow_commands_at_once_on_temporary_servers(world, tmp_path):
    """Without PREFECT_API_URL each flow command starts its own temporary Prefect API server. Under load, such
    commands used to fail with 'Timed out while attempting to connect to ephemeral Prefect API server', and a
    killed one left its server running. Four at once on one PREFECT_HOME (one database), one of them killed:
    the others finish, and no server outlives its command."""
    env = {k: v for k, v in world.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    args = [sys.executable, "-m", "cli.main", "evaluate", "--dataset", DATASET]
    procs = [subprocess.Popen(args, cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for _ in range(4)]
    victim = procs[-1]
    deadline = time.monotonic() + 300
    while not _temporary_servers(env["PREFECT_HOME"]) and time.monotonic() < deadline:
        time.sleep(0.5)  # kill once a server is up: its command then has one to leave behind
    victim.send_signal(signal.SIGKILL)
    results = [(p.wait(900), p.stderr.read()) for p in procs[:-1]]
    victim.wait(60)
    for code, err in results:
        assert code == 0, err[-3000:]
    deadline = time.monotonic() + 30  # the kernel's parent-death signal, then the server's own shutdown
    while (left := _temporary_servers(env["PREFECT_HOME"])) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, [p.cmdline() for p in left]
