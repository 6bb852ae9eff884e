"""The retriever over a published index of the tiny world: answers checked against exact cosine scores computed
offline from the same model and the newest feature snapshot, radius mode, constrained search, errors, CLI.

The index is published with the plain functions (no Prefect needed); the searcher features come from the real
Feast online store (SQLite) of the world.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.schema import searcher_column
from infra.storage import ArtifactStore
from tests.test_rebuild_index import TinyWorld, build_tiny_world, stage_plain

pytestmark = pytest.mark.slow

DATASET = "tiny-retriever"
QUERY = "munich runners club"


@pytest.fixture(scope="module")
def world(home) -> TinyWorld:
    return build_tiny_world(DATASET, epochs=1)


@pytest.fixture(scope="module")
def index_parts(world, home):
    from serving.index_store import publish_index

    staged, manifest, corpus, vectors, _ = stage_plain(world, home / "staging" / "index")
    publish_index(ArtifactStore.from_settings(), DATASET, staged, manifest)
    return corpus, np.asarray(vectors)


@pytest.fixture(scope="module")
def retriever(index_parts):
    from serving.retriever import Retriever

    return Retriever.load(DATASET)


@pytest.fixture(scope="module")
def searcher_id(world) -> str:
    return str(world.data.sessions["searcher_id"].iloc[0])


def exact_scores(world, index_parts, query: str, searcher_id: str) -> pd.Series:
    """Cosine of every indexed document for the query, from the newest offline snapshot (what the online store
    was materialized from), sorted best first."""
    corpus, vectors = index_parts
    snap = world.repo.read_source("searcher", world.snapshot_days[-1]).set_index("searcher_id").loc[searcher_id]
    names = ("city", "region", "country", "language", "clusters", "clusters_weights", "friend_count",
             "history", "history_weights", "profile", "profile_weights")
    frame = pd.DataFrame({"query": [query], "searcher_id": [searcher_id],
                          **{searcher_column(n): [snap[n]] for n in names}})
    q = world.model.embed_queries(frame)[0]
    scores = pd.Series(vectors @ q, index=corpus["doc_id"].to_numpy())
    return scores.sort_values(ascending=False, kind="stable")


def test_top_k_matches_exact_cosine(world, index_parts, retriever, searcher_id):
    found = retriever.retrieve(QUERY, searcher_id, k=10)
    exact = exact_scores(world, index_parts, QUERY, searcher_id)
    assert [c.rank for c in found] == list(range(1, 11))
    assert [c.doc_id for c in found] == list(exact.index[:10])
    np.testing.assert_allclose([c.score for c in found], exact.to_numpy()[:10], atol=1e-5)
    titles = world.data.documents.set_index("doc_id")["title"]
    assert [c.title for c in found] == [titles[c.doc_id] for c in found]
    # the searcher matters: another searcher's features change the query embedding
    other = str(world.data.sessions.loc[world.data.sessions["searcher_id"] != searcher_id, "searcher_id"].iloc[0])
    assert [c.score for c in retriever.retrieve(QUERY, other, k=10)] != [c.score for c in found]


def test_batched_retrieval_equals_one_query_at_a_time(world, retriever):
    from serving.errors import UnknownSearcherError

    sessions = world.data.sessions.dropna(subset=["query"]).head(80)  # more than the featurizer's small path
    queries, searchers = sessions["query"].tolist(), sessions["searcher_id"].astype(str).tolist()
    batch = retriever.retrieve_many(queries, searchers, k=7)
    assert len(batch) == len(queries)
    for q, s, got in zip(queries, searchers, batch):
        one = retriever.retrieve(q, s, k=7)
        assert [c.doc_id for c in got] == [c.doc_id for c in one]
        np.testing.assert_allclose([c.score for c in got], [c.score for c in one], atol=1e-5)
    with pytest.raises(UnknownSearcherError, match="no-such-searcher"):
        retriever.retrieve_many(queries[:2], [searchers[0], "no-such-searcher"])
    assert retriever.retrieve_many([], []) == []


def test_radius_mode_returns_exactly_the_documents_above_the_radius(world, index_parts, retriever, searcher_id):
    exact = exact_scores(world, index_parts, QUERY, searcher_id).to_numpy()
    radius = float((exact[4] + exact[5]) / 2)  # between the 5th and 6th best
    found = retriever.retrieve(QUERY, searcher_id, k=50, radius=radius)
    assert len(found) == 5 and all(c.score >= radius for c in found)
    assert [c.doc_id for c in found] == [c.doc_id for c in retriever.retrieve(QUERY, searcher_id, k=5)]
    assert len(retriever.retrieve(QUERY, searcher_id, k=3, radius=radius)) == 3  # k caps radius results
    assert retriever.retrieve(QUERY, searcher_id, k=10, radius=float(min(1.0, exact[0] + 1e-3))) == []


def test_candidates_within_an_allowed_set(world, index_parts, retriever, searcher_id):
    from serving.request import NNRequest

    exact = exact_scores(world, index_parts, QUERY, searcher_id)
    allowed = list(exact.index[::7][:30]) + ["no-such-doc"]
    request = NNRequest(QUERY, searcher_id, k=5)
    found = retriever.candidates_within(request, allowed)
    inside = exact[exact.index.isin(allowed)]
    assert [c.doc_id for c in found] == list(inside.index[:5])
    np.testing.assert_allclose([c.score for c in found], inside.to_numpy()[:5], atol=1e-5)
    radius = float(inside.iloc[1] - 1e-6)
    q = retriever.embed(NNRequest(QUERY, searcher_id, k=5, radius=radius))
    assert [c.doc_id for c in retriever.candidates_within(NNRequest(QUERY, searcher_id, k=5, radius=radius),
                                                          allowed, query_vector=q)] == list(inside.index[:2])
    assert retriever.candidates_within(request, ["no-such-doc"]) == []


def test_ivfpq_version_pinned_while_rolled_back(world, index_parts, retriever, searcher_id, home):
    from ann.index import IndexConfig
    from serving.index_store import publish_index, rollback_index
    from serving.retriever import Retriever

    store = ArtifactStore.from_settings()
    flat_version = retriever.version.version
    staged, manifest, *_ = stage_plain(world, home / "staging" / "ivfpq", config=IndexConfig(kind="ivfpq", nlist=16))
    ivf_version = publish_index(store, DATASET, staged, manifest).version
    rollback_index(DATASET, flat_version)  # serving stays on the flat index ...
    assert store.get("index", DATASET).version == flat_version
    ivf = Retriever.load(DATASET, version=ivf_version)  # ... while the new one is tried side by side
    assert ivf.index.kind == "ivfpq" and ivf.index.config.refine

    exact = exact_scores(world, index_parts, QUERY, searcher_id)
    radius = float(exact.iloc[9])
    found = ivf.retrieve(QUERY, searcher_id, k=100, radius=radius, nprobe=16)
    assert found and all(c.score >= radius for c in found)
    assert {c.doc_id for c in found} <= set(exact.index[:10])
    # refined scores are the exact cosines, so they can feed a ranking stage as they are
    np.testing.assert_allclose([c.score for c in found], exact[[c.doc_id for c in found]].to_numpy(), atol=1e-5)


def test_request_errors_say_what_is_allowed(retriever, searcher_id):
    from serving.errors import EmptyQueryError, InvalidRequestError, UnknownSearcherError

    with pytest.raises(UnknownSearcherError, match="'nobody' has no features.*materialize"):
        retriever.retrieve(QUERY, "nobody")
    for empty in ("", "   "):
        with pytest.raises(EmptyQueryError, match="empty query"):
            retriever.retrieve(empty, searcher_id)
    with pytest.raises(InvalidRequestError, match=r"k must be an integer in \[1"):
        retriever.retrieve(QUERY, searcher_id, k=0)
    with pytest.raises(InvalidRequestError, match=r"radius .* \[-1, 1\]"):
        retriever.retrieve(QUERY, searcher_id, radius=1.5)
    with pytest.raises(InvalidRequestError, match="nprobe must be a positive integer"):
        retriever.retrieve(QUERY, searcher_id, nprobe=0)


def test_load_errors_say_what_to_run(world, index_parts, home, tmp_path):
    from features.store import FeatureRepo
    from serving.errors import FeatureStoreNotFoundError, IndexNotFoundError, ModelNotFoundError
    from serving.index_store import publish_index
    from serving.retriever import Retriever

    with pytest.raises(IndexNotFoundError, match="run 'ebr rebuild-index --dataset no-such-dataset' first"):
        Retriever.load("no-such-dataset")
    with pytest.raises(FeatureStoreNotFoundError, match="run the materialize flow"):
        Retriever.load(DATASET, feature_repo=FeatureRepo(tmp_path / "empty"))

    # an index whose manifest names a model version the registry does not have
    store = ArtifactStore.from_url(str(tmp_path / "store"))
    staged, manifest, *_ = stage_plain(world, tmp_path / "ghost")
    ghost = manifest.model.model_copy(update={"name": "ghost-model", "ref": "model/ghost-model@x"})
    publish_index(store, DATASET, staged, manifest.model_copy(update={"model": ghost}))
    with pytest.raises(ModelNotFoundError, match="not in the model registry"):
        Retriever.load(DATASET, store=store)


def test_cli_search_prints_a_ranked_table(world, retriever, searcher_id):
    import faiss
    import torch
    from typer.testing import CliRunner

    from cli.main import app

    threads = (torch.get_num_threads(), faiss.omp_get_max_threads())
    try:
        result = CliRunner().invoke(app, ["search", "--dataset", DATASET, "--searcher", searcher_id, QUERY, "--k", "3"])
        assert result.exit_code == 0, result.output
        top = retriever.retrieve(QUERY, searcher_id, k=3)
        lines = result.output.splitlines()
        assert lines[0].startswith("3 candidates (top 3) from index/" + DATASET)
        assert lines[1].split() == ["rank", "score", "via", "doc_id", "title"]
        for line, c in zip(lines[2:], top):
            assert line.split()[:4] == [str(c.rank), f"{c.score:.4f}", "nn", c.doc_id] and line.endswith(c.title)

        radius = top[1].score - 1e-4
        result = CliRunner().invoke(app, ["search", "--dataset", DATASET, "--searcher", searcher_id, QUERY,
                                          "--radius", str(radius)])
        assert result.exit_code == 0 and result.output.startswith(f"2 candidates (radius {radius})")

        result = CliRunner().invoke(app, ["search", "--dataset", DATASET, "--searcher", "nobody", QUERY])
        assert result.exit_code == 2 and "error: searcher 'nobody' has no features" in result.output
        result = CliRunner().invoke(app, ["search", "--dataset", "no-such-dataset", "--searcher", "x", QUERY])
        assert result.exit_code == 2 and "ebr rebuild-index --dataset no-such-dataset" in result.output
        for bad in (["--as-of", "2024-13-01"], ["--kind", "hnsw"]):  # refused before any flow runs
            result = CliRunner().invoke(app, ["rebuild-index", "--dataset", DATASET, *bad])
            assert result.exit_code == 2 and "Invalid value" in result.output, result.output
    finally:
        torch.set_num_threads(threads[0])
        faiss.omp_set_num_threads(threads[1])


# --------------------------------------------------------------------------- hybrid retrieval


def test_hybrid_search_builds_the_papers_expression_and_scores_every_candidate(retriever, world, index_parts,
                                                                              searcher_id):
    from serving.query import Or, parse
    from serving.terms import document_terms

    corpus, _ = index_parts
    result = retriever.search(QUERY, searcher_id, k=20)
    expr = result.expression
    assert expr.startswith("(and (or (term location:") and "(or (and (term text:munich) (term text:runners) " \
        "(term text:club)) (nn " in expr
    exact = exact_scores(world, index_parts, QUERY, searcher_id)
    found = result.candidates
    assert found and [c.rank for c in found] == list(range(1, len(found) + 1))
    np.testing.assert_allclose([c.score for c in found], exact[[c.doc_id for c in found]].to_numpy(), atol=1e-5)
    # every candidate is in the searcher's scope (its city or one of its clusters)
    terms = document_terms(corpus).groupby("position")["term"].agg(set)
    pos = pd.Series(np.arange(len(corpus)), index=corpus["doc_id"].to_numpy())
    where = parse(expr).children[0]  # (and <scope> <text or nn>)
    scope = {t.term for t in where.children} if isinstance(where, Or) else {where.term}
    for c in found:
        assert terms[pos[c.doc_id]] & scope, (c.doc_id, scope)
        if c.source == "term":  # found by the text branch alone: holds every query word
            assert {"text:munich", "text:runners", "text:club"} <= terms[pos[c.doc_id]]


def test_an_expression_constrains_the_nn_operator(retriever, world, index_parts, searcher_id):
    corpus, _ = index_parts
    key = retriever.manifest.model.name
    result = retriever.search(QUERY, searcher_id, k=5, expression=f"(and (term type:group) (nn {key} :k 5))")
    exact = exact_scores(world, index_parts, QUERY, searcher_id)
    groups = set(corpus.loc[corpus["doc_type"] == "group", "doc_id"])
    expected = [d for d in exact.index if d in groups][:5]
    assert [c.doc_id for c in result.candidates] == expected and all(c.source == "nn" for c in result.candidates)


def test_hybrid_errors_are_clear(retriever, searcher_id):
    from serving.engine import UnknownModelKeyError
    from serving.query import QuerySyntaxError

    with pytest.raises(QuerySyntaxError, match="position"):
        retriever.search(QUERY, searcher_id, expression="(and (term type:group)")
    with pytest.raises(UnknownModelKeyError, match="known keys"):
        retriever.search(QUERY, searcher_id, expression="(nn nope :k 3)")


SERVING_IMPORT = """
import sys
from infra.patches import without_runtime_type_checks
first = without_runtime_type_checks()
import feast.feature_service as fs
again = without_runtime_type_checks()  # feast is imported now: too late, nothing to do
checked = "check_argument_types_internal" in fs.FeatureService.__init__.__code__.co_names
print(first, again, checked)
"""


@pytest.mark.parametrize("env, expected", [("", "True False False"), ("1", "False False True")])
def test_a_serving_process_imports_feast_without_its_development_type_checks(env, expected):
    """typeguard's decorator recompiles Feast's classes at import (~2 s of every `ebr search`); a serving
    process skips it, as `python -O` would, unless EBR_FEAST_TYPECHECKS=1."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    out = subprocess.run([sys.executable, "-c", SERVING_IMPORT], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parent.parent, env={**os.environ, "EBR_FEAST_TYPECHECKS": env})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[-2] == expected
