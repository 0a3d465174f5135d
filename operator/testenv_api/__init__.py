"""The contract between the operator and the harness: API names, label keys, status layout.

Both sides import this package and nothing else from each other. The CRD it ships
(`crd.yaml`) is a copy of crds/testenv.dev_testenvironments.yaml kept identical by
`make sync-crds` and checked by a unit test.
"""

from __future__ import annotations

from testenv_api.crd import crd_manifest
from testenv_api.names import (
    ANNOTATION_HEARTBEAT,
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
    LABEL_WORKER,
    MANAGED_BY,
    PLURAL,
    SERVICE_TYPES,
    SHORT_NAMES,
    VERSION,
    Phase,
)

__all__ = [
    "ANNOTATION_HEARTBEAT",
    "CRD_NAME",
    "FINALIZER",
    "GROUP",
    "KIND",
    "LABEL_MANAGED_BY",
    "LABEL_OWNER_NAME",
    "LABEL_OWNER_NAMESPACE",
    "LABEL_OWNER_UID",
    "LABEL_RUN_ID",
    "LABEL_SERVICE",
    "LABEL_WORKER",
    "MANAGED_BY",
    "PLURAL",
    "SERVICE_TYPES",
    "SHORT_NAMES",
    "VERSION",
    "Phase",
    "crd_manifest",
]
