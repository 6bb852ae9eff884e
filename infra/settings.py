"""Where things live, read from the environment (prefix ``EBR_``) with laptop defaults.

Nothing here touches the disk at import time: directories are created by the code that writes to them.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from infra.names import check_name

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
    online_store: str = Field(
        default="",
        description="Feast online store: empty for a SQLite file per dataset (the laptop default), or "
                    "redis://HOST:PORT[/DB] for a Redis server shared by every dataset",
    )
    s3_connect_timeout: float = Field(default=5.0, gt=0, le=300, description="seconds to open an S3 connection")
    s3_read_timeout: float = Field(default=30.0, gt=0, le=3600, description="seconds to wait for S3's answer")
    s3_attempts: int = Field(default=3, ge=1, le=10, description="tries per S3 call (transient errors only)")
    s3_deadline: float = Field(default=900.0, gt=0, le=86400,
                               description="seconds one S3 call (a file's transfer included) may take overall")
    encoder_store: str = Field(
        default="",
        description="directory of the frozen text encoders' document vectors (default <home>/encoders), so that "
                    "retraining and rebuilds encode only new documents; 'off' keeps them in memory only")
    keep_versions: int = Field(
        default=10, ge=0, le=100_000,
        description="complete versions kept per artifact when a publishing flow starts (0: keep every version); "
                    "never the current one, nor one that a kept version names (an index's model)")
    max_title_chars: int = Field(default=1_000, ge=1, description="longest document title the data contract accepts")
    max_body_chars: int = Field(default=100_000, ge=1, description="longest document body the data contract accepts")
    max_query_chars: int = Field(default=1_000, ge=1, description="longest session query the data contract accepts")
    serve_token: SecretStr | None = Field(
        default=None,
        description="bearer token that `ebr serve` requires of every request but its probes (/livez, /readyz); "
                    "without one it serves only on a loopback address unless told --insecure")

    @property
    def data_dir(self) -> Path:
        """Canonical datasets, one directory per source (``<home>/data/<name>``)."""
        return self.home / "data"

    def dataset_path(self, name: str) -> Path:
        """``<home>/data/<name>`` for a checked dataset name (:func:`infra.names.check_name`)."""
        return self.data_dir / check_name(name, "dataset name")

    @property
    def encoder_store_dir(self) -> Path | None:
        """Where frozen text encoders keep their documents' vectors (:mod:`models.vector_store`); None: off."""
        if self.encoder_store.strip().lower() == "off":
            return None
        return Path(self.encoder_store) if self.encoder_store.strip() else self.home / "encoders"

    @property
    def artifacts_url(self) -> str:
        return self.storage_url or str(self.home / "artifacts")


def get_settings() -> Settings:
    """Fresh settings from the current environment (cheap; tests change the environment)."""
    return Settings()
