"""Benchmark: how long after a service starts serving its worker takes it as ready, on kind.

Issue 23's goal: readiness seen within 0.5 s of the service answering. On a one-node kind cluster
of our offline images (`testenv-bench`), `bench/readiness_suite` runs `-n W` (one environment:
per worker a Redis, a Kafka broker and LocalStack) `--runs` times per harness checkout. Its one
test per worker writes, for each service:

- *served*: when the service's pod log first says it serves (Redis "Ready to accept connections",
  Kafka "Kafka Server started", LocalStack "Ready."), as the container runtime stamped that line;
- *seen*: when the worker took the service as answering (its connection's span "X answers through
  its forward").

A worker starts its first test once it has seen every service, so the figure is the worker's:
*lag* = its last *seen* - its last *served* (the service that served last is usually LocalStack
or Kafka; one that served earlier waits for it either way). A worker waits for the operator to
report it Ready (the kubelet probes at most once a second, then the operator writes the status,
then the worker reads it every 0.25 s), then forwards and checks each service answers; since
issue 23's forward-ahead it forwards once the status names its services and tries each one every
0.2 s with a ping as strong as its pod's probe. A run whose pytest fails (a worker that never
saw its services, within `--testenv-timeout`) is counted in the table's "failed runs". The log
line and the first answer are not the same instant (a server logs just before or after it
listens), so a few tens of milliseconds either way are noise.

`--harness LABEL=PATH` (repeatable; `current` is this checkout) runs each run once per checkout,
with PATH's harness and operator first on PYTHONPATH: an A/B of two commits in one run.
Benchmarks print numbers; they never assert on them.

Run: `.venv/bin/python bench/readiness_lag.py --help` (needs `make kind-images`).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import checkouts  # bench/ is on sys.path when a script runs
from hostinfo import load, machine

CLUSTER_NAME = "testenv-bench"
NAMESPACE = "bench-ready"
BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SUITE = BENCH / "readiness_suite"
RESULTS = BENCH / "results"


def log(message: str) -> None:
    print(f"[readiness {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_suite(
    workers: int, run: int, out: Path, harness: tuple[str, str], timeout: int
) -> tuple[list[tuple[str, float]], bool]:
    """One run of the suite: (the service that served last, the worker's lag) per worker, and
    whether pytest passed."""
    label, path = harness
    env = checkouts.environment(os.environ, path)
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-n",
        str(workers),
        "--testenv-cluster=kind",
        f"--testenv-cluster-name={CLUSTER_NAME}",
        f"--testenv-namespace={NAMESPACE}",
        "--testenv-wait-teardown",
        f"--testenv-timeout={timeout}",
    ]
    with tempfile.TemporaryDirectory(prefix="readiness-") as reports:
        env["READINESS_OUT"] = reports
        env["READINESS_TESTS"] = str(2 * workers)
        result = subprocess.run(
            argv, cwd=SUITE, env=env, capture_output=True, text=True, check=False, timeout=1800
        )
        (out / f"readiness.{label}.n{workers}.run{run}.log").write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            log(f"[{label}] run {run}: pytest exited {result.returncode}; see its log in {out}")
        lags = []
        for spans in sorted(Path(reports).glob("worker-*.spans.json")):
            (out / f"readiness.{label}.n{workers}.run{run}.{spans.name}").write_text(spans.read_text())
        for report in sorted(
            p for p in Path(reports).glob("worker-*.json") if not p.name.endswith(".spans.json")
        ):
            times = json.loads(report.read_text())
            (out / f"readiness.{label}.n{workers}.run{run}.{report.name}").write_text(report.read_text())
            if any(t["served"] is None or t["seen"] is None for t in times.values()):
                log(f"[{label}] run {run}: {report.name} lacks a time: {times}")
                continue
            last = max(times, key=lambda service: times[service]["served"])
            lags.append((last, max(t["seen"] for t in times.values()) - times[last]["served"]))
    return lags, result.returncode == 0


def render(
    lags: dict[str, list[tuple[str, float]]], failed: dict[str, int], runs: int, header: Sequence[str]
) -> str:
    lines = [
        *header,
        "",
        "| harness | failed runs | workers | lag, last seen - last served: median (min, max) s | last |",
        "|---|---:|---:|---:|---|",
    ]
    for label in failed:
        samples = lags.get(label, [])
        values = [lag for _, lag in samples]
        last = ", ".join(f"{s} {n}" for s, n in collections.Counter(s for s, _ in samples).most_common())
        spread = f"{statistics.median(values):.2f} ({min(values):.2f}, {max(values):.2f})" if values else "-"
        lines.append(f"| {label} | {failed[label]} of {runs} | {len(values)} | {spread} | {last} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workers", type=int, default=2, help="xdist workers (default %(default)s)")
    parser.add_argument("--runs", type=int, default=2, help="runs per harness (default %(default)s)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the .md and .log files")
    parser.add_argument("--keep-cluster", action="store_true", help=f"leave {CLUSTER_NAME!r} running")
    parser.add_argument(
        "--timeout", type=int, default=180, help="--testenv-timeout of each run, s (default %(default)s)"
    )
    checkouts.add_option(parser)
    args = parser.parse_args(argv)
    harnesses = checkouts.parse(parser, args.harness)
    from testenv_harness.provision.clusters.kind import KindProvider

    args.out.mkdir(parents=True, exist_ok=True)
    began, began_wall, load_before = time.monotonic(), datetime.datetime.now(datetime.UTC), load()
    provider = KindProvider(CLUSTER_NAME, report=log)
    lags: dict[str, list[tuple[str, float]]] = {}
    failed = {label: 0 for label, _ in harnesses}
    try:
        provider.up()
        log(f"warm-up run (not counted): the node's first start of each image is slower ({harnesses[-1][0]})")
        run_suite(args.workers, 0, args.out, harnesses[-1], args.timeout)
        for run in range(1, args.runs + 1):
            for harness in harnesses:
                log(f"[{harness[0]}] run {run}/{args.runs}: -n {args.workers} (load average {load()})")
                samples, passed = run_suite(args.workers, run, args.out, harness, args.timeout)
                failed[harness[0]] += not passed
                for service, lag in samples:
                    lags.setdefault(harness[0], []).append((service, lag))
                    log(f"  a worker saw its services {lag:.2f}s after the last one ({service}) served")
    finally:
        if not args.keep_cluster:
            provider.down()
    compared = ", ".join(f"{label} {path or ROOT}" for label, path in harnesses)
    header = [
        "# A service's readiness as its worker sees it (kind)",
        "",
        f"- started {began_wall:%Y-%m-%dT%H:%M:%SZ}, total {(time.monotonic() - began) / 60:.1f} min; "
        f"machine: {machine()} (load average at start {load_before}, at end {load()})",
        f"- `pytest -n {args.workers} --testenv-cluster=kind --testenv-cluster-name={CLUSTER_NAME}` in "
        f"bench/readiness_suite, {args.runs} run(s) per harness, interleaved ({compared}), after one "
        "warm-up run",
    ]
    report = render(lags, failed, args.runs, header)
    print(report)
    (args.out / "readiness_lag.md").write_text(report)
    log(f"wrote {args.out / 'readiness_lag.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
