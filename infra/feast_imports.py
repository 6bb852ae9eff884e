"""Feast without its development-time type checks, for the processes the project starts.

Feast decorates its classes and functions with typeguard's ``@typechecked``, which re-parses and recompiles
each of them when Feast is imported: about half of the time of ``import feast``, paid by every ``ebr search``,
every server start and every flow command. typeguard documents the decorator as a development aid that is a
no-op in production (``python -O``); :func:`without_runtime_type_checks` gives that behaviour to the
decorator alone (the project's own asserts stay on). The ``features`` package calls it when it is imported:
every path of the project into Feast goes through it (flow commands, serving, a worker's flow runs).

It only acts before Feast's first import (a process that already imported it keeps its checks), and
``EBR_FEAST_TYPECHECKS=1`` keeps them on.
"""

from __future__ import annotations

import os
import sys

ENV = "EBR_FEAST_TYPECHECKS"


def _unchecked(target=None, **_options):
    """``typeguard.typechecked`` as it is under ``python -O``: the target itself."""
    return target if target is not None else (lambda t: t)


def without_runtime_type_checks() -> bool:
    """Make typeguard's decorator a no-op for the modules imported from now on; True when it did."""
    if os.environ.get(ENV, "").strip() in ("1", "true", "yes") or "feast" in sys.modules:
        return False
    try:
        import typeguard
    except ImportError:  # a Feast build without typeguard: nothing to skip
        return False
    typeguard.typechecked = _unchecked
    return True


__all__ = ["ENV", "without_runtime_type_checks"]
