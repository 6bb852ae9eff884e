"""Operations: schedule decisions, store faults and crash leftovers, each a failure an operator met."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from infra.run_dirs import runs_root

pytestmark = pytest.mark.faults  # the fault suite: `./run test -m faults`


def test_retrain_decision_says_why_and_never_means_never():
    from flows.nightly import NoModelError, retrain_decision

    sunday, monday = date(2026, 11, 22), date(2026, 11, 23)
    assert retrain_decision("auto", True, sunday, 6) == (True, "weekly retraining day (Sunday)")
    assert retrain_decision("auto", True, monday, 6)[0] is False
    assert retrain_decision("auto", False, monday, 6) == (True, "no registered model yet")
    assert retrain_decision("always", True, monday, 6) == (True, "retrain=always")
    assert retrain_decision("never", True, sunday, 6) == (False, "retrain=never")
    with pytest.raises(NoModelError, match="ebr train"):
        retrain_decision("never", False, sunday, 6)  # it used to train anyway, and not say so


def test_nightly_with_retrain_never_and_no_model_stops_before_any_work(home, prefect_harness):
    from flows.nightly import NoModelError, nightly
    from flows.train import artifact_key
    from tests.test_rebuild_index import _markdown_artifact

    with pytest.raises(NoModelError):
        nightly(dataset="no-model-here", start_date=date(2024, 1, 1), end_date=date(2024, 1, 1), retrain="never")
    assert not (home / "features" / "no-model-here").exists()  # nothing was materialized
    shown = _markdown_artifact(artifact_key("nightly", "no-model-here"))  # like every other failure: on its run
    assert "FAILED at retrain decision" in shown and "ebr train" in shown


# --------------------------------------------------------------------------- S3 faults


@pytest.fixture
def silent_endpoint():
    """A TCP server that accepts connections and never answers (a hung S3 endpoint)."""
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held, stop = [], threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    t.join()
    for c in held:
        c.close()
    srv.close()


def test_a_hung_s3_endpoint_fails_fast_and_is_retryable(silent_endpoint, monkeypatch):
    import time

    from infra.retries import is_transient
    from infra.storage import ArtifactStore, S3Backend, S3Timeouts
    from tests.s3_server import set_dummy_aws_env

    set_dummy_aws_env(monkeypatch)
    store = ArtifactStore(S3Backend("bucket", endpoint_url=silent_endpoint, region="us-east-1",
                                    timeouts=S3Timeouts(connect_seconds=1, read_seconds=1, attempts=2)))
    t = time.perf_counter()
    with pytest.raises(Exception) as err:
        store.get("model", "m")
    assert time.perf_counter() - t < 15  # two attempts of a 1 s read timeout, plus backoff; not minutes
    assert is_transient(err.value)
    # the settings reach the backend
    monkeypatch.setenv("EBR_STORAGE_URL", "s3://bucket/x")
    monkeypatch.setenv("EBR_S3_READ_TIMEOUT", "2.5")
    monkeypatch.setenv("EBR_S3_ATTEMPTS", "4")
    backend = ArtifactStore.from_settings().backend
    assert backend.timeouts == S3Timeouts(5.0, 2.5, 4, 900.0)


def _object_headers(handler, size: int) -> None:
    """The answer's status and headers, as S3 gives them for an object of ``size`` bytes."""
    handler.send_response(200)
    for name, value in (("Content-Length", str(size)), ("ETag", '"0"'), ("Content-Type", "binary/octet-stream"),
                        ("Last-Modified", "Thu, 01 Jan 2026 00:00:00 GMT")):
        handler.send_header(name, value)
    handler.end_headers()


def _serve(handler):
    """Serves ``handler`` on a free local port in a thread: yields its URL, then stops it."""
    import threading
    from http.server import ThreadingHTTPServer

    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def trickling_endpoint():
    """An HTTP server that answers every request at once, then sends its 4 MB body at 64 KB every 0.2 s:
    each read is well within the read timeout, the whole answer takes 13 s."""
    from http.server import BaseHTTPRequestHandler

    size, step = 4 * 1024 * 1024, 64 * 1024

    class Trickle(BaseHTTPRequestHandler):
        def do_HEAD(self):
            _object_headers(self, size)

        def do_GET(self):
            _object_headers(self, size)
            import time

            try:
                for _ in range(size // step):
                    self.wfile.write(b"x" * step)
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:  # the client gave up
                pass

        def log_message(self, *args):
            pass

    yield from _serve(Trickle)


@pytest.mark.parametrize("call", ["read", "download"])
def test_an_s3_endpoint_that_trickles_its_answer_ends_at_the_deadline(trickling_endpoint, monkeypatch, tmp_path,
                                                                      call):
    """The read timeout bounds each wait, not a call: an endpoint that keeps sending a little within it used to
    hold a call for as long as it liked. The call's overall deadline ends it, with a transient error and no
    partial file."""
    import time

    from infra.retries import is_transient
    from infra.storage import S3Backend, S3DeadlineExceeded, S3Timeouts
    from tests.s3_server import set_dummy_aws_env

    set_dummy_aws_env(monkeypatch)
    backend = S3Backend("bucket", endpoint_url=trickling_endpoint, region="us-east-1",
                        timeouts=S3Timeouts(connect_seconds=1, read_seconds=2, attempts=1, deadline_seconds=2))
    t = time.perf_counter()
    with pytest.raises(S3DeadlineExceeded, match="did not finish within 2 s") as err:
        if call == "read":
            backend.read_bytes("slow/key")
        else:
            backend.download_file("slow/key", tmp_path / "file")
    assert time.perf_counter() - t < 8  # the whole answer takes 13 s
    assert is_transient(err.value)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv("EBR_STORAGE_URL", "s3://bucket/x")
    monkeypatch.setenv("EBR_S3_DEADLINE", "60")
    from infra.storage import ArtifactStore

    assert ArtifactStore.from_settings().backend.timeouts.deadline_seconds == 60


@pytest.fixture
def stalling_endpoint():
    """An HTTP server that answers every request's headers at once, then sends nothing for 10 s."""
    import time
    from http.server import BaseHTTPRequestHandler

    class Stall(BaseHTTPRequestHandler):
        def do_HEAD(self):
            _object_headers(self, 1024)

        def do_GET(self):
            self.do_HEAD()
            time.sleep(10)

        def log_message(self, *args):
            pass

    yield from _serve(Stall)


@pytest.mark.parametrize("call", ["read", "download"])
def test_a_read_timeout_that_ends_a_call_past_its_deadline_is_the_deadline(stalling_endpoint, monkeypatch, tmp_path,
                                                                           call):
    """The socket's read timeout and the deadline's checks race: where the timeout ends a call whose deadline
    has passed (a stall longer than both), the caller gets the deadline's error, whichever fired."""
    from infra.retries import is_transient
    from infra.storage import S3Backend, S3DeadlineExceeded, S3Timeouts
    from tests.s3_server import set_dummy_aws_env

    set_dummy_aws_env(monkeypatch)
    backend = S3Backend("bucket", endpoint_url=stalling_endpoint, region="us-east-1",
                        timeouts=S3Timeouts(connect_seconds=1, read_seconds=3, attempts=1, deadline_seconds=2))
    assert backend.client is not None  # built first: on a busy machine building it can take the deadline's time
    with pytest.raises(S3DeadlineExceeded, match="did not finish within 2 s") as err:
        if call == "read":
            backend.read_bytes("slow/key")
        else:
            backend.download_file("slow/key", tmp_path / "file")
    assert err.value.__cause__ is not None  # the timeout that ended it, kept as the cause
    assert is_transient(err.value)
    assert list(tmp_path.iterdir()) == []


class CuttingProxy:
    """A TCP proxy in front of the S3 endpoint that cuts every connection once it has carried ``cut_after``
    bytes from client to server (an upload cut mid-file by the network); ``cut_after=None`` heals it."""

    def __init__(self, target: str, cut_after: int | None):
        import socket
        import threading
        from urllib.parse import urlsplit

        t = urlsplit(target)
        self.target, self.cut_after, self.cuts = (t.hostname, t.port), cut_after, 0
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(16)
        self.url = f"http://127.0.0.1:{self.srv.getsockname()[1]}"
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import socket
        import threading

        self.srv.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client = self.srv.accept()[0]
            except OSError:
                continue
            server = socket.create_connection(self.target)
            limit = self.cut_after
            threading.Thread(target=self._pump, args=(client, server, limit), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, None), daemon=True).start()

    def _pump(self, src, dst, limit):
        import socket

        sent = 0
        try:
            while data := src.recv(65536):
                if limit is not None and sent + len(data) > limit:
                    dst.sendall(data[: limit - sent])
                    self.cuts += 1
                    for sock in (src, dst):  # the network drops: both ends see a reset connection
                        sock.shutdown(socket.SHUT_RDWR)
                    return
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self._stop.set()
        self.srv.close()


def test_an_upload_cut_mid_file_keeps_the_current_version_and_a_rerun_publishes(s3_bucket, tmp_path):
    """The network cuts a publish's upload part way through a file, on every attempt: the publish fails with
    a transient (retryable) error, readers keep the current version, nothing half-uploaded is listed, the
    leftovers are collected, and the same publish succeeds once the network heals."""
    import os
    from datetime import timedelta

    from infra.retries import is_transient
    from infra.storage import ArtifactStore, S3Backend, S3Timeouts

    def backend(endpoint):
        return S3Backend(s3_bucket.name, endpoint_url=endpoint, region=s3_bucket.region,
                         timeouts=S3Timeouts(connect_seconds=2, read_seconds=5, attempts=2))

    def tree(path: Path, seed: int) -> Path:
        (path / "sub").mkdir(parents=True)
        (path / "meta.json").write_text(f'{{"seed": {seed}}}')
        (path / "sub" / "weights.bin").write_bytes(os.urandom(3_000_000))  # one PUT, cut after 1 MB
        return path

    direct = ArtifactStore(backend(s3_bucket.endpoint_url))
    first = direct.publish("model", "m", tree(tmp_path / "v0", 0))
    proxy = CuttingProxy(s3_bucket.endpoint_url, cut_after=1_000_000)
    try:
        cut = ArtifactStore(backend(proxy.url))
        with pytest.raises(Exception) as err:
            cut.publish("model", "m", tree(tmp_path / "v1", 1))
        assert proxy.cuts >= 2 and is_transient(err.value)  # every attempt was cut; worth a task retry
        assert direct.current("model", "m") == first
        assert [v.version for v in direct.list_versions("model", "m")] == [first.version]
        fetched = direct.fetch("model", "m", dest=tmp_path / "read")
        assert (fetched / "meta.json").read_text() == '{"seed": 0}'
        assert len(direct.gc_incomplete(min_age=timedelta(0))) == 1  # the cut version's files

        proxy.cut_after = None  # the network heals: the re-run publishes through the same endpoint
        again = cut.publish("model", "m", tree(tmp_path / "v2", 2))
        assert direct.current("model", "m") == again
        got = direct.fetch("model", "m", dest=tmp_path / "read2")
        assert (got / "sub" / "weights.bin").read_bytes() == (tmp_path / "v2" / "sub" / "weights.bin").read_bytes()
    finally:
        proxy.close()


def test_only_transient_errors_are_retried(s3_bucket, prefect_harness):
    from prefect import flow, task

    from infra.retries import is_transient, retry_transient
    from infra.storage import ArtifactNotFoundError, ArtifactStore

    missing_bucket = ArtifactStore.from_url(f"s3://{s3_bucket.name}-absent/x", s3_bucket.endpoint_url, s3_bucket.region)
    with pytest.raises(Exception) as err:
        missing_bucket.publish("model", "m", __file__, {})
    assert not is_transient(err.value)  # NoSuchBucket: the same answer every time
    from botocore.exceptions import ClientError

    def s3_error(code: str, status: int) -> ClientError:  # what botocore raises for S3's answer
        return ClientError({"Error": {"Code": code, "Message": code},
                            "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")

    # a denied permission (moto, which the tests use, does not enforce IAM) fails the same way every time
    assert not is_transient(s3_error("AccessDenied", 403)) and not is_transient(s3_error("InvalidAccessKeyId", 403))
    assert is_transient(s3_error("SlowDown", 503)) and is_transient(s3_error("InternalError", 500))

    calls = {"missing": 0, "flaky": 0}

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=retry_transient)
    def missing_model():
        calls["missing"] += 1
        raise ArtifactNotFoundError("no model m")

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=retry_transient)
    def flaky():
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            raise ConnectionResetError("connection reset by peer")
        return "ok"

    @flow
    def run():
        try:
            missing_model()
        except ArtifactNotFoundError:
            pass
        return flaky()

    assert run() == "ok"
    assert calls == {"missing": 1, "flaky": 3}


# --------------------------------------------------------------------------- crash leftovers


def test_publishing_flows_keep_the_newest_versions_of_each_artifact(tmp_path, monkeypatch, prefect_harness):
    """Retention of artifact versions, applied when a publishing flow starts: beyond the newest
    EBR_KEEP_VERSIONS of an artifact a version goes, unless it is current (a rollback) or a kept version
    names it (the index's model); 0 keeps everything."""
    from prefect import flow

    from flows.housekeeping import clean_up_leftovers
    from infra.storage import ArtifactStore

    monkeypatch.setenv("EBR_STORAGE_URL", str(tmp_path / "artifacts"))
    store = ArtifactStore.from_settings()
    refs = []
    for i in range(5):
        f = tmp_path / f"model-{i}"
        f.mkdir()
        (f / "model.pt").write_bytes(b"weights %d" % i)
        refs.append(store.publish("model", "m", f, {"i": i}).ref)
    index = tmp_path / "index"
    index.mkdir()
    (index / "index.faiss").write_bytes(b"vectors")
    store.publish("index", "d", index, {"model": {"ref": refs[0]}})
    store.set_current("model", "m", refs[1].split("@")[1])  # rolled back

    @flow
    def housekeeping():
        return clean_up_leftovers(tmp_path / "runs")

    monkeypatch.setenv("EBR_KEEP_VERSIONS", "0")
    assert housekeeping()["old_versions"] == [] and len(store.list_versions("model", "m")) == 5
    monkeypatch.setenv("EBR_KEEP_VERSIONS", "2")
    assert housekeeping()["old_versions"] == [refs[2]]
    assert [av.ref for av in store.list_versions("model", "m")] == [refs[0], refs[1], refs[3], refs[4]]
    assert store.get("model", "m").ref == refs[1]


def test_a_killed_runs_directory_is_swept_and_retention_keeps_the_newest(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from infra.run_dirs import MARKER, Retention, finish_run_dir, killed, new_run_dir, run_dir, sweep_run_dirs

    root = tmp_path / "runs"
    # a run killed mid-way: its process made the directory, wrote files, and died without ending it
    code = ("import sys, time; from pathlib import Path; from infra.run_dirs import new_run_dir; "
            "p = new_run_dir(Path(sys.argv[1])); (p / 'vectors.npy').write_bytes(b'x' * 1000); "
            "print(p, flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(root)], stdout=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(__file__)))
    left = Path(proc.stdout.readline().strip())
    live = new_run_dir(root, "live")  # this process: running
    assert not killed(left) and not killed(live)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert killed(left) and not killed(live)

    finished = []
    for i in range(4):
        with run_dir(root, f"done{i}") as p:
            (p / "report.json").write_text("{}")
        finished.append(p)
        time.sleep(0.01)
    old = finished[0]
    os.utime(old, (time.time() - 30 * 86_400,) * 2)
    removed = sweep_run_dirs(root, Retention(keep=2, max_age_days=14))
    assert set(removed) == {left, old}  # the killed run, and a finished one past retention
    assert live.exists() and (live / MARKER).exists() and all(p.exists() for p in finished[1:])
    assert not (finished[1] / MARKER).exists()
    with pytest.raises(RuntimeError):
        with run_dir(root, "failing", remove=True) as p:
            raise RuntimeError("boom")
    assert not p.exists()  # removed on failure too
    finish_run_dir(live)

    # mining runs are named by their inputs (a re-run resumes them): kept by last touch, not by name
    from infra.run_dirs import prune_keyed_dirs

    mining = tmp_path / "mine"
    dirs = {}
    for i, age_days in enumerate([40, 30, 20, 1, 50]):
        d = mining / f"key{i}" / "round-1"
        d.mkdir(parents=True)
        for path in (d, d.parent):
            os.utime(path, (time.time() - age_days * 86_400,) * 2)
        dirs[i] = d.parent
    removed = prune_keyed_dirs(mining, Retention(keep=2, max_age_days=14), keep={"key4"})
    assert set(removed) == {dirs[0], dirs[1]}  # key3 and key2 are the newest two; key4 is the run resuming



# --------------------------------------------------------------------------- a failed nightly says why


def test_a_failed_nightly_shows_the_step_and_the_report_on_its_own_run(home, prefect_harness):
    from flows.nightly import failure_markdown, nightly
    from flows.train import artifact_key
    from tests.test_rebuild_index import _markdown_artifact
    from validation.gate import GateFailed, GateFailure, GateReport

    gate = GateReport(name="sessions", passed=False, row_count=3,
                      failures=[GateFailure("expect_column_values_to_be_in_set", "_unknown_doc_ids", 1, ["d404"])])
    text = failure_markdown("w", "training data", GateFailed(gate))
    assert "FAILED at training data" in text and "d404" in text and "Data gate `sessions`" in text

    with pytest.raises(Exception):
        nightly(dataset="never-generated", start_date=date(2024, 1, 1), end_date=date(2024, 1, 1))
    shown = _markdown_artifact(artifact_key("nightly", "never-generated"))
    assert "FAILED at materialize" in shown and "never-generated" in shown


# --------------------------------------------------------------------------- inputs gated before serving


@pytest.mark.parametrize("isolate", [False, True], ids=["in-process", "child-process"])
def test_materialize_gates_the_canonical_tables_before_anything_reaches_the_online_store(
        home, prefect_harness, isolate):
    """A click on a document that does not exist (a file changed after ingestion) used to pass into features
    and the online store; the materialize flow now stops at its input gate with nothing written. The same when
    the gates run in a child process (what a large world does): every table's report comes back to the run."""
    import pyarrow.parquet as pq

    from features.store import FeatureRepo
    from flows.materialize import materialize
    from infra.settings import get_settings
    from ingest.contract import write_dataset
    from ingest.synthetic import WorldConfig, generate_world
    from validation.gate import GateFailed

    name = f"corrupt-clicks-{'isolated' if isolate else 'inline'}"
    path = get_settings().data_dir / name
    write_dataset(generate_world(WorldConfig.preset("tiny")), path, source="synthetic")
    table = pq.read_table(path / "sessions.parquet")
    sessions = table.to_pandas()
    row = sessions.index[sessions["clicked"].map(len) > 0][0]
    sessions.at[row, "clicked"] = ["d404-not-a-document"]
    pq.write_table(table.from_pandas(sessions, schema=table.schema, preserve_index=False), path / "sessions.parquet")

    day = sessions["ts"].max().date()
    with pytest.raises(GateFailed, match="d404-not-a-document"):
        materialize(dataset=name, start_date=day, end_date=day, isolate_gates=isolate)
    repo = FeatureRepo.for_dataset(name)
    assert repo.source_days("searcher") == [] and not repo.online_store_path.exists()
    from validation.gate import latest_report

    runs = runs_root("materialize", name)
    assert not latest_report(runs, "sessions", passed_only=False).passed
    for table in ("searchers", "documents", "memberships", "friendships"):
        assert latest_report(runs, table).passed  # kept, and the next run compares with them


# --------------------------------------------------------------------------- raw files that break an adapter


def test_a_malformed_raw_file_is_named_with_its_line(tmp_path):
    import shutil

    from infra.settings import get_settings
    from ingest.datasets import load_source
    from ingest.datasets.common import SourceFileError

    src = get_settings().datasets_dir / "movielens_100k"
    root = tmp_path / "datasets"
    shutil.copytree(src, root / "movielens_100k")
    base = root / "movielens_100k" / "ua.base"
    lines = base.read_text().splitlines()
    lines[41] = lines[41] + "\textra"  # line 42: one field too many
    base.write_text("\n".join(lines) + "\n")
    with pytest.raises(SourceFileError, match=r"ua\.base: line 42: malformed row"):
        load_source("movielens", root)
    lines[41] = "1\t2\tfive\t881250949"  # line 42: a rating that is not a number
    base.write_text("\n".join(lines) + "\n")
    with pytest.raises(SourceFileError, match=r"ua\.base: line 42: rating 'five' is not an integer"):
        load_source("movielens", root)


# --------------------------------------------------------------------------- runs of killed commands


@pytest.mark.slow
def test_a_killed_command_s_run_is_marked_crashed_by_the_next_command(tmp_path):
    """`kill -9` of an ebr command leaves its flow run Running in Prefect's database (the process cannot report
    its end); the next ebr flow command marks it Crashed, so the UI never shows a dead run as running."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "EBR_HOME": str(tmp_path / "home"), "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)

    def ebr(*args, **kw):
        return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=root, env=env, capture_output=True,
                              text=True, timeout=900, **kw)

    assert ebr("generate", "--preset", "tiny", "--name", "killed").returncode == 0
    with open(tmp_path / "materialize.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", "materialize", "--dataset", "killed", "--start",
                                 "2024-03-04", "--end", "2024-04-28", "--every-days", "1"], cwd=root, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    runs = tmp_path / "home" / "runs" / "materialize" / "killed"
    while not any((d / "RUNNING").exists() for d in runs.glob("*")):  # its flow run is under way
        assert proc.poll() is None, (tmp_path / "materialize.log").read_text()[-3000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    nxt = ebr("evaluate", "--dataset", "killed")  # any flow command: this one fails at once (no model)
    assert "marked 1 run(s) of killed ebr commands as Crashed" in nxt.stderr + nxt.stdout, nxt.stderr[-3000:]
    states = subprocess.run([sys.executable, "-c", """
import json
from prefect.client.orchestration import get_client
with get_client(sync_client=True) as c:
    print(json.dumps({r.name: r.state.type.value for r in c.read_flow_runs() if r.flow_id}))
"""], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    by_state = json.loads(states.stdout.strip().splitlines()[-1])
    assert "CRASHED" in by_state.values() and "RUNNING" not in by_state.values(), by_state
