"""Cluster providers: where a test run gets its Kubernetes API server from."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from testenv_harness.provision.clusters.base import Cluster, Provider
from testenv_harness.provision.clusters.existing import ExistingProvider
from testenv_harness.provision.clusters.kind import KindProvider, why_not_kind
from testenv_harness.provision.clusters.local import LocalProvider

#: Every provider by name, for code that has a run's provider name but not the provider (workers).
PROVIDERS: Mapping[str, type[Provider]] = {
    LocalProvider.name: LocalProvider,
    KindProvider.name: KindProvider,
    ExistingProvider.name: ExistingProvider,
}


def provider_class(name: str) -> type[Provider]:
    try:
        return PROVIDERS[name]
    except KeyError:
        raise ValueError(f"no cluster provider {name!r}: use one of {', '.join(PROVIDERS)}") from None


#: What a user may choose (--testenv-cluster, testenv_cluster, `testenv up --cluster`).
CHOICES = ("auto", *PROVIDERS)


def choose(
    choice: str,
    cluster_name: str,
    *,
    kubeconfig: str | None = None,
    context: str | None = None,
    report: Callable[[str], None] = print,
) -> Provider:
    """The provider a run asked for; `auto` is kind where a Docker engine can run it, else local."""
    if choice == "auto":
        reason = why_not_kind()
        choice = "local" if reason else "kind"
        if reason:
            report(f"using the local cluster: kind cannot start here ({reason})")
    if choice == "local":
        return LocalProvider(cluster_name, report=report)
    if choice == "kind":
        return KindProvider(cluster_name, report=report)
    if choice == "existing":
        return ExistingProvider(kubeconfig, context)
    raise ValueError(f"--testenv-cluster={choice!r}: use one of {', '.join(CHOICES)}")


__all__ = [
    "CHOICES",
    "PROVIDERS",
    "Cluster",
    "ExistingProvider",
    "KindProvider",
    "LocalProvider",
    "Provider",
    "choose",
    "provider_class",
]
