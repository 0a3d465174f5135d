"""Benchmark: does `pytest -n 4` beat `-n 1` on an I/O-bound suite, start-up included?

Runs `bench/io_suite` (60 tests of about 1 s each: its worker's Redis, Kafka and S3, then a
sleep standing for the system under test; every worker gets Redis, a Kafka broker and
LocalStack) as `pytest -n N --testenv-cluster=local --testenv-cluster-name=testenv-bench
--testenv-namespace=bench-io`, `--runs` times for every N, the Ns interleaved in rotating order.
The cluster is up before the first run, so no run pays for it. Before each run it waits (at most
`--settle` seconds) for the 1-minute load average to fall under `--max-load`, since other
engineers share the machine, and records the load average it started with.

Per run: the pytest process's wall time, the plugin's `slowest` worker-ready figure, the time to
the first test (`stamps.py`, loaded with `-p stamps`: the pytest process's start until the first
test body begins on any worker) and from the last test's teardown to the process's exit. With
`--timeline DIR` every run also writes the plugin's timeline page and its JSON events there.
Output: a markdown table on stdout and in bench/results/io_parallel.md, every run's log beside
it. Benchmarks print numbers; they never assert on them.

Run: `make bench-io` (or `.venv/bin/python bench/io_parallel.py --help`).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from hostinfo import load, machine  # bench/ is on sys.path when a script runs
from stamps import read_stamps, stamped_pytest

CLUSTER_NAME = "testenv-bench"
NAMESPACE = "bench-io"
BENCH = Path(__file__).resolve().parent
SUITE = BENCH / "io_suite"
RESULTS = BENCH / "results"
# xdist's progress dots can share a line with the plugin's: search, not match.
READY = re.compile(r"testenv: (\d+)/(\d+) workers ready(?: \(slowest ([\d.]+)s\))?")
COUNT = re.compile(r"(\d+) (passed|failed|errors?)")


def log(message: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class Sample:
    workers: int
    run: int
    load_1m: float
    exit_code: int
    wall_s: float
    slowest_ready_s: float | None
    first_test_s: float | None
    last_test_to_exit_s: float | None
    counts: dict[str, int]


def settle(max_load: float, patience: float) -> float:
    """Waits up to `patience` seconds for the 1-minute load average to fall under `max_load`;
    returns the load average the run starts with."""
    deadline = time.monotonic() + patience
    current = os.getloadavg()[0]
    while current >= max_load and time.monotonic() < deadline:
        log(f"load average {current:.2f} >= {max_load}: waiting")
        time.sleep(15)
        current = os.getloadavg()[0]
    return current


def run_suite(workers: int, run: int, args: argparse.Namespace) -> Sample:
    stamps, env, argv = stamped_pytest(workers)
    argv += [
        f"--testenv-cluster={args.cluster}",
        f"--testenv-cluster-name={CLUSTER_NAME}",
        f"--testenv-namespace={NAMESPACE}",
    ]
    if args.timeline is not None:
        argv.append(f"--testenv-timeline={args.timeline / f'io.n{workers}.run{run}.html'}")
    load_1m = settle(args.max_load, args.settle)
    started = time.time()
    result = subprocess.run(
        argv, cwd=SUITE, env=env, capture_output=True, text=True, check=False, timeout=args.timeout
    )
    wall = time.time() - started
    output = result.stdout + result.stderr
    (args.out / f"io_parallel.n{workers}.run{run}.log").write_text(f"$ {' '.join(argv[2:])}\n{output}")
    marks = read_stamps(stamps)
    bodies, ends = marks["start"], marks["end"]
    ready = READY.search(output)
    slowest = float(ready.group(3)) if ready is not None and ready.group(3) else None
    summary = next((line for line in reversed(output.splitlines()) if line.startswith("=")), "")
    counts = {kind.rstrip("s"): int(n) for n, kind in COUNT.findall(summary)}
    return Sample(
        workers,
        run,
        load_1m,
        result.returncode,
        wall,
        slowest,
        min(bodies) - started if bodies else None,
        started + wall - max(ends) if ends else None,
        counts,
    )


def cell(values: Sequence[float | None]) -> str:
    done = [v for v in values if v is not None]
    if not done:
        return "n/a"
    return f"{statistics.median(done):.1f} ({min(done):.1f})"


def render(samples: Sequence[Sample], header: Sequence[str]) -> str:
    lines = [
        *header,
        "",
        "| -n | runs | wall median (min) s | ratio to -n 1 (medians) | slowest worker ready median (min) s "
        "| to first test median (min) s | last test to exit median (min) s | load average at start "
        "| passed / failed / errors | exit codes |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    serial = [s.wall_s for s in samples if s.workers == 1]
    for n in sorted({s.workers for s in samples}):
        mine = [s for s in samples if s.workers == n]
        walls = [s.wall_s for s in mine]
        ratio = f"{statistics.median(walls) / statistics.median(serial):.2f}" if serial else "n/a"
        counts = " / ".join(str(sum(s.counts.get(k, 0) for s in mine)) for k in ("passed", "failed", "error"))
        lines.append(
            f"| {n} | {len(mine)} | {cell(walls)} | {ratio} | {cell([s.slowest_ready_s for s in mine])} "
            f"| {cell([s.first_test_s for s in mine])} | {cell([s.last_test_to_exit_s for s in mine])} "
            f"| {', '.join(f'{s.load_1m:.1f}' for s in mine)} "
            f"| {counts} | {', '.join(str(s.exit_code) for s in mine)} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workers", default="1,2,4", help="xdist worker counts (default 1,2,4)")
    parser.add_argument("--runs", type=int, default=3, help="runs per worker count (default 3)")
    parser.add_argument(
        "--cluster", choices=("local", "kind"), default="local", help="local (default) or kind (real pods)"
    )
    parser.add_argument(
        "--timeline", type=Path, default=None, help="write every run's timeline to this folder"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the .md and .log files")
    parser.add_argument("--timeout", type=float, default=900, help="seconds one pytest run may take")
    parser.add_argument("--max-load", type=float, default=3.0, help="wait for a load average under this")
    parser.add_argument("--settle", type=float, default=180, help="seconds to wait for it at most")
    parser.add_argument("--keep-cluster", action="store_true", help=f"leave {CLUSTER_NAME!r} running")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    if args.timeline is not None:
        args.timeline = args.timeline.resolve()
        args.timeline.mkdir(parents=True, exist_ok=True)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from testenv_harness.provision.clusters import LocalProvider
    from testenv_harness.provision.clusters.kind import KindProvider

    worker_counts = [int(w) for w in str(args.workers).split(",") if w.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    began, began_wall, load_before = time.monotonic(), datetime.datetime.now(datetime.UTC), load()
    provider = (KindProvider if args.cluster == "kind" else LocalProvider)(CLUSTER_NAME, report=log)
    samples: list[Sample] = []
    try:
        provider.up()
        for run in range(1, args.runs + 1):
            shift = (run - 1) % len(worker_counts)
            for n in worker_counts[shift:] + worker_counts[:shift]:
                sample = run_suite(n, run, args)
                samples.append(sample)
                log(
                    f"run {run}/{args.runs} -n {n}: wall {sample.wall_s:.1f}s, slowest ready "
                    f"{sample.slowest_ready_s}s, first test after {sample.first_test_s}, "
                    f"{sample.counts} (exit {sample.exit_code}, load {sample.load_1m:.2f} before)"
                )
    finally:
        if not args.keep_cluster:
            provider.down()
    header = [
        f"# An I/O-bound suite: -n N against -n 1 ({args.cluster} cluster)",
        "",
        f"- started {began_wall:%Y-%m-%dT%H:%M:%SZ}, total {(time.monotonic() - began) / 60:.1f} min; "
        f"machine: {machine()}, shared (load average at start {load_before}, at end {load()})",
        f"- `pytest -n N --testenv-cluster={args.cluster} --testenv-cluster-name={CLUSTER_NAME} "
        f"--testenv-namespace={NAMESPACE}` in bench/io_suite (60 tests of about 1 s; every worker gets "
        f"Redis, a Kafka broker and LocalStack); {args.runs} runs per N, interleaved, the cluster up first",
        "- ratio: the median wall time at -n N over the median at -n 1 (the goal: 0.35 or less at -n 4)",
    ]
    report = render(samples, header)
    print(report)
    (args.out / "io_parallel.md").write_text(report)
    log(f"wrote {args.out / 'io_parallel.md'}")
    return 1 if any(s.exit_code != 0 for s in samples) else 0


if __name__ == "__main__":
    sys.exit(main())
