"""Vectorized sampling helpers: named random streams, grouped (CSR) uniform and weighted draws.

Everything in the generator samples whole arrays at once; "pick a random member of this searcher's
community" for a million searchers is one call here, not a Python loop.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

DAY = 86_400  # seconds


def stream(seed: int, name: str) -> np.random.Generator:
    """An independent generator per step, so changing one step's knobs does not reshuffle the others."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


@dataclass(frozen=True)
class Groups:
    """Items grouped by an integer key: ``items[offsets[k]:offsets[k + 1]]`` are the items of group k."""

    items: np.ndarray
    offsets: np.ndarray
    cumw: np.ndarray | None = None  # cumulative weights aligned with items (for weighted draws)

    @classmethod
    def build(cls, keys: np.ndarray, n_groups: int, items: np.ndarray | None = None,
              weights: np.ndarray | None = None) -> "Groups":
        keys = np.asarray(keys, dtype=np.int64)
        items = np.arange(len(keys), dtype=np.int64) if items is None else np.asarray(items)
        valid = keys >= 0
        keys, items = keys[valid], items[valid]
        order = np.argsort(keys, kind="stable")
        counts = np.bincount(keys, minlength=n_groups)
        offsets = np.zeros(n_groups + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        cumw = None
        if weights is not None:
            cumw = np.cumsum(np.asarray(weights, dtype=np.float64)[valid][order])
        return cls(items[order], offsets, cumw)

    def sizes(self, groups: np.ndarray) -> np.ndarray:
        return self.offsets[groups + 1] - self.offsets[groups]

    def uniform(self, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One uniform item per requested group; -1 where the group is empty (or the key is < 0)."""
        groups = np.asarray(groups, dtype=np.int64)
        out = np.full(len(groups), -1, dtype=np.int64)
        ok = groups >= 0
        g = groups[ok]
        size = self.offsets[g + 1] - self.offsets[g]
        pos = self.offsets[g] + np.floor(rng.random(len(g)) * size).astype(np.int64)
        res = np.where(size > 0, self.items[np.minimum(pos, len(self.items) - 1)] if len(self.items) else -1, -1)
        out[ok] = res
        return out

    def weighted(self, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One item per requested group, drawn proportionally to the weights; -1 where empty."""
        if self.cumw is None:
            raise ValueError("weighted draws need Groups.build(..., weights=...)")
        groups = np.asarray(groups, dtype=np.int64)
        out = np.full(len(groups), -1, dtype=np.int64)
        ok = groups >= 0
        g = groups[ok]
        lo_i, hi_i = self.offsets[g], self.offsets[g + 1]
        nonempty = hi_i > lo_i
        cw = np.concatenate([[0.0], self.cumw])
        lo, hi = cw[lo_i], cw[hi_i]
        x = lo + rng.random(len(g)) * (hi - lo)
        pos = np.searchsorted(self.cumw, x, side="right") if len(self.cumw) else np.zeros(len(g), np.int64)
        pos = np.clip(pos, lo_i, np.maximum(hi_i - 1, lo_i))
        res = np.where(nonempty, self.items[np.minimum(pos, max(len(self.items) - 1, 0))] if len(self.items) else -1, -1)
        out[ok] = res
        return out


def weighted_choice(weights: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n draws (with replacement) from indices 0..len(weights)-1 proportional to weights."""
    cw = np.cumsum(np.asarray(weights, dtype=np.float64))
    return np.minimum(np.searchsorted(cw, rng.random(n) * cw[-1], side="right"), len(cw) - 1)


def zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Heavy-tailed popularity: 1 / rank ** exponent over a random permutation of ranks."""
    ranks = rng.permutation(n) + 1
    return 1.0 / ranks.astype(np.float64) ** exponent


def expand_ranges(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flatten ranges [start, start + length): (owner index of each element, element position)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    owner = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    if len(owner) == 0:
        return owner, owner.copy()
    first = np.cumsum(lengths) - lengths
    pos = np.arange(len(owner), dtype=np.int64) - first[owner] + np.asarray(starts, dtype=np.int64)[owner]
    return owner, pos


def sorted_contains(sorted_keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Membership test of int64 keys in a sorted int64 array."""
    if len(sorted_keys) == 0:
        return np.zeros(len(queries), dtype=bool)
    pos = np.searchsorted(sorted_keys, queries)
    pos = np.minimum(pos, len(sorted_keys) - 1)
    return sorted_keys[pos] == queries


def uniform_times(lo: np.ndarray, hi: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Uniform integer seconds in [lo, hi] (hi < lo collapses to lo)."""
    lo = np.asarray(lo, dtype=np.int64)
    span = np.maximum(np.asarray(hi, dtype=np.int64) - lo, 0)
    return lo + np.floor(rng.random(len(lo)) * span).astype(np.int64)


def unique_sorted(keys: np.ndarray) -> np.ndarray:
    """Sorted unique int64 keys (a sort beats numpy's hash-based unique on large int arrays)."""
    keys = np.sort(keys)
    if len(keys) == 0:
        return keys
    return keys[np.concatenate([[True], keys[1:] != keys[:-1]])]
