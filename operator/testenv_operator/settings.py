"""The operator's one settings object, read from TESTENV_* environment variables.

| variable | default | meaning |
|---|---|---|
| TESTENV_NAMESPACES | (all) | comma-separated namespaces whose TestEnvironments are served |
| TESTENV_MAX_WORKERS | 64 | most workers one environment may ask for |
| TESTENV_MAX_ENVIRONMENTS_PER_NAMESPACE | 20 | most environments one namespace may hold |
| TESTENV_WORKER_CPU | 8 | CPU quota (limits) of each worker namespace |
| TESTENV_WORKER_MEMORY | 16Gi | memory quota (limits) of each worker namespace |
| TESTENV_IMAGE_<TYPE> | see catalog | default image of a built-in service type, e.g. TESTENV_IMAGE_REDIS |
| TESTENV_ACCESS_CLUSTERROLE | testenv-worker-access | ClusterRole bound to spec.access.subjects |
| TESTENV_RESYNC_SECONDS | 10 | how often drift, expiry and readiness are re-checked |
| TESTENV_SWEEP_SECONDS | 60 | how often namespaces whose owner is gone are looked for |
| TESTENV_LIVENESS | http://0.0.0.0:8080/healthz | kopf liveness endpoint ("" turns it off) |
| TESTENV_LOG_LEVEL | INFO | DEBUG, INFO, WARNING or ERROR |
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from testenv_api import DEFAULT_MAX_WORKERS, MAX_WORKERS, SERVICE_TYPES

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


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


@dataclasses.dataclass(frozen=True)
class Settings:
    namespaces: tuple[str, ...] = ()
    max_workers: int = DEFAULT_MAX_WORKERS
    max_environments_per_namespace: int = 20
    worker_cpu: str = "8"
    worker_memory: str = "16Gi"
    images: Mapping[str, str] = dataclasses.field(default_factory=dict)
    access_cluster_role: str = "testenv-worker-access"
    resync_seconds: int = 10
    sweep_seconds: int = 60
    liveness: str = "http://0.0.0.0:8080/healthz"
    log_level: str = "INFO"

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
            worker_cpu=env.get("TESTENV_WORKER_CPU", "8"),
            worker_memory=env.get("TESTENV_WORKER_MEMORY", "16Gi"),
            images=images,
            access_cluster_role=env.get("TESTENV_ACCESS_CLUSTERROLE", "testenv-worker-access"),
            resync_seconds=_int(env, "TESTENV_RESYNC_SECONDS", 10, 1, 3600),
            sweep_seconds=_int(env, "TESTENV_SWEEP_SECONDS", 60, 1, 86400),
            liveness=env.get("TESTENV_LIVENESS", "http://0.0.0.0:8080/healthz"),
            log_level=level,
        )
