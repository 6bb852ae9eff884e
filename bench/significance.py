"""How sure a comparison is: a paired bootstrap over searchers of the relative difference of two methods.

Two methods scored on the same held-out sessions give two per-session recall vectors (``a``, ``b``). The
sessions of one searcher are not independent (a MovieLens test searcher contributes dozens of ratings, all
ranked with the same features), so the bootstrap resamples **searchers**, each with all its sessions, and
recomputes ``mean(a) / mean(b) - 1`` on each resample; the percentile interval says how far the figure could
move on another draw of searchers from the same population. An interval that contains 0 is a tie.
When the sessions come from too few searchers to resample, each session is its own group.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_GROUPS = 30  # fewer distinct searchers than this: resample sessions instead


@dataclass(frozen=True)
class RelativeDifference:
    """``mean(a) / mean(b) - 1`` with its bootstrap percentile interval."""

    estimate: float
    low: float
    high: float
    groups: int  # resampled units (searchers, or sessions)
    level: float

    @property
    def tie(self) -> bool:
        """The interval contains 0: this draw of searchers does not separate the two methods."""
        return self.low <= 0.0 <= self.high

    def __str__(self) -> str:
        def pct(x: float) -> str:  # a bound near 0 keeps a decimal: "+0%" would hide which side it is on
            return f"{x:+.1%}" if abs(x) < 0.01 else f"{x:+.0%}"

        return f"{pct(self.estimate)} [{pct(self.low)}, {pct(self.high)}]" + (" (tie)" if self.tie else "")


def paired_bootstrap(a: np.ndarray, b: np.ndarray, groups: np.ndarray | None = None, n_boot: int = 2000,
                     level: float = 0.95, seed: int = 0) -> RelativeDifference:
    """The relative difference of the means of ``a`` over ``b`` (per-session values of two methods on the
    same sessions) and its ``level`` percentile interval over ``n_boot`` resamples of ``groups`` (a group
    label per session, e.g. the searcher id; None or fewer than :data:`MIN_GROUPS` groups: each session
    alone). Resamples where ``b`` has no hit are left out (a reference with hits in very few searchers: the
    interval is then conditional on drawing one of them)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"need two equal, non-empty 1-d arrays of per-session values, got {a.shape} and {b.shape}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if b.sum() <= 0:
        raise ValueError("the reference method has no hit: its relative difference is undefined")
    codes = np.arange(len(a))
    if groups is not None:
        if len(groups) != len(a):
            raise ValueError(f"{len(groups)} group labels for {len(a)} sessions")
        _, grouped = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
        if grouped.max() + 1 >= MIN_GROUPS:
            codes = grouped
    n_groups = int(codes.max()) + 1
    sum_a = np.bincount(codes, a, n_groups)
    sum_b = np.bincount(codes, b, n_groups)
    rng = np.random.default_rng(seed)
    # each resample draws n_groups groups with replacement: how many times each group is drawn
    draws = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_boot).astype(float)
    ta, tb = draws @ sum_a, draws @ sum_b
    ok = tb > 0
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(ta[ok] / tb[ok] - 1.0, [tail, 1.0 - tail]) if ok.any() else (np.inf, np.inf)
    return RelativeDifference(float(a.mean() / b.mean() - 1.0), float(low), float(high), n_groups, level)
