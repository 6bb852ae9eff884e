"""The index rebuild: corpus selection as of a time, batch embedding to disk, the exact oracle, the flow under a
real (temporary) Prefect API, and publish atomicity (a failed validation, an upload failing mid-publish on S3).

The world is the tiny synthetic one with real Feast snapshots, a model trained for two epochs and registered in
the real artifact store (:func:`build_tiny_world`, shared with ``test_retriever.py``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ann.index import EmbeddingIndex, IndexConfig, exact_search
from features.index_selection import SelectionConfig
from infra.run_dirs import runs_root
from infra.settings import get_settings
from infra.storage import ArtifactStore, ArtifactVersion, S3Backend

pytestmark = pytest.mark.slow

DATASET = "tiny-rebuild"


# --------------------------------------------------------------------------- the tiny world (shared helpers)


@dataclass
class TinyWorld:
    dataset: str
    data: object  # CanonicalDataset
    repo: object  # FeatureRepo
    snapshot_days: list[date]
    model: object  # TwoTowerModel
    model_version: ArtifactVersion
    examples: pd.DataFrame


def build_tiny_world(dataset: str, snapshot_every_days: int = 6, epochs: int = 2, **model) -> TinyWorld:
    """Generate, snapshot (every few days, within the 7-day TTL), apply + materialize the newest day, build
    and publish examples through the real point-in-time join, train a tiny model and register it."""
    from examples.build import build_examples, fill_static_document_fields, join_features, write_splits
    from examples.splits import partition, split_cutoff
    from features.compute import as_of_for_day, compute_features
    from features.corpus import index_documents
    from features.store import FeatureRepo
    from ingest.contract import write_dataset
    from ingest.synthetic import WorldConfig, generate_world
    from models.config import LossConfig, ModelConfig, TrainConfig
    from models.registry import load_registered_model, register_model
    from models.train import train

    data = generate_world(WorldConfig.preset("tiny"))
    write_dataset(data, get_settings().data_dir / dataset, source="synthetic")
    repo = FeatureRepo.for_dataset(dataset)
    first, last = data.sessions["ts"].min().date() - timedelta(days=1), data.sessions["ts"].max().date()
    days, communities, day = [], {}, first
    while True:
        repo.write_sources(*compute_features(data, as_of_for_day(day), communities=communities), day=day)
        days.append(day)
        if day >= last:
            break
        day = min(day + timedelta(days=snapshot_every_days), last)
    repo.apply()
    repo.materialize(as_of_for_day(days[-2]), as_of_for_day(last))

    examples = join_features(build_examples(data.sessions, data.documents), repo)
    store = ArtifactStore.from_settings()
    out = get_settings().home / "runs" / "test-examples" / dataset
    write_splits(examples, out, {"dataset": dataset})
    examples_ref = store.publish("dataset", f"{dataset}-examples", out, {"feature_service": "v2"}).ref

    parts = partition(examples)
    cutoff = split_cutoff(parts, "valid")
    corpus = index_documents(pd.concat([repo.read_source("document", d) for d in days]), cutoff, include_later=False)
    config = TrainConfig(
        model=ModelConfig(trigram_buckets=4096, word_buckets=2048, bigram_buckets=2048, context_buckets=1024,
                          embedding_dim=16, hidden_dims=(64,), output_dim=32, **model),
        loss=LossConfig(n_corpus_negatives=64), batch_size=128, epochs=epochs, progress=False, num_threads=1,
    )
    result = train(fill_static_document_fields(parts["train"], corpus), parts["valid"], corpus, config,
                   get_settings().home / "runs" / "test-model" / dataset, feature_service="v2")
    register_model(result.model_path, f"{dataset}-two-tower", {"best": result.best_metric or 0.0}, config, "v2",
                   examples_ref)
    model, av = load_registered_model(f"{dataset}-two-tower")
    return TinyWorld(dataset, data, repo, days, model, av, examples)


def stage_plain(world: TinyWorld, dest: Path, selection: SelectionConfig | None = None,
                config: IndexConfig | None = None, as_of: date | None = None):
    """The flow's steps as plain calls (no Prefect): (staged dir, manifest, corpus, vectors, index)."""
    from ann.embedding import embed_documents_to_file
    from features.compute import FEATURE_TS
    from features.corpus import index_corpus, rebuild_time, snapshot_day_for
    from serving.index_store import IndexManifest, ModelRef, doc_map_frame, stage_index

    day = snapshot_day_for(world.snapshot_days, as_of)
    at = rebuild_time(as_of, day)
    corpus, report = index_corpus(world.data.documents, world.repo.read_source("document", day), at, selection)
    vectors = embed_documents_to_file(world.model, corpus, dest.parent / f"{dest.name}-vectors.npy",
                                      world.model.output_dim, batch_size=128, progress=False)
    index = EmbeddingIndex.build(vectors, np.arange(len(corpus)), config, progress=False)
    from serving.terms import TermIndex

    terms = TermIndex.build(corpus)
    staged = stage_index(index, doc_map_frame(corpus), dest, terms=terms)
    av = world.model_version
    manifest = IndexManifest(
        dataset=world.dataset, as_of=pd.Timestamp(at).isoformat(), snapshot_day=day.isoformat(),
        model=ModelRef(name=av.name, version=av.version, ref=av.ref), feature_service="v2",
        selection=report.model_dump(mode="json"), index_config=index.config.model_dump(mode="json"),
        stats=index.stats().to_dict(),
        counts={"canonical": len(world.data.documents), "selected": report.selected_count,
                "without_snapshot": int(corpus[FEATURE_TS].isna().sum()), "indexed": index.ntotal},
        validation={}, terms=terms.stats(),
    )
    return staged, manifest, corpus, vectors, index


@pytest.fixture(scope="module")
def world(home) -> TinyWorld:
    return build_tiny_world(DATASET)


def _markdown_artifact(key: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                     sort=ArtifactSort.CREATED_DESC)
    assert arts and arts[0].type == "markdown"
    return arts[0].data


# --------------------------------------------------------------------------- plain functions


def test_corpus_as_of_a_past_day_uses_that_days_snapshot(world):
    from features.compute import as_of_for_day
    from features.corpus import CorpusError, index_corpus, rebuild_time, snapshot_day_for

    days = world.snapshot_days
    past = days[2] + timedelta(days=2)  # between two snapshots
    assert snapshot_day_for(days, past) == days[2]
    assert snapshot_day_for(days, None) == days[-1]
    with pytest.raises(CorpusError, match="no document feature snapshot on or before"):
        snapshot_day_for(days, days[0] - timedelta(days=1))
    with pytest.raises(CorpusError, match="materialize flow"):
        snapshot_day_for([], None)

    at = rebuild_time(past, days[2])
    assert at == as_of_for_day(past)
    snapshot = world.repo.read_source("document", days[2])
    corpus, report = index_corpus(world.data.documents, snapshot, at, SelectionConfig.everything())
    docs = world.data.documents
    existing = docs[pd.to_datetime(docs["created_at"], utc=True) <= pd.Timestamp(at)]
    assert sorted(corpus["doc_id"]) == sorted(existing["doc_id"])
    assert report.steps[0].removed == len(docs) - len(existing)
    # aggregates come from the day's snapshot; documents created after it have none (yet)
    snap = snapshot.set_index("doc_id")
    have = corpus["feature_ts"].notna().to_numpy()
    assert (corpus.loc[have, "doc_id"].isin(snap.index)).all()
    assert corpus.loc[have, "member_count"].tolist() == snap.loc[corpus.loc[have, "doc_id"], "member_count"].tolist()
    assert (~have).sum() == len(set(existing["doc_id"]) - set(snap.index))
    assert corpus["title"].tolist() == existing.set_index("doc_id").loc[corpus["doc_id"], "title"].tolist()


def test_embedding_file_and_exact_oracle(world, tmp_path):
    from ann.embedding import embed_documents_to_file
    from ann.recall import exact_neighbours, recall_at_k
    from features.corpus import index_corpus

    corpus, _ = index_corpus(world.data.documents, world.repo.read_source("document", world.snapshot_days[-1]),
                             pd.Timestamp(world.snapshot_days[-1], tz="UTC") + pd.Timedelta(days=1))
    vectors = embed_documents_to_file(world.model, corpus, tmp_path / "v.npy", 32, batch_size=37, progress=False)
    assert isinstance(vectors, np.memmap) and vectors.shape == (len(corpus), 32)
    np.testing.assert_allclose(vectors, world.model.embed_documents(corpus), atol=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == ["v.npy"]  # no temp file left behind

    # the chunked oracle against a brute-force argsort on seeded data
    rng = np.random.default_rng(0)
    docs, queries = rng.normal(size=(1000, 16)).astype(np.float32), rng.normal(size=(20, 16)).astype(np.float32)
    unit = docs / np.linalg.norm(docs, axis=1, keepdims=True)
    truth = np.argsort(-(queries @ unit.T), axis=1)[:, :10]
    np.testing.assert_array_equal(exact_neighbours(docs, queries, 10, chunk=64), truth)
    assert exact_neighbours(docs[:3], queries, 10).shape == (20, 3)

    flat = EmbeddingIndex.build(vectors, np.arange(len(corpus)), IndexConfig(kind="flat"), progress=False)
    assert recall_at_k(flat, vectors, vectors[:50], 10) == 1.0
    coarse = EmbeddingIndex.build(docs, np.arange(len(docs)),
                                  IndexConfig(kind="ivfpq", nlist=16, nprobe=1, refine=False), progress=False)
    ours = recall_at_k(coarse, docs, queries, 10)
    assert 0.0 < ours < 1.0
    _, truth = exact_search(docs, queries, 10)  # the in-memory FAISS oracle agrees with the chunked one
    _, got = coarse.search(queries, 10)
    assert ours == pytest.approx(np.mean([len(np.intersect1d(t, g[g >= 0])) / 10 for t, g in zip(truth, got)]))


# --------------------------------------------------------------------------- the flow


@pytest.fixture(scope="module")
def published(prefect_harness, world) -> str:
    """A first index, published by the flow with default parameters."""
    from flows.rebuild_index import rebuild_index
    return rebuild_index(dataset=DATASET)


def test_flow_publishes_the_selected_documents_with_a_manifest(published, world):
    from flows.rebuild_index import RebuildParams, artifact_key, rebuild_index
    from serving.index_store import load_index
    from serving.index_validation import ValidationConfig

    selection = SelectionConfig.everything(doc_types=["group", "event"], min_members=3, member_doc_types=["group"])
    # a deliberate change of the corpus: the drop against the current version is accepted
    ref = rebuild_index(dataset=DATASET, params=RebuildParams(selection=selection,
                                                              validation=ValidationConfig(accept_drop=True)))
    assert ref != published

    # the expected corpus and removal counts, by hand on the canonical table and the newest snapshot
    docs = world.data.documents
    snap = world.repo.read_source("document", world.snapshot_days[-1]).set_index("doc_id")
    exists = pd.to_datetime(docs["created_at"], utc=True) <= pd.Timestamp(world.snapshot_days[-1] + timedelta(days=1),
                                                                         tz="UTC")
    typed = exists & docs["doc_type"].isin(["group", "event"])
    members = docs["doc_id"].map(snap["member_count"]).fillna(0)
    kept = typed & ~((docs["doc_type"] == "group") & (members < 3))
    removed = {"exists_as_of": int((~exists).sum()), "doc_types": int((exists & ~typed).sum()),
               "min_members": int((typed & ~kept).sum())}
    assert removed["doc_types"] > 0 and removed["min_members"] > 0  # the filters had work to do

    loaded = load_index(DATASET)
    m = loaded.manifest
    assert loaded.version.ref == ref and ArtifactStore.from_settings().get("index", DATASET).ref == ref
    assert {s["name"]: s["removed"] for s in m.selection["steps"]} == removed
    assert m.selection["selected_count"] == m.counts["indexed"] == loaded.index.ntotal == int(kept.sum())
    assert sorted(loaded.doc_map["doc_id"]) == sorted(docs.loc[kept, "doc_id"])
    titles = docs.set_index("doc_id")["title"]
    assert loaded.doc_map["title"].tolist() == titles.loc[loaded.doc_map["doc_id"]].tolist()
    assert m.model.ref == world.model_version.ref and m.feature_service == "v2"
    assert m.snapshot_day == world.snapshot_days[-1].isoformat()
    assert m.index_config["kind"] == "flat" and m.stats["ntotal"] == int(kept.sum())
    v = m.validation
    assert v["query_source"] == "held-out" and v["recall_at_k"] == 1.0 and v["failures"] == []
    assert 0.0 < v["held_out_recall_at_k"] <= 1.0  # held-out clicks the index serves in its top 10
    assert v["current_held_out_recall_at_k"] is not None and v["accepted"]  # compared with the full corpus
    assert v["index_bytes"] == loaded.version.total_size
    # the vectors are the document tower's embeddings of exactly these documents
    corpus = loaded.doc_map[["doc_id"]].merge(
        snap.reset_index(), on="doc_id", how="left"
    )
    import faiss

    flat = faiss.downcast_index(loaded.index.faiss_index.index)  # IndexFlatIP under the id map
    stored = flat.reconstruct_n(0, loaded.index.ntotal)
    np.testing.assert_allclose(stored, world.model.embed_documents(corpus), atol=1e-5)

    report = _markdown_artifact(artifact_key(DATASET))
    assert ref.split("@")[1] in report and "min_members" in report and "recall@10" in report
    # embeddings and staging removed after the run; the gate reports stay for the next run's comparison
    left = {p.relative_to(runs_root("rebuild-index", DATASET)).parts[1:] for p in runs_root("rebuild-index", DATASET).rglob("*") if p.is_file()}
    assert left and all(parts[0] == "gates" for parts in left), left


def test_failed_validation_publishes_nothing(published):
    from flows.rebuild_index import RebuildParams, artifact_key, rebuild_index
    from serving.index_validation import IndexValidationError, ValidationConfig

    store = ArtifactStore.from_settings()
    before = store.get("index", DATASET)
    n_versions = len(store.list_versions("index", DATASET))
    # a genuinely poor index: one IVF list scanned, PQ scores without re-ranking
    params = RebuildParams(index=IndexConfig(kind="ivfpq", nlist=16, nprobe=1, refine=False),
                           validation=ValidationConfig(min_recall=0.99), query_source="documents")
    with pytest.raises(IndexValidationError, match="previous index stays current") as err:
        rebuild_index(dataset=DATASET, params=params)
    v = err.value.validation
    assert 0.0 < v.recall_at_k < 0.99 and v.query_source == "document" and not v.passed
    assert store.get("index", DATASET).ref == before.ref
    assert len(store.list_versions("index", DATASET)) == n_versions
    assert "Not published" in _markdown_artifact(artifact_key(DATASET))


def test_rebuild_tunes_nprobe_and_the_gate_checks_it(published):
    """An IVF index gets the least nprobe that meets the target on tuning queries; the curve and the choice
    are in the manifest and the report; an explicit nprobe is kept as given."""
    from flows.rebuild_index import RebuildParams, artifact_key, rebuild_index
    from serving.index_store import load_index

    params = RebuildParams(index=IndexConfig(kind="ivfpq", nlist=32, pq_m=8), query_source="documents")
    rebuild_index(dataset=DATASET, params=params)
    loaded = load_index(DATASET)
    t, v = loaded.manifest.ann_tuning, loaded.manifest.validation
    assert t is not None and t["met_target"] and t["target_recall"] == pytest.approx(0.91)
    curve = {p["nprobe"]: p["recall"] for p in t["curve"]}
    assert curve[t["chosen_nprobe"]] >= 0.91 and all(r < 0.91 for n, r in curve.items() if n < t["chosen_nprobe"])
    assert loaded.index.config.nprobe == t["chosen_nprobe"] == v["nprobe"] == loaded.manifest.stats["nprobe"]
    assert v["recall_at_k"] >= 0.9 and v["failures"] == []  # the gate, on other queries, agrees
    report = _markdown_artifact(artifact_key(DATASET))
    assert "ANN tuning on" in report and "data:image/svg+xml;base64," in report  # the curve as a picture too
    import xml.etree.ElementTree as ET

    svg = ET.fromstring((loaded.path / "ann_tuning.svg").read_text())  # published with the index
    circles = [c for c in svg.iter("{http://www.w3.org/2000/svg}circle")]
    assert len(circles) == len(t["curve"]) and sum(c.get("r") == "6" for c in circles) == 1  # the choice marked

    explicit = RebuildParams(index=IndexConfig(kind="ivfpq", nlist=32, pq_m=8, nprobe=32), query_source="documents")
    rebuild_index(dataset=DATASET, params=explicit)
    loaded = load_index(DATASET)
    assert loaded.manifest.ann_tuning is None and loaded.index.config.nprobe == 32


def test_a_large_drop_against_the_current_version_is_refused_unless_accepted(published):
    """A rebuild whose corpus loses a document type (a broken input, or a real change) must not replace the
    current version silently: refused with the counts in the report, or published when the operator accepts."""
    from flows.rebuild_index import RebuildParams, artifact_key, rebuild_index
    from serving.index_store import load_index
    from serving.index_validation import IndexValidationError, ValidationConfig

    store = ArtifactStore.from_settings()
    rebuild_index(dataset=DATASET)  # a full corpus is current
    before = store.get("index", DATASET)
    only_groups = SelectionConfig.everything(doc_types=["group"])
    with pytest.raises(IndexValidationError, match="would drop") as err:
        rebuild_index(dataset=DATASET, params=RebuildParams(selection=only_groups))
    v = err.value.validation
    assert v.compared_with == before.ref and any(c["after"] == 0 and c["before"] > 0 for c in v.count_changes)
    assert store.get("index", DATASET).ref == before.ref  # nothing replaced it
    assert "Documents against the current version" in _markdown_artifact(artifact_key(DATASET))

    accepted = RebuildParams(selection=only_groups, validation=ValidationConfig(accept_drop=True))
    ref = rebuild_index(dataset=DATASET, params=accepted)
    loaded = load_index(DATASET)
    assert loaded.version.ref == ref and set(loaded.manifest.type_counts) == {"group"}
    assert loaded.manifest.validation["accepted"] and "Accepted by the operator" in _markdown_artifact(
        artifact_key(DATASET))
    rebuild_index(dataset=DATASET)  # restore the full corpus (a growth, not a drop)


def test_the_documents_gate_stops_a_drifted_rebuild_unless_the_operator_accepts(published, world):
    """rebuild-index reads the canonical documents through the gate before anything is embedded: every
    document moved to one city fails against the previous rebuild's report (nothing published), and
    RebuildParams.gates.accept_changes (`ebr rebuild-index --accept-changes`, `nightly --accept-changes`)
    publishes it with the acceptance recorded."""
    from flows.rebuild_index import RebuildParams, rebuild_index
    from ingest.contract import read_dataset, write_dataset
    from validation.gate import GateFailed
    from validation.suites import GateConfig

    store = ArtifactStore.from_settings()
    path = get_settings().dataset_path(DATASET)
    original = read_dataset(path)
    before = store.get("index", DATASET).ref
    moved = original.documents.assign(city=original.documents["city"].iloc[0])
    write_dataset(dataclasses.replace(original, documents=moved), path, source="synthetic")
    try:
        with pytest.raises(GateFailed, match="city"):
            rebuild_index(dataset=DATASET)
        assert store.get("index", DATASET).ref == before
        ref = rebuild_index(dataset=DATASET, params=RebuildParams(gates=GateConfig(accept_changes=True)))
        assert store.get("index", DATASET).ref == ref != before
    finally:
        write_dataset(original, path, source="synthetic")
    rebuild_index(dataset=DATASET, params=RebuildParams(gates=GateConfig(accept_changes=True)))  # back


def test_params_are_checked_where_they_enter():
    from pydantic import ValidationError

    from flows.rebuild_index import RebuildParams
    from serving.index_validation import ValidationConfig

    with pytest.raises(ValidationError, match="less than or equal to 1"):
        ValidationConfig(min_recall=1.5)
    with pytest.raises(ValidationError, match="query_source"):
        RebuildParams(query_source="sessions")
    with pytest.raises(ValidationError, match="extra"):
        RebuildParams(unknown=1)


# --------------------------------------------------------------------------- publish atomicity on S3


class FailingS3Backend(S3Backend):
    """S3 over moto's HTTP server whose uploads fail after the first ``ok`` files (a dropped connection)."""

    def __init__(self, *args, ok: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self.ok, self.uploads = ok, 0

    def upload_file(self, src, key, callback=None):
        if self.uploads >= self.ok:
            raise ConnectionError(f"injected failure uploading {key}")
        self.uploads += 1
        super().upload_file(src, key, callback)


def test_upload_failure_mid_publish_leaves_the_previous_index_current(world, s3_bucket, tmp_path):
    from serving.index_store import IndexNotPublishedError, current_index, load_index, publish_index, rollback_index

    def store(backend_cls=S3Backend, **kw) -> ArtifactStore:
        backend = backend_cls(s3_bucket.name, s3_bucket.prefix, endpoint_url=s3_bucket.endpoint_url,
                              region=s3_bucket.region, **kw)
        return ArtifactStore(backend, cache_dir=tmp_path / "cache")

    good = store()
    with pytest.raises(IndexNotPublishedError, match="run 'ebr rebuild-index --dataset"):
        current_index(DATASET, good)
    staged, manifest, corpus, _, _ = stage_plain(world, tmp_path / "v1")
    first = publish_index(good, DATASET, staged, manifest)

    groups = SelectionConfig.everything(doc_types=["group"])
    staged2, manifest2, corpus2, _, _ = stage_plain(world, tmp_path / "v2", selection=groups)
    flaky = store(FailingS3Backend, ok=1)
    with pytest.raises(ConnectionError, match="injected"):
        publish_index(flaky, DATASET, staged2, manifest2)
    assert flaky.backend.uploads == 1  # it really failed half way: one file of three was uploaded

    assert current_index(DATASET, good).version == first.version
    assert [v.version for v in good.list_versions("index", DATASET)] == [first.version]
    loaded = load_index(DATASET, good)  # readable, and the old content
    assert loaded.version.version == first.version
    assert loaded.doc_map["doc_id"].tolist() == corpus["doc_id"].tolist()
    assert len(good.backend.children(f"index/{DATASET}/versions/")) == 2  # the unlisted leftover
    assert len(good.gc_incomplete(min_age=timedelta(0))) == 1

    # a later good publish moves CURRENT; rollback brings the first one back
    second = publish_index(good, DATASET, staged2, manifest2)
    assert load_index(DATASET, good).doc_map["doc_id"].tolist() == corpus2["doc_id"].tolist()
    rollback_index(DATASET, first.version, good)
    assert load_index(DATASET, good).version.version == first.version
    assert [v.version for v in good.list_versions("index", DATASET)] == [first.version, second.version]


def test_publish_gate_rejects_files_that_do_not_belong_together(world, tmp_path):
    from serving.index_store import DOCS_FILE, IndexArtifactError, publish_index, read_doc_map

    store = ArtifactStore.from_url(str(tmp_path / "store"))
    staged, manifest, *_ = stage_plain(world, tmp_path / "bad")
    doc_map = read_doc_map(staged / DOCS_FILE)
    doc_map.iloc[:-1].to_parquet(staged / DOCS_FILE)  # one document short
    with pytest.raises(IndexArtifactError, match="maps"):
        publish_index(store, DATASET, staged, manifest)
    assert store.list_versions("index", DATASET) == [] and store.current("index", DATASET) is None
