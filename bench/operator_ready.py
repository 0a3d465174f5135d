"""Benchmark: time from creating a TestEnvironment to Ready, operator versus a direct lower bound.

For every case (one environment of 1, 4, 16, 64 and 256 workers; 20 environments of 2 workers and
50 of 4 created at once) this measures, on a real local control plane (kwok simulates nodes and pods):

- operator: create the TestEnvironment(s), then poll until status says Ready for all workers;
- direct (the lower bound): apply exactly the objects the operator would (same planner, same
  server-side apply helper, 16 threads across workers) with no operator, then poll until every
  Deployment has a ready replica.

Each case runs `--runs` times; the table shows median and min and the ratio operator / direct,
and the API requests per second each method made from the create call to Ready (the API
server's own apiserver_request_total, WATCHes left out; the benchmark's readiness polls count in
both columns alike).
The operator is stopped while the direct runs go: its orphan sweep would (rightly) delete
namespaces that carry its labels but have no TestEnvironment.

Run: `make bench-operator` (or `.venv/bin/python bench/operator_ready.py --help`).
Benchmarks print numbers; they never assert on them.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import importlib
import json
import statistics
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from apimetrics import api_requests, total  # bench/ is on sys.path when a script runs
from hostinfo import load, machine
from testenv_api import DEFAULT_PORT_BASE, GROUP, KIND, LABEL_OWNER_UID, MAX_WORKERS, PLURAL, VERSION, Phase
from testenv_harness.ground import kube
from testenv_harness.ground.waiting import WaitTimeoutError, wait_for
from testenv_harness.provision import toolchain
from testenv_harness.provision.clusters import LocalProvider
from testenv_harness.provision.operator_process import OperatorProcess
from testenv_operator import kubeio, manifests
from testenv_operator.plan import WorkerPlan, plan_environment
from testenv_operator.settings import Settings

CLUSTER_NAME = "testenv-bench"
TENANT = "bench"
RESULTS = Path(__file__).resolve().parent / "results"
SERVICES: list[dict[str, str]] = [
    {"name": "redis", "type": "redis"},
    {"name": "kafka", "type": "kafka"},
    {"name": "aws", "type": "localstack"},
]
#: Settings of the operator process beyond its defaults: any worker count the CRD allows, and no
#: per-namespace cap (every case's environments live in one tenant namespace).
OPERATOR_SETTINGS = {
    "TESTENV_MAX_WORKERS": str(MAX_WORKERS),
    "TESTENV_MAX_WORKERS_PER_NAMESPACE": "100000",
    "TESTENV_MAX_ENVIRONMENTS_PER_NAMESPACE": "1000",
}
#: What the operator applies per worker with its default settings (TESTENV_WORKER_*).
FENCES = Settings().fences
#: Threads the direct lower bound applies with (the operator: up to 8 passes on a pool of 32).
APPLY_THREADS = 16

Json = dict[str, Any]


class BenchError(RuntimeError):
    """A case could not be measured (timeout, operator died, ...)."""


def log(message: str) -> None:
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


# -- cases and samples ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    environments: int
    workers: int

    @property
    def label(self) -> str:
        workers = f"{self.workers} worker{'s' if self.workers != 1 else ''}"
        if self.environments == 1:
            return f"1 env x {workers}"
        return f"{self.environments} envs x {workers}"

    @property
    def deployments(self) -> int:
        return self.environments * self.workers * len(SERVICES)


@dataclasses.dataclass(frozen=True)
class Sample:
    case: Case
    method: str  # "operator" | "direct"
    run: int
    started_at: str  # UTC wall clock of the create call, to find the case in the operator log
    ready_s: float | None  # create call -> last environment Ready; None: not Ready before the timeout
    first_ready_s: float | None  # create call -> first environment Ready
    teardown_s: float | None  # delete call -> every object and namespace gone
    requests_per_s: float | None = None  # API requests (no WATCH) per second, create call -> Ready


def manifest(name: str, workers: int) -> Json:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name, "namespace": TENANT},
        "spec": {"workers": workers, "portBase": DEFAULT_PORT_BASE, "services": SERVICES},
    }


def env_names(case: Case, method: str, run: int) -> list[str]:
    prefix = "op" if method == "operator" else "lb"
    if case.environments == 1:
        return [f"{prefix}-w{case.workers}-r{run}"]
    return [f"{prefix}-fleet-r{run}-{i:02d}" for i in range(case.environments)]


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def left(timeout: float, started: float) -> float:
    """What is left of a case's `timeout`, counted from its create (or delete) call."""
    return timeout - (time.monotonic() - started)


# -- the operator process ------------------------------------------------------------------------


@contextmanager
def running_operator(kubeconfig: Path, log_path: Path) -> Iterator[OperatorProcess]:
    """`python -m testenv_operator`, configured by OPERATOR_SETTINGS only, logging (JSON) to one file."""
    process = OperatorProcess(kubeconfig, log_path, clean=True, **OPERATOR_SETTINGS).start()
    log(f"operator running (liveness {process.healthz}, log {log_path})")
    try:
        yield process
    finally:
        process.stop()


# -- through the operator ------------------------------------------------------------------------


def environment_ready(item: Json, workers: int) -> bool:
    status = item.get("status") or {}
    return (
        status.get("phase") == Phase.READY
        and status.get("readyWorkers") == workers
        and status.get("observedGeneration") == item["metadata"].get("generation")
    )


def list_environments(api: client.ApiClient) -> list[Json]:
    response = client.CustomObjectsApi(api).list_namespaced_custom_object(
        GROUP, VERSION, TENANT, PLURAL, _preload_content=False
    )
    items: list[Json] = json.loads(response.data)["items"]
    return items


def run_operator_case(
    api: client.ApiClient, operator: OperatorProcess, case: Case, run: int, poll: float, timeout: float
) -> Sample:
    names = env_names(case, "operator", run)
    objects = client.CustomObjectsApi(api)
    ready_at: dict[str, float] = {}
    last_status: dict[str, Json] = {}

    def create(name: str) -> None:
        objects.create_namespaced_custom_object(
            GROUP, VERSION, TENANT, PLURAL, manifest(name, case.workers), _preload_content=False
        )

    def check() -> bool:
        if not operator.alive():
            raise BenchError(f"the operator exited; see {operator.log}")
        items = list_environments(api)
        seen = time.monotonic() - started
        for item in items:
            name = item["metadata"]["name"]
            last_status[name] = item.get("status") or {}
            if name in names and last_status[name].get("phase") == Phase.FAILED:
                # A refused case cannot turn Ready: say why now, not at the timeout.
                raise BenchError(f"{name} is Failed: {last_status[name].get('message')}")
            if name in names and name not in ready_at and environment_ready(item, case.workers):
                ready_at[name] = seen
        return len(ready_at) == len(names)

    def waiting_for() -> str:
        late = [n for n in names if n not in ready_at]
        return f"{len(late)} not Ready, e.g. {late[0]}: " + json.dumps(
            {k: last_status.get(late[0], {}).get(k) for k in ("phase", "message", "readyWorkers")}
        )

    requests_before = total(api_requests(api))
    started_at = utc_now()
    started = time.monotonic()
    ready: float | None = None
    first: float | None = None
    rate: float | None = None
    try:
        if len(names) == 1:
            create(names[0])
        else:  # all at the same moment: one thread per environment
            with ThreadPoolExecutor(len(names)) as creators:
                list(creators.map(create, names))
        what = f"{len(names)} environment(s) to be Ready"
        wait_for(check, timeout=left(timeout, started), what=what, interval=poll, seen=waiting_for)
        ready, first = max(ready_at.values()), min(ready_at.values())
        rate = (total(api_requests(api)) - requests_before) / (time.monotonic() - started)
    except (BenchError, WaitTimeoutError) as exc:
        log(f"operator {case.label} run {run}: {exc}")
    teardown = delete_environments(api, names, poll, timeout)
    return Sample(case, "operator", run, started_at, ready, first, teardown, rate)


def delete_environments(
    api: client.ApiClient, names: Sequence[str], poll: float, timeout: float
) -> float | None:
    """Delete the TestEnvironments and wait until they (so, via the finalizer, their namespaces) are gone."""
    objects = client.CustomObjectsApi(api)
    started = time.monotonic()
    for name in names:
        try:
            objects.delete_namespaced_custom_object(GROUP, VERSION, TENANT, PLURAL, name)
        except ApiException as exc:
            if exc.status != 404:
                raise
    wanted = set(names)
    there: set[str] = set(wanted)

    def gone() -> bool:
        nonlocal there
        there = {item["metadata"]["name"] for item in list_environments(api)} & wanted
        return not there

    try:
        wait_for(
            gone,
            timeout=left(timeout, started),
            what="the TestEnvironments to be gone",
            interval=poll,
            seen=lambda: f"still there: {sorted(there)}",
        )
    except WaitTimeoutError as exc:
        log(f"teardown: {exc}")
        return None
    return time.monotonic() - started


# -- the direct lower bound ----------------------------------------------------------------------


def apply_worker(api: client.ApiClient, owner: manifests.Owner, plan: WorkerPlan) -> None:
    kubeio.apply(api, manifests.namespace(owner, plan.namespace, plan.index))
    for obj in plan.objects(owner, FENCES, []):
        kubeio.apply(api, obj)


def uid_selector(uids: Sequence[str]) -> str:
    if len(uids) == 1:
        return f"{LABEL_OWNER_UID}={uids[0]}"
    return f"{LABEL_OWNER_UID} in ({','.join(uids)})"


def run_direct_case(
    api: client.ApiClient, pool: ThreadPoolExecutor, case: Case, run: int, poll: float, timeout: float
) -> Sample:
    settings = Settings.from_env(OPERATOR_SETTINGS)
    owners = [manifests.Owner(TENANT, name, str(uuid.uuid4())) for name in env_names(case, "direct", run)]
    jobs = [
        (owner, plan)
        for owner in owners
        for plan in plan_environment(owner, manifest(owner.name, case.workers)["spec"], settings)
    ]
    per_env = case.workers * len(SERVICES)
    selector = uid_selector([o.uid for o in owners])
    apps = client.AppsV1Api(api)
    ready_at: dict[str, float] = {}
    counts: dict[str, int] = {}

    def check() -> bool:
        response = apps.list_deployment_for_all_namespaces(label_selector=selector, _preload_content=False)
        seen = time.monotonic() - started
        counts.clear()
        for deployment in json.loads(response.data)["items"]:
            if ((deployment.get("status") or {}).get("readyReplicas") or 0) >= 1:
                uid = deployment["metadata"]["labels"][LABEL_OWNER_UID]
                counts[uid] = counts.get(uid, 0) + 1
        for owner in owners:
            if owner.uid not in ready_at and counts.get(owner.uid, 0) >= per_env:
                ready_at[owner.uid] = seen
        return len(ready_at) == len(owners)

    def waiting_for() -> str:
        return f"{sum(counts.values())}/{case.deployments} Deployments ready"

    requests_before = total(api_requests(api))
    started_at = utc_now()
    started = time.monotonic()
    ready: float | None = None
    first: float | None = None
    rate: float | None = None
    try:
        list(pool.map(lambda job: apply_worker(api, *job), jobs))
        what = "every Deployment to have a ready replica"
        wait_for(check, timeout=left(timeout, started), what=what, interval=poll, seen=waiting_for)
        ready, first = max(ready_at.values()), min(ready_at.values())
        rate = (total(api_requests(api)) - requests_before) / (time.monotonic() - started)
    except (WaitTimeoutError, kubeio.ApiError) as exc:
        log(f"direct {case.label} run {run}: {exc}")
    teardown = delete_direct(api, [plan.namespace for _, plan in jobs], selector, poll, timeout)
    return Sample(case, "direct", run, started_at, ready, first, teardown, rate)


def delete_direct(
    api: client.ApiClient, namespaces: Sequence[str], selector: str, poll: float, timeout: float
) -> float | None:
    """Delete the namespaces as the operator's finalizer does, and wait until they are gone."""
    started = time.monotonic()
    for name in namespaces:
        kubeio.delete(api, "Namespace", name)
        kubeio.delete_pods_now(api, name)
    there: list[Json] = []

    def gone() -> bool:
        nonlocal there
        there = kubeio.list_labelled(api, "Namespace", selector)
        return not there

    try:
        wait_for(
            gone,
            timeout=left(timeout, started),
            what="the namespaces to be gone",
            interval=poll,
            seen=lambda: f"{len(there)} namespaces left",
        )
    except WaitTimeoutError as exc:
        log(f"teardown: {exc}")
        return None
    return time.monotonic() - started


# -- driving ---------------------------------------------------------------------------------------


def ensure_tenant(api: client.ApiClient, name: str = TENANT) -> None:
    """Create the namespace the environments go in, unless it is there."""
    try:
        client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    except ApiException as exc:
        if exc.status != 409:
            raise


def check_clean(api: client.ApiClient) -> None:
    """Refuse to measure on top of leftovers of an earlier (interrupted) run."""
    leftovers = list_environments(api)
    owned = kubeio.list_labelled(api, "Namespace", LABEL_OWNER_UID)
    if leftovers or owned:
        raise BenchError(
            f"cluster {CLUSTER_NAME!r} holds {len(leftovers)} TestEnvironments and {len(owned)} worker "
            "namespaces from an earlier run: delete the cluster (the benchmark does at the end)"
        )


def fmt(value: float | None, digits: int = 2) -> str:
    return "timeout" if value is None else f"{value:.{digits}f}"


def summarise(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """(median, min) of the runs, or None when any run did not finish (a timeout is not a number)."""
    if not values or any(v is None for v in values):
        return None, None
    done = [v for v in values if v is not None]
    return statistics.median(done), min(done)


def ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def render(
    cases: Sequence[Case], samples: Sequence[Sample], header: Sequence[str], poll: float
) -> tuple[str, list[list[str]]]:
    """The markdown report and the CSV rows (one per sample)."""
    lines = [*header, ""]
    lines += [
        "| case | deployments | runs | operator median (s) | operator min (s) | direct median (s) "
        "| direct min (s) | ratio median | ratio min | operator req/s | direct req/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    teardown = [
        "| case | operator teardown median (s) | direct teardown median (s) |",
        "|---|---:|---:|",
    ]
    for case in cases:
        by_method = {
            m: [s for s in samples if s.case == case and s.method == m] for m in ("operator", "direct")
        }
        op_med, op_min = summarise([s.ready_s for s in by_method["operator"]])
        lb_med, lb_min = summarise([s.ready_s for s in by_method["direct"]])
        runs = min(len(v) for v in by_method.values())
        op_rate, _ = summarise([s.requests_per_s for s in by_method["operator"]])
        lb_rate, _ = summarise([s.requests_per_s for s in by_method["direct"]])
        lines.append(
            f"| {case.label} | {case.deployments} | {runs} | {fmt(op_med)} | {fmt(op_min)} "
            f"| {fmt(lb_med)} | {fmt(lb_min)} | {ratio(op_med, lb_med)} | {ratio(op_min, lb_min)} "
            f"| {fmt(op_rate, 0)} | {fmt(lb_rate, 0)} |"
        )
        op_down, _ = summarise([s.teardown_s for s in by_method["operator"]])
        lb_down, _ = summarise([s.teardown_s for s in by_method["direct"]])
        teardown.append(f"| {case.label} | {fmt(op_down)} | {fmt(lb_down)} |")
    lines += [
        "",
        "Time from the create call until the last environment of the case was seen Ready "
        f"(polled every {poll:g} s, so numbers carry up to one poll interval plus one list call "
        "of resolution). Ratio = operator / direct.",
        "",
        "Teardown (delete call until every namespace is gone; not part of the comparison):",
        "",
        *teardown,
        "",
    ]
    rows = [
        [
            s.case.label,
            str(s.case.environments),
            str(s.case.workers),
            str(s.case.deployments),
            s.method,
            str(s.run),
            s.started_at,
            fmt(s.ready_s, 3),
            fmt(s.first_ready_s, 3),
            fmt(s.teardown_s, 3),
            fmt(s.requests_per_s, 1),
        ]
        for s in samples
    ]
    return "\n".join(lines), rows


CSV_HEADER = [
    "case",
    "environments",
    "workers",
    "deployments",
    "method",
    "run",
    "started_at_utc",
    "ready_s",
    "first_ready_s",
    "teardown_s",
    "requests_per_s",
]


def plot(cases: Sequence[Case], samples: Sequence[Sample], path: Path) -> bool:
    """A bar chart of the medians, if matplotlib is installed (it is not a dependency)."""
    try:
        matplotlib: Any = importlib.import_module("matplotlib")
    except ImportError:
        return False
    matplotlib.use("Agg")
    pyplot: Any = importlib.import_module("matplotlib.pyplot")
    figure, axes = pyplot.subplots(figsize=(8, 4.5))
    width = 0.4
    for offset, method in ((-width / 2, "operator"), (width / 2, "direct")):
        medians = [
            summarise([s.ready_s for s in samples if s.case == c and s.method == method])[0] or 0.0
            for c in cases
        ]
        axes.bar([i + offset for i in range(len(cases))], medians, width, label=method)
    axes.set_xticks(range(len(cases)), [c.label for c in cases], rotation=15)
    axes.set_ylabel("create -> Ready, median (s)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return True


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3, help="repetitions of every case (default 3)")
    parser.add_argument(
        "--workers",
        default="1,4,16,64,256",
        help="worker counts of the one-environment cases, comma-separated (default 1,4,16,64,256)",
    )
    parser.add_argument(
        "--fleet",
        default="20x2,50x4",
        help="ENVSxWORKERS cases created at once, comma-separated; 'none' skips them (default 20x2,50x4)",
    )
    parser.add_argument("--poll", type=float, default=0.1, help="seconds between readiness polls")
    parser.add_argument("--timeout", type=float, default=600, help="seconds a case may take to be Ready")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the .md/.csv/.png/.log files")
    parser.add_argument(
        "--keep-cluster", action="store_true", help=f"leave cluster {CLUSTER_NAME!r} running afterwards"
    )
    return parser.parse_args(argv)


def build_cases(args: argparse.Namespace) -> list[Case]:
    cases = [Case(1, int(w)) for w in str(args.workers).split(",") if w.strip()]
    if args.fleet != "none":
        for fleet in str(args.fleet).lower().split(","):
            envs, workers = (int(p) for p in fleet.split("x"))
            cases.append(Case(envs, workers))
    return cases


def measure(
    kubeconfig: Path, api: client.ApiClient, cases: Sequence[Case], args: argparse.Namespace, log_path: Path
) -> list[Sample]:
    samples: list[Sample] = []
    poll, timeout = float(args.poll), float(args.timeout)
    with ThreadPoolExecutor(APPLY_THREADS) as pool:
        for run in range(1, args.runs + 1):
            # Alternate which method goes first, so slow drift in the machine's load hits both.
            order = ("operator", "direct") if run % 2 else ("direct", "operator")
            for method in order:
                log(f"run {run}/{args.runs}: {method} (load average {load()})")
                if method == "operator":
                    with running_operator(kubeconfig, log_path) as operator:
                        run_operator_case(api, operator, Case(1, 1), 0, poll, timeout)  # warm-up
                        for case in cases:
                            sample = run_operator_case(api, operator, case, run, poll, timeout)
                            samples.append(sample)
                            log(f"  operator {case.label}: ready {fmt(sample.ready_s)} s")
                else:
                    run_direct_case(api, pool, Case(1, 1), 0, poll, timeout)  # warm-up
                    for case in cases:
                        sample = run_direct_case(api, pool, case, run, poll, timeout)
                        samples.append(sample)
                        log(f"  direct   {case.label}: ready {fmt(sample.ready_s)} s")
    return samples


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cases = build_cases(args)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "operator_ready.operator.log"
    log_path.unlink(missing_ok=True)
    began, began_wall = time.monotonic(), utc_now()
    load_before = load()
    provider = LocalProvider(CLUSTER_NAME, report=log)
    try:
        cluster = provider.up()
        api = kube.api_client(cluster.kubeconfig)
        kube.install_crd(api)
        ensure_tenant(api)
        check_clean(api)
        samples = measure(cluster.kubeconfig, api, cases, args, log_path)
    finally:
        if not args.keep_cluster:
            provider.down()
    total = time.monotonic() - began
    header = [
        "# Operator time-to-Ready",
        "",
        f"- started {began_wall}, total run time {total / 60:.1f} min "
        f"(cluster set-up included{'' if args.keep_cluster else ', and its deletion'}), "
        f"{args.runs} runs per case after one unrecorded 1-worker warm-up per phase",
        f"- machine: {machine()}, **shared with other engineers' test runs** "
        f"(load average at start {load_before}, at end {load()}): timings are noisy",
        f"- cluster: local kwokctl binary runtime, Kubernetes {toolchain.KUBERNETES_VERSION}, "
        f"kwok {toolchain.KWOK_VERSION}; pods are simulated by kwok (no image pulls, no containers)",
        f"- operator: `python -m testenv_operator`, defaults plus "
        f"{', '.join(f'{k}={v}' for k, v in OPERATOR_SETTINGS.items())}; "
        f"services per worker: {', '.join(s['type'] for s in SERVICES)}",
    ]
    report, rows = render(cases, samples, header, args.poll)
    print(report)
    (out / "operator_ready.md").write_text(report)
    with (out / "operator_ready.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_HEADER)
        writer.writerows(rows)
    plotted = plot(cases, samples, out / "operator_ready.png")
    log(
        f"wrote {out / 'operator_ready.md'}, {out / 'operator_ready.csv'}"
        + (f", {out / 'operator_ready.png'}" if plotted else " (no plot: matplotlib is not installed)")
        + f"; operator log: {log_path}; total {total:.0f}s"
    )
    return 0 if all(s.ready_s is not None for s in samples) else 1


if __name__ == "__main__":
    sys.exit(main())
