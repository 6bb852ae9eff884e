"""Checkpoints and saved models: the config travels with the weights, files are replaced atomically.

Two files per training directory:
- ``checkpoint.pt``: everything needed to resume a run (model and optimizer states, epoch/step, RNG
  states, configs, validation history, feature-service version);
- ``model.pt``: the best model so far: model config, weights, feature service and its metrics.
Both are written to a temporary sibling and ``os.replace``d, so a crash never leaves a half-written
file. Contents are plain tensors, numbers, strings, lists and dicts, so they load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from infra.atomic import atomic_file
from models.config import ModelConfig
from models.features import FittedInputs
from models.towers import TwoTowerModel

CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
FORMAT_VERSION = 1


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save to a temporary sibling, fsync, then os.replace onto ``path``."""
    path = Path(path)
    with atomic_file(path, fsync=True) as tmp:
        torch.save(obj, tmp)
    return path


def load_file(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or obj.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a model checkpoint of format {FORMAT_VERSION}")
    return obj


def rng_state() -> dict:
    """Global RNG states (torch, python, numpy legacy) as plain values."""
    np_state = np.random.get_state(legacy=False)
    np_state = {**np_state, "state": {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                                      for k, v in np_state["state"].items()}}
    state = {"torch": torch.get_rng_state(), "python": _to_lists(random.getstate()), "numpy": np_state}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuples(state["python"]))
    np_state = state["numpy"]
    np.random.set_state({**np_state, "state": {k: (np.array(v, dtype=np.uint32) if isinstance(v, list) else v)
                                               for k, v in np_state["state"].items()}})
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


def model_payload(model: TwoTowerModel, feature_service: str = "", **info: Any) -> dict:
    """What ``model.pt`` holds: the config rebuilds the towers, the state dict fills them."""
    return {
        "format_version": FORMAT_VERSION,
        "model_config": model.config.model_dump(mode="json"),
        "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "fitted_inputs": model.fitted.as_dict(),
        "feature_service": feature_service,
        **info,
    }


def save_model(model: TwoTowerModel, path: str | os.PathLike, feature_service: str = "", **info: Any) -> Path:
    return save_atomic(model_payload(model, feature_service, **info), path)


def model_from_payload(payload: dict, device: str = "cpu") -> TwoTowerModel:
    model = TwoTowerModel(ModelConfig.from_saved(payload["model_config"]))
    model.load_state_dict(payload["model_state"])
    model.set_fitted(FittedInputs.from_dict(payload.get("fitted_inputs")))
    model.feature_service = payload.get("feature_service", "")
    return model.to(device).eval()


def load_model(path: str | os.PathLike, device: str = "cpu") -> TwoTowerModel:
    """A trained model from ``model.pt``, ``checkpoint.pt`` or a training directory (its ``model.pt``).

    The returned model is in eval mode; ``model.feature_service`` names the feature service it was
    trained on.
    """
    p = Path(path)
    if p.is_dir():
        p = p / MODEL if (p / MODEL).exists() else p / CHECKPOINT
    return model_from_payload(load_file(p), device)


def read_model_info(path: str | os.PathLike) -> dict:
    """Everything in a saved model or checkpoint except tensors (config, metrics, feature service)."""
    p = Path(path)
    if p.is_dir():
        p = p / MODEL if (p / MODEL).exists() else p / CHECKPOINT
    payload = load_file(p)
    skip = ("model_state", "optimizers", "rng", "fitted_inputs")
    return {k: v for k, v in payload.items() if k not in skip}
