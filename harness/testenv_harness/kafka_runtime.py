"""A real Kafka broker without a container: jars from Maven Central, config from the pod's env.

The pod's KAFKA_* variables are the same ones the apache/kafka image reads; they are turned into
server.properties with every listener moved to a free host port. The EXTERNAL listener keeps
advertising `localhost:<planned port>`, so a client that dials the harness's forward gets
metadata pointing back at that same forward.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from testenv_api import KAFKA_CLUSTER_ID
from testenv_harness import toolchain
from testenv_harness.errors import ToolchainError
from testenv_harness.localports import free_port

KAFKA_VERSION = "4.1.1"
STORAGE_TOOL = "kafka.tools.StorageTool"
_POM = Path(__file__).parent / "kafka" / "pom.xml"


def libs_dir() -> Path:
    digest = hashlib.sha256(_POM.read_bytes()).hexdigest()[:12]
    return toolchain.cache_root() / "kafka" / f"{KAFKA_VERSION}-{digest}" / "libs"


def classpath() -> str:
    libs = libs_dir()
    if not libs.is_dir():
        raise ToolchainError(
            f"Kafka {KAFKA_VERSION} jars are not fetched ({libs} is missing): {toolchain.BUILD_HINT}"
        )
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
    with toolchain.locked(target.parent / ".fetch.lock"):
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
