"""Writing a file or a directory so that readers see the old one or the whole new one, never half of it.

Every atomic write of the project goes through here: a temporary sibling (its name carries :data:`TMP_MARK`,
so listings can skip it) filled, then renamed onto the target; on any error it is removed."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

TMP_MARK = ".ebr-tmp-"  # in the name of every temporary sibling: never listed, swept when a crash leaves one


def temporary_sibling(target: Path, prefix: str = "") -> Path:
    """A fresh name next to ``target`` for a temporary file or directory."""
    return target.with_name(f"{prefix}{target.name}{TMP_MARK}{uuid.uuid4().hex[:8]}")


@contextmanager
def atomic_file(target: str | os.PathLike, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path of ``target`` to write; on success it replaces ``target`` (after an
    fsync with ``fsync``, for files that must survive a power loss); on any error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(target)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


class NotOursError(FileExistsError):
    """An atomic replace would delete a directory this project did not write."""


@contextmanager
def atomic_directory(target: str | os.PathLike, marker: str | None = None) -> Iterator[Path]:
    """Yield a temporary sibling of ``target`` to fill; on success it replaces ``target``.

    The old directory is renamed away before the new one is renamed in, so ``target`` is never missing for
    longer than between two renames. On any error the temporary directory is removed and ``target`` is
    left as it was. With ``marker`` (a file name every directory written this way holds, e.g. a manifest),
    an existing non-empty ``target`` without it is refused before anything is written: a replace never
    deletes a directory that is not one of ours.
    """
    target = Path(target)
    if (marker is not None and target.exists()
            and (not target.is_dir() or (any(target.iterdir()) and not (target / marker).is_file()))):
        raise NotOursError(
            f"refusing to replace {target}: it exists and holds no {marker}, so this project did not write it; "
            "choose another name or move it away"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
