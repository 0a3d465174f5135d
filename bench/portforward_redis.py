"""Benchmark: one real Redis reached three ways: the harness's forward, kubectl port-forward, direct.

Each run is one pytest session with the plugin on (`-n 0`, one worker with one Redis) on the
local cluster `testenv-bench`. Its only test receives the `testenv` fixture and measures, for
every path to the same redis-server process:

- harness: the worker's local listener (`testenv.host_port("redis")`, `ServiceForward`), which
  opens one websocket per connection to `pods/<pod>/portforward` on the API server;
- kubectl: `kubectl port-forward -n <worker namespace> deploy/redis <port>:6379`, a subprocess
  started by the test (one upgraded connection to the API server, one stream per connection);
- direct: the redis-server host process itself (a child of the pytest process, found in /proc).

What is measured per path: connection set-up (connect + PING + reply, a new connection each
time), sequential PING/SET/GET latency on one connection (p50, p99), pipelined SET throughput
and 8-client SET/GET throughput (both with `redis-benchmark`, 1 KiB values). The test writes
JSON; this script runs `--runs` sessions, then prints a markdown table of median and min per
metric and writes it, plus one CSV row per measurement, to bench/results/.

Run: `make bench-portforward` (or `.venv/bin/python bench/portforward_redis.py --help`).
Benchmarks print numbers; they never assert on them.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import math
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apimetrics import api_requests  # bench/ is on sys.path when a script runs
from hostinfo import load, machine
from testenv_api import primary_port
from testenv_harness.ground import children
from testenv_harness.ground.localports import free_port

if TYPE_CHECKING:
    from testenv_harness import TestEnv

CLUSTER_NAME = "testenv-bench"
NAMESPACE = "bench"
RESULTS = Path(__file__).resolve().parent / "results"
PATHS = ("harness", "kubectl", "direct")
ENV_PARAMS = "BENCH_PORTFORWARD_PARAMS"

Json = dict[str, Any]

#: (key in the run's JSON, label, unit) in table order.
METRICS: list[tuple[str, str, str]] = [
    ("connect_p50_ms", "connect + PING, p50", "ms"),
    ("connect_p99_ms", "connect + PING, p99", "ms"),
    ("ping_p50_ms", "sequential PING, p50", "ms"),
    ("ping_p99_ms", "sequential PING, p99", "ms"),
    ("set_p50_ms", "sequential SET 1 KiB, p50", "ms"),
    ("set_p99_ms", "sequential SET 1 KiB, p99", "ms"),
    ("get_p50_ms", "sequential GET 1 KiB, p50", "ms"),
    ("get_p99_ms", "sequential GET 1 KiB, p99", "ms"),
    ("pipelined_set_ops", "pipelined SET 1 KiB (1 conn, pipelines of P)", "ops/s"),
    ("concurrent_set_ops", "SET 1 KiB, C concurrent connections", "ops/s"),
    ("concurrent_get_ops", "GET 1 KiB, C concurrent connections", "ops/s"),
    ("parallel_connect_p50_ms", "connect + PING, p50, W workers at once", "ms"),
    ("parallel_connect_p99_ms", "connect + PING, p99, W workers at once", "ms"),
]


def log(message: str) -> None:
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


# -- measuring (runs inside the pytest session) ----------------------------------------------------


class Resp:
    """A minimal blocking RESP2 client: no library overhead, no extra commands on connect."""

    def __init__(self, port: int, timeout: float = 30) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb")

    def command(self, *args: bytes) -> bytes | None:
        parts = [b"*%d\r\n" % len(args)]
        for arg in args:
            parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
        self.sock.sendall(b"".join(parts))
        return self.reply()

    def reply(self) -> bytes | None:
        line = self.reader.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError(f"connection closed mid-reply ({line!r})")
        kind, rest = line[:1], line[1:-2]
        if kind in (b"+", b":"):
            return rest
        if kind == b"-":
            raise RuntimeError(f"redis error: {rest.decode(errors='replace')}")
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            return self.reader.read(size + 2)[:-2]
        raise ConnectionError(f"unexpected reply {line!r}")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def percentile(samples: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def measure_connect(port: int, count: int) -> Json:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        conn = Resp(port)
        if conn.command(b"PING") != b"PONG":
            raise RuntimeError("PING did not answer PONG")
        times.append((time.perf_counter() - started) * 1000)
        conn.close()
    return {"connect_p50_ms": percentile(times, 0.5), "connect_p99_ms": percentile(times, 0.99)}


def measure_latency(port: int, ops: int, value: bytes) -> Json:
    conn = Resp(port)
    key = b"bench:latency"
    try:
        for _ in range(min(200, ops)):  # warm-up: the first replies may include stream set-up
            conn.command(b"PING")
        result: Json = {}
        for name, args in (
            ("ping", (b"PING",)),
            ("set", (b"SET", key, value)),
            ("get", (b"GET", key)),
        ):
            times = []
            for _ in range(ops):
                started = time.perf_counter_ns()
                conn.command(*args)
                times.append((time.perf_counter_ns() - started) / 1e6)
            result[f"{name}_p50_ms"] = percentile(times, 0.5)
            result[f"{name}_p99_ms"] = percentile(times, 0.99)
        if conn.command(b"GET", key) != value:
            raise RuntimeError("GET did not return the value SET wrote")
        return result
    finally:
        conn.close()


def redis_benchmark(port: int, clients: int, pipeline: int, requests: int, tests: str, size: int) -> Json:
    argv = [
        shutil.which("redis-benchmark") or "redis-benchmark",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-c",
        str(clients),
        "-P",
        str(pipeline),
        "-n",
        str(requests),
        "-t",
        tests,
        "-d",
        str(size),
        "--csv",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr[-2000:]}")
    rows = {row["test"]: float(row["rps"]) for row in csv.DictReader(io.StringIO(done.stdout))}
    if not rows:
        raise RuntimeError(f"no result from {' '.join(argv)}: {done.stdout[-2000:]} {done.stderr[-2000:]}")
    return rows


def direct_redis_port() -> int:
    """The port of the redis-server this process started (the local data plane's child)."""
    me, found = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) != me or "redis-server" not in cmdline:
            continue
        # Once running, redis-server retitles itself `redis-server 127.0.0.1:<port>`.
        match = re.search(r"--port (\d+)", cmdline) or re.search(r"redis-server \S*:(\d+)", cmdline)
        if match:
            found.append(int(match.group(1)))
    if len(found) != 1:
        raise RuntimeError(f"expected one redis-server child of pid {me}, found ports {found}")
    return found[0]


class KubectlForward:
    """`kubectl port-forward` as a subprocess; its output is drained (it logs every connection)."""

    def __init__(
        self, kubectl: str, kubeconfig: str, namespace: str, target: str, timeout: float = 60
    ) -> None:
        self.port = free_port()
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [
                kubectl,
                "port-forward",
                "-n",
                namespace,
                "--address",
                "127.0.0.1",
                target,
                f"{self.port}:{primary_port('redis')}",
            ],
            env={**os.environ, "KUBECONFIG": kubeconfig},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self.ready = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()
        if not self.ready.wait(timeout):
            self.close()
            raise RuntimeError(f"kubectl port-forward did not start: {self.lines[-10:]}")

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip())
            if line.startswith("Forwarding from 127.0.0.1:"):
                self.ready.set()

    def problems(self) -> list[str]:
        return [
            line for line in self.lines if not line.startswith(("Forwarding from", "Handling connection"))
        ]

    def close(self) -> None:
        children.stop(self.process, grace=10, after_kill=10)


def measure_in_test(testenv: TestEnv, out: Path, params: Json) -> None:
    """The body of the generated test: measure every path, write one JSON document to `out`."""
    value = os.urandom(params["value_size"] // 2).hex().encode()
    _, harness_port = testenv.host_port("redis")
    forward = KubectlForward(params["kubectl"], testenv.handoff.kubeconfig, testenv.namespace, "deploy/redis")
    try:
        ports = {"harness": harness_port, "kubectl": forward.port, "direct": direct_redis_port()}
        # All three paths must reach the same server: a key set through one is read through all.
        marker = uuid.uuid4().hex.encode()
        conn = Resp(ports["harness"])
        conn.command(b"SET", b"bench:marker", marker)
        conn.close()
        for path, port in ports.items():
            conn = Resp(port)
            seen = conn.command(b"GET", b"bench:marker")
            conn.close()
            if seen != marker:
                raise RuntimeError(f"{path} (port {port}) reaches another server: {seen!r}")
        run = int(params["run"])
        order = list(PATHS[run % len(PATHS) :] + PATHS[: run % len(PATHS)])
        results: dict[str, Json] = {p: {} for p in PATHS}
        stages: list[tuple[str, Callable[[int], Json]]] = [
            ("connect", lambda port: measure_connect(port, params["connects"])),
            ("latency", lambda port: measure_latency(port, params["ops"], value)),
            (
                "pipelined",
                lambda port: {
                    "pipelined_set_ops": redis_benchmark(
                        port, 1, params["pipeline"], params["pipeline_ops"], "set", params["value_size"]
                    )["SET"]
                },
            ),
            (
                "concurrent",
                lambda port: {
                    f"concurrent_{k.lower()}_ops": v
                    for k, v in redis_benchmark(
                        port, params["clients"], 1, params["concurrent_ops"], "set,get", params["value_size"]
                    ).items()
                },
            ),
        ]
        # Stage by stage, every path in turn (the order rotates between runs), so drift in the
        # machine's load spreads over all paths instead of hitting one.
        for stage, measure in stages:
            for path in order:
                started = time.monotonic()
                results[path].update(measure(ports[path]))
                print(f"bench: {stage} via {path}: {time.monotonic() - started:.1f}s", flush=True)
        document = {
            "run": run,
            "order": order,
            "ports": ports,
            "namespace": testenv.namespace,
            "load_average": os.getloadavg(),
            "kubectl_problems": forward.problems()[-20:],
            "kubectl_connections": sum(1 for line in forward.lines if line.startswith("Handling connection")),
            "results": results,
        }
        out.write_text(json.dumps(document, indent=2))
    finally:
        forward.close()


def barrier(folder: Path, name: str, me: str, parties: int, timeout: float = 300) -> None:
    """Wait until `parties` workers reached the barrier `name` (a file each in `folder`)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.{me}").touch()
    deadline = time.monotonic() + timeout
    while (arrived := len(list(folder.glob(f"{name}.*")))) < parties:
        if time.monotonic() > deadline:
            raise TimeoutError(f"barrier {name}: {arrived}/{parties} workers after {timeout:.0f}s")
        time.sleep(0.01)


def measure_parallel_in_test(testenv: TestEnv, out: Path, params: Json) -> None:
    """Every worker at once: new connections through the harness and kubectl, then an idle window."""
    me = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    parties = int(params["workers"])
    sync = out.parent / f"sync-{params['run']}"
    _, harness_port = testenv.host_port("redis")
    forward = KubectlForward(params["kubectl"], testenv.handoff.kubeconfig, testenv.namespace, "deploy/redis")
    try:
        ports = {"harness": harness_port, "kubectl": forward.port}
        order = ["harness", "kubectl"] if int(params["run"]) % 2 == 0 else ["kubectl", "harness"]
        results: dict[str, Json] = {p: {} for p in PATHS}
        for path in order:
            barrier(sync, f"connect-{path}", me, parties)
            measured = measure_connect(ports[path], params["connects"])
            results[path].update({f"parallel_{k}": v for k, v in measured.items()})
        forward.close()  # the idle window counts the harness's own requests only
        barrier(sync, "idle", me, parties)
        idle: Json = {}
        if me == "gw0":
            before, started = api_requests(testenv.api), time.monotonic()
            time.sleep(params["idle_seconds"])
            after, elapsed = api_requests(testenv.api), time.monotonic() - started
            idle = {verb: (after.get(verb, 0) - before.get(verb, 0)) / elapsed for verb in after}
        else:
            time.sleep(params["idle_seconds"])
        document = {"run": params["run"], "worker": me, "order": order, "results": results, "idle": idle}
        (out.parent / f"{out.stem}-{me}.json").write_text(json.dumps(document, indent=2))
    finally:
        forward.close()


# -- driving (the bench script) ------------------------------------------------------------------

TEST_FILE = '''"""Generated by bench/portforward_redis.py: measures; never asserts on timings."""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, {bench_dir!r})

import portforward_redis  # noqa: E402


def test_measure_redis_paths(testenv):
    params = json.loads(os.environ[{env!r}])
    if params["workers"]:
        portforward_redis.measure_parallel_in_test(testenv, Path(params["out"]), params)
    else:
        portforward_redis.measure_in_test(testenv, Path(params["out"]), params)
'''

PYTEST_INI = """[pytest]
testenv = true
testenv_services = redis
addopts = -p no:cacheprovider
"""


def run_session(
    folder: Path, run: int, params: Json, out: Path, workers: int = 0
) -> tuple[list[Json], float, str]:
    """One pytest session (`workers` > 0: the parallel case); returns (its JSONs, wall seconds, output)."""
    result_path = folder / f"run-{run}-n{workers}.json"
    for old in folder.glob(f"{result_path.stem}*.json"):
        old.unlink()
    params = {**params, "run": run, "out": str(result_path), "workers": workers}
    env = {**os.environ, ENV_PARAMS: json.dumps(params)}
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-n",
        str(workers),
        *(["--dist", "each"] if workers else []),
        "-s",
        "--testenv-cluster=local",
        f"--testenv-cluster-name={CLUSTER_NAME}",
        f"--testenv-namespace={NAMESPACE}",
        "test_bench.py",
    ]
    started = time.monotonic()
    done = subprocess.run(
        argv, cwd=folder, env=env, capture_output=True, text=True, timeout=1800, check=False
    )
    wall = time.monotonic() - started
    output = done.stdout + done.stderr
    (out / f"portforward_redis.run{run}-n{workers}.log").write_text(output)
    found = sorted(folder.glob(f"{result_path.stem}*.json"))
    if done.returncode != 0 or len(found) != max(1, workers):
        return [], wall, output
    return [json.loads(path.read_text()) for path in found], wall, output


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "ops/s":
        return f"{value:,.0f}"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def render(documents: Sequence[Json], params: Json, header: Sequence[str]) -> tuple[str, list[list[str]]]:
    lines = [*header, ""]
    lines += [
        "| metric | unit | harness median (min) | kubectl median (min) | direct median (min) "
        "| harness / kubectl | harness / direct |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    rows: list[list[str]] = []
    for key, label, unit in METRICS:
        label = (
            label.replace("pipelines of P", f"pipelines of {params['pipeline']}")
            .replace("C concurrent", f"{params['clients']} concurrent")
            .replace("W workers", f"{params['parallel']} workers")
        )
        medians: dict[str, float | None] = {}
        cells = []
        for path in PATHS:
            values = [d["results"][path][key] for d in documents if key in d["results"][path]]
            for d in documents:
                if key in d["results"][path]:
                    rows.append([str(d["run"]), path, key, unit, f"{d['results'][path][key]:.4f}"])
            median = statistics.median(values) if values else None
            medians[path] = median
            cells.append(f"{fmt(median, unit)} ({fmt(min(values) if values else None, unit)})")
        ratios = []
        for other in ("kubectl", "direct"):
            a, b = medians["harness"], medians[other]
            ratios.append("n/a" if a is None or not b else f"{a / b:.2f}")
        lines.append(f"| {label} | {unit} | {' | '.join(cells)} | {' | '.join(ratios)} |")
    lines += [
        "",
        "Median and min over the runs (for ops/s the min is the slowest run). Ratios are of the "
        "medians: for ms lower is better, so harness / kubectl > 1 means the harness is slower; "
        "for ops/s it is the other way round.",
        "",
    ]
    return "\n".join(lines), rows


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3, help="pytest sessions, each a fresh environment")
    parser.add_argument("--connects", type=int, default=100, help="new connections per path and run")
    parser.add_argument("--ops", type=int, default=2000, help="sequential PING, SET and GET each")
    parser.add_argument("--pipeline-ops", type=int, default=100000, help="pipelined SETs")
    parser.add_argument("--pipeline", type=int, default=100, help="commands per pipeline")
    parser.add_argument("--clients", type=int, default=8, help="concurrent connections")
    parser.add_argument("--concurrent-ops", type=int, default=20000, help="SETs and GETs with --clients")
    parser.add_argument("--value-size", type=int, default=1024, help="bytes per value")
    parser.add_argument(
        "--parallel", type=int, default=4, help="workers of the all-at-once case (`-n`; 0 skips it)"
    )
    parser.add_argument(
        "--idle-seconds", type=float, default=20, help="idle window of the parallel case (API requests/s)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the .md/.csv/.log files")
    parser.add_argument(
        "--keep-cluster", action="store_true", help=f"leave cluster {CLUSTER_NAME!r} running afterwards"
    )
    return parser.parse_args(argv)


CSV_HEADER = ["run", "path", "metric", "unit", "value"]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from testenv_harness.provision import toolchain
    from testenv_harness.provision.clusters import LocalProvider

    if not shutil.which("redis-benchmark") or not shutil.which("redis-server"):
        log("redis-server and redis-benchmark are needed: `make system-deps` (Debian redis-server)")
        return 2
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    params: Json = {
        "connects": args.connects,
        "ops": args.ops,
        "pipeline_ops": args.pipeline_ops,
        "pipeline": args.pipeline,
        "clients": args.clients,
        "concurrent_ops": args.concurrent_ops,
        "value_size": args.value_size,
        "parallel": args.parallel,
        "idle_seconds": args.idle_seconds,
        "kubectl": str(toolchain.binary("kubectl")),
    }
    began, began_wall, load_before = time.monotonic(), datetime.datetime.now(datetime.UTC), load()
    provider = LocalProvider(CLUSTER_NAME, report=log)
    documents: list[Json] = []
    walls: list[float] = []
    failures: list[str] = []
    try:
        started = time.monotonic()
        provider.up()  # created (or reused) before the first session, so no run pays for it
        cluster_s = time.monotonic() - started
        with tempfile.TemporaryDirectory(prefix="bench-portforward-") as tmp:
            folder = Path(tmp)
            (folder / "pytest.ini").write_text(PYTEST_INI)
            bench_dir = str(Path(__file__).resolve().parent)
            (folder / "test_bench.py").write_text(TEST_FILE.format(bench_dir=bench_dir, env=ENV_PARAMS))
            cases = [0] + ([args.parallel] if args.parallel else [])
            for run in range(args.runs):
                for workers in cases:
                    log(f"run {run + 1}/{args.runs}, -n {workers} (load average {load()})")
                    found, wall, output = run_session(folder, run, params, out, workers)
                    walls.append(wall)
                    if not found:
                        tail = "\n".join(output.splitlines()[-40:])
                        failures.append(f"run {run + 1} (-n {workers}): pytest failed; last lines:\n{tail}")
                        log(failures[-1])
                        continue
                    documents.extend(found)
                    log(f"  session took {wall:.1f}s; path order {', '.join(found[0]['order'])}")
    finally:
        if not args.keep_cluster:
            provider.down()
    total = time.monotonic() - began
    problems = sorted({p for d in documents for p in d.get("kubectl_problems", [])})
    idle = [d["idle"] for d in documents if d.get("idle")]
    header = [
        "# Redis through the harness's port-forward, kubectl port-forward, and direct",
        "",
        f"- started {began_wall:%Y-%m-%dT%H:%M:%SZ}, total run time {total / 60:.1f} min "
        f"(cluster {CLUSTER_NAME!r} up in {cluster_s:.1f}s before the first run"
        f"{'' if args.keep_cluster else ', deleted at the end'}); {args.runs - len(failures)}/{args.runs} "
        f"runs measured, pytest session wall times {', '.join(f'{w:.0f}s' for w in walls)}",
        f"- machine: {machine()}, **shared with other engineers' test runs** "
        f"(load average at start {load_before}, at end {load()}): timings are noisy",
        f"- each run: a fresh pytest session (`-n 0`, plugin on, one Redis), paths measured stage "
        f"by stage in rotating order; {args.connects} new connections (connect + PING), "
        f"{args.ops} sequential PING/SET/GET each on one connection (own minimal RESP client, in "
        f"the pytest process, as a test would be), redis-benchmark `-c 1 -P {args.pipeline} "
        f"-n {args.pipeline_ops} -t set` and `-c {args.clients} -n {args.concurrent_ops} -t set,get`, "
        f"values of {args.value_size} bytes",
        f"- the parallel case: a pytest session with `-n {args.parallel} --dist each`, every worker "
        f"its own Redis; all workers make their {args.connects} new connections at the same time "
        "(a file barrier per path), then sit idle while the API server's request counters are read",
        "- harness = `ServiceForward` (a SPDY session per pod tunnelled through a websocket, opened "
        "when the pod gets ready, a stream pair per connection; pods followed with one watch per "
        "namespace); kubectl = `kubectl port-forward deploy/redis` (one upgraded connection, a stream "
        "pair per connection); direct = the redis-server host process; all three reach the same "
        "server (checked with a marker key). kwok answers the kubelet's side of the port-forward.",
    ]
    for rates in idle:
        by_verb = ", ".join(f"{verb} {rate:.2f}" for verb, rate in sorted(rates.items()) if rate > 0)
        header.append(
            f"- API requests while {args.parallel} workers sat idle for {args.idle_seconds:.0f}s "
            f"(everything: operator, controller heartbeat, watches): {sum(rates.values()):.2f}/s "
            f"({by_verb or 'none'})"
        )
    if problems:
        header.append(f"- kubectl port-forward reported: {'; '.join(problems[:5])}")
    report, rows = render(documents, params, header)
    if failures:
        report += "\n## Failed runs\n\n```\n" + "\n\n".join(failures) + "\n```\n"
    print(report)
    (out / "portforward_redis.md").write_text(report)
    (out / "portforward_redis.json").write_text(json.dumps(documents, indent=2))
    with (out / "portforward_redis.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_HEADER)
        writer.writerows(rows)
    log(f"wrote {out / 'portforward_redis.md'} and .csv; total {total:.0f}s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
