"""The searcher's history: the documents it recently clicked or joined, as a weighted multi-hot feature.

The paper embeds high-cardinality ids and a searcher's engagement history as multi-hot bags with weights;
MovieLens, Meetup and Last.fm are mostly collaborative, so this is the feature that lets the two towers
learn what matrix factorization learns. Definition, as of a time ``t``:

- interactions: clicks of sessions and dated memberships, each strictly before ``t``;
- the ``max_items`` most recent distinct documents, newest first, weighted by recency
  ``0.5 ** (age / half_life_days)`` (a document seen several times sums its weights), renormalized to 1.

One function computes it for any (searcher, time) pairs, so a daily snapshot (``t`` = the end of the
day, what the Feast online store serves) and a training example (``t`` = the start of the example's day,
i.e. exactly the snapshot Feast would serve it) get the same values by construction.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

SEARCHER_KEY = "searcher_id"
DOC_KEY = "doc_id"


class HistoryConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    max_items: int = Field(50, ge=1, le=1000, description="most recent distinct documents kept")
    half_life_days: float = Field(30.0, gt=0, description="recency weight halves every this many days")


def interactions(sessions: pd.DataFrame, memberships: pd.DataFrame | None = None) -> pd.DataFrame:
    """(searcher_id, doc_id, ts) of every click and membership, sorted by searcher then time.

    Memberships are taken as they are: an adapter whose membership file has no dates must not emit it as
    memberships (see the Last.fm and Meetup Chicago adapters), or this feature would read the future.
    """
    clicks = sessions[[SEARCHER_KEY, "ts", "clicked"]].explode("clicked").dropna(subset=["clicked"])
    parts = [pd.DataFrame({SEARCHER_KEY: clicks[SEARCHER_KEY].astype(str).to_numpy(),
                           DOC_KEY: clicks["clicked"].astype(str).to_numpy(),
                           "ts": pd.to_datetime(clicks["ts"], utc=True).to_numpy()})]
    if memberships is not None and len(memberships):
        parts.append(pd.DataFrame({SEARCHER_KEY: memberships[SEARCHER_KEY].astype(str).to_numpy(),
                                   DOC_KEY: memberships[DOC_KEY].astype(str).to_numpy(),
                                   "ts": pd.to_datetime(memberships["created_at"], utc=True).to_numpy()}))
    out = pd.concat([p for p in parts if len(p)] or parts[:1], ignore_index=True)
    out["ts"] = pd.to_datetime(out["ts"], utc=True).astype("datetime64[ns, UTC]")
    return out.sort_values([SEARCHER_KEY, "ts"], kind="stable").reset_index(drop=True)


def recent_documents(
    events: pd.DataFrame, searcher_ids, times, config: HistoryConfig | None = None,
) -> tuple[list[list[str]], list[list[float]]]:
    """(history, history_weights) for each (searcher_id, time) pair: see the module docstring.

    ``events`` comes from :func:`interactions`. Vectorized: one binary search per pair, then one gather of
    at most ``max_items`` rows each (a repeat of a document inside the window merges into one entry).
    """
    config = config or HistoryConfig()
    who = pd.Series(np.asarray(searcher_ids, dtype=object)).astype(str).to_numpy(dtype=object)
    at = pd.to_datetime(pd.Series(times), utc=True).astype("datetime64[ns, UTC]")
    at_ns = at.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    n = len(who)
    hist: list[list[str]] = [[] for _ in range(n)]
    weights: list[list[float]] = [[] for _ in range(n)]
    if n == 0 or events.empty:
        return hist, weights
    ev_who = events[SEARCHER_KEY].to_numpy(dtype=object)
    ev_ts = events["ts"].to_numpy(dtype="datetime64[ns]").astype(np.int64)
    codes, uniques = pd.factorize(ev_who, sort=False)
    starts = np.r_[0, np.flatnonzero(codes[1:] != codes[:-1]) + 1]  # events are sorted by searcher
    group = pd.Index(uniques).get_indexer(who)
    known = group >= 0
    lo, hi = np.zeros(n, np.int64), np.zeros(n, np.int64)
    g = group[known]
    # One sort of events and pairs together by (searcher, time), a pair before an event at the same time:
    # the events sorted before a pair are exactly those of its searcher strictly before its time (events
    # are already in this order, so that count is also the index of the pair's first later event).
    code = np.r_[codes, g]
    when = np.r_[ev_ts, at_ns[known]]
    is_event = np.r_[np.ones(len(codes), np.int8), np.zeros(len(g), np.int8)]
    order = np.lexsort((is_event, when, code))
    before = np.cumsum(is_event[order])
    at_pair = order >= len(codes)
    hi[np.flatnonzero(known)[order[at_pair] - len(codes)]] = before[at_pair]
    lo[known] = np.maximum(starts[g], hi[known] - config.max_items * 4)  # repeats: look a little further back
    lens = hi - lo
    if lens.sum() == 0:
        return hist, weights
    pair = np.repeat(np.arange(n), lens)
    pos = np.repeat(lo - np.r_[0, np.cumsum(lens)[:-1]], lens) + np.arange(int(lens.sum()))
    # Ages from the pair's newest event, not from its time: after renormalization the weights are the same,
    # and they stay bit-identical from one day to the next until the searcher acts again, so the nightly
    # online load (features.online_load) rewrites only the searchers who did.
    newest = ev_ts[np.maximum(hi - 1, 0)]
    age_days = (np.repeat(newest, lens) - ev_ts[pos]) / 86_400e9
    frame = pd.DataFrame({"pair": pair, "doc": events[DOC_KEY].to_numpy(dtype=object)[pos],
                          "w": 0.5 ** (age_days / config.half_life_days), "ts": ev_ts[pos]})
    frame = frame.groupby(["pair", "doc"], sort=False, as_index=False).agg(w=("w", "sum"), ts=("ts", "max"))
    frame = frame.sort_values(["pair", "ts", "doc"], ascending=[True, False, True], kind="mergesort")
    frame = frame[frame.groupby("pair", sort=False).cumcount() < config.max_items]
    frame["w"] = frame["w"] / frame.groupby("pair", sort=False)["w"].transform("sum")
    p = frame["pair"].to_numpy()
    cuts = np.flatnonzero(p[1:] != p[:-1]) + 1
    for i, d, w in zip(p[np.r_[0, cuts]], np.split(frame["doc"].to_numpy(), cuts), np.split(frame["w"].to_numpy(), cuts)):
        hist[i] = d.tolist()
        weights[i] = w.tolist()
    return hist, weights
