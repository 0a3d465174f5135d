"""Names of the namespaces the operator creates: deterministic, at most 63 characters, unique.

A worker namespace looks like `te-<namespace>-<name>-<digest>-w<index>`. The readable part is
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


def worker_namespace(namespace: str, name: str, uid: str, index: int) -> str:
    if index < 0:
        raise ValueError(f"worker index must be >= 0, got {index}")
    tail = f"-{_digest(namespace, name, uid)}-w{index}"
    stem = _UNSAFE.sub("-", f"te-{namespace}-{name}".lower())
    stem = stem[: MAX_NAME - len(tail)].rstrip("-")
    return stem + tail
