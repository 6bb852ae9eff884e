"""Working directories of flow runs (``<home>/runs/<flow>/<dataset>/<time>-<run id>``), and their cleanup.

A run writes its intermediate files (embeddings, staged artifacts, checkpoints, gate reports) into its own
directory. While it runs, the directory holds a ``RUNNING`` marker naming the process; the run removes the
marker when it ends, failed or not. A killed run cannot: its marker names a process that no longer exists,
and the next run of the same flow deletes the directory (:func:`sweep_run_dirs`), so a crash costs disk only
until the next run. Finished directories are kept for inspection under a retention rule: the newest ``keep``
always, the others until they are ``max_age_days`` old.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from infra.names import check_name
from infra.settings import get_settings

log = logging.getLogger(__name__)

MARKER = "RUNNING"


@dataclass(frozen=True)
class Retention:
    keep: int = 5  # newest finished run directories always kept
    max_age_days: float = 14.0  # older finished ones beyond those are deleted


def runs_root(flow: str, dataset: str) -> Path:
    """Where ``flow`` keeps its run directories for ``dataset``: ``<EBR_HOME>/runs/<flow>/<dataset>``."""
    return get_settings().home / "runs" / flow / check_name(dataset, "dataset name")


def process_alive(pid: int) -> bool:
    """Whether a process of this host with ``pid`` exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def new_run_dir(root: Path, run_id: object | None = None) -> Path:
    """A fresh ``root/<UTC time>-<run id>`` directory with this process's ``RUNNING`` marker."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    path = Path(root) / f"{stamp}-{str(run_id or uuid.uuid4().hex)[:8]}"
    path.mkdir(parents=True, exist_ok=False)
    (path / MARKER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": stamp}))
    return path


def finish_run_dir(path: Path) -> None:
    """Mark a run directory as ended (kept for inspection, subject to retention)."""
    (Path(path) / MARKER).unlink(missing_ok=True)


@contextmanager
def run_dir(root: Path, run_id: object | None = None, remove: bool = False) -> Iterator[Path]:
    """A run directory for the ``with`` block: ended on exit, or deleted with ``remove=True``. A kill leaves
    it marked, for the next :func:`sweep_run_dirs`."""
    path = new_run_dir(root, run_id)
    try:
        yield path
    finally:
        if remove:
            shutil.rmtree(path, ignore_errors=True)
        else:
            finish_run_dir(path)


def killed(path: Path) -> bool:
    """A directory whose marker names a process of this host that is gone."""
    try:
        info = json.loads((Path(path) / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return info.get("host") == socket.gethostname() and not process_alive(int(info.get("pid", -1)))


def sweep_run_dirs(root: Path, retention: Retention | None = None) -> list[Path]:
    """Delete the directories of killed runs under ``root`` and finished ones past retention; returns them."""
    retention = retention or Retention()
    root = Path(root)
    if not root.is_dir():
        return []
    removed: list[Path] = []
    finished = []
    for path in sorted((p for p in root.iterdir() if p.is_dir()), reverse=True):  # names sort by time
        if (path / MARKER).exists():
            if killed(path):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
                log.info("removed %s: left by a killed run", path)
            continue  # a live run (or another host's): not ours to touch
        finished.append(path)
    cutoff = time.time() - retention.max_age_days * 86_400
    for path in finished[retention.keep:]:
        if path.stat().st_mtime < cutoff:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
            log.info("removed %s: past retention (%d newest kept, %.0f days)", path, retention.keep,
                     retention.max_age_days)
    return removed


def prune_keyed_dirs(root: Path, retention: Retention | None = None, keep: frozenset[str] | set[str] = frozenset()
                     ) -> list[Path]:
    """Prune directories named by what they compute (a mining run, which a re-run resumes): they have no
    marker and no time in their name, so the ``retention.keep`` most recently modified ones and those named
    in ``keep`` stay, and the others go once untouched for ``retention.max_age_days``."""
    retention = retention or Retention()
    root = Path(root)
    if not root.is_dir():
        return []

    def touched(path: Path) -> float:
        return max([path.stat().st_mtime, *(c.stat().st_mtime for c in path.iterdir())])

    dirs = sorted((p for p in root.iterdir() if p.is_dir() and p.name not in keep), key=touched, reverse=True)
    cutoff = time.time() - retention.max_age_days * 86_400
    removed = []
    for path in dirs[retention.keep:]:
        if touched(path) < cutoff:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
            log.info("removed %s: past retention (%d newest kept, %.0f days)", path, retention.keep,
                     retention.max_age_days)
    return removed


__all__ = ["MARKER", "Retention", "finish_run_dir", "killed", "new_run_dir", "prune_keyed_dirs", "run_dir",
           "sweep_run_dirs"]
