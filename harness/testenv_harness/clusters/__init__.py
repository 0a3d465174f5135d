"""Cluster providers: where a test run gets its Kubernetes API server from."""

from __future__ import annotations

from collections.abc import Mapping

from testenv_harness.clusters.base import Cluster, Provider
from testenv_harness.clusters.existing import ExistingProvider
from testenv_harness.clusters.kind import KindProvider
from testenv_harness.clusters.local import LocalProvider

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


__all__ = ["PROVIDERS", "Cluster", "LocalProvider", "Provider", "provider_class"]
