"""The orphan sweep: managed namespaces whose owning TestEnvironment (or pool) is gone are deleted.

An owner is looked up by UID, never by the name label (a label may hold a truncated name), with
one metadata-only list per owner namespace.
"""

from __future__ import annotations

import logging

from kubernetes import client

from testenv_api import LABEL_MANAGED_BY, LABEL_OWNER_NAMESPACE, LABEL_OWNER_UID, MANAGED_BY
from testenv_operator import kubeio

log = logging.getLogger(__name__)


def sweep_orphans(api: client.ApiClient, watched: tuple[str, ...] = ()) -> list[str]:
    """Delete managed namespaces whose owning TestEnvironment (by UID) no longer exists.

    With `watched` namespaces, only namespaces owned from those are judged: another operator
    (or release) serves the rest, and this one may not even be allowed to read their owners.
    """
    removed = []
    owners: dict[str, set[str] | None] = {}  # owner namespace -> UIDs of its environments
    for ns in kubeio.list_labelled(api, "Namespace", f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_OWNER_UID}"):
        meta = ns["metadata"]
        labels = meta.get("labels") or {}
        owner_namespace = labels.get(LABEL_OWNER_NAMESPACE, "")
        if meta.get("deletionTimestamp") or (watched and owner_namespace not in watched):
            continue
        if owner_namespace not in owners:
            try:
                # A pool's free workers are owned by the pool (claimed ones by their claimer).
                owners[owner_namespace] = kubeio.environment_uids(api, owner_namespace) | kubeio.pool_uids(
                    api, owner_namespace
                )
            except kubeio.ForbiddenError:
                owners[owner_namespace] = None  # not ours to judge
        uids = owners[owner_namespace]
        if uids is not None and labels[LABEL_OWNER_UID] not in uids:
            kubeio.delete(api, "Namespace", meta["name"])
            removed.append(meta["name"])
    if removed:
        log.info("deleted orphaned namespaces: %s", ", ".join(removed))
    return removed
