"""The operator's settings: read from TESTENV_* variables, written once as fields, and the docs
and the chart held to those fields."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

import testenv_operator.settings as settings_module
from testenv_api import DEFAULT_MAX_WORKERS, MAX_WORKERS
from testenv_operator.settings import (
    Fences,
    Leadership,
    Limits,
    OneOf,
    Registries,
    Reporting,
    Settings,
    SettingsError,
    Tenants,
    Timing,
    Whole,
    all_variables,
    table,
    variables,
)


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


# -- settings are written once: as fields; the rest is made from them or held to them -----------

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "testenv-operator"
#: Variables the chart sets to something of its own release (its names), not a value's default.
CHART_CHOOSES = {"TESTENV_ACCESS_CLUSTERROLE", "TESTENV_LEADER_ELECTION"}
#: Variables the chart leaves unset: SIGUSR1 comes from a test run that started the operator.
NOT_IN_CHART = {"TESTENV_FINISH_SECONDS"}
FAMILY = "TESTENV_IMAGE_<TYPE>"


def test_each_setting_has_one_variable_and_one_group() -> None:
    names = [v.name for v in all_variables()]
    assert len(names) == len(set(names))
    assert all(name.startswith("TESTENV_") for name in names)
    groups = [Tenants, Limits, Fences, Registries, Timing, Leadership, Reporting]
    fields = [field for group in groups for field in variables(group)]
    assert len(fields) == len(set(fields)) == len(names), "a setting's own name is unique across groups"


def test_a_setting_is_reached_by_its_group_or_by_its_own_name() -> None:
    by_name = Settings(max_workers=8, worker_egress="open", namespaces=("a",))
    by_group = Settings(
        limits=Limits(max_workers=8), fences=Fences(worker_egress="open"), tenants=Tenants(namespaces=("a",))
    )
    assert by_name == by_group
    assert (by_name.max_workers, by_name.limits.max_workers) == (8, 8)
    assert by_name.fences.open_egress
    assert Settings(fences=Fences(worker_cpu="2"), worker_memory="2Gi").fences == Fences("2", "2Gi")
    with pytest.raises(TypeError, match="max_worker"):
        Settings(max_worker=8)
    with pytest.raises(AttributeError):
        _ = by_name.max_worker


def test_from_env_reads_every_default_when_nothing_is_set() -> None:
    assert Settings.from_env({}) == Settings()
    assert Settings().registries.images == {}


def test_a_blank_number_or_egress_is_the_default_and_an_empty_liveness_is_off() -> None:
    settings = Settings.from_env(
        {"TESTENV_RESYNC_SECONDS": " ", "TESTENV_WORKER_EGRESS": "", "TESTENV_LIVENESS": ""}
    )
    assert (settings.timing.resync_seconds, settings.fences.worker_egress) == (10, "restricted")
    assert settings.reporting.liveness == ""
    with pytest.raises(SettingsError, match="TESTENV_LOG_LEVEL='': use one of"):
        Settings.from_env({"TESTENV_LOG_LEVEL": ""})


def test_the_module_doc_and_docs_operator_md_show_the_table_of_the_fields() -> None:
    assert table() in (settings_module.__doc__ or "")
    operator_md = (ROOT / "docs" / "operator.md").read_text()
    assert table(markdown=True) in operator_md, (
        "docs/operator.md's settings table is not the fields': paste `python -m testenv_operator.settings`"
    )


def _values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


def _at(tree: dict[str, Any], path: str) -> Any:
    for key in path.split("."):
        tree = tree[key]
    return tree


def _chart_env() -> dict[str, str | None]:
    """Each variable the chart's Deployment sets -> the value it renders with the default values,
    or None where the chart chooses it from its release. A small reading of the few forms the
    template uses (helm itself renders it in tests/integration/test_chart_render.py)."""
    template = (CHART / "templates" / "deployment.yaml").read_text()
    values, env = _values(), {}
    for name, expression in re.findall(r"- name: (TESTENV_\w+)\s+value: \{\{ (.+?) \}\}", template):
        head = expression.split(" | ")[0]
        if plain := re.fullmatch(r"\.Values\.([\w.]+)", head):
            env[name] = str(_at(values, plain[1]))
        elif joined := re.fullmatch(r'join "(.)" \.Values\.([\w.]+)', head):
            env[name] = joined[1].join(_at(values, joined[2]))
        elif formatted := re.fullmatch(r'printf "([^"]*)" \(int \.Values\.([\w.]+)\)', head):
            env[name] = formatted[1] % int(_at(values, formatted[2]))
        else:
            env[name] = None
    return env


def test_the_charts_default_values_are_the_operators_defaults() -> None:
    env = _chart_env()
    by_name = {v.name: v for v in all_variables()}
    assert set(env) | NOT_IN_CHART | {FAMILY} == set(by_name), "a variable the chart does not know"
    assert {name for name, value in env.items() if value is None} == CHART_CHOOSES
    for name, value in env.items():
        if value is not None:
            assert by_name[name].value({name: value}) == by_name[name].default, name
    # The images: one value per built-in type, each empty (the operator's own default).
    images = _values()["serviceImages"]
    assert set(images) <= set(by_name[FAMILY].each)
    assert not any(images.values())


def test_the_charts_schema_allows_what_the_operator_accepts() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    template = (CHART / "templates" / "deployment.yaml").read_text()
    checked = set()
    for variable in all_variables():
        found = re.search(rf"- name: {variable.name}\s+value: \{{\{{ \.Values\.([\w.]+)", template)
        if not found or not isinstance(variable.parse, Whole | OneOf):
            continue
        node = schema
        for key in found[1].split("."):
            node = node["properties"][key]
        if isinstance(variable.parse, Whole):
            assert (node["minimum"], node["maximum"]) == (variable.parse.low, variable.parse.high), (
                variable.name
            )
        else:
            assert tuple(node["enum"]) == variable.parse.choices, variable.name
        checked.add(variable.name)
    assert {"TESTENV_MAX_WORKERS", "TESTENV_LOG_LEVEL"} <= checked


def test_the_chart_values_table_in_the_docs_says_the_operators_defaults_and_ranges() -> None:
    """docs/shared-ci-cluster.md: each row naming a variable the chart passes through shows that
    variable's default, and its range where it has one."""
    by_name = {v.name: v for v in all_variables()}
    rows = [
        line.split(" | ")
        for line in (ROOT / "docs" / "shared-ci-cluster.md").read_text().splitlines()
        if line.startswith("| `") and "TESTENV_" in line
    ]
    assert rows
    seen = set()
    for _, default, meaning in rows:
        for name in re.findall(r"`(TESTENV_[A-Z_]+)`", meaning):
            if name in CHART_CHOOSES:
                continue
            variable = by_name[name]
            shown = variable.shown or str(variable.default)
            assert shown in default.replace("`", ""), (name, default)
            if isinstance(variable.parse, Whole):
                assert str(variable.parse) in meaning, (name, meaning)
            seen.add(name)
    assert {"TESTENV_MAX_WORKERS", "TESTENV_WORKER_MEMORY", "TESTENV_RESYNC_SECONDS"} <= seen
