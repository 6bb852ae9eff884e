"""Meetup Chicago (the ACDA RSVP files) as canonical tables: event recommendation with location, no text.

Only the Chicago files are read: ``rsvp_chicago_{train,test,cv}.csv`` (together the same RSVPs as
``rsvp_chicago.csv``) and ``user_group_chicago.csv``.

- location: there are no city names, so the city of a searcher or document is the id of the
  ``cell_deg``-degree grid cell holding its coordinates (``cell0.1:41.9:-87.7``, the cell's south-west corner);
  lat/lon are kept, and region/country come from offline reverse geocoding (some members live far from
  Chicago). Venues at (0, 0) have no location.
- searchers: every member of the RSVP files and of ``user_group_chicago.csv``, at the member's coordinates.
- documents: events (``event:<id>``; empty title and body, the group's document id as tag, start time, venue
  location, the dataset's ``eventYesRSVPCount`` as extra column ``yes_rsvp_count``) and groups
  (``group:<id>``; location of the most frequent venue cell of their events).
- memberships: the positive RSVPs of the training file only, so that events have members (the split is
  random, not by time: a held-out RSVP must not leak into features through memberships). Group joins of
  ``user_group_chicago.csv`` have no dates (an end-of-data snapshot) and would leak later joins into every
  point-in-time join; they are added (at ``undated_at``) only with ``undated_memberships=True``. The extra
  column ``kind`` says which.
- sessions: one per positive RSVP (``positive_responses``, by default the rows the dataset rates 1: yes,
  waitlist, watching), empty query, clicked = the event, with the dataset's own split: ``*_train.csv`` ->
  train, ``*_cv.csv`` -> valid, ``*_test.csv`` -> test. "no" RSVPs are not sessions (counted in the manifest).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ingest.contract import CanonicalDataset, DatasetManifest, empty_table
from ingest.datasets.common import (
    admin_regions,
    click_sessions,
    dominant_place,
    from_epoch,
    grid_cell,
    params_of,
    progress,
    read_source_csv,
    require_files,
    utc,
    valid_coords,
)

SOURCE = "meetup_chicago"
SUBDIR = "meetup/acda_chicago_dc_sfo"
SPLIT_FILES = {"train": "rsvp_chicago_train.csv", "valid": "rsvp_chicago_cv.csv", "test": "rsvp_chicago_test.csv"}
GROUP_FILE = "user_group_chicago.csv"
RESPONSES = ("yes", "no", "waitlist", "watching")


@dataclass(frozen=True)
class ChicagoConfig:
    cell_deg: float = 0.1  # size of the location grid cells used as "city"
    positive_responses: tuple[str, ...] = ("yes", "waitlist", "watching")  # the dataset's rsvpRating = 1
    undated_at: str = "2002-01-01T00:00:00+00:00"  # timestamp of rows without a date (group joins)
    # user_group_chicago.csv has no dates (a snapshot at the end of the data): as memberships it would reach
    # every point-in-time join and leak later joins into training features. Off unless asked for.
    undated_memberships: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.cell_deg <= 10:
            raise ValueError(f"cell_deg must be in (0, 10], got {self.cell_deg}")
        bad = sorted(set(self.positive_responses) - set(RESPONSES))
        if bad or not self.positive_responses:
            raise ValueError(f"positive_responses must be a non-empty subset of {list(RESPONSES)}, got {bad}")


def _read_rsvps(paths: dict[str, Path]) -> pd.DataFrame:
    frames = []
    for split, name in SPLIT_FILES.items():
        df = read_source_csv(paths[name], dtype={"memberId": str, "eventId": str, "groupId": str, "venueId": str})
        frames.append(df.assign(split=split))
    return pd.concat(frames, ignore_index=True)


def _located(lat: pd.Series, lon: pd.Series, cell_deg: float) -> pd.DataFrame:
    """city (grid cell), region, country, lat, lon for points; unusable points give empty values."""
    ok = valid_coords(lat, lon)
    geo = admin_regions(lat, lon)
    return pd.DataFrame(
        {
            "city": grid_cell(lat, lon, cell_deg),
            "region": geo["region"],
            "country": geo["country"],
            "lat": lat.astype("float64").where(ok),
            "lon": lon.astype("float64").where(ok),
        },
        index=lat.index,
    )


def load(datasets_dir: Path, config: ChicagoConfig | None = None) -> CanonicalDataset:
    """Read the Meetup Chicago files under ``datasets_dir`` and return the canonical tables."""
    cfg = config or ChicagoConfig()
    paths = require_files(SOURCE, datasets_dir, SUBDIR, [*SPLIT_FILES.values(), GROUP_FILE])
    undated = utc(cfg.undated_at)
    steps = ["read files", "sessions", "events and groups", "searchers and memberships"]
    with progress(SOURCE, steps) as bar:
        rsvps = _read_rsvps(paths)
        user_group = read_source_csv(paths[GROUP_FILE], dtype=str).drop_duplicates()
        bar.done()

        rsvps["ts"] = from_epoch(rsvps["rsvpTime"], "ms")
        positive = rsvps["rsvpResponse"].isin(cfg.positive_responses)
        pos = rsvps[positive]
        sessions = click_sessions(pos["memberId"], pos["eventId"], "event:" + pos["eventId"], pos["ts"], pos["split"])
        bar.done()

        # ---- events: one row per event id (its attributes repeat on each RSVP row)
        ev = rsvps.sort_values("ts").drop_duplicates("eventId", keep="first").set_index("eventId").sort_index()
        ev_loc = _located(ev["venueLat"], ev["venueLon"], cfg.cell_deg)
        by_event = rsvps.groupby("eventId")["ts"]
        event_docs = pd.DataFrame(
            {
                "doc_id": "event:" + ev.index.to_series(),
                "doc_type": "event",
                "title": "",
                "body": "",
                **{c: ev_loc[c] for c in ("city", "region", "country")},
                "created_at": by_event.min().reindex(ev.index),
                "last_active_at": by_event.max().reindex(ev.index),
                "lat": ev_loc["lat"],
                "lon": ev_loc["lon"],
                "starts_at": from_epoch(ev["eventTime"], "ms"),
                "tags": pd.Series([["group:" + g] for g in ev["groupId"]], index=ev.index),
                "group_id": "group:" + ev["groupId"],
                "yes_rsvp_count": ev["eventYesRSVPCount"].astype("Int64"),
            },
            index=ev.index,
        ).reset_index(drop=True)

        # ---- groups: every group of an event or of a membership row
        group_ids = pd.Index(sorted(set(rsvps["groupId"]) | set(user_group["groupId"])))
        group_place = dominant_place(ev_loc.assign(key=ev["groupId"]), "key")
        first_rsvp = rsvps.groupby("groupId")["ts"].min()
        # Groups have no creation date; an early fixed one, or their first RSVP if that is earlier.
        created = group_ids.to_series().map(first_rsvp).fillna(undated).clip(upper=undated)
        group_docs = pd.DataFrame(
            {
                "doc_id": "group:" + group_ids.to_series(),
                "doc_type": "group",
                "title": "",
                "body": "",
                **{c: group_ids.to_series().map(group_place[c]) for c in ("city", "region", "country")},
                "created_at": created,
                "last_active_at": group_ids.to_series().map(rsvps.groupby("groupId")["ts"].max()),
                "lat": group_ids.to_series().map(group_place["lat"]).astype("float64"),
                "lon": group_ids.to_series().map(group_place["lon"]).astype("float64"),
                "starts_at": pd.Series(pd.NaT, index=group_ids, dtype="datetime64[ns, UTC]"),
                "tags": pd.Series([[] for _ in range(len(group_ids))], index=group_ids),
                "group_id": "group:" + group_ids.to_series(),
            },
            index=group_ids,
        ).reset_index(drop=True)
        documents = pd.concat([event_docs, group_docs], ignore_index=True)
        for col in ("city", "region", "country"):
            documents[col] = documents[col].astype(object).where(documents[col].notna(), None)
        bar.done()

        # ---- searchers at their own coordinates; memberships = group joins + training RSVPs
        mem = rsvps.drop_duplicates("memberId").set_index("memberId")
        mem_loc = _located(mem["memberLat"], mem["memberLon"], cfg.cell_deg)
        member_ids = pd.Index(sorted(set(rsvps["memberId"]) | set(user_group["userId"])))
        first_seen = rsvps.groupby("memberId")["ts"].min()
        searchers = pd.DataFrame(
            {
                "searcher_id": member_ids,
                **{c: member_ids.map(mem_loc[c]) for c in ("city", "region", "country")},
                "language": None,
                "created_at": pd.to_datetime(member_ids.map(first_seen).fillna(undated), utc=True),
                "lat": member_ids.map(mem_loc["lat"]).astype("float64"),
                "lon": member_ids.map(mem_loc["lon"]).astype("float64"),
            }
        )
        for col in ("city", "region", "country"):
            searchers[col] = searchers[col].astype(object).where(searchers[col].notna(), None)
        train_pos = pos[pos["split"] == "train"]
        memberships = pd.concat(
            [
                pd.DataFrame(
                    {"searcher_id": user_group["userId"], "doc_id": "group:" + user_group["groupId"],
                     "created_at": undated, "kind": "join"}
                ),
                pd.DataFrame(
                    {"searcher_id": train_pos["memberId"], "doc_id": "event:" + train_pos["eventId"],
                     "created_at": train_pos["ts"], "kind": "rsvp"}
                ),
            ],
            ignore_index=True,
        )
        if not cfg.undated_memberships:
            memberships = memberships[memberships["kind"] != "join"].reset_index(drop=True)
        bar.done()

    params = params_of(
        cfg,
        split_files=SPLIT_FILES,
        rsvp_rows_read=len(rsvps),
        rsvps_not_positive=int((~positive).sum()),
        events_without_venue_location=int(event_docs["city"].isna().sum()),
        positive_rsvps_at_venue_0_0=int(
            (positive & ~valid_coords(rsvps["venueLat"], rsvps["venueLon"])).sum()
        ),
        group_join_rows=len(user_group),
        sessions_per_split=sessions["split"].value_counts().to_dict(),
    )
    notes = (
        f"Meetup Chicago (no text). Sessions = RSVPs with response in {list(cfg.positive_responses)} "
        f"({params['rsvps_not_positive']} other RSVPs dropped), empty query, clicked = the event, split from the "
        f"dataset's files (train/cv->valid/test; a random split of rows, not by time). City = "
        f"{cfg.cell_deg:g}-degree grid cell id. Memberships = training-file positive RSVPs"
        + (f" + user_group rows (undated, stamped {cfg.undated_at})" if cfg.undated_memberships
           else " (user_group rows are undated and left out: they would leak later joins)")
        + ". No impressions are logged."
    )
    return CanonicalDataset(
        searchers=searchers,
        documents=documents,
        friendships=empty_table("friendships"),
        memberships=memberships,
        sessions=sessions,
        manifest=DatasetManifest(source=SOURCE, params=params, notes=notes),
    )
