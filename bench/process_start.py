"""Benchmark: the CPU each of a run's Python processes spends importing what it needs, with and
without bytecode.

A fresh run on the local cluster starts, besides pytest's controller, an operator, one xdist
worker per `-n` and a moto_server per AWS service; on 2 cores their start-up CPU is most of what
separates `-n 4` from `-n 1` (issue 23). Each case runs `python -c "import ..."` `--runs` times in
a process of its own and takes the median of the child's user + system CPU (`os.wait4`):

- *bytecode*: as installed (`make venv` compiles every module, like pip does);
- *no bytecode*: `PYTHONPYCACHEPREFIX` at an empty folder and `PYTHONDONTWRITEBYTECODE=1`, so every
  module is compiled from source in memory, each time: what a uv install without
  `--compile-bytecode` costs where that variable is set (as on our CI machines and in many images).

`--harness LABEL=PATH` (repeatable; `current` is this checkout) runs every case once per checkout,
with PATH's harness and operator first on PYTHONPATH: an A/B of two commits. Benchmarks print
numbers; they never assert on them.

Run: `.venv/bin/python bench/process_start.py --help`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import checkouts  # bench/ is on sys.path when a script runs
from hostinfo import load, machine

RESULTS = Path(__file__).resolve().parent / "results"

#: (what starts, the imports it makes before doing anything).
CASES = (
    ("operator", "import testenv_operator.__main__"),
    ("xdist worker (pytest, xdist, the plugin)", "import pytest, xdist, testenv_harness.frontends.plugin"),
    ("moto_server", "import moto.server"),
    (
        "run set-up (session, local data plane)",
        "import testenv_harness.run.session, testenv_harness.dataplane.manager",
    ),
    ("kubernetes' CoreV1Api class", "from kubernetes import client; client.CoreV1Api"),
)


def cpu_of(code: str, env: dict[str, str]) -> float:
    """User + system CPU seconds of one `python -c code`."""
    process = subprocess.Popen([sys.executable, "-c", code], env=env)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"python -c {code!r} failed ({process.returncode})")
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per case and mode (default 5)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for process_start.md")
    checkouts.add_option(parser)
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be 1 or more")
    chosen = checkouts.parse(parser, args.harness)
    empty = tempfile.mkdtemp(prefix="process-start-nopyc-")
    modes = {
        "bytecode": {},
        "no bytecode": {"PYTHONPYCACHEPREFIX": empty, "PYTHONDONTWRITEBYTECODE": "1"},
    }
    samples: dict[tuple[str, str, str], list[float]] = {}
    started_load = load()
    for run in range(args.runs):
        print(f"[process_start {time.strftime('%H:%M:%S')}] round {run + 1}/{args.runs}", file=sys.stderr)
        for label, path in chosen:
            for mode, extra in modes.items():
                env = {**checkouts.environment(os.environ, path), **extra}
                if mode == "bytecode":
                    env.pop("PYTHONPYCACHEPREFIX", None)
                for case, code in CASES:
                    samples.setdefault((label, case, mode), []).append(cpu_of(code, env))
    lines = [
        f"{machine()}, load average {started_load} at the start, {load()} at the end; "
        f"median (min) CPU seconds of {args.runs} runs",
        "",
        "| checkout | process | no bytecode | bytecode |",
        "|---|---|---:|---:|",
    ]
    for label, _ in chosen:
        for case, _ in CASES:
            cells = [samples[(label, case, mode)] for mode in modes]
            shown = [f"{statistics.median(c):.2f} ({min(c):.2f})" for c in reversed(cells)]
            lines.append(f"| {label} | {case} | {shown[0]} | {shown[1]} |")
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "process_start.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
