"""Where things live, read from the environment (prefix ``EBR_``) with laptop defaults.

Nothing here touches the disk at import time: directories are created by the code that writes to them.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EBR_", extra="ignore")

    home: Path = Field(
        default=Path(".ebr"),
        description="working directory for datasets, features, models and the local artifact store",
    )
    datasets_dir: Path = Field(
        default=PROJECT_ROOT.parent / "shared" / "datasets",
        description="where the real public datasets are read from (never written)",
    )
    storage_url: str = Field(
        default="",
        description="artifact store: a local directory (default <home>/artifacts) or s3://bucket/prefix",
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (e.g. a MinIO or moto server); None means AWS"
    )
    s3_region: str | None = Field(default=None)

    @property
    def data_dir(self) -> Path:
        """Canonical datasets, one directory per source (``<home>/data/<name>``)."""
        return self.home / "data"

    def dataset_path(self, name: str) -> Path:
        """``<home>/data/<name>`` for a checked dataset name (:func:`infra.names.check_name`)."""
        from infra.names import check_name

        return self.data_dir / check_name(name, "dataset name")

    @property
    def artifacts_url(self) -> str:
        return self.storage_url or str(self.home / "artifacts")


def get_settings() -> Settings:
    """Fresh settings from the current environment (cheap; tests change the environment)."""
    return Settings()
