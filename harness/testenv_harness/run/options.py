"""What a run is asked for, before anything is made: its options, its manifest, and what the
plugin and the CLI hold of a run (`Session`). Light on purpose: the pytest plugin loads this in
every xdist worker, and the set-up's machinery (session.py: clusters, operator, data plane) only
where a run is set up.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Protocol

import testenv_api
from testenv_api import GROUP, VERSION
from testenv_harness.worker.handoff import DIRECT, FORWARD, Handoff

#: What a user may choose as the cluster (--testenv-cluster, testenv_cluster, `testenv up
#: --cluster`): the providers of provision.clusters (PROVIDERS), named here so that choosing one
#: loads none of them.
CLUSTER_CHOICES = ("auto", "local", "kind", "existing")
#: Seconds a kept environment waits for the next run (the testenv_reuse_idle ini value, reuse.py).
DEFAULT_IDLE_SECONDS = 900.0
#: How workers reach their services: through port-forwards, straight to the Services' DNS names
#: (a run inside the cluster), or direct exactly when this process runs in a pod of that cluster.
CONNECT_MODES = ("auto", FORWARD, DIRECT)


@dataclasses.dataclass(frozen=True)
class RunOptions:
    workers: int
    manifest: dict[str, Any]
    provider: str = "auto"
    cluster_name: str = "testenv"
    #: Of the TestEnvironment; "": the kubeconfig context's (or the pod's own) for `existing`,
    #: else `default`.
    namespace: str = ""
    operator: str = "auto"  # subprocess | cluster | auto
    #: For `existing`: the kubeconfig file (None: $KUBECONFIG, ~/.kube/config, or in-cluster) and
    #: its context (None: the current one).
    kubeconfig: str | None = None
    context: str | None = None
    connect: str = "auto"  # forward | direct | auto
    keep: bool = False
    timeout: float = 300.0
    #: Wait until the namespaces are gone before returning from `stop` (else they go meanwhile).
    wait_teardown: bool = False

    @property
    def services(self) -> list[dict[str, Any]]:
        """The manifest's `spec.services` (none where it names none)."""
        found: list[dict[str, Any]] = (self.manifest.get("spec") or {}).get("services") or []
        return found


def parse_services(entries: list[str]) -> list[dict[str, Any]]:
    """`redis`, `kafka` or `name:type` entries (testenv_services, `--service`) as spec.services."""
    services = []
    for entry in entries:
        name, _, kind = entry.partition(":")
        kind = kind or name
        if kind not in testenv_api.SERVICE_TYPES or kind == "custom":
            known = ", ".join(t for t in testenv_api.SERVICE_TYPES if t != "custom")
            raise ValueError(f"service {entry!r} has unknown type {kind!r}; use one of {known}")
        services.append({"name": name, "type": kind})
    return services


def services_manifest(entries: list[str], name: str = "run") -> dict[str, Any]:
    """A TestEnvironment of just these services (see `parse_services`), for runs without a file."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": testenv_api.KIND,
        "metadata": {"name": name},
        "spec": {"services": parse_services(entries)},
    }


def load_manifest(path: Path) -> dict[str, Any]:
    """The one TestEnvironment in the YAML file at `path` (ValueError, naming the file, otherwise)."""
    import yaml  # here, not above: an xdist worker loads this module and reads no manifest

    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    found = [d for d in docs if isinstance(d, dict) and d.get("kind") == testenv_api.KIND]
    if len(found) != 1:
        raise ValueError(f"{path}: expected exactly one {testenv_api.KIND}, found {len(found)}")
    manifest: dict[str, Any] = found[0]
    return manifest


class Session(Protocol):
    """What the plugin and the CLI hold of a run: its own (RunSession) or a reused one's."""

    run_dir: Path
    handoff: Handoff | None

    @property
    def keeper(self) -> str:
        """The reuse keeper whose environment (and data plane) the run uses; "" for a run's own."""
        ...

    def plan(self) -> list[dict[str, str]]: ...

    def start_ahead(self) -> None:
        """What `start` can take before tests are known to need the environment: nothing that
        makes an environment (called in a thread of its own, before `start`)."""
        ...

    def start(self) -> Handoff: ...

    def wait_reported(self, timeout: float) -> None: ...

    def stop(self) -> str: ...

    def remove_run_dir(self) -> None: ...
