"""Session-wide test settings: every test writes under a temporary EBR_HOME, never into the project."""

from __future__ import annotations

import os
import tempfile

# Set before any project module reads settings (settings are read from the environment on each call).
_HOME = tempfile.mkdtemp(prefix="ebr-test-home-")
os.environ.setdefault("EBR_HOME", _HOME)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Prefect's home too (a person's first run creates its database there): never the project's, one per test
# process, so that the suite's processes (pytest-xdist workers) do not share one SQLite database.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="ebr-test-prefect-")
# Two test processes share the 2 cores: one OpenMP thread each (torch, FAISS), since busy-waiting threads of
# two processes on shared cores slow both down. A test that wants more threads sets them itself.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# Shared fixtures: moto's S3 server over HTTP (`moto_s3`, `s3_bucket`, `s3_store_env`).
pytest_plugins = ["tests.s3_server", "tests.servers"]

import pytest  # noqa: E402
from prefect.logging.configuration import ensure_logging_setup  # noqa: E402

# Prefect binds its console log handlers to the streams of the moment it first configures logging. Do it
# now, on pytest's streams, rather than inside a CLI test whose captured stdout/stderr are closed after it.
ensure_logging_setup()


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect API for the whole session (it takes seconds to start: start it once)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A fresh EBR_HOME for the test module, with the default (local) artifact store."""
    path = tmp_path_factory.mktemp("ebr-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("EBR_HOME", str(path))
    for name in ("EBR_STORAGE_URL", "EBR_S3_ENDPOINT_URL", "EBR_S3_REGION"):
        mp.delenv(name, raising=False)
    yield path
    mp.undo()


# The longest test files, longest first (their seconds of work, summed from `./run test --durations=0`).
# pytest-xdist hands whole files to its two processes in collection order (`--no-loadscope-reorder`; its
# default orders files by their number of tests, which put the fault suite's seven long tests last, running
# alone at the end), so the longest start first and the short ones fill in.
LONGEST_FIRST = ("test_faults.py", "test_deployments.py", "test_demo.py", "test_dask.py",
                 "test_quality_benchmark.py", "test_cli_errors.py", "test_mine_and_ensemble_flows.py",
                 "test_rebuild_index.py", "test_operations.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
