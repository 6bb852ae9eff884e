"""The model registry: trained two-tower models as versioned ``model`` artifacts of the artifact store.

A registered version holds the saved model file (``model.pt``: config and weights) and, in its manifest
metadata, what it takes to trust and reproduce it: the held-out metrics, the training config, the feature
service the examples were joined with and the examples dataset version it was trained on. ``CURRENT`` of
``model/<name>`` is the version that serving, indexing and warm starts use.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

from pydantic import BaseModel

from infra.storage import ArtifactStore, ArtifactVersion
from models.checkpoint import CHECKPOINT, MODEL, load_model, read_model_info
from models.ensemble import ENSEMBLE_FILE, load_ensemble

MODEL_KIND = "model"


def _model_file(path: str | Path) -> Path:
    """``model.pt`` of a training directory (else its ``checkpoint.pt``), or the file itself."""
    p = Path(path)
    if p.is_dir():
        for name in (MODEL, CHECKPOINT):
            if (p / name).is_file():
                return p / name
        raise FileNotFoundError(f"{p} holds neither {MODEL} nor {CHECKPOINT}: nothing to register")
    if not p.is_file():
        raise FileNotFoundError(f"no model file or training directory at {p}")
    return p


def _json_metrics(metrics: Mapping[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for k, v in metrics.items():
        if not isinstance(v, (int, float)):
            raise TypeError(f"metric {k!r} must be a number, got {type(v).__name__}")
        out[str(k)] = None if math.isnan(float(v)) else float(v)  # JSON has no NaN
    return out


def register_model(
    checkpoint_dir_or_file: str | Path,
    name: str,
    metrics: Mapping[str, float],
    config: BaseModel | Mapping[str, Any],
    feature_service: str,
    examples_ref: str,
    store: ArtifactStore | None = None,
    extra: Mapping[str, Any] | None = None,
) -> ArtifactVersion:
    """Publish a trained model as a new version of ``model/<name>`` and make it current.

    ``config`` is the training config (a pydantic model or its JSON dict); ``examples_ref`` the
    ``dataset/<name>@<version>`` the model was trained on; ``extra`` any further JSON metadata (run ids,
    history). The model must have been trained on ``feature_service`` when it records one.
    """
    src = _model_file(checkpoint_dir_or_file)
    info = read_model_info(src)  # also proves the file is a loadable model of the current format
    trained_on = info.get("feature_service", "")
    if trained_on and feature_service and trained_on != feature_service:
        raise ValueError(
            f"{src} was trained on feature service {trained_on!r}, not {feature_service!r}; "
            "register it with the service it was trained on"
        )
    cfg = config.model_dump(mode="json") if isinstance(config, BaseModel) else dict(config)
    metadata = {
        "metrics": _json_metrics(metrics),
        "config": cfg,
        "model_config": info["model_config"],
        "feature_service": feature_service or trained_on,
        "examples": examples_ref,
        "model_file": src.name,
        **dict(extra or {}),
    }
    store = store or ArtifactStore.from_settings()
    return store.publish(MODEL_KIND, name, src, metadata)


def get_registered(name: str, version: str | None = None, store: ArtifactStore | None = None) -> ArtifactVersion:
    """The manifest of a registered version (None: the current one), without downloading the weights."""
    return (store or ArtifactStore.from_settings()).get(MODEL_KIND, name, version)


def load_registered_model(
    name: str, version: str | None = None, store: ArtifactStore | None = None, device: str = "cpu"
):
    """``(model, ArtifactVersion)`` of a registered version (None: the current one), model in eval mode.

    The files are fetched into the store's cache and checked against the manifest's sha256 first.
    """
    store = store or ArtifactStore.from_settings()
    av = store.get(MODEL_KIND, name, version)
    local = store.fetch(MODEL_KIND, name, av.version)
    model_file = av.metadata.get("model_file", MODEL)
    if model_file == ENSEMBLE_FILE:
        return load_ensemble(local, device), av
    return load_model(local / model_file, device), av


def register_ensemble(
    ensemble_dir: str | Path, name: str, metrics: Mapping[str, float], config: Mapping[str, Any],
    examples_ref: str, store: ArtifactStore | None = None, extra: Mapping[str, Any] | None = None,
) -> ArtifactVersion:
    """Publish an ensemble directory (:func:`models.ensemble.save_ensemble`) as a new version of
    ``model/<name>``: served, indexed and evaluated like any registered model."""
    src = Path(ensemble_dir)
    ensemble = load_ensemble(src)  # proves it loads before anything is published
    metadata = {
        "metrics": _json_metrics(metrics), "config": dict(config), "model_config": {"ensemble": ensemble.spec()},
        "feature_service": ensemble.feature_service, "examples": examples_ref, "model_file": ENSEMBLE_FILE,
        "ensemble": json.loads((src / ENSEMBLE_FILE).read_text()), **dict(extra or {}),
    }
    store = store or ArtifactStore.from_settings()
    return store.publish(MODEL_KIND, name, src, metadata)


def registered_model_path(name: str, version: str | None = None, store: ArtifactStore | None = None) -> Path:
    """A verified local copy of a registered model file (for warm starts)."""
    store = store or ArtifactStore.from_settings()
    av = store.get(MODEL_KIND, name, version)
    if av.metadata.get("model_file") == ENSEMBLE_FILE:
        raise ValueError(f"{av.ref} is an ensemble; warm start from one of its members "
                         f"({[m['ref'] for m in av.metadata.get('ensemble', {}).get('members', [])]})")
    return store.fetch(MODEL_KIND, name, av.version) / av.metadata.get("model_file", MODEL)
