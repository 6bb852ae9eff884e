"""Real servers for the tests that claim a backend: Redis and PostgreSQL, started from Debian's packages
(``.ci/run`` installs them) on free loopback ports, in temporary directories, and stopped after the session.

A missing server binary fails the test with the command that installs it: a backend the project claims is
tested, not skipped.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

INSTALL = "apt-get install -y redis-server postgresql (what .ci/run does)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_binary(name: str) -> str:
    """``name`` on PATH, or in Debian's versioned PostgreSQL directory."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        pytest.fail(f"{name} is not installed: {INSTALL}")
    return found


def wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout} s")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis server without persistence: ``redis://127.0.0.1:<port>/0``."""
    port = free_port()
    proc = subprocess.Popen([find_binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc, "redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(20)


@dataclass(frozen=True)
class Postgres:
    port: int
    user: str
    database: str

    def url(self, driver: str = "postgresql+asyncpg") -> str:
        return f"{driver}://{self.user}@127.0.0.1:{self.port}/{self.database}"


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL cluster in a temporary directory, trusting local connections, with one database."""
    initdb, pg_ctl = find_binary("initdb"), find_binary("pg_ctl")
    root = Path(tempfile.mkdtemp(prefix="ebr-pg-"))
    data, user, port = root / "data", "ebr", free_port()
    env = {**os.environ, "LC_ALL": "C"}
    run_as: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as nobody, in a directory nobody owns
        shutil.chown(root, "nobody")
        run_as = ["runuser", "-u", "nobody", "--"]
    subprocess.run([*run_as, initdb, "-D", str(data), "-U", user, "--auth=trust", "--no-sync"], env=env,
                   check=True, capture_output=True)
    subprocess.run([*run_as, pg_ctl, "-D", str(data), "-o", f"-p {port} -k {root} -h 127.0.0.1 -F",
                    "-l", str(root / "log"), "-w", "start"], env=env, check=True, capture_output=True)
    try:
        createdb = find_binary("createdb")
        subprocess.run([*run_as, createdb, "-h", "127.0.0.1", "-p", str(port), "-U", user, "prefect"], env=env,
                       check=True, capture_output=True)
        yield Postgres(port, user, "prefect")
    finally:
        subprocess.run([*run_as, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], env=env, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
