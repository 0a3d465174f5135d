"""What differs between cluster providers is asked of the provider, never of its name."""

from __future__ import annotations

import pytest

from testenv_harness.provision.clusters import PROVIDERS, provider_class

# Per provider: who runs the operator by default, and whether its pods are only simulated.
EXPECTED = {
    "local": ("subprocess", True),
    "kind": ("subprocess", False),
    "existing": ("cluster", False),
}


def test_every_provider_is_registered() -> None:
    assert set(PROVIDERS) == set(EXPECTED)


@pytest.mark.parametrize("name", EXPECTED)
def test_operator_and_pods(name: str) -> None:
    provider = provider_class(name)
    assert (provider.default_operator, provider.simulated_pods) == EXPECTED[name]


def test_an_unknown_provider_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="no cluster provider 'cloud': use one of local, kind, existing"):
        provider_class("cloud")
