"""Where kopf remembers the last spec it handled: a digest in one small annotation.

kopf's default keeps the whole last-handled object in an annotation. A spec near the API
server's limits does not fit in the 256 KiB annotations may hold: every patch kopf sends then
fails with 422, the finalizer is never removed and the object can never be deleted (issue 13).
Our handlers never read `old` or `diff` (they re-plan from the current spec), so a digest
says all they need: whether the spec changed since the last handled one.

The essence is the spec alone: labels and annotations (the harness's heartbeat among them)
change nothing the operator does, and tracking them costs a patch per heartbeat.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, cast

import kopf

#: The key of the digest inside the stored JSON, which marks it as ours.
DIGEST = "sha256"


def digest(essence: Any) -> str:
    encoded = json.dumps(essence, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()


class DigestDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """An annotation `<prefix>/<key>` holding `{"sha256": ...}` of the last handled spec."""

    def __init__(self, *, prefix: str, key: str) -> None:
        super().__init__(prefix=prefix, key=key, ignored_fields=["metadata"])

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        super().store(body=body, patch=patch, essence=cast(kopf.BodyEssence, {DIGEST: digest(essence)}))

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        stored = super().fetch(body=body)
        if stored is None or DIGEST not in cast(dict[str, Any], stored):
            return stored  # nothing handled yet, or a full copy left by an older operator
        current = self.build(body=body)
        # The same spec: the current essence, so kopf sees no change. Another one: an empty
        # essence (not None, which would mean "never handled" and re-run the create handler).
        same = digest(current) == cast(dict[str, Any], stored)[DIGEST]
        return current if same else cast(kopf.BodyEssence, {})
