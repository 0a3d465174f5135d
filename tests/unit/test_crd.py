"""The CRD is the contract: one source, identical copies, and a description on every field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

import testenv_api
from testenv_api.crd import pool_crd_text
from testenv_api.limits import MAX_POOL_SIZE

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "crds" / "testenv.dev_testenvironments.yaml"
COPIES = [
    ROOT / "operator" / "testenv_api" / "crd.yaml",
    ROOT / "charts" / "testenv-operator" / "crds" / "testenv.dev_testenvironments.yaml",
]


def _crd() -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load(SOURCE.read_text())
    return crd


@pytest.mark.parametrize("copy", COPIES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_copy_matches_the_source(copy: Path) -> None:
    assert copy.read_bytes() == SOURCE.read_bytes(), f"{copy} drifted from {SOURCE}: run `make sync-crds`"


def test_packaged_copy_loads_as_the_same_object() -> None:
    assert testenv_api.crd_manifest() == _crd()


def test_names_match_the_contract_module() -> None:
    spec = _crd()["spec"]
    assert _crd()["metadata"]["name"] == testenv_api.CRD_NAME
    assert spec["group"] == testenv_api.GROUP
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == testenv_api.KIND
    assert spec["names"]["plural"] == testenv_api.PLURAL
    assert tuple(spec["names"]["shortNames"]) == testenv_api.SHORT_NAMES
    (version,) = spec["versions"]
    assert version["name"] == testenv_api.VERSION
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase"
    assert columns["Ready"] == ".status.readyWorkers"


def test_service_type_enum_matches_the_contract_module() -> None:
    schema = _crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    service = schema["properties"]["spec"]["properties"]["services"]["items"]
    assert tuple(service["properties"]["type"]["enum"]) == testenv_api.SERVICE_TYPES


def test_status_phase_enum_matches_the_contract_module() -> None:
    schema = _crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    phases = schema["properties"]["status"]["properties"]["phase"]["enum"]
    assert phases == [p.value for p in testenv_api.Phase]


def test_limits_and_port_defaults_match_the_contract_module() -> None:
    schema = _crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec = schema["properties"]["spec"]["properties"]
    assert spec["workers"]["maximum"] == testenv_api.MAX_WORKERS
    assert spec["portBase"]["default"] == testenv_api.DEFAULT_PORT_BASE
    assert spec["portBase"]["maximum"] == testenv_api.MAX_PORT


def _undocumented(schema: dict[str, Any], path: str) -> list[str]:
    missing = [] if schema.get("description") or path.endswith(".metadata") else [path]
    for name, child in schema.get("properties", {}).items():
        missing += _undocumented(child, f"{path}.{name}")
    if "items" in schema:
        missing += _undocumented(schema["items"], f"{path}[]")
    return missing


def test_every_field_has_a_description_for_kubectl_explain() -> None:
    schema = _crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    # Quantity maps (additionalProperties) and leaf list items of plain strings are exempt.
    missing = [p for p in _undocumented(schema, "") if not p.endswith(("[]",))]
    assert missing == []


# -- the TestEnvironmentPool CRD, made from this one -------------------------------------------

POOL_SOURCE = ROOT / "crds" / "testenv.dev_testenvironmentpools.yaml"
POOL_COPIES = [
    ROOT / "operator" / "testenv_api" / "pool_crd.yaml",
    ROOT / "charts" / "testenv-operator" / "crds" / "testenv.dev_testenvironmentpools.yaml",
]


def test_pool_crd_is_made_from_the_environment_crd() -> None:
    assert POOL_SOURCE.read_text() == pool_crd_text(_crd()), "run `make sync-crds`"
    for copy in POOL_COPIES:
        assert copy.read_bytes() == POOL_SOURCE.read_bytes(), f"{copy} drifted: run `make sync-crds`"
    assert testenv_api.pool_crd_manifest() == yaml.safe_load(POOL_SOURCE.read_text())


def test_a_pool_accepts_exactly_the_services_an_environment_does() -> None:
    def spec_of(crd: dict[str, Any]) -> dict[str, Any]:
        spec: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        return spec

    pool, environment = spec_of(testenv_api.pool_crd_manifest()), spec_of(_crd())
    assert pool["properties"]["services"] == environment["properties"]["services"]
    size_rule = [r for r in environment["x-kubernetes-validations"] if r.get("fieldPath") == ".services"]
    assert size_rule
    assert pool["x-kubernetes-validations"] == size_rule
    assert pool["properties"]["size"]["maximum"] == MAX_POOL_SIZE
    names = testenv_api.pool_crd_manifest()["spec"]["names"]
    assert (names["kind"], names["plural"]) == (testenv_api.POOL_KIND, testenv_api.POOL_PLURAL)
    assert testenv_api.pool_crd_manifest()["metadata"]["name"] == testenv_api.POOL_CRD_NAME


def test_every_pool_field_has_a_description() -> None:
    schema = testenv_api.pool_crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert [p for p in _undocumented(schema, "") if not p.endswith("[]")] == []


def test_no_short_name_is_also_a_category() -> None:
    """kubectl expands a category before a short name: `kubectl get testenv` listed pools too
    while `testenv` was both. Now it lists environments; `kubectl get kube-testenv` lists both."""
    import testenv_api

    names = [m["spec"]["names"] for m in (testenv_api.crd_manifest(), testenv_api.pool_crd_manifest())]
    categories = {c for n in names for c in n.get("categories", [])}
    short_names = {s for n in names for s in n.get("shortNames", [])}
    assert categories == {"kube-testenv"}
    assert not categories & short_names
    assert "testenv" in names[0]["shortNames"]
