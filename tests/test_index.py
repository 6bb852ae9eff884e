"""The FAISS index layer against an exact oracle on seeded clustered vectors."""

from __future__ import annotations

import math

import faiss
import numpy as np
import pytest

from ann.index import EmbeddingIndex, EmbeddingIndexError, IndexConfig, exact_search
from ann.recall import recall_at_k

DIM = 64
N_DOCS = 20_000
N_CLUSTERS = 1_000


def mixture(n: int, seed: int, n_clusters: int = N_CLUSTERS, dim: int = DIM, noise: float = 1.0) -> np.ndarray:
    """Gaussian mixture around unit cluster centers (same centers for every seed); noise norm ~ ``noise``."""
    centers = np.random.default_rng(12345).normal(size=(n_clusters, dim))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_clusters, n)
    return (centers[labels] + noise / math.sqrt(dim) * rng.normal(size=(n, dim))).astype(np.float32)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tests check behaviour, not speed; one OpenMP thread avoids spin-waiting on a busy shared machine.
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def docs() -> np.ndarray:
    return mixture(N_DOCS, seed=0)


@pytest.fixture(scope="module")
def doc_ids() -> np.ndarray:
    # int64 ids far above n, in no particular order.
    rng = np.random.default_rng(1)
    return (2**62 + rng.permutation(N_DOCS).astype(np.int64) * 1_000_003).astype(np.int64)


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    return mixture(300, seed=2)


@pytest.fixture(scope="module")
def ivf(docs, doc_ids) -> EmbeddingIndex:
    return EmbeddingIndex.build(docs, doc_ids, IndexConfig.for_corpus(N_DOCS, DIM), progress=False)


@pytest.fixture(scope="module")
def flat(docs, doc_ids) -> EmbeddingIndex:
    return EmbeddingIndex.build(docs[:5000], doc_ids[:5000], IndexConfig(kind="flat"), progress=False)


# --------------------------------------------------------------------------- config rules


def test_for_corpus_follows_corpus_size():
    assert IndexConfig.for_corpus(19_999, 64).kind == "flat"
    for n in (20_000, 100_000, 1_000_000, 50_000_000):
        c = IndexConfig.for_corpus(n, 64)
        assert c.kind == "ivfpq"
        assert c.nlist == max(16, min(65_536, round(4 * math.sqrt(n)), n // 39))
        assert c.train_size >= 39 * c.nlist and c.train_size <= n
        assert c.pq_m == 16 and c.nprobe == max(8, min(256, round(c.nlist / 32)))
    assert IndexConfig.for_corpus(20_000, 64).nlist == 20_000 // 39  # bounded by the training rule
    assert IndexConfig.for_corpus(1_000_000, 64).nlist == 4000
    for dim, m in [(64, 16), (128, 32), (100, 25), (96, 24), (50, 10), (3, 1), (512, 64)]:
        assert IndexConfig.for_corpus(100_000, dim).pq_m == m
    # Explicit choices win over the rules.
    c = IndexConfig.for_corpus(100_000, 64, nlist=100, pq_m=8, nprobe=7)
    assert (c.nlist, c.pq_m, c.nprobe) == (100, 8, 7)
    with pytest.raises(EmbeddingIndexError, match="must divide dim"):
        IndexConfig.for_corpus(100_000, 64, pq_m=12)
    with pytest.raises(ValueError):
        IndexConfig(kind="hnsw")


# --------------------------------------------------------------------------- top-K


def test_flat_equals_exact(flat, docs, doc_ids, queries):
    scores, ids = flat.search(queries, 10)
    e_scores, e_ids = exact_search(docs[:5000], queries, 10, doc_ids[:5000])
    np.testing.assert_array_equal(ids, e_ids)
    np.testing.assert_allclose(scores, e_scores, atol=1e-5)
    assert recall_at_k(flat, docs[:5000], queries, 10, ids=doc_ids[:5000]) == 1.0
    # Scores are cosines: check against numpy.
    cos = unit(queries) @ unit(docs[:5000]).T
    np.testing.assert_allclose(scores[:, 0], cos.max(axis=1), atol=1e-5)


def test_ivfpq_recall_against_exact(ivf, docs, doc_ids, queries):
    assert ivf.kind == "ivfpq" and ivf.ntotal == N_DOCS and ivf.dim == DIM
    recalls = [recall_at_k(ivf, docs, queries, 10, nprobe=p, ids=doc_ids) for p in (1, 4, 16, 64)]
    assert all(b >= a - 0.005 for a, b in zip(recalls, recalls[1:])), recalls
    assert recalls[-1] > recalls[0] + 0.1, recalls
    assert recall_at_k(ivf, docs, queries, 10, ids=doc_ids) >= 0.9  # default nprobe, refine on


def test_refined_scores_are_exact_cosines(ivf, docs, doc_ids, queries):
    scores, ids = ivf.search(queries[:50], 10)
    row_of = {int(i): r for r, i in enumerate(doc_ids)}
    exact = np.array([[unit(queries[q : q + 1])[0] @ unit(docs[[row_of[int(i)]]])[0] for i in ids[q]] for q in range(50)])
    np.testing.assert_allclose(scores, exact, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first


def test_refine_beats_pq_alone(ivf, docs, doc_ids, queries):
    # Same seed and training sample as the refined fixture, so only the re-ranking differs.
    pq_only = EmbeddingIndex.build(docs, doc_ids, ivf.config.model_copy(update={"refine": False}), progress=False)
    assert pq_only.stats().bytes_per_vector < ivf.stats().bytes_per_vector
    r_pq = recall_at_k(pq_only, docs, queries, 10, nprobe=32, ids=doc_ids)
    r_ref = recall_at_k(ivf, docs, queries, 10, nprobe=32, ids=doc_ids)
    assert r_ref > r_pq + 0.05, (r_pq, r_ref)


def test_padding_when_k_exceeds_corpus():
    vecs = mixture(5, seed=3)
    idx = EmbeddingIndex.build(vecs, np.array([5, 4, 3, 2, 1], dtype=np.int64), progress=False)
    scores, ids = idx.search(vecs[0], 8)  # a 1-D query is one query
    assert ids.shape == (1, 8) and ids[0, 0] == 5
    assert sorted(ids[0, :5].tolist()) == [1, 2, 3, 4, 5]
    assert (ids[0, 5:] == -1).all() and np.isneginf(scores[0, 5:]).all()


# --------------------------------------------------------------------------- radius mode


def test_radius_search_on_flat_is_exact(flat, docs, doc_ids, queries):
    cos = unit(queries[:40]) @ unit(docs[:5000]).T
    radius = float(np.quantile(cos, 0.995))
    results = flat.range_search(queries[:40], radius)
    assert len(results) == 40
    for q, (ids, scores) in enumerate(results):
        want = set(doc_ids[:5000][cos[q] >= radius].tolist())
        # Only values within float error of the radius may disagree.
        near = set(doc_ids[:5000][np.abs(cos[q] - radius) < 1e-5].tolist())
        assert set(ids.tolist()) ^ want <= near
        assert (scores >= np.float32(radius)).all() and np.all(np.diff(scores) <= 0)
    # ">=": a document whose score equals the radius is returned.
    s, i = flat.search(queries[:1], 3)
    [(ids, _)] = flat.range_search(queries[:1], float(s[0, 2]))
    assert i[0, 2] in ids.tolist()
    capped = flat.range_search(queries[:40], radius, max_results=2)
    for (ids, scores), (all_ids, all_scores) in zip(capped, results):
        assert len(ids) == min(2, len(all_ids))
        np.testing.assert_array_equal(scores, all_scores[: len(ids)])


def test_radius_search_on_ivfpq_is_a_high_overlap_subset(ivf, docs, doc_ids, queries):
    cos = unit(queries[:100]) @ unit(docs).T
    radius = float(np.median(np.sort(cos, axis=1)[:, -20]))  # about 20 results per query
    got_total = want_total = 0
    for q, (ids, scores) in enumerate(ivf.range_search(queries[:100], radius, nprobe=64)):
        want = set(doc_ids[cos[q] >= radius - 1e-6].tolist())
        assert set(ids.tolist()) <= want  # refined scores are exact, so no false positives
        assert (scores >= np.float32(radius)).all()
        got_total += len(ids)
        want_total += int((cos[q] >= radius).sum())
    assert want_total > 1000  # the radius is meaningful on this data
    assert got_total / want_total >= 0.9, (got_total, want_total)
    # More probes find more.
    few = sum(len(i) for i, _ in ivf.range_search(queries[:100], radius, nprobe=1))
    assert few < got_total


# --------------------------------------------------------------------------- subsets


@pytest.mark.parametrize("n_allowed", [40, 5000])  # exact scoring path and FAISS selector path
def test_search_subset_returns_only_allowed_ids(ivf, docs, doc_ids, queries, n_allowed):
    rng = np.random.default_rng(n_allowed)
    rows = rng.choice(N_DOCS, n_allowed, replace=False)
    allowed = np.concatenate([doc_ids[rows], np.array([7, 8], dtype=np.int64)])  # unknown ids are ignored
    scores, ids = ivf.search_subset(queries, 10, allowed)
    got = ids[ids >= 0]
    assert np.isin(got, doc_ids[rows]).all()
    _, truth = exact_search(docs[rows], queries, 10, doc_ids[rows])
    overlap = np.mean([len(set(t) & set(g)) / 10 for t, g in zip(truth, ids)])
    if n_allowed <= ivf.config.subset_exact_max:
        assert overlap == 1.0
    else:
        assert overlap >= 0.85, overlap
    none_s, none_i = ivf.search_subset(queries[:2], 5, np.array([1, 2, 3], dtype=np.int64))
    assert (none_i == -1).all() and np.isneginf(none_s).all()


def test_search_subset_on_flat_matches_exact(flat, docs, doc_ids, queries):
    rows = np.arange(0, 5000, 2)  # 2500 ids: above subset_exact_max, so the FAISS selector runs
    _, ids = flat.search_subset(queries, 5, doc_ids[rows])
    _, truth = exact_search(docs[rows], queries, 5, doc_ids[rows])
    np.testing.assert_array_equal(ids, truth)


# --------------------------------------------------------------------------- persistence


def test_save_load_and_bytes_round_trip(ivf, queries, tmp_path):
    ivf.metadata["model"] = "two-tower-test"
    before = ivf.search(queries, 10, nprobe=8)
    before_r = ivf.range_search(queries[:10], 0.7)
    target = tmp_path / "idx"
    ivf.save(target)
    ivf.save(target)  # replacing an existing index works
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no temp dirs left behind
    for restored in (EmbeddingIndex.load(target), EmbeddingIndex.from_bytes(ivf.to_bytes())):
        assert restored.config == ivf.config and restored.metadata["model"] == "two-tower-test"
        assert (restored.ntotal, restored.dim) == (ivf.ntotal, ivf.dim)
        after = restored.search(queries, 10, nprobe=8)
        np.testing.assert_array_equal(after[1], before[1])
        np.testing.assert_array_equal(after[0], before[0])
        for (a_i, a_s), (b_i, b_s) in zip(restored.range_search(queries[:10], 0.7), before_r):
            np.testing.assert_array_equal(a_i, b_i)
            np.testing.assert_array_equal(a_s, b_s)
    with pytest.raises(EmbeddingIndexError, match="bad magic"):
        EmbeddingIndex.from_bytes(b"not an index")
    with pytest.raises(FileNotFoundError):
        EmbeddingIndex.load(tmp_path / "missing")


def test_stats(ivf, flat):
    s = ivf.stats()
    assert (s.kind, s.ntotal, s.nlist, s.pq_m, s.code_bytes_per_vector) == ("ivfpq", N_DOCS, 512, 16, 16.0)
    assert s.imbalance_factor is not None and s.imbalance_factor >= 1.0
    blob = len(ivf.to_bytes())
    assert 0.7 < s.memory_bytes / blob < 1.3, (s.memory_bytes, blob)
    f = flat.stats()
    assert f.kind == "flat" and f.code_bytes_per_vector == 4 * DIM
    assert 0.7 < f.memory_bytes / len(flat.to_bytes()) < 1.3


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors(flat, docs):
    good = docs[:100]
    ids = np.arange(100, dtype=np.int64)
    nan = good.copy()
    nan[7, 3] = np.nan
    zero = good.copy()
    zero[4] = 0
    cases = [
        (lambda: EmbeddingIndex.build(good[:0], ids[:0]), "empty corpus"),
        (lambda: EmbeddingIndex.build(nan, ids), "row 7"),
        (lambda: EmbeddingIndex.build(zero, ids), "all-zero"),
        (lambda: EmbeddingIndex.build(good, ids.astype(np.float64)), "int64"),
        (lambda: EmbeddingIndex.build(good, np.r_[ids[:-1], 3]), "unique"),
        (lambda: EmbeddingIndex.build(good, ids - 1), ">= 0"),
        (lambda: EmbeddingIndex.build(good, ids[:50]), "one id per vector"),
        (lambda: EmbeddingIndex.build(good, ids, IndexConfig(kind="ivfpq")), "use kind='flat'"),
        (lambda: flat.search(good[:, :32], 5), "dimension 32"),
        (lambda: flat.search(good, 0), "k must be a positive integer"),
        (lambda: flat.search(good, 5, nprobe=0), "nprobe"),
        (lambda: flat.range_search(good, 1.5), r"\[-1, 1\]"),
        (lambda: flat.range_search(good, 0.5, max_results=0), "max_results"),
        (lambda: flat.search_subset(good, 5, np.array([1.5])), "allowed_ids"),
        (lambda: exact_search(good, good[:, :10], 3), "dimension 10"),
    ]
    for call, message in cases:
        with pytest.raises(EmbeddingIndexError, match=message):
            call()


# --------------------------------------------------------------------------- automatic ANN tuning


def test_tuning_chooses_the_least_nprobe_meeting_the_target(docs, queries):
    from ann.recall import recall_at_k
    from ann.tuning import nprobe_ladder, tune_nprobe

    vectors = unit(docs[:8000])
    index = EmbeddingIndex.build(vectors, np.arange(len(vectors), dtype=np.int64),
                                 IndexConfig(kind="ivfpq", nlist=128, pq_m=16, nprobe=1), progress=False)
    assert nprobe_ladder(128, 2048) == [1, 2, 4, 8, 16, 32, 64, 128] and nprobe_ladder(100, 16) == [1, 2, 4, 8, 16]
    assert nprobe_ladder(100, 2048)[-1] == 100
    result = tune_nprobe(index, vectors, queries, k=10, target_recall=0.95)
    curve = {p.nprobe: p.recall for p in result.curve}
    assert result.met_target and curve[result.chosen_nprobe] >= 0.95
    below = [p for p in curve if p < result.chosen_nprobe]
    assert below and all(curve[p] < 0.95 for p in below)  # every cheaper nprobe misses the target
    assert max(curve) == 2 * result.chosen_nprobe  # one step past the choice is recorded, no more
    # the figures are real: the same recall when measured independently
    assert recall_at_k(index, vectors, queries, 10, nprobe=result.chosen_nprobe) == pytest.approx(
        curve[result.chosen_nprobe], abs=1e-4)
    index.set_default_nprobe(result.chosen_nprobe)
    assert index.config.nprobe == result.chosen_nprobe
    assert "(chosen)" in result.to_markdown()

    unreachable = tune_nprobe(index, vectors, queries, k=10, target_recall=1.0, max_nprobe=8)
    assert not unreachable.met_target and unreachable.chosen_nprobe == 8
    assert [p.nprobe for p in unreachable.curve] == [1, 2, 4, 8]
    flat = EmbeddingIndex.build(vectors[:500], np.arange(500, dtype=np.int64), IndexConfig(kind="flat"),
                                progress=False)
    with pytest.raises(ValueError, match="exact"):
        tune_nprobe(flat, vectors[:500], queries, k=10, target_recall=0.9)


# --------------------------------------------------------------------------- document shards


def test_sharded_exact_search_equals_one_index(docs, doc_ids, queries):
    from bench.shards import ShardedIndex, merge_top_k

    vectors, ids = docs[:6000], doc_ids[:6000]
    one = EmbeddingIndex.build(vectors, ids, IndexConfig(kind="flat"), progress=False)
    sharded = ShardedIndex.build(vectors, ids, 4, IndexConfig(kind="flat"))
    assert len(sharded.shards) == 4 and sharded.ntotal == 6000
    s1, i1 = one.search(queries, 10)
    s4, i4 = sharded.search(queries, 10)
    assert np.array_equal(i1, i4)
    np.testing.assert_allclose(s1, s4, atol=1e-6)
    # fewer results than k: padded with -1 / -inf, best first, ties by id
    s, i = merge_top_k([np.array([[0.5, 0.2]]), np.array([[0.5]])], [np.array([[7, 3]]), np.array([[2]])], 4)
    assert i.tolist() == [[2, 7, 3, -1]] and np.isneginf(s[0, 3])


def test_an_index_that_serves_worse_than_the_current_one_is_refused(docs, queries):
    """Above min_recall is not enough: a rebuild whose ANN recall falls more than max_recall_drop below the
    current version's (same kind of index, same k) is refused unless the operator accepts it; an exact current
    index does not hold a new IVF-PQ one to its recall of 1 (outgrowing the flat index is configured)."""
    from serving.index_validation import CurrentVersion, ValidationConfig, validate_index

    vectors = unit(docs[:8000])
    index = EmbeddingIndex.build(vectors, np.arange(len(vectors), dtype=np.int64),
                                 IndexConfig(kind="ivfpq", nlist=128, pq_m=16, nprobe=1), progress=False)
    config = ValidationConfig(min_recall=0.0)

    def check(current, cfg=config):
        return validate_index(index, vectors, queries, cfg, "documents", len(vectors), 1, {"all": len(vectors)},
                              current)

    alone = check(None)
    assert alone.passed and alone.recall_at_k < 0.9
    served = CurrentVersion("index/w@1", {"all": len(vectors)}, recall_at_k=0.95, k=10, kind="ivfpq")
    worse = check(served)
    assert not worse.passed and "would fall from 0.9500" in worse.failures[0]
    assert worse.current_recall_at_k == 0.95 and "of the current version" in worse.to_markdown()
    assert check(CurrentVersion("index/w@1", {"all": len(vectors)}, recall_at_k=alone.recall_at_k + 0.04,
                                k=10, kind="ivfpq")).passed  # within max_recall_drop
    assert check(CurrentVersion("index/w@1", {"all": len(vectors)}, recall_at_k=1.0, k=10, kind="flat")).passed
    accepted = check(served, ValidationConfig(min_recall=0.0, accept_drop=True))
    assert accepted.passed and "would fall" in accepted.accepted[0]


def test_an_index_that_loses_what_searchers_clicked_is_refused(docs, queries):
    """Held-out recall: the share of held-out queries whose clicked document the index returns in its top k.
    A rebuild that falls more than max_held_out_drop (relative) below the current version's is refused unless
    accepted; a document missing from the index counts as a miss."""
    from ann.recall import held_out_recall
    from serving.index_validation import CurrentVersion, ValidationConfig, validate_index

    vectors = unit(docs[:2000])
    index = EmbeddingIndex.build(vectors, np.arange(len(vectors), dtype=np.int64), IndexConfig(kind="flat"),
                                 progress=False)
    clicks = vectors[:100]  # each query is a document's own vector: its click is its top-1
    found = np.arange(100)
    assert held_out_recall(index, clicks, found, 10) == 1.0
    half_gone = np.where(found % 2 == 0, found, -1)  # half of the clicked documents are not in the index
    assert held_out_recall(index, clicks, half_gone, 10) == 0.5

    def check(targets, current, accept=False):
        return validate_index(index, vectors, clicks, ValidationConfig(min_recall=0.0, accept_drop=accept),
                              "held-out", len(vectors), 1, {"all": len(vectors)}, current, targets)

    served = CurrentVersion("index/w@1", {"all": len(vectors)}, recall_at_k=1.0, k=10, kind="flat",
                            held_out_recall_at_k=0.9)
    assert check(found, served).passed and check(found, None).held_out_recall_at_k == 1.0
    worse = check(half_gone, served)
    assert not worse.passed and "held-out recall@10 would fall from 0.9000" in worse.failures[0]
    assert "held-out recall@10" in worse.to_markdown() and worse.current_held_out_recall_at_k == 0.9
    accepted = check(half_gone, served, accept=True)
    assert accepted.passed and "held-out recall" in accepted.accepted[0]
    assert check(half_gone, CurrentVersion("index/w@1", {"all": len(vectors)}, k=10, held_out_recall_at_k=0.6)).passed
