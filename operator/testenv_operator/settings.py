"""The operator's one settings object, read from TESTENV_* environment variables.

| variable | default | meaning |
|---|---|---|
| TESTENV_NAMESPACES | (all) | comma-separated namespaces whose TestEnvironments are served |
| TESTENV_MAX_WORKERS | 64 | most workers one environment may ask for |
| TESTENV_MAX_ENVIRONMENTS_PER_NAMESPACE | 20 | most environments one namespace may hold |
| TESTENV_MAX_WORKERS_PER_NAMESPACE | 128 | most workers all environments of one namespace may ask for |
| TESTENV_WORKER_CPU | 8 | CPU quota (limits) of each worker namespace |
| TESTENV_WORKER_MEMORY | 16Gi | memory quota (limits) of each worker namespace |
| TESTENV_WORKER_EPHEMERAL_STORAGE | 16Gi | ephemeral-storage quota of each worker namespace |
| TESTENV_WORKER_EGRESS | restricted | restricted: worker pods reach their own namespace and DNS only; open |
| TESTENV_ALLOWED_REGISTRIES | (any) | comma-separated registries or prefixes `image:` may name |
| TESTENV_IMAGE_<TYPE> | see catalog | default image of a built-in service type, e.g. TESTENV_IMAGE_REDIS |
| TESTENV_ACCESS_CLUSTERROLE | testenv-worker-access | ClusterRole bound to spec.access.subjects |
| TESTENV_RESYNC_SECONDS | 10 | how often drift, expiry and readiness are re-checked |
| TESTENV_SWEEP_SECONDS | 60 | how often namespaces whose owner is gone are looked for |
| TESTENV_FINISH_SECONDS | 120 | after SIGUSR1 (its run ended): the most time to finish deletions, then exit |
| TESTENV_LIVENESS | http://0.0.0.0:8080/healthz | kopf liveness endpoint ("" turns it off) |
| TESTENV_LEADER_ELECTION | (off) | `namespace/name` of a Lease: only the process holding it acts |
| TESTENV_LEASE_SECONDS | 15 | how long a holder's Lease lasts unrenewed before another may take it |
| TESTENV_LOG_LEVEL | INFO | DEBUG, INFO, WARNING or ERROR |
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from testenv_api import DEFAULT_MAX_WORKERS, MAX_WORKERS, SERVICE_TYPES

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_EGRESS = ("restricted", "open")


class SettingsError(ValueError):
    """A TESTENV_* variable has a value the operator cannot use."""


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a whole number") from None
    if not low <= value <= high:
        raise SettingsError(f"{name}={value} is out of range: use {low}..{high}")
    return value


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    value = env.get(name, "").strip().lower() or choices[0]
    if value not in choices:
        raise SettingsError(f"{name}={value!r}: use one of {', '.join(choices)}")
    return value


def _lease(raw: str) -> tuple[str, str] | None:
    """`testenv-system/testenv-operator` -> ('testenv-system', 'testenv-operator'); '' -> None."""
    if not raw.strip():
        return None
    namespace, _, name = raw.strip().partition("/")
    if not namespace or not name or "/" in name:
        raise SettingsError(
            f"TESTENV_LEADER_ELECTION={raw!r}: write the Lease as namespace/name, "
            "for example testenv-system/testenv-operator"
        )
    return namespace, name


def _registries(raw: str) -> tuple[str, ...]:
    """`docker.io, ghcr.io/acme/` -> ('docker.io', 'ghcr.io/acme')."""
    entries = tuple(e.strip().strip("/").lower() for e in raw.split(",") if e.strip().strip("/"))
    for entry in entries:
        tagged = "/" in entry and ":" in entry.rsplit("/", 1)[-1]  # a host:port alone is fine
        if "@" in entry or tagged:
            raise SettingsError(
                f"TESTENV_ALLOWED_REGISTRIES entry {entry!r} names an image, not a registry: "
                "write a registry host (docker.io, registry.example.com:5000) or host/path prefix"
            )
    return entries


@dataclasses.dataclass(frozen=True)
class Settings:
    namespaces: tuple[str, ...] = ()
    max_workers: int = DEFAULT_MAX_WORKERS
    max_environments_per_namespace: int = 20
    max_workers_per_namespace: int = 128
    worker_cpu: str = "8"
    worker_memory: str = "16Gi"
    worker_ephemeral_storage: str = "16Gi"
    worker_egress: str = "restricted"
    allowed_registries: tuple[str, ...] = ()
    images: Mapping[str, str] = dataclasses.field(default_factory=dict)
    access_cluster_role: str = "testenv-worker-access"
    resync_seconds: int = 10
    sweep_seconds: int = 60
    finish_seconds: int = 120
    liveness: str = "http://0.0.0.0:8080/healthz"
    log_level: str = "INFO"
    leader_election: tuple[str, str] | None = None
    lease_seconds: int = 15

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        level = env.get("TESTENV_LOG_LEVEL", "INFO").upper()
        if level not in _LEVELS:
            raise SettingsError(f"TESTENV_LOG_LEVEL={level!r}: use one of {', '.join(_LEVELS)}")
        images = {
            kind: env[f"TESTENV_IMAGE_{kind.upper()}"]
            for kind in SERVICE_TYPES
            if env.get(f"TESTENV_IMAGE_{kind.upper()}")
        }
        return cls(
            namespaces=tuple(n.strip() for n in env.get("TESTENV_NAMESPACES", "").split(",") if n.strip()),
            max_workers=_int(env, "TESTENV_MAX_WORKERS", DEFAULT_MAX_WORKERS, 1, MAX_WORKERS),
            max_environments_per_namespace=_int(env, "TESTENV_MAX_ENVIRONMENTS_PER_NAMESPACE", 20, 1, 1000),
            max_workers_per_namespace=_int(env, "TESTENV_MAX_WORKERS_PER_NAMESPACE", 128, 1, 100_000),
            worker_cpu=env.get("TESTENV_WORKER_CPU", "8"),
            worker_memory=env.get("TESTENV_WORKER_MEMORY", "16Gi"),
            worker_ephemeral_storage=env.get("TESTENV_WORKER_EPHEMERAL_STORAGE", "16Gi"),
            worker_egress=_choice(env, "TESTENV_WORKER_EGRESS", _EGRESS),
            allowed_registries=_registries(env.get("TESTENV_ALLOWED_REGISTRIES", "")),
            images=images,
            access_cluster_role=env.get("TESTENV_ACCESS_CLUSTERROLE", "testenv-worker-access"),
            resync_seconds=_int(env, "TESTENV_RESYNC_SECONDS", 10, 1, 3600),
            sweep_seconds=_int(env, "TESTENV_SWEEP_SECONDS", 60, 1, 86400),
            finish_seconds=_int(env, "TESTENV_FINISH_SECONDS", 120, 1, 3600),
            liveness=env.get("TESTENV_LIVENESS", "http://0.0.0.0:8080/healthz"),
            log_level=level,
            leader_election=_lease(env.get("TESTENV_LEADER_ELECTION", "")),
            lease_seconds=_int(env, "TESTENV_LEASE_SECONDS", 15, 3, 300),
        )
