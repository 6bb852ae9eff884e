"""The mine and ensemble flows end to end on the tiny world, under a real (temporary) Prefect API: rounds
register versions, a re-run resumes instead of redoing them, ensembles register and `rebuild-index` and the
retriever serve them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ann.index import IndexConfig
from infra.storage import ArtifactStore
from models.config import LossConfig, ModelConfig, TrainConfig
from models.mining import MiningConfig

pytestmark = pytest.mark.slow

DATASET = "tiny-mine"
TINY = ModelConfig(trigram_buckets=4096, word_buckets=2048, bigram_buckets=2048, context_buckets=1024,
                   embedding_dim=16, hidden_dims=(64,), output_dim=32)


def tiny_config(**kw) -> TrainConfig:
    base = dict(model=TINY, loss=LossConfig(n_corpus_negatives=64), batch_size=128, epochs=2, progress=False,
                num_threads=1, early_stopping_patience=3)
    return TrainConfig(**{**base, **kw})


def mine_params(**kw):
    from flows.mine import MineParams

    base = dict(rounds=2, config=tiny_config(), stop_early=False, max_eval_sessions=300,
                mining=MiningConfig(rank_window=(11, 100), negatives_per_example=8, exact_check_queries=50,
                                    index=IndexConfig(kind="ivfpq", nlist=16, pq_m=8, nprobe=8)))
    return MineParams(**{**base, **kw})


@pytest.fixture(scope="module")
def world(home, prefect_harness):
    from flows.train import TrainParams, train
    from flows.training_data import training_data
    from tests.worlds import snapshot_tiny_world

    data = snapshot_tiny_world(DATASET, online=True)  # online: the retriever serves from it
    training_data(dataset=DATASET)
    base_ref = train(dataset=DATASET, params=TrainParams(config=tiny_config(), max_eval_sessions=300))
    return data, base_ref


@pytest.fixture(scope="module")
def mined(world):
    from flows.mine import mine

    return mine(dataset=DATASET, params=mine_params())


def test_mine_flow_runs_two_rounds_and_registers_each(world, mined):
    store = ArtifactStore.from_settings()
    _, base_ref = world
    rounds = store.list_versions("model", f"{DATASET}-two-tower-hnm")
    assert [v.metadata["mining_run"]["round"] for v in rounds] == [1, 2]
    for v in rounds:
        run = v.metadata["mining_run"]
        assert run["mining"]["examples_with_negatives"] > 0 and run["valid"]["recall@10"] >= 0
        assert v.metadata["examples"].startswith(f"dataset/{DATASET}-examples-hnm@")
        assert v.metadata["config"]["loss"]["extra_negatives"] == ["hard_negatives"]
        assert v.metadata["config"]["loss"]["easy_hard_ratio"] == 100.0
    # the round's examples are published and carry the mined column, training split only
    ex = store.get("dataset", f"{DATASET}-examples-hnm", rounds[0].metadata["examples"].rsplit("@", 1)[1])
    local = store.fetch("dataset", ex.name, ex.version)
    train = pd.read_parquet(local / "train.parquet")
    assert train["hard_negatives"].map(len).gt(0).mean() > 0.5
    assert not any(d in set(n) for d, n in zip(train["doc_id"], train["hard_negatives"]))
    # the flow's answer: a promoted new version of the base model, or the base model itself
    current = store.get("model", f"{DATASET}-two-tower")
    assert mined == current.ref
    if mined != base_ref:
        assert current.metadata["promoted_from"] in {v.ref for v in rounds}


def test_a_rerun_resumes_finished_rounds_instead_of_redoing_them(world, mined):
    from flows.mine import mine

    store = ArtifactStore.from_settings()
    before = [v.version for v in store.list_versions("model", f"{DATASET}-two-tower-hnm")]
    # The same run (same start model, examples and parameters): nothing is mined or trained again.
    store.set_current("model", f"{DATASET}-two-tower", world[1].rsplit("@", 1)[1])
    mine(dataset=DATASET, params=mine_params())
    after = [v.version for v in store.list_versions("model", f"{DATASET}-two-tower-hnm")]
    assert after == before


def test_a_round_that_crashed_in_training_resumes_from_its_published_examples(world, mined, monkeypatch):
    import flows.mine as mine_module

    store = ArtifactStore.from_settings()
    params = mine_params(rounds=1, easy_hard_ratio=50.0)  # another run: another key
    examples_before = len(store.list_versions("dataset", f"{DATASET}-examples-hnm"))
    models_before = len(store.list_versions("model", f"{DATASET}-two-tower-hnm"))

    def crash(*args, **kwargs):
        raise RuntimeError("killed while training")

    monkeypatch.setattr(mine_module.fit, "fn", crash)
    with pytest.raises(RuntimeError, match="killed"):
        mine_module.mine(dataset=DATASET, params=params)
    assert len(store.list_versions("dataset", f"{DATASET}-examples-hnm")) == examples_before + 1
    assert len(store.list_versions("model", f"{DATASET}-two-tower-hnm")) == models_before
    monkeypatch.undo()

    mine_module.mine(dataset=DATASET, params=params)
    # the re-run trained on the examples the crashed run published: no second mining of round 1
    assert len(store.list_versions("dataset", f"{DATASET}-examples-hnm")) == examples_before + 1
    versions = store.list_versions("model", f"{DATASET}-two-tower-hnm")
    assert len(versions) == models_before + 1
    assert versions[-1].metadata["examples"] == store.list_versions("dataset", f"{DATASET}-examples-hnm")[-1].ref


def test_mined_round_gate_stops_bad_mining_before_training(world, mined):
    from flows.mine import mine
    from validation.gate import GateFailed
    from validation.suites import MinedGateConfig

    store = ArtifactStore.from_settings()
    before = len(store.list_versions("model", f"{DATASET}-two-tower-hnm"))
    # a window inside the positives and a gate that demands nearly no false negatives: refused
    params = mine_params(rounds=1, gate=MinedGateConfig(max_false_negative_share=0.0),
                         mining=MiningConfig(strategy="hardest", rank_window=(1, 20), index=IndexConfig(kind="flat"),
                                             exact_check_queries=0))
    with pytest.raises(GateFailed, match="false negatives"):
        mine(dataset=DATASET, params=params)
    assert len(store.list_versions("model", f"{DATASET}-two-tower-hnm")) == before


@pytest.mark.parametrize("kind,members", [("weighted_concat", ("unified", "hnm")), ("cascade", ("text", "unified"))])
def test_ensemble_flow_registers_a_model_that_rebuild_and_search_serve(world, mined, kind, members):
    from flows.ensemble import EnsembleParams, ensemble
    from flows.rebuild_index import rebuild_index
    from serving.retriever import Retriever

    params = EnsembleParams(kind=kind, members=members, member_config=tiny_config(), max_eval_sessions=300,
                            rerank_grid=(10, 50), model_name=f"{DATASET}-{kind.replace('_', '-')}")
    ref = ensemble(dataset=DATASET, params=params)
    store = ArtifactStore.from_settings()
    av = store.get("model", params.model_name)
    assert av.ref == ref and av.metadata["model_file"] == "ensemble.json"
    assert len(av.metadata["ensemble"]["members"]) == 2 and av.metadata["metrics"]["recall@10"] > 0
    assert set(av.metadata["comparison"]) and all(v["recall@10"] >= 0 for v in av.metadata["comparison"].values())

    from flows.evaluate import evaluate

    again = evaluate(dataset=DATASET, model_name=params.model_name)  # the evaluate flow serves it too
    assert again["recall@10"] == pytest.approx(av.metadata["metrics"]["recall@10"], abs=1e-9)

    index_ref = rebuild_index(dataset=DATASET, model_name=params.model_name)
    retriever = Retriever.load(DATASET, threads=1)
    assert retriever.manifest.model.ref == ref and index_ref.endswith(retriever.version.version)
    data, _ = world
    s = data.sessions.dropna(subset=["query"]).iloc[0]
    hits = retriever.retrieve(s["query"], s["searcher_id"], k=10)
    assert len(hits) == 10
    scores = [h.score for h in hits]
    if kind == "cascade":  # re-ranked by the second stage: its cosines, best first
        assert scores == sorted(scores, reverse=True) and retriever.rescore is not None
        model = retriever.model
        frame = retriever.query_record(retriever_request(s))
        q2 = model.rescore_queries(frame)[0]
        d2 = np.asarray(retriever.rescore[retriever.positions_of([h.doc_id for h in hits])])
        assert np.allclose(d2 @ q2, scores, atol=1e-5)
    else:
        assert retriever.index.dim == 64  # two 32-d members side by side


def test_a_seed_ensemble_trains_its_missing_members_and_registers(world):
    """`ebr ensemble --members unified,seed1`: the alias trains the unified recipe with seed 1 under its own
    name (what `ebr train --seed 1 --model-name NAME` does), another model of the same recipe, and the
    weighted concatenation of both runs registers."""
    import torch

    from flows.ensemble import EnsembleParams, ensemble
    from models.registry import load_registered_model

    with pytest.raises(ValueError, match="seedN"):
        EnsembleParams(members=("unified", "seed1/../x"))
    params = EnsembleParams(members=("unified", "seed1"), member_config=tiny_config(), max_eval_sessions=300,
                            model_name=f"{DATASET}-seeds")
    ref = ensemble(dataset=DATASET, params=params)
    first, _ = load_registered_model(f"{DATASET}-two-tower", None)
    second, av = load_registered_model(f"{DATASET}-two-tower-seed1", None)
    assert av.metadata["config"]["seed"] == 1  # saved with the model
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys() and not all(torch.equal(a[k], b[k]) for k in a)  # another run
    meta = ArtifactStore.from_settings().get("model", params.model_name).metadata
    members = meta["config"]["members"]
    assert ref and [m["ref"] for m in meta["ensemble"]["members"]] == members and len(members) == 2
    assert members[1] == av.ref and meta["metrics"]["recall@10"] > 0  # the seed-1 run is the second member


def retriever_request(session):
    from serving.request import NNRequest

    return NNRequest(session["query"], session["searcher_id"], 10)
