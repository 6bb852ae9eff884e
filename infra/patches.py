"""Every place where the project reaches into another library's internals, each behind a version guard.

These rely on private names or on swapping a module attribute, so each holds only for the library version
it was written against (:data:`GUARDS`, the same pins as ``pyproject.toml``). Under another version a patch
that only saves time steps aside with a warning, and one the project cannot do without raises
:class:`UnsupportedVersionError` naming the pin; ``tests/test_patches.py`` fails loudly when a pin moves.

- :func:`without_runtime_type_checks` (typeguard, under Feast): Feast decorates its classes with typeguard's
  ``@typechecked``, which re-parses and recompiles each of them on ``import feast`` (about half its import
  time, paid by every ``ebr search``, server start and flow command). typeguard documents the decorator as
  a no-op in production (``python -O``); this gives that behaviour to the decorator alone. The ``features``
  package calls it on import: every path of the project into Feast goes through it. It only acts before
  Feast's first import, and ``EBR_FEAST_TYPECHECKS=1`` keeps the checks on.
- :func:`ephemeral_server_dies_with_us` (Prefect): a flow command without ``PREFECT_API_URL`` starts a
  temporary Prefect server as a child process that outlived a killed command; on Linux the child now asks
  the kernel to stop it when its parent dies (``PR_SET_PDEATHSIG``), through the server module's
  ``subprocess``.
- :func:`feast_sqlite_table` (Feast): the table name Feast's SQLite online store reads, for the online
  reader's batched query on it (``features.online_read``).
- :func:`torch_sparse_adam` (PyTorch): the functional ``sparse_adam`` update that ``torch.optim.SparseAdam``
  runs, for the row-sparse optimizer (``models.sparse_adam``).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Callable

log = logging.getLogger(__name__)

# distribution -> the version every patch of it was written against (pyproject.toml pins the same)
GUARDS: dict[str, str] = {"feast": "0.67.0", "prefect": "3.8.8", "torch": "2.13.0"}
TYPECHECKS_ENV = "EBR_FEAST_TYPECHECKS"


class UnsupportedVersionError(RuntimeError):
    """A library internal the project needs was written for another version of the library."""


@functools.cache  # reading a distribution's metadata costs milliseconds; the online read asks on every query
def installed(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def guarded(distribution: str) -> bool:
    """Whether the installed ``distribution`` is the version its patches were written against; torch's
    local build tag (``+cpu``) does not count."""
    got = installed(distribution)
    return got is not None and got.split("+", 1)[0] == GUARDS[distribution]


def _require(distribution: str, what: str) -> None:
    if not guarded(distribution):
        raise UnsupportedVersionError(
            f"{what} relies on {distribution}=={GUARDS[distribution]} internals, but {distribution} "
            f"{installed(distribution)} is installed: install the version pinned in pyproject.toml, or update "
            f"infra/patches.py for the new one")


def _step_aside(distribution: str, what: str) -> bool:
    if guarded(distribution):
        return False
    log.warning("%s skipped: written for %s==%s, %s is installed", what, distribution, GUARDS[distribution],
                installed(distribution))
    return True


# --------------------------------------------------------------------------- typeguard under Feast


def _unchecked(target=None, **_options):
    """``typeguard.typechecked`` as it is under ``python -O``: the target itself."""
    return target if target is not None else (lambda t: t)


def without_runtime_type_checks() -> bool:
    """Make typeguard's decorator a no-op for the modules imported from now on; True when it did."""
    if os.environ.get(TYPECHECKS_ENV, "").strip() in ("1", "true", "yes") or "feast" in sys.modules:
        return False
    if _step_aside("feast", "skipping Feast's typeguard checks"):
        return False
    try:
        import typeguard
    except ImportError:  # a Feast build without typeguard: nothing to skip
        return False
    typeguard.typechecked = _unchecked
    return True


# --------------------------------------------------------------------------- Prefect's temporary server


def _die_with_parent() -> None:  # runs in the child between fork and exec
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def ephemeral_server_dies_with_us() -> None:
    """Make the temporary Prefect server that a flow command starts die with the command (Linux)."""
    if not sys.platform.startswith("linux") or os.environ.get("PREFECT_API_URL"):
        return
    if _step_aside("prefect", "stopping Prefect's temporary server with its parent"):
        return
    import subprocess

    from prefect.server.api import server

    class _Subprocess:  # the server module's view of subprocess: Popen with the parent-death signal
        def __getattr__(self, name):
            return getattr(subprocess, name)

        @staticmethod
        def Popen(*args, **kwargs):  # noqa: N802 - the name Prefect calls
            kwargs.setdefault("preexec_fn", _die_with_parent)
            return subprocess.Popen(*args, **kwargs)

    if type(server.subprocess).__name__ != "_Subprocess":
        server.subprocess = _Subprocess()


# --------------------------------------------------------------------------- Feast's SQLite online store


def feast_sqlite_table(config: Any, view: Any) -> str:
    """The quoted name of the table that Feast's SQLite online store keeps ``view`` in."""
    _require("feast", "reading Feast's SQLite online store directly")
    from feast.infra.online_stores.sqlite import _quote_id, _table_id

    return _quote_id(_table_id(config.project, view, config.registry.enable_online_feature_view_versioning))


# --------------------------------------------------------------------------- PyTorch's functional optimizers


def torch_sparse_adam() -> Callable[..., None]:
    """``torch.optim._functional.sparse_adam``: the update ``torch.optim.SparseAdam.step`` runs."""
    _require("torch", "the row-sparse Adam optimizer")
    from torch.optim import _functional

    return _functional.sparse_adam


__all__ = [
    "GUARDS", "TYPECHECKS_ENV", "UnsupportedVersionError", "ephemeral_server_dies_with_us", "feast_sqlite_table",
    "guarded", "torch_sparse_adam", "without_runtime_type_checks",
]
