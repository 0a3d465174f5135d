"""What a service type descriptor holds, and the local runner's protocol (a pod in, a process out).

One descriptor per type (services/<type>.py) says everything the harness knows of it: the
variables a worker exports for it, its protocol-level ping, how its state is wiped through its
own protocol, and what the local cluster runs for its pods. Its ports and URL scheme are the
API contract's (testenv_api.services); its image, probe and resources the operator's catalog.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

from testenv_harness.ground.errors import TestEnvError


class RunnerError(TestEnvError):
    """A service process could not be started."""


class ResetRefusedError(Exception):
    """The service cannot be wiped through its protocol here: restart its pod instead."""


@dataclasses.dataclass(frozen=True)
class PodSpec:
    """What a local runner gets of a pod: its env, args, and a host port per container port."""

    namespace: str
    name: str
    service_type: str
    env: Mapping[str, str]
    args: tuple[str, ...]
    #: container port -> host port the process listens on
    ports: Mapping[int, int]


@dataclasses.dataclass(frozen=True)
class Launch:
    """How the local data plane starts a pod's process."""

    argv: list[str]
    env: dict[str, str]
    #: host ports that must accept connections before the pod counts as served
    wait_ports: tuple[int, ...]
    #: work done off the data plane's loop before the start (files, an initdb)
    prepare: Callable[[], None] | None = None


@dataclasses.dataclass(frozen=True)
class Ping:
    """One request of the service's protocol, and whether an answer's first bytes are healthy."""

    request: bytes
    healthy: Callable[[bytes], bool]

    @classmethod
    def answered_by(cls, request: bytes, prefix: bytes) -> Ping:
        return cls(request, lambda answer: answer.startswith(prefix))


Runner = Callable[[PodSpec, Path], Launch]


@dataclasses.dataclass(frozen=True)
class ServiceType:
    """One built-in type, as the harness knows it."""

    name: str
    #: variables set to the service's URL when an environment has exactly one service of the type
    variables: tuple[str, ...]
    ping: Ping
    #: A ping that answers only once the pod's readiness probe would pass too (`ping` itself where
    #: it is that strong): a worker may then take the service as ready through its forward before
    #: the kubelet marks the pod Ready. None: the worker waits for the pod's Ready first.
    ready_ping: Ping | None = None
    #: wipes the service's state through host:port (ResetRefusedError: restart it); None: restart it
    reset: Callable[[str, int], None] | None = None
    #: the local data plane's process for a pod of the type
    local: Runner | None = None
    #: Python modules the local runner needs, and the install that brings them
    local_modules: tuple[str, ...] = ()
    local_install: str = ""
    #: set too, each unless the environment already has it, when the type's variables are
    defaults: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: the stand-in image (provision/images/<name>/): its Debian suite, and what it copies besides
    image_suite: str = "bookworm"
    image_extras: tuple[str, ...] = ()


def need(program: str, package: str) -> str:
    """The path of a program a local runner starts, or a RunnerError saying how to install it."""
    path = shutil.which(program) or (
        f"/usr/sbin/{program}" if Path(f"/usr/sbin/{program}").exists() else None
    )
    if not path:
        raise RunnerError(
            f"{program} is not installed: `apt-get install {package}` (or run `make demo`, which does)"
        )
    return path
