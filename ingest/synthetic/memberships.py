"""Memberships: group joins and event RSVPs that follow community, city and friends.

Groups, round one: a searcher joins groups founded in their own community, popular groups of their city,
or popular groups anywhere (weights ``p_community``, ``p_city``, the rest). Round two (``p_friend``): they join
a group that a random friend joined in round one. Events: RSVPs go to events hosted by one's own groups, by
friends' groups, to popular events of one's city, or anywhere. An RSVP happens before the event starts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import WorldConfig
from .documents import EVENT, GROUP, Docs
from .people import Friends, People
from .sampling import Groups, stream, uniform_times, unique_sorted

# Where an RSVP comes from: own group's event, a friend's group's event, own city, anywhere.
EVENT_SOURCES = (0.45, 0.20, 0.25, 0.10)


@dataclass
class Members:
    s: np.ndarray
    d: np.ndarray
    created: np.ndarray
    by_searcher: Groups  # doc indices per searcher
    keys: np.ndarray  # sorted s * n_docs + d
    count: np.ndarray  # members per document
    comm_keys: np.ndarray  # sorted unique community * n_docs + d
    comm_counts: np.ndarray  # members of that community in that doc


def _fallback(primary: np.ndarray, backup: np.ndarray) -> np.ndarray:
    return np.where(primary >= 0, primary, backup)


def make_memberships(cfg: WorldConfig, people: People, friends: Friends, docs: Docs) -> Members:
    rng = stream(cfg.seed, "memberships")
    mc = cfg.membership
    n_s, n_d = people.n, docs.n
    end = int(cfg.end.timestamp())
    group_idx = np.flatnonzero(docs.kind == GROUP)
    event_idx = np.flatnonzero(docs.kind == EVENT)
    n_cities = int(max(people.city.max(), docs.city.max())) + 1
    appetite = rng.lognormal(0.0, 0.5, n_s)
    appetite /= appetite.mean()

    # ---- groups
    g_by_comm = Groups.build(docs.home_community[group_idx], people.n_communities, items=group_idx,
                             weights=docs.appeal[group_idx])
    g_by_city = Groups.build(docs.city[group_idx], n_cities, items=group_idx, weights=docs.appeal[group_idx])
    g_all = Groups.build(np.zeros(len(group_idx), np.int64), 1, items=group_idx, weights=docs.appeal[group_idx])
    k = rng.poisson(mc.mean_groups * appetite) if len(group_idx) else np.zeros(n_s, np.int64)
    src = np.repeat(np.arange(n_s), k)
    u = rng.random(len(src))
    zero = np.zeros(len(src), np.int64)
    glob = g_all.weighted(zero, rng)
    city = _fallback(g_by_city.weighted(people.city[src], rng), glob)
    comm = _fallback(g_by_comm.weighted(people.community[src], rng), city)
    p1, p2 = mc.p_community, mc.p_community + mc.p_city
    friend_round = (u >= p2) & (u < p2 + mc.p_friend)
    dst = np.where(u < p1, comm, np.where(u < p2, city, glob))
    first = ~friend_round
    round1 = Groups.build(src[first], n_s, items=dst[first])
    fr = friends.adj.uniform(src[friend_round], rng)
    via = round1.uniform(fr, rng)
    dst[friend_round] = _fallback(via, city[friend_round])
    g_s, g_d = src, dst

    # ---- events
    own_groups = Groups.build(g_s, n_s, items=g_d)
    e_by_host = Groups.build(docs.host[event_idx], n_d, items=event_idx)
    e_by_city = Groups.build(docs.city[event_idx], n_cities, items=event_idx, weights=docs.appeal[event_idx])
    e_all = Groups.build(np.zeros(len(event_idx), np.int64), 1, items=event_idx, weights=docs.appeal[event_idx])
    k = rng.poisson(mc.mean_events * appetite) if len(event_idx) else np.zeros(n_s, np.int64)
    src = np.repeat(np.arange(n_s), k)
    u = rng.random(len(src))
    zero = np.zeros(len(src), np.int64)
    glob = e_all.weighted(zero, rng)
    city = _fallback(e_by_city.weighted(people.city[src], rng), glob)
    own = _fallback(e_by_host.uniform(own_groups.uniform(src, rng), rng), city)
    friend = _fallback(e_by_host.uniform(own_groups.uniform(friends.adj.uniform(src, rng), rng), rng), city)
    c = np.cumsum(EVENT_SOURCES)
    dst = np.where(u < c[0], own, np.where(u < c[1], friend, np.where(u < c[2], city, glob)))
    e_s, e_d = src, dst

    s = np.concatenate([g_s, e_s]).astype(np.int64)
    d = np.concatenate([g_d, e_d]).astype(np.int64)
    ok = d >= 0
    key = unique_sorted(s[ok] * n_d + d[ok])
    s, d = key // n_d, key % n_d
    # Join time: after both exist; RSVPs before the event starts and never after the end of the window.
    lo = np.maximum(people.created[s], docs.created[d])
    hi = np.full(len(s), end - 1, dtype=np.int64)
    is_event = docs.kind[d] == EVENT
    hi[is_event] = np.minimum(hi[is_event], docs.starts[d[is_event]])
    keep = hi >= lo
    s, d, lo, hi, key = s[keep], d[keep], lo[keep], hi[keep], key[keep]
    # Most joins happen well before the window (groups are old); recent joins are what makes features move.
    created = uniform_times(lo, hi, rng)
    count = np.bincount(d, minlength=n_d)
    ck, cc = np.unique(people.community[s] * n_d + d, return_counts=True)
    return Members(
        s=s, d=d, created=created, by_searcher=Groups.build(s, n_s, items=d), keys=key, count=count,
        comm_keys=ck, comm_counts=cc,
    )


def activity(cfg: WorldConfig, docs: Docs, members: Members) -> np.ndarray:
    """last_active_at of groups and events (seconds): popular groups were active recently, small ones long ago."""
    rng = stream(cfg.seed, "activity")
    end = int(cfg.end.timestamp())
    mean_days = cfg.inactive_group_days / (1.0 + members.count / 5.0)
    since = np.floor(rng.exponential(1.0, docs.n) * mean_days * 86_400).astype(np.int64)
    last = end - 1 - since
    last_join = np.full(docs.n, np.iinfo(np.int64).min)
    np.maximum.at(last_join, members.d, members.created)
    last = np.maximum(np.maximum(last, last_join), docs.created)
    is_event = docs.kind == EVENT
    # An event is active until it starts (or until now if it is still ahead).
    last[is_event] = np.maximum(np.minimum(docs.starts[is_event], end - 1), last_join[is_event])
    last[is_event] = np.maximum(last[is_event], docs.created[is_event])
    return np.minimum(last, end - 1)
