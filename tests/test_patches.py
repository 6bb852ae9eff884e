"""The library patches of infra/patches.py hold only for the versions they were written against: this fails
loudly when a pin moves, and a patch under another version steps aside or refuses with the pin named."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from infra import patches

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("distribution", sorted(patches.GUARDS))
def test_every_guard_is_the_installed_and_pinned_version(distribution):
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = {re.split(r"[\[=<>]", p, 1)[0]: p.split("==", 1)[1] for p in pins if "==" in p}
    assert pinned[distribution] == patches.GUARDS[distribution], (
        f"pyproject.toml pins {distribution}=={pinned[distribution]} but infra/patches.py was written for "
        f"{patches.GUARDS[distribution]}: check each patch of {distribution} against the new version")
    assert patches.guarded(distribution), f"{distribution} {patches.installed(distribution)} is installed"


def test_the_internals_each_patch_uses_are_there():
    import typeguard
    from feast.infra.online_stores import sqlite
    from prefect.server.api import server
    from torch.optim import _functional

    assert callable(typeguard.typechecked)
    assert callable(sqlite._quote_id) and callable(sqlite._table_id)
    assert server.subprocess is not None and hasattr(server.subprocess, "Popen")
    assert patches.torch_sparse_adam() is _functional.sparse_adam


def test_under_another_version_a_patch_steps_aside_or_refuses(monkeypatch, caplog):
    monkeypatch.setattr(patches, "installed", lambda distribution: "99.0.0")
    with pytest.raises(patches.UnsupportedVersionError, match=r"feast==0\.67\.0 internals, but feast 99\.0\.0"):
        patches.feast_sqlite_table(object(), object())
    with pytest.raises(patches.UnsupportedVersionError, match="torch==2.13.0"):
        patches.torch_sparse_adam()

    from prefect.server.api import server

    before = server.subprocess
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    patches.ephemeral_server_dies_with_us()
    assert server.subprocess is before  # not swapped
    assert "written for prefect==3.8.8, 99.0.0 is installed" in caplog.text
