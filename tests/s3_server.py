"""A real S3 endpoint for tests: moto's server on 127.0.0.1 over HTTP, started once per test session.

Use as a pytest plugin (``pytest_plugins = ["tests.s3_server"]`` in the root conftest) or import the fixtures:

- ``moto_s3`` (session): the running server, as a ``MotoS3`` (endpoint_url, region, client(), create_bucket()).
- ``s3_bucket`` (function): a fresh empty bucket, with dummy AWS credentials and region set in the environment
  for the duration of the test (so code that builds boto3 clients from the environment reaches moto).
- ``s3_store_env`` (function): ``s3_bucket`` plus ``EBR_STORAGE_URL`` / ``EBR_S3_ENDPOINT_URL`` /
  ``EBR_S3_REGION``, so ``ArtifactStore.from_settings()`` lands in that bucket.

Nothing happens at import time: no server, no environment changes.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

DUMMY_ACCESS_KEY = "testing"
DUMMY_SECRET_KEY = "testing"
DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True)
class MotoS3:
    """A running moto server."""

    endpoint_url: str
    region: str = DEFAULT_REGION

    def client(self) -> Any:
        """A boto3 S3 client for this server with explicit dummy credentials (no environment needed)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=DUMMY_ACCESS_KEY,
            aws_secret_access_key=DUMMY_SECRET_KEY,
            config=Config(s3={"addressing_style": "path"}),
        )

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"ebr-test-{uuid.uuid4().hex[:12]}"
        kwargs: dict[str, Any] = {"Bucket": name}
        if self.region != "us-east-1":  # us-east-1 rejects an explicit LocationConstraint
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        self.client().create_bucket(**kwargs)
        return name


@dataclass(frozen=True)
class S3Bucket:
    """A fresh bucket on the moto server; ``url`` is ``s3://<name>/<prefix>`` for ``ArtifactStore.from_url``."""

    name: str
    prefix: str
    endpoint_url: str
    region: str
    server: MotoS3

    @property
    def url(self) -> str:
        return f"s3://{self.name}/{self.prefix}" if self.prefix else f"s3://{self.name}"


@contextmanager
def running_moto_server(region: str = DEFAULT_REGION) -> Iterator[MotoS3]:
    """Start moto's threaded server on a free port of 127.0.0.1 (the OS picks it), stop it on exit."""
    from moto.server import ThreadedMotoServer

    # werkzeug logs one line per request at INFO; keep test output readable while the server runs
    access_log = logging.getLogger("werkzeug")
    level = access_log.level
    access_log.setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield MotoS3(endpoint_url=f"http://{host}:{port}", region=region)
    finally:
        server.stop()
        access_log.setLevel(level)


def set_dummy_aws_env(monkeypatch: pytest.MonkeyPatch, region: str = DEFAULT_REGION) -> None:
    """Dummy credentials and region for boto3, and no way to pick up a real profile from this machine."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", DUMMY_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", DUMMY_SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", region)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    for var in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)


# One server per process even if several modules register these fixtures (plugin and direct import).
_lock = threading.Lock()
_shared: dict[str, Any] = {"users": 0, "cm": None, "server": None}


@contextmanager
def _shared_server() -> Iterator[MotoS3]:
    with _lock:
        if _shared["users"] == 0:
            cm = running_moto_server()
            _shared["server"], _shared["cm"] = cm.__enter__(), cm
        _shared["users"] += 1
    try:
        yield _shared["server"]
    finally:
        with _lock:
            _shared["users"] -= 1
            if _shared["users"] == 0:
                _shared["cm"].__exit__(None, None, None)
                _shared["server"] = _shared["cm"] = None


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    """The moto S3 server, started once per test session."""
    with _shared_server() as server:
        yield server


@pytest.fixture
def s3_bucket(moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch) -> S3Bucket:
    """A fresh, empty bucket with dummy AWS credentials in the environment for this test only."""
    set_dummy_aws_env(monkeypatch, moto_s3.region)
    name = moto_s3.create_bucket()
    return S3Bucket(
        name=name, prefix="artifacts", endpoint_url=moto_s3.endpoint_url, region=moto_s3.region, server=moto_s3
    )


@pytest.fixture
def s3_store_env(s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch) -> S3Bucket:
    """``s3_bucket`` and the EBR_ settings that point the project's artifact store at it."""
    monkeypatch.setenv("EBR_STORAGE_URL", s3_bucket.url)
    monkeypatch.setenv("EBR_S3_ENDPOINT_URL", s3_bucket.endpoint_url)
    monkeypatch.setenv("EBR_S3_REGION", s3_bucket.region)
    return s3_bucket
