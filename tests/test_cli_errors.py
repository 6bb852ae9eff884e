"""The command line as a person meets it: every error one readable line and a non-zero exit, tracebacks
only on request, obvious mistakes rejected before the slow imports."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.faults  # the fault suite: `./run test -m faults`


def ebr(*args: str, home: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """The command as a person runs it: without PREFECT_API_URL (a flow command starts a temporary Prefect
    server of its own) unless ``env`` gives one."""
    environ = {**os.environ, "EBR_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    environ.pop("PREFECT_API_URL", None)
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=ROOT, env=environ, capture_output=True,
                          text=True, timeout=300)


FEAST_CHECKED = """
import feast.feature_service as fs
print("check_argument_types_internal" in fs.FeatureService.__init__.__code__.co_names)
"""
FLOW_COMMAND = """
from cli.runtime import prepare_flow_command
prepare_flow_command(debug=False)
import flows.materialize
"""
# what a Prefect worker's flow run does: it loads the deployment's entrypoint file, not the ebr command
WORKER_FLOW_RUN = """
from prefect.flows import load_flow_from_entrypoint
load_flow_from_entrypoint("flows/materialize.py:materialize", use_placeholder_flow=False)
"""


@pytest.mark.parametrize("start", [FLOW_COMMAND, WORKER_FLOW_RUN], ids=["flow command", "worker flow run"])
def test_a_flow_imports_feast_without_its_development_type_checks(tmp_path, start):
    """As a serving process does (tests/test_retriever.py): typeguard's recompilation of Feast's classes is
    about half of Feast's import, paid by every flow command and flow run otherwise."""
    environ = {k: v for k, v in os.environ.items() if k != "EBR_FEAST_TYPECHECKS"}
    out = subprocess.run([sys.executable, "-c", start + FEAST_CHECKED], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env={**environ, "EBR_HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "False"  # Feast's constructor carries no type-checking call


def test_an_error_is_one_line_and_the_traceback_is_opt_in(tmp_path):
    out = ebr("search", "runners club", "--dataset", "nope", "--searcher", "u1", home=tmp_path)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "rebuild-index --dataset nope" in errors[0]

    out = ebr("--debug", "generate", "--name", "../escape", home=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr  # a bad parameter: a usage error

    out = ebr("versions-of-nothing", home=tmp_path)
    assert out.returncode == 2  # an unknown command


def test_a_failing_flow_command_prints_one_line_unless_debug(tmp_path, prefect_harness):
    out = ebr("train", "--dataset", "nope", home=tmp_path)  # with a temporary Prefect server of its own
    assert out.returncode == 1
    assert "Traceback" not in out.stderr + out.stdout
    assert out.stderr.count("error: unknown artifact dataset/nope-examples") == 1
    # the runs below go to the session's Prefect server: each temporary one takes half a minute to start
    from prefect.settings import PREFECT_API_URL

    api = {"PREFECT_API_URL": PREFECT_API_URL.value()}
    out = ebr("--debug", "train", "--dataset", "nope", home=tmp_path, env=api)
    assert out.returncode == 1 and "Traceback" in out.stderr + out.stdout  # on request
    out = ebr("train", "--dataset", "nope", "--window-days", "0", home=tmp_path)
    assert out.returncode == 2 and "--window-days" in out.stderr  # a usage error, named
    out = ebr("train", "--dataset", "nope", "--model-name", "../seed1", home=tmp_path)
    assert out.returncode == 2 and "--model-name" in out.stderr and "invalid model name" in out.stderr
    out = ebr("train", "--dataset", "nope", "--seed", "-1", home=tmp_path)
    assert out.returncode == 2 and "--seed" in out.stderr
    out = ebr("train", "--dataset", "nope", "--window-days", "90", "--seed", "1", "--model-name", "nope-seed1",
              home=tmp_path, env=api)
    assert out.returncode == 1 and "unknown artifact dataset/nope-examples" in out.stderr  # accepted, then run


def test_obvious_mistakes_are_rejected_before_the_slow_imports(tmp_path):
    code = ("import sys\nfrom cli.main import app\ntry:\n    app(['search', 'x', '--searcher', 'u1', '--k', '1e9'])\n"
            "except SystemExit as e:\n    print(e.code, sorted(m for m in ('torch', 'feast', 'prefect', 'faiss') "
            "if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "EBR_HOME": str(tmp_path)})
    assert out.stdout.strip() == "2 []", out.stdout + out.stderr  # a usage error, before torch/feast/prefect (33 s before)
    assert "--k" in out.stderr


def test_a_killed_flow_command_leaves_no_temporary_prefect_server(tmp_path):
    """A flow command without PREFECT_API_URL starts a temporary Prefect server; killed with SIGKILL, the
    command used to leave that server running."""
    import re
    import signal

    environ = {**os.environ, "EBR_HOME": str(tmp_path), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    environ.pop("PREFECT_API_URL", None)
    log = tmp_path / "out.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", "train", "--dataset", "nope"], cwd=ROOT,
                                env=environ, stdout=out, stderr=subprocess.STDOUT)
    port = None
    deadline = time.time() + 120
    while port is None and time.time() < deadline and proc.poll() is None:
        m = re.search(r"Starting temporary server on http://127\.0\.0\.1:(\d+)", log.read_text())
        port = m.group(1) if m else None
        time.sleep(0.2)
    assert port, log.read_text()[-2000:]

    def server_pids() -> list[str]:
        out = subprocess.run(["pgrep", "-f", f"uvicorn.*--port {port}"], capture_output=True, text=True)
        return out.stdout.split()

    deadline = time.time() + 60
    while not server_pids() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 20
    while server_pids() and time.time() < deadline:
        time.sleep(0.2)
    assert not server_pids(), f"the temporary server on port {port} outlived the killed command"


def test_a_raw_file_that_breaks_an_adapter_is_named_with_its_line_by_the_command(tmp_path):
    import shutil

    from infra.settings import get_settings

    root = tmp_path / "datasets"
    shutil.copytree(get_settings().datasets_dir / "movielens_100k", root / "movielens_100k")
    base = root / "movielens_100k" / "ua.base"
    lines = base.read_text().splitlines()
    lines[41] = "1\t2\tfive\t881250949"  # line 42: a rating that is not a number
    base.write_text("\n".join(lines) + "\n")
    out = ebr("ingest", "movielens", "--datasets-dir", str(root), home=tmp_path / "home")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "ua.base: line 42" in errors[0] and "five" in errors[0], out.stderr
    assert not (tmp_path / "home" / "data" / "movielens").exists()  # nothing written
