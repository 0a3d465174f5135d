"""The Secrets a TestEnvironment (or a pool) references, copied only where their owners shared them.

The operator can read every Secret; a tenant may not. So only a Secret labelled
LABEL_SHAREABLE=true, which only someone allowed to write it can set, is copied into workers, and
only the keys the spec references. Blocking, like the reconciler that calls it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubernetes import client

from testenv_api import LABEL_SHAREABLE
from testenv_operator import kubeio, manifests
from testenv_operator.manifests import Obj, Owner
from testenv_operator.validation import Problem


def shared_secrets(
    api: client.ApiClient, owner: Owner, spec: Mapping[str, Any]
) -> tuple[list[Obj], list[Problem]]:
    """The referenced Secrets of `owner`'s namespace cut down to the referenced keys, and a
    problem for each that is missing, not shared or lacks a key."""
    found, problems = [], []
    for name, keys in manifests.referenced_secrets(spec["services"]).items():
        secret = kubeio.read_secret(api, owner.namespace, name)
        labels = ((secret or {}).get("metadata") or {}).get("labels") or {}
        data = (secret or {}).get("data") or {}
        later = "(provisioning continues as soon as it is done)"
        if secret is None:
            why = f"does not exist in namespace {owner.namespace}: create it {later}"
        elif labels.get(LABEL_SHAREABLE) != "true":
            why = (
                f"is not shared with TestEnvironments: someone allowed to write Secrets in "
                f"{owner.namespace} must label it {LABEL_SHAREABLE}=true {later}"
            )
        elif missing := [key for key in keys if key not in data]:
            why = f"has no key {', '.join(map(repr, missing))}: add it or fix the reference {later}"
        else:
            found.append({**secret, "data": {key: data[key] for key in keys}})
            continue
        problems.append(Problem("spec.services[*]", f"Secret {name!r} is referenced but {why}"))
    return found, problems
