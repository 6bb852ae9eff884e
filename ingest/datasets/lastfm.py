"""Last.fm HetRec 2011 (2k users) as canonical tables: social search of artists by tag text.

- searchers: the users; no location or join date is published (city/region/country stay empty).
- friendships: ``user_friends.dat``, which already lists both directions of every friendship; the adapter
  adds any missing reverse edge anyway (none in the published file) and records how many it added.
- documents: the artists (title = name). The body is the artist's most used tags, counted over training
  taggings only, so a held-out query (a tag) is never written into a document by its own held-out tagging.
- memberships: none by default. ``user_artists.dat`` (play counts) has no dates: it is a snapshot taken at
  the end of the data, and 46% of the held-out tagging targets are in the tagging user's own top-50 there.
  Loaded as memberships it would be visible to every point-in-time join (history, clusters, member
  aggregates) and leak the test period into training features, so it is left out unless
  ``undated_memberships=True`` (play counts as ``weight``, every row at ``undated_at``, before the first
  session), which is only honest for time-free uses, not for a time-split evaluation.
- sessions: one per (user, tag, date): the query is the tag text, clicked are the artists the user tagged
  with it on that date. Dates are by month in practice (``day`` is only 1, 5, 6 or 9), so a session gathers
  the artists tagged with one tag in one month bucket. Impressions are not logged: ``impressed`` is empty.
- split by time on tagging months: the newest ``test_months`` months that have taggings are ``test``, the
  ``valid_months`` before them ``valid``, the rest ``train`` (months without taggings, e.g. April 2011, do
  not count).

Dropped: taggings of artists absent from ``artists.dat`` and taggings dated before ``min_year`` (a handful
dated 1956-1979, before the service existed). Both counts go into the manifest.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ingest.contract import CanonicalDataset, DatasetManifest
from ingest.datasets.common import lists_by_group, params_of, progress, read_source_csv, require_files, utc

SOURCE = "lastfm"
SUBDIR = "lastfm_hetrec2011"
FILES = ["artists.dat", "tags.dat", "user_artists.dat", "user_friends.dat", "user_taggedartists.dat"]


@dataclass(frozen=True)
class LastfmConfig:
    test_months: int = 3  # newest months with taggings held out as test
    valid_months: int = 3  # the months just before them, held out as valid
    min_year: int = 2002  # taggings dated earlier are corrupt (the service started in 2002)
    body_top_tags: int = 10  # tags written into an artist's body
    undated_at: str = "2005-01-01T00:00:00+00:00"  # timestamp of rows that have no date
    undated_memberships: bool = False  # load user_artists.dat as memberships (leaks the future: see above)

    def __post_init__(self) -> None:
        if self.test_months < 1:
            raise ValueError(f"test_months must be >= 1, got {self.test_months}")
        if self.valid_months < 0:
            raise ValueError(f"valid_months must be >= 0, got {self.valid_months}")
        if self.body_top_tags < 0:
            raise ValueError(f"body_top_tags must be >= 0, got {self.body_top_tags}")


def _read(path: Path, encoding: str = "utf-8") -> pd.DataFrame:
    # keep_default_na=False: artist names or tags such as "NA" or "null" are text, not missing values.
    return read_source_csv(
        path, sep="\t", dtype=str, encoding=encoding, quoting=csv.QUOTE_NONE, keep_default_na=False
    )


def month_split(months: pd.Series, test_months: int, valid_months: int) -> dict[str, list[str]]:
    """Which ``YYYY-MM`` months are valid and test: the newest months that occur in ``months``."""
    present = sorted(months.unique())
    if len(present) <= test_months + valid_months:
        raise ValueError(
            f"only {len(present)} months with taggings; test_months + valid_months must be fewer "
            f"(got {test_months} + {valid_months})"
        )
    test = present[-test_months:]
    valid = present[-(test_months + valid_months) : -test_months] if valid_months else []
    return {"valid": valid, "test": test}


def load(datasets_dir: Path, config: LastfmConfig | None = None) -> CanonicalDataset:
    """Read the Last.fm files under ``datasets_dir`` and return the canonical tables."""
    cfg = config or LastfmConfig()
    paths = require_files(SOURCE, datasets_dir, SUBDIR, FILES)
    undated = utc(cfg.undated_at)
    steps = ["read files", "taggings", "sessions", "artists", "users and friends"]
    with progress(SOURCE, steps) as bar:
        artists = _read(paths["artists.dat"])
        tags = _read(paths["tags.dat"], encoding="latin-1")  # the file is latin-1, not UTF-8
        plays = _read(paths["user_artists.dat"])
        friends = _read(paths["user_friends.dat"])
        tagged = _read(paths["user_taggedartists.dat"])
        bar.done()

        # ---- taggings: drop unknown artists and corrupt dates, date them, split by month
        n_tagged = len(tagged)
        unknown_artist = ~tagged["artistID"].isin(artists["id"])
        tagged = tagged[~unknown_artist].copy()
        for c in ("day", "month", "year"):
            tagged[c] = tagged[c].astype("int64")
        too_early = tagged["year"] < cfg.min_year
        tagged = tagged[~too_early].copy()
        tagged["ts"] = pd.to_datetime(tagged[["year", "month", "day"]], utc=True)
        tagged["ym"] = tagged["year"].map("{:04d}".format) + "-" + tagged["month"].map("{:02d}".format)
        cut = month_split(tagged["ym"], cfg.test_months, cfg.valid_months)
        tagged["split"] = "train"
        tagged.loc[tagged["ym"].isin(cut["valid"]), "split"] = "valid"
        tagged.loc[tagged["ym"].isin(cut["test"]), "split"] = "test"
        tag_text = tags.set_index("tagID")["tagValue"]
        tagged["query"] = tagged["tagID"].map(tag_text)
        if tagged["query"].isna().any():
            bad = tagged[tagged["query"].isna()].iloc[0].to_dict()
            raise ValueError(f"{SOURCE}: a tagging uses a tag id missing from tags.dat: {bad}")
        bar.done()

        # ---- sessions: one per (user, tag, date)
        tagged["artist_num"] = tagged["artistID"].astype("int64")
        tagged = tagged.sort_values(["userID", "tagID", "ts", "artist_num"])
        sessions = lists_by_group(tagged, ["userID", "tagID", "ts"], "artistID").rename(
            columns={"artistID": "clicked"}
        )
        day = sessions["year"] * 10000 + sessions["month"] * 100 + sessions["day"]
        sessions["session_id"] = sessions["userID"] + ":" + sessions["tagID"] + ":" + day.astype(str)
        sessions = sessions.rename(columns={"userID": "searcher_id"})
        sessions["impressed"] = [[] for _ in range(len(sessions))]
        sessions = sessions[["session_id", "searcher_id", "ts", "query", "impressed", "clicked", "split"]]
        sessions = sessions.sort_values(["ts", "session_id"]).reset_index(drop=True)
        bar.done()

        # ---- documents: artists, body = most used tags in training taggings
        train = tagged[tagged["split"] == "train"]
        top = (
            train.groupby(["artistID", "query"])["userID"].nunique().rename("users").reset_index()
            .sort_values(["artistID", "users", "query"], ascending=[True, False, True])
        )
        top = top.groupby("artistID").head(cfg.body_top_tags)
        top_tags = lists_by_group(top, ["artistID"], "query").set_index("artistID")["query"]
        last_active = train.groupby("artistID")["ts"].max()
        documents = pd.DataFrame(
            {
                "doc_id": artists["id"],
                "doc_type": "artist",
                "title": artists["name"],
                "city": None,
                "region": None,
                "country": None,
                "created_at": undated,
                "last_active_at": artists["id"].map(last_active),
            }
        )
        doc_tags = artists["id"].map(top_tags)
        documents["tags"] = [t if isinstance(t, list) else [] for t in doc_tags]
        documents["body"] = [", ".join(t) for t in documents["tags"]]
        documents = documents[
            ["doc_id", "doc_type", "title", "body", "city", "region", "country", "created_at",
             "last_active_at", "tags"]
        ]
        bar.done()

        # ---- searchers, friendships (made symmetric), memberships (play counts)
        user_ids = pd.concat([plays["userID"], friends["userID"], friends["friendID"], tagged["userID"]])
        user_ids = sorted(user_ids.unique(), key=int)
        searchers = pd.DataFrame(
            {"searcher_id": user_ids, "city": None, "region": None, "country": None, "language": None,
             "created_at": undated}
        )
        edges = friends.rename(columns={"userID": "searcher_id", "friendID": "friend_id"})
        self_loops = int((edges["searcher_id"] == edges["friend_id"]).sum())
        edges = edges[edges["searcher_id"] != edges["friend_id"]]
        reverse = edges.rename(columns={"searcher_id": "friend_id", "friend_id": "searcher_id"})
        both = pd.concat([edges, reverse[["searcher_id", "friend_id"]]]).drop_duplicates()
        added_reverse = len(both) - len(edges.drop_duplicates())
        friendships = both.reset_index(drop=True)
        friendships["created_at"] = undated
        memberships = pd.DataFrame(
            {
                "searcher_id": plays["userID"],
                "doc_id": plays["artistID"],
                "created_at": undated,
                "weight": plays["weight"].astype("float64"),
            }
        )
        if not cfg.undated_memberships:
            memberships = memberships.iloc[:0]
        bar.done()

    params = params_of(
        cfg,
        valid_month_list=cut["valid"],
        test_month_list=cut["test"],
        valid_from_month=min(cut["valid"]) if cut["valid"] else None,
        test_from_month=min(cut["test"]),
        taggings_read=n_tagged,
        dropped_taggings_unknown_artist=int(unknown_artist.sum()),
        dropped_taggings_before_min_year=int(too_early.sum()),
        friendship_reverse_edges_added=added_reverse,
        friendship_self_loops_dropped=self_loops,
        sessions_per_split=sessions["split"].value_counts().to_dict(),
    )
    notes = (
        f"Last.fm HetRec 2011. Dropped {params['dropped_taggings_unknown_artist']} taggings of artists absent "
        f"from artists.dat and {params['dropped_taggings_before_min_year']} taggings dated before "
        f"{cfg.min_year}. Sessions: one per (user, tag, date), query = tag text, clicked = the artists tagged. "
        f"Split by tagging month: valid = {cut['valid']}, test = {cut['test']}, train = earlier months. "
        f"Artist bodies use training taggings only. "
        + (f"Memberships (play counts) have no dates and carry {cfg.undated_at}. " if cfg.undated_memberships
           else "Play counts (undated, end of data) are left out: they would leak the test period. ")
        + f"Friendships have no dates and carry {cfg.undated_at}. Friendships made symmetric: {added_reverse} missing reverse edges "
        f"added. No impressions are logged."
    )
    return CanonicalDataset(
        searchers=searchers,
        documents=documents,
        friendships=friendships,
        memberships=memberships,
        sessions=sessions,
        manifest=DatasetManifest(source=SOURCE, params=params, notes=notes),
    )
