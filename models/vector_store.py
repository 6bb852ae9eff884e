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
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# SQLite's limit on the parameters of one statement is 32,766 since 3.32; stay well under the old 999
_CHUNK = 900


def text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


class VectorStore:
    """``dim``-wide float32 vectors by text in the SQLite file ``path`` (created with its directory).
    Thread-safe; one connection per store. Errors are logged once and turn the store off."""

    def __init__(self, path: Path, dim: int, timeout: float = 30.0):
        self.path, self.dim = Path(path), int(dim)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=timeout, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL: a commit survives a process crash, not a power cut
            db.execute("CREATE TABLE IF NOT EXISTS vectors (key BLOB PRIMARY KEY, vec BLOB NOT NULL) WITHOUT ROWID")
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
        """The stored vector of each text that has one."""
        keys = {text_key(t): t for t in texts}
        found: dict[str, np.ndarray] = {}
        with self._lock:
            if self._db is None or not keys:
                return found
            try:
                todo = list(keys)
                for s in range(0, len(todo), _CHUNK):
                    part = todo[s:s + _CHUNK]
                    rows = self._db.execute(f"SELECT key, vec FROM vectors WHERE key IN ({','.join('?' * len(part))})",
                                            part).fetchall()
                    for key, vec in rows:
                        v = np.frombuffer(vec, np.float32)
                        if v.size != self.dim:
                            raise sqlite3.DatabaseError(f"a stored vector has {v.size} values, expected {self.dim}")
                        found[keys[key]] = v.copy()
            except sqlite3.Error as e:
                self._off(e)
                return {}
        return found

    def put(self, vectors: Mapping[str, np.ndarray]) -> None:
        """Stores every text's vector in one transaction (a text already stored keeps its vector)."""
        rows = [(text_key(t), np.ascontiguousarray(v, np.float32).tobytes()) for t, v in vectors.items()]
        if any(len(vec) != 4 * self.dim for _, vec in rows):
            raise ValueError(f"vectors must have {self.dim} values")
        with self._lock:
            if self._db is None or not rows:
                return
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.executemany("INSERT OR IGNORE INTO vectors (key, vec) VALUES (?, ?)", rows)
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as e:
                self._off(e)

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
