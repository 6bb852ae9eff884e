"""Artifact store: the same behaviour on a local directory and on S3 (moto's server over real HTTP)."""

from __future__ import annotations

import json
import os
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from infra.storage import (
    VERSION_RE,
    ArtifactError,
    ArtifactNotFoundError,
    ArtifactStore,
    ChecksumMismatchError,
    InvalidArtifactNameError,
    LocalBackend,
    MissingKeyError,
    S3Backend,
    version_time,
)
from tests.s3_server import moto_s3, s3_bucket, s3_store_env  # noqa: F401  (fixtures)

BIG = 9 * 1024 * 1024  # above the 8 MiB multipart threshold: two parts on S3


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.server)])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ArtifactStore:
    monkeypatch.setenv("EBR_HOME", str(tmp_path / "home"))  # fetch cache lands under the test's home
    if request.param == "local":
        return ArtifactStore.from_url(str(tmp_path / "store"))
    bucket = request.getfixturevalue("s3_bucket")
    return ArtifactStore.from_url(bucket.url, endpoint_url=bucket.endpoint_url, region=bucket.region)


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def generation_tree(root: Path, gen: int, n_files: int = 3) -> Path:
    files = {f"part-{i}.txt": f"generation {gen} part {i}\n".encode() * (gen + 1) for i in range(n_files)}
    return make_tree(root, files)


class CrashingBackend:
    """The real backend, with a failure injected at one step of a publish."""

    def __init__(self, inner, fail_upload_after: int | None = None, fail_current: bool = False, corrupt: str = ""):
        self.inner = inner
        self.fail_upload_after = fail_upload_after
        self.fail_current = fail_current
        self.corrupt = corrupt
        self.uploads = 0

    def __getattr__(self, attr):
        return getattr(self.inner, attr)

    def upload_file(self, src, key, callback=None):
        if self.fail_upload_after is not None and self.uploads >= self.fail_upload_after:
            raise ConnectionError(f"injected crash after {self.uploads} uploads")
        self.uploads += 1
        if self.corrupt and key.endswith("/" + self.corrupt):
            data = bytearray(Path(src).read_bytes())
            data[0] ^= 0xFF  # same size, different bytes: only the sha256 can tell
            return self.inner.write_bytes(key, bytes(data))
        return self.inner.upload_file(src, key, callback)

    def write_bytes(self, key, data):
        if self.fail_current and key.endswith("/CURRENT"):
            raise ConnectionError("injected crash before moving CURRENT")
        return self.inner.write_bytes(key, data)


def test_backend_contract(store: ArtifactStore, tmp_path: Path) -> None:
    b = store.backend
    assert b.list() == [] and b.children() == []
    b.write_bytes("a/b/one.bin", b"1")
    b.write_bytes("a/two.bin", b"22")
    b.write_bytes("a/c/d/three.bin", b"333")
    assert b.read_bytes("a/two.bin") == b"22"
    assert b.exists("a/b/one.bin") and not b.exists("a/b") and not b.exists("a/nope")
    assert b.list() == ["a/b/one.bin", "a/c/d/three.bin", "a/two.bin"]
    assert b.list("a/c/") == ["a/c/d/three.bin"]
    assert b.children() == ["a"] and b.children("a/") == ["b", "c"]
    assert b.checksum("a/c/d/three.bin").size == 3

    src = tmp_path / "up.bin"
    src.write_bytes(b"x" * 1000)
    got: list[int] = []
    b.upload_file(src, "a/up.bin", got.append)
    assert sum(got) == 1000
    b.download_file("a/up.bin", tmp_path / "down" / "up.bin")
    assert (tmp_path / "down" / "up.bin").read_bytes() == b"x" * 1000

    for call in (lambda: b.read_bytes("a/nope"), lambda: b.checksum("a/nope"),
                 lambda: b.download_file("a/nope", tmp_path / "nope")):
        with pytest.raises(MissingKeyError, match="a/nope"):
            call()
    assert not (tmp_path / "nope").exists()
    b.delete("a/two.bin")
    b.delete("a/two.bin")  # deleting a missing key is fine
    assert b.delete_prefix("a/c/") == 1
    assert b.list() == ["a/b/one.bin", "a/up.bin"]
    for bad in ("../x", "/abs", "a//b", "a/./b", ""):
        with pytest.raises(InvalidArtifactNameError):
            b.write_bytes(bad, b"")
    with pytest.raises(InvalidArtifactNameError):
        b.delete_prefix("")


def test_publish_fetch_roundtrip(store: ArtifactStore, tmp_path: Path) -> None:
    files = {
        "index.faiss": os.urandom(BIG),
        "ids.json": json.dumps(["d1", "d2", "d3"]).encode(),
        "nested/deeper/config.json": b'{"nlist": 16}',
        "empty.bin": b"",
    }
    src = make_tree(tmp_path / "src", files)
    meta = {"model": "two-tower@x", "metrics": {"recall@10": 0.5}}

    av = store.publish("index", "two-tower", src, metadata=meta)

    assert VERSION_RE.match(av.version)
    assert set(av.files) == set(files)
    assert av.files["index.faiss"]["size"] == BIG
    assert av.metadata == meta
    assert store.current("index", "two-tower") == av
    assert store.get("index", "two-tower") == av
    assert store.get("index", "two-tower", av.version) == av
    assert store.list_versions("index", "two-tower") == [av]
    assert store.list_names("index") == ["two-tower"]
    assert store.list_kinds() == ["index"]

    fetched = store.fetch("index", "two-tower")
    assert read_tree(fetched) == files
    assert fetched.is_relative_to(tmp_path / "home")  # default cache under the settings home
    assert store.fetch("index", "two-tower", av.version) == fetched  # cache hit, same directory

    dest = store.fetch("index", "two-tower", dest=tmp_path / "out")
    assert dest == tmp_path / "out" and read_tree(dest) == files

    # every stored key is under the version prefix, except the pointer
    keys = store.backend.list("index/two-tower/")
    prefix = f"index/two-tower/versions/{av.version}/"
    assert sorted(keys) == sorted(
        [f"{prefix}files/{rel}" for rel in files] + [prefix + "manifest.json", "index/two-tower/CURRENT"]
    )
    if isinstance(store.backend, S3Backend):
        key = store.backend._key(store.file_key("index", "two-tower", av.version, "index.faiss"))
        head = store.backend.client.head_object(Bucket=store.backend.bucket, Key=key)
        assert head["ETag"].strip('"').endswith("-2"), "large file must go up in two multipart parts"
        assert head["ContentLength"] == BIG


def test_single_file_source(store: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "model.pt"
    src.write_bytes(b"weights")
    av = store.publish("model", "two-tower", src)
    assert list(av.files) == ["model.pt"]
    assert read_tree(store.fetch("model", "two-tower", dest=tmp_path / "m")) == {"model.pt": b"weights"}


def test_versions_sorted_and_rollback(store: ArtifactStore, tmp_path: Path) -> None:
    published = [store.publish("dataset", "toy", generation_tree(tmp_path / f"g{g}", g), {"gen": g}) for g in range(3)]

    listed = store.list_versions("dataset", "toy")
    assert [v.version for v in listed] == [v.version for v in published]  # oldest first = publish order
    assert sorted(v.version for v in published) == [v.version for v in published]
    assert [version_time(v.version) for v in listed] == sorted(version_time(v.version) for v in listed)
    assert store.current("dataset", "toy").metadata == {"gen": 2}

    rolled = store.set_current("dataset", "toy", published[0].version)
    assert rolled == published[0]
    assert store.current("dataset", "toy") == published[0]
    assert read_tree(store.fetch("dataset", "toy", dest=tmp_path / "r")) == read_tree(tmp_path / "g0")
    assert store.list_versions("dataset", "toy") == listed  # rollback keeps every version

    unknown = published[0].version[:-8] + "ffffffff"
    with pytest.raises(ArtifactNotFoundError) as err:
        store.set_current("dataset", "toy", unknown)
    assert published[1].version in str(err.value)
    assert store.current("dataset", "toy") == published[0]


@pytest.mark.parametrize("crash", ["upload", "current"])
def test_crash_mid_publish_keeps_previous_version(store: ArtifactStore, tmp_path: Path, crash: str) -> None:
    first = store.publish("dataset", "toy", generation_tree(tmp_path / "g0", 0), {"gen": 0})
    fail_after = 2 if crash == "upload" else None
    crashing = ArtifactStore(
        CrashingBackend(store.backend, fail_upload_after=fail_after, fail_current=crash == "current")
    )

    with pytest.raises(ConnectionError, match="injected"):
        crashing.publish("dataset", "toy", generation_tree(tmp_path / "g1", 1), {"gen": 1})

    assert store.current("dataset", "toy") == first
    assert read_tree(store.fetch("dataset", "toy", dest=tmp_path / "after")) == read_tree(tmp_path / "g0")
    version_dirs = store.backend.children("dataset/toy/versions/")
    assert len(version_dirs) == 2  # the failed publish did leave its files behind
    partial = next(v for v in version_dirs if v != first.version)
    listed = [v.version for v in store.list_versions("dataset", "toy")]
    if crash == "upload":
        assert listed == [first.version]  # no manifest: never listed
        assert len(store.backend.list(f"dataset/toy/versions/{partial}/")) == 2
        assert store.gc_incomplete() == []  # too young: could still be uploading
        assert store.gc_incomplete(min_age=timedelta(0)) == [f"dataset/toy@{partial}"]
        assert store.backend.children("dataset/toy/versions/") == [first.version]
    else:
        assert listed == [first.version, partial]  # complete and verified, just not promoted
        assert store.gc_incomplete(min_age=timedelta(0)) == []
        assert store.set_current("dataset", "toy", partial).metadata == {"gen": 1}

    again = store.publish("dataset", "toy", generation_tree(tmp_path / "g2", 2), {"gen": 2})
    assert store.current("dataset", "toy") == again


def test_validate_hook_failure_writes_nothing(store: ArtifactStore, tmp_path: Path) -> None:
    first = store.publish("features", "searcher", generation_tree(tmp_path / "g0", 0))
    seen: list[Path] = []

    def gate(path: Path) -> None:
        seen.append(path)
        raise ValueError("expectation failed: null searcher_id")

    with pytest.raises(ValueError, match="null searcher_id"):
        store.publish("features", "searcher", tmp_path / "g0", validate=gate)
    assert seen == [tmp_path / "g0"]
    assert store.backend.children("features/searcher/versions/") == [first.version]
    assert store.current("features", "searcher") == first

    ok = store.publish("features", "searcher", generation_tree(tmp_path / "g1", 1), validate=lambda p: None)
    assert store.current("features", "searcher") == ok


def test_corruption_during_upload_fails_verification(store: ArtifactStore, tmp_path: Path) -> None:
    first = store.publish("model", "m", generation_tree(tmp_path / "g0", 0))
    crashing = ArtifactStore(CrashingBackend(store.backend, corrupt="part-1.txt"))
    with pytest.raises(ChecksumMismatchError, match="part-1.txt"):
        crashing.publish("model", "m", generation_tree(tmp_path / "g1", 1))
    assert store.current("model", "m") == first
    assert store.backend.children("model/m/versions/") == [first.version]  # failed version removed at once


def test_checksum_corruption_detected_on_fetch(store: ArtifactStore, tmp_path: Path) -> None:
    av = store.publish("index", "ivf", generation_tree(tmp_path / "src", 0))
    key = store.file_key("index", "ivf", av.version, "part-1.txt")
    good = store.backend.read_bytes(key)
    store.backend.write_bytes(key, bytes([good[0] ^ 0xFF]) + good[1:])  # same size, different content

    with pytest.raises(ChecksumMismatchError, match="part-1.txt"):
        store.fetch("index", "ivf", dest=tmp_path / "dest")
    assert not (tmp_path / "dest").exists()  # nothing half-verified lands at dest
    with pytest.raises(ChecksumMismatchError, match="part-1.txt"):
        store.verify(av)

    store.backend.write_bytes(key, good[:-1])  # truncated
    with pytest.raises(ChecksumMismatchError, match="size"):
        store.fetch("index", "ivf")


def test_tampered_cache_is_refetched(store: ArtifactStore, tmp_path: Path) -> None:
    store.publish("dataset", "toy", generation_tree(tmp_path / "src", 0))
    cached = store.fetch("dataset", "toy")
    (cached / "part-0.txt").write_bytes(b"edited by hand")
    assert read_tree(store.fetch("dataset", "toy")) == read_tree(tmp_path / "src")



def test_the_fetch_cache_keeps_the_newest_copies_and_the_current_one(store: ArtifactStore, tmp_path: Path) -> None:
    published = [store.publish("dataset", "toy", generation_tree(tmp_path / f"g{g}", g)) for g in range(4)]
    for av in published:
        store.fetch("dataset", "toy", av.version)
    store.set_current("dataset", "toy", published[0].version)  # a rollback: the oldest copy is served
    cached = store.cache_dir / "dataset" / "toy"
    assert store.prune_cache(keep=2) == [f"dataset/toy@{published[1].version}"]
    assert sorted(p.name for p in cached.iterdir()) == sorted(
        [published[0].version, published[2].version, published[3].version])
    assert store.prune_cache(keep=2) == []
    assert read_tree(store.fetch("dataset", "toy", published[1].version)) == read_tree(tmp_path / "g1")  # refetched

def test_concurrent_readers_see_old_or_new(store: ArtifactStore, tmp_path: Path) -> None:
    generations = 4
    srcs = [generation_tree(tmp_path / f"g{g}", g) for g in range(generations)]
    store.publish("dataset", "live", srcs[0], {"gen": 0})
    done = threading.Event()
    errors: list[BaseException] = []
    seen: list[list[int]] = [[] for _ in range(3)]

    def reader(i: int) -> None:
        n = 0
        try:
            while not done.is_set() or n == 0:
                av = store.current("dataset", "live")
                out = store.fetch("dataset", "live", av.version, dest=tmp_path / f"r{i}-{n}")
                gen = av.metadata["gen"]
                assert read_tree(out) == read_tree(srcs[gen])
                seen[i].append(gen)
                n += 1
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(len(seen))]
    for t in threads:
        t.start()
    try:
        for g in range(1, generations):
            store.publish("dataset", "live", srcs[g], {"gen": g})
    finally:
        done.set()
        for t in threads:
            t.join(timeout=30)
    assert not errors, errors
    for gens in seen:
        assert gens and gens == sorted(gens)  # the pointer only moves forward: never back to an older version
    assert store.current("dataset", "live").metadata == {"gen": generations - 1}


def test_clear_errors(store: ArtifactStore, tmp_path: Path) -> None:
    src = generation_tree(tmp_path / "src", 0)
    for kind in ("Dataset", "a/b", "", "dataset!"):
        with pytest.raises(InvalidArtifactNameError, match="kind"):
            store.publish(kind, "toy", src)
    for name in ("../up", "", ".hidden", "a/b"):
        with pytest.raises(InvalidArtifactNameError, match="name"):
            store.publish("dataset", name, src)
    with pytest.raises(InvalidArtifactNameError, match="version"):
        store.get("dataset", "toy", "latest")

    store.publish("dataset", "toy", src)
    assert store.current("dataset", "nope") is None
    assert store.list_versions("dataset", "nope") == []
    with pytest.raises(ArtifactNotFoundError, match=r"unknown artifact dataset/nope.*'toy'"):
        store.get("dataset", "nope")
    with pytest.raises(ArtifactNotFoundError, match="unknown artifact model/toy"):
        store.fetch("model", "toy")

    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="no files"):
        store.publish("dataset", "toy", tmp_path / "empty")
    with pytest.raises(ArtifactError, match="JSON"):
        store.publish("dataset", "toy", src, metadata={"when": object()})


def test_from_url_and_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s3 = ArtifactStore.from_url("s3://bucket/some/prefix/", endpoint_url="http://127.0.0.1:1", region="eu-west-1")
    assert isinstance(s3.backend, S3Backend)
    assert (s3.backend.bucket, s3.backend.prefix, s3.backend.region) == ("bucket", "some/prefix", "eu-west-1")
    assert isinstance(ArtifactStore.from_url(str(tmp_path)).backend, LocalBackend)
    with pytest.raises(InvalidArtifactNameError, match="bucket"):
        ArtifactStore.from_url("s3:///prefix")
    for url in ("ftp://x/y", "http://host/bucket", "gs://bucket/prefix"):  # not a folder named "ftp:" here
        with pytest.raises(InvalidArtifactNameError, match="unsupported storage url"):
            ArtifactStore.from_url(url)
    assert not Path("ftp:").exists()

    monkeypatch.setenv("EBR_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EBR_STORAGE_URL", raising=False)
    local = ArtifactStore.from_settings()
    assert isinstance(local.backend, LocalBackend) and local.backend.root == tmp_path / "home" / "artifacts"
    assert local.cache_dir == tmp_path / "home" / "cache" / "artifacts"


@pytest.mark.server
def test_from_settings_on_s3(s3_store_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setenv("EBR_HOME", str(tmp_path / "home"))
    store = ArtifactStore.from_settings()
    assert isinstance(store.backend, S3Backend) and store.backend.bucket == s3_store_env.name
    av = store.publish("dataset", "toy", generation_tree(tmp_path / "src", 0))
    objects = s3_store_env.server.client().list_objects_v2(Bucket=s3_store_env.name)["Contents"]
    assert f"artifacts/dataset/toy/versions/{av.version}/manifest.json" in {o["Key"] for o in objects}
