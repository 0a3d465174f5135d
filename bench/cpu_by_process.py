"""Where a long job's CPU goes, by kind of process: run it beside the job, stop it with SIGTERM
(or Ctrl-C), read the table.

Once a second it reads every process's user + system CPU from /proc/PID/stat and keeps the last
value seen per process (pid and start time), naming each by its command line (`KINDS`: an
operator, a Kafka broker, kube-apiserver, an xdist worker, ...). At the end it writes one line
per kind: CPU seconds, processes seen, and the share of the total. A process that lives less than
a second may be missed, and up to a second of each process's last CPU is: the figures are a
floor, good for ranking where a cut pays, not for exact sums.

    .venv/bin/python bench/cpu_by_process.py --out /tmp/ci-cpu.md &  CI=true bash .ci/run;  kill %1
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

#: (a piece of the command line, the kind it names); the first match wins.
KINDS = (
    ("kafka.Kafka", "Kafka broker"),
    ("StorageTool", "Kafka storage format"),
    ("kube-apiserver", "kube-apiserver"),
    ("etcd", "etcd"),
    ("kube-controller-manager", "kube-controller-manager"),
    ("kube-scheduler", "kube-scheduler"),
    ("kwok", "kwok"),
    ("testenv_operator", "operator"),
    ("moto.server", "moto_server"),
    ("redis-server", "redis-server"),
    ("localstack", "LocalStack (kind)"),
    ("rabbitmq", "RabbitMQ"),
    ("beam", "RabbitMQ"),
    ("postgres", "PostgreSQL"),
    ("containerd", "containerd, kubelet (kind)"),
    ("kubelet", "containerd, kubelet (kind)"),
    ("runc", "runc"),
    ("dockerd", "dockerd"),
    ("ginkgo", "Ginkgo"),
    ("exec(eval(sys.stdin.readline()))", "xdist worker"),
    ("-m testenv_harness", "testenv command"),
    ("bin/testenv ", "testenv command"),
    ("pytest", "pytest (controller)"),
    ("pip", "pip"),
    ("java", "java, other"),
    ("python", "python, other"),
)
TICKS = os.sysconf("SC_CLK_TCK")


def kind_of(command: str, name: str) -> str:
    return next((kind for piece, kind in KINDS if piece in command), f"other: {name}")


class Sampler:
    """Processes already running at the first sample count only the CPU they use after it."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], tuple[str, float, float]] = {}  # (pid, start): kind, first, last
        self.first = True

    def sample(self) -> None:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                close = stat.rindex(")")
                name, fields = stat[stat.index("(") + 1 : close], stat[close + 2 :].split()
                cpu = (int(fields[11]) + int(fields[12])) / TICKS
                key = (pid, fields[19])
                if key in self.seen:
                    kind, first, _ = self.seen[key]
                else:
                    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
                    kind = kind_of(raw.replace(b"\0", b" ").decode(errors="replace"), name)
                    first = cpu if self.first else 0.0
                self.seen[key] = (kind, first, cpu)
            except (OSError, ValueError, IndexError):  # ended meanwhile
                continue
        self.first = False

    def table(self) -> str:
        cpu: dict[str, float] = collections.defaultdict(float)
        count: collections.Counter[str] = collections.Counter()
        for kind, first, last in self.seen.values():
            if last > first:
                cpu[kind] += last - first
                count[kind] += 1
        total = sum(cpu.values()) or 1.0
        lines = ["| kind | CPU s | processes | share |", "|---|---:|---:|---:|"]
        lines += [
            f"| {k} | {s:.0f} | {count[k]} | {100 * s / total:.0f}% |"
            for k, s in sorted(cpu.items(), key=lambda kv: -kv[1])
            if s >= 1
        ]
        return "\n".join([*lines, f"| all | {total:.0f} | {sum(count.values())} | |"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the Markdown table to write at the end")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples (default 1)")
    args = parser.parse_args()
    sampler = Sampler()
    started = time.monotonic()

    def finish(signum: int, frame: FrameType | None) -> None:
        table = sampler.table()
        args.out.write_text(f"{time.monotonic() - started:.0f} s sampled\n\n{table}\n")
        print(table)
        sys.exit(0)

    signal.signal(signal.SIGTERM, finish)
    signal.signal(signal.SIGINT, finish)
    while True:
        sampler.sample()
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
