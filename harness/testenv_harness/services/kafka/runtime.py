"""A real Kafka broker without a container: jars from Maven Central, config from the pod's env.

The pod's KAFKA_* variables are the same ones the apache/kafka image reads; they are turned into
server.properties with every listener moved to a free host port. The EXTERNAL listener keeps
advertising `localhost:<planned port>`, so a client that dials the harness's forward gets
metadata pointing back at that same forward.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from testenv_api import KAFKA_CLUSTER_ID
from testenv_harness.ground.errors import BUILD_HINT, ToolchainError
from testenv_harness.ground.files import cache_root, locked
from testenv_harness.ground.localports import free_port

KAFKA_VERSION = "4.1.1"
STORAGE_TOOL = "kafka.tools.StorageTool"
_POM = Path(__file__).parent / "pom.xml"
#: The JVM a test broker runs in. It lives for minutes and serves little, so start-up is what
#: counts: C1 alone, and the serial collector. Other flags measured no better (bench/README.md,
#: kafka_start.py). The class-data archive (kafka_cds) is made with, and keyed by, these flags.
BROKER_JVM = (
    "-Xms128m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Djava.awt.headless=true",
)


def libs_dir() -> Path:
    digest = hashlib.sha256(_POM.read_bytes()).hexdigest()[:12]
    return cache_root() / "kafka" / f"{KAFKA_VERSION}-{digest}" / "libs"


def classpath() -> str:
    libs = libs_dir()
    if not libs.is_dir():
        raise ToolchainError(f"Kafka {KAFKA_VERSION} jars are not fetched ({libs} is missing): {BUILD_HINT}")
    return f"{libs}/*"


def fetch(report: Callable[[str], None] = print) -> float:
    """Resolve the broker's jars from Maven Central into the cache (a no-op when present)."""
    target = libs_dir()
    if target.is_dir():
        return 0.0
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ToolchainError("Maven (`mvn`) is needed to fetch the Kafka broker jars: apt-get install maven")
    target.parent.mkdir(parents=True, exist_ok=True)
    with locked(target.parent / ".fetch.lock"):
        if target.is_dir():  # another process fetched them while we waited
            return 0.0
        report(f"fetching Kafka {KAFKA_VERSION} broker jars from Maven Central")
        started = time.monotonic()
        _fetch_into(mvn, target)
    took = time.monotonic() - started
    report(f"fetched Kafka {KAFKA_VERSION} jars in {took:.0f}s ({len(list(target.iterdir()))} jars)")
    return took


def _fetch_into(mvn: str, target: Path) -> None:
    staging = Path(tempfile.mkdtemp(prefix=".libs-", dir=target.parent))
    try:
        result = subprocess.run(
            [
                mvn,
                "-q",
                "-B",
                "-f",
                str(_POM),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={staging}",
                "-DincludeScope=runtime",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise ToolchainError(
                f"fetching Kafka jars failed (exit {result.returncode}):\n{result.stdout[-3000:]}"
            )
        staging.chmod(0o755)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _property_name(variable: str) -> str:
    """KAFKA_LOG_DIRS -> log.dirs, as the apache/kafka image maps them (___ is '-', __ is '_')."""
    name = variable.removeprefix("KAFKA_").lower()
    return (
        name.replace("___", "\0").replace("__", "\1").replace("_", ".").replace("\0", "-").replace("\1", "_")
    )


def _listener_ports(listeners: str) -> dict[str, int]:
    ports = {}
    for listener in listeners.split(","):
        name, _, address = listener.partition("://")
        ports[name.strip()] = int(address.rsplit(":", 1)[1])
    return ports


def server_properties(env: Mapping[str, str], ports: Mapping[int, int], data_dir: Path) -> dict[str, str]:
    """server.properties for one broker; `ports` maps container ports to host ports."""
    props = {
        _property_name(k): v for k, v in env.items() if k.startswith("KAFKA_") and k != "KAFKA_HEAP_OPTS"
    }
    props["cluster.id"] = env.get("CLUSTER_ID", KAFKA_CLUSTER_ID)
    listener_ports = _listener_ports(props["listeners"])
    host = dict(ports)
    for port in listener_ports.values():
        if port not in host:  # the controller listener is not a container port: give it one too
            host[port] = free_port()
    props["listeners"] = ",".join(f"{n}://127.0.0.1:{host[p]}" for n, p in listener_ports.items())
    advertised = []
    for entry in props.get("advertised.listeners", "").split(","):
        name, _, _address = entry.partition("://")
        if name == "EXTERNAL":
            advertised.append(entry)  # localhost:<planned port>: the harness forwards it here
        elif name:
            advertised.append(f"{name}://127.0.0.1:{host[listener_ports[name]]}")
    props["advertised.listeners"] = ",".join(advertised)
    controller = props.get("controller.listener.names", "CONTROLLER").split(",")[0]
    node = props.get("node.id", "1")
    props["controller.quorum.voters"] = f"{node}@127.0.0.1:{host[listener_ports[controller]]}"
    props["log.dirs"] = str(data_dir)
    return props


def log4j_config(workdir: Path) -> Path:
    path = workdir / "log4j2.properties"
    path.write_text(
        "rootLogger.level = WARN\n"
        "rootLogger.appenderRef.file.ref = FILE\n"
        "appender.file.type = File\n"
        "appender.file.name = FILE\n"
        f"appender.file.fileName = {workdir / 'kafka.log'}\n"
        "appender.file.layout.type = PatternLayout\n"
        "appender.file.layout.pattern = %d %p %c{1} %m%n\n"
        "logger.kafka.name = kafka\n"
        "logger.kafka.level = INFO\n"
    )
    return path


def _escaped(text: str, key: bool) -> str:
    """`text` as java.util.Properties reads it back exactly (Kafka loads the file as ISO 8859-1):
    backslashes, line breaks and other control characters, anything outside printable ASCII, a
    leading blank, and in a key the separators and comment marks are escaped. So no value from
    a pod's environment can end its line and add a property of its own."""
    out = []
    for at, ch in enumerate(text):
        if ch == "\\":
            out.append("\\\\")
        elif ch in "\n\r\t\f":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t", "\f": "\\f"}[ch])
        elif not " " <= ch <= "~":
            units = ch.encode("utf-16-be")  # Java's \\u escapes are UTF-16 code units
            out += [f"\\u{units[i]:02x}{units[i + 1]:02x}" for i in range(0, len(units), 2)]
        elif (ch == " " and (key or at == 0)) or (key and ch in "=:#!"):
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def write_properties(properties: Mapping[str, str], path: Path) -> Path:
    lines = (f"{_escaped(k, key=True)}={_escaped(v, key=False)}\n" for k, v in sorted(properties.items()))
    path.write_text("".join(lines), encoding="ascii")
    return path


def broker_argv(java: str, conf: Path, log4j: Path, jvm: Sequence[str] = BROKER_JVM) -> list[str]:
    return [java, *jvm, f"-Dlog4j2.configurationFile={log4j}", "-cp", classpath(), "kafka.Kafka", str(conf)]


def format_storage(
    java: str, conf: Path, cluster_id: str, log4j: Path, jvm: Sequence[str] = BROKER_JVM
) -> None:
    """Run Kafka's own formatter on the log directories `conf` names (a JVM of its own)."""
    result = subprocess.run(
        [
            java,
            *jvm,
            f"-Dlog4j2.configurationFile={log4j}",
            "-cp",
            classpath(),
            STORAGE_TOOL,
            "format",
            "-t",
            cluster_id,
            "-c",
            str(conf),
            "--ignore-formatted",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ToolchainError(f"formatting Kafka storage failed: {result.stderr[-2000:]}")


#: Properties whose values carry this broker's own host ports: they do not change what the
#: formatter writes (static voters put no endpoint into the bootstrap checkpoint), so the
#: template key ignores the port numbers in them.
_PORTED = (
    "listeners",
    "advertised.listeners",
    "controller.quorum.voters",
    "controller.quorum.bootstrap.servers",
)


def storage_template_key(properties: Mapping[str, str]) -> str | None:
    """What a formatted log directory depends on, as a key; None if a template cannot stand in.

    The formatter writes meta.properties (cluster id, node id, a directory id) and the bootstrap
    checkpoint (feature levels, from the release and the config). One log directory holding the
    metadata log is the harness's layout; anything else is formatted by the tool itself.
    """
    log_dirs = properties.get("log.dirs", "")
    if not log_dirs or "," in log_dirs or "metadata.log.dir" in properties:
        return None
    inputs = {
        name: re.sub(r":\d+\b", ":*", value) if name in _PORTED else value
        for name, value in properties.items()
        if name != "log.dirs"
    }
    inputs["(jars)"] = libs_dir().parent.name
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def prepare_storage(
    java: str, properties: Mapping[str, str], conf: Path, log4j: Path, jvm: Sequence[str] = BROKER_JVM
) -> None:
    """Formatted KRaft storage in log.dirs, without a formatter JVM per broker where possible.

    The formatter is a JVM start of its own (0.6-1 s on 2 cores, more with four brokers
    starting). Its output depends only on the config, so it runs once per config into a
    template, and every broker gets a copy. The copies share a directory id, which is unique
    where it has to be: within one cluster, and each of these brokers is a cluster of one.
    """
    key = storage_template_key(properties)
    if key is None:
        format_storage(java, conf, properties["cluster.id"], log4j, jvm)
        return
    template = _storage_template(key, java, properties, log4j, jvm)
    shutil.copytree(template, properties["log.dirs"], dirs_exist_ok=True)


def _storage_template(
    key: str, java: str, properties: Mapping[str, str], log4j: Path, jvm: Sequence[str]
) -> Path:
    template = libs_dir().parent / "storage" / key
    if template.is_dir():
        return template
    with locked(template.with_name(f".{key}.lock")):
        if template.is_dir():  # another broker formatted it while we waited
            return template
        staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=template.parent))
        try:
            conf = write_properties({**properties, "log.dirs": str(staging / "data")}, staging / "conf")
            format_storage(java, conf, properties["cluster.id"], log4j, jvm)
            (staging / "data").rename(template)  # whole or absent: a broker never copies half
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return template
