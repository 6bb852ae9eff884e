"""BEIR SciFact as canonical tables: text retrieval of abstracts by scientific claims, with qrels.

- documents: the corpus (``doc_type`` paper, title and abstract text). No dates: ``undated_at``.
- searchers: every query is asked by a searcher of its own (id ``anonymous-<query id>``): claims have no
  author, location or time, so no searcher's history may carry over from one claim to another. (One shared
  anonymous searcher would have every earlier claim's relevant abstracts as its history: none for the
  training claims, which share one date, and the training claims' for every test claim, a feature the model
  is served but never trained with.) Social and location features stay empty.
- sessions: one per query that has relevance labels (session_id = the query id): query = claim text,
  clicked = the documents judged relevant (score > 0), split train/test from the qrels file it is in.
  Queries without any qrels row are dropped (counted in the manifest; none in the published files).
- qrels: every (query, document, score) row of ``qrels/train.tsv`` and ``qrels/test.tsv`` with its split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from ingest.contract import CanonicalDataset, DatasetManifest, empty_table
from ingest.datasets.common import params_of, progress, require_files, utc

SOURCE = "scifact"
SUBDIR = "beir_scifact"
QREL_FILES = {"train": "qrels/train.tsv", "test": "qrels/test.tsv"}
FILES = ["corpus.jsonl", "queries.jsonl", *QREL_FILES.values()]
ANONYMOUS = "anonymous"  # the prefix of the per-query searcher ids


@dataclass(frozen=True)
class ScifactConfig:
    undated_at: str = "2020-01-01T00:00:00+00:00"  # time given to documents, the searcher and sessions


def read_jsonl(path: Path, desc: str) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in tqdm(f, desc=desc, unit=" lines", leave=False):
            if line.strip():
                rows.append(json.loads(line))
    return rows


def load(datasets_dir: Path, config: ScifactConfig | None = None) -> CanonicalDataset:
    """Read BEIR SciFact under ``datasets_dir`` and return the canonical tables with qrels."""
    cfg = config or ScifactConfig()
    paths = require_files(SOURCE, datasets_dir, SUBDIR, FILES)
    undated = utc(cfg.undated_at)
    with progress(SOURCE, ["corpus", "queries and qrels", "tables"]) as bar:
        corpus = read_jsonl(paths["corpus.jsonl"], "scifact corpus")
        bar.done()
        queries = read_jsonl(paths["queries.jsonl"], "scifact queries")
        qrels = pd.concat(
            [
                pd.read_csv(paths[f], sep="\t", dtype=str).assign(split=s)
                for s, f in QREL_FILES.items()
            ],
            ignore_index=True,
        ).rename(columns={"query-id": "session_id", "corpus-id": "doc_id", "score": "relevance"})
        qrels["relevance"] = qrels["relevance"].astype("int64")
        bar.done()

        documents = pd.DataFrame(
            {
                "doc_id": [str(d["_id"]) for d in corpus],
                "doc_type": "paper",
                "title": [d.get("title", "") for d in corpus],
                "body": [d.get("text", "") for d in corpus],
                "city": None,
                "region": None,
                "country": None,
                "created_at": undated,
                "last_active_at": pd.NaT,
            }
        )
        documents["last_active_at"] = pd.to_datetime(documents["last_active_at"], utc=True)

        split_of = qrels.groupby("session_id")["split"].agg(lambda s: sorted(set(s)))
        mixed = split_of[split_of.map(len) > 1]
        if len(mixed):
            raise ValueError(f"{SOURCE}: queries appear in both qrels files: {list(mixed.index[:5])}")
        relevant = (
            qrels[qrels["relevance"] > 0].sort_values(["session_id", "doc_id"])
            .groupby("session_id")["doc_id"].agg(list)
        )
        q = pd.DataFrame({"session_id": [str(x["_id"]) for x in queries], "query": [x["text"] for x in queries]})
        labelled = q["session_id"].isin(split_of.index)
        q = q[labelled]
        sessions = pd.DataFrame(
            {
                "session_id": q["session_id"],
                "searcher_id": ANONYMOUS + "-" + q["session_id"],
                "ts": undated,
                "query": q["query"],
                "impressed": [[] for _ in range(len(q))],
                "clicked": [relevant.get(s, []) for s in q["session_id"]],
                "split": q["session_id"].map(split_of.str[0]),
            }
        ).reset_index(drop=True)
        unknown_query = ~qrels["session_id"].isin(q["session_id"])
        if unknown_query.any():
            raise ValueError(
                f"{SOURCE}: {int(unknown_query.sum())} qrels rows name queries missing from queries.jsonl, "
                f"e.g. {qrels.loc[unknown_query, 'session_id'].iloc[0]!r}"
            )
        searchers = pd.DataFrame(
            {"searcher_id": sessions["searcher_id"], "city": None, "region": None, "country": None,
             "language": "en", "created_at": undated}
        )
        bar.done()

    params = params_of(
        cfg,
        qrel_files=QREL_FILES,
        queries_read=len(queries),
        queries_without_qrels_dropped=int((~labelled).sum()),
        sessions_per_split=sessions["split"].value_counts().to_dict(),
        qrels_per_split=qrels["split"].value_counts().to_dict(),
    )
    notes = (
        f"BEIR SciFact. Sessions = queries with qrels (split from qrels/train.tsv and qrels/test.tsv; "
        f"{params['queries_without_qrels_dropped']} unlabelled queries dropped); clicked = relevant documents. "
        f"One anonymous searcher per query; documents and sessions have no dates and carry {cfg.undated_at}."
    )
    return CanonicalDataset(
        searchers=searchers,
        documents=documents,
        friendships=empty_table("friendships"),
        memberships=empty_table("memberships"),
        sessions=sessions,
        qrels=qrels[["session_id", "doc_id", "relevance", "split"]],
        manifest=DatasetManifest(source=SOURCE, params=params, notes=notes),
    )
