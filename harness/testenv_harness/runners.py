"""Real service processes on the host, standing in for pods the `local` cluster only simulates.

Each runner gets the pod (its env, args and container ports) and a free host port for every
container port, and starts the real program configured as the pod would be: redis-server
from Debian, a Kafka broker from Maven Central jars using the pod's own KAFKA_* listener
settings, moto_server for the AWS types, mosquitto, PostgreSQL and RabbitMQ from Debian.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import subprocess
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


def _postgres_bin() -> Path:
    """The newest PostgreSQL server Debian's packages installed (/usr/lib/postgresql/N/bin)."""
    servers = Path("/usr/lib/postgresql").glob("*/bin/postgres")
    found = [p.parent for p in servers if p.parent.parent.name.isdigit()]
    if not found:
        raise RunnerError(
            "PostgreSQL is not installed: `apt-get install postgresql` (or run `make local-deps`, which does)"
        )
    return max(found, key=lambda b: int(b.parent.name))


def _not_root(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root, and CI jobs run as root. There the server runs in a user
    namespace of its own with no mapping: inside it the process and the files it makes are
    "nobody"'s (so its ownership checks pass), while on disk they stay root's, in the run's own
    0700 folder. Nobody else's user or folder is needed."""
    return [_need("unshare", "util-linux"), "--user", *argv] if os.geteuid() == 0 else argv


def _quoted(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _postgres(pod: PodSpec, workdir: Path) -> Launch:
    """One server per worker, made as the postgres image makes it: POSTGRES_USER (a superuser)
    with POSTGRES_PASSWORD, and the database POSTGRES_DB (the user's name when unset)."""
    (port,) = pod.ports.values()
    bin_dir = _postgres_bin()
    user = pod.env.get("POSTGRES_USER") or "postgres"
    password = pod.env.get("POSTGRES_PASSWORD", "")
    database = pod.env.get("POSTGRES_DB") or user
    data = workdir / "data"

    def run(argv: list[str], what: str, stdin: str = "") -> str:
        done = subprocess.run(
            _not_root(argv), input=stdin, capture_output=True, text=True, timeout=120, check=False
        )
        output = done.stdout + done.stderr
        if done.returncode or " ERROR: " in output or " FATAL: " in output:
            if "unshare failed" in output:
                raise RunnerError(
                    "PostgreSQL refuses to run as root, and this host does not let root make a user "
                    "namespace to run it in: run the tests as a non-root user, or use --testenv-cluster kind"
                )
            raise RunnerError(f"{what} for {pod.namespace}/{pod.name} failed:\n{output.strip()[-2000:]}")
        return output

    def prepare() -> None:
        secret = workdir / "password"
        secret.touch(mode=0o600)
        secret.write_text(password + "\n")
        try:
            initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", user, f"--pwfile={secret}"]
            host_auth = "scram-sha-256" if password else "trust"  # the image's POSTGRES_HOST_AUTH_METHOD
            initdb += [f"--auth-host={host_auth}", "--auth-local=trust", "--encoding=UTF8"]
            run([*initdb, "--locale=C.UTF-8", "--no-sync", "--no-instructions"], "initdb")
        finally:
            secret.unlink()
        if database != "postgres":
            single = [str(bin_dir / "postgres"), "--single", "-D", str(data), "-F", "-c", "listen_addresses="]
            statement = f"CREATE DATABASE {_quoted(database)} OWNER {_quoted(user)};\n"
            run([*single, "postgres"], "creating its database", statement)

    argv = [str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-c", "listen_addresses=127.0.0.1"]
    argv += ["-c", "unix_socket_directories=", "-c", "log_destination=stderr"]
    # a test database keeps nothing across a crash: no waiting on the disk
    argv += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
    return Launch(_not_root(argv), dict(os.environ), (port,), prepare=prepare)


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
    "postgres": _postgres,
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
