"""localstack and moto: the AWS APIs. The local cluster serves both with moto_server (no
LocalStack image can run without a container runtime); moto's reset API wipes them."""

from __future__ import annotations

import importlib.util
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from testenv_harness.services.base import Launch, Ping, PodSpec, ResetRefusedError, RunnerError, ServiceType

#: moto_server's reset API: every resource of every service gone, at once.
MOTO_RESET = "/moto-api/reset"
#: What AWS clients need besides the endpoint; a variable the environment already has wins.
AWS_DEFAULTS = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}
_MODULES = ("moto", "flask")
_INSTALL = "pip install 'kube-testenv[aws]'"


def _moto_reset(host: str, port: int) -> None:
    request = urllib.request.Request(f"http://{host}:{port}{MOTO_RESET}", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10):
            pass
    except urllib.error.HTTPError as exc:  # a server without moto's API (LocalStack's image)
        raise ResetRefusedError(f"{MOTO_RESET} answered {exc.code}") from exc


def _localstack_reset(host: str, port: int) -> None:
    """The local cluster serves localstack with moto_server, which its reset API wipes. A real
    LocalStack (kind's image, an existing cluster's) answers that path without wiping its S3, so
    one that answers its own health check is restarted instead."""
    health = urllib.request.Request(f"http://{host}:{port}/_localstack/health")
    try:
        with urllib.request.urlopen(health, timeout=5) as answer:
            real = answer.status == 200
    except (urllib.error.URLError, OSError):
        real = False  # moto has no such path: 404
    if real:
        raise ResetRefusedError("a LocalStack server: restarted to be wiped")
    _moto_reset(host, port)


def _moto_server(pod: PodSpec, workdir: Path) -> Launch:
    (port,) = pod.ports.values()
    if any(importlib.util.find_spec(module) is None for module in _MODULES):
        raise RunnerError(f"moto_server is not installed: {_INSTALL} (or 'moto[server]')")
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    return Launch(argv, dict(os.environ), (port,))


_HTTP = Ping.answered_by(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", b"HTTP/")


def _ok(path: str) -> Ping:
    """200 from GET `path`: what the pod's readiness probe (an httpGet of that path) waits for."""
    request = f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    return Ping(request, lambda answer: answer.startswith(b"HTTP/1.") and answer[8:12] == b" 200")


#: The path each type's pod is probed on (the operator's catalog).
_PROBED = {"localstack": "/_localstack/health", "moto": "/moto-api/"}


def _aws(name: str) -> ServiceType:
    return ServiceType(
        name,
        variables=("AWS_ENDPOINT_URL",),
        ping=_HTTP,
        ready_ping=_ok(_PROBED[name]),
        reset=_localstack_reset if name == "localstack" else _moto_reset,
        local=_moto_server,
        local_modules=_MODULES,
        local_install=_INSTALL,
        defaults=AWS_DEFAULTS,
        image_suite="trixie",
    )


TYPES = (_aws("localstack"), _aws("moto"))
