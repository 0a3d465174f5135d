"""Benchmark: a Kafka broker's cold start, from spawn to its first answer, alone and 4 at once.

A start is timed from the moment the harness would begin preparing the broker (writing its
config, formatting its storage) to the first ApiVersions answer on its client port (the
harness's own protocol ping, catalog.ping), asked every 20 ms. An open port is not enough: KRaft binds the
listeners long before it serves them, and a Docker port mapping accepts before anything listens.

Host variants (the local data plane's broker, configured from the catalog's Kafka environment):

- before: what runners.py did before issue 12: the StorageTool in a JVM of its own, then the
  broker, both with the old flags and no class-data archive;
- archive: as before, but the broker maps the class-data archive (kafka_cds);
- template: as before, but storage is a copy of a template formatted once (no formatter JVM);
- after: exactly what runners.py launches now (`launch_for`: template and archive);
- after+flags: `after` with `--extra-flags` added, to try a JVM flag.

Images (`--image LABEL=REF`, repeatable): `docker run` of a Kafka image with the catalog's
environment and the pod's limits (1 CPU, 1 GiB), timed from `docker run` to the first answer
through the published port.

Every case starts N brokers at the same moment (`--brokers`, default 1 and 4) and records when
each answered; "ready" is the last of them. CPU is the brokers' own (and the formatter JVMs')
CPU time until then, per broker: it varies less than wall time on a shared machine. The order
of the variants rotates between runs; one unrecorded warm-up start per variant comes first (it
also makes the archive and the template if they are missing).

Run: `make bench-kafka` (or `.venv/bin/python bench/kafka_start.py --help`).
Benchmarks print numbers; they never assert on them.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hostinfo import load, machine  # bench/ is on sys.path when a script runs
from testenv_api import KAFKA_EXTERNAL_PORT, KAFKA_INTERNAL_PORT
from testenv_harness.dataplane.runners import PodSpec, launch_for
from testenv_harness.ground import children
from testenv_harness.ground.localports import free_port
from testenv_harness.provision import imagebuild
from testenv_harness.services import catalog
from testenv_harness.services.kafka import cds as kafka_cds
from testenv_harness.services.kafka import runtime as kafka_runtime
from testenv_operator.catalog import kafka_environment

RESULTS = Path(__file__).resolve().parent / "results"
#: runners.py's broker flags before issue 12 (the `before` variant).
OLD_JVM = ("-Xms128m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true")
#: The limits the catalog gives a Kafka pod (catalog._kafka).
POD_LIMITS = ("--cpus", "1", "--memory", "1g")
POLL = 0.02
CONTAINER_PREFIX = "kafka-start-bench-"
HOST_VARIANTS = ("before", "archive", "template", "after")


def log(message: str) -> None:
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class Start:
    """One broker's start: seconds from the case's start, and its CPU seconds until it answered."""

    prepared_s: float = 0.0
    ready_s: float = 0.0
    cpu_s: float = 0.0


@dataclasses.dataclass
class Running:
    """A broker being started: how to tell its CPU time, and how to stop it."""

    port: int
    cpu: Callable[[], float]
    stop: Callable[[], None]
    #: None while it runs; else what ended it (a start that died fails its case at once)
    ended: Callable[[], str | None]


#: A way to start one broker: given a work directory and a port for its client listener, it
#: prepares (untimed by itself: the caller times it) and spawns the broker.
Starter = Callable[[Path, int], Running]


# -- host brokers ------------------------------------------------------------------------------


def _pod(port: int) -> PodSpec:
    env = kafka_environment("bench", "kafka", port)
    ports = {KAFKA_EXTERNAL_PORT: port, KAFKA_INTERNAL_PORT: free_port()}
    return PodSpec("bench", "kafka", "kafka", env, (), ports)


def _proc_cpu(pid: int) -> float:
    """utime + stime of a live process, in seconds (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _spawn(argv: list[str], workdir: Path, port: int) -> Running:
    with (workdir / "process.log").open("wb") as out:
        broker = subprocess.Popen(
            argv,
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=children.dies_with_parent(),
        )

    def ended() -> str | None:
        if broker.poll() is None:
            return None
        output = (workdir / "process.log").read_text(errors="replace")[-1500:]
        return f"the broker exited ({broker.returncode}): {output}"

    return Running(port, lambda: _proc_cpu(broker.pid), lambda: children.stop(broker, grace=30), ended)


def _host_starter(prepare_argv: Callable[[PodSpec, Path], tuple[Callable[[], None], list[str]]]) -> Starter:
    def start(workdir: Path, port: int) -> Running:
        prepare, argv = prepare_argv(_pod(port), workdir)
        prepare()
        return _spawn(argv, workdir, port)

    return start


def _by_hand(java: str, *, template: bool, archive: Path | None) -> Starter:
    """A broker prepared and launched from the building blocks, with the old flags."""

    def prepare_argv(pod: PodSpec, workdir: Path) -> tuple[Callable[[], None], list[str]]:
        properties = kafka_runtime.server_properties(pod.env, pod.ports, workdir / "data")
        conf = kafka_runtime.write_properties(properties, workdir / "server.properties")
        log4j = kafka_runtime.log4j_config(workdir)

        def prepare() -> None:
            if template:
                kafka_runtime.prepare_storage(java, properties, conf, log4j)
            else:
                kafka_runtime.format_storage(java, conf, properties["cluster.id"], log4j, OLD_JVM)

        jvm = [*OLD_JVM, *(kafka_cds.use_flags(archive) if archive else [])]
        return prepare, kafka_runtime.broker_argv(java, conf, log4j, jvm)

    return _host_starter(prepare_argv)


def _launched(extra_flags: Sequence[str] = ()) -> Starter:
    """Exactly what the local data plane starts (runners.launch_for), plus `extra_flags`."""

    def prepare_argv(pod: PodSpec, workdir: Path) -> tuple[Callable[[], None], list[str]]:
        launch = launch_for(pod, workdir)
        argv = [launch.argv[0], *extra_flags, *launch.argv[1:]]
        return launch.prepare or (lambda: None), argv

    return _host_starter(prepare_argv)


def host_variants(names: Sequence[str], extra_flags: Sequence[str]) -> dict[str, Starter]:
    java = shutil.which("java")
    if java is None:
        raise SystemExit("no `java`: apt-get install openjdk-17-jre-headless")
    kafka_runtime.fetch(report=log)
    archive = kafka_cds.ensure(java, report=log)
    starters = {
        "before": _by_hand(java, template=False, archive=None),
        "archive": _by_hand(java, template=False, archive=archive),
        "template": _by_hand(java, template=True, archive=None),
        "after": _launched(),
    }
    chosen = {name: starters[name] for name in names}
    if extra_flags:
        chosen[f"after+{' '.join(extra_flags)}"] = _launched(extra_flags)
    return chosen


# -- image brokers -----------------------------------------------------------------------------


def _container_cpu(container_id: str) -> Callable[[], float]:
    """The container's CPU seconds so far, from its cgroup (v1 cpuacct or v2 cpu.stat)."""
    v1 = [Path(f"/sys/fs/cgroup/{c}/docker/{container_id}/cpuacct.usage") for c in ("cpuacct", "cpu,cpuacct")]
    v2 = Path(f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/cpu.stat")

    def cpu() -> float:
        for path in v1:
            if path.is_file():
                return int(path.read_text()) / 1e9
        if v2.is_file():
            usage = dict(line.split() for line in v2.read_text().splitlines())
            return int(usage["usage_usec"]) / 1e6
        return float("nan")

    return cpu


def image_starter(ref: str, extra_env: dict[str, str]) -> Starter:
    def start(workdir: Path, port: int) -> Running:
        name = CONTAINER_PREFIX + uuid.uuid4().hex[:8]
        variables = kafka_environment("bench", "kafka", port) | extra_env
        env = [f"--env={k}={v}" for k, v in variables.items()]
        published = f"--publish=127.0.0.1:{port}:{KAFKA_EXTERNAL_PORT}"
        container_id = imagebuild.docker(
            "run", "--detach", f"--name={name}", *POD_LIMITS, published, *env, ref, timeout=120
        ).strip()

        def stop() -> None:
            (workdir / "container.log").write_text(
                subprocess.run(["docker", "logs", name], capture_output=True, text=True).stdout
            )
            subprocess.run(["docker", "rm", "--force", name], capture_output=True, check=False)

        def ended() -> str | None:
            state = imagebuild.docker("inspect", "--format={{.State.Status}}", name).strip()
            if state == "running":
                return None
            return f"container {name} is {state}: " + imagebuild.docker("logs", "--tail=20", name)

        return Running(port, _container_cpu(container_id), stop, ended)

    return start


# -- measuring ---------------------------------------------------------------------------------


def _await_answer(running: Running, began: float, timeout: float) -> tuple[float, float]:
    deadline = time.monotonic() + timeout
    checked = time.monotonic()
    while not catalog.ping("kafka", running.port, timeout=1.0):
        now = time.monotonic()
        if now > deadline:
            raise TimeoutError(f"no answer on port {running.port} within {timeout:.0f}s")
        if now - checked > 1.0:  # about once a second: `docker inspect` costs CPU the brokers want
            checked = now
            reason = running.ended()
            if reason:
                raise RuntimeError(reason)
        time.sleep(POLL)
    return time.monotonic() - began, running.cpu()


def measure(starter: Starter, brokers: int, timeout: float, *, formatters: bool = True) -> list[Start]:
    """Start `brokers` at the same moment; each one's times. Every broker is stopped after.

    `formatters`: add the CPU time of the children that ended meanwhile (formatter JVMs of host
    brokers; for images those are `docker run` clients, and the container's cgroup counts all).
    """
    root = Path(tempfile.mkdtemp(prefix="kafka-start-bench-"))
    barrier = threading.Barrier(brokers)
    started: list[Running] = []
    lock = threading.Lock()
    formatter_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)

    def one(index: int) -> Start:
        workdir = root / f"b{index}"
        workdir.mkdir()
        barrier.wait()
        began = time.monotonic()
        running = starter(workdir, free_port())
        prepared = time.monotonic() - began
        with lock:
            started.append(running)
        ready, cpu = _await_answer(running, began, timeout)
        return Start(prepared, ready, cpu)

    # The brokers are stopped by the threads that started them: a broker dies with the thread
    # that forked it (PR_SET_PDEATHSIG), so those threads must outlive it.
    with ThreadPoolExecutor(max_workers=brokers) as pool:
        try:
            starts = list(pool.map(one, range(brokers)))
            # Formatter JVMs ran to their end within the case: their CPU is what the kernel
            # reported for the children reaped meanwhile (brokers are still running).
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            spent = (after.ru_utime + after.ru_stime) - (formatter_cpu.ru_utime + formatter_cpu.ru_stime)
            for start in starts:
                start.cpu_s += spent / brokers if formatters else 0.0
            return starts
        finally:
            list(pool.map(lambda running: running.stop(), started))
            shutil.rmtree(root, ignore_errors=True)


@dataclasses.dataclass
class Row:
    kind: str
    variant: str
    brokers: int
    run: int
    starts: list[Start]

    @property
    def ready(self) -> float:
        return max(s.ready_s for s in self.starts)

    @property
    def prepared(self) -> float:
        return max(s.prepared_s for s in self.starts)

    @property
    def cpu(self) -> float:
        return statistics.fmean(s.cpu_s for s in self.starts)


def run_all(variants: dict[str, tuple[str, Starter]], args: argparse.Namespace) -> list[Row]:
    names = list(variants)
    for name in names:
        for _ in range(args.warmup):
            log(f"warm-up: {name}")
            measure(variants[name][1], 1, args.timeout, formatters=variants[name][0] == "host")
    rows = []
    for run in range(args.runs):
        order = names[run % len(names) :] + names[: run % len(names)]
        for brokers in args.brokers:
            for name in order:
                kind, starter = variants[name]
                starts = measure(starter, brokers, args.timeout, formatters=kind == "host")
                row = Row(kind, name, brokers, run + 1, starts)
                log(f"run {run + 1}, {brokers} x {name}: ready {row.ready:.2f} s, CPU {row.cpu:.2f} s/broker")
                rows.append(row)
    return rows


# -- reporting ---------------------------------------------------------------------------------


def table(rows: list[Row], names: list[str]) -> list[str]:
    lines = [
        "| brokers | kind | variant | runs | ready median (s) | ready min (s) | vs first | "
        "prepare median (s) | CPU median (s/broker) |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for brokers in sorted({r.brokers for r in rows}):
        baseline: dict[str, float] = {}
        for name in names:
            mine = [r for r in rows if r.brokers == brokers and r.variant == name]
            if not mine:
                continue
            ready = statistics.median(r.ready for r in mine)
            base = baseline.setdefault(mine[0].kind, ready)
            lines.append(
                f"| {brokers} | {mine[0].kind} | {name} | {len(mine)} | {ready:.2f} | "
                f"{min(r.ready for r in mine):.2f} | {ready / base:.2f} | "
                f"{statistics.median(r.prepared for r in mine):.2f} | "
                f"{statistics.median(r.cpu for r in mine):.2f} |"
            )
    return lines


def write_csv(rows: list[Row], path: Path) -> None:
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["kind", "variant", "brokers", "run", "broker", "prepared_s", "ready_s", "cpu_s"])
        for row in rows:
            for index, start in enumerate(row.starts):
                times = (start.prepared_s, start.ready_s, start.cpu_s)
                writer.writerow(
                    [row.kind, row.variant, row.brokers, row.run, index, *(f"{t:.3f}" for t in times)]
                )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="measurements per variant and size (default 3)")
    parser.add_argument(
        "--brokers", type=lambda s: [int(n) for n in s.split(",")], default=[1, 4], help="sizes (default 1,4)"
    )
    parser.add_argument(
        "--host",
        type=lambda s: [n for n in s.split(",") if n],
        default=list(HOST_VARIANTS),
        help=f"host variants, comma-separated, '' for none (default {','.join(HOST_VARIANTS)})",
    )
    parser.add_argument("--extra-flags", default="", help="JVM flags for an extra `after+FLAGS` variant")
    parser.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="LABEL=REF",
        help="a Kafka image to measure with docker run (repeatable); REF 'current' is this checkout's",
    )
    parser.add_argument(
        "--image-env",
        action="append",
        default=[],
        metavar="LABEL:VAR=VALUE",
        help="an environment variable for the image labelled LABEL (repeatable), e.g. to try JVM options",
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="unrecorded starts per variant first (default 1)"
    )
    parser.add_argument("--timeout", type=float, default=180, help="seconds for one start (default 180)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default bench/results)")
    args = parser.parse_args(argv)
    unknown = set(args.host) - set(HOST_VARIANTS)
    if unknown:
        parser.error(f"unknown host variants {sorted(unknown)}; known: {', '.join(HOST_VARIANTS)}")
    return args


def _images(specs: list[str], env_specs: list[str]) -> dict[str, tuple[str, Starter]]:
    env: dict[str, dict[str, str]] = {}
    for spec in env_specs:
        label, _, assignment = spec.partition(":")
        variable, _, value = assignment.partition("=")
        env.setdefault(label, {})[variable] = value
    images = {}
    for spec in specs:
        label, _, ref = spec.partition("=")
        ref = imagebuild.reference("kafka") if ref == "current" else ref
        if not imagebuild.present(ref):
            raise SystemExit(
                f"image {ref} is not in the local engine (make kind-images builds the current one)"
            )
        images[f"image {label}"] = ("image", image_starter(ref, env.get(label, {})))
        log(f"image {label}: {ref} {env.get(label, '')}")
    return images


def _remove_containers() -> None:
    """Containers of this benchmark an interrupted case left behind."""
    listing = ["docker", "ps", "--all", "--quiet", f"--filter=name={CONTAINER_PREFIX}"]
    leftovers = subprocess.run(listing, capture_output=True, text=True, check=False).stdout.split()
    if leftovers:
        subprocess.run(["docker", "rm", "--force", *leftovers], capture_output=True, check=False)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    load_before, began = load(), time.monotonic()
    variants = {name: ("host", s) for name, s in host_variants(args.host, args.extra_flags.split()).items()}
    variants |= _images(args.image, args.image_env)
    # SIGTERM unwinds like ^C, through the `finally`s that stop every broker and container.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        rows = run_all(variants, args)
    finally:
        if args.image:
            _remove_containers()
    report = [
        "# Kafka broker cold start: spawn to first ApiVersions answer",
        "",
        f"- machine: {machine()}, load average at start {load_before}, at end {load()}; "
        f"total run time {(time.monotonic() - began) / 60:.1f} min",
        f"- {args.runs} runs per variant and size after {args.warmup} warm-up start(s); brokers started "
        f"at the same moment; ready = the last broker's first answer; polled every {POLL * 1000:.0f} ms",
        f"- Java: {_java_version()}; Kafka {kafka_runtime.KAFKA_VERSION}",
        "",
        *table(rows, list(variants)),
        "",
    ]
    text = "\n".join(report)
    print(text)
    (args.out / "kafka_start.md").write_text(text)
    write_csv(rows, args.out / "kafka_start.csv")
    log(f"wrote {args.out / 'kafka_start.md'} and kafka_start.csv")
    return 0


def _java_version() -> str:
    result = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False)
    lines = result.stderr.splitlines()
    return lines[0] if lines else "?"


if __name__ == "__main__":
    sys.exit(main())
