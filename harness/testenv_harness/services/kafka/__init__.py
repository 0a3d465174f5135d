"""kafka: on the local cluster, a KRaft broker from Maven Central's jars started from a storage
template and a class-data archive (runtime, cds); its topics and consumer groups are wiped with
hand-framed requests (wire), as the harness depends on no Kafka client."""

from __future__ import annotations

import os
import struct
from pathlib import Path

from testenv_harness.ground.errors import ToolchainError
from testenv_harness.services.base import Launch, PodSpec, ResetRefusedError, RunnerError, ServiceType, need
from testenv_harness.services.kafka import cds, runtime, wire


def _reset(host: str, port: int) -> None:
    try:
        wire.reset(port, host=host)
    except (wire.ResetError, OSError, ValueError, struct.error) as exc:
        # e.g. a consumer group a crashed test left members in: start empty instead
        raise ResetRefusedError(str(exc)) from exc


def _local(pod: PodSpec, workdir: Path) -> Launch:
    properties = runtime.server_properties(pod.env, pod.ports, workdir / "data")
    conf = runtime.write_properties(properties, workdir / "server.properties")
    java = need("java", "openjdk-17-jre-headless")
    log4j = runtime.log4j_config(workdir)
    # The archive's path is known before it exists: a JVM skips a missing archive silently.
    # The formatter (run only where no storage template fits) maps the broker's archive too.
    jvm = [*runtime.BROKER_JVM, *cds.use_flags(cds.archive_path(java))]

    def prepare() -> None:
        cds.ensure(java)  # a no-op but on the first start with a new JDK or jar set
        try:
            runtime.prepare_storage(java, properties, conf, log4j, jvm)
        except ToolchainError as exc:
            raise RunnerError(f"Kafka storage for {pod.namespace}/{pod.name}: {exc}") from exc

    argv = runtime.broker_argv(java, conf, log4j, jvm)
    return Launch(argv, dict(os.environ), tuple(pod.ports.values()), prepare=prepare)


KAFKA = ServiceType(
    "kafka",
    variables=("KAFKA_BOOTSTRAP_SERVERS",),
    ping=wire.PING,
    ready_ping=wire.PING,  # ApiVersions answered: its listeners serve (the probe only connects)
    reset=_reset,
    local=_local,
    image_extras=("kafka-libs", "kafka-training"),
)
TYPES = (KAFKA,)
