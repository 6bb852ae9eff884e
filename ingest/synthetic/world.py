"""generate_world: build the synthetic social-search world and return it as canonical tables.

The steps run in a fixed order (places, people, friendships, documents, memberships, the text index,
sessions) and each draws from its own named random stream, so the same config gives identical tables.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ingest.contract import CanonicalDataset, DatasetManifest

from .config import WorldConfig
from .documents import EVENT, PERSON, TYPE_NAMES, make_documents
from .gazetteer import select_cities
from .memberships import activity, make_memberships
from .people import make_friendships, make_people
from .sampling import DAY, stream
from .sessions import World, build_text_index, make_sessions

SOURCE = "synthetic"


def _times(seconds: np.ndarray) -> pd.Series:
    return pd.Series(pd.to_datetime(np.asarray(seconds, dtype=np.int64), unit="s", utc=True))


def _ids(prefix: str, n: int) -> np.ndarray:
    return np.array([f"{prefix}{i:07d}" for i in range(n)], dtype=object)


def _place(values: np.ndarray, city: np.ndarray) -> np.ndarray:
    """Per-row place names; None where there is no city (or the name is empty)."""
    out = np.asarray(values, dtype=object)[np.maximum(city, 0)]
    out[(city < 0) | (out == "")] = None
    return out


def generate_world(config: WorldConfig | None = None, progress: bool = True) -> CanonicalDataset:
    """Generate the world described by ``config`` (default: ``WorldConfig.preset("default")``)."""
    cfg = config or WorldConfig.preset("default")
    steps = tqdm(total=8, desc="world", disable=not progress)

    def step(name: str) -> None:
        steps.set_description(f"world: {name}")

    step("places")
    cities = select_cities(cfg.geo)
    steps.update()
    step("people")
    people = make_people(cfg, cities)
    steps.update()
    step("friendships")
    friends = make_friendships(cfg, people, cities)
    steps.update()
    step("documents")
    docs = make_documents(cfg, cities, people)
    steps.update()
    step("memberships")
    members = make_memberships(cfg, people, friends, docs)
    steps.update()

    step("text index")
    degree = friends.degree(people.n)
    popularity = np.where(docs.kind == PERSON, degree[np.maximum(docs.owner, 0)], members.count).astype(np.float64)
    person_doc = np.full(people.n, -1, dtype=np.int64)
    is_person = docs.kind == PERSON
    person_doc[docs.owner[is_person]] = np.flatnonzero(is_person)
    index = build_text_index(docs, len(cities), popularity, cfg.seed)
    world = World(
        cfg=cfg, people=people, friends=friends, docs=docs, members=members,
        city_region=cities["region_id"].to_numpy(), city_country=cities["country_id"].to_numpy(),
        city_name=cities["city"].to_numpy(dtype=object), popularity=popularity, person_doc=person_doc, index=index,
    )
    steps.update()

    step("sessions")
    sessions = make_sessions(world, progress=progress)
    steps.update()

    step("tables")
    tables = _tables(cfg, cities, world, sessions)
    steps.update()
    steps.close()
    manifest = DatasetManifest(
        source=SOURCE, params=cfg.model_dump(mode="json"),
        notes="synthetic social-search world (people, groups, events); see docs/synthetic_world.md",
    )
    return CanonicalDataset(manifest=manifest, **tables)


def _tables(cfg: WorldConfig, cities: pd.DataFrame, w: World, sessions: pd.DataFrame) -> dict[str, pd.DataFrame]:
    p, docs, fr, mem = w.people, w.docs, w.friends, w.members
    sid = _ids("s", p.n)
    c_name = cities["city"].to_numpy(dtype=object)
    c_region = cities["region"].to_numpy(dtype=object)
    c_country = cities["country"].to_numpy(dtype=object)
    c_lang = cities["language"].to_numpy(dtype=object)
    searchers = pd.DataFrame({
        "searcher_id": sid,
        "city": c_name[p.city], "region": _place(c_region, p.city), "country": c_country[p.city],
        "language": c_lang[p.city], "created_at": _times(p.created), "lat": p.lat, "lon": p.lon,
    })

    # last activity: groups/events from joins and popularity; profiles from their owner's searches
    last = activity(cfg, docs, mem)
    rng = stream(cfg.seed, "profile-activity")
    end = int(cfg.end.timestamp())
    person = np.flatnonzero(docs.kind == PERSON)
    seen = np.full(p.n, np.iinfo(np.int64).min)
    np.maximum.at(seen, sessions["s"].to_numpy(), sessions["ts"].to_numpy())
    drawn = end - 1 - np.floor(rng.exponential(20.0, len(person)) * DAY).astype(np.int64)
    last[person] = np.maximum(np.maximum(drawn, seen[docs.owner[person]]), docs.created[person])
    last = np.minimum(last, end - 1)
    starts = pd.Series(pd.to_datetime(np.where(docs.kind == EVENT, docs.starts, 0), unit="s", utc=True))
    starts[docs.kind != EVENT] = pd.NaT
    documents = pd.DataFrame({
        "doc_id": docs.ids, "doc_type": TYPE_NAMES[docs.kind], "title": docs.title, "body": docs.body,
        "city": _place(c_name, docs.city), "region": _place(c_region, docs.city),
        "country": _place(c_country, docs.city), "created_at": _times(docs.created),
        "last_active_at": _times(last), "lat": docs.lat, "lon": docs.lon, "starts_at": starts,
    })
    friendships = pd.DataFrame({
        "searcher_id": np.concatenate([sid[fr.a], sid[fr.b]]),
        "friend_id": np.concatenate([sid[fr.b], sid[fr.a]]),
        "created_at": _times(np.concatenate([fr.created, fr.created])),
    })
    memberships = pd.DataFrame({
        "searcher_id": sid[mem.s], "doc_id": docs.ids[mem.d], "created_at": _times(mem.created),
    })
    sess = pd.DataFrame({
        "session_id": _ids("q", len(sessions)),
        "searcher_id": sid[sessions["s"].to_numpy()],
        "ts": _times(sessions["ts"].to_numpy()),
        "query": sessions["query"].to_numpy(dtype=object),
        "impressed": sessions["impressed"].to_numpy(dtype=object),
        "clicked": sessions["clicked"].to_numpy(dtype=object),
    })
    return {"searchers": searchers, "documents": documents, "friendships": friendships,
            "memberships": memberships, "sessions": sess}
