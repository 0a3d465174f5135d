"""Benchmark: one operator on a shared cluster holding hundreds of environments (by simulation).

A shared CI cluster serves many pipelines at once. This grows a held fleet of 4-worker
TestEnvironments, spread over ten tenant namespaces, to each `--sizes` step (0, 100 and 500 by
default: 500 x 4 = 2,000 worker namespaces, 6,000 Deployments), and at every size measures:

- at rest (`--rest` seconds, nothing created or deleted, from `--settle` seconds after the fleet
  is Ready): the operator's CPU (its own process_cpu_seconds_total) and memory
  (process_resident_memory_bytes), its passes per second (and by depth),
  and the API requests per second the API server counted (WATCHes left out);
- a new 4-worker environment's time from create to Ready (`--probes` times, each deleted after),
  in its own tenant namespace, exactly as `operator_ready.py` measures it;
- a full resync: the operator is stopped and started again; the time from the start until it has
  passed over every held environment once, the CPU-seconds and API requests that took, and a new
  environment created at the restart, its time to Ready.

Pods are kwok's (no processes, no images): what is measured is the control plane and the operator.

Run: `make bench-scale` (or `.venv/bin/python bench/scale_hold.py --help`).
Benchmarks print numbers; they never assert on them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client

from apimetrics import api_requests, total  # bench/ is on sys.path when a script runs
from hostinfo import load, machine
from operator_ready import (
    OPERATOR_SETTINGS,
    TENANT,
    Case,
    ensure_tenant,
    environment_ready,
    fmt,
    log,
    manifest,
    run_operator_case,
    summarise,
    utc_now,
)
from testenv_api import GROUP, PLURAL, VERSION
from testenv_harness.ground import kube
from testenv_harness.ground.waiting import WaitTimeoutError, wait_for
from testenv_harness.provision import toolchain
from testenv_harness.provision.clusters import LocalProvider
from testenv_harness.provision.operator_process import OperatorProcess

CLUSTER_NAME = "testenv-scale"
RESULTS = Path(__file__).resolve().parent / "results"
WORKERS = 4
#: The held fleet lives in this many tenant namespaces (a shared cluster has many teams).
TENANTS = 10
#: Environments created at once while the fleet grows.
CREATE_THREADS = 8

Json = dict[str, Any]


def tenant(index: int) -> str:
    return f"scale-t{index % TENANTS}"


def held_name(index: int) -> str:
    return f"held-{index:04d}"


# -- reading the operator's and the API server's counters ---------------------------------------------


#: A pass count by depth, as prometheus_client prints the histogram's labels (depth, kind).
_PASS_COUNT = re.compile(r'testenv_pass_duration_seconds_count\{depth="(\w+)",kind="environment"\}')


def operator_metrics(operator: OperatorProcess) -> dict[str, float]:
    """The operator's CPU-seconds, resident bytes and environment passes, from its /metrics."""
    with urllib.request.urlopen(operator.metrics, timeout=10) as response:
        text = response.read().decode()
    found = {"cpu_s": 0.0, "rss_bytes": 0.0, "passes": 0.0}
    for line in text.splitlines():
        if line.startswith("process_cpu_seconds_total "):
            found["cpu_s"] = float(line.split()[1])
        elif line.startswith("process_resident_memory_bytes "):
            found["rss_bytes"] = float(line.split()[1])
        elif line.startswith("testenv_passes_total{") and re.search(r'kind="environment"', line):
            found["passes"] += float(line.rsplit(" ", 1)[1])
        elif depth := _PASS_COUNT.match(line):
            found[f"depth:{depth[1]}"] = float(line.rsplit(" ", 1)[1])
    return found


def depths(before: dict[str, float], after: dict[str, float], took: float) -> str:
    """Environment passes a second by depth (apply, resync, repair, report) between two reads."""
    rates = {k[6:]: (after[k] - before.get(k, 0.0)) / took for k in after if k.startswith("depth:")}
    return ", ".join(f"{k} {r:.1f}" for k, r in sorted(rates.items()) if r > 0) or "none"


# -- the held fleet -----------------------------------------------------------------------------------


def held_ready(api: client.ApiClient) -> tuple[int, int]:
    """(held environments, of them Ready with every worker)."""
    response = client.CustomObjectsApi(api).list_cluster_custom_object(
        GROUP, VERSION, PLURAL, label_selector="bench=held", _preload_content=False
    )
    items: list[Json] = json.loads(response.data)["items"]
    return len(items), sum(environment_ready(item, WORKERS) for item in items)


def grow(api: client.ApiClient, have: int, want: int, timeout: float) -> float:
    """Create held environments have..want-1 and wait until every one is Ready; seconds taken."""
    objects = client.CustomObjectsApi(api)

    def create(index: int) -> None:
        body = manifest(held_name(index), WORKERS)
        body["metadata"] = {"name": held_name(index), "namespace": tenant(index), "labels": {"bench": "held"}}
        objects.create_namespaced_custom_object(
            GROUP, VERSION, tenant(index), PLURAL, body, _preload_content=False
        )

    started = time.monotonic()
    with ThreadPoolExecutor(CREATE_THREADS) as creators:
        for done, _ in enumerate(creators.map(create, range(have, want)), start=1):
            if done % 50 == 0:
                log(f"  created {have + done}/{want}")
    counts, said = (0, 0), 0.0

    def progress() -> str:
        return f"{counts[1]}/{want} held environments Ready"

    def check() -> bool:
        nonlocal counts, said
        counts = held_ready(api)
        if time.monotonic() - said > 15:  # progress on a wait of minutes
            said = time.monotonic()
            log(f"  {progress()} after {said - started:.0f} s")
        return counts == (want, want)

    wait_for(check, timeout=timeout, what="the held fleet to be Ready", interval=2, seen=progress)
    return time.monotonic() - started


# -- one size --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    held: int
    grow_s: float
    rest_cpu_pct: float
    rest_rss_mib: float
    rest_passes_per_s: float
    #: The same passes by depth (apply, resync, repair, report), per second.
    rest_depths: str
    rest_requests_per_s: float
    rest_top: str
    probe_ready_s: list[float]
    resync_s: float | None
    resync_cpu_s: float
    resync_requests: float
    resync_probe_ready_s: float | None
    resync_rss_mib: float


def busiest(before: dict[str, float], after: dict[str, float], took: float) -> str:
    """The three request kinds (verb resource) made most often between two counts, per second."""
    rates = {k: (after[k] - before.get(k, 0.0)) / took for k in after if not k.startswith("WATCH")}
    top = sorted(((r, k) for k, r in rates.items() if r > 0), reverse=True)[:3]
    return ", ".join(f"{k} {r:.1f}" for r, k in top) or "none"


def at_rest(
    api: client.ApiClient, operator: OperatorProcess, seconds: float
) -> tuple[float, float, float, str, float, str]:
    before, requests_before, t0 = operator_metrics(operator), api_requests(api), time.monotonic()
    time.sleep(seconds)
    after, requests_after = operator_metrics(operator), api_requests(api)
    took = time.monotonic() - t0
    return (
        100 * (after["cpu_s"] - before["cpu_s"]) / took,
        after["rss_bytes"] / 2**20,
        (after["passes"] - before["passes"]) / took,
        depths(before, after, took),
        (total(requests_after) - total(requests_before)) / took,
        busiest(requests_before, requests_after, took),
    )


def probe(
    api: client.ApiClient, operator: OperatorProcess, label: str, poll: float, timeout: float
) -> float | None:
    sample = run_operator_case(api, operator, Case(1, WORKERS), 0, poll, timeout)
    log(f"  {label}: new {WORKERS}-worker environment Ready after {fmt(sample.ready_s)} s")
    return sample.ready_s


def resync(
    kubeconfig: Path,
    api: client.ApiClient,
    old: OperatorProcess,
    held: int,
    log_path: Path,
    args: argparse.Namespace,
) -> tuple[OperatorProcess, float | None, float, float, float | None, float]:
    """Restart the operator; until it has passed every held environment once (and a new one
    created at the restart is Ready): seconds, CPU-seconds, API requests, the new one's time, RSS."""
    old.stop()
    requests_before = api_requests(api)
    started = time.monotonic()
    operator = OperatorProcess(kubeconfig, log_path, clean=True, **OPERATOR_SETTINGS).start()
    passed: float | None = None
    box: dict[str, float | None] = {}
    with ThreadPoolExecutor(1) as side:
        newcomer = side.submit(
            lambda: box.setdefault("ready", probe(api, operator, "at the restart", args.poll, args.timeout))
        )

        def all_passed() -> bool:
            return operator_metrics(operator)["passes"] >= held

        try:
            wait_for(
                all_passed, timeout=args.timeout, what="a pass over every held environment", interval=0.2
            )
            passed = time.monotonic() - started
        except WaitTimeoutError as exc:
            log(f"  resync: {exc}")
        newcomer.result()
    after = operator_metrics(operator)
    requests_after = api_requests(api)
    requests = total(requests_after) - total(requests_before)
    took = time.monotonic() - started
    log(f"  restart: busiest requests (per s) {busiest(requests_before, requests_after, took)}")
    return operator, passed, after["cpu_s"], requests, box.get("ready"), after["rss_bytes"] / 2**20


def measure_size(
    kubeconfig: Path,
    api: client.ApiClient,
    operator: OperatorProcess,
    held: int,
    grow_s: float,
    log_path: Path,
    args: argparse.Namespace,
) -> tuple[Row, OperatorProcess]:
    # The last environments to turn Ready list on their own clocks until then (a provisioning
    # environment's resync does not wait for the budget): the window starts once they are done.
    log(f"size {held}: settling for {args.settle:.0f} s, then at rest for {args.rest:.0f} s")
    time.sleep(args.settle)
    log(f"size {held}: at rest (load average {load()})")
    cpu, rss, passes, by_depth, requests, top = at_rest(api, operator, args.rest)
    probes = [
        probe(api, operator, f"probe {i + 1}/{args.probes}", args.poll, args.timeout)
        for i in range(args.probes)
    ]
    log(f"size {held}: restarting the operator")
    operator, resync_s, resync_cpu, resync_requests, resync_probe, resync_rss = resync(
        kubeconfig, api, operator, held, log_path, args
    )
    row = Row(
        held,
        grow_s,
        cpu,
        rss,
        passes,
        by_depth,
        requests,
        top,
        [p for p in probes if p is not None],
        resync_s,
        resync_cpu,
        resync_requests,
        resync_probe,
        resync_rss,
    )
    return row, operator


def render(rows: Sequence[Row], header: Sequence[str]) -> str:
    """Two tables: a new environment and the operator at rest; then the restart (full resync)."""
    base = next((summarise(r.probe_ready_s)[0] for r in rows if r.held == 0), None)
    rest = [
        "| held envs (workers) | grown in (s) | new env Ready (s): median (each) | x empty "
        "| operator CPU | RSS (MiB) | passes/s (by depth) | API req/s | busiest requests (per s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    restart = [
        "| held envs | every env passed (s) | CPU (s) | API requests | new env Ready (s) | RSS after (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        median = summarise(row.probe_ready_s)[0]
        ratio = f"{median / base:.2f}x" if median and base else "-"
        each = ", ".join(fmt(p) for p in row.probe_ready_s)
        rest.append(
            f"| {row.held} ({row.held * WORKERS}) | {row.grow_s:.0f} | {fmt(median)} ({each}) | {ratio} "
            f"| {row.rest_cpu_pct:.1f}% | {row.rest_rss_mib:.0f} "
            f"| {row.rest_passes_per_s:.1f} ({row.rest_depths}) "
            f"| {row.rest_requests_per_s:.1f} | {row.rest_top} |"
        )
        restart.append(
            f"| {row.held} | {fmt(row.resync_s)} | {row.resync_cpu_s:.1f} | {row.resync_requests:.0f} "
            f"| {fmt(row.resync_probe_ready_s)} | {row.resync_rss_mib:.0f} |"
        )
    lines = [
        *header,
        "",
        "At rest, and a new environment:",
        "",
        *rest,
        "",
        "The operator restarted:",
        "",
        *restart,
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="0,100,500", help="held environments (of 4 workers) at each step")
    parser.add_argument("--rest", type=float, default=60, help="seconds measured at rest per size")
    parser.add_argument(
        "--settle", type=float, default=30, help="seconds waited after the fleet is Ready, before the rest"
    )
    parser.add_argument("--probes", type=int, default=3, help="new environments timed per size")
    parser.add_argument("--poll", type=float, default=0.1, help="seconds between readiness polls")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds any wait may take")
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="folder for scale_hold.md and the operator log"
    )
    parser.add_argument("--keep-cluster", action="store_true", help="leave the cluster running at the end")
    args = parser.parse_args(argv)
    try:
        args.sizes = sorted({int(s) for s in str(args.sizes).split(",") if s.strip()})
    except ValueError:
        parser.error(
            f"--sizes: {args.sizes!r} is not a comma-separated list of whole numbers (e.g. 0,100,500)"
        )
    if any(s < 0 for s in args.sizes):
        parser.error("--sizes: sizes cannot be negative")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "scale_hold.operator.log"
    log_path.unlink(missing_ok=True)
    began, began_wall, load_before = time.monotonic(), utc_now(), load()
    # kwok nodes enough for every held pod (each node takes 500; a worker's fences ask ~340 MiB
    # of a node's 256 GiB), so what is measured is the operator, not the scheduler's "Too many pods".
    nodes = max(2, math.ceil(max(args.sizes, default=0) * WORKERS * 3 / 400) + 1)
    provider = LocalProvider(CLUSTER_NAME, nodes=nodes, report=log)
    rows: list[Row] = []
    operator: OperatorProcess | None = None
    try:
        cluster = provider.up()
        assert cluster.kubeconfig is not None  # a local cluster always writes one
        api = kube.api_client(cluster.kubeconfig)
        kube.install_crd(api)
        for name in [TENANT, *(tenant(i) for i in range(TENANTS))]:
            ensure_tenant(api, name)
        operator = OperatorProcess(cluster.kubeconfig, log_path, clean=True, **OPERATOR_SETTINGS).start()
        probe(api, operator, "warm-up", args.poll, args.timeout)
        have = 0
        for size in args.sizes:
            log(f"growing the held fleet to {size} environments ({size * WORKERS} workers)")
            grow_s = grow(api, have, size, args.timeout) if size > have else 0.0
            have = size
            row, operator = measure_size(cluster.kubeconfig, api, operator, size, grow_s, log_path, args)
            rows.append(row)
            print(render(rows[-1:], []), file=sys.stderr, flush=True)
    finally:
        if operator is not None:  # --keep-cluster keeps the cluster, never our process
            operator.stop()
        if not args.keep_cluster:
            provider.down()
    took = time.monotonic() - began
    header = [
        "# One operator holding a shared cluster's environments (simulated pods)",
        "",
        f"- started {began_wall}, {took / 60:.1f} min in all; machine: {machine()} "
        f"(load average at start {load_before}, at end {load()})",
        f"- cluster: local kwokctl binary runtime, Kubernetes {toolchain.KUBERNETES_VERSION}, kwok "
        f"{toolchain.KWOK_VERSION}; pods simulated by kwok on {nodes} nodes; held environments of "
        f"{WORKERS} workers (redis, kafka, localstack) in {TENANTS} tenant namespaces; probes in `{TENANT}`",
        f"- operator: `python -m testenv_operator`, defaults plus "
        f"{', '.join(f'{k}={v}' for k, v in OPERATOR_SETTINGS.items())}; "
        f"at rest = {args.rest:.0f} s, after {args.settle:.0f} s settling",
    ]
    report = render(rows, header)
    print(report)
    (out / "scale_hold.md").write_text(report)
    log(f"wrote {out / 'scale_hold.md'}; operator log {log_path}")
    return 0 if all(r.probe_ready_s and r.resync_s is not None for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
