"""Meetup Montana (2016 API dump) as canonical tables: group and event recommendation with location.

- documents: the groups (``group:<id>``) and the events (``event:<id>``). Title = name, body = the HTML
  description as plain text, tags = the group's topic names (an event inherits its group's topics). An event's
  city and coordinates are its venue's; a group's are those of the most frequent venue city of its events.
  Region and country come from offline reverse geocoding of venue coordinates (venues at (0, 0) take the
  region of other venues with the same city name). Venue cities are cleaned: whitespace trimmed, all-caps or
  all-lowercase names title-cased, placeholders ("TBD", "United States") replaced by the nearest place name
  when the venue has coordinates, else left empty.
- searchers: the members of ``members.csv`` (one row per member-group join) plus anyone who RSVPed. Home city
  = the most frequent venue city among the member's yes-RSVPs in the training period (``home_city_from``):
  computing it over all RSVPs would write the held-out events' cities into the searcher's features.
- memberships: group joins (``joined``) and yes-RSVPs (RSVP ``created``); the extra column ``kind`` says which.
- sessions: one per yes-RSVP: a recommendation session with an empty query whose clicked document is the
  event, at the RSVP's creation time. "no" RSVPs are not sessions (counted in the manifest). No impressions.
- split by time: the newest ``test_fraction`` of yes-RSVPs (cut at a day boundary) are test, the
  ``valid_fraction`` before them valid, the rest train.

The events file lists a few events twice (identical rows): they are kept once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from ingest.contract import CanonicalDataset, DatasetManifest, empty_table
from ingest.datasets.common import (
    admin_regions,
    click_sessions,
    dominant_place,
    from_epoch,
    html_to_text,
    most_frequent,
    nearest_place_names,
    params_of,
    progress,
    quantile_cut,
    read_source_csv,
    require_files,
    split_by_time,
    valid_coords,
)

SOURCE = "meetup_montana"
SUBDIR = "meetup/montana_bigskydevcon"
FILES = ["groups.csv", "groups_topics.csv", "events.csv", "venues.csv", "members.csv", "rsvps.csv"]
CITY_PLACEHOLDERS = ("TBD", "United States")


@dataclass(frozen=True)
class MontanaConfig:
    valid_fraction: float = 0.1  # share of yes-RSVPs (by time) held out as valid
    test_fraction: float = 0.1  # newest share of yes-RSVPs held out as test
    home_city_from: Literal["train", "all"] = "train"  # which yes-RSVPs decide a member's home city

    def __post_init__(self) -> None:
        if not (0 <= self.valid_fraction < 1 and 0 < self.test_fraction < 1):
            raise ValueError("valid_fraction must be in [0, 1) and test_fraction in (0, 1)")
        if self.valid_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"valid_fraction + test_fraction must be < 1, got {self.valid_fraction + self.test_fraction}"
            )
        if self.home_city_from not in ("train", "all"):
            raise ValueError(f"home_city_from must be one of ['train', 'all'], got {self.home_city_from!r}")


def group_doc_id(group_id: pd.Series) -> pd.Series:
    return "group:" + group_id.astype(str)


def event_doc_id(event_id: pd.Series) -> pd.Series:
    return "event:" + event_id.astype(str)


def clean_city(city: pd.Series) -> pd.Series:
    """Trimmed city names; ALL-CAPS or all-lowercase spellings title-cased; placeholders become None."""
    c = city.astype("string").str.strip()
    c = c.where(~c.isin(CITY_PLACEHOLDERS).fillna(False) & (c != ""), None)
    shouting = c.str.isupper() | c.str.islower()
    c = c.where(~shouting.fillna(False), c.str.title())
    return c.astype(object).where(c.notna(), None)


def _venues(raw: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """One row per venue id (cleaned city, usable coordinates, region, country) and the placeholder count."""
    # A few venue ids appear twice with coordinates a few metres apart: average them.
    v = raw.copy()
    ok = valid_coords(v["lat"], v["lon"])
    v.loc[~ok, ["lat", "lon"]] = np.nan
    placeholder = v["city"].astype("string").str.strip().isin(CITY_PLACEHOLDERS).fillna(False)
    v["city"] = clean_city(v["city"])
    v = v.groupby("id").agg(city=("city", "first"), lat=("lat", "mean"), lon=("lon", "mean")).reset_index()
    geo = admin_regions(v["lat"], v["lon"])
    v["region"], v["country"] = geo["region"], geo["country"]
    # A placeholder city with coordinates: use the nearest populated place's name.
    unnamed = v["city"].isna() & v["lat"].notna()
    if unnamed.any():
        v.loc[unnamed, "city"] = nearest_place_names(v.loc[unnamed, "lat"], v.loc[unnamed, "lon"])
    # (0, 0) venues: borrow the region of other venues with the same city name.
    for col in ("region", "country"):
        by_city = most_frequent(v, "city", col)
        missing = v[col].isna() & v["city"].notna()
        v.loc[missing, col] = v.loc[missing, "city"].map(by_city)
    return v.set_index("id"), int(placeholder.sum())


def load(datasets_dir: Path, config: MontanaConfig | None = None) -> CanonicalDataset:
    """Read the Meetup Montana files under ``datasets_dir`` and return the canonical tables."""
    cfg = config or MontanaConfig()
    paths = require_files(SOURCE, datasets_dir, SUBDIR, FILES)
    steps = ["read files", "venues", "sessions and split", "documents", "searchers and memberships"]
    with progress(SOURCE, steps) as bar:
        groups = read_source_csv(paths["groups.csv"], dtype={"id": str})
        topics = read_source_csv(paths["groups_topics.csv"], dtype={"groupId": str})
        events_raw = read_source_csv(paths["events.csv"], dtype={"id": str, "group_id": str, "venue_id": "Int64"})
        venues_raw = read_source_csv(paths["venues.csv"], dtype={"id": "int64"})
        members = read_source_csv(paths["members.csv"], dtype={"id": str, "groupId": str})
        rsvps = read_source_csv(paths["rsvps.csv"], dtype={"event_id": str, "member_id": str})
        bar.done()

        venues, placeholder_cities = _venues(venues_raw)
        events = events_raw.drop_duplicates("id", keep="first").reset_index(drop=True)
        duplicate_event_rows = len(events_raw) - len(events)
        ev_place = pd.DataFrame(
            {
                "city": events["venue_id"].map(venues["city"]),
                "region": events["venue_id"].map(venues["region"]),
                "country": events["venue_id"].map(venues["country"]),
                "lat": events["venue_id"].map(venues["lat"]).astype("float64"),
                "lon": events["venue_id"].map(venues["lon"]).astype("float64"),
            }
        )
        ev_place = ev_place.astype(object).where(ev_place.notna(), None)
        ev_place[["lat", "lon"]] = ev_place[["lat", "lon"]].astype("float64")
        bar.done()

        # ---- sessions: yes-RSVPs, split by time
        unknown_event = ~rsvps["event_id"].isin(events["id"])
        rsvps = rsvps[~unknown_event].copy()
        rsvps["ts"] = from_epoch(rsvps["created"], "ms")
        yes = rsvps[rsvps["response"] == "yes"].copy()
        test_from = quantile_cut(yes["ts"], cfg.test_fraction)
        valid_from = (
            quantile_cut(yes["ts"], cfg.test_fraction + cfg.valid_fraction) if cfg.valid_fraction else None
        )
        yes["split"] = split_by_time(yes["ts"], valid_from, test_from)
        yes["doc_id"] = event_doc_id(yes["event_id"])
        sessions = click_sessions(yes["member_id"], yes["event_id"], yes["doc_id"], yes["ts"], yes["split"])
        bar.done()

        # ---- documents: groups and events
        topic_names = topics.groupby("groupId")["name"].agg(lambda s: sorted(set(s)))
        ev_doc = event_doc_id(events["id"])
        first_rsvp = rsvps.groupby("event_id")["ts"].min()
        last_rsvp = rsvps.groupby("event_id")["ts"].max()
        starts = from_epoch(events["time"], "ms")
        created = pd.concat([events["id"].map(first_rsvp), starts], axis=1).min(axis=1)
        event_docs = pd.DataFrame(
            {
                "doc_id": ev_doc,
                "doc_type": "event",
                "title": events["name"].fillna(""),
                "body": events["description"].map(html_to_text),
                "city": ev_place["city"],
                "region": ev_place["region"],
                "country": ev_place["country"],
                "created_at": created,
                "last_active_at": events["id"].map(last_rsvp),
                "lat": ev_place["lat"],
                "lon": ev_place["lon"],
                "starts_at": starts,
                "tags": [list(t) if isinstance(t, list) else [] for t in events["group_id"].map(topic_names)],
                "group_id": group_doc_id(events["group_id"]),
            }
        )
        group_place = dominant_place(event_docs.assign(key=events["group_id"]), "key")
        g_id = groups["id"]
        joined = members.assign(ts=from_epoch(members["joined"], "ms"))
        group_active = pd.concat(
            [
                joined[["groupId", "ts"]].rename(columns={"groupId": "gid"}),
                pd.DataFrame({"gid": rsvps["event_id"].map(events.set_index("id")["group_id"]), "ts": rsvps["ts"]}),
            ]
        ).groupby("gid")["ts"].max()
        group_docs = pd.DataFrame(
            {
                "doc_id": group_doc_id(g_id),
                "doc_type": "group",
                "title": groups["name"].fillna(""),
                "body": groups["description"].map(html_to_text),
                "city": g_id.map(group_place["city"]),
                "region": g_id.map(group_place["region"]),
                "country": g_id.map(group_place["country"]),
                "created_at": from_epoch(groups["created"], "ms"),
                "last_active_at": g_id.map(group_active),
                "lat": g_id.map(group_place["lat"]).astype("float64"),
                "lon": g_id.map(group_place["lon"]).astype("float64"),
                "starts_at": pd.NaT,
                "tags": [list(t) if isinstance(t, list) else [] for t in g_id.map(topic_names)],
                "group_id": group_doc_id(g_id),
            }
        )
        group_docs["starts_at"] = pd.to_datetime(group_docs["starts_at"], utc=True)
        documents = pd.concat([group_docs, event_docs], ignore_index=True)
        for col in ("city", "region", "country"):
            documents[col] = documents[col].astype(object).where(documents[col].notna(), None)
        bar.done()

        # ---- searchers (home city from yes-RSVP venues) and memberships
        home_rows = yes if cfg.home_city_from == "all" else yes[yes["split"] == "train"]
        home_rows = home_rows[["member_id", "event_id"]].merge(
            pd.concat([events["id"].rename("event_id"), ev_place], axis=1), on="event_id"
        )
        home = dominant_place(home_rows, "member_id")
        member_ids = pd.Index(pd.concat([members["id"], rsvps["member_id"]]).unique())
        first_seen = pd.concat(
            [joined[["id", "ts"]], rsvps[["member_id", "ts"]].rename(columns={"member_id": "id"})]
        ).groupby("id")["ts"].min()
        searchers = pd.DataFrame(
            {
                "searcher_id": member_ids,
                "city": member_ids.map(home["city"]),
                "region": member_ids.map(home["region"]),
                "country": member_ids.map(home["country"]),
                "language": None,
                "created_at": member_ids.map(first_seen),
                "lat": member_ids.map(home["lat"]).astype("float64"),
                "lon": member_ids.map(home["lon"]).astype("float64"),
            }
        )
        for col in ("city", "region", "country"):
            searchers[col] = searchers[col].astype(object).where(searchers[col].notna(), None)
        searchers = searchers.sort_values("searcher_id").reset_index(drop=True)
        memberships = pd.concat(
            [
                pd.DataFrame(
                    {"searcher_id": joined["id"], "doc_id": group_doc_id(joined["groupId"]),
                     "created_at": joined["ts"], "kind": "join"}
                ),
                pd.DataFrame(
                    {"searcher_id": yes["member_id"], "doc_id": yes["doc_id"], "created_at": yes["ts"],
                     "kind": "rsvp"}
                ),
            ],
            ignore_index=True,
        )
        bar.done()

    params = params_of(
        cfg,
        valid_from=valid_from,
        test_from=test_from,
        event_rows_read=len(events_raw),
        duplicate_event_rows_dropped=duplicate_event_rows,
        rsvps_unknown_event_dropped=int(unknown_event.sum()),
        rsvps_not_yes=int((rsvps["response"] != "yes").sum()),
        venues_without_coordinates=int(venues["lat"].isna().sum()),
        venue_city_placeholders=placeholder_cities,
        searchers_without_home_city=int(searchers["city"].isna().sum()),
        sessions_per_split=sessions["split"].value_counts().to_dict(),
    )
    notes = (
        f"Meetup Montana. Sessions = yes-RSVPs (empty query, clicked = the event); "
        f"{params['rsvps_not_yes']} non-yes RSVPs are not sessions. Split by RSVP time: valid from "
        f"{params['valid_from']}, test from {params['test_from']}. {duplicate_event_rows} duplicate event rows "
        f"dropped. Home city from {cfg.home_city_from} yes-RSVP venues; "
        f"{params['searchers_without_home_city']} members have none. Memberships = group joins + yes-RSVPs. "
        f"No impressions are logged."
    )
    return CanonicalDataset(
        searchers=searchers,
        documents=documents,
        friendships=empty_table("friendships"),
        memberships=memberships,
        sessions=sessions,
        manifest=DatasetManifest(source=SOURCE, params=params, notes=notes),
    )
