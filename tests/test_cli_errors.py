"""The command line as a person meets it: every error one readable line and a non-zero exit, tracebacks
only on request, obvious mistakes rejected before the slow imports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def ebr(*args: str, home: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {**os.environ, "EBR_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **(env or {})}
    environ.pop("PREFECT_API_URL", None)
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=ROOT, env=environ, capture_output=True,
                          text=True, timeout=300)


def test_an_error_is_one_line_and_the_traceback_is_opt_in(tmp_path):
    out = ebr("search", "runners club", "--dataset", "nope", "--searcher", "u1", home=tmp_path)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "rebuild-index --dataset nope" in errors[0]

    out = ebr("--debug", "generate", "--name", "../escape", home=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr  # a bad parameter: a usage error

    out = ebr("versions-of-nothing", home=tmp_path)
    assert out.returncode == 2  # an unknown command


def test_a_failing_flow_command_prints_one_line_unless_debug(tmp_path):
    out = ebr("train", "--dataset", "nope", home=tmp_path)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr + out.stdout
    assert out.stderr.count("error: unknown artifact dataset/nope-examples") == 1
    out = ebr("--debug", "train", "--dataset", "nope", home=tmp_path)
    assert out.returncode == 1 and "Traceback" in out.stderr + out.stdout  # on request


def test_obvious_mistakes_are_rejected_before_the_slow_imports(tmp_path):
    code = ("import sys\nfrom cli.main import app\ntry:\n    app(['search', 'x', '--searcher', 'u1', '--k', '1e9'])\n"
            "except SystemExit as e:\n    print(e.code, sorted(m for m in ('torch', 'feast', 'prefect', 'faiss') "
            "if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "EBR_HOME": str(tmp_path)})
    assert out.stdout.strip() == "2 []", out.stdout + out.stderr  # a usage error, before torch/feast/prefect (33 s before)
    assert "--k" in out.stderr
