"""Real service processes on the host, standing in for pods the `local` cluster only simulates.

Each runner gets the pod (its env, args and container ports) and a free host port for every
container port, and starts the real program configured as the pod would be: redis-server
from Debian, a Kafka broker from Maven Central jars using the pod's own KAFKA_* listener
settings, moto_server for the AWS types, mosquitto from Debian.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from testenv_api import ANNOTATION_SERVICE_TYPE
from testenv_harness import kafka_cds, kafka_runtime
from testenv_harness.errors import TestEnvError, ToolchainError


class RunnerError(TestEnvError):
    """A service process could not be started."""


@dataclasses.dataclass(frozen=True)
class PodSpec:
    namespace: str
    name: str
    service_type: str
    env: Mapping[str, str]
    args: tuple[str, ...]
    #: container port -> host port the process listens on
    ports: Mapping[int, int]


@dataclasses.dataclass(frozen=True)
class Launch:
    argv: list[str]
    env: dict[str, str]
    #: host ports that must accept connections before the pod counts as served
    wait_ports: tuple[int, ...]
    prepare: Callable[[], None] | None = None


def _need(program: str, package: str) -> str:
    path = shutil.which(program) or (
        f"/usr/sbin/{program}" if Path(f"/usr/sbin/{program}").exists() else None
    )
    if not path:
        raise RunnerError(
            f"{program} is not installed: `apt-get install {package}` (or run `make demo`, which does)"
        )
    return path


def _redis(pod: PodSpec, workdir: Path) -> Launch:
    (port,) = pod.ports.values()
    argv = [_need("redis-server", "redis-server"), "--port", str(port), "--bind", "127.0.0.1"]
    argv += ["--dir", str(workdir), "--save", "", "--appendonly", "no"]
    return Launch(argv, dict(os.environ), (port,))


def _moto(pod: PodSpec, workdir: Path) -> Launch:
    (port,) = pod.ports.values()
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        raise RunnerError("moto_server is not installed: pip install 'kube-testenv[aws]' (or 'moto[server]')")
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    return Launch(argv, dict(os.environ), (port,))


def _mosquitto(pod: PodSpec, workdir: Path) -> Launch:
    (port,) = pod.ports.values()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    return Launch([_need("mosquitto", "mosquitto"), "-c", str(conf)], dict(os.environ), (port,))


def _kafka(pod: PodSpec, workdir: Path) -> Launch:
    properties = kafka_runtime.server_properties(pod.env, pod.ports, workdir / "data")
    conf = kafka_runtime.write_properties(properties, workdir / "server.properties")
    java = _need("java", "openjdk-17-jre-headless")
    log4j = kafka_runtime.log4j_config(workdir)
    # The archive's path is known before it exists: a JVM skips a missing archive silently.
    # The formatter (run only where no storage template fits) maps the broker's archive too.
    jvm = [*kafka_runtime.BROKER_JVM, *kafka_cds.use_flags(kafka_cds.archive_path(java))]

    def prepare() -> None:
        kafka_cds.ensure(java)  # a no-op but on the first start with a new JDK or jar set
        try:
            kafka_runtime.prepare_storage(java, properties, conf, log4j, jvm)
        except ToolchainError as exc:
            raise RunnerError(f"Kafka storage for {pod.namespace}/{pod.name}: {exc}") from exc

    argv = kafka_runtime.broker_argv(java, conf, log4j, jvm)
    return Launch(argv, dict(os.environ), tuple(pod.ports.values()), prepare=prepare)


RUNNERS: dict[str, Callable[[PodSpec, Path], Launch]] = {
    "redis": _redis,
    "kafka": _kafka,
    "localstack": _moto,  # no LocalStack image can run here; moto_server speaks the same AWS APIs
    "moto": _moto,
    "mosquitto": _mosquitto,
}


#: What a missing Python module of a runner is installed with.
_NEEDS = {"localstack": ("moto", "flask"), "moto": ("moto", "flask")}


def cannot_serve(service_types: Iterable[str]) -> str:
    """Why the local data plane cannot run these types here ("" if it can): checked before a run
    starts anything, so a user learns it from the first line rather than from a worker's error."""
    types = sorted(set(service_types))
    other = [t for t in types if t not in RUNNERS]
    if other:
        return (
            f"the local cluster cannot run {', '.join(other)} services: its data plane runs "
            f"{', '.join(sorted(RUNNERS))} as host processes (custom images need a container runtime). "
            "Use --testenv-cluster kind (a Docker engine) or existing"
        )
    missing = [t for t in types if any(importlib.util.find_spec(m) is None for m in _NEEDS.get(t, ()))]
    if missing:
        return (
            f"the local cluster runs {', '.join(missing)} services with moto_server, which is not "
            "installed: pip install 'kube-testenv[aws]'"
        )
    return ""


def launch_for(pod: PodSpec, workdir: Path) -> Launch:
    runner = RUNNERS.get(pod.service_type)
    if runner is None:
        supported = ", ".join(sorted(RUNNERS))
        raise RunnerError(
            f"the local data plane cannot run a {pod.service_type!r} service "
            f"({pod.namespace}/{pod.name}); it runs "
            f"{supported}. Use a kind or existing cluster for this type."
        )
    return runner(pod, workdir)


def pod_spec(pod: Mapping[str, Any], host_ports: Callable[[int], int]) -> PodSpec:
    """Read what a runner needs from a pod object (a dict as the API server sends it)."""
    meta, spec = pod["metadata"], pod["spec"]
    (container,) = spec["containers"][:1]
    env = {e["name"]: e.get("value", "") for e in container.get("env") or [] if "value" in e}
    ports = {
        int(p["containerPort"]): host_ports(int(p["containerPort"])) for p in container.get("ports") or []
    }
    annotations = meta.get("annotations") or {}
    return PodSpec(
        namespace=meta["namespace"],
        name=meta["name"],
        service_type=annotations.get(ANNOTATION_SERVICE_TYPE, ""),
        env=env,
        args=tuple(container.get("args") or ()),
        ports=ports,
    )
