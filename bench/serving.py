"""`ebr serve` under load, started as the README starts it, beside the minimal app doing the same search.

    python -m bench.serving [--dataset synthetic-default] [--clients 1,8,32] [--seconds 10] [--workers 1,2]

Needs the dataset's published index, model and online store (``./run demo`` makes them) and ``wrk`` (Debian's
package). Each server runs in its own process on 127.0.0.1: ``ebr serve`` (nn mode, access log on, as
documented) with 1 and 2 worker processes, and ``bench.minimal_app`` (FastAPI + the query tower + FAISS on
the same index, no online feature read). ``wrk`` (one thread) posts the newest sessions' queries, in turn,
for ``--seconds`` at each client count. Per row: requests per second, the server's CPU time per request
(user + system of its process tree over the run, from /proc via psutil), latency p50/p99 from wrk, and
requests that did not get a 200. Then an overload burst (``--burst`` clients against one worker with a small
``--max-queue``): how many were shed with 503, the accepted requests' p99 against the deadline, and the
server's memory before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.retrieval_quality import RESULTS, machine, write

ROOT = Path(__file__).resolve().parent.parent
K = 10


@dataclass
class Run:
    server: str
    workers: int
    clients: int
    rps: float
    cpu_ms: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int

    def row(self) -> str:
        return (f"| {self.server} | {self.workers} | {self.clients} | {self.rps:,.0f} | {self.cpu_ms:.2f} | "
                f"{self.p50_ms:.2f} | {self.p99_ms:.2f} | {self.errors} |")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lua_script(pairs: list[tuple[str, str]], path: Path) -> Path:
    bodies = [json.dumps({"query": q, "searcher_id": s, "k": K, "mode": "nn"}) for q, s in pairs]
    lines = ["local bodies = {"] + [f"  {json.dumps(b)}," for b in bodies] + ["}", "local i = 0",
             "request = function()", "  i = i % #bodies + 1",
             '  return wrk.format("POST", "/search", {["Content-Type"] = "application/json"}, bodies[i])', "end"]
    path.write_text("\n".join(lines) + "\n")
    return path


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    """The server with its output in ``log`` (a pipe nobody reads would block it once full)."""
    with open(log, "w") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_ready(proc: subprocess.Popen, url: str, log: Path) -> None:
    import httpx

    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)


def cpu_seconds(pid: int) -> float:
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def rss_mb(pid: int) -> float:
    import psutil

    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def wrk(url: str, script: Path, clients: int, seconds: float) -> dict:
    out = subprocess.run(["wrk", "-t1", f"-c{clients}", f"-d{max(1, round(seconds))}s", "--latency", "-s", str(script),
                          url], capture_output=True, text=True, check=True).stdout
    lat = {p: _ms(v, u) for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)$", out, re.M)}
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    errors += sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return {"requests": requests, "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50": lat.get("50", float("nan")), "p99": lat.get("99", float("nan")), "errors": errors, "raw": out}


@contextmanager
def served(cmd: list[str], env: dict, url: str, script: Path, log: Path) -> Iterator[subprocess.Popen]:
    """A server process, ready and warmed up (its first requests load lazily initialized code), stopped after."""
    proc = start(cmd, env, log)
    try:
        wait_ready(proc, url, log)
        wrk(url, script, 4, 2)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def measure(name: str, workers: int, cmd: list[str], env: dict, url: str, script: Path, clients: list[int],
            seconds: float) -> list[Run]:
    runs = []
    with served(cmd, env, url, script, script.with_name(f"{name.split()[0]}-{workers}.log")) as proc:
        for c in clients:
            before = cpu_seconds(proc.pid)
            r = wrk(url, script, c, seconds)
            cpu = cpu_seconds(proc.pid) - before
            runs.append(Run(name, workers, c, r["rps"], 1e3 * cpu / max(r["requests"], 1), r["p50"], r["p99"],
                            r["errors"], r["requests"]))
            print(runs[-1].row(), flush=True)
    return runs


def burst(dataset: str, env: dict, script: Path, clients: int, seconds: float, max_queue: int,
          timeout: float) -> list[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "cli.main", "serve", "--dataset", dataset, "--port", str(port), "--max-queue",
           str(max_queue), "--timeout", str(timeout), "--poll-seconds", "3600", "--no-access-log"]
    with served(cmd, env, url, script, script.with_name("burst.log")) as proc:
        before = rss_mb(proc.pid)
        r = wrk(url, script, clients, seconds)
        after = rss_mb(proc.pid)
    answered = r["requests"] - r["errors"]
    return [f"| {clients} | {max_queue} | {r['requests']:,} | {answered:,} | {r['errors']:,} | "
            f"{r['p99']:.1f} | {timeout * 1e3:.0f} | {before:.0f} | {after:.0f} |"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="synthetic-default")
    p.add_argument("--clients", default="1,8,32")
    p.add_argument("--workers", default="1,2")
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--burst", type=int, default=128, help="clients of the overload burst (0: skip it)")
    p.add_argument("--max-queue", type=int, default=8, help="the burst server's admission bound")
    p.add_argument("--out", default=str(RESULTS / "serving.md"))
    args = p.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]
    from bench.online_path import test_queries
    from serving.retriever import Retriever

    pairs = test_queries(args.dataset, args.queries, Retriever.load(args.dataset, threads=1))
    tmp = Path(tempfile.mkdtemp(prefix="ebr-bench-serving-"))
    (tmp / "pairs.json").write_text(json.dumps(pairs))
    script = lua_script(pairs, tmp / "post.lua")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "PROMETHEUS_MULTIPROC_DIR")}
    runs: list[Run] = []
    for w in [int(x) for x in args.workers.split(",")]:
        port = free_port()
        cmd = [sys.executable, "-m", "cli.main", "serve", "--dataset", args.dataset, "--port", str(port),
               "--workers", str(w)]  # as the README starts it (access log on); only the port differs
        runs += measure("ebr serve", w, cmd, env, f"http://127.0.0.1:{port}", script, clients, args.seconds)
    port = free_port()
    cmd = [sys.executable, "-m", "bench.minimal_app", "--dataset", args.dataset, "--pairs", str(tmp / "pairs.json"),
           "--port", str(port)]
    runs += measure("minimal FastAPI + FAISS", 1, cmd, env, f"http://127.0.0.1:{port}", script, clients, args.seconds)

    minimal = {r.clients: r for r in runs if r.server.startswith("minimal")}
    lines = [
        "# `ebr serve` under load, beside the minimal app",
        "",
        f"`python -m bench.serving {' '.join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))}`"
        f" on {machine()}; {subprocess.run(['wrk', '--version'], capture_output=True, text=True).stdout.splitlines()[0]}.",
        "",
        f"Dataset `{args.dataset}`, nn top-{K} queries of {len(pairs)} recent sessions posted in turn by wrk (one "
        f"thread) for {args.seconds:g} s per row. CPU per request: the server process tree's user + system time over "
        "the row divided by its requests. The minimal app builds each query's record at start-up (no online "
        "feature read); `ebr serve` reads the searcher's features from the online store on every request.",
        "",
        "| server | workers | clients | requests/s | CPU ms / request | p50 ms | p99 ms | not 200 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *[r.row() for r in runs],
        "",
        "| workers | clients | CPU per request vs the minimal app | requests/s vs one worker |",
        "|---:|---:|---:|---:|",
    ]
    one = {r.clients: r for r in runs if r.server == "ebr serve" and r.workers == 1}
    for r in runs:
        if r.server == "ebr serve" and r.clients in minimal and minimal[r.clients].cpu_ms and one[r.clients].rps:
            lines.append(f"| {r.workers} | {r.clients} | {r.cpu_ms / minimal[r.clients].cpu_ms:.2f}x | "
                         f"{r.rps / one[r.clients].rps:.2f}x |")
    if args.burst:
        lines += ["", f"Overload: {args.burst} clients for {args.seconds:g} s against one worker admitting "
                  f"{args.max_queue} requests (the rest get 503 + Retry-After), deadline 2 s.", "",
                  "| clients | max queue | requests | answered 200 | shed (503/504/errors) | p99 ms | deadline ms | "
                  "server MB before | server MB after |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
                  *burst(args.dataset, env, script, args.burst, args.seconds, args.max_queue, 2.0)]
    text = "\n".join(lines) + "\n"
    print(text)
    write(Path(args.out), text)


if __name__ == "__main__":
    main()
