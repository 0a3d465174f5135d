"""The packaged copies of the CRDs, for installers that have no checkout.

TestEnvironment's CRD is written by hand (crds/testenv.dev_testenvironments.yaml). The
TestEnvironmentPool CRD is made from it by `pool_crd_from` (run by `make sync-crds`), so a pool
accepts exactly the `services` a TestEnvironment does.
"""

from __future__ import annotations

import copy
from importlib import resources
from typing import Any

from testenv_api.limits import MAX_POOL_SIZE
from testenv_api.names import GROUP, POOL_CRD_NAME, POOL_KIND, POOL_PLURAL, POOL_SHORT_NAMES, VERSION

#: The first local port of a pool's port plan when its manifest sets none. Below Linux's ephemeral
#: range (32768-60999 by default): a port there may be the source port of any outgoing connection
#: on the test machine (its own to the API server included), and a forward cannot bind it then.
DEFAULT_POOL_PORT_BASE = 30000


def _load(name: str) -> dict[str, Any]:
    import yaml  # on first use: every pytest process that loads the plugin imports this package

    manifest: dict[str, Any] = yaml.safe_load(resources.files(__package__).joinpath(name).read_text())
    return manifest


def crd_manifest() -> dict[str, Any]:
    return _load("crd.yaml")


def pool_crd_manifest() -> dict[str, Any]:
    return _load("pool_crd.yaml")


def _integer(description: str, minimum: int, maximum: int, default: int) -> dict[str, Any]:
    return {
        "type": "integer",
        "minimum": minimum,
        "maximum": maximum,
        "default": default,
        "description": description,
    }


def _counter(description: str) -> dict[str, Any]:
    return {"type": "integer", "description": description}


def pool_crd_from(environment_crd: dict[str, Any]) -> dict[str, Any]:
    """The TestEnvironmentPool CRD, sharing `spec.services` (and its size rule) with `environment_crd`."""
    (version,) = environment_crd["spec"]["versions"]
    te_spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    services = copy.deepcopy(te_spec["properties"]["services"])
    service_rules = [
        r for r in te_spec.get("x-kubernetes-validations", []) if r.get("fieldPath") == ".services"
    ]
    spec: dict[str, Any] = {
        "type": "object",
        "description": "Which services every pooled worker runs, and how many the pool keeps ready.",
        "required": ["services"],
        "properties": {
            "size": _integer(
                "How many Ready, unclaimed workers the pool keeps. A TestEnvironment in this namespace "
                "whose spec.services equal the pool's claims some; the pool makes new ones in the "
                f"background. 0 to {MAX_POOL_SIZE}.",
                0,
                MAX_POOL_SIZE,
                2,
            ),
            "portBase": _integer(
                "First local port of the pool's port plan. Each worker the pool makes takes the next "
                "free block of (ports per worker) ports from here, and a claiming harness binds that "
                "worker's block on its test machine: keep the range free on CI runners, and below "
                "the machine's ephemeral port range (Linux: 32768-60999), whose ports outgoing "
                "connections take.",
                1024,
                65535,
                DEFAULT_POOL_PORT_BASE,
            ),
            "services": services,
        },
    }
    if service_rules:
        spec["x-kubernetes-validations"] = copy.deepcopy(service_rules)
    status = {
        "type": "object",
        "description": "What the operator observed; written only by the operator.",
        "properties": {
            "observedGeneration": {
                "type": "integer",
                "format": "int64",
                "description": "The metadata.generation this status describes.",
            },
            "phase": {
                "type": "string",
                "enum": ["Filling", "Ready", "Failed"],
                "description": (
                    "Ready (spec.size workers are free and ready), Filling (workers are being made "
                    "or are starting), Failed (the spec cannot be served; see message)."
                ),
            },
            "message": {"type": "string", "description": "Human-readable summary of the phase."},
            "free": _counter("Unclaimed workers, ready or starting."),
            "ready": _counter("Unclaimed workers whose services are all ready: what a claim can take now."),
            "claimed": _counter("Workers that TestEnvironments have claimed and still hold."),
        },
    }

    def column(name: str, kind: str, path: str, description: str) -> dict[str, str]:
        return {"name": name, "type": kind, "jsonPath": path, "description": description}

    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": POOL_CRD_NAME, "labels": dict(environment_crd["metadata"].get("labels") or {})},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": POOL_KIND,
                "listKind": f"{POOL_KIND}List",
                "plural": POOL_PLURAL,
                "singular": POOL_KIND.lower(),
                "shortNames": list(POOL_SHORT_NAMES),
                "categories": ["kube-testenv"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        column("Size", "integer", ".spec.size", "Ready workers the pool keeps free."),
                        column("Ready", "integer", ".status.ready", "Free workers ready to be claimed."),
                        column("Claimed", "integer", ".status.claimed", "Workers held by TestEnvironments."),
                        column("Phase", "string", ".status.phase", "Overall state of the pool."),
                        column("Age", "date", ".metadata.creationTimestamp", "Time since creation."),
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": (
                                "A TestEnvironmentPool keeps worker namespaces of one service set "
                                "provisioned and Ready, so that a matching TestEnvironment claims "
                                "them instead of waiting for new ones (a warm pool for shared CI)."
                            ),
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string", "description": "APIVersion of this object."},
                                "kind": {"type": "string", "description": "Kind of this object."},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


def pool_crd_text(environment_crd: dict[str, Any]) -> str:
    """The pool CRD as `make sync-crds` writes it."""
    import yaml

    header = (
        "# Made by `make sync-crds` (testenv_api.crd.pool_crd_from) from\n"
        "# crds/testenv.dev_testenvironments.yaml: edit that, not this. A unit test fails when this drifts.\n"
    )
    return header + yaml.safe_dump(pool_crd_from(environment_crd), sort_keys=False, width=100)
