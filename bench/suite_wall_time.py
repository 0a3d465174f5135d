"""Benchmark: wall time of the shipped example suite with 1, 2 and 4 xdist workers.

Runs `examples/suite` (its own pytest.ini: `../testenvironment.yaml`, so every worker gets a
Redis, a Kafka broker and LocalStack, which the local data plane serves with moto) as
`pytest -n N --testenv-cluster=local --testenv-cluster-name=testenv-bench
--testenv-namespace=bench`, `--runs` times for every N, the Ns interleaved in rotating order.
The local cluster is created (or reused) before the first run, so no run pays for it.

From every run it records the wall time of the pytest process, the plugin's own lines (each
worker's ready time with its services' times, the slowest worker, the teardown time), when the
first test body began on any worker and on every worker (`stamps.py`, loaded with `-p stamps`)
and pytest's summary line (passed, failed, errors). It prints a markdown table of median and min
per N and writes it, one CSV row per run and every run's full output, to bench/results/.

Run: `make bench-suite` (or `.venv/bin/python bench/suite_wall_time.py --help`).
Benchmarks print numbers; they never assert on them. Failed tests are reported, with their text.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from hostinfo import load, machine  # bench/ is on sys.path when a script runs
from stamps import every_worker_first, read_stamps, stamped_pytest
from testenv_api import KIND, local_ports
from testenv_harness.ground.localports import bindable

CLUSTER_NAME = "testenv-bench"
NAMESPACE = "bench"
ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "examples" / "suite"
RESULTS = Path(__file__).resolve().parent / "results"

# xdist's progress dots can share a line with the plugin's lines: search, not match.
WORKER_READY = re.compile(r"testenv: worker (\d+) ready in ([\d.]+)s(?: \((.*)\))?$")
SUMMARY = re.compile(
    r"testenv: (\d+)/(\d+) workers ready(?: \(slowest ([\d.]+)s\))?; "
    r"(?:torn down|stopped) in ([\d.]+)s, (.*)$"
)
PYTEST_SUMMARY = re.compile(r"^=+ (.+) in ([\d.]+)s(?: \([^)]*\))? =+$")
COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected|warnings?)")


def log(message: str) -> None:
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class Run:
    workers: int
    run: int
    started_at: str
    load_before: float
    exit_code: int
    wall_s: float
    ready_slowest_s: float | None = None
    #: from the pytest process's start until the first test body began, on any worker / on every one
    first_test_s: float | None = None
    every_first_test_s: float | None = None
    workers_ready: int = 0
    teardown_s: float | None = None
    teardown_note: str = ""
    pytest_s: float | None = None
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    #: service name -> ready time of its process (seconds), one entry per worker
    service_s: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    worker_ready_s: list[float] = dataclasses.field(default_factory=list)
    failures: str = ""
    log_path: str = ""
    #: other testenv runs (their operator processes) seen on the machine during this run
    concurrent_runs: int = 0

    @property
    def passed(self) -> int:
        return self.counts.get("passed", 0)

    @property
    def failed(self) -> int:
        return self.counts.get("failed", 0)

    @property
    def errors(self) -> int:
        return self.counts.get("errors", 0) + self.counts.get("error", 0)


def parse_output(run: Run, output: str) -> None:
    lines = output.splitlines()
    for line in lines:
        if match := WORKER_READY.search(line):
            run.worker_ready_s.append(float(match.group(2)))
            for part in (match.group(3) or "").split(", "):
                name, _, took = part.rpartition(" ")
                if name and took.endswith("s"):
                    run.service_s.setdefault(name, []).append(float(took[:-1]))
        elif match := SUMMARY.search(line):
            run.workers_ready = int(match.group(1))
            run.ready_slowest_s = float(match.group(3)) if match.group(3) else None
            run.teardown_s = float(match.group(4))
            run.teardown_note = match.group(5)
        elif match := PYTEST_SUMMARY.match(line):
            run.pytest_s = float(match.group(2))
            run.counts = {kind: int(n) for n, kind in COUNT.findall(match.group(1))}
    # Failure text: pytest's short summary, and every distinct `E ` line with how often it came
    # (the full tracebacks are in the run's log).
    keep, summary = False, []
    errors: dict[str, int] = {}
    for line in lines:
        if re.match(r"^=+ short test summary info =+$", line):
            keep = True
        elif PYTEST_SUMMARY.match(line):
            keep = False
        elif keep:
            summary.append(line)
        if line.startswith("E "):
            errors[line.strip()] = errors.get(line.strip(), 0) + 1
    picked = summary + [f"{count}x {line}" for line, count in errors.items()]
    if run.exit_code != 0 and not picked:  # failed before any test ran: show the end
        picked = lines[-40:]
    run.failures = "\n".join(picked)


def planned_ports(manifest: Path, workers: int) -> range:
    """The local ports the manifest's fixed portBase plans for `workers` workers (none if unset)."""
    for doc in yaml.safe_load_all(manifest.read_text()):
        if doc and doc.get("kind") == KIND:
            spec = doc.get("spec") or {}
            if spec.get("portBase") is None:
                return range(0)
            return local_ports({**spec, "workers": workers})
    return range(0)


def busy(ports: Sequence[int]) -> list[int]:
    return [port for port in ports if not bindable(port)]


def stem(args: argparse.Namespace) -> str:
    """The name of this cluster's output files: a kind run's never overwrite a local run's."""
    return "suite_wall_time" if args.cluster == "local" else f"suite_wall_time_{args.cluster}"


def run_suite(workers: int, run: int, args: argparse.Namespace) -> Run:
    stamps, env, argv = stamped_pytest(workers)
    argv += [
        f"--testenv-cluster={args.cluster}",
        f"--testenv-cluster-name={CLUSTER_NAME}",
        f"--testenv-namespace={NAMESPACE}",
    ]
    started_at = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    load_before = os.getloadavg()[0]
    started, started_epoch = time.monotonic(), time.time()
    process = subprocess.Popen(
        argv,
        cwd=args.suite,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    others: set[int] = set()
    done = threading.Event()

    def watch() -> None:  # other runs' operators on this machine while ours runs
        while not done.wait(1.0):
            others.update(foreign_operators(process.pid))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        output, _ = process.communicate(timeout=args.timeout)
        code = process.returncode
    except subprocess.TimeoutExpired:
        process.terminate()  # the plugin tears down on SIGTERM
        output, _ = process.communicate()
        code = -1
        output += f"\n(bench: stopped after {args.timeout:.0f}s)"
    finally:
        done.set()
        watcher.join()
    wall = time.monotonic() - started
    path = args.out / f"{stem(args)}.n{workers}.run{run}.log"
    path.write_text(f"$ (cd {args.suite} && {' '.join(argv[2:])})\n{output}")
    result = Run(workers, run, started_at, load_before, code, wall, log_path=str(path))
    marks = read_stamps(stamps)
    every = every_worker_first(marks)
    result.first_test_s = min(marks["start"]) - started_epoch if marks["start"] else None
    result.every_first_test_s = every - started_epoch if every is not None else None
    result.concurrent_runs = len(others)
    parse_output(result, output)
    return result


def foreign_operators(ours: int) -> set[int]:
    """testenv operator processes on this machine that our pytest process did not start."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if "-m testenv_operator" in cmdline and parent != ours:
            found.add(int(entry.name))
    return found


def median_min(values: Sequence[float | None]) -> str:
    done = [v for v in values if v is not None]
    if not done:
        return "n/a"
    missing = len(values) - len(done)
    text = f"{statistics.median(done):.1f} ({min(done):.1f})"
    return text + (f" [{missing} missing]" if missing else "")


def render(runs: Sequence[Run], worker_counts: Sequence[int], header: Sequence[str]) -> str:
    lines = [*header, ""]
    lines += [
        "| workers (-n) | runs | wall median (min) s | all workers ready median (min) s "
        "| first test median (min) s | every worker's first test median (min) s "
        "| pytest session median (min) s | teardown median (min) s | passed / failed / errors "
        "(all runs) | exit codes | other testenv runs seen |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    services = sorted({name for r in runs for name in r.service_s})
    per_service = [
        "| workers (-n) | first worker ready median (min) s | "
        + " | ".join(f"{s} process ready median (max) s" for s in services)
        + " |",
        "|---:|---:|" + "---:|" * len(services),
    ]
    for n in worker_counts:
        mine = [r for r in runs if r.workers == n]
        if not mine:
            continue
        counts = (
            f"{sum(r.passed for r in mine)} / {sum(r.failed for r in mine)} / {sum(r.errors for r in mine)}"
        )
        lines.append(
            f"| {n} | {len(mine)} | {median_min([r.wall_s for r in mine])} "
            f"| {median_min([r.ready_slowest_s for r in mine])} "
            f"| {median_min([r.first_test_s for r in mine])} "
            f"| {median_min([r.every_first_test_s for r in mine])} "
            f"| {median_min([r.pytest_s for r in mine])} | {median_min([r.teardown_s for r in mine])} "
            f"| {counts} | {', '.join(str(r.exit_code) for r in mine)} "
            f"| {', '.join(str(r.concurrent_runs) for r in mine)} |"
        )
        cells = []
        for service in services:
            values = [v for r in mine for v in r.service_s.get(service, [])]
            cells.append(f"{statistics.median(values):.1f} ({max(values):.1f})" if values else "n/a")
        first = [min(r.worker_ready_s) if r.worker_ready_s else None for r in mine]
        per_service.append(f"| {n} | {median_min(first)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "- wall: the pytest process from start to exit (interpreter start, cluster reuse check, "
        "operator start, environment, tests, teardown).",
        "- all workers ready: the plugin's `slowest` figure, measured from the start of its set-up "
        "(in pytest_configure) until the last worker's services were all served and Ready.",
        "- first test, every worker's first test: from the pytest process's start until a test body "
        "began on any worker, and until every worker had begun one (`stamps.py`). A worker that "
        "forwards ahead of Ready (kind) starts testing before the plugin's `slowest` figure.",
        "- pytest session: the time in pytest's summary line (collection and tests, including the "
        "workers waiting for their services; not the controller's set-up or teardown).",
        "- teardown: the plugin's `stopped in` figure (stop the services, delete the environment and "
        "hand the namespaces' deletion to the operator, which finishes it in the background).",
        "- other testenv runs seen: operator processes of other runs (not started by this run) seen "
        "on the machine while it ran, one per run; they compete for CPU and for free local ports.",
        "",
    ]
    if services:
        lines += [
            "Per service, the time from the data plane starting the host process until it listened "
            "(median and max over all workers of all runs), and the first worker's ready time:",
            "",
            *per_service,
            "",
        ]
    notes = sorted(
        {re.sub(r"pid \d+", "pid N", r.teardown_note) for r in runs} - {"", "all namespaces deleted"}
    )
    if notes:
        lines += [f"Teardown notes: {'; '.join(notes)}", ""]
    failed = [r for r in runs if r.exit_code != 0 or r.failed or r.errors]
    if failed:
        lines += ["## Runs with failures", ""]
        for r in failed:
            lines += [
                f"### -n {r.workers}, run {r.run} (exit {r.exit_code}, log {r.log_path})",
                "",
                "```",
                r.failures[-6000:],
                "```",
                "",
            ]
    return "\n".join(lines)


CSV_HEADER = [
    "workers",
    "run",
    "started_at_utc",
    "load_1m_before",
    "exit_code",
    "wall_s",
    "ready_slowest_s",
    "ready_first_s",
    "first_test_s",
    "every_first_test_s",
    "workers_ready",
    "pytest_s",
    "teardown_s",
    "passed",
    "failed",
    "errors",
    "skipped",
    "service_ready_s",
    "teardown_note",
    "concurrent_runs",
]


def csv_row(r: Run) -> list[str]:
    def num(value: float | None) -> str:
        return "" if value is None else f"{value:.3f}"

    services = ";".join(f"{k}={'/'.join(f'{v:.1f}' for v in vs)}" for k, vs in sorted(r.service_s.items()))
    return [
        str(r.workers),
        str(r.run),
        r.started_at,
        f"{r.load_before:.2f}",
        str(r.exit_code),
        num(r.wall_s),
        num(r.ready_slowest_s),
        num(min(r.worker_ready_s) if r.worker_ready_s else None),
        num(r.first_test_s),
        num(r.every_first_test_s),
        str(r.workers_ready),
        num(r.pytest_s),
        num(r.teardown_s),
        str(r.passed),
        str(r.failed),
        str(r.errors),
        str(r.counts.get("skipped", 0)),
        services,
        r.teardown_note,
        str(r.concurrent_runs),
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workers", default="1,2,4", help="xdist worker counts, comma-separated")
    parser.add_argument("--runs", type=int, default=3, help="runs per worker count (default 3)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one pytest run may take")
    parser.add_argument("--suite", type=Path, default=SUITE, help="the suite folder (its pytest.ini is used)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the .md/.csv/.log files")
    parser.add_argument(
        "--cluster",
        choices=("local", "kind"),
        default="local",
        help="local (kwok, host processes) or kind (real pods; needs `make kind-images`)",
    )
    parser.add_argument(
        "--keep-cluster", action="store_true", help=f"leave cluster {CLUSTER_NAME!r} running afterwards"
    )
    args = parser.parse_args(argv)
    args.out, args.suite = args.out.resolve(), args.suite.resolve()
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from testenv_harness.provision.clusters import LocalProvider
    from testenv_harness.provision.clusters.kind import KindProvider

    worker_counts = [int(w) for w in str(args.workers).split(",") if w.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = args.suite.parent / "testenvironment.yaml"
    began, began_wall, load_before = time.monotonic(), datetime.datetime.now(datetime.UTC), load()
    provider = (KindProvider if args.cluster == "kind" else LocalProvider)(CLUSTER_NAME, report=log)
    runs: list[Run] = []
    clashes: list[str] = []
    try:
        started = time.monotonic()
        provider.up()
        cluster_s = time.monotonic() - started
        for run in range(1, args.runs + 1):
            shift = (run - 1) % len(worker_counts)
            for n in worker_counts[shift:] + worker_counts[:shift]:
                taken = busy(planned_ports(manifest, n)) if manifest.exists() else []
                if taken:
                    clashes.append(f"-n {n} run {run}: planned local ports already in use: {taken}")
                    log(clashes[-1])
                log(f"run {run}/{args.runs}: -n {n} (load average {load()})")
                result = run_suite(n, run, args)
                runs.append(result)
                log(
                    f"  wall {result.wall_s:.1f}s, ready {result.ready_slowest_s}s, teardown "
                    f"{result.teardown_s}s, {result.counts or 'no summary'} (exit {result.exit_code})"
                )
    finally:
        if not args.keep_cluster:
            provider.down()
    total = time.monotonic() - began
    header = [
        f"# Example suite wall time by number of xdist workers ({args.cluster} cluster)",
        "",
        f"- started {began_wall:%Y-%m-%dT%H:%M:%SZ}, total run time {total / 60:.1f} min "
        f"(cluster {CLUSTER_NAME!r} up in {cluster_s:.1f}s before the first run"
        f"{'' if args.keep_cluster else ', deleted at the end'})",
        f"- machine: {machine()}, **shared with other engineers' test runs** "
        f"(load average at start {load_before}, at end {load()}): timings are noisy",
        f"- command, from {args.suite.relative_to(ROOT) if args.suite.is_relative_to(ROOT) else args.suite}: "
        f"`pytest -n N --testenv-cluster={args.cluster} --testenv-cluster-name={CLUSTER_NAME} "
        f"--testenv-namespace={NAMESPACE}`; {args.runs} runs per N, Ns interleaved in rotating order",
        "- every worker: Redis (redis-server), Kafka (a real broker, JVM), LocalStack "
        + (
            "(localstack-core); real pods on a one-node kind cluster, from our offline images; service "
            "times are pod creation to the kubelet's Ready"
            if args.cluster == "kind"
            else "(served by moto_server on the local cluster); pods are simulated by kwok, the processes "
            "are real"
        ),
    ]
    if clashes:
        header.append(f"- port clashes before a run: {'; '.join(clashes)}")
    report = render(runs, worker_counts, header)
    print(report)
    name = stem(args)
    (args.out / f"{name}.md").write_text(report)
    with (args.out / f"{name}.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_HEADER)
        writer.writerows(csv_row(r) for r in runs)
    log(f"wrote {args.out / name}.md and .csv; total {total:.0f}s")
    return 1 if any(r.exit_code != 0 for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
