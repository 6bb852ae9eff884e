"""`ebr versions`: list, show, current, rollback, gc and copy (local -> S3 over moto's HTTP server)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from infra.storage import ArtifactStore


@pytest.fixture
def store(home, tmp_path, monkeypatch):
    monkeypatch.setenv("EBR_STORAGE_URL", str(tmp_path / "artifacts"))  # a fresh store per test
    st = ArtifactStore.from_settings()
    refs = {}
    for i in range(3):
        f = tmp_path / f"model-{i}"
        f.mkdir()
        (f / "model.pt").write_bytes(b"weights %d" % i)
        refs[f"m{i}"] = st.publish("model", "m", f, {"i": i}).ref
    idx = tmp_path / "index"
    idx.mkdir()
    (idx / "index.faiss").write_bytes(b"vectors")
    # the index names the oldest model version: gc must keep that one
    refs["index"] = st.publish("index", "d", idx, {"model": {"ref": refs["m0"]}}).ref
    return st, refs


def ebr(*args: str) -> str:
    from cli.main import app

    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_list_show_current_and_rollback(store):
    st, refs = store
    assert "model/m  current" in ebr("versions", "list") and "(3 versions)" in ebr("versions", "list")
    lines = ebr("versions", "list", "model", "m").strip().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("*")  # the newest is current
    assert ebr("versions", "current", "model", "m").strip() == refs["m2"]
    shown = json.loads(ebr("versions", "show", "model", "m", refs["m1"].split("@")[1]))
    assert shown["metadata"] == {"i": 1} and "model.pt" in shown["files"]
    ebr("versions", "rollback", "model", "m", refs["m1"].split("@")[1])
    assert st.get("model", "m").ref == refs["m1"]


def test_rollback_to_a_damaged_version_is_refused_and_the_current_one_stays(store):
    from cli.main import app

    st, refs = store
    old = st.get("model", "m", refs["m1"].split("@")[1])
    path = st.backend.root / st.file_key("model", "m", old.version, "model.pt")
    path.write_bytes(path.read_bytes()[:3])  # truncated in the store
    result = CliRunner().invoke(app, ["versions", "rollback", "model", "m", old.version])
    said = result.output + str(result.exception)
    assert result.exit_code != 0 and "checksum mismatch" in said and "model.pt" in said
    assert st.get("model", "m").ref == refs["m2"]  # still the current one


def test_gc_keeps_current_and_referenced_versions(store):
    st, refs = store
    st.set_current("model", "m", refs["m1"].split("@")[1])
    out = ebr("versions", "gc", "--keep", "1", "--dry-run")
    assert "would remove 0 incomplete and 0 old versions" in out  # m0: named by the index; m1: current
    st.set_current("model", "m", refs["m2"].split("@")[1])
    out = ebr("versions", "gc", "--keep", "1")
    assert f"removed {refs['m1']}" in out and refs["m0"] not in out
    assert [av.ref for av in st.list_versions("model", "m")] == [refs["m0"], refs["m2"]]


def test_gc_keeps_what_a_kept_version_names_transitively_and_the_dry_run_lists_exactly_what_goes(store, tmp_path):
    st, refs = store
    ex = {}
    for i in range(3):  # training examples; the oldest is what the index's model was trained on
        f = tmp_path / f"examples-{i}"
        f.mkdir()
        (f / "train.parquet").write_bytes(b"rows %d" % i)
        ex[i] = st.publish("dataset", "e", f, {"i": i}).ref
    f = tmp_path / "model-trained-on-e0"
    f.mkdir()
    (f / "model.pt").write_bytes(b"weights on e0")
    named = st.publish("model", "served", f, {"examples": ex[0]}).ref
    f = tmp_path / "model-newer"
    f.mkdir()
    (f / "model.pt").write_bytes(b"newer weights")
    st.publish("model", "served", f, {"examples": ex[2]})
    f = tmp_path / "index-on-it"
    f.mkdir()
    (f / "index.faiss").write_bytes(b"vectors of the served model")
    st.publish("index", "d", f, {"model": {"ref": named}})  # current index -> old model -> oldest examples
    killed = st.version_prefix("model", "m", "20200101T000000Z-0badc0de")  # a publish killed long ago
    st.backend.write_bytes(killed + "files/model.pt", b"half")

    planned = ebr("versions", "gc", "--keep", "1", "--dry-run").splitlines()
    done = ebr("versions", "gc", "--keep", "1").splitlines()
    assert [line.replace("would remove", "removed") for line in planned] == done
    assert "removed model/m@20200101T000000Z-0badc0de" in done
    left = {av.ref for k, n in (("dataset", "e"), ("model", "served")) for av in st.list_versions(k, n)}
    assert named in left and ex[0] in left and ex[1] not in left  # index -> model -> examples all kept
    from flows.evaluate import _examples_of

    assert _examples_of(st.get("model", "served", named.split("@")[1]).metadata, "e") == ex[0].split("@")[1]


def test_copy_a_version_to_s3_keeps_its_id_and_checksums(store, s3_bucket, monkeypatch):
    st, refs = store
    monkeypatch.setenv("EBR_S3_ENDPOINT_URL", s3_bucket.endpoint_url)
    monkeypatch.setenv("EBR_S3_REGION", s3_bucket.region)
    out = ebr("versions", "copy", "model", "m", "--to", s3_bucket.url, "--current")
    assert refs["m2"] in out
    s3 = ArtifactStore.from_url(s3_bucket.url, s3_bucket.endpoint_url, s3_bucket.region)
    copied = s3.get("model", "m")
    assert copied.ref == refs["m2"] and copied.files == st.get("model", "m").files
    assert ebr("versions", "current", "model", "m", "--store", s3_bucket.url).strip() == refs["m2"]
    again = ebr("versions", "copy", "model", "m", "--to", s3_bucket.url)  # idempotent
    assert refs["m2"] in again and len(s3.list_versions("model", "m")) == 1


def test_versions_on_s3_list_roll_back_and_collect(store, s3_bucket, monkeypatch):
    """The same commands on an S3 store (`--store s3://...`): every version copied there is listed, a
    rollback moves the pointer, gc keeps the current one; a bucket that does not exist is one readable line
    (a subprocess: what an operator sees), not a traceback."""
    import subprocess
    import sys

    from infra.settings import PROJECT_ROOT

    st, refs = store
    monkeypatch.setenv("EBR_S3_ENDPOINT_URL", s3_bucket.endpoint_url)
    monkeypatch.setenv("EBR_S3_REGION", s3_bucket.region)
    for key in ("m0", "m1", "m2"):
        ebr("versions", "copy", "model", "m", refs[key].split("@")[1], "--to", s3_bucket.url)
    ebr("versions", "rollback", "model", "m", refs["m1"].split("@")[1], "--store", s3_bucket.url)
    lines = ebr("versions", "list", "model", "m", "--store", s3_bucket.url).strip().splitlines()
    assert len(lines) == 3 and [line.startswith("*") for line in lines] == [False, True, False]
    out = ebr("versions", "gc", "--keep", "1", "--store", s3_bucket.url)
    assert f"removed {refs['m0']}" in out and refs["m1"] not in out  # m1 is current there
    s3 = ArtifactStore.from_url(s3_bucket.url, s3_bucket.endpoint_url, s3_bucket.region)
    assert [av.ref for av in s3.list_versions("model", "m")] == [refs["m1"], refs["m2"]]
    assert st.get("model", "m").ref == refs["m2"]  # the local store is untouched

    import os

    res = subprocess.run([sys.executable, "-m", "cli.main", "versions", "list", "--store", "s3://no-such-bucket-ebr"],
                         cwd=PROJECT_ROOT, env={**os.environ}, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no-such-bucket-ebr" in errors[0] + res.stderr, res.stderr
