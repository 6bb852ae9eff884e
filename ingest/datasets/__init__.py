"""Adapters that turn the real public datasets into the canonical tables (see ``ingest.contract``).

Each adapter reads one dataset under the datasets directory (setting ``datasets_dir``, env
``EBR_DATASETS_DIR``), never writes there, and returns a :class:`~ingest.contract.CanonicalDataset` whose
manifest records what was dropped and how the split was made; the caller writes it with ``write_dataset``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from infra.settings import get_settings
from ingest.contract import CanonicalDataset
from ingest.datasets import lastfm, meetup_chicago, meetup_montana, movielens, scifact
from ingest.datasets.common import DATASETS_DIR_SETTING, DatasetNotFoundError

ADAPTERS: dict[str, Callable[[Path], CanonicalDataset]] = {
    "lastfm": lastfm.load,
    "meetup_montana": meetup_montana.load,
    "meetup_chicago": meetup_chicago.load,
    "movielens": movielens.load,
    "scifact": scifact.load,
}

# Where each source lives under the datasets directory.
SUBDIRS: dict[str, str] = {
    "lastfm": lastfm.SUBDIR,
    "meetup_montana": meetup_montana.SUBDIR,
    "meetup_chicago": meetup_chicago.SUBDIR,
    "movielens": movielens.SUBDIR,
    "scifact": scifact.SUBDIR,
}


def load_source(name: str, datasets_dir: Path | None = None) -> CanonicalDataset:
    """The canonical tables of the real dataset ``name`` (default directory from the settings)."""
    if name not in ADAPTERS:
        raise ValueError(f"unknown dataset source {name!r}; allowed: {sorted(ADAPTERS)}")
    if datasets_dir is None:
        datasets_dir = get_settings().datasets_dir
    return ADAPTERS[name](Path(datasets_dir))


__all__ = ["ADAPTERS", "SUBDIRS", "DATASETS_DIR_SETTING", "DatasetNotFoundError", "load_source"]
