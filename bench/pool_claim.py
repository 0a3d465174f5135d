"""Benchmark: a TestEnvironment's time to Ready when it claims from a warm pool, against a fresh one.

On a real local control plane (kwok simulates the pods), with one operator process, for each of
`--runs` rounds:

- claim: a TestEnvironmentPool of `--workers` workers (Redis, Kafka, LocalStack) is Ready; create
  a TestEnvironment with the same services and `--workers` workers, and time create -> status
  Ready; then how long the pool takes to be Ready again (its refill);
- fresh: the same TestEnvironment in a namespace without a pool, create -> Ready.

On kwok a fresh worker is Ready as soon as its objects exist, so "fresh" here is the operator's
own floor; on a real cluster it adds every service's start (Kafka's seconds), which a claim skips.

Run: `make bench-pool` (or `.venv/bin/python bench/pool_claim.py --help`).
Benchmarks print numbers; they never assert on them.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from hostinfo import load, machine  # bench/ is on sys.path when a script runs
from testenv_api import GROUP, KIND, PLURAL, POOL_KIND, POOL_PLURAL, VERSION, Phase
from testenv_harness.ground import kube
from testenv_harness.ground.waiting import wait_for
from testenv_harness.provision import toolchain
from testenv_harness.provision.clusters import LocalProvider
from testenv_harness.provision.operator_process import OperatorProcess

CLUSTER_NAME = "testenv-bench"
POOLED, FRESH = "bench-pool", "bench-fresh"
RESULTS = Path(__file__).resolve().parent / "results"
SERVICES = [
    {"name": "redis", "type": "redis"},
    {"name": "kafka", "type": "kafka"},
    {"name": "aws", "type": "localstack"},
]
Json = dict[str, Any]


def log(message: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def _objects(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


def _status(api: client.ApiClient, namespace: str, plural: str, name: str) -> Json:
    body: Json = _objects(api).get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
    return body.get("status") or {}


def _poll(what: str, done: Any, timeout: float, interval: float) -> float:
    """Seconds until `done()` is true, polling every `interval`."""
    started = time.monotonic()
    wait_for(done, timeout=timeout, what=what, interval=interval)
    return time.monotonic() - started


def _environment(name: str, workers: int) -> Json:
    spec = {"workers": workers, "services": SERVICES, "lifetime": {"ttlSeconds": 3600}}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": {"name": name}, "spec": spec}


def _ready_in(
    api: client.ApiClient, namespace: str, name: str, workers: int, args: argparse.Namespace
) -> float:
    """Create an environment and time it to Ready."""
    started = time.monotonic()
    _objects(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, _environment(name, workers)
    )

    def ready() -> bool:
        status = _status(api, namespace, PLURAL, name)
        return status.get("phase") == Phase.READY and status.get("readyWorkers") == workers

    wait_for(ready, timeout=args.timeout, what=f"{namespace}/{name} Ready", interval=args.poll)
    return time.monotonic() - started


def _delete(api: client.ApiClient, namespace: str, plural: str, name: str, timeout: float) -> None:
    try:
        _objects(api).delete_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
    except ApiException as exc:
        if exc.status != 404:
            raise

    def gone() -> bool:
        try:
            _objects(api).get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_for(gone, timeout=timeout, what=f"{namespace}/{name} deleted", interval=0.25)


def _pool_ready(api: client.ApiClient, size: int, claimed: int = 0) -> bool:
    """Ready with `size` free workers, once it has seen `claimed` workers taken (its status lags a claim)."""
    status = _status(api, POOLED, POOL_PLURAL, "warm")
    return status.get("phase") == "Ready" and status.get("ready") == size and status.get("claimed") == claimed


def measure(api: client.ApiClient, args: argparse.Namespace) -> list[tuple[float, float, float]]:
    pool = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": POOL_KIND,
        "metadata": {"name": "warm"},
        "spec": {"size": args.workers, "services": SERVICES},
    }
    _objects(api).create_namespaced_custom_object(GROUP, VERSION, POOLED, POOL_PLURAL, pool)
    filled = _poll("the pool to fill", lambda: _pool_ready(api, args.workers), args.timeout, args.poll)
    log(f"pool of {args.workers} Ready in {filled:.2f} s")
    rows = []
    for run in range(args.runs + 1):  # run 0 warms the operator up and is not recorded
        claimed = _ready_in(api, POOLED, f"claim-{run}", args.workers, args)
        refill = _poll(
            "the pool to refill",
            lambda: _pool_ready(api, args.workers, args.workers),
            args.timeout,
            args.poll,
        )
        fresh = _ready_in(api, FRESH, f"fresh-{run}", args.workers, args)
        log(f"run {run}: claim {claimed:.2f} s, refill {refill:.2f} s, fresh {fresh:.2f} s (load {load()})")
        if run:
            rows.append((claimed, refill, fresh))
        _delete(api, POOLED, PLURAL, f"claim-{run}", args.timeout)
        _delete(api, FRESH, PLURAL, f"fresh-{run}", args.timeout)
    _delete(api, POOLED, POOL_PLURAL, "warm", args.timeout)
    return rows


def render(rows: Sequence[tuple[float, float, float]], args: argparse.Namespace, header: list[str]) -> str:
    def cell(values: Sequence[float]) -> str:
        return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

    claim, refill, fresh = zip(*rows, strict=True)
    lines = [
        *header,
        "",
        f"| {args.workers} workers, {len(rows)} runs | median (min-max) s |",
        "|---|---:|",
        f"| claim from the pool: create -> Ready | {cell(claim)} |",
        f"| fresh, no pool: create -> Ready | {cell(fresh)} |",
        f"| the pool Ready again after a claim | {cell(refill)} |",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=4, help="workers claimed per run (and pool size)")
    parser.add_argument("--runs", type=int, default=5, help="recorded runs (after one warm-up)")
    parser.add_argument("--poll", type=float, default=0.02, help="status poll interval, seconds")
    parser.add_argument("--timeout", type=float, default=120.0, help="per wait, seconds")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where pool_claim.md goes")
    parser.add_argument("--keep-cluster", action="store_true", help="leave the bench cluster up")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    began = datetime.datetime.now(datetime.UTC)
    load_before = load()
    provider = LocalProvider(CLUSTER_NAME, report=log)
    try:
        cluster = provider.up()
        api = kube.api_client(cluster.kubeconfig)
        kube.install_crd(api)
        core = client.CoreV1Api(api)
        for namespace in (POOLED, FRESH):
            try:
                core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
            except ApiException as exc:
                if exc.status != 409:
                    raise
        log_path = args.out / "pool_claim.operator.log"
        operator = OperatorProcess(cluster.kubeconfig, log_path, clean=True).start()
        try:
            rows = measure(api, args)
        finally:
            operator.stop()
    finally:
        if not args.keep_cluster:
            provider.down()
    header = [
        "# Warm pool: claim to Ready",
        "",
        f"- started {began:%Y-%m-%dT%H:%M:%SZ}; machine: {machine()}; load average {load_before} -> {load()}",
        f"- cluster: local kwokctl binary runtime, Kubernetes {toolchain.KUBERNETES_VERSION}; pods "
        "simulated by kwok, so 'fresh' is the operator's floor, without any service start",
        f"- services per worker: {', '.join(s['type'] for s in SERVICES)}; status polled every {args.poll} s",
    ]
    report = render(rows, args, header)
    print(report)
    (args.out / "pool_claim.md").write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
