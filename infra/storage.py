"""Versioned, atomic artifact storage: datasets, models, indexes, features.

Layout under the store's base (a local directory or ``s3://bucket/prefix``)::

    <kind>/<name>/versions/<version>/files/<relative path>   the artifact's files
    <kind>/<name>/versions/<version>/manifest.json           written only after the files are verified
    <kind>/<name>/CURRENT                                    {"version": ...}: the one pointer readers follow

A publish uploads the files, re-reads their size and sha256 from the store, writes the manifest, and only then
moves ``CURRENT`` (one atomic object: temp name + ``os.replace`` locally, one PUT on S3). Readers resolve
CURRENT -> manifest -> files, and versions are immutable, so a reader sees either the old or the new version,
never half of one. A version without a manifest (a crash mid-upload) is never listed; ``gc_incomplete`` removes
such leftovers. Earlier versions stay for rollback (``set_current``).

Two layers: ``Backend`` moves bytes under a base prefix (``LocalBackend``, ``S3Backend``); ``ArtifactStore``
knows about versions, manifests and the pointer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from tqdm.auto import tqdm

from infra.atomic import TMP_MARK, atomic_file, temporary_sibling
from infra.names import NAME_RE, InvalidNameError, check_name
from infra.settings import get_settings

if TYPE_CHECKING:
    from infra.settings import Settings

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
CURRENT_NAME = "CURRENT"
MANIFEST_FORMAT = 1
MULTIPART_THRESHOLD = 8 * 1024 * 1024  # S3 uploads above this size go multipart, in parts of this size
_CHUNK = 1024 * 1024
_BODY_CHUNK = 256 * 1024  # an S3 body is read in chunks this size, with the call's deadline checked between them

KIND_RE = re.compile(r"^[a-z0-9_-]+$")
VERSION_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")

Keys = list[str]  # an alias: backends have a method named ``list``, which shadows the builtin in their bodies


# --------------------------------------------------------------------------------------------------- errors


class ArtifactError(Exception):
    """Base class of every error raised by this module."""


class InvalidArtifactNameError(ArtifactError, InvalidNameError):
    """A kind, name, version or file path that does not follow the allowed pattern."""


class ArtifactNotFoundError(ArtifactError, LookupError):
    """An unknown kind/name/version; the message lists what exists."""


class MissingKeyError(ArtifactError, FileNotFoundError):
    """A backend key that does not exist."""


class ChecksumMismatchError(ArtifactError):
    """A stored or fetched file whose size or sha256 differs from the manifest."""


# -------------------------------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class FileDigest:
    size: int
    sha256: str


def _digest_stream(chunks: Iterator[bytes]) -> FileDigest:
    h = hashlib.sha256()
    size = 0
    for chunk in chunks:
        h.update(chunk)
        size += len(chunk)
    return FileDigest(size=size, sha256=h.hexdigest())


def file_digest(path: Path) -> FileDigest:
    """Size and sha256 of a local file, read in chunks (models and indexes can be large)."""

    def chunks() -> Iterator[bytes]:
        with open(path, "rb") as f:
            while block := f.read(_CHUNK):
                yield block

    return _digest_stream(chunks())


def _check_key(key: str) -> str:
    """Keys are relative POSIX paths without '..' so that no key escapes the base prefix."""
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in parts):
        raise InvalidArtifactNameError(
            f"invalid storage key {key!r}: expected a relative POSIX path without empty, '.' or '..' parts"
        )
    return key


def _check_prefix(prefix: str) -> str:
    """A listing prefix: '' (everything) or a key ending in '/'."""
    if prefix:
        if not prefix.endswith("/"):
            raise InvalidArtifactNameError(f"invalid listing prefix {prefix!r}: expected '' or a key ending in '/'")
        _check_key(prefix[:-1])
    return prefix


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_file(path, fsync=True) as tmp:
        tmp.write_bytes(data)


def _atomic_copy(src: Path, dest: Path, callback: Callable[[int], None] | None = None) -> None:
    with atomic_file(dest, fsync=True) as tmp, open(src, "rb") as fin, open(tmp, "wb") as fout:
        while block := fin.read(_CHUNK):
            fout.write(block)
            if callback is not None:
                callback(len(block))


# -------------------------------------------------------------------------------------------------- backends


@runtime_checkable
class Backend(Protocol):
    """Bytes under a base prefix. Keys are relative POSIX paths; every single-object write is atomic."""

    def read_bytes(self, key: str) -> bytes: ...

    def write_bytes(self, key: str, data: bytes) -> None: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str = "") -> Keys:
        """All keys below ``prefix`` ('' or ending in '/'), recursively, sorted."""
        ...

    def children(self, prefix: str = "") -> Keys:
        """Names of the immediate sub-prefixes ("directories") of ``prefix``, sorted."""
        ...

    def delete(self, key: str) -> None:
        """Remove one key; a missing key is not an error."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Remove every key below ``prefix``; returns how many were removed."""
        ...

    def upload_file(self, src: Path, key: str, callback: Callable[[int], None] | None = None) -> None:
        """Copy a local file to ``key`` (multipart on S3 for large files); ``callback`` gets byte counts."""
        ...

    def download_file(self, key: str, dest: Path, callback: Callable[[int], None] | None = None) -> None:
        """Copy ``key`` to a local file, atomically (``dest`` is either absent or complete)."""
        ...

    def checksum(self, key: str) -> FileDigest:
        """Size and sha256 of the stored bytes, read back from the store."""
        ...

    def describe(self) -> str:
        """Where the bytes live, for messages and logs."""
        ...


class LocalBackend:
    """A directory on the local filesystem; writes go to a temp name then ``os.replace``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*_check_key(key).split("/"))

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
            raise MissingKeyError(f"no key {key!r} in {self.describe()}") from e

    def write_bytes(self, key: str, data: bytes) -> None:
        _atomic_write_bytes(self._path(key), data)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> Keys:
        base = self.root.joinpath(*_check_prefix(prefix).split("/")[:-1]) if prefix else self.root
        if not base.is_dir():
            return []
        keys: Keys = []
        for dirpath, _dirnames, filenames in os.walk(base):
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for fn in filenames:
                if TMP_MARK not in fn:
                    keys.append(fn if rel_dir == "." else f"{rel_dir}/{fn}")
        return sorted(keys)

    def children(self, prefix: str = "") -> Keys:
        base = self.root.joinpath(*_check_prefix(prefix).split("/")[:-1]) if prefix else self.root
        if not base.is_dir():
            return []
        return sorted(e.name for e in os.scandir(base) if e.is_dir())

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        if not prefix:
            raise InvalidArtifactNameError("refusing to delete the whole store: give a non-empty prefix")
        keys = self.list(prefix)
        base = self.root.joinpath(*_check_prefix(prefix).split("/")[:-1])
        if base.is_dir():
            shutil.rmtree(base)
        return len(keys)

    def upload_file(self, src: Path, key: str, callback: Callable[[int], None] | None = None) -> None:
        _atomic_copy(Path(src), self._path(key), callback)

    def download_file(self, key: str, dest: Path, callback: Callable[[int], None] | None = None) -> None:
        path = self._path(key)
        if not path.is_file():
            raise MissingKeyError(f"no key {key!r} in {self.describe()}")
        _atomic_copy(path, Path(dest), callback)

    def checksum(self, key: str) -> FileDigest:
        path = self._path(key)
        if not path.is_file():
            raise MissingKeyError(f"no key {key!r} in {self.describe()}")
        return file_digest(path)

    def describe(self) -> str:
        return str(self.root)


@dataclass(frozen=True)
class S3Timeouts:
    """Bounds of S3 calls (``EBR_S3_CONNECT_TIMEOUT``, ``EBR_S3_READ_TIMEOUT``, ``EBR_S3_ATTEMPTS``,
    ``EBR_S3_DEADLINE``): per request, the time to connect and to wait for each read; per call of the backend,
    the number of attempts and an overall deadline."""

    connect_seconds: float = 5.0
    read_seconds: float = 30.0
    attempts: int = 3  # botocore's own retries of throttling, 5xx and connection errors, the first included
    deadline_seconds: float = 900.0


class S3DeadlineExceeded(TimeoutError):
    """An S3 call went on past its overall deadline (an endpoint that answers, but too slowly)."""


# The deadline of the backend call running in this context: checked before every HTTP request botocore sends
# (retries, pages of a listing, parts) and between the chunks of a body, so that an endpoint trickling its
# answers within the read timeout still ends the call. A transfer's worker threads check it in its callback.
_DEADLINE: ContextVar[tuple[float, str, float] | None] = ContextVar("s3_deadline", default=None)


def _check_deadline(deadline: tuple[float, str, float] | None = None, **_: Any) -> None:
    until, what, seconds = deadline or _DEADLINE.get() or (float("inf"), "", 0.0)
    if time.monotonic() > until:
        raise S3DeadlineExceeded(f"S3 {what} did not finish within {seconds:g} s (EBR_S3_DEADLINE); "
                                 "the endpoint answers too slowly")


class S3Backend:
    """An S3 (or S3-compatible) bucket under a prefix, through boto3.

    Credentials come from boto3's usual chain (environment, profile, instance role); ``endpoint_url`` points at
    an S3-compatible server (MinIO, moto) and switches to path-style addressing.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        client: Any | None = None,
        timeouts: S3Timeouts | None = None,
    ) -> None:
        if not bucket:
            raise InvalidArtifactNameError("S3Backend needs a bucket name")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.region = region
        self.multipart_threshold = multipart_threshold
        self.timeouts = timeouts or S3Timeouts()
        self._client = client

    @property
    def client(self) -> Any:
        # Built on first use, so constructing a store never touches the network or the credential chain.
        if self._client is None:
            import boto3
            from botocore.config import Config

            # Bounded: an endpoint that accepts connections but never answers fails a call within
            # attempts x (connect + read timeout), instead of hanging for minutes.
            t = self.timeouts
            config = Config(
                connect_timeout=t.connect_seconds, read_timeout=t.read_seconds,
                retries={"total_max_attempts": t.attempts, "mode": "standard"},
                s3={"addressing_style": "path"} if self.endpoint_url else {},
            )
            self._client = boto3.session.Session().client(
                "s3", endpoint_url=self.endpoint_url, region_name=self.region, config=config
            )
            self._client.meta.events.register("before-send.s3", _check_deadline)
        return self._client

    @contextmanager
    def _deadline(self, what: str) -> Iterator[tuple[float, str, float]]:
        """The overall deadline of one backend call (an outer call's deadline stays when calls nest)."""
        outer = _DEADLINE.get()
        if outer is not None:
            yield outer
            return
        seconds = self.timeouts.deadline_seconds
        deadline = (time.monotonic() + seconds, what, seconds)
        token = _DEADLINE.set(deadline)
        try:
            yield deadline
        except Exception as exc:
            from boto3.exceptions import Boto3Error
            from botocore.exceptions import BotoCoreError, ClientError
            from s3transfer.exceptions import RetriesExceededError

            if isinstance(exc, (BotoCoreError, ClientError)):  # botocore's messages do not name the bucket
                exc.add_note(f"S3 store {self.describe()}, {what}")
            # A transport error (a read timeout, retries exhausted) that ends the call after its deadline has
            # passed is the deadline's: the check between chunks and the socket's timeout race for it.
            if isinstance(exc, (BotoCoreError, Boto3Error, RetriesExceededError)):
                try:
                    _check_deadline()
                except S3DeadlineExceeded as late:
                    raise late from exc
            raise
        finally:
            _DEADLINE.reset(token)

    @staticmethod
    def _bounded_callback(deadline: tuple[float, str, float],
                          callback: Callable[[int], None] | None) -> Callable[[int], None]:
        def progress(n: int) -> None:
            _check_deadline(deadline)  # runs in the transfer's worker threads: the deadline travels by closure
            if callback is not None:
                callback(n)

        return progress

    def _key(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _list_prefix(self, prefix: str) -> str:
        _check_prefix(prefix)
        return f"{self.prefix}/{prefix}" if self.prefix else prefix

    def _strip(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1 :] if self.prefix else full_key

    @staticmethod
    def _is_missing(err: Exception) -> bool:
        code = str(getattr(err, "response", {}).get("Error", {}).get("Code", ""))
        return code in ("404", "NoSuchKey", "NotFound")

    def _body(self, key: str) -> Iterator[bytes]:
        """The object's bytes in chunks, with the deadline checked between them (call inside ``_deadline``)."""
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except self.client.exceptions.ClientError as e:
            if self._is_missing(e):
                raise MissingKeyError(f"no key {key!r} in {self.describe()}") from e
            raise
        with body:
            for chunk in body.iter_chunks(_BODY_CHUNK):
                _check_deadline()
                yield chunk

    def read_bytes(self, key: str) -> bytes:
        with self._deadline(f"read of {key}"):
            return b"".join(self._body(key))

    def write_bytes(self, key: str, data: bytes) -> None:
        # A single PUT: S3 never exposes a partially written object.
        with self._deadline(f"write of {key}"):
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def exists(self, key: str) -> bool:
        with self._deadline(f"lookup of {key}"):
            try:
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
                return True
            except self.client.exceptions.ClientError as e:
                if self._is_missing(e):
                    return False
                raise

    def list(self, prefix: str = "") -> Keys:
        full = self._list_prefix(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")
        keys: Keys = []
        with self._deadline(f"listing of {prefix or '/'}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                keys.extend(self._strip(obj["Key"]) for obj in page.get("Contents", []))
        return sorted(keys)

    def children(self, prefix: str = "") -> Keys:
        full = self._list_prefix(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")
        names: Keys = []
        with self._deadline(f"listing of {prefix or '/'}"):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full,
                                                                           Delimiter="/")
            for page in pages:
                names.extend(cp["Prefix"][len(full) :].rstrip("/") for cp in page.get("CommonPrefixes", []))
        return sorted(names)

    def delete(self, key: str) -> None:
        with self._deadline(f"delete of {key}"):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def delete_prefix(self, prefix: str) -> int:
        if not prefix:
            raise InvalidArtifactNameError("refusing to delete the whole store: give a non-empty prefix")
        with self._deadline(f"delete of {prefix}/"):
            keys = self.list(prefix)
            for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
                batch = [{"Key": self._key(k)} for k in keys[start : start + 1000]]
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        return len(keys)

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=self.multipart_threshold,
            max_concurrency=4,
        )

    def upload_file(self, src: Path, key: str, callback: Callable[[int], None] | None = None) -> None:
        with self._deadline(f"upload of {key}") as deadline:
            self.client.upload_file(str(src), self.bucket, self._key(key), Config=self._transfer_config(),
                                    Callback=self._bounded_callback(deadline, callback))

    def download_file(self, key: str, dest: Path, callback: Callable[[int], None] | None = None) -> None:
        try:
            with self._deadline(f"download of {key}") as deadline, atomic_file(dest) as tmp:
                self.client.download_file(self.bucket, self._key(key), str(tmp), Config=self._transfer_config(),
                                          Callback=self._bounded_callback(deadline, callback))
        except self.client.exceptions.ClientError as e:
            if self._is_missing(e):
                raise MissingKeyError(f"no key {key!r} in {self.describe()}") from e
            raise

    def checksum(self, key: str) -> FileDigest:
        with self._deadline(f"checksum of {key}"):
            return _digest_stream(self._body(key))

    def describe(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        return f"{where} (endpoint {self.endpoint_url})" if self.endpoint_url else where


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")``."""
    if not url.startswith("s3://"):
        raise InvalidArtifactNameError(f"not an S3 url: {url!r} (expected s3://bucket[/prefix])")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not bucket:
        raise InvalidArtifactNameError(f"S3 url without a bucket: {url!r} (expected s3://bucket[/prefix])")
    return bucket, prefix.strip("/")


# -------------------------------------------------------------------------------------------------- versions


@dataclass(frozen=True)
class ArtifactVersion:
    """One immutable, complete version of an artifact, as recorded in its manifest."""

    kind: str  # "dataset" | "model" | "index" | "features" | ... ([a-z0-9_-]+)
    name: str  # e.g. "synthetic-default", "two-tower"
    version: str  # sortable: "20261121T101500Z-<8 hex>"
    created_at: str  # ISO UTC
    files: dict[str, dict] = field(default_factory=dict)  # relative path -> {"sha256": ..., "size": ...}
    metadata: dict = field(default_factory=dict)  # free JSON: config, metrics, parents

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.name}@{self.version}"

    @property
    def total_size(self) -> int:
        return sum(int(f["size"]) for f in self.files.values())

    def to_json(self) -> dict:
        return {"format": MANIFEST_FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict) -> ArtifactVersion:
        fields = ("kind", "name", "version", "created_at", "files", "metadata")
        missing = [k for k in fields if k not in data]
        if missing:
            raise ArtifactError(f"manifest lacks {missing}; it has {sorted(data)}")
        return cls(**{k: data[k] for k in fields})


def new_version_id(now: datetime | None = None) -> str:
    """``YYYYmmddTHHMMSSZ-<8 hex>``: 5 hex digits of microseconds then 3 random ones.

    The microseconds keep versions made within the same second in publish order (string order = time order);
    the random tail separates publishers that share a microsecond.
    """
    now = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{now.microsecond:05x}{secrets.token_hex(2)[:3]}"


def version_time(version: str) -> datetime:
    """When a version id was made, to microsecond precision."""
    check_version(version)
    stamp, _, tail = version.partition("-")
    return datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC, microsecond=int(tail[:5], 16))


def check_kind(kind: str) -> str:
    if not isinstance(kind, str) or not KIND_RE.match(kind):
        raise InvalidArtifactNameError(
            f"invalid artifact kind {kind!r}: use lowercase letters, digits, '_' and '-' (e.g. 'dataset', 'model')"
        )
    return kind


def check_version(version: str) -> str:
    if not isinstance(version, str) or not VERSION_RE.match(version):
        raise InvalidArtifactNameError(
            f"invalid version {version!r}: expected YYYYmmddTHHMMSSZ-<8 hex>, e.g. '20261121T101500Z-0a1b2c3d'"
        )
    return version


def _collect_files(src: Path) -> dict[str, Path]:
    """Relative POSIX path -> local file: the file itself, or every file below a directory."""
    src = Path(src)
    if src.is_file():
        return {src.name: src}
    if not src.is_dir():
        raise ArtifactNotFoundError(f"nothing to publish at {src}: it is neither a file nor a directory")
    files = {p.relative_to(src).as_posix(): p for p in sorted(src.rglob("*")) if p.is_file()}
    if not files:
        raise ArtifactError(f"nothing to publish: directory {src} holds no files")
    for rel in files:
        _check_key(rel)
    return files


# ----------------------------------------------------------------------------------------------------- store


class ArtifactStore:
    """Versioned artifacts over a ``Backend``; see the module docstring for the layout and guarantees."""

    def __init__(self, backend: Backend, cache_dir: Path | None = None) -> None:
        self.backend = backend
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None

    def __repr__(self) -> str:
        return f"ArtifactStore({self.backend.describe()})"

    # construction ----------------------------------------------------------------------------------------

    @classmethod
    def from_url(cls, url: str, endpoint_url: str | None = None, region: str | None = None,
                 timeouts: S3Timeouts | None = None) -> ArtifactStore:
        """``s3://bucket/prefix`` -> S3; a path (optionally ``file://``) -> a local directory; any other
        scheme is an error (``ftp://x`` would otherwise become a local folder named ``ftp:``)."""
        scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", url)
        if scheme and scheme.group(1).lower() not in ("s3", "file"):
            raise InvalidArtifactNameError(
                f"unsupported storage url {url!r}: use a directory, file:///path or s3://bucket/prefix")
        if url.startswith("s3://"):
            bucket, prefix = parse_s3_url(url)
            return cls(S3Backend(bucket, prefix, endpoint_url=endpoint_url, region=region, timeouts=timeouts))
        if url.startswith("file://"):
            url = url[len("file://") :]
        if not url:
            raise InvalidArtifactNameError("empty storage url: give a directory or s3://bucket/prefix")
        return cls(LocalBackend(Path(url)))

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> ArtifactStore:
        """The store named by ``EBR_STORAGE_URL`` (default ``<home>/artifacts``), fetch cache under home."""
        settings = settings or get_settings()
        timeouts = S3Timeouts(settings.s3_connect_timeout, settings.s3_read_timeout, settings.s3_attempts,
                              settings.s3_deadline)
        backend = cls.from_url(settings.artifacts_url, settings.s3_endpoint_url, settings.s3_region, timeouts).backend
        return cls(backend, cache_dir=settings.home / "cache" / "artifacts")

    @property
    def cache_dir(self) -> Path:
        """Where ``fetch`` puts versions when no ``dest`` is given (resolved late: tests change EBR_HOME)."""
        if self._cache_dir is not None:
            return self._cache_dir

        return get_settings().home / "cache" / "artifacts"

    # keys ------------------------------------------------------------------------------------------------

    @staticmethod
    def artifact_prefix(kind: str, name: str) -> str:
        return f"{check_kind(kind)}/{check_name(name, 'artifact name', InvalidArtifactNameError)}/"

    def version_prefix(self, kind: str, name: str, version: str) -> str:
        return f"{self.artifact_prefix(kind, name)}versions/{check_version(version)}/"

    def manifest_key(self, kind: str, name: str, version: str) -> str:
        return self.version_prefix(kind, name, version) + MANIFEST_NAME

    def file_key(self, kind: str, name: str, version: str, rel: str) -> str:
        return self.version_prefix(kind, name, version) + "files/" + _check_key(rel)

    def current_key(self, kind: str, name: str) -> str:
        return self.artifact_prefix(kind, name) + CURRENT_NAME

    # reading ---------------------------------------------------------------------------------------------

    def _read_manifest(self, kind: str, name: str, version: str) -> ArtifactVersion | None:
        try:
            raw = self.backend.read_bytes(self.manifest_key(kind, name, version))
        except MissingKeyError:
            return None
        try:
            av = ArtifactVersion.from_json(json.loads(raw))
        except (ValueError, TypeError) as e:
            raise ArtifactError(f"unreadable manifest of {kind}/{name}@{version}: {e}") from e
        if (av.kind, av.name, av.version) != (kind, name, version):
            raise ArtifactError(f"manifest at {kind}/{name}@{version} describes {av.ref} instead")
        return av

    def _current_version_id(self, kind: str, name: str) -> str | None:
        try:
            raw = self.backend.read_bytes(self.current_key(kind, name))
        except MissingKeyError:
            return None
        try:
            return check_version(json.loads(raw)["version"])
        except (ValueError, KeyError, TypeError) as e:
            raise ArtifactError(f"unreadable CURRENT pointer of {kind}/{name}: {raw[:200]!r}") from e

    def current(self, kind: str, name: str) -> ArtifactVersion | None:
        """The version readers should use, or None when nothing was published under kind/name."""
        version = self._current_version_id(kind, name)
        if version is None:
            return None
        av = self._read_manifest(kind, name, version)
        if av is None:
            raise ArtifactError(f"CURRENT of {kind}/{name} points at {version}, which has no manifest")
        return av

    def _version_ids(self, kind: str, name: str) -> list[str]:
        return [v for v in self.backend.children(self.artifact_prefix(kind, name) + "versions/") if VERSION_RE.match(v)]

    def list_versions(self, kind: str, name: str) -> list[ArtifactVersion]:
        """Complete versions (those with a manifest), oldest first; unknown artifacts give []."""
        found = (self._read_manifest(kind, name, v) for v in self._version_ids(kind, name))
        return [av for av in found if av is not None]

    def list_kinds(self) -> list[str]:
        return [k for k in self.backend.children("") if KIND_RE.match(k)]

    def list_names(self, kind: str) -> list[str]:
        """Names of kind that have a current version."""
        names = self.backend.children(f"{check_kind(kind)}/")
        return [n for n in names if NAME_RE.match(n) and self.backend.exists(self.current_key(kind, n))]

    def _not_found(self, kind: str, name: str, version: str | None) -> ArtifactNotFoundError:
        versions = [v.version for v in self.list_versions(kind, name)]
        if not versions:
            names = self.list_names(kind)
            return ArtifactNotFoundError(
                f"unknown artifact {kind}/{name} in {self.backend.describe()}; "
                f"published names of kind {kind!r}: {names or 'none'}; kinds: {self.list_kinds() or 'none'}"
            )
        wanted = "a current version" if version is None else f"complete version {version!r}"
        return ArtifactNotFoundError(f"no {wanted} of {kind}/{name}; complete versions (oldest first): {versions}")

    def get(self, kind: str, name: str, version: str | None = None) -> ArtifactVersion:
        """One complete version (None = current); raises ArtifactNotFoundError naming what exists."""
        if version is None:
            av = self.current(kind, name)
        else:
            av = self._read_manifest(kind, name, check_version(version))
        if av is None:
            raise self._not_found(kind, name, version)
        return av

    def verify(self, av: ArtifactVersion) -> None:
        """Re-read every file of a version from the store and compare size and sha256 with its manifest."""
        for rel, expected in tqdm(sorted(av.files.items()), desc=f"verify {av.ref}", unit="file", disable=None):
            self._compare(av, rel, expected, self.backend.checksum(self.file_key(av.kind, av.name, av.version, rel)))

    @staticmethod
    def _compare(av: ArtifactVersion, rel: str, expected: dict, got: FileDigest) -> None:
        if got.size != expected["size"] or got.sha256 != expected["sha256"]:
            raise ChecksumMismatchError(
                f"checksum mismatch for file {rel!r} of {av.ref}: expected size {expected['size']} "
                f"sha256 {expected['sha256']}, got size {got.size} sha256 {got.sha256}"
            )

    def fetch(self, kind: str, name: str, version: str | None = None, dest: Path | None = None) -> Path:
        """A local directory holding the version's files, each checked against the manifest's sha256.

        Always a verified copy, for both backends, so callers may use or modify it without touching the store.
        Without ``dest`` it goes to ``<cache_dir>/<kind>/<name>/<version>`` (reused when it still matches the
        manifest). Files are downloaded into a staging directory and moved into place only after every file
        has been verified, so on a checksum mismatch nothing lands at ``dest``. With a ``dest`` that already
        exists, the artifact's files replace same-named files there and other files are left alone.
        """
        av = self.get(kind, name, version)
        if dest is None:
            dest = self.cache_dir / kind / name / av.version
            if dest.is_dir() and self._local_copy_matches(av, dest):
                return dest
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = temporary_sibling(dest, prefix=".")
        try:
            with _progress(av.total_size, f"fetch {av.ref}") as advance:
                for rel, expected in sorted(av.files.items()):
                    local = staging.joinpath(*rel.split("/"))
                    self.backend.download_file(self.file_key(kind, name, av.version, rel), local, advance)
                    self._compare(av, rel, expected, file_digest(local))
            if not dest.exists():
                try:
                    os.replace(staging, dest)
                except OSError:  # another fetcher filled dest first: fall through and merge
                    pass
            if staging.exists():
                for rel in av.files:
                    target = dest.joinpath(*rel.split("/"))
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(staging.joinpath(*rel.split("/")), target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("fetched %s to %s", av.ref, dest)
        return dest

    @staticmethod
    def _local_copy_matches(av: ArtifactVersion, root: Path) -> bool:
        for rel, expected in av.files.items():
            path = root.joinpath(*rel.split("/"))
            if not path.is_file() or path.stat().st_size != expected["size"]:
                return False
            if file_digest(path).sha256 != expected["sha256"]:
                return False
        return True

    # writing ---------------------------------------------------------------------------------------------

    def publish(
        self,
        kind: str,
        name: str,
        src: Path,
        metadata: dict | None = None,
        validate: Callable[[Path], None] | None = None,
    ) -> ArtifactVersion:
        """Upload ``src`` (a file or every file below a directory) as a new version and make it current.

        Order: ``validate(src)`` on the local source, upload the files, re-read their size and sha256 from the
        store, write the manifest, then move CURRENT. Any failure before the last step leaves the previous
        version current; files of a failed upload stay unlisted until ``gc_incomplete`` removes them (a failed
        verification removes them at once).
        """
        check_kind(kind)
        check_name(name, "artifact name", InvalidArtifactNameError)
        src = Path(src)
        metadata = dict(metadata or {})
        try:
            json.dumps(metadata)
        except (TypeError, ValueError) as e:
            raise ArtifactError(f"metadata of {kind}/{name} must be JSON-serializable: {e}") from e
        files = _collect_files(src)
        if validate is not None:
            validate(src)  # the caller's gate; its exception propagates unchanged and nothing is written

        now = datetime.now(UTC)
        version = new_version_id(now)
        taken: set[str] = set(self.backend.children(self.artifact_prefix(kind, name) + "versions/"))
        while version in taken:  # a publisher of the same name within the same microsecond
            version = new_version_id(now)
        digests = {rel: file_digest(path) for rel, path in files.items()}
        av = ArtifactVersion(
            kind=kind,
            name=name,
            version=version,
            created_at=now.isoformat(),
            files={rel: {"sha256": d.sha256, "size": d.size} for rel, d in digests.items()},
            metadata=metadata,
        )
        with _progress(av.total_size, f"publish {kind}/{name}") as advance:
            for rel, path in files.items():
                self.backend.upload_file(path, self.file_key(kind, name, version, rel), advance)
        try:
            self.verify(av)
        except ChecksumMismatchError:
            self.backend.delete_prefix(self.version_prefix(kind, name, version))
            raise
        manifest = json.dumps(av.to_json(), indent=1, sort_keys=True).encode()
        self.backend.write_bytes(self.manifest_key(kind, name, version), manifest)
        if self.backend.read_bytes(self.manifest_key(kind, name, version)) != manifest:
            raise ChecksumMismatchError(f"manifest of {av.ref} reads back differently from what was written")
        self._write_current(kind, name, version)
        log.info("published %s (%d files, %d bytes) to %s", av.ref, len(files), av.total_size, self.backend.describe())
        return av

    def _write_current(self, kind: str, name: str, version: str) -> None:
        pointer = {"version": version, "set_at": datetime.now(UTC).isoformat()}
        self.backend.write_bytes(self.current_key(kind, name), json.dumps(pointer).encode())

    def set_current(self, kind: str, name: str, version: str, verify: bool = True) -> ArtifactVersion:
        """Point CURRENT at an existing complete version (rollback or roll forward), after re-reading its
        files against their checksums (``verify``): a damaged version is never made current."""
        av = self.get(kind, name, check_version(version))
        if verify:
            self.verify(av)
        self._write_current(kind, name, av.version)
        log.info("current of %s/%s set to %s", kind, name, av.version)
        return av

    def copy_version(self, kind: str, name: str, version: str | None, dest: ArtifactStore,
                     make_current: bool = False) -> ArtifactVersion:
        """Copy one complete version (None: the current one) to ``dest`` under the same version id, verified
        there like a publish (files, then checksums, then the manifest; CURRENT only with ``make_current``).
        Copying a version that ``dest`` already holds completely does nothing."""
        av = self.get(kind, name, version)
        existing = dest._read_manifest(kind, name, av.version)
        if existing is None:
            local = self.fetch(kind, name, av.version)
            root = Path(local)
            with _progress(av.total_size, f"copy {av.ref}") as advance:
                for rel in av.files:
                    dest.backend.upload_file(root / rel if root.is_dir() else root,
                                             dest.file_key(kind, name, av.version, rel), advance)
            try:
                dest.verify(av)
            except ChecksumMismatchError:
                dest.backend.delete_prefix(dest.version_prefix(kind, name, av.version))
                raise
            dest.backend.write_bytes(dest.manifest_key(kind, name, av.version),
                                     json.dumps(av.to_json(), indent=1, sort_keys=True).encode())
        if make_current:
            dest._write_current(kind, name, av.version)
        return dest.get(kind, name, av.version)

    def prune(self, keep: int, protect: set[str] | None = None, dry_run: bool = False) -> list[str]:
        """Delete complete versions beyond the newest ``keep`` of each artifact, never a current one, nor one
        named (``kind/name@version``) in ``protect`` or in the metadata of a version that stays (an index's
        model, an ensemble's members, a model's examples), transitively: what a kept version names stays, and
        so does what that one names (index -> model -> examples). Returns the refs deleted (or that would be)."""
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        versions = {(k, n): self.list_versions(k, n) for k in self.list_kinds() for n in self.list_names(k)}
        doomed: list[ArtifactVersion] = []
        kept: list[ArtifactVersion] = []
        for (k, n), avs in versions.items():
            cur = self.current(k, n)
            for av in avs[:-keep] if len(avs) > keep else []:
                (kept if cur is not None and av.version == cur.version else doomed).append(av)
            kept += avs[-keep:]
        by_ref = {av.ref: av for avs in versions.values() for av in avs}
        protected = set(protect or ()) | {r for av in kept for r in _refs_in(av.metadata)}
        frontier = set(protected)
        while frontier:  # what a protected version names is protected too
            named = {r for ref in frontier if ref in by_ref for r in _refs_in(by_ref[ref].metadata)}
            frontier = named - protected
            protected |= named
        out = []
        for av in doomed:
            if av.ref in protected:
                continue
            out.append(av.ref)
            if not dry_run:
                self.backend.delete_prefix(self.version_prefix(av.kind, av.name, av.version))
                log.info("pruned %s", av.ref)
        return out

    def prune_cache(self, keep: int = 2) -> list[str]:
        """Delete fetched copies under :attr:`cache_dir` beyond the newest ``keep`` of each artifact, never the
        current version's; returns the refs removed. A fetch fills the cache with every version it loads
        (each index of a nightly, hundreds of MB at 1M documents), and nothing else ever empties it."""
        removed: list[str] = []
        root = self.cache_dir
        for kind_dir in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else ():
            for name_dir in sorted(p for p in kind_dir.iterdir() if p.is_dir()):
                versions = sorted((p for p in name_dir.iterdir() if p.is_dir() and VERSION_RE.match(p.name)),
                                  key=lambda p: p.name, reverse=True)
                if len(versions) <= keep:
                    continue
                try:
                    current = self._current_version_id(kind_dir.name, name_dir.name)
                except Exception:  # an unreachable store: keep everything rather than guess
                    continue
                for path in versions[keep:]:
                    if path.name != current:
                        shutil.rmtree(path, ignore_errors=True)
                        removed.append(f"{kind_dir.name}/{name_dir.name}@{path.name}")
        if removed:
            log.info("pruned %d cached version(s): %s", len(removed), removed)
        return removed

    def gc_incomplete(self, min_age: timedelta = timedelta(hours=1), dry_run: bool = False) -> list[str]:
        """Delete versions without a manifest that are older than ``min_age``; returns their refs (with
        ``dry_run``, those it would delete, deleting nothing).

        The age guard keeps a publish that is still uploading (it has no manifest yet) out of harm's way.
        """
        cutoff = datetime.now(UTC) - min_age
        removed: list[str] = []
        for kind in self.list_kinds():
            for name in self.backend.children(f"{kind}/"):
                if not NAME_RE.match(name):
                    continue
                for version in self._version_ids(kind, name):
                    if version_time(version) > cutoff or self.backend.exists(self.manifest_key(kind, name, version)):
                        continue
                    if dry_run:
                        removed.append(f"{kind}/{name}@{version}")
                        continue
                    n = self.backend.delete_prefix(self.version_prefix(kind, name, version))
                    removed.append(f"{kind}/{name}@{version}")
                    log.info("removed incomplete version %s/%s@%s (%d keys)", kind, name, version, n)
        return removed


_REF = re.compile(r"[a-z]+/[A-Za-z0-9][A-Za-z0-9._-]*@\d{8}T\d{6}Z-[0-9a-f]+")


def _refs_in(value: Any) -> set[str]:
    """Every ``kind/name@version`` string inside a metadata value (nested dicts and lists)."""
    if isinstance(value, str):
        return set(_REF.findall(value))
    if isinstance(value, dict):
        return set().union(*(_refs_in(v) for v in value.values())) if value else set()
    if isinstance(value, (list, tuple)):
        return set().union(*(_refs_in(v) for v in value)) if value else set()
    return set()


@contextmanager
def _progress(total: int, desc: str) -> Iterator[Callable[[int], None]]:
    """A byte progress bar (shown on terminals only); yields the callback backends call with byte counts."""
    with tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=None) as bar:
        yield bar.update
