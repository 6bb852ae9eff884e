"""MovieLens 100k as canonical tables: two-tower movie recommendation with a coarse searcher location.

- searchers: the 943 users with age, gender and occupation as optional columns. Location from the zip code:
  ``city`` = its first three characters (a US sectional centre, ``zip3:852``, or a Canadian forward sortation
  area, ``ca:T8H``), ``region`` = its first character (a US national area ``zip1:8`` or a Canadian province
  letter ``ca:T``), ``country`` = US or CA. Joined at their first rating.
- documents: the 1,682 movies: title, genres as body (joined by ", ") and as tags, ``created_at`` = release
  date (the first rating when the date is missing), ``last_active_at`` = last training rating. Eighteen titles
  appear under two ids; both ids are kept, as the ratings use both.
- memberships: every rating (``weight`` = the rating, ``created_at`` = its time), with an extra ``split``
  column (train for ``ua.base``, test for ``ua.test``) so feature code can leave test ratings out: the ua
  split is random (10 ratings per user), not by time, so a point-in-time join alone does not hide them.
- sessions: ratings >= ``min_positive_rating`` (default 4), one per rating: empty query, clicked = the movie,
  at the rating's time, split train (``ua.base``) / test (``ua.test``). No impressions are logged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ingest.contract import CanonicalDataset, DatasetManifest, empty_table
from ingest.datasets.common import (
    click_sessions,
    from_epoch,
    params_of,
    progress,
    read_source_csv,
    require_files,
    to_int,
)

SOURCE = "movielens"
SUBDIR = "movielens_100k"
SPLIT_FILES = {"train": "ua.base", "test": "ua.test"}
FILES = ["u.user", "u.item", "u.genre", *SPLIT_FILES.values()]
_US_ZIP = re.compile(r"^\d{5}$")
_CA_POSTAL = re.compile(r"^[A-Z]\d[A-Z]")


@dataclass(frozen=True)
class MovielensConfig:
    min_positive_rating: int = 4  # ratings at or above this are sessions (positives)

    def __post_init__(self) -> None:
        if not 1 <= self.min_positive_rating <= 5:
            raise ValueError(f"min_positive_rating must be in [1, 5], got {self.min_positive_rating}")


def zip_location(zip_code: str) -> tuple[str | None, str | None, str | None]:
    """(city, region, country) of a zip or postal code; unknown formats give (None, None, None)."""
    z = str(zip_code).strip().upper()
    if _US_ZIP.match(z):
        return f"zip3:{z[:3]}", f"zip1:{z[0]}", "US"
    if _CA_POSTAL.match(z):
        return f"ca:{z[:3]}", f"ca:{z[0]}", "CA"
    return None, None, None


def _ratings(path: Path, split: str) -> pd.DataFrame:
    df = read_source_csv(path, sep="\t", header=None, names=["user", "item", "rating", "t"], dtype=str)
    df["rating"] = to_int(df, "rating", path)
    df["ts"] = from_epoch(to_int(df, "t", path), "s")
    return df.assign(split=split)


def load(datasets_dir: Path, config: MovielensConfig | None = None) -> CanonicalDataset:
    """Read MovieLens 100k under ``datasets_dir`` and return the canonical tables (ua split)."""
    cfg = config or MovielensConfig()
    paths = require_files(SOURCE, datasets_dir, SUBDIR, FILES)
    steps = ["read files", "documents", "searchers", "sessions and memberships"]
    with progress(SOURCE, steps) as bar:
        users = read_source_csv(
            paths["u.user"], sep="|", header=None, names=["id", "age", "gender", "occupation", "zip"], dtype=str
        )
        genres = read_source_csv(paths["u.genre"], sep="|", header=None, names=["name", "idx"], dtype=str)
        genres = genres.dropna().sort_values("idx", key=lambda s: s.astype(int))["name"].tolist()
        item_cols = ["id", "title", "release", "video_release", "url", *genres]
        items = read_source_csv(
            paths["u.item"], sep="|", header=None, names=item_cols, dtype=str, encoding="latin-1",
            keep_default_na=False,
        )
        ratings = pd.concat([_ratings(paths[f], s) for s, f in SPLIT_FILES.items()], ignore_index=True)
        bar.done()

        flags = items[genres].astype("int64").to_numpy().astype(bool)
        item_genres = [[g for g, on in zip(genres, row) if on] for row in flags]
        release = pd.to_datetime(items["release"].replace("", None), format="%d-%b-%Y", utc=True)
        first_rating = ratings.groupby("item")["ts"].min()
        train = ratings[ratings["split"] == "train"]
        documents = pd.DataFrame(
            {
                "doc_id": items["id"],
                "doc_type": "movie",
                "title": items["title"],
                "body": [", ".join(g) for g in item_genres],
                "city": None,
                "region": None,
                "country": None,
                "created_at": release.fillna(items["id"].map(first_rating)),
                "last_active_at": items["id"].map(train.groupby("item")["ts"].max()),
                "tags": item_genres,
            }
        )
        bar.done()

        loc = [zip_location(z) for z in users["zip"]]
        searchers = pd.DataFrame(
            {
                "searcher_id": users["id"],
                "city": [c for c, _, _ in loc],
                "region": [r for _, r, _ in loc],
                "country": [k for _, _, k in loc],
                "language": None,
                "created_at": users["id"].map(ratings.groupby("user")["ts"].min()),
                "age": users["age"].astype("int64"),
                "gender": users["gender"],
                "occupation": users["occupation"],
                "zip_code": users["zip"],
            }
        )
        bar.done()

        positives = ratings[ratings["rating"] >= cfg.min_positive_rating]
        sessions = click_sessions(positives["user"], positives["item"], positives["item"], positives["ts"],
                                  positives["split"])
        memberships = pd.DataFrame(
            {
                "searcher_id": ratings["user"],
                "doc_id": ratings["item"],
                "created_at": ratings["ts"],
                "weight": ratings["rating"].astype("float64"),
                "split": ratings["split"],
            }
        )
        bar.done()

    params = params_of(
        cfg,
        split_files=SPLIT_FILES,
        ratings_per_split=ratings["split"].value_counts().to_dict(),
        sessions_per_split=sessions["split"].value_counts().to_dict(),
        movies_without_release_date=int(release.isna().sum()),
        users_without_location=int(searchers["country"].isna().sum()),
    )
    notes = (
        f"MovieLens 100k, ua split (ua.base -> train, ua.test -> test; random 10 ratings per user, not by "
        f"time). Sessions = ratings >= {cfg.min_positive_rating} with empty query. Memberships = all ratings "
        f"(weight = rating) with a split column: leave split == 'test' out of features. Location from zip "
        f"prefixes. No impressions are logged."
    )
    return CanonicalDataset(
        searchers=searchers,
        documents=documents,
        friendships=empty_table("friendships"),
        memberships=memberships,
        sessions=sessions,
        manifest=DatasetManifest(source=SOURCE, params=params, notes=notes),
    )
