"""prefect.yaml against a real Prefect server: deploy every deployment, run one through a worker.

Starts ``prefect server start`` on 127.0.0.1, once on SQLite under a temporary PREFECT_HOME (the laptop
default) and once on a real PostgreSQL server (production's database), creates the process work pool, runs ``prefect deploy --all`` from the project root, triggers one deployment over the REST API
and lets ``prefect worker start --run-once`` execute it in a subprocess, as production does.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from infra.settings import PROJECT_ROOT

pytestmark = [pytest.mark.server, pytest.mark.slow]

PREFECT = str(Path(sys.executable).with_name("prefect"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def prefect_server(request, tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # the UI on a port other than 4200, as the README tells: it must call this server's API
        "PREFECT_UI_ENABLED": "true",
        "PREFECT_UI_API_URL": api,
        "EBR_HOME": str(home / "ebr"),
    }
    pg = request.getfixturevalue("postgres") if request.param == "postgresql" else None
    if pg is not None:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = pg.url()
    log = open(home / "server.log", "w")
    proc = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Prefect server did not start; see {home / 'server.log'}")
            time.sleep(0.5)
        yield api, env, pg
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _run(cmd: list[str], env: dict, timeout: float = 300) -> str:
    res = subprocess.run(cmd, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout + res.stderr


def test_the_ui_on_another_port_calls_its_own_api(prefect_server):
    api, _, _ = prefect_server
    root = api.removesuffix("/api")
    settings = httpx.get(f"{root}/ui-settings", timeout=10).json()
    assert settings["api_url"] == api
    page = httpx.get(f"{root}/", headers={"accept": "text/html"}, timeout=10, follow_redirects=True)
    assert page.status_code == 200 and "<html" in page.text.lower()


def test_deploy_from_prefect_yaml_and_run_through_a_worker(prefect_server):
    api, env, pg = prefect_server
    spec = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())
    pool = spec["deployments"][0]["work_pool"]["name"]
    _run([PREFECT, "work-pool", "create", pool, "--type", "process"], env)
    _run([PREFECT, "--no-prompt", "deploy", "--all"], env)

    deployments = httpx.post(f"{api}/deployments/filter", json={}).json()
    names = {d["name"] for d in deployments}
    assert names == {d["name"] for d in spec["deployments"]}
    scheduled = [d for d in deployments if d.get("schedules")]
    assert {d["name"] for d in scheduled} >= {"nightly", "nightly-materialize", "weekly-train"}
    active = {d["name"] for d in scheduled if any(s["active"] for s in d["schedules"])}
    assert active == {"nightly"}, "only the chained nightly run is scheduled active"
    if pg is not None:  # the server really keeps its state in PostgreSQL
        from tests.servers import find_binary

        rows = _run([find_binary("psql"), "-h", "127.0.0.1", "-p", str(pg.port), "-U", pg.user, "-d", pg.database,
                     "-tAc", "select count(*) from deployment"], env)
        assert int(rows.strip()) == len(names)

    # An on-demand run, then a backfill (a date-range run of the materialize deployment), each executed by
    # a process worker as in production.
    state = _run_deployment(api, env, pool, "generate-world/synthetic-world",
                            {"preset": "tiny", "seed": 3, "name": "deployed-tiny"})
    assert state["type"] == "COMPLETED", state["worker_log"]
    home = Path(env["EBR_HOME"])
    assert (home / "data" / "deployed-tiny" / "manifest.json").exists()

    state = _run_deployment(api, env, pool, "materialize/nightly-materialize",
                            {"dataset": "deployed-tiny", "start_date": "2024-03-04", "end_date": "2024-03-17",
                             "every_days": 7})
    assert state["type"] == "COMPLETED", state["worker_log"]
    written = sorted(p.name for p in (home / "features" / "deployed-tiny").rglob("*.parquet"))
    assert any("2024-03-04" in n for n in written) and any("2024-03-17" in n for n in written), written


def _run_deployment(api: str, env: dict, pool: str, name: str, parameters: dict) -> dict:
    dep = httpx.get(f"{api}/deployments/name/{name}").json()
    run = httpx.post(f"{api}/deployments/{dep['id']}/create_flow_run", json={"parameters": parameters}).json()
    log = _run([PREFECT, "worker", "start", "--pool", pool, "--run-once"], env, timeout=600)
    deadline = time.monotonic() + 120
    while True:
        state = httpx.get(f"{api}/flow_runs/{run['id']}").json()["state"]
        if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") or time.monotonic() > deadline:
            return {**state, "worker_log": log[-4000:]}
        time.sleep(1)
