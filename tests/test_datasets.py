"""The real dataset adapters: row counts against the datasets' README and against counts recomputed here from
the raw files (with the csv module, independently of the adapters' pandas code), contract validity, splits,
and the errors for a missing dataset. Skipped only when the datasets directory is absent."""

from __future__ import annotations

import csv
import math
import re
from collections import Counter
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path

import pandas as pd
import pytest

from infra.settings import get_settings
from ingest.contract import read_dataset, validate_dataset, write_dataset
from ingest.datasets import ADAPTERS, SUBDIRS, DatasetNotFoundError, load_source

NAMES = ["lastfm", "meetup_montana", "meetup_chicago", "movielens", "scifact"]


# --------------------------------------------------------------------------- fixtures and raw-file helpers


@pytest.fixture(scope="module")
def datasets_dir() -> Path:
    d = get_settings().datasets_dir
    if not d.is_dir():
        pytest.skip(f"real datasets not available: {d} does not exist (set EBR_DATASETS_DIR)")
    return d


@pytest.fixture(scope="module")
def source(datasets_dir):
    """Load each source once per module."""
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = load_source(name, datasets_dir)
        return cache[name]

    return get


def raw_rows(path: Path, delimiter: str = ",", encoding: str = "utf-8", header: bool = True) -> list:
    with open(path, newline="", encoding=encoding) as f:
        if header:
            return list(csv.DictReader(f, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL))
        return list(csv.reader(f, delimiter=delimiter))


def tsv_rows(path: Path, encoding: str = "utf-8") -> list[dict]:
    with open(path, encoding=encoding) as f:
        head = f.readline().rstrip("\n").split("\t")
        return [dict(zip(head, line.rstrip("\n").split("\t"))) for line in f if line.strip()]


def readme_figure(datasets_dir: Path, folder: str, label: str) -> int:
    """A figure from the datasets README's table row of ``folder``, e.g. '1,892 users' -> 1892."""
    text = (datasets_dir / "README.md").read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith(f"| `{folder}")) if folder else text
    m = re.search(r"([\d,]+)\s+" + label.replace(" ", r"\s+"), row)  # the README wraps long lines
    assert m, f"README has no figure '{label}' for {folder or 'the quirks'}"
    return int(m.group(1).replace(",", ""))


def split_order(sessions: pd.DataFrame, order: list[str]) -> None:
    """Every session of a later split is strictly newer than every session of an earlier one."""
    for early, late in zip(order, order[1:]):
        a, b = sessions[sessions["split"] == early], sessions[sessions["split"] == late]
        assert len(a) and len(b), f"empty split among {order}"
        assert a["ts"].max() < b["ts"].min(), f"{early} sessions reach past the first {late} session"


# --------------------------------------------------------------------------- registry and errors


def test_registry_names_and_unknown_source():
    assert sorted(ADAPTERS) == sorted(NAMES)
    with pytest.raises(ValueError, match="allowed") as exc:
        load_source("netflix", Path("."))
    for name in NAMES:
        assert name in str(exc.value)


@pytest.mark.parametrize("name", NAMES)
def test_missing_dataset_dir_names_path_and_setting(name, tmp_path):
    with pytest.raises(DatasetNotFoundError) as exc:
        load_source(name, tmp_path / "nowhere")
    assert isinstance(exc.value, FileNotFoundError)
    assert str(tmp_path / "nowhere" / SUBDIRS[name]) in str(exc.value)
    assert "EBR_DATASETS_DIR" in str(exc.value)


@pytest.mark.parametrize("name", NAMES)
def test_missing_file_names_the_file(name, tmp_path):
    (tmp_path / SUBDIRS[name]).mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError) as exc:
        load_source(name, tmp_path)
    missing = Path(exc.value.path)
    assert missing.parent.is_relative_to(tmp_path / SUBDIRS[name]) and not missing.exists()
    assert str(missing) in str(exc.value)


def test_default_dir_comes_from_the_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("EBR_DATASETS_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(DatasetNotFoundError, match=re.escape(str(tmp_path / "elsewhere" / "movielens_100k"))):
        load_source("movielens")


@pytest.mark.parametrize("name", NAMES)
def test_tables_validate_and_manifest_explains(source, name):
    ds = source(name)
    valid = validate_dataset(ds.tables())
    assert set(valid) >= {"searchers", "documents", "friendships", "memberships", "sessions"}
    assert ds.manifest.source == name and ds.manifest.notes
    assert set(ds.sessions["split"]) <= {"train", "valid", "test"}
    assert {"train", "test"} <= set(ds.sessions["split"])
    assert (ds.sessions["clicked"].map(len) > 0).all()


def test_progress_bar_has_a_description(datasets_dir, capsys):
    load_source("scifact", datasets_dir)
    assert "ingest scifact" in capsys.readouterr().err


def test_nothing_is_written_into_the_datasets_dir(datasets_dir, tmp_path):
    def snapshot():
        return {
            (p, p.stat().st_size, p.stat().st_mtime_ns) for p in datasets_dir.rglob("*")
        }

    before = snapshot()
    ds = load_source("meetup_montana", datasets_dir)
    write_dataset(ds, tmp_path / "montana")
    assert snapshot() == before
    back = read_dataset(tmp_path / "montana")
    assert back.manifest.params["test_from"] == ds.manifest.params["test_from"]
    assert back.row_counts() == ds.row_counts()


# --------------------------------------------------------------------------- Last.fm


@pytest.fixture(scope="module")
def lastfm_raw(datasets_dir):
    d = datasets_dir / "lastfm_hetrec2011"
    artists = {r["id"] for r in tsv_rows(d / "artists.dat")}
    tags = {r["tagID"]: r["tagValue"] for r in tsv_rows(d / "tags.dat", encoding="latin-1")}
    tagged = tsv_rows(d / "user_taggedartists.dat")
    return {"dir": d, "artists": artists, "tags": tags, "tagged": tagged}


def test_lastfm_counts_match_readme(source, datasets_dir):
    ds = source("lastfm")
    fig = lambda label: readme_figure(datasets_dir, "lastfm_hetrec2011", label)  # noqa: E731
    assert len(ds.searchers) == fig("users")
    assert len(ds.documents) == fig("artists with names")
    assert len(ds.memberships) == 0  # play counts are undated: left out by default (they leak the future)
    # The published friend file already lists both directions: symmetric handling adds nothing.
    assert len(ds.friendships) == fig(r"directed pairs")
    assert ds.manifest.params["dropped_taggings_unknown_artist"] == readme_figure(
        datasets_dir, "", "tagging rows point to artists absent"
    )
    assert ds.manifest.params["taggings_read"] == fig(r"\(user, artist, tag\) rows")


def test_lastfm_friendships_symmetric(source, lastfm_raw):
    f = source("lastfm").friendships
    pairs = set(zip(f["searcher_id"], f["friend_id"]))
    assert all((b, a) in pairs for a, b in pairs)
    raw = {(r["userID"], r["friendID"]) for r in tsv_rows(lastfm_raw["dir"] / "user_friends.dat")}
    assert pairs == raw | {(b, a) for a, b in raw}


def test_lastfm_sessions_recomputed_from_raw(source, lastfm_raw):
    ds = source("lastfm")
    min_year = ds.manifest.params["min_year"]
    kept = [
        r for r in lastfm_raw["tagged"] if r["artistID"] in lastfm_raw["artists"] and int(r["year"]) >= min_year
    ]
    early = sum(r["artistID"] in lastfm_raw["artists"] and int(r["year"]) < min_year for r in lastfm_raw["tagged"])
    assert early == ds.manifest.params["dropped_taggings_before_min_year"] > 0
    groups: dict[tuple, set] = {}
    for r in kept:
        groups.setdefault((r["userID"], r["tagID"], r["year"], r["month"], r["day"]), set()).add(r["artistID"])
    s = ds.sessions
    assert len(s) == len(groups)
    assert s["clicked"].map(len).sum() == len(kept)
    # the queries are the latin-1 tag strings (some are not ASCII)
    expected = {f"{u}:{t}:{int(y) * 10000 + int(m) * 100 + int(d)}": (lastfm_raw["tags"][t], a)
                for (u, t, y, m, d), a in groups.items()}
    got = dict(zip(s["session_id"], zip(s["query"], s["clicked"].map(set))))
    assert got == expected
    assert any(not q.isascii() for q in s["query"])


def test_lastfm_split_holds_out_newest_months(source, lastfm_raw):
    ds = source("lastfm")
    p = ds.manifest.params
    months = sorted({
        f"{int(r['year']):04d}-{int(r['month']):02d}" for r in lastfm_raw["tagged"]
        if r["artistID"] in lastfm_raw["artists"] and int(r["year"]) >= p["min_year"]
    })
    assert p["test_month_list"] == months[-p["test_months"]:]
    assert p["valid_month_list"] == months[-p["test_months"] - p["valid_months"]: -p["test_months"]]
    split_order(ds.sessions, ["train", "valid", "test"])
    test_months = set(ds.sessions.loc[ds.sessions["split"] == "test", "ts"].dt.strftime("%Y-%m"))
    assert test_months == set(p["test_month_list"])


def test_lastfm_artist_bodies_use_training_taggings_only(source, lastfm_raw):
    ds = source("lastfm")
    held_out = set(ds.manifest.params["valid_month_list"]) | set(ds.manifest.params["test_month_list"])
    train_pairs = {
        (r["artistID"], lastfm_raw["tags"][r["tagID"]]) for r in lastfm_raw["tagged"]
        if f"{int(r['year']):04d}-{int(r['month']):02d}" not in held_out
    }
    docs = ds.documents.explode("tags").dropna(subset=["tags"])
    assert len(docs) > 0
    assert set(zip(docs["doc_id"], docs["tags"])) <= train_pairs
    assert (ds.documents["tags"].map(len) <= ds.manifest.params["body_top_tags"]).all()


def test_lastfm_play_counts_only_on_request(source, lastfm_raw, datasets_dir):
    from ingest.datasets.lastfm import LastfmConfig, load

    m = load(datasets_dir, LastfmConfig(undated_memberships=True)).memberships
    assert len(m) == readme_figure(datasets_dir, "lastfm_hetrec2011", "user-artist play counts")
    raw = {(r["userID"], r["artistID"]): float(r["weight"]) for r in tsv_rows(lastfm_raw["dir"] / "user_artists.dat")}
    assert dict(zip(zip(m["searcher_id"], m["doc_id"]), m["weight"])) == raw
    assert m["created_at"].nunique() == 1 and m["created_at"].iloc[0] < source("lastfm").sessions["ts"].min()


# --------------------------------------------------------------------------- Meetup Montana


@pytest.fixture(scope="module")
def montana_raw(datasets_dir):
    d = datasets_dir / "meetup" / "montana_bigskydevcon"
    return {n: raw_rows(d / f"{n}.csv") for n in ("groups", "events", "members", "rsvps", "venues")}


def test_montana_counts(source, datasets_dir, montana_raw):
    ds = source("meetup_montana")
    fig = lambda label: readme_figure(datasets_dir, "meetup/montana_bigskydevcon", label)  # noqa: E731
    docs = ds.documents
    assert (docs["doc_type"] == "group").sum() == fig("groups") == len(montana_raw["groups"])
    assert ds.manifest.params["event_rows_read"] == fig("events") == len(montana_raw["events"])
    distinct_events = {r["id"] for r in montana_raw["events"]}
    assert (docs["doc_type"] == "event").sum() == len(distinct_events) < fig("events")
    yes = [r for r in montana_raw["rsvps"] if r["response"] == "yes"]
    assert len(ds.sessions) == len(yes)
    assert len(ds.sessions) + ds.manifest.params["rsvps_not_yes"] == fig("RSVPs")
    assert len(ds.memberships) == fig("member-group joins") + len(yes)
    members = {r["id"] for r in montana_raw["members"]} | {r["member_id"] for r in montana_raw["rsvps"]}
    assert set(ds.searchers["searcher_id"]) == members


def test_montana_split_and_home_city(source):
    ds = source("meetup_montana")
    s = ds.sessions
    split_order(s, ["train", "valid", "test"])
    for name, frac in (("test", ds.manifest.params["test_fraction"]), ("valid", ds.manifest.params["valid_fraction"])):
        assert abs((s["split"] == name).mean() - frac) < 0.05
    # Home city = most frequent venue city of the member's training yes-RSVPs (checked where there is no tie).
    city = ds.documents.set_index("doc_id")["city"]
    train = s[s["split"] == "train"]
    per_member = train.assign(city=train["clicked"].str[0].map(city)).dropna(subset=["city"])
    home = ds.searchers.set_index("searcher_id")["city"]
    checked = 0
    for member, cities in per_member.groupby("searcher_id")["city"]:
        top = Counter(cities).most_common(2)
        if len(top) == 1 or top[0][1] > top[1][1]:
            assert home[member] == top[0][0]
            checked += 1
    assert checked > 100
    never = set(ds.searchers["searcher_id"]) - set(per_member["searcher_id"])
    assert home[list(never)].isna().all()


def test_montana_documents_text_and_location(source, montana_raw):
    docs = source("meetup_montana").documents.set_index("doc_id")
    ev = next(r for r in montana_raw["events"] if "<p>" in r["description"])
    body = docs.loc[f"event:{ev['id']}", "body"]
    assert "<p>" not in body and len(body) > 0 and docs.loc[f"event:{ev['id']}", "title"] == ev["name"]
    venues = {r["id"]: r for r in montana_raw["venues"]}
    located = [r for r in montana_raw["events"] if r["venue_id"] and float(venues[r["venue_id"]]["lat"]) != 0]
    for r in located[:50]:
        d = docs.loc[f"event:{r['id']}"]
        assert math.isclose(d["lat"], float(venues[r["venue_id"]]["lat"]), abs_tol=0.01)
        assert d["city"] and d["country"] == "US"


# --------------------------------------------------------------------------- Meetup Chicago


@pytest.fixture(scope="module")
def chicago_raw(datasets_dir):
    d = datasets_dir / "meetup" / "acda_chicago_dc_sfo"
    files = {"train": "train", "valid": "cv", "test": "test"}
    return {
        "splits": {s: raw_rows(d / f"rsvp_chicago_{f}.csv") for s, f in files.items()},
        "full": raw_rows(d / "rsvp_chicago.csv"),
        "user_group": raw_rows(d / "user_group_chicago.csv"),
    }


def test_chicago_sessions_follow_the_given_split(source, chicago_raw):
    ds = source("meetup_chicago")
    positive = set(ds.manifest.params["positive_responses"])
    s = ds.sessions
    for split, rows in chicago_raw["splits"].items():
        want = {f"{r['memberId']}:{r['eventId']}" for r in rows if r["rsvpResponse"] in positive}
        assert set(s.loc[s["split"] == split, "session_id"]) == want
    # the three split files hold exactly the RSVPs of the full file
    full = {f"{r['memberId']}:{r['eventId']}" for r in chicago_raw["full"] if r["rsvpResponse"] in positive}
    assert set(s["session_id"]) == full
    assert ds.manifest.params["rsvps_not_positive"] == sum(r["rsvpResponse"] not in positive for r in chicago_raw["full"])


def test_chicago_tables(source, chicago_raw, datasets_dir):
    ds = source("meetup_chicago")
    rows = [r for rs in chicago_raw["splits"].values() for r in rs]
    events = {r["eventId"] for r in rows}
    groups = {r["groupId"] for r in rows} | {r["groupId"] for r in chicago_raw["user_group"]}
    docs = ds.documents
    assert set(docs.loc[docs["doc_type"] == "event", "doc_id"]) == {f"event:{e}" for e in events}
    assert set(docs.loc[docs["doc_type"] == "group", "doc_id"]) == {f"group:{g}" for g in groups}
    no_venue = {r["eventId"] for r in rows if float(r["venueLat"]) == 0 and float(r["venueLon"]) == 0}
    ev = docs[docs["doc_type"] == "event"]
    assert set(ev.loc[ev["city"].isna(), "doc_id"]) == {f"event:{e}" for e in no_venue}
    members = {r["memberId"] for r in rows} | {r["userId"] for r in chicago_raw["user_group"]}
    assert set(ds.searchers["searcher_id"]) == members
    joins = {(r["userId"], r["groupId"]) for r in chicago_raw["user_group"]}
    kinds = ds.memberships["kind"].value_counts()
    assert "join" not in kinds  # undated group joins leak the future: only on request
    assert kinds["rsvp"] == (ds.sessions["split"] == "train").sum()
    from ingest.datasets.meetup_chicago import ChicagoConfig, load

    kinds = load(datasets_dir, ChicagoConfig(undated_memberships=True)).memberships["kind"].value_counts()
    assert kinds["join"] == len(joins)


def test_chicago_member_cells(source, chicago_raw):
    cell = Decimal(str(source("meetup_chicago").manifest.params["cell_deg"]))
    searchers = source("meetup_chicago").searchers.set_index("searcher_id")

    def corner(v: str) -> str:
        return str((Decimal(v) / cell).to_integral_value(ROUND_FLOOR) * cell)

    seen = {}
    for r in chicago_raw["splits"]["train"]:
        seen.setdefault(r["memberId"], f"cell{cell}:{corner(r['memberLat'])}:{corner(r['memberLon'])}")
    got = searchers.loc[list(seen), "city"]
    assert (got == pd.Series(seen)).all()
    assert searchers.loc[list(seen)[:200], "country"].notna().all()


# --------------------------------------------------------------------------- MovieLens


@pytest.fixture(scope="module")
def movielens_raw(datasets_dir):
    d = datasets_dir / "movielens_100k"
    read = lambda n: [line.split("\t") for line in (d / n).read_text().splitlines() if line]  # noqa: E731
    info = dict(reversed(line.split(" ", 1)) for line in (d / "u.info").read_text().splitlines() if line)
    return {"base": read("ua.base"), "test": read("ua.test"), "info": {k: int(v) for k, v in info.items()},
            "users": raw_rows(d / "u.user", delimiter="|", header=False)}


def test_movielens_counts(source, datasets_dir, movielens_raw):
    ds = source("movielens")
    fig = lambda label: readme_figure(datasets_dir, "movielens_100k", label)  # noqa: E731
    assert len(ds.searchers) == fig("users") == movielens_raw["info"]["users"]
    assert len(ds.documents) == fig("movies") == movielens_raw["info"]["items"]
    assert len(ds.memberships) == fig("ratings") == movielens_raw["info"]["ratings"]
    assert ds.documents["title"].duplicated().sum() == readme_figure(datasets_dir, "", "titles appear under two ids")
    # ua.test holds exactly 10 ratings per user (MovieLens README)
    assert (ds.memberships["split"] == "test").sum() == 10 * len(ds.searchers) == len(movielens_raw["test"])


def test_movielens_test_sessions_are_ua_test_positives(source, movielens_raw):
    ds = source("movielens")
    s = ds.sessions
    for split, key in (("test", "test"), ("train", "base")):
        want = {f"{u}:{i}" for u, i, r, _ in movielens_raw[key] if int(r) >= 4}
        assert set(s.loc[s["split"] == split, "session_id"]) == want
    assert (s["query"] == "").all()
    w = ds.memberships.set_index(["searcher_id", "doc_id"])["weight"]
    u, i, r, _ = movielens_raw["test"][0]
    assert w[(u, i)] == float(r)


def test_movielens_locations(source, movielens_raw):
    s = source("movielens").searchers.set_index("searcher_id")
    for uid, age, gender, occupation, zip_code in movielens_raw["users"]:
        row = s.loc[uid]
        assert row["age"] == int(age) and row["gender"] == gender and row["occupation"] == occupation
        if zip_code.isdigit() and len(zip_code) == 5:
            assert (row["city"], row["region"], row["country"]) == (f"zip3:{zip_code[:3]}", f"zip1:{zip_code[0]}", "US")
    canadian = sum(bool(re.match(r"^[A-Z]\d[A-Z]", z)) for *_, z in movielens_raw["users"])
    assert (s["country"] == "CA").sum() == canadian > 0


# --------------------------------------------------------------------------- SciFact


def test_scifact_counts_and_labels(source, datasets_dir):
    ds = source("scifact")
    folder = "beir_scifact"
    assert len(ds.documents) == readme_figure(datasets_dir, folder, "abstracts")
    split = ds.sessions["split"].value_counts()
    text = (datasets_dir / "README.md").read_text()
    m = re.search(r"qrels train \(([\d,]+) pairs / ([\d,]+) queries\) and test \(([\d,]+) pairs / ([\d,]+) queries\)", text)
    train_pairs, train_q, test_pairs, test_q = (int(x.replace(",", "")) for x in m.groups())
    assert (split["train"], split["test"]) == (train_q, test_q)
    assert ds.qrels["split"].value_counts().to_dict() == {"train": train_pairs, "test": test_pairs}
    assert len(ds.sessions) + ds.manifest.params["queries_without_qrels_dropped"] == readme_figure(
        datasets_dir, folder, "claims as queries"
    )
    # a searcher of its own per claim: nobody's history carries over from one claim to another
    assert ds.sessions["searcher_id"].is_unique
    assert set(ds.searchers["searcher_id"]) == set(ds.sessions["searcher_id"])
    qrels = tsv_rows(datasets_dir / folder / "qrels" / "test.tsv")
    want: dict[str, set] = {}
    for r in qrels:
        want.setdefault(r["query-id"], set()).add(r["corpus-id"])
    test = ds.sessions[ds.sessions["split"] == "test"]
    assert dict(zip(test["session_id"], test["clicked"].map(set))) == want


def test_scifact_written_with_qrels(source, tmp_path):
    ds = source("scifact")
    write_dataset(ds, tmp_path / "scifact")
    back = read_dataset(tmp_path / "scifact")
    assert back.qrels is not None and len(back.qrels) == len(ds.qrels)
    assert back.manifest.params["queries_without_qrels_dropped"] == 0


def test_adapters_are_deterministic(datasets_dir, source):
    again = load_source("meetup_montana", datasets_dir)
    first = source("meetup_montana")
    pd.testing.assert_frame_equal(again.sessions, first.sessions)
    pd.testing.assert_frame_equal(again.searchers, first.searchers)
