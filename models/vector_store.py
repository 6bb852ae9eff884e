"""A frozen text encoder's document vectors on disk, so that a retraining or a nightly rebuild encodes only
the documents it has not seen before. A frozen encoder is a pure function of its text, and encoding is the
slow part: all-MiniLM-L6-v2 encodes about a dozen 256-token abstracts a second on 2 CPU cores.

One SQLite file per encoder fingerprint (:func:`models.pretrained.encoder_fingerprint`: the encoder's name,
width and token limit, and the versions of the packages that compute its vectors). Another model or library
version starts a file of its own, so that no stale vector is ever served. A text's key is its SHA-256.
SQLite's write-ahead log lets other processes (training workers, a serving process) read while one writes;
every write is one transaction, so that a crash loses at most the batch under way, never the file. The log
needs a local disk: SQLite's write-ahead mode does not work over a network file system.

The store is an optimization: where it cannot be opened, read or written (a read-only disk, a corrupt
file), a warning says so once and the encoder goes on without it.

Each vector carries the day it was last stored or read, so that ``ebr encoder-store prune --unused-days N``
(:func:`prune_directory`) can drop the documents no job has asked for in N days: those that left the
corpus, and every vector of an encoder version no longer run (its file is then removed).
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# SQLite's limit on the parameters of one statement is 32,766 since 3.32; stay well under the old 999
_CHUNK = 900


def text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def today() -> int:
    """Days since 1970-01-01 (UTC): the unit of a vector's last use."""
    return int(time.time() // 86400)


class VectorStore:
    """``dim``-wide float32 vectors by text in the SQLite file ``path`` (created with its directory).
    Thread-safe; one connection per store. Errors are logged once and turn the store off. ``clock``: the
    day of a use (:func:`today`; tests move it)."""

    def __init__(self, path: Path, dim: int, timeout: float = 30.0, clock: Callable[[], int] = today):
        self.path, self.dim, self.clock = Path(path), int(dim), clock
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._marks = True  # reads record their day (off where the file cannot be written)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=timeout, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL: a commit survives a process crash, not a power cut
            db.execute("CREATE TABLE IF NOT EXISTS vectors (key BLOB PRIMARY KEY, vec BLOB NOT NULL, "
                       "used INTEGER NOT NULL) WITHOUT ROWID")
            if "used" not in {row[1] for row in db.execute("PRAGMA table_info(vectors)")}:
                # a store written before uses were kept: its vectors count as used today
                db.execute(f"ALTER TABLE vectors ADD COLUMN used INTEGER NOT NULL DEFAULT {int(clock())}")
            self._db = db
        except (sqlite3.Error, OSError) as e:
            self._off(e)

    @property
    def enabled(self) -> bool:
        return self._db is not None

    def _off(self, error: Exception) -> None:
        log.warning("the encoder's vector store %s is off (%s: %s); vectors are computed instead",
                    self.path, type(error).__name__, error)
        db, self._db = self._db, None
        if db is not None:
            try:
                db.close()
            except sqlite3.Error:
                pass

    def get(self, texts: Iterable[str]) -> dict[str, np.ndarray]:
        """The stored vector of each text that has one (marked used today)."""
        keys = {text_key(t): t for t in texts}
        found: dict[str, np.ndarray] = {}
        with self._lock:
            if self._db is None or not keys:
                return found
            try:
                todo, day, stale = list(keys), int(self.clock()), []
                for s in range(0, len(todo), _CHUNK):
                    part = todo[s:s + _CHUNK]
                    rows = self._db.execute(
                        f"SELECT key, vec, used FROM vectors WHERE key IN ({','.join('?' * len(part))})", part).fetchall()
                    for key, vec, used in rows:
                        v = np.frombuffer(vec, np.float32)
                        if v.size != self.dim:
                            raise sqlite3.DatabaseError(f"a stored vector has {v.size} values, expected {self.dim}")
                        found[keys[key]] = v.copy()
                        if used < day:
                            stale.append((day, key))
            except sqlite3.Error as e:
                self._off(e)
                return {}
            if stale and self._marks:  # once a day per vector at most: later reads that day write nothing
                try:
                    self._write("UPDATE vectors SET used = ? WHERE key = ?", stale)
                except sqlite3.Error as e:  # a read-only store still serves its vectors
                    self._marks = False
                    log.warning("the encoder's vector store %s is read-only here (%s: %s): uses are not recorded",
                                self.path, type(e).__name__, e)
        return found

    def _write(self, sql: str, rows: list) -> None:
        """``sql`` for every row, in one transaction (the caller holds the lock)."""
        db = self._db
        assert db is not None  # callers hold the lock and have checked that the store is on
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(sql, rows)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def put(self, vectors: Mapping[str, np.ndarray]) -> None:
        """Stores every text's vector in one transaction (a text already stored keeps its vector, marked used
        today)."""
        day = int(self.clock())
        rows = [(text_key(t), np.ascontiguousarray(v, np.float32).tobytes(), day) for t, v in vectors.items()]
        if any(len(vec) != 4 * self.dim for _, vec, _ in rows):
            raise ValueError(f"vectors must have {self.dim} values")
        with self._lock:
            if self._db is None or not rows:
                return
            try:
                self._write("INSERT INTO vectors (key, vec, used) VALUES (?, ?, ?) "
                            "ON CONFLICT (key) DO UPDATE SET used = excluded.used WHERE used < excluded.used", rows)
            except sqlite3.Error as e:
                self._off(e)

    def prune(self, unused_days: int, dry_run: bool = False) -> int:
        """Deletes the vectors neither stored nor read in the last ``unused_days`` days, and gives the file's
        freed pages back to the disk; returns how many went (or would go, with ``dry_run``)."""
        if unused_days < 0:
            raise ValueError(f"unused_days must be >= 0, got {unused_days}")
        oldest_kept = int(self.clock()) - unused_days
        with self._lock:
            if self._db is None:
                return 0
            try:
                if dry_run:
                    return int(self._db.execute("SELECT COUNT(*) FROM vectors WHERE used < ?",
                                                (oldest_kept,)).fetchone()[0])
                gone = self._db.execute("DELETE FROM vectors WHERE used < ?", (oldest_kept,)).rowcount
                if gone:
                    self._db.execute("VACUUM")
                return int(gone)
            except sqlite3.Error as e:
                self._off(e)
                return 0

    def last_used(self) -> int | None:
        """The newest day (:func:`today`'s unit) any vector was stored or read; None when empty or off."""
        with self._lock:
            if self._db is None:
                return None
            try:
                return self._db.execute("SELECT MAX(used) FROM vectors").fetchone()[0]
            except sqlite3.Error as e:
                self._off(e)
                return None

    def __len__(self) -> int:
        with self._lock:
            if self._db is None:
                return 0
            try:
                return int(self._db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0])
            except sqlite3.Error as e:
                self._off(e)
                return 0

    def close(self) -> None:
        with self._lock:
            db, self._db = self._db, None
        if db is not None:
            db.close()


@dataclass(frozen=True)
class Pruned:
    """What :func:`prune_directory` did to one store file."""

    path: Path
    removed: int  # vectors deleted (or that would be, in a dry run)
    left: int  # vectors kept
    deleted_file: bool  # nothing was left: the file (and its write-ahead log) went too


def prune_directory(directory: Path, unused_days: int, dry_run: bool = False,
                    clock: Callable[[], int] = today) -> list[Pruned]:
    """:meth:`VectorStore.prune` on every store file in ``directory`` (one per encoder fingerprint), removing
    the files left empty: an encoder version no longer run is never read again, so its file empties once
    ``unused_days`` have passed. The width of a file's vectors does not matter to pruning (none is read)."""
    out = []
    for path in sorted(Path(directory).glob("*.sqlite")):
        store = VectorStore(path, dim=0, clock=clock)
        if not store.enabled:
            continue  # the warning says why; another file may still be pruned
        try:
            total = len(store)
            removed = store.prune(unused_days, dry_run=dry_run)
        finally:
            store.close()
        empty = total - removed == 0
        if empty and not dry_run:
            for f in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                f.unlink(missing_ok=True)
        out.append(Pruned(path, removed, total - removed, empty))
    return out
