"""Documents: people's profiles, groups and events, named so that text alone is ambiguous.

Person documents are the profiles of a sample of searchers (``p<number>`` belongs to ``s<number>``), named
from the name pool of their country with Zipf-weighted first and last names, so common names repeat across
cities. Groups are named from templates, most without a place in the title ("Runners Club" exists in many
cities); each group is founded in a city by one of its communities. Events are hosted by a group (same city
and topic) or stand alone, and start before, inside or after the time window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import names as N
from .config import WorldConfig
from .people import People, jitter
from .sampling import DAY, stream, uniform_times, weighted_choice, zipf_weights

PERSON, GROUP, EVENT = 0, 1, 2
TYPE_NAMES = np.array(["person", "group", "event"], dtype=object)
NAME_ZIPF = 0.9  # skew of first/last name frequencies inside a pool
TOPIC_ZIPF = 1.0  # skew of topics and group nouns: "Runners Club" is common, "Ham Radio Circle" rare


@dataclass
class Docs:
    kind: np.ndarray  # PERSON / GROUP / EVENT
    owner: np.ndarray  # searcher of a person document, else -1
    city: np.ndarray  # city_id or -1 (no admin-tagged place)
    title: np.ndarray  # object array of str
    body: np.ndarray
    created: np.ndarray  # int64 seconds
    starts: np.ndarray  # events: int64 seconds, else -1
    home_community: np.ndarray  # groups: founding community, else -1
    host: np.ndarray  # events: hosting group's doc index, else -1
    appeal: np.ndarray  # static popularity weight (Zipf)
    lat: np.ndarray
    lon: np.ndarray
    ids: np.ndarray  # object array of doc_id strings
    place_terms: list[frozenset[str]]  # normalized city/region tokens per city_id (optional in queries)

    @property
    def n(self) -> int:
        return len(self.kind)


def _zipf_pick(options: tuple[str, ...], n: int, rng: np.random.Generator, s: float = NAME_ZIPF) -> np.ndarray:
    w = 1.0 / np.arange(1, len(options) + 1, dtype=np.float64) ** s
    return np.asarray(options, dtype=object)[weighted_choice(w, n, rng)]


def _zipf_index(n_options: int, n: int, rng: np.random.Generator, s: float = TOPIC_ZIPF) -> np.ndarray:
    return weighted_choice(1.0 / np.arange(1, n_options + 1, dtype=np.float64) ** s, n, rng)


def _uniform_pick(options: tuple[str, ...], n: int, rng: np.random.Generator) -> np.ndarray:
    return np.asarray(options, dtype=object)[rng.integers(0, len(options), n)]


def _person_names(pools: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    first = np.empty(len(pools), dtype=object)
    last = np.empty(len(pools), dtype=object)
    for pool in N.POOLS:
        sel = np.flatnonzero(pools == pool)
        first[sel] = _zipf_pick(N.FIRST_NAMES[pool], len(sel), rng)
        last[sel] = _zipf_pick(N.LAST_NAMES[pool], len(sel), rng)
    return first, last


def _pools_of(country: np.ndarray, language: np.ndarray, foreign_share: float, rng) -> np.ndarray:
    pool = np.array([N.pool_for(c, lang) for c, lang in zip(country, language)], dtype=object)
    foreign = rng.random(len(pool)) < foreign_share
    pool[foreign] = np.asarray(N.POOLS, dtype=object)[rng.integers(0, len(N.POOLS), int(foreign.sum()))]
    return pool


def _fill(templates: tuple[tuple[str, float], ...], n: int, rng) -> np.ndarray:
    w = np.array([t[1] for t in templates])
    return weighted_choice(w, n, rng)


def make_documents(cfg: WorldConfig, cities: pd.DataFrame, people: People) -> Docs:
    from .text import normalize

    rng = stream(cfg.seed, "documents")
    counts = cfg.doc_counts()
    n_p, n_g, n_e = counts["person"], counts["group"], counts["event"]
    start, end = int(cfg.start.timestamp()), int(cfg.end.timestamp())
    c_name = cities["city"].to_numpy(dtype=object)
    c_region = cities["region"].to_numpy(dtype=object)
    c_country = cities["country"].to_numpy(dtype=object)
    c_lang = cities["language"].to_numpy(dtype=object)
    place_terms = [
        frozenset(normalize(f"{c} {r}").split()) for c, r in zip(c_name, c_region)
    ]

    # --- persons: profiles of a sample of searchers
    owner = np.sort(rng.choice(people.n, n_p, replace=False)) if n_p else np.zeros(0, np.int64)
    p_city = people.city[owner]
    pools = _pools_of(c_country[p_city], c_lang[p_city], cfg.geo.foreign_name_share, rng)
    first, last = _person_names(pools, rng)
    p_title = (pd.Series(first, dtype=object) + " " + pd.Series(last, dtype=object)).to_numpy(dtype=object)
    p_body = np.array([f"Lives in {c_name[c]}, {c_region[c] or c_country[c]}." for c in p_city], dtype=object)

    # --- groups
    w_city = cities["weight"].to_numpy()
    g_city = weighted_choice(w_city, n_g, rng)
    online = rng.random(n_g) < cfg.geo.empty_city_share
    g_city = np.where(online, -1, g_city)
    comm_of_city = _communities_by_city(people, len(cities))
    g_comm = comm_of_city.uniform(g_city, rng)  # founding community: a community of the group's city
    topic = _zipf_index(len(N.TOPICS), n_g, rng)
    tmpl = _fill(N.GROUP_TEMPLATES, n_g, rng)
    noun = _zipf_pick(N.GROUP_NOUNS, n_g, rng, TOPIC_ZIPF)
    direction = _uniform_pick(N.DIRECTIONS, n_g, rng)
    craft = _uniform_pick(N.CRAFTS, n_g, rng)
    place = _uniform_pick(N.PLACES, n_g, rng)
    g_pool = _pools_of(c_country[np.maximum(g_city, 0)], c_lang[np.maximum(g_city, 0)], 0.3, rng)
    g_first, _ = _person_names(g_pool, rng)
    g_title = np.empty(n_g, dtype=object)
    g_body = np.empty(n_g, dtype=object)
    for i in range(n_g):
        c = g_city[i]
        t = N.GROUP_TEMPLATES[tmpl[i]][0] if c >= 0 else "{topic} {noun}"
        fields = dict(
            topic=N.TOPICS[topic[i]], noun=noun[i], dir=direction[i], craft=craft[i], place=place[i],
            first=g_first[i], city=c_name[c] if c >= 0 else "", region=(c_region[c] or c_name[c]) if c >= 0 else "",
        )
        g_title[i] = t.format(**fields)
        g_body[i] = (
            f"{N.TOPICS[topic[i]]} {noun[i].lower()} for people in {c_name[c]}, {c_region[c] or c_country[c]}."
            if c >= 0 else f"An online {noun[i].lower()} about {N.TOPICS[topic[i]].lower()}."
        )
    g_old = start - np.floor(rng.random(n_g) * 5 * 365 * DAY).astype(np.int64) - DAY
    g_new = uniform_times(np.full(n_g, start), np.full(n_g, end - DAY), rng)
    g_created = np.where(rng.random(n_g) < cfg.new_document_share, g_new, g_old)
    g_appeal = zipf_weights(n_g, cfg.membership.popularity_zipf, rng) if n_g else np.zeros(0)

    # --- events: hosted by a group (its city and topic) or standalone
    hosted = (rng.random(n_e) < cfg.membership.p_event_hosted) & (n_g > 0)
    host = np.where(hosted, weighted_choice(g_appeal, n_e, rng) if n_g else 0, -1)
    e_city = np.where(hosted, g_city[np.maximum(host, 0)] if n_g else -1, weighted_choice(w_city, n_e, rng))
    e_topic = np.where(hosted, topic[np.maximum(host, 0)] if n_g else 0, _zipf_index(len(N.TOPICS), n_e, rng))
    e_tmpl = _fill(N.EVENT_TEMPLATES, n_e, rng)
    kind = _zipf_pick(N.EVENT_KINDS, n_e, rng, TOPIC_ZIPF)
    qual = _uniform_pick(N.EVENT_QUALIFIERS, n_e, rng)
    personal = _uniform_pick(N.PERSONAL_EVENTS, n_e, rng)
    e_pool = _pools_of(c_country[np.maximum(e_city, 0)], c_lang[np.maximum(e_city, 0)], 0.3, rng)
    e_first, _ = _person_names(e_pool, rng)
    starts = uniform_times(np.full(n_e, start - 30 * DAY), np.full(n_e, end + 30 * DAY), rng)
    e_created = np.minimum(
        starts - (3 * DAY + np.floor(rng.random(n_e) * 57 * DAY).astype(np.int64)),
        end - 3600 - np.floor(rng.random(n_e) * 3 * DAY).astype(np.int64),
    )
    e_title = np.empty(n_e, dtype=object)
    e_body = np.empty(n_e, dtype=object)
    day_str = pd.to_datetime(starts, unit="s", utc=True).strftime("%b %d, %Y").to_numpy(dtype=object) if n_e else []
    for i in range(n_e):
        c = e_city[i]
        t = N.EVENT_TEMPLATES[e_tmpl[i]][0]
        if c < 0 and "{city}" in t:
            t = "{topic} {kind}"
        fields = dict(
            topic=N.TOPICS[e_topic[i]], kind=kind[i], qualifier=qual[i], personal=personal[i], first=e_first[i],
            city=c_name[c] if c >= 0 else "",
        )
        e_title[i] = t.format(**fields)
        where = f"in {c_name[c]}" if c >= 0 else "online"
        e_body[i] = f"{e_title[i]} {where} on {day_str[i]}."
    e_appeal = zipf_weights(n_e, cfg.membership.popularity_zipf, rng) if n_e else np.zeros(0)

    # --- assemble: persons, then groups, then events
    kind_arr = np.concatenate([np.full(n_p, PERSON), np.full(n_g, GROUP), np.full(n_e, EVENT)]).astype(np.int8)
    city = np.concatenate([p_city, g_city, e_city]).astype(np.int64)
    host_doc = np.where(host >= 0, host + n_p, -1)
    lat_c = np.where(city >= 0, cities["lat"].to_numpy()[np.maximum(city, 0)], np.nan)
    lon_c = np.where(city >= 0, cities["lon"].to_numpy()[np.maximum(city, 0)], np.nan)
    lat, lon = jitter(lat_c, lon_c, cfg.geo.jitter_km, rng)
    lat[:n_p], lon[:n_p] = people.lat[owner], people.lon[owner]
    ids = np.concatenate([
        _ids("p", owner), _ids("g", np.arange(n_g)), _ids("e", np.arange(n_e)),
    ])
    return Docs(
        kind=kind_arr,
        owner=np.concatenate([owner, np.full(n_g + n_e, -1)]).astype(np.int64),
        city=city,
        title=np.concatenate([p_title, g_title, e_title]),
        body=np.concatenate([p_body, g_body, e_body]),
        created=np.concatenate([people.created[owner], g_created, e_created]).astype(np.int64),
        starts=np.concatenate([np.full(n_p + n_g, -1), starts]).astype(np.int64),
        home_community=np.concatenate([np.full(n_p, -1), g_comm, np.full(n_e, -1)]).astype(np.int64),
        host=np.concatenate([np.full(n_p + n_g, -1), host_doc]).astype(np.int64),
        appeal=np.concatenate([np.ones(n_p), g_appeal, e_appeal]),
        lat=lat, lon=lon, ids=ids, place_terms=place_terms,
    )


def _ids(prefix: str, numbers: np.ndarray) -> np.ndarray:
    return np.array([f"{prefix}{int(i):07d}" for i in numbers], dtype=object)


def _communities_by_city(people: People, n_cities: int):
    from .sampling import Groups

    comm_city = np.full(people.n_communities, -1, dtype=np.int64)
    comm_city[people.community] = people.city
    return Groups.build(comm_city, n_cities)
