"""Stable 64-bit hashing of feature values into embedding buckets.

Python's built-in ``hash()`` of a string is salted per process, so a model trained in one process would
look up different rows when served in another. Everything here is a fixed function of the bytes:
blake2b for (few, unique) categorical strings and a splitmix64 finalizer for the integer keys that the
vectorized text featurizer builds. Bucket 0 of every table is reserved for "unknown" (missing values,
empty texts and lists); hashed values land in ``1 .. n_buckets``.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np

UNKNOWN = 0

_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer: a bijective, well-mixing map of uint64 arrays (wraps modulo 2**64)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> _S30)) * _C1
        x = (x ^ (x >> _S27)) * _C2
        return x ^ (x >> _S31)


def salt64(name: str) -> np.uint64:
    """A fixed 64-bit constant per feature kind, so equal strings of different kinds hash apart."""
    return np.uint64(int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little"))


def hash_strings(values: Iterable[str], salt: str) -> np.ndarray:
    """uint64 hashes of strings (call it on unique values: it loops in Python)."""
    prefix = salt.encode() + b"\x1f"
    return np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(prefix + v.encode(), digest_size=8).digest(), "little")
            for v in values
        ),
        dtype=np.uint64,
    )


def to_buckets(h: np.ndarray, n_buckets: int, offset: int = 1) -> np.ndarray:
    """Map uint64 hashes to int64 rows ``offset .. offset + n_buckets - 1``."""
    return (np.asarray(h, dtype=np.uint64) % np.uint64(n_buckets)).astype(np.int64) + offset
