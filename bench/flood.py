"""Benchmark: does a flood of invalid TestEnvironments from one tenant slow another tenant down?

On a real local control plane (kwok simulates the pods), with one operator process:

1. quiet: the victim tenant creates a 1-worker Redis environment and waits for Ready, `--runs`
   times, and the operator's CPU use is sampled over `--idle-seconds` with nothing to do;
2. flood: the flooding tenant creates `--flood` environments at once, each asking for more
   workers than the operator allows (so every one ends Failed) and padded with environment
   variables to `--pad-bytes`; once all report Failed, the victim's runs and the CPU sample are
   repeated with the flood still in place.

The table shows the victim's create -> Ready time (median, min, max) and the operator's CPU use
(percent of one core) in both phases, and the flood/quiet ratio. Issue 13's target: within 1.5x.

Run: `make bench-flood` (or `.venv/bin/python bench/flood.py --help`).
Benchmarks print numbers; they never assert on them.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from hostinfo import load, machine  # bench/ is on sys.path when a script runs
from testenv_api import GROUP, KIND, PLURAL, VERSION, Phase
from testenv_harness.ground import kube
from testenv_harness.ground.waiting import wait_for
from testenv_harness.provision import toolchain
from testenv_harness.provision.clusters import LocalProvider
from testenv_harness.provision.operator_process import OperatorProcess

CLUSTER_NAME = "testenv-bench-flood"
VICTIM, FLOODER = "quiet-tenant", "noisy-tenant"
RESULTS = Path(__file__).resolve().parent / "results"
#: More than the operator's default limit (64, TESTENV_MAX_WORKERS), within the CRD's 256.
FLOOD_WORKERS = 100
Json = dict[str, Any]


def log(message: str) -> None:
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


def environment(namespace: str, name: str, workers: int, pad_bytes: int = 0) -> Json:
    service: Json = {"name": "redis", "type": "redis"}
    if pad_bytes:
        chunk = 1024
        service["env"] = [
            {"name": f"PAD_{i}", "value": "x" * min(chunk, pad_bytes - i * chunk)}
            for i in range((pad_bytes + chunk - 1) // chunk)
        ]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"workers": workers, "services": [service]},
    }


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_percent(pid: int, seconds: float) -> float:
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return 100 * (cpu_seconds(pid) - before) / seconds


def phase_of(objects: client.CustomObjectsApi, namespace: str, name: str) -> str | None:
    try:
        item = objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    status = item.get("status") or {}
    if status.get("observedGeneration") != item["metadata"].get("generation"):
        return None
    return str(status.get("phase") or "") or None


def gone(objects: client.CustomObjectsApi, namespace: str, name: str) -> bool:
    try:
        objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


def victim_run(api: client.ApiClient, name: str, poll: float, timeout: float) -> float:
    """Seconds from the create call until the victim's environment is Ready; then delete it."""
    objects = client.CustomObjectsApi(api)
    started = time.monotonic()
    objects.create_namespaced_custom_object(GROUP, VERSION, VICTIM, PLURAL, environment(VICTIM, name, 1))
    wait_for(
        lambda: phase_of(objects, VICTIM, name) == Phase.READY,
        timeout=timeout,
        interval=poll,
        what=f"victim environment {name} to be Ready",
    )
    ready = time.monotonic() - started
    objects.delete_namespaced_custom_object(GROUP, VERSION, VICTIM, PLURAL, name)
    wait_for(lambda: gone(objects, VICTIM, name), timeout=timeout, what=f"{name} to be deleted")
    return ready


def flood(api: client.ApiClient, count: int, pad_bytes: int, timeout: float) -> float:
    """Create `count` invalid environments at once; seconds until every one reports Failed."""
    objects = client.CustomObjectsApi(api)
    names = [f"flood-{i:03d}" for i in range(count)]
    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        list(
            pool.map(
                lambda n: objects.create_namespaced_custom_object(
                    GROUP, VERSION, FLOODER, PLURAL, environment(FLOODER, n, FLOOD_WORKERS, pad_bytes)
                ),
                names,
            )
        )

    def all_failed() -> bool:
        listing = objects.list_namespaced_custom_object(GROUP, VERSION, FLOODER, PLURAL)
        failed = [i for i in listing["items"] if (i.get("status") or {}).get("phase") == Phase.FAILED]
        return len(failed) == count

    wait_for(all_failed, timeout=timeout, interval=0.5, what=f"all {count} flood environments to be Failed")
    return time.monotonic() - started


def summary(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="victim runs per phase (default 5)")
    parser.add_argument("--flood", type=int, default=150, help="invalid environments (default 150)")
    parser.add_argument(
        "--pad-bytes", type=int, default=3000, help="env value bytes per flood environment (default 3000)"
    )
    parser.add_argument("--idle-seconds", type=float, default=20, help="CPU sampling window (default 20)")
    parser.add_argument("--poll", type=float, default=0.05, help="seconds between readiness polls")
    parser.add_argument("--timeout", type=float, default=300, help="seconds any one wait may take")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the .md and .log files")
    parser.add_argument(
        "--keep-cluster", action="store_true", help=f"leave cluster {CLUSTER_NAME!r} running afterwards"
    )
    return parser.parse_args(argv)


def measure(api: client.ApiClient, operator: OperatorProcess, args: argparse.Namespace) -> list[str]:
    pid = operator.proc.pid if operator.proc else 0
    log("warm-up run")
    victim_run(api, "warm-up", args.poll, args.timeout)
    log("quiet phase")
    quiet = [victim_run(api, f"quiet-{i}", args.poll, args.timeout) for i in range(args.runs)]
    quiet_cpu = cpu_percent(pid, args.idle_seconds)
    log(f"quiet: {[f'{v:.2f}' for v in quiet]}, operator {quiet_cpu:.1f}% CPU; flooding")
    to_failed = flood(api, args.flood, args.pad_bytes, args.timeout)
    log(f"all {args.flood} flood environments Failed after {to_failed:.1f}s")
    flood_cpu = cpu_percent(pid, args.idle_seconds)
    flooded = [victim_run(api, f"flooded-{i}", args.poll, args.timeout) for i in range(args.runs)]
    log(f"flooded: {[f'{v:.2f}' for v in flooded]}, operator {flood_cpu:.1f}% CPU")
    ratio = statistics.median(flooded) / statistics.median(quiet)
    return [
        "| phase | victim create -> Ready median (s) | min (s) | max (s) | operator CPU (% of a core) |",
        "|---|---:|---:|---:|---:|",
        f"| quiet | {summary(quiet)} | {quiet_cpu:.1f} |",
        f"| {args.flood} invalid environments | {summary(flooded)} | {flood_cpu:.1f} |",
        "",
        f"Flooded / quiet (medians): **{ratio:.2f}x**. The flood took {to_failed:.1f} s from the "
        f"first create call until every environment reported Failed.",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "flood.operator.log"
    log_path.unlink(missing_ok=True)
    began = time.monotonic()
    load_before = load()
    provider = LocalProvider(CLUSTER_NAME, report=log)
    try:
        cluster = provider.up()
        api = kube.api_client(cluster.kubeconfig)
        kube.install_crd(api)
        for namespace in (VICTIM, FLOODER):
            try:
                client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
            except ApiException as exc:
                if exc.status != 409:
                    raise
        operator = OperatorProcess(cluster.kubeconfig, log_path, clean=True).start()
        try:
            table = measure(api, operator, args)
        finally:
            operator.stop()
    finally:
        if not args.keep_cluster:
            provider.down()
    size = len(str(environment(FLOODER, "flood-000", FLOOD_WORKERS, args.pad_bytes)))
    report = [
        "# A flood of invalid TestEnvironments versus another tenant's time to Ready",
        "",
        f"- machine: {machine()}, load average at start {load_before}, at end {load()}; "
        f"total run time {(time.monotonic() - began) / 60:.1f} min",
        f"- cluster: local kwokctl binary runtime, Kubernetes {toolchain.KUBERNETES_VERSION}; pods "
        "simulated by kwok; one operator process with default settings",
        f"- flood: {args.flood} environments in namespace {FLOODER}, workers={FLOOD_WORKERS} (over the "
        f"operator's limit), ~{size} bytes each (~{size * args.flood // 1000} KB in total)",
        f"- victim: a 1-worker Redis environment in namespace {VICTIM}, created, waited for and deleted "
        f"{args.runs} times per phase after one warm-up; polled every {args.poll:g} s",
        "",
        *table,
        "",
    ]
    text = "\n".join(report)
    print(text)
    (out / "flood.md").write_text(text)
    log(f"wrote {out / 'flood.md'}; operator log: {log_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
