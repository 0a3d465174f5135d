"""Benchmark: how long a run waits before its first test and after its last, fresh vs reused.

For `-n` 1, 2 and 4 the shipped example suite (`examples/suite`: Redis, Kafka and LocalStack per
worker) runs `--runs` times in these ways, on the local cluster `testenv-bench`:

- pytest alone: the plugin off (`-p no:testenv`), so every test errors for want of its fixture:
  what pytest, xdist and collection take before a test can start (the rerun's goal is this + 0.3 s);
- fresh: no reuse, a new environment (its namespaces deleted in the background at the end);
- reuse, first run: `--testenv-reuse` with no keeper yet (it starts one);
- reuse, rerun at once: `--testenv-reuse` again right away, claiming the keeper's environment,
  whose services the keeper is still resetting (the run waits for that);
- reuse, rerun later: once more, `--pause` seconds after the last run (someone editing a test),
  when the keeper has reset the services already.

After each sample's reruns the keeper is ended (`testenv down`), so every sample of a mode starts
alike. Times come from `stamps.py`, loaded into every pytest process: *to first test* is from the
pytest process's start until the first test's body begins (any worker; its fixtures, the
services included, are ready by then; for *pytest alone*, until the first test's setup begins);
*last test to exit*
is from the last test's teardown until the process has exited. The cluster is up before the
first run (nobody pays for it). Benchmarks print numbers; they never assert on them.

With `--loop K` it measures the developer's loop instead, the rerun's goal (issue 23: at most
pytest alone + 0.3 s at -n 4): one first run starts a keeper, then K rounds of *pytest alone*
and a *rerun* `--pause` seconds apart against that keeper, and the table adds each round's
difference between the two. A round's two runs meet the same load, so the difference is steadier
than either figure. `--harness LABEL=PATH` (repeatable; `current` is this checkout) runs the loop
for each checkout in turn, `--runs` times, with PATH's harness and operator first on PYTHONPATH:
an A/B of two commits in one run.

Run: `make bench-rerun` (or `.venv/bin/python bench/rerun.py --help`).
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

import checkouts  # bench/ is on sys.path when a script runs
from hostinfo import load, machine
from stamps import read_stamps, stamped_pytest

CLUSTER_NAME = "testenv-bench"
NAMESPACE = "bench-rerun"
BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SUITE = ROOT / "examples" / "suite"
RESULTS = BENCH / "results"
ALONE, RERUN_LATER = "pytest alone", "reuse, rerun later"
MODES = (ALONE, "fresh", "reuse, first run", "reuse, rerun at once", RERUN_LATER)
#: The loop's modes (`--loop`): a first run, then rounds of pytest alone and a rerun.
FIRST, RERUN = "reuse, first run", "reuse, rerun"
LOOP_MODES = (FIRST, ALONE, RERUN)
KEEPER = re.compile(r"keeper '(reuse-[0-9a-f]+)'")
PASSED = re.compile(r"(\d+) passed")


def log(message: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class Sample:
    workers: int
    mode: str
    run: int
    exit_code: int
    wall_s: float
    to_first_test_s: float | None
    last_test_to_exit_s: float | None
    passed: int
    keeper: str = ""
    #: The harness checkout's label (`--harness`), and the loop's round.
    harness: str = "current"
    round: int = 0


def run_pytest(
    workers: int, mode: str, run: int, out: Path, harness: tuple[str, str] = ("current", "")
) -> Sample:
    stamps, env, argv = stamped_pytest(workers)
    label, path = harness
    env = checkouts.environment(env, path)
    argv += [
        *(
            ["-p", "no:testenv"]  # and so none of its options
            if mode == ALONE
            else [
                "--testenv-cluster=local",
                f"--testenv-cluster-name={CLUSTER_NAME}",
                f"--testenv-namespace={NAMESPACE}",
                *(["--testenv-reuse"] if mode.startswith("reuse") else []),
            ]
        ),
    ]
    started = time.time()
    result = subprocess.run(
        argv, cwd=SUITE, env=env, capture_output=True, text=True, check=False, timeout=1800
    )
    ended = time.time()
    output = result.stdout + result.stderr
    slug = mode.replace(", ", "-").replace(" ", "-")
    slug = slug if label == "current" else f"{label}.{slug}"
    (out / f"rerun.n{workers}.{slug}.run{run}.log").write_text(f"$ {' '.join(argv[2:])}\n{output}")
    marks = read_stamps(stamps)
    starts, ends = marks["setup" if mode == ALONE else "start"], marks["end"]
    passed = PASSED.search(output)
    keeper = KEEPER.search(output)
    return Sample(
        workers,
        mode,
        run,
        result.returncode,
        ended - started,
        min(starts) - started if starts else None,
        ended - max(ends) if ends else None,
        int(passed.group(1)) if passed else 0,
        keeper.group(1) if keeper else "",
        label,
    )


def end_keeper(name: str, harness: tuple[str, str] = ("current", "")) -> None:
    if name:
        path = harness[1]
        env = checkouts.environment(os.environ, path) if path else None
        subprocess.run(
            [sys.executable, "-m", "testenv_harness", "down", "--run", name],
            capture_output=True,
            check=False,
            timeout=600,
            env=env,
        )


def loop(
    workers: int, rounds: int, pause: float, run: int, out: Path, harness: tuple[str, str]
) -> list[Sample]:
    """A first run (it starts the keeper), then `rounds` of pytest alone and a rerun, `pause` s apart."""
    samples = [run_pytest(workers, FIRST, run, out, harness)]
    log(f"[{harness[0]}] -n {workers} first run: first test after {samples[0].to_first_test_s}")
    for number in range(1, rounds + 1):
        for mode in (ALONE, RERUN):
            time.sleep(pause)
            sample = dataclasses.replace(
                run_pytest(workers, mode, run * 100 + number, out, harness), round=number
            )
            samples.append(sample)
            took = sample.to_first_test_s
            log(f"[{harness[0]}] -n {workers} round {number} {mode}: first test after {took}")
    end_keeper(samples[0].keeper, harness)
    return samples


def head(header: Sequence[str], columns: Sequence[str], align: Sequence[str]) -> list[str]:
    """The report's header lines, then a markdown table's first two rows."""
    return [*header, "", f"| {' | '.join(columns)} |", f"|{'|'.join(align)}|"]


def render_loop(samples: Sequence[Sample], header: Sequence[str]) -> str:
    columns = ["-n", "harness", "mode", "runs", "to first test median (min) s"]
    columns += ["rerun - pytest alone, same round: median (min, max) s", "passed (all runs)", "exit codes"]
    lines = head(header, columns, ("---:", "---", "---", "---:", "---:", "---:", "---:", "---"))
    for n in sorted({s.workers for s in samples}):
        for label in dict.fromkeys(s.harness for s in samples):
            mine = [s for s in samples if s.workers == n and s.harness == label]
            alone = {(s.run, s.round): s.to_first_test_s for s in mine if s.mode == ALONE}
            gaps = []
            for s in mine:
                before = alone.get((s.run, s.round))
                if s.mode == RERUN and s.to_first_test_s is not None and before is not None:
                    gaps.append(s.to_first_test_s - before)
            for mode in LOOP_MODES:
                these = [s for s in mine if s.mode == mode]
                gap = (
                    f"{statistics.median(gaps):+.2f} ({min(gaps):+.2f}, {max(gaps):+.2f}; {len(gaps)} rounds)"
                    if mode == RERUN and gaps
                    else ""
                )
                first = cell([s.to_first_test_s for s in these])
                lines.append(
                    f"| {n} | {label} | {mode} | {len(these)} | {first} | {gap} "
                    f"| {sum(s.passed for s in these)} | {', '.join(str(s.exit_code) for s in these)} |"
                )
    return "\n".join(lines) + "\n"


def cell(values: Sequence[float | None]) -> str:
    done = [v for v in values if v is not None]
    if not done:
        return "n/a"
    return f"{statistics.median(done):.2f} ({min(done):.2f})"


def render(samples: Sequence[Sample], header: Sequence[str]) -> str:
    columns = ["-n", "mode", "runs", "to first test median (min) s", "last test to exit median (min) s"]
    columns += ["wall median (min) s", "passed (all runs)", "exit codes"]
    lines = head(header, columns, ("---:", "---", "---:", "---:", "---:", "---:", "---:", "---"))
    for n in sorted({s.workers for s in samples}):
        for mode in MODES:
            mine = [s for s in samples if s.workers == n and s.mode == mode]
            if mine:
                lines.append(
                    f"| {n} | {mode} | {len(mine)} | {cell([s.to_first_test_s for s in mine])} "
                    f"| {cell([s.last_test_to_exit_s for s in mine])} | {cell([s.wall_s for s in mine])} "
                    f"| {sum(s.passed for s in mine)} | {', '.join(str(s.exit_code) for s in mine)} |"
                )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workers", default="1,2,4", help="xdist worker counts (default 1,2,4)")
    parser.add_argument("--runs", type=int, default=3, help="samples of every mode (default 3)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the .md and .log files")
    parser.add_argument("--keep-cluster", action="store_true", help=f"leave {CLUSTER_NAME!r} running")
    parser.add_argument(
        "--pause", type=float, default=5.0, help="seconds before the later rerun (default %(default)s)"
    )
    parser.add_argument(
        "--loop",
        type=int,
        default=0,
        metavar="K",
        help="measure the developer loop instead: a first run, then K rounds of pytest alone and a rerun",
    )
    checkouts.add_option(parser, when="with --loop: ")
    args = parser.parse_args(argv)
    harnesses = checkouts.parse(parser, args.harness)
    if args.harness and not args.loop:
        parser.error("--harness needs --loop K")
    from testenv_harness.provision.clusters import LocalProvider

    args.out.mkdir(parents=True, exist_ok=True)
    began, began_wall, load_before = (
        time.monotonic(),
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%dT%H:%M:%SZ}",
        load(),
    )
    provider = LocalProvider(CLUSTER_NAME, report=log)
    samples: list[Sample] = []
    try:
        provider.up()
        for n in (int(w) for w in str(args.workers).split(",") if w.strip()):
            if args.loop:
                for run in range(1, args.runs + 1):
                    for harness in harnesses:
                        samples += loop(n, args.loop, args.pause, run, args.out, harness)
                continue
            for run in range(1, args.runs + 1):
                keeper = ""
                for mode in MODES:
                    if mode == RERUN_LATER:
                        time.sleep(args.pause)
                    sample = run_pytest(n, mode, run, args.out)
                    keeper = sample.keeper or keeper
                    samples.append(sample)
                    log(
                        f"-n {n} {mode} run {run}: first test after {sample.to_first_test_s}, "
                        f"exit {sample.last_test_to_exit_s} after the last, {sample.passed} passed "
                        f"(exit {sample.exit_code})"
                    )
                end_keeper(keeper)
    finally:
        if not args.keep_cluster:
            provider.down()
    header = [
        "# First test and exit: a fresh run vs a reused environment",
        "",
        f"- started {began_wall}, total {(time.monotonic() - began) / 60:.1f} min; machine: {machine()} "
        f"(load average at start {load_before}, at end {load()})",
        f"- `pytest -n N --testenv-cluster=local --testenv-cluster-name={CLUSTER_NAME} "
        f"--testenv-namespace={NAMESPACE} [--testenv-reuse]` in examples/suite (11 tests; every worker "
        "gets Redis, a Kafka broker and LocalStack, served by host processes); the cluster is up first",
    ]
    if args.loop:
        compared = ", ".join(f"{label} {path or ROOT}" for label, path in harnesses)
        header[-1] += (
            f"; the loop: a first run, then {args.loop} rounds of pytest alone and a rerun, "
            f"{args.pause:.0f} s apart, {args.runs} time(s) per harness ({compared})"
        )
    report = render_loop(samples, header) if args.loop else render(samples, header)
    name = "rerun_loop.md" if args.loop else "rerun.md"
    print(report)
    (args.out / name).write_text(report)
    log(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
