"""Names of the namespaces the operator creates: deterministic, at most 63 characters, unique.

A worker namespace looks like `te-<namespace>-<name>-<digest>-w<index>`, a pooled one
`tp-<namespace>-<pool>-<digest>-<token>`. The readable part is
cut to fit; the digest of the owner's namespace, name and UID keeps two environments whose
names share a long prefix (or a deleted and recreated environment) from ever colliding.
"""

from __future__ import annotations

import hashlib
import re

MAX_NAME = 63
_UNSAFE = re.compile(r"[^a-z0-9-]+")


def _digest(namespace: str, name: str, uid: str) -> str:
    return hashlib.sha256(f"{namespace}/{name}/{uid}".encode()).hexdigest()[:6]


def _fit(prefix: str, namespace: str, name: str, tail: str) -> str:
    stem = _UNSAFE.sub("-", f"{prefix}-{namespace}-{name}".lower())
    return stem[: MAX_NAME - len(tail)].rstrip("-") + tail


def worker_namespace(namespace: str, name: str, uid: str, index: int) -> str:
    if index < 0:
        raise ValueError(f"worker index must be >= 0, got {index}")
    return _fit("te", namespace, name, f"-{_digest(namespace, name, uid)}-w{index}")


def pool_namespace(namespace: str, name: str, uid: str, token: str) -> str:
    """A pooled worker's namespace, `tp-<namespace>-<pool>-<digest>-<token>`: the token (random)
    tells apart the workers one pool makes over its life, as claimed ones leave and others refill."""
    if not re.fullmatch(r"[a-z0-9]{1,10}", token):
        raise ValueError(f"token must be 1-10 lowercase letters or digits, got {token!r}")
    return _fit("tp", namespace, name, f"-{_digest(namespace, name, uid)}-{token}")
