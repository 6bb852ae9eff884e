"""Search sessions: an intent, a noisy query, a logging engine's impressions, clicks by latent relevance.

One session, vectorized over many:
1. the searcher has a target in mind (a favourite again, or a fresh intent from the social/local/global mix);
2. they type a noisy version of its name (``text.noisy_query``);
3. a logging engine retrieves candidates by exact token match on normalized titles — the two rarest known
   query tokens, from the searcher's city and anywhere (by static rank), plus friends' profiles and their
   own groups/events that contain those tokens — drops documents created after the session, ranks them by
   a noisy score (text match, same city, friend/member) and shows the top ``impressions``;
4. each shown document is clicked with probability ``examination(rank) * sigmoid((relevance - threshold) /
   temperature)``, where the latent relevance mixes text match, location, social affinity, popularity and a
   bonus for the target;
5. a session without a click is, with ``p_reformulate``, followed minutes later by the same searcher typing
   the target's clean name (the hard-positive pattern: nothing marks it but time order and searcher).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .config import INTENTS, WorldConfig
from .documents import PERSON, Docs
from .memberships import Members
from .names import OPTIONAL_TERMS
from .people import Friends, People
from .sampling import Groups, expand_ranges, sorted_contains, stream, uniform_times, unique_sorted, weighted_choice
from .text import noisy_query, normalize

QMAX = 8  # query tokens kept for matching


@dataclass
class TextIndex:
    vocab: dict[str, int]
    doc_ntok: np.ndarray
    dt_keys: np.ndarray  # sorted doc * V + token
    doc_ptr: np.ndarray  # doc_tok[doc_ptr[d]:doc_ptr[d] + doc_ntok[d]] are the tokens of document d
    doc_tok: np.ndarray
    df: np.ndarray
    g_tok: np.ndarray  # postings sorted by (token, static rank)
    g_doc: np.ndarray
    l_key: np.ndarray  # postings sorted by (token, city, static rank); key = token * (C + 1) + city + 1
    l_doc: np.ndarray
    n_cities: int

    @property
    def v(self) -> int:
        return len(self.vocab)


@dataclass
class World:
    """Everything a session simulation needs, as arrays."""

    cfg: WorldConfig
    people: People
    friends: Friends
    docs: Docs
    members: Members
    city_region: np.ndarray  # region_id per city_id
    city_country: np.ndarray
    city_name: np.ndarray
    popularity: np.ndarray  # friends (person docs) or members (groups, events) per document
    person_doc: np.ndarray  # doc index of each searcher's profile, -1 if none
    index: TextIndex


def build_text_index(docs: Docs, n_cities: int, popularity: np.ndarray, seed: int) -> TextIndex:
    rng = stream(seed, "static-rank")
    codes, uniq = pd.factorize(pd.Series(docs.title, dtype=object))
    vocab: dict[str, int] = {}
    ut_tok: list[int] = []
    ut_len = np.zeros(len(uniq), dtype=np.int64)
    for i, t in enumerate(uniq):
        toks = list(dict.fromkeys(normalize(t).split()))
        ut_len[i] = len(toks)
        ut_tok.extend(vocab.setdefault(w, len(vocab)) for w in toks)
    ut_tok_arr = np.asarray(ut_tok, dtype=np.int64)
    ut_ptr = np.concatenate([[0], np.cumsum(ut_len)[:-1]])
    doc_of, pos = expand_ranges(ut_ptr[codes], ut_len[codes])
    tok = ut_tok_arr[pos]
    v = len(vocab)
    static = np.log1p(popularity) + 0.5 * rng.gumbel(size=docs.n)
    g = np.lexsort((-static[doc_of], tok))
    city1 = docs.city[doc_of] + 1
    lk = tok * (n_cities + 1) + city1
    loc = np.lexsort((-static[doc_of], lk))
    dt_keys = np.sort(doc_of * v + tok)
    doc_ntok = ut_len[codes]
    return TextIndex(
        vocab=vocab, doc_ntok=doc_ntok, dt_keys=dt_keys, doc_ptr=np.cumsum(doc_ntok) - doc_ntok,
        doc_tok=dt_keys % v, df=np.bincount(tok, minlength=v),
        g_tok=tok[g], g_doc=doc_of[g], l_key=lk[loc], l_doc=doc_of[loc], n_cities=n_cities,
    )


# --------------------------------------------------------------------------- intents


def draw_targets(w: World, s: np.ndarray, rng: np.random.Generator, by_city: Groups, by_country: Groups,
                 everywhere: Groups) -> np.ndarray:
    """A document each searcher in ``s`` has in mind, from the intent mixture (with fallbacks)."""
    n = len(s)
    weights = w.cfg.intent.weights()
    cat = weighted_choice(np.array([weights[k] for k in INTENTS]), n, rng)
    zero = np.zeros(n, np.int64)
    p = w.people
    friend = w.friends.adj.uniform(s, rng)
    mate = p.by_community.uniform(p.community[s], rng)
    mate = np.where(mate == s, -1, mate)
    options = {
        "friend_person": np.where(friend >= 0, w.person_doc[np.maximum(friend, 0)], -1),
        "community_person": np.where(mate >= 0, w.person_doc[np.maximum(mate, 0)], -1),
        "member_doc": w.members.by_searcher.uniform(s, rng),
        "friend_doc": w.members.by_searcher.uniform(friend, rng),
        "local_doc": by_city.weighted(p.city[s], rng),
        "country_doc": by_country.weighted(w.city_country[p.city[s]], rng),
        "global_doc": everywhere.weighted(zero, rng),
    }
    target = np.full(n, -1, dtype=np.int64)
    for i, k in enumerate(INTENTS):
        sel = cat == i
        target[sel] = options[k][sel]
    own = w.person_doc[s]
    target = np.where((target < 0) | (target == own), options["local_doc"], target)
    target = np.where((target < 0) | (target == own), options["global_doc"], target)
    return target


# --------------------------------------------------------------------------- the logging engine and clicks


def simulate(w: World, s: np.ndarray, ts: np.ndarray, target: np.ndarray, queries: list[str],
             rng: np.random.Generator) -> tuple[list[list[str]], list[list[str]]]:
    """Impressions and clicks for a batch of sessions (all arrays aligned with ``queries``)."""
    idx, rc, docs, p = w.index, w.cfg.relevance, w.docs, w.people
    n = len(s)
    qtok = np.full((n, QMAX), -1, dtype=np.int64)
    nq = np.zeros(n, dtype=np.int64)
    for i, q in enumerate(queries):
        toks = list(dict.fromkeys(normalize(q).split()))[:QMAX]
        nq[i] = len(toks)
        for j, word in enumerate(toks):
            qtok[i, j] = idx.vocab.get(word, -1)
    dfq = np.where(qtok >= 0, idx.df[np.maximum(qtok, 0)], np.iinfo(np.int64).max)
    order = np.argsort(dfq, axis=1, kind="stable")[:, :2]
    rows = np.arange(n)
    rare = [qtok[rows, order[:, 0]], qtok[rows, order[:, 1]]]
    city_s = p.city[s]

    parts_s: list[np.ndarray] = []
    parts_d: list[np.ndarray] = []
    for t in rare:
        ok = t >= 0
        lo = np.searchsorted(idx.g_tok, t, "left")
        hi = np.searchsorted(idx.g_tok, t, "right")
        own, pos = expand_ranges(lo, np.where(ok, np.minimum(hi - lo, rc.candidates_global), 0))
        parts_s.append(own)
        parts_d.append(idx.g_doc[pos])
        key = t * (idx.n_cities + 1) + city_s + 1
        lo = np.searchsorted(idx.l_key, key, "left")
        hi = np.searchsorted(idx.l_key, key, "right")
        own, pos = expand_ranges(lo, np.where(ok, np.minimum(hi - lo, rc.candidates_local), 0))
        parts_s.append(own)
        parts_d.append(idx.l_doc[pos])

    def has_rare(sess: np.ndarray, doc: np.ndarray) -> np.ndarray:
        out = np.zeros(len(sess), dtype=bool)
        for t in rare:
            tt = t[sess]
            sel = np.flatnonzero(tt >= 0)
            out[sel] |= sorted_contains(idx.dt_keys, doc[sel] * idx.v + tt[sel])
        return out

    # social retrieval: friends' profiles and one's own groups/events
    adj = w.friends.adj
    own, pos = expand_ranges(adj.offsets[s], adj.offsets[s + 1] - adj.offsets[s])
    d = w.person_doc[adj.items[pos]] if len(pos) else np.zeros(0, np.int64)
    keep = d >= 0
    own, d = own[keep], d[keep]
    keep = has_rare(own, d)
    parts_s.append(own[keep])
    parts_d.append(d[keep])
    mem = w.members.by_searcher
    own, pos = expand_ranges(mem.offsets[s], mem.offsets[s + 1] - mem.offsets[s])
    d = mem.items[pos] if len(pos) else np.zeros(0, np.int64)
    keep = has_rare(own, d)
    parts_s.append(own[keep])
    parts_d.append(d[keep])

    key = unique_sorted(np.concatenate(parts_s) * docs.n + np.concatenate(parts_d))
    cs, cd = key // docs.n, key % docs.n
    live = docs.created[cd] <= ts[cs]
    cs, cd = cs[live], cd[live]

    # features of each (session, candidate). Token overlap: expand each candidate's title tokens and look
    # them up among this chunk's (session, token) keys, a small array that stays in cache.
    qr, qc = np.nonzero(qtok >= 0)
    q_keys = np.sort(qr * idx.v + qtok[qr, qc])
    own, pos = expand_ranges(idx.doc_ptr[cd], idx.doc_ntok[cd])
    hit = sorted_contains(q_keys, cs[own] * idx.v + idx.doc_tok[pos])
    matched = np.bincount(own, weights=hit, minlength=len(cs))
    text = matched / np.sqrt(np.maximum(nq[cs], 1) * np.maximum(idx.doc_ntok[cd], 1))
    sc = city_s[cs]
    dc = docs.city[cd]
    has_city = dc >= 0
    dcc = np.maximum(dc, 0)
    same_city = has_city & (dc == sc)
    same_region = has_city & (w.city_region[dcc] == w.city_region[sc])
    same_country = has_city & (w.city_country[dcc] == w.city_country[sc])
    loc = np.where(same_city, rc.loc_city, np.where(same_region, rc.loc_region,
                   np.where(same_country, rc.loc_country, 0.0)))
    ss = s[cs]
    owner = docs.owner[cd]
    is_person = docs.kind[cd] == PERSON
    friend = is_person & sorted_contains(w.friends.keys, ss * p.n + np.maximum(owner, 0))
    same_comm = is_person & (p.community[np.maximum(owner, 0)] == p.community[ss])
    member = ~is_person & sorted_contains(w.members.keys, ss * docs.n + cd)
    ck = p.community[ss] * docs.n + cd
    cpos = np.minimum(np.searchsorted(w.members.comm_keys, ck), max(len(w.members.comm_keys) - 1, 0))
    comm_members = np.where(w.members.comm_keys[cpos] == ck, w.members.comm_counts[cpos], 0) \
        if len(w.members.comm_keys) else np.zeros(len(ck))
    share = comm_members / np.maximum(w.members.count[cd], 1)
    social = np.where(is_person, np.where(friend, 1.0, np.where(same_comm, 0.5, 0.0)),
                      np.where(member, 1.0, np.minimum(share, 1.0)))
    pop = np.log1p(w.popularity[cd]) / np.log1p(max(w.popularity.max(), 1))

    engine = (rc.engine_text * text + rc.engine_location * same_city + rc.engine_social * (friend | member)
              + rc.engine_noise * rng.gumbel(size=len(cs)))
    # candidates come grouped by session (cs ascending): one argsort of (session, -score) in a float key
    o = np.argsort(cs * 1e4 - np.clip(engine, -999.0, 999.0), kind="stable")
    cs, cd = cs[o], cd[o]
    first = np.searchsorted(cs, cs, "left")
    rank = np.arange(len(cs)) - first
    shown = rank < rc.impressions
    o = o[shown]
    cs, cd, rank = cs[shown], cd[shown], rank[shown]
    rel = (rc.w_text * text[o] + rc.w_location * loc[o] + rc.w_social * social[o] + rc.w_popularity * pop[o]
           + rc.w_intent * (cd == target[cs]))
    examine = (1.0 + rank) ** (-rc.position_bias)
    p_click = examine / (1.0 + np.exp(-(rel - rc.click_threshold) / rc.click_temperature))
    click = rng.random(len(cs)) < p_click

    ids = docs.ids[cd].tolist()
    bounds = np.searchsorted(cs, np.arange(n + 1), "left")
    impressed = [ids[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    kc = cs[click]
    kids = docs.ids[cd[click]].tolist()
    cb = np.searchsorted(kc, np.arange(n + 1), "left")
    clicked = [kids[a:b] for a, b in zip(cb[:-1], cb[1:])]
    return impressed, clicked


# --------------------------------------------------------------------------- the whole log


def make_sessions(w: World, progress: bool = True) -> pd.DataFrame:
    cfg = w.cfg
    rng = stream(cfg.seed, "sessions")
    pyr = random.Random(int(rng.integers(2**62)))
    p, docs = w.people, w.docs
    start, end = int(cfg.start.timestamp()), int(cfg.end.timestamp())
    weight = w.popularity + 1.0
    n_cities = len(w.city_name)
    by_city = Groups.build(docs.city, n_cities, weights=weight)
    doc_country = np.where(docs.city >= 0, w.city_country[np.maximum(docs.city, 0)], -1)
    by_country = Groups.build(doc_country, int(w.city_country.max()) + 1, weights=weight)
    everywhere = Groups.build(np.zeros(docs.n, np.int64), 1, weights=weight)
    old = np.where(docs.created < start, 0, -1)
    old_docs = Groups.build(old, 1, weights=weight)

    # who searches how often, and when
    activity = rng.lognormal(0.0, cfg.session_activity_sigma, p.n)
    per = rng.multinomial(cfg.n_sessions, activity / activity.sum())
    s = np.repeat(np.arange(p.n), per)
    ts = uniform_times(np.maximum(p.created[s], start), np.full(len(s), end - 600), rng)
    # what they look for: a favourite again (navigational) or a fresh intent
    fav = draw_targets(w, np.repeat(np.arange(p.n), cfg.intent.favorites), rng, by_city, by_country, everywhere)
    fav = fav.reshape(p.n, cfg.intent.favorites)
    nav = rng.random(len(s)) < cfg.intent.p_navigational
    fresh = draw_targets(w, s, rng, by_city, by_country, everywhere)
    target = np.where(nav, fav[s, rng.integers(0, cfg.intent.favorites, len(s))], fresh)
    unborn = docs.created[target] > ts
    target[unborn] = old_docs.weighted(np.zeros(int(unborn.sum()), np.int64), rng)
    nav &= ~unborn
    keep = target >= 0  # only empty when no document predates the window
    s, ts, target, nav = s[keep], ts[keep], target[keep], nav[keep]

    # what they type
    titles, kinds = docs.title, docs.kind
    kind_name = ("person", "group", "event")
    empty: frozenset[str] = frozenset()
    queries = [
        noisy_query(titles[t], kind_name[kinds[t]], docs.place_terms[c] if c >= 0 else empty,
                    w.city_name[sc], cfg.query, pyr)
        for t, c, sc in tqdm(zip(target, docs.city[target], p.city[s]), total=len(s), desc="world: queries",
                             disable=not progress, leave=False, mininterval=1.0)
    ]
    frame = pd.DataFrame({"s": s, "target": target, "ts": ts, "query": queries})
    habit = nav & (rng.random(len(s)) < cfg.intent.p_habit_query)
    if habit.any():
        navf = frame[nav].sort_values(["ts", "s"], kind="stable")
        first_q = navf.groupby(["s", "target"], sort=False)["query"].transform("first")
        use = habit[navf.index.to_numpy()]
        frame.loc[navf.index[use], "query"] = first_q[use].to_numpy()

    impressed, clicked = _run(w, frame, rng, progress, "world: sessions")
    frame["impressed"], frame["clicked"] = impressed, clicked

    # failed sessions, then a cleaner query by the same searcher within minutes
    failed = np.flatnonzero(np.array([len(c) == 0 for c in clicked]) & (rng.random(len(frame)) < cfg.relevance.p_reformulate))
    lo_s, hi_s = cfg.relevance.reformulate_within_s
    ref = pd.DataFrame({
        "s": frame["s"].to_numpy()[failed],
        "target": frame["target"].to_numpy()[failed],
        "ts": frame["ts"].to_numpy()[failed] + (lo_s + rng.random(len(failed)) * (hi_s - lo_s)).astype(np.int64),
    })
    ref["query"] = [_clean_query(titles[t], docs.place_terms[c] if c >= 0 else empty, pyr)
                    for t, c in zip(ref["target"], docs.city[ref["target"].to_numpy()])]
    impressed, clicked = _run(w, ref, rng, progress, "world: reformulations")
    ref["impressed"], ref["clicked"] = impressed, clicked

    out = pd.concat([frame, ref], ignore_index=True).sort_values(["ts", "s"], kind="stable").reset_index(drop=True)
    return out


def _clean_query(title: str, place_terms: frozenset[str], rng: random.Random) -> str:
    words = normalize(title).split()
    if rng.random() < 0.3:
        kept = [x for x in words if x not in OPTIONAL_TERMS and x not in place_terms]
        words = kept or words
    return " ".join(words)


def _run(w: World, frame: pd.DataFrame, rng: np.random.Generator, progress: bool, desc: str):
    impressed: list[list[str]] = []
    clicked: list[list[str]] = []
    step = w.cfg.chunk_sessions
    s, ts, tg = (frame[c].to_numpy(dtype=np.int64) for c in ("s", "ts", "target"))
    q = frame["query"].tolist()
    for a in tqdm(range(0, len(frame), step), desc=desc, disable=not progress, leave=False):
        b = min(a + step, len(frame))
        imp, clk = simulate(w, s[a:b], ts[a:b], tg[a:b], q[a:b], rng)
        impressed.extend(imp)
        clicked.extend(clk)
    return impressed, clicked
