"""A class-data-sharing archive of the broker's classes, made once per JDK build and jar set.

About 40% of a broker's CPU time until it first answers goes to reading, parsing, verifying
and linking some 7,000 classes from the Kafka jars (bench/kafka_start.py). Java 17 can write the
classes a run loaded into an archive when that run exits (`-XX:ArchiveClassesAtExit`, a dynamic
archive on top of the JDK's own), and a later JVM given the archive (`-XX:SharedArchiveFile`)
maps them instead. One training broker is started, asked for a topic and stopped; its archive
then serves every broker, and the storage formatter too.

The JVM checks an archive against its own build and against the class path it was made from
(the jars' paths, sizes and modification times), runs without it if either differs, and says so
in a warning. The archive's name is a key over those same inputs, so a new JDK or jar set gets an
archive of its own instead of one the JVM refuses. A truncated archive is worse: it crashes the
JVM (SIGBUS) rather than being refused. So an archive is published only whole, by a rename, and
only after a JVM has started with it under `-Xshare:on`, which fails instead of falling back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from testenv_api import KAFKA_EXTERNAL_PORT, KAFKA_INTERNAL_PORT, kafka_environment
from testenv_harness.ground import children
from testenv_harness.ground.errors import ToolchainError
from testenv_harness.ground.files import locked
from testenv_harness.ground.localports import free_port
from testenv_harness.ground.waiting import WaitTimeoutError, wait_for
from testenv_harness.services import probes
from testenv_harness.services.kafka import runtime as kafka_runtime
from testenv_harness.services.kafka import wire as kafka_wire

log = logging.getLogger(__name__)

#: The training broker answers in seconds; this much is for a machine busy with other runs.
TRAINING_TIMEOUT = 180.0
TRAINING_TOPIC = "kube-testenv-training"


def jvm_identity(java: str) -> str:
    """The JDK build `java` belongs to: its release file, and libjvm's size and modification time
    (a package update of the same version still replaces libjvm, and the JVM checks its build)."""
    home = Path(java).resolve().parent.parent
    release = home / "release"
    parts = [str(home), release.read_text() if release.is_file() else ""]
    for libjvm in sorted(home.glob("lib/*/libjvm.so")):
        stat = libjvm.stat()
        parts.append(f"{libjvm.relative_to(home)} {stat.st_size} {stat.st_mtime_ns}")
    return "\n".join(parts)


def jar_stats(libs: Path) -> list[tuple[str, int, int]]:
    """What the JVM checks of each class path entry: path, size and modification time."""
    return [(str(jar), jar.stat().st_size, jar.stat().st_mtime_ns) for jar in sorted(libs.glob("*.jar"))]


def archive_key(jvm: str, jars: Sequence[tuple[str, int, int]], flags: Sequence[str]) -> str:
    """A name for the archive these inputs make (flags too: the archive is made with them)."""
    inputs = json.dumps([jvm, [list(jar) for jar in jars], list(flags)])
    return hashlib.sha256(inputs.encode()).hexdigest()[:16]


def archive_path(java: str) -> Path:
    libs = kafka_runtime.libs_dir()
    key = archive_key(jvm_identity(java), jar_stats(libs), kafka_runtime.BROKER_JVM)
    return libs.parent / "cds" / f"broker-{key}.jsa"


def use_flags(archive: Path) -> list[str]:
    """JVM flags that map `archive` when it is there and usable, and otherwise change nothing.

    With -Xshare:auto (the default, spelled out) a JVM runs without an archive it cannot use; a
    missing file passes silently, a refused one prints a warning at every start, which
    -Xlog:cds*=off keeps out of the broker's output.
    """
    return [f"-XX:SharedArchiveFile={archive}", "-Xshare:auto", "-Xlog:cds*=off"]


def ensure(java: str, report: Callable[[str], None] = log.info, *, retry_failed: bool = False) -> Path | None:
    """The archive for `java` and the fetched jars, made now if missing; None if it cannot be.

    A failed training leaves a `.failed` note beside the archive, so brokers do not pay for a
    new attempt at every start; `retry_failed` (what `testenv tools` passes) tries again.
    """
    archive = archive_path(java)
    failed = archive.with_suffix(".failed")
    if archive.is_file():
        return archive
    if failed.is_file() and not retry_failed:
        return None
    archive.parent.mkdir(parents=True, exist_ok=True)
    with locked(kafka_runtime.libs_dir().parent / ".fetch.lock"):
        if archive.is_file():  # another process made it while we waited
            return archive
        if failed.is_file() and not retry_failed:  # or failed to
            return None
        report("making the Kafka broker's class-data archive (once per JDK and jar set)")
        started = time.monotonic()
        try:
            _make(java, archive)
        except ToolchainError as exc:
            failed.write_text(f"{exc}\n")
            report(f"Kafka brokers start without a class-data archive: {exc}")
            return None
    failed.unlink(missing_ok=True)
    size = archive.stat().st_size / 2**20
    report(f"made the class-data archive in {time.monotonic() - started:.0f}s ({size:.0f} MiB): {archive}")
    return archive


def _make(java: str, archive: Path) -> None:
    with tempfile.TemporaryDirectory(prefix=".training-", dir=archive.parent) as tmp:
        work = Path(tmp)
        dump = work / "broker.jsa"
        _train(java, work, dump)
        _check(java, dump)
        dump.rename(archive)


def _train(java: str, work: Path, dump: Path) -> None:
    """Run a broker of the catalog's configuration to its first topic, then stop it cleanly.

    The archive holds what this run loaded: start-up, and also what a test's first request
    needs (topic auto-creation, the log layer), so tests gain as well as start-up.
    """
    port = free_port()
    ports = {KAFKA_EXTERNAL_PORT: port, KAFKA_INTERNAL_PORT: free_port()}
    properties = kafka_runtime.server_properties(
        kafka_environment("kube-testenv", "kafka", port), ports, work / "data"
    )
    conf = kafka_runtime.write_properties(properties, work / "server.properties")
    log4j = kafka_runtime.log4j_config(work)
    kafka_runtime.prepare_storage(java, properties, conf, log4j)
    jvm = [*kafka_runtime.BROKER_JVM, f"-XX:ArchiveClassesAtExit={dump}"]
    with (work / "process.log").open("wb") as out:
        broker = subprocess.Popen(
            kafka_runtime.broker_argv(java, conf, log4j, jvm),
            cwd=work,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=children.dies_with_parent(),
        )
    try:
        _await(broker, lambda: probes.answers(kafka_wire.PING, port), "the training broker to answer", work)
        _await(broker, lambda: kafka_wire.topic_ready(port, TRAINING_TOPIC), "its first topic", work)
    finally:
        children.stop(broker, grace=60)  # SIGTERM: a clean exit, which is when the JVM dumps
    if not dump.is_file():
        exit_code = broker.returncode
        raise ToolchainError(f"the training broker wrote no archive (exit {exit_code}):\n{_tail(work)}")


def _await(broker: subprocess.Popen[bytes], check: Callable[[], bool], what: str, work: Path) -> None:
    try:
        wait_for(lambda: broker.poll() is not None or check(), timeout=TRAINING_TIMEOUT, what=what)
    except WaitTimeoutError as exc:
        raise ToolchainError(f"{exc}:\n{_tail(work)}") from exc
    if broker.poll() is not None:
        raise ToolchainError(f"the training broker exited ({broker.returncode}):\n{_tail(work)}")


def _check(java: str, dump: Path) -> None:
    """Start a JVM that must map the archive (-Xshare:on fails rather than run without it)."""
    jvm = [*kafka_runtime.BROKER_JVM, f"-XX:SharedArchiveFile={dump}", "-Xshare:on"]
    result = subprocess.run(
        [java, *jvm, "-cp", kafka_runtime.classpath(), "kafka.Kafka", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ToolchainError(f"the new archive does not map: {(result.stdout + result.stderr)[-1000:]}")


def _tail(work: Path, lines: int = 15) -> str:
    """The ends of the training broker's log and of its output (the JVM's own messages)."""
    texts = []
    for name in ("kafka.log", "process.log"):
        path = work / name
        if path.is_file():
            texts += [f"{name}:", *path.read_text(errors="replace").splitlines()[-lines:]]
    return "\n".join(texts)
