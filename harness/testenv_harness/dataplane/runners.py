"""Which host process serves a pod the `local` cluster only simulates: its type's descriptor's
local runner (services/), given the pod's env, args and a free host port per container port.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from testenv_api import ANNOTATION_SERVICE_TYPE
from testenv_harness.services import catalog
from testenv_harness.services.base import Launch, PodSpec, Runner, RunnerError

__all__ = ["Launch", "PodSpec", "RunnerError", "cannot_proxy", "cannot_serve", "launch_for", "pod_spec"]


def _runners() -> dict[str, Runner]:
    return {name: kind.local for name, kind in catalog.TYPES.items() if kind.local is not None}


def cannot_serve(service_types: Iterable[str]) -> str:
    """Why the local data plane cannot run these types here ("" if it can): checked before a run
    starts anything, so a user learns it from the first line rather than from a worker's error."""
    types = sorted(set(service_types))
    runners = _runners()
    other = [t for t in types if t not in runners]
    if other:
        return (
            f"the local cluster cannot run {', '.join(other)} services: its data plane runs "
            f"{', '.join(sorted(runners))} as host processes (custom images need a container runtime). "
            "Use --testenv-cluster kind (a Docker engine) or existing"
        )
    for name in types:
        kind = catalog.TYPES[name]
        if any(importlib.util.find_spec(module) is None for module in kind.local_modules):
            modules = ", ".join(kind.local_modules)
            return (
                f"the local cluster runs {name} services with Python modules ({modules}) that are not "
                f"installed: {kind.local_install}"
            )
    return ""


def cannot_proxy(services: Iterable[Mapping[str, Any]]) -> str:
    """Why the local cluster cannot put a fault proxy in front of these services ("" if none asks
    for one). Its pods are simulated: no client runs inside the cluster to dial a Service's name
    there, so a proxy in front of the Service would see no traffic, and the harness's forwards
    reach the host processes directly. Faults of the test process's own connections go through
    the harness's tunnel on every cluster."""
    asking = [str(s.get("name", "?")) for s in services if s.get("faultProxy")]
    if not asking:
        return ""
    return (
        f"the local cluster cannot put a fault proxy in front of {', '.join(asking)} (faultProxy: true): "
        "its pods are simulated, so no client inside the cluster dials a Service there. "
        "Use --testenv-cluster kind (a Docker engine) or existing, or drop faultProxy"
    )


def launch_for(pod: PodSpec, workdir: Path) -> Launch:
    runners = _runners()
    runner = runners.get(pod.service_type)
    if runner is None:
        raise RunnerError(
            f"the local data plane cannot run a {pod.service_type!r} service "
            f"({pod.namespace}/{pod.name}); it runs "
            f"{', '.join(sorted(runners))}. Use a kind or existing cluster for this type."
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
