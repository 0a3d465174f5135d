from __future__ import annotations

import pytest

from testenv_api import DEFAULT_MAX_WORKERS, MAX_WORKERS
from testenv_operator.settings import Settings, SettingsError


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.namespaces == ()
    assert settings.max_workers == DEFAULT_MAX_WORKERS
    assert settings.images == {}
    assert settings.finish_seconds == 120


def test_environment_overrides() -> None:
    settings = Settings.from_env(
        {
            "TESTENV_NAMESPACES": "team-a, team-b",
            "TESTENV_MAX_WORKERS": "8",
            "TESTENV_IMAGE_REDIS": "valkey/valkey:8.1",
            "TESTENV_LOG_LEVEL": "debug",
            "TESTENV_WORKER_EGRESS": "Open",
            "TESTENV_ALLOWED_REGISTRIES": " registry.example.com:5000 , ghcr.io/acme/ ,",
            "TESTENV_FINISH_SECONDS": "30",
        }
    )
    assert settings.finish_seconds == 30
    assert settings.worker_egress == "open"
    assert settings.allowed_registries == ("registry.example.com:5000", "ghcr.io/acme")
    assert settings.namespaces == ("team-a", "team-b")
    assert settings.max_workers == 8
    assert settings.images == {"redis": "valkey/valkey:8.1"}
    assert settings.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TESTENV_MAX_WORKERS": "many"}, "TESTENV_MAX_WORKERS='many' is not a whole number"),
        ({"TESTENV_MAX_WORKERS": "0"}, rf"out of range: use 1\.\.{MAX_WORKERS}"),
        ({"TESTENV_MAX_WORKERS": str(MAX_WORKERS + 1)}, "out of range"),
        ({"TESTENV_LOG_LEVEL": "LOUD"}, "use one of DEBUG"),
        ({"TESTENV_FINISH_SECONDS": "0"}, r"TESTENV_FINISH_SECONDS=0 is out of range: use 1\.\.3600"),
        ({"TESTENV_WORKER_EGRESS": "closed"}, "TESTENV_WORKER_EGRESS='closed': use one of restricted, open"),
        ({"TESTENV_ALLOWED_REGISTRIES": "ghcr.io/acme/api:1.2"}, "names an image, not a registry"),
        ({"TESTENV_ALLOWED_REGISTRIES": "ghcr.io/acme/api@sha256:ab"}, "names an image, not a registry"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_leader_election_names_a_lease_as_namespace_and_name() -> None:
    assert Settings.from_env({}).leader_election is None
    chosen = Settings.from_env({"TESTENV_LEADER_ELECTION": "testenv-system/testenv-operator"})
    assert chosen.leader_election == ("testenv-system", "testenv-operator")
    for bad in ("testenv-operator", "/x", "a/b/c"):
        with pytest.raises(SettingsError, match="namespace/name"):
            Settings.from_env({"TESTENV_LEADER_ELECTION": bad})
