"""Searchers, their communities and the friendship graph.

People live in cities drawn by population weight; each city is split into communities of about
``community_size`` people. Friendships follow a stochastic-block-like law: an edge's other end is a random
member of the same community with ``p_same_community``, of the same city, of the same country, or anyone.
How many edges a person starts is heavy-tailed (lognormal sociability), so the graph has hubs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .config import WorldConfig
from .sampling import DAY, Groups, stream, uniform_times, unique_sorted, weighted_choice


@dataclass
class People:
    city: np.ndarray  # city_id per searcher
    community: np.ndarray  # global community id
    created: np.ndarray  # int64 seconds since epoch
    lat: np.ndarray
    lon: np.ndarray
    n_communities: int
    by_community: Groups
    by_city: Groups
    by_country: Groups

    @property
    def n(self) -> int:
        return len(self.city)


@dataclass
class Friends:
    a: np.ndarray  # one row per undirected friendship (a < b)
    b: np.ndarray
    created: np.ndarray
    adj: Groups  # neighbours per searcher (both directions)
    keys: np.ndarray  # sorted a * n + b for both directions: friendship lookups

    def degree(self, n: int) -> np.ndarray:
        return np.diff(self.adj.offsets)[:n]


def jitter(lat: np.ndarray, lon: np.ndarray, km: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    dlat = rng.normal(0.0, km / 111.0, len(lat))
    dlon = rng.normal(0.0, km / 111.0, len(lat)) / np.maximum(np.cos(np.radians(lat)), 0.2)
    return np.clip(lat + dlat, -90, 90), ((lon + dlon + 180.0) % 360.0) - 180.0


def make_people(cfg: WorldConfig, cities: pd.DataFrame) -> People:
    rng = stream(cfg.seed, "people")
    n = cfg.n_searchers
    city = weighted_choice(cities["weight"].to_numpy(), n, rng)
    n_cities = len(cities)
    per_city = np.bincount(city, minlength=n_cities)
    n_comm = np.maximum(1, np.rint(per_city / cfg.social.community_size)).astype(np.int64)
    comm_offset = np.concatenate([[0], np.cumsum(n_comm)[:-1]])
    community = comm_offset[city] + np.floor(rng.random(n) * n_comm[city]).astype(np.int64)
    start, end = int(cfg.start.timestamp()), int(cfg.end.timestamp())
    old = start - np.floor(rng.random(n) * 6 * 365 * DAY).astype(np.int64) - DAY
    new = uniform_times(np.full(n, start), np.full(n, start + (end - start) // 2), rng)
    created = np.where(rng.random(n) < cfg.new_searcher_share, new, old)
    lat, lon = jitter(cities["lat"].to_numpy()[city], cities["lon"].to_numpy()[city], cfg.geo.jitter_km, rng)
    country = cities["country_id"].to_numpy()[city]
    return People(
        city=city, community=community, created=created, lat=lat, lon=lon,
        n_communities=int(n_comm.sum()),
        by_community=Groups.build(community, int(n_comm.sum())),
        by_city=Groups.build(city, n_cities),
        by_country=Groups.build(country, int(country.max()) + 1),
    )


def make_friendships(cfg: WorldConfig, people: People, cities: pd.DataFrame) -> Friends:
    rng = stream(cfg.seed, "friendships")
    n, sc = people.n, cfg.social
    m = int(round(n * sc.mean_friends / 2))
    sociability = rng.lognormal(0.0, 0.8, n)
    src = weighted_choice(sociability, m, rng)
    kind = rng.random(m)
    p1 = sc.p_same_community
    p2, p3 = p1 + sc.p_same_city, p1 + sc.p_same_city + sc.p_same_country
    dst = np.full(m, -1, dtype=np.int64)
    sel = kind < p1
    dst[sel] = people.by_community.uniform(people.community[src[sel]], rng)
    sel = (kind >= p1) & (kind < p2)
    dst[sel] = people.by_city.uniform(people.city[src[sel]], rng)
    sel = (kind >= p2) & (kind < p3)
    country = cities["country_id"].to_numpy()[people.city]
    dst[sel] = people.by_country.uniform(country[src[sel]], rng)
    sel = kind >= p3
    dst[sel] = weighted_choice(sociability, int(sel.sum()), rng)
    ok = (dst >= 0) & (dst != src)
    a, b = np.minimum(src[ok], dst[ok]), np.maximum(src[ok], dst[ok])
    key = unique_sorted(a * n + b)
    a, b = key // n, key % n
    # When: after both joined; a share inside the window, the rest before it.
    start, end = int(cfg.start.timestamp()), int(cfg.end.timestamp())
    lo = np.maximum(people.created[a], people.created[b])
    inside = (rng.random(len(a)) < sc.new_friendship_share) | (lo >= start)
    created = np.where(
        inside,
        uniform_times(np.maximum(lo, start), np.full(len(a), end - 1), rng),
        uniform_times(lo, np.full(len(a), start - 1), rng),
    )
    both_src = np.concatenate([a, b])
    both_dst = np.concatenate([b, a])
    adj = Groups.build(both_src, n, items=both_dst)
    keys = np.sort(both_src * n + both_dst)
    return Friends(a=a, b=b, created=created, adj=adj, keys=keys)
