"""Helpers shared by the dataset adapters: locating input files, time, text and location handling.

The real datasets are read-only inputs under the ``datasets_dir`` setting (``EBR_DATASETS_DIR``); adapters only
read them and return canonical tables in memory.
"""

from __future__ import annotations

import html
import re
import warnings
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

DATASETS_DIR_SETTING = "EBR_DATASETS_DIR"


class DatasetNotFoundError(FileNotFoundError):
    """A real dataset's directory or one of its files is missing."""

    def __init__(self, source: str, path: Path, datasets_dir: Path):
        self.source, self.path, self.datasets_dir = source, Path(path), Path(datasets_dir)
        super().__init__(
            f"{source}: expected {self.path} but it does not exist. The datasets directory is "
            f"{self.datasets_dir}; set {DATASETS_DIR_SETTING} to the directory that holds the real datasets."
        )


class SourceFileError(ValueError):
    """A raw file of a source that its adapter cannot read: names the file and, where known, the line."""


def read_source_csv(path: Path, **kwargs: Any) -> pd.DataFrame:
    """``pd.read_csv`` whose failures name the file (and the line, for a malformed row or bad bytes)."""
    try:
        return pd.read_csv(path, **kwargs)
    except pd.errors.ParserError as e:
        m = re.search(r"line (\d+)", str(e))
        where = f"{path}: line {m.group(1)}" if m else str(path)
        raise SourceFileError(f"{where}: malformed row ({str(e).splitlines()[-1].strip()})") from None
    except UnicodeDecodeError as e:
        with open(path, "rb") as f:
            line = f.read(e.start).count(b"\n") + 1
        raise SourceFileError(f"{path}: line {line}: not {e.encoding} text ({e.reason})") from None
    except (ValueError, TypeError) as e:
        raise SourceFileError(f"{path}: {e}") from None


def to_int(df: pd.DataFrame, column: str, path: Path, header_lines: int = 0) -> pd.Series:
    """``df[column]`` as int64, or a SourceFileError naming the file, line and value of the first bad row
    (rows are in file order, after ``header_lines``)."""
    values = pd.to_numeric(df[column], errors="coerce")
    bad = values.isna() | (values != values.round())
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise SourceFileError(f"{path}: line {i + 1 + header_lines}: {column} {df[column].iloc[i]!r} is not an "
                              "integer")
    return values.astype("int64")


def require_files(source: str, datasets_dir: Path, subdir: str, names: list[str]) -> dict[str, Path]:
    """Paths of a dataset's input files, checked up front so nothing is half-read when one is missing."""
    datasets_dir = Path(datasets_dir)
    root = datasets_dir / subdir
    if not root.is_dir():
        raise DatasetNotFoundError(source, root, datasets_dir)
    paths = {}
    for name in names:
        p = root / name
        if not p.is_file():
            raise DatasetNotFoundError(source, p, datasets_dir)
        paths[name] = p
    return paths


@contextmanager
def progress(source: str, steps: list[str]) -> Iterator["StepBar"]:
    """A progress bar over an adapter's named steps (reading files, building tables)."""
    bar = tqdm(total=len(steps), desc=f"ingest {source}", unit="step", leave=False)
    try:
        yield StepBar(bar, steps)
    finally:
        bar.close()


class StepBar:
    def __init__(self, bar: tqdm, steps: list[str]):
        self._bar, self._steps, self._i = bar, steps, 0
        bar.set_postfix_str(steps[0] if steps else "")

    def done(self) -> None:
        """Mark the current step done and show the next one."""
        self._i += 1
        self._bar.update(1)
        if self._i < len(self._steps):
            self._bar.set_postfix_str(self._steps[self._i])


# --------------------------------------------------------------------------- time


def utc(value: str | datetime) -> pd.Timestamp:
    """A tz-aware UTC timestamp from an ISO string or datetime (naive values are taken as UTC)."""
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def from_epoch(values: pd.Series, unit: str) -> pd.Series:
    return pd.to_datetime(values.astype("int64"), unit=unit, utc=True)


def split_by_time(ts: pd.Series, valid_from: pd.Timestamp | None, test_from: pd.Timestamp) -> pd.Series:
    """train before ``valid_from``, valid in [valid_from, test_from), test from ``test_from`` on."""
    out = pd.Series("train", index=ts.index, dtype=object)
    if valid_from is not None:
        out[ts >= valid_from] = "valid"
    out[ts >= test_from] = "test"
    return out


def quantile_cut(ts: pd.Series, fraction: float) -> pd.Timestamp:
    """The day boundary after which about ``fraction`` of the timestamps lie (held out as newest)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"a held-out fraction must be in (0, 1), got {fraction}")
    q = ts.sort_values().iloc[int(np.floor((1.0 - fraction) * (len(ts) - 1)))]
    return q.floor("D")


def lists_by_group(df: pd.DataFrame, keys: list[str], value: str) -> pd.DataFrame:
    """One row per group of ``keys`` (first row's columns) with ``value`` gathered into a list, in row order.

    ``df`` must already be sorted so that each group's rows are contiguous. Much faster than
    ``groupby(...).agg(list)``, which builds one pandas object per group.
    """
    if df.empty:
        return df.iloc[:0].assign(**{value: pd.Series([], dtype=object)})
    change = np.zeros(len(df), dtype=bool)
    change[0] = True
    for key in keys:
        codes = pd.factorize(df[key])[0]  # integer codes: fast to compare for any dtype
        change[1:] |= codes[1:] != codes[:-1]
    starts = np.flatnonzero(change)
    values = df[value].to_numpy()
    out = df.iloc[starts].copy()
    out[value] = [a.tolist() for a in np.split(values, starts[1:])]
    return out.reset_index(drop=True)


# --------------------------------------------------------------------------- text


_TAG = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")


def html_to_text(value: Any) -> str:
    """Plain text of an HTML fragment (Meetup descriptions): tags removed, entities decoded."""
    if not isinstance(value, str):
        return ""
    return _SPACE.sub(" ", html.unescape(_TAG.sub(" ", value))).strip()


# --------------------------------------------------------------------------- location


def valid_coords(lat: pd.Series, lon: pd.Series) -> pd.Series:
    """True where a coordinate pair is usable: present, in range, and not the (0, 0) placeholder."""
    lat, lon = lat.astype("float64"), lon.astype("float64")
    ok = lat.notna() & lon.notna() & lat.between(-90, 90) & lon.between(-180, 180)
    return ok & ~((lat == 0) & (lon == 0))


def grid_cell(lat: pd.Series, lon: pd.Series, cell_deg: float) -> pd.Series:
    """Id of the ``cell_deg`` grid cell holding each point, named by its south-west corner; None if unusable."""
    ok = valid_coords(lat, lon)
    # The small epsilon keeps values already on a grid line (41.9 stored as 41.8999...) in their own cell.
    i = np.floor(lat.astype("float64") / cell_deg + 1e-9)
    j = np.floor(lon.astype("float64") / cell_deg + 1e-9)
    digits = max(0, -int(np.floor(np.log10(cell_deg))))
    ids = [
        f"cell{cell_deg:g}:{a * cell_deg:.{digits}f}:{b * cell_deg:.{digits}f}" if good else None
        for a, b, good in zip(i, j, ok)
    ]
    return pd.Series(ids, index=lat.index, dtype=object)


@lru_cache(maxsize=1)
def _geocoder():
    import reverse_geocoder  # loaded on first use: it reads its bundled city table (about 1 s)

    with warnings.catch_warnings():  # the library leaves its bundled csv open while reading it
        warnings.simplefilter("ignore", ResourceWarning)
        return reverse_geocoder.RGeocoder(mode=1, verbose=False)


def admin_regions(lat: pd.Series, lon: pd.Series) -> pd.DataFrame:
    """Nearest populated place's admin region (admin1 name) and ISO country code, offline.

    Unusable coordinates give None in both columns.
    """
    ok = valid_coords(lat, lon).to_numpy()
    region = np.full(len(lat), None, dtype=object)
    country = np.full(len(lat), None, dtype=object)
    if ok.any():
        pts = np.column_stack([lat.to_numpy(dtype="float64")[ok], lon.to_numpy(dtype="float64")[ok]])
        uniq, inverse = np.unique(pts, axis=0, return_inverse=True)
        found = _geocoder().query([tuple(p) for p in uniq])
        region[ok] = np.array([found[k]["admin1"] or None for k in inverse.ravel()], dtype=object)
        country[ok] = np.array([found[k]["cc"] or None for k in inverse.ravel()], dtype=object)
    return pd.DataFrame({"region": region, "country": country}, index=lat.index)


def nearest_place_names(lat: pd.Series, lon: pd.Series) -> list[str]:
    """Name of the nearest populated place for each (usable) coordinate pair, offline."""
    return [f["name"] for f in _geocoder().query(list(zip(lat.astype(float), lon.astype(float))))]


def most_frequent(df: pd.DataFrame, key: str, value: str) -> pd.Series:
    """Per ``key``, the most frequent non-null ``value`` (ties go to the smallest value, for determinism)."""
    d = df[[key, value]].dropna()
    counts = d.groupby([key, value]).size().rename("n").reset_index()
    counts = counts.sort_values([key, "n", value], ascending=[True, False, True])
    return counts.drop_duplicates(key).set_index(key)[value]


def dominant_place(df: pd.DataFrame, key: str) -> pd.DataFrame:
    """Per ``key``, the most frequent ``city`` among its rows, with that city's region, country and median
    coordinates (rows need columns city, region, country, lat, lon; null cities are ignored)."""
    city = most_frequent(df, key, "city")
    in_city = df[df["city"].notna() & (df["city"] == df[key].map(city))]
    out = pd.DataFrame({"city": city})
    out["region"] = most_frequent(in_city, key, "region")
    out["country"] = most_frequent(in_city, key, "country")
    located = in_city[valid_coords(in_city["lat"], in_city["lon"])]
    return out.join(located.groupby(key)[["lat", "lon"]].median())


# --------------------------------------------------------------------------- manifest


def click_sessions(searcher_id: pd.Series, item_id: pd.Series, doc_id: pd.Series, ts: pd.Series,
                   split: pd.Series) -> pd.DataFrame:
    """Recommendation sessions of sources that log only positives: no query, no impressions, one click each
    (session id ``<searcher>:<item>``), in time order."""
    return pd.DataFrame(
        {
            "session_id": searcher_id + ":" + item_id,
            "searcher_id": searcher_id,
            "ts": ts,
            "query": "",
            "impressed": [[] for _ in range(len(searcher_id))],
            "clicked": [[d] for d in doc_id],
            "split": split,
        }
    ).sort_values(["ts", "session_id"]).reset_index(drop=True)


def params_of(config: Any, **extra: Any) -> dict[str, Any]:
    """Manifest parameters: the adapter's config plus what the run derived (cuts, drop counts)."""
    base = asdict(config) if is_dataclass(config) and not isinstance(config, type) else dict(config)
    return {k: _jsonable(v) for k, v in {**base, **extra}.items()}


def _jsonable(v: Any) -> Any:
    if isinstance(v, (pd.Timestamp, datetime)):
        return pd.Timestamp(v).isoformat()
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return v
