"""Social clusters: community detection on the searchers' graph.

The graph is the friendship graph, or, for sources without friendships, a co-membership graph (two searchers
are linked when they belong to the same document). Communities are found with igraph's built-in Leiden
(modularity objective) by default; Louvain (``multilevel``) is the alternative. Both run in about a minute on
a 1M-node / 10M-edge graph on 2 cores (``bench/feature_bench.py``); Leiden is the default because it
guarantees connected communities (Louvain can return internally disconnected ones) at the same cost. The
``leidenalg`` package gives the same partitions but was about 10x slower here.

Stable labels: a community is named after its smallest member id (``c_<searcher_id>``), so the label of a
community survives re-detection on a later graph as long as that member stays in it; the random generator
is seeded and vertex/edge order is canonical (sorted ids), so the same graph always gives the same labels.
Communities smaller than ``min_cluster_size`` (isolated searchers) get no label. Re-detecting every day
still moves 1-25% of the searchers of a small world between labels from one day to the next (a new edge
can tip a local optimum), so ``features.compute`` detects on a period's anchor graph and lets newcomers
adopt their neighbours' community (:func:`adopt_neighbour_clusters`) until the next anchor.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

NO_CLUSTER = ""  # label of searchers outside any community of at least min_cluster_size members
CLUSTER_PREFIX = "c_"


class CommunityConfig(BaseModel):
    """How communities are detected."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    algorithm: Literal["leiden", "multilevel"] = "leiden"
    resolution: float = Field(1.0, gt=0, le=100, description="modularity resolution; >1 gives smaller clusters")
    seed: int = Field(0, ge=0)
    n_iterations: int = Field(2, ge=-1, le=100, description="Leiden iterations; -1 iterates until stable")
    min_cluster_size: int = Field(2, ge=1)
    comembership_degree: int = Field(
        10, ge=1, le=1000,
        description="co-membership graph: each member is linked to this many others of the same document",
    )


@dataclass(frozen=True)
class Graph:
    """An undirected weighted graph over sorted string ids; each pair appears once with ``u < v``."""

    ids: np.ndarray  # object array of node ids, sorted
    u: np.ndarray  # int64
    v: np.ndarray  # int64
    w: np.ndarray  # float64

    @property
    def n(self) -> int:
        return len(self.ids)


def make_graph(
    ids: np.ndarray | pd.Series | list[str],
    src: np.ndarray | pd.Series,
    dst: np.ndarray | pd.Series,
    weights: np.ndarray | None = None,
) -> Graph:
    """Build a :class:`Graph` from id pairs: unknown ids and self-loops are dropped, parallel edges summed."""
    node_ids = np.asarray(sorted(set(map(str, ids))), dtype=object)
    index = pd.Index(node_ids)
    a = index.get_indexer(np.asarray(src, dtype=object))
    b = index.get_indexer(np.asarray(dst, dtype=object))
    w = np.ones(len(a)) if weights is None else np.asarray(weights, dtype=np.float64)
    keep = (a >= 0) & (b >= 0) & (a != b)
    a, b, w = a[keep], b[keep], w[keep]
    lo, hi = np.minimum(a, b).astype(np.int64), np.maximum(a, b).astype(np.int64)
    key = lo * max(len(node_ids), 1) + hi
    uniq, inv = np.unique(key, return_inverse=True)
    summed = np.bincount(inv, weights=w, minlength=len(uniq)) if len(uniq) else np.zeros(0)
    n = max(len(node_ids), 1)
    return Graph(node_ids, (uniq // n).astype(np.int64), (uniq % n).astype(np.int64), summed)


def detect_communities(graph: Graph, config: CommunityConfig | None = None) -> np.ndarray:
    """Community index of every node (int array aligned with ``graph.ids``)."""
    import igraph as ig

    config = config or CommunityConfig()
    if graph.n == 0:
        return np.zeros(0, dtype=np.int64)
    if len(graph.u) == 0:
        return np.arange(graph.n, dtype=np.int64)
    # zip of Python ints is the fastest way into igraph (numpy arrays are converted element by element).
    g = ig.Graph(n=graph.n, edges=list(zip(graph.u.tolist(), graph.v.tolist())), directed=False)
    g.es["weight"] = graph.w.tolist()
    ig.set_random_number_generator(random.Random(config.seed))
    try:
        if config.algorithm == "leiden":
            part = g.community_leiden(
                objective_function="modularity", weights="weight",
                resolution=config.resolution, n_iterations=config.n_iterations,
            )
        else:
            part = g.community_multilevel(weights="weight", resolution=config.resolution)
    finally:
        ig.set_random_number_generator(random)
    return np.asarray(part.membership, dtype=np.int64)


def cluster_labels(ids: np.ndarray, membership: np.ndarray, min_cluster_size: int = 2) -> np.ndarray:
    """Stable string label per node: ``c_<smallest member id>``, or :data:`NO_CLUSTER` for small communities.

    ``ids`` must be sorted (as in :class:`Graph`), so the smallest index of a community is its smallest id.
    """
    if len(ids) == 0:
        return np.zeros(0, dtype=object)
    first = np.full(membership.max() + 1, len(ids), dtype=np.int64)
    np.minimum.at(first, membership, np.arange(len(ids)))
    size = np.bincount(membership)
    names = np.array([CLUSTER_PREFIX + s for s in ids[np.minimum(first, len(ids) - 1)]], dtype=object)
    labels = names[membership]
    labels[size[membership] < min_cluster_size] = NO_CLUSTER
    return labels


def adopt_neighbour_clusters(graph: Graph, labels: np.ndarray) -> np.ndarray:
    """Give each node without a cluster the cluster most of its neighbours are in (by edge weight, ties by
    label); nodes whose neighbours have no cluster either keep :data:`NO_CLUSTER`."""
    labels = labels.copy()
    nb_node = np.concatenate([graph.u, graph.v])
    nb_label = np.concatenate([labels[graph.v], labels[graph.u]])
    nb_w = np.concatenate([graph.w, graph.w])
    sel = (labels[nb_node] == NO_CLUSTER) & (nb_label != NO_CLUSTER)
    if not sel.any():
        return labels
    votes = (
        pd.DataFrame({"node": nb_node[sel], "label": nb_label[sel], "w": nb_w[sel]})
        .groupby(["node", "label"], as_index=False)["w"].sum()
        .sort_values(["node", "w", "label"], ascending=[True, False, True], kind="mergesort")
        .drop_duplicates("node")
    )
    labels[votes["node"].to_numpy()] = votes["label"].to_numpy()
    return labels


def comembership_pairs(
    members: pd.DataFrame, degree: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Searcher pairs linked by shared documents, O(members x degree) instead of a clique per document.

    ``members`` has ``searcher_id`` and ``doc_id``. A document with at most ``degree + 1`` members links all
    of them (a clique); a larger one places its members on a seeded random ring and links each to the
    ``degree // 2`` next ones on each side, which keeps the members of a big document connected without the
    quadratic blow-up of a full clique.
    """
    if members.empty:
        return np.zeros(0, dtype=object), np.zeros(0, dtype=object)
    m = members[["doc_id", "searcher_id"]].drop_duplicates().sort_values(["doc_id", "searcher_id"])
    rng = np.random.default_rng(seed)
    # shuffle members within each document: sort by (doc, random key)
    m = m.assign(_r=rng.random(len(m))).sort_values(["doc_id", "_r"], kind="stable")
    doc = m["doc_id"].to_numpy()
    who = m["searcher_id"].to_numpy(dtype=object)
    starts = np.r_[0, np.flatnonzero(doc[1:] != doc[:-1]) + 1]
    sizes = np.diff(np.r_[starts, len(doc)])
    group_start = np.repeat(starts, sizes)
    group_size = np.repeat(sizes, sizes)
    pos = np.arange(len(doc)) - group_start
    src, dst = [], []
    half = max(degree // 2, 1)
    for off in range(1, max(degree, 1) + 1):
        # small documents: all pairs (offset up to size-1, each pair once); large: ring neighbours
        small = (group_size <= degree + 1) & (pos + off < group_size)
        large = (group_size > degree + 1) & (off <= half)
        sel = small | large
        j = group_start[sel] + (pos[sel] + off) % group_size[sel]
        src.append(who[sel])
        dst.append(who[j])
    return np.concatenate(src), np.concatenate(dst)


def neighbour_cluster_weights(
    graph: Graph, labels: np.ndarray, own_weight: float
) -> pd.DataFrame:
    """(node, cluster, weight) rows: the node's own cluster with ``own_weight`` plus the weighted
    distribution of its neighbours' clusters with ``1 - own_weight``.

    A node without neighbours in a cluster puts all weight on its own cluster; a node without a cluster
    puts all weight on its neighbours'. Nodes with neither get no rows. Weights of a node sum to 1.
    """
    nb_node = np.concatenate([graph.u, graph.v])
    nb_label = np.concatenate([labels[graph.v], labels[graph.u]])
    nb_w = np.concatenate([graph.w, graph.w])
    ok = nb_label != NO_CLUSTER
    nb = pd.DataFrame({"node": nb_node[ok], "cluster": nb_label[ok], "weight": nb_w[ok]})
    nb_total = nb.groupby("node", sort=False)["weight"].transform("sum")
    has_nb = np.zeros(graph.n, dtype=bool)
    has_nb[nb["node"].to_numpy()] = True
    has_own = labels != NO_CLUSTER
    own_share = np.where(has_nb, own_weight, 1.0)
    nb_share = np.where(has_own, 1.0 - own_weight, 1.0)
    nb["weight"] = nb["weight"] / nb_total * nb_share[nb["node"].to_numpy()]
    nodes = np.flatnonzero(has_own)
    own = pd.DataFrame({"node": nodes, "cluster": labels[nodes], "weight": own_share[nodes]})
    out = pd.concat([own, nb], ignore_index=True)
    return out[out["weight"] > 0]
