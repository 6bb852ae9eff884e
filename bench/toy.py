"""A small synthetic retrieval task where location decides between same-named documents.

Every name ("chess club", ...) exists once per city; a searcher types the name and clicks the document of
their own city. Text alone cannot tell the copies apart (recall@1 about 1/n_cities), text plus location
can. Used by the tests (the unified model must beat the text-only one) and the throughput benchmark.
Frames follow the training-example and document-table conventions of :mod:`models.columns`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

_WORDS = (
    "chess club hiking runners jazz band vegan cooking film photo garden yoga book readers poker salsa "
    "coding robots startup parents dogs cats cycling climbing surf sailing choir theatre poetry comics "
    "anime board games vintage cars bikers knitting wine beer coffee tea baking"
).split()


def location_task(
    n_names: int = 20, n_cities: int = 16, n_examples: int = 4000, seed: int = 0,
    valid_share: float = 0.1, test_share: float = 0.1,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(examples with split train/valid/test, document table)."""
    rng = np.random.default_rng(seed)
    names = []
    while len(names) < n_names:
        w = rng.choice(_WORDS, size=2, replace=False)
        name = f"{w[0]} {w[1]}"
        if name not in names:
            names.append(name)
    cities = [f"city{c:03d}" for c in range(n_cities)]
    region_of = {c: f"region{i % max(n_cities // 4, 1)}" for i, c in enumerate(cities)}
    docs = []
    for ni, name in enumerate(names):
        for ci, city in enumerate(cities):
            neighbour = cities[(ci + 1) % n_cities]
            docs.append({
                "doc_id": f"d{ni:03d}_{ci:03d}", "doc_type": "group" if ni % 2 else "event",
                "title": name.title(), "body": f"a {name} meetup for people who like {name.split()[0]}",
                "city": city, "region": region_of[city], "country": "XX",
                "member_cities": [city, neighbour], "member_cities_weights": [0.8, 0.2],
                "member_clusters": [f"k{ci % 5}"], "member_clusters_weights": [1.0],
                "tags": [], "tags_weights": [],
                "member_count": int(rng.integers(5, 500)), "active_members_30d": int(rng.integers(0, 50)),
            })
    documents = pd.DataFrame(docs)

    n_searchers = max(n_examples // 10, n_cities)
    s_city = rng.integers(0, n_cities, size=n_searchers)
    ex_searcher = rng.integers(0, n_searchers, size=n_examples)
    ex_name = rng.integers(0, n_names, size=n_examples)
    city = s_city[ex_searcher]
    doc_rows = ex_name * n_cities + city
    d = documents.iloc[doc_rows].reset_index(drop=True)
    u = rng.random(n_examples)
    split = np.where(u < 1 - valid_share - test_share, "train", np.where(u < 1 - test_share, "valid", "test"))
    examples = pd.DataFrame({
        "example_id": [f"e{i}" for i in range(n_examples)],
        "session_id": [f"s{i}" for i in range(n_examples)],
        "searcher_id": [f"u{s}" for s in ex_searcher],
        "query": [names[n] for n in ex_name],
        "doc_id": d["doc_id"],
        "ts": pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(np.arange(n_examples), unit="min"),
        "split": split,
        "searcher_city": [cities[c] for c in city],
        "searcher_region": [region_of[cities[c]] for c in city],
        "searcher_country": "XX",
        "searcher_language": np.where(rng.random(n_examples) < 0.1, None, "en"),
        "searcher_clusters": [[f"k{c % 5}"] for c in city],
        "searcher_clusters_weights": [[1.0] for _ in city],
        "searcher_friend_count": rng.integers(0, 300, size=n_examples),
        "searcher_history": [[] for _ in city],  # no history: the task is about location
        "searcher_history_weights": [[] for _ in city],
        "searcher_profile": [[] for _ in city],
        "searcher_profile_weights": [[] for _ in city],
    })
    for col in ("title", "body", "city", "region", "country", "member_cities", "member_cities_weights",
                "member_clusters", "member_clusters_weights", "tags", "tags_weights", "member_count",
                "active_members_30d"):
        examples[f"doc_{col}"] = d[col]
    examples["doc_type"] = d["doc_type"]
    return examples, documents
