"""The nightly index rebuild: selected documents -> batch embedding -> FAISS index -> validation -> publish.

Steps: read the canonical documents and the newest document feature snapshot not after ``as_of`` -> apply the
index selection filters (the report says how many each removed) -> load the current registered model ->
embed the corpus with the document tower in batches, streamed to a file on disk -> build the index
(``IndexConfig.for_corpus`` defaults, overrides in the params) -> validate (ANN recall@k against exact
search on held-out queries, counts, size) -> publish ``index/<dataset>`` with its manifest and doc-id
mapping -> the index stats and validation as a Prefect markdown artifact.

A failed validation publishes nothing: the previous version stays current (and every earlier version stays
available for rollback). The work is done by plain functions in ``serving/``;
only I/O steps retry.
"""

from __future__ import annotations

import re
import shutil
import time
from datetime import date, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict, Field

from ann.embedding import embed_documents_to_file, embed_rows, shard_bounds, write_vectors_to_file
from ann.index import EmbeddingIndex, IndexConfig
from ann.tuning import TuningConfig, TuningResult, tune_nprobe
from features.corpus import NO_CLICKS, index_corpus, rebuild_time, snapshot_day_for
from features.index_selection import CLICK_WINDOW_DAYS, SelectionConfig, SelectionReport, session_clicks
from features.store import FeatureRepo
from flows.gates import gate_inputs
from flows.housekeeping import clean_up_leftovers
from flows.runners import cached_model, task_runner
from infra.names import default_model_name
from infra.retries import retry_transient
from infra.run_dirs import MARKER, finish_run_dir, new_run_dir, runs_root
from infra.settings import get_settings
from infra.storage import ArtifactStore
from ingest.contract import read_dataset, read_table
from models.ensemble import is_cascade
from models.registry import load_registered_model
from serving.index_store import (
    IndexManifest,
    ModelRef,
    current_version,
    doc_map_frame,
    publish_index,
    stage_index,
    staged_size,
)
from serving.index_validation import (
    IndexValidation,
    IndexValidationError,
    ValidationConfig,
    held_out_sample,
    sample_rows,
    validate_index,
)
from serving.terms import TermIndex
from validation.suites import GateConfig

QuerySource = Literal["auto", "held_out", "documents"]
STALE_SNAPSHOT_DAYS = 7  # the feature views' TTL: older snapshots count as missing features in Feast too


class RebuildParams(BaseModel):
    """How to select, embed, index and validate."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    selection: SelectionConfig = Field(default_factory=SelectionConfig, description="index selection filters")
    index: IndexConfig = Field(
        default_factory=IndexConfig,
        description="index parameters; fields left None are sized from the corpus (IndexConfig.for_corpus)",
    )
    validation: ValidationConfig = Field(default_factory=ValidationConfig, description="the publish gate")
    gates: GateConfig = Field(
        default_factory=GateConfig, description="the input gate of the documents read (accept_changes: an "
        "operator accepts tonight's drift and row counts; the gate report records it)",
    )
    tuning: TuningConfig = Field(default_factory=TuningConfig,
                                 description="automatic ANN tuning: the least nprobe meeting a recall target")
    query_source: QuerySource = Field(
        "auto",
        description="validation queries: held_out (the model's test examples through the query tower), "
        "documents (document embeddings as queries), auto (held_out when the model names its examples)",
    )
    embed_batch_size: int = Field(8192, ge=1, le=1_000_000, description="documents per embedding batch")
    embed_shards: int = Field(
        1, ge=1, le=4096,
        description="documents are embedded by this many mapped tasks (spread over a Dask cluster with "
                    "EBR_DASK_ADDRESS); 1 embeds in the flow's process")


def artifact_key(dataset: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", f"rebuild-index-{dataset}".lower()).strip("-")


# --------------------------------------------------------------------------- tasks


@task(retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=2, cache_policy=NO_CACHE)
def read_inputs(dataset: str, as_of: date | None) -> tuple[pd.DataFrame, pd.DataFrame, date]:
    """(canonical documents, the document snapshot, its day)."""
    path = get_settings().dataset_path(dataset)
    if not path.is_dir():
        raise FileNotFoundError(f"no canonical dataset {dataset!r} at {path}; run 'ebr generate' or 'ebr ingest'")
    documents = read_dataset(path, tables=("documents",)).documents
    repo = FeatureRepo.for_dataset(dataset)
    day = snapshot_day_for(repo.source_days("document"), as_of)
    return documents, repo.read_source("document", day), day


@task(retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=2, cache_policy=NO_CACHE)
def read_clicks(dataset: str, documents: pd.DataFrame, at: datetime, selection: SelectionConfig) -> pd.DataFrame:
    """The clicks that decide the selection (:meth:`SelectionConfig.resolved`): those of the sessions in the
    window before ``at``, read only where the selection depends on them."""
    if selection.upcoming_events != "auto" or "starts_at" not in documents.columns:
        return NO_CLICKS
    sessions = read_table(get_settings().dataset_path(dataset), "sessions", columns=["ts", "clicked"])
    ts = pd.to_datetime(sessions["ts"], utc=True)
    recent = (ts <= pd.Timestamp(at)) & (ts > pd.Timestamp(at) - pd.Timedelta(days=CLICK_WINDOW_DAYS))
    return session_clicks(sessions[recent.to_numpy()])


@task(cache_policy=NO_CACHE)
def select_corpus(documents: pd.DataFrame, snapshot: pd.DataFrame, at: datetime, selection: SelectionConfig,
                  clicks: pd.DataFrame):
    return index_corpus(documents, snapshot, at, selection, clicks)


@task(retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=5, cache_policy=NO_CACHE)
def load_model(model_name: str):
    return load_registered_model(model_name)


@task(cache_policy=NO_CACHE)
def embed_corpus(model, corpus: pd.DataFrame, path: Path, batch_size: int) -> np.ndarray:
    return embed_documents_to_file(model, corpus, path, model.output_dim, batch_size)


@task(cache_policy=NO_CACHE)
def embed_shard(model_name: str, version: str, rows: pd.DataFrame, dim: int, batch_size: int) -> np.ndarray:
    """One shard of the corpus through the registered model (loaded once per worker process)."""
    import torch

    torch.set_num_threads(1)  # one shard per worker core
    return embed_rows(cached_model(model_name, version), rows, dim, batch_size)


def embed_corpus_sharded(model_name: str, version: str, dim: int, corpus: pd.DataFrame, path: Path,
                         params: "RebuildParams") -> np.ndarray:
    """The corpus embedded by ``params.embed_shards`` mapped tasks (on the flow's task runner: threads here,
    a Dask cluster with EBR_DASK_ADDRESS), written in order to ``path``."""
    from prefect import unmapped

    bounds = shard_bounds(len(corpus), params.embed_shards, params.embed_batch_size)
    futures = embed_shard.map(unmapped(model_name), unmapped(version), [corpus.iloc[a:b] for a, b in bounds],
                              unmapped(dim), unmapped(params.embed_batch_size))
    return write_vectors_to_file([f.result() for f in futures], path)


@task(cache_policy=NO_CACHE)
def embed_second_stage(model, corpus: pd.DataFrame, path: Path, batch_size: int) -> np.ndarray:
    """A cascade's second-stage document vectors, which the retriever re-scores the first stage's top N with."""
    class SecondStage:
        def embed_documents(self, frame: pd.DataFrame, batch_size: int = 4096) -> np.ndarray:
            return model.rescore_documents(frame, batch_size=batch_size)

    return embed_documents_to_file(SecondStage(), corpus, path, model.rescore_dim, batch_size)


@task(cache_policy=NO_CACHE)
def build_index(vectors: np.ndarray, config: IndexConfig) -> EmbeddingIndex:
    return EmbeddingIndex.build(vectors, np.arange(len(vectors), dtype=np.int64), config)


@task(retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=5, cache_policy=NO_CACHE)
def validation_queries(model, model_meta: dict, vectors: np.ndarray, source: QuerySource,
                       config: ValidationConfig, n: int | None = None,
                       seed: int | None = None) -> tuple[np.ndarray, str, np.ndarray | None]:
    """Up to ``n`` (default: the gate's) queries: held-out ones through the query tower (with the document
    each one clicked), or document vectors (no clicks)."""
    n = config.n_queries if n is None else n
    seed = config.seed if seed is None else seed
    if source != "documents":
        sample = held_out_sample(model, model_meta, n, seed)
        if sample is not None:
            return sample[0], "held-out", sample[1]
        if source == "held_out":
            raise ValueError(f"the model's manifest names no examples with held-out queries: {model_meta.get('examples')!r}")
    rows = sample_rows(len(vectors), n, seed)
    return np.ascontiguousarray(vectors[rows], dtype=np.float32), "document", None


@task(cache_policy=NO_CACHE)
def tune(index: EmbeddingIndex, vectors: np.ndarray, queries: np.ndarray, params: "RebuildParams") -> TuningResult:
    """The recall/cost curve on the tuning queries and the least nprobe meeting the target (ann.tuning)."""
    v, t = params.validation, params.tuning
    target = t.target_recall if t.target_recall is not None else min(1.0, v.min_recall + t.margin)
    result = tune_nprobe(index, vectors, queries, min(v.k, index.ntotal), target, t.max_nprobe)
    get_run_logger().info("%s", result.to_markdown())
    return result


@task(cache_policy=NO_CACHE)
def build_terms(corpus: pd.DataFrame):
    """The term index of the corpus (positions = rows = the FAISS ids), published with the vectors."""
    return TermIndex.build(corpus)


@task(cache_policy=NO_CACHE)
def stage(index: EmbeddingIndex, corpus: pd.DataFrame, dest: Path, rescore: np.ndarray | None = None,
          terms=None) -> Path:
    return stage_index(index, doc_map_frame(corpus), dest, rescore, terms)


@task(retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=5, cache_policy=NO_CACHE)
def validate(index: EmbeddingIndex, vectors: np.ndarray, queries: np.ndarray, source: str,
             config: ValidationConfig, expected: int, staged: Path, dataset: str,
             type_counts: dict[str, int], targets: np.ndarray | None = None) -> IndexValidation:
    """The publish gate, including the comparison with the version that is current now. ``targets``: the
    index positions of the held-out queries' clicked documents (-1: not indexed)."""
    return validate_index(index, vectors, queries, config, source, expected, staged_size(staged), type_counts,
                          current_version(dataset), targets)


@task(retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=5, cache_policy=NO_CACHE)
def publish(dataset: str, staged: Path, manifest: IndexManifest) -> str:
    return publish_index(ArtifactStore.from_settings(), dataset, staged, manifest).ref


@task(cache_policy=NO_CACHE)
def publish_report(dataset: str, markdown: str, description: str) -> None:
    create_markdown_artifact(markdown=markdown, key=artifact_key(dataset), description=description)


def report_markdown(dataset: str, outcome: str, manifest: IndexManifest, selection: SelectionReport,
                    validation: IndexValidation, tuning: TuningResult | None = None) -> str:
    s = manifest.stats
    lines = [
        f"# Index rebuild: {dataset}",
        "",
        f"**{outcome}**",
        "",
        f"- model: `{manifest.model.ref}` (feature service {manifest.feature_service or '-'})",
        f"- documents as of {manifest.as_of}, feature snapshot of {manifest.snapshot_day}",
        f"- embedding {manifest.embed_seconds:.1f} s, index build {manifest.build_seconds:.1f} s",
        "",
        selection.to_markdown(),
        "",
        "| index | documents | dim | nlist | pq_m | nprobe | refine | bytes/doc | memory (MB) | list imbalance |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|",
        f"| {s['kind']} | {s['ntotal']} | {s['dim']} | {s['nlist'] or '-'} | {s['pq_m'] or '-'} | "
        f"{s['nprobe'] or '-'} | {s['refine']} | {s['bytes_per_vector']:.0f} | {s['memory_bytes'] / 1e6:.2f} | "
        f"{'-' if s['imbalance_factor'] is None else format(s['imbalance_factor'], '.2f')} |",
        "",
        tuning.to_markdown() if tuning else "ANN tuning: off or not applicable (an exact index).",
        "",
        tuning.to_markdown_image() if tuning else "",
        "",
        validation.to_markdown(),
        "",
        f"Term index: {manifest.terms['terms']:,} terms, {manifest.terms['postings']:,} postings, "
        f"{manifest.terms['bytes'] / 1e6:.2f} MB ({', '.join(f'{k} {v:,}' for k, v in manifest.terms['terms_per_field'].items())})"
        if manifest.terms else "",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- flow


@flow(name="rebuild-index", log_prints=True, task_runner=task_runner())
def rebuild_index(
    dataset: str = "synthetic-default",
    model_name: str | None = None,
    as_of: date | None = None,
    params: RebuildParams | None = None,
) -> str:
    """Rebuild, validate and publish the document index of ``dataset`` with the current registered model
    (None: ``<dataset>-two-tower``) as of the end of ``as_of`` (None: the newest feature snapshot)."""
    params = params or RebuildParams()
    model_name = model_name or default_model_name(dataset)
    log = get_run_logger()
    clean_up_leftovers(runs_root("rebuild-index", dataset))
    run_dir = new_run_dir(runs_root("rebuild-index", dataset), flow_run.id)
    try:
        documents, snapshot, snapshot_day = read_inputs(dataset, as_of)
        gate_inputs({"documents": documents}, params.gates, runs_root("rebuild-index", dataset), run_dir, dataset)  # before any use
        if as_of is not None and (as_of - snapshot_day).days > STALE_SNAPSHOT_DAYS:
            log.warning("the newest document snapshot (%s) is more than %d days older than as_of %s: member "
                        "aggregates are stale; materialize the missing days first", snapshot_day,
                        STALE_SNAPSHOT_DAYS, as_of)
        at = rebuild_time(as_of, snapshot_day)
        clicks = read_clicks(dataset, documents, at, params.selection)
        corpus, selection = select_corpus(documents, snapshot, at, params.selection, clicks)
        log.info("%s", selection.to_markdown())
        model, model_av = load_model(model_name)

        t0 = time.perf_counter()
        if params.embed_shards > 1 and not is_cascade(model):
            vectors = embed_corpus_sharded(model_name, model_av.version, model.output_dim, corpus,
                                           run_dir / "vectors.npy", params)
        else:
            vectors = embed_corpus(model, corpus, run_dir / "vectors.npy", params.embed_batch_size)
        rescore = (embed_second_stage(model, corpus, run_dir / "rescore.npy", params.embed_batch_size)
                   if is_cascade(model) else None)
        t1 = time.perf_counter()
        index = build_index(vectors, params.index)
        t2 = time.perf_counter()
        queries, source, clicked = validation_queries(model, model_av.metadata, vectors, params.query_source,
                                                      params.validation)
        tuning = None
        if params.tuning.enabled and index.kind != "flat" and params.index.nprobe is None:  # an explicit nprobe wins
            # another sample than the gate's, so that the gate checks the choice on fresh queries
            tuning_queries, _, _ = validation_queries(model, model_av.metadata, vectors, params.query_source,
                                                   params.validation, params.tuning.n_queries,
                                                   params.validation.seed + 1)
            tuning = tune(index, vectors, tuning_queries, params)
            index.set_default_nprobe(tuning.chosen_nprobe)
        terms = build_terms(corpus)
        staged = stage(index, corpus, run_dir / "artifact", rescore, terms)
        if tuning is not None:  # the curve as a picture, published with the index it tuned
            (staged / "ann_tuning.svg").write_text(tuning.to_svg())
        type_counts = {str(k): int(v) for k, v in corpus["doc_type"].fillna("").astype(str).value_counts().items()}
        targets = (pd.Index(corpus["doc_id"].astype(str)).get_indexer(clicked) if clicked is not None else None)
        validation = validate(index, vectors, queries, source, params.validation, len(corpus), staged, dataset,
                              type_counts, targets)

        manifest = IndexManifest(
            dataset=dataset, as_of=pd.Timestamp(at).isoformat(), snapshot_day=snapshot_day.isoformat(),
            model=ModelRef(name=model_name, version=model_av.version, ref=model_av.ref),
            feature_service=str(model_av.metadata.get("feature_service") or model.feature_service or ""),
            selection=selection.model_dump(mode="json"), index_config=index.config.model_dump(mode="json"),
            stats=index.stats().to_dict(),
            counts={"canonical": len(documents), "selected": selection.selected_count,
                    "without_snapshot": int(corpus["feature_ts"].isna().sum()), "indexed": index.ntotal},
            type_counts=type_counts,
            validation=validation.model_dump(mode="json"), terms=terms.stats(),
            ann_tuning=tuning.model_dump(mode="json") if tuning else None, embed_seconds=round(t1 - t0, 3),
            build_seconds=round(t2 - t1, 3), flow_run_id=str(flow_run.id) if flow_run.id else None,
        )
        if not validation.passed:
            publish_report(dataset, report_markdown(dataset, "Not published: validation failed", manifest,
                                                    selection, validation, tuning), f"failed rebuild of index/{dataset}")
            raise IndexValidationError(validation)
        ref = publish(dataset, staged, manifest)
        publish_report(dataset, report_markdown(dataset, f"Published `{ref}`", manifest, selection, validation, tuning),
                       f"index stats and validation of {ref}")
        log.info("published %s: %d documents, ANN recall@%d %.4f", ref, index.ntotal, validation.k,
                 validation.recall_at_k)
        return ref
    finally:
        # the embeddings and the staged copy go (the store keeps the artifact); the gate reports stay, since
        # the next rebuild compares its documents with the newest accepted one (drift, rows per day)
        for path in run_dir.iterdir() if run_dir.is_dir() else ():
            if path.is_dir() and path.name != "gates":
                shutil.rmtree(path, ignore_errors=True)
            elif path.is_file() and path.name != MARKER:
                path.unlink(missing_ok=True)
        finish_run_dir(run_dir)


if __name__ == "__main__":
    rebuild_index()
