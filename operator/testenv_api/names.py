"""API group, resource names, label/annotation keys, and the phases and condition types of status."""

from __future__ import annotations

import enum

GROUP = "testenv.dev"
VERSION = "v1alpha1"
KIND = "TestEnvironment"
PLURAL = "testenvironments"
SHORT_NAMES = ("testenv", "te")
CRD_NAME = f"{PLURAL}.{GROUP}"
#: A warm pool: worker namespaces kept provisioned and Ready for TestEnvironments to claim.
POOL_KIND = "TestEnvironmentPool"
POOL_PLURAL = "testenvironmentpools"
POOL_SHORT_NAMES = ("tepool",)
POOL_CRD_NAME = f"{POOL_PLURAL}.{GROUP}"

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "kube-testenv"
#: metadata.uid of the owning TestEnvironment: the only proof of ownership the operator trusts.
LABEL_OWNER_UID = f"{GROUP}/owner-uid"
LABEL_OWNER_NAME = f"{GROUP}/owner-name"
LABEL_OWNER_NAMESPACE = f"{GROUP}/owner-namespace"
LABEL_WORKER = f"{GROUP}/worker"
LABEL_SERVICE = f"{GROUP}/service"
#: Set by the harness on environments it creates, so a reaper can find one run's leftovers.
LABEL_RUN_ID = f"{GROUP}/run-id"
#: On a Secret, "true": TestEnvironments of its namespace may copy (the keys they name of) it
#: into their workers. Only someone who can write the Secret can set it, so a spec never
#: reads through the operator what its author could not read.
LABEL_SHAREABLE = f"{GROUP}/shareable"
#: On a test runner's pod (value "true"): the worker namespaces of environments in the pod's own
#: namespace admit its connections (a CI job inside the cluster connecting directly).
LABEL_RUNNER = f"{GROUP}/runner"

#: On a pooled worker namespace: the UID of the TestEnvironmentPool that made it. It stays when a
#: TestEnvironment claims the namespace (then LABEL_OWNER_UID names the claimer); the objects
#: inside keep the pool's owner labels, as their selectors cannot change.
LABEL_POOL_UID = f"{GROUP}/pool-uid"
#: On a pooled worker namespace: the pool's name, and the first local port of its slot's port block.
ANNOTATION_POOL_NAME = f"{GROUP}/pool"
ANNOTATION_PORT_BASE = f"{GROUP}/port-base"

#: RFC 3339 time the harness renews while tests run (see spec.lifetime.heartbeatTimeoutSeconds).
ANNOTATION_HEARTBEAT = f"{GROUP}/heartbeat"
#: On each service pod: its spec.services type, which the local data plane runs the pod as.
ANNOTATION_SERVICE_TYPE = f"{GROUP}/service-type"
#: On the pod of a service with `faultProxy: true`: the Toxiproxy sidecar's proxies, as the JSON
#: list its `-config` file holds (the file is this annotation, through a downward API volume).
ANNOTATION_FAULT_PROXIES = f"{GROUP}/fault-proxies"
FINALIZER = f"{GROUP}/cleanup"


class Phase(enum.StrEnum):
    PENDING = "Pending"
    PROVISIONING = "Provisioning"
    READY = "Ready"
    DEGRADED = "Degraded"
    FAILED = "Failed"
    TERMINATING = "Terminating"


class ConditionType(enum.StrEnum):
    """status.conditions[].type: the spec's validity, and whether every worker is ready."""

    SPEC_VALID = "SpecValid"
    READY = "Ready"
