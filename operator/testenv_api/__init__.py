"""The contract between the operator and the harness: API names, label keys, phases and condition
types, limits, service ports and the local-port plan, status layout.

Both sides import this package and nothing else from each other. The CRD it ships
(`crd.yaml`) is a copy of crds/testenv.dev_testenvironments.yaml kept identical by
`make sync-crds` and checked by a unit test.
"""

from __future__ import annotations

from testenv_api.crd import crd_manifest
from testenv_api.limits import DEFAULT_MAX_WORKERS, MAX_WORKERS
from testenv_api.names import (
    ANNOTATION_HEARTBEAT,
    ANNOTATION_SERVICE_TYPE,
    CRD_NAME,
    FINALIZER,
    GROUP,
    KIND,
    LABEL_MANAGED_BY,
    LABEL_OWNER_NAME,
    LABEL_OWNER_NAMESPACE,
    LABEL_OWNER_UID,
    LABEL_RUN_ID,
    LABEL_SERVICE,
    LABEL_SHAREABLE,
    LABEL_WORKER,
    MANAGED_BY,
    PLURAL,
    SERVICE_TYPES,
    SHORT_NAMES,
    VERSION,
    ConditionType,
    Phase,
)
from testenv_api.ports import (
    DEFAULT_PORT_BASE,
    MAX_PORT,
    PlannedPort,
    PortPlanError,
    local_ports,
    plan_ports,
    ports_needed,
)
from testenv_api.services import (
    KAFKA_CLUSTER_ID,
    KAFKA_CONTROLLER_PORT,
    KAFKA_EXTERNAL_PORT,
    KAFKA_INTERNAL_PORT,
    SERVICE_PORTS,
    kafka_environment,
    primary_port,
    service_ports,
)

__all__ = [
    "ANNOTATION_HEARTBEAT",
    "ANNOTATION_SERVICE_TYPE",
    "CRD_NAME",
    "DEFAULT_MAX_WORKERS",
    "DEFAULT_PORT_BASE",
    "FINALIZER",
    "GROUP",
    "KAFKA_CLUSTER_ID",
    "KAFKA_CONTROLLER_PORT",
    "KAFKA_EXTERNAL_PORT",
    "KAFKA_INTERNAL_PORT",
    "KIND",
    "LABEL_MANAGED_BY",
    "LABEL_OWNER_NAME",
    "LABEL_OWNER_NAMESPACE",
    "LABEL_OWNER_UID",
    "LABEL_RUN_ID",
    "LABEL_SERVICE",
    "LABEL_SHAREABLE",
    "LABEL_WORKER",
    "MANAGED_BY",
    "MAX_PORT",
    "MAX_WORKERS",
    "PLURAL",
    "SERVICE_PORTS",
    "SERVICE_TYPES",
    "SHORT_NAMES",
    "VERSION",
    "ConditionType",
    "Phase",
    "PlannedPort",
    "PortPlanError",
    "crd_manifest",
    "kafka_environment",
    "local_ports",
    "plan_ports",
    "ports_needed",
    "primary_port",
    "service_ports",
]
