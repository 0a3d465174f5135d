"""What differs between cluster providers is asked of the provider, never of its name."""

from __future__ import annotations

import pytest

import testenv_api
from testenv_harness.clusters import PROVIDERS, provider_class
from testenv_harness.clusters.base import MOTO_RESET

# Per provider: the types wiped through an HTTP reset (the rest are restarted), who runs the
# operator by default, and whether its pods are only simulated.
EXPECTED = {
    # The local data plane serves localstack with moto_server, whose reset API wipes it.
    "local": ({"moto", "localstack"}, "subprocess", True),
    # Real LocalStack has no reset API: it is restarted.
    "kind": ({"moto"}, "subprocess", False),
    "existing": ({"moto"}, "cluster", False),
}


def test_every_provider_is_registered() -> None:
    assert set(PROVIDERS) == set(EXPECTED)


@pytest.mark.parametrize("name", EXPECTED)
def test_reset_endpoints(name: str) -> None:
    reset = {t: provider_class(name).reset_endpoint(t) for t in testenv_api.SERVICE_TYPES}
    assert {t for t, endpoint in reset.items() if endpoint} == EXPECTED[name][0]
    assert set(reset.values()) == {MOTO_RESET, None}


@pytest.mark.parametrize("name", EXPECTED)
def test_operator_and_pods(name: str) -> None:
    provider = provider_class(name)
    assert (provider.default_operator, provider.simulated_pods) == EXPECTED[name][1:]


def test_an_unknown_provider_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="no cluster provider 'cloud': use one of local, kind, existing"):
        provider_class("cloud")
