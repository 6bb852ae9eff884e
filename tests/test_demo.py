"""`ebr demo`, the README's main job, on the tiny world in a fresh home and process: it completes, prints its
tables and a search, and its console carries no library chatter (run info lines, Great Expectations'
temporary directories, deprecation notices): those go to the runs' logs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]


def test_the_demo_prints_its_tables_and_nothing_else(tmp_path):
    env = {**os.environ, "EBR_HOME": str(tmp_path / "home"), "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    out = subprocess.run([sys.executable, "-m", "cli.main", "demo", "--preset", "tiny", "--searches", "1"],
                         cwd=Path(__file__).resolve().parent.parent, env=env, capture_output=True, text=True,
                         timeout=1800)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert "| recall@1 | recall@10 |" in text and "index published in the artifact store" in text
    assert "typed '" in text and "demo finished in" in text
    for chatter in ("| INFO ", "Created temporary directory", "DeprecationWarning", "Finished in state"):
        assert chatter not in text, chatter
