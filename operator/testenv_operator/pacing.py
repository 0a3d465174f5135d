"""How long an environment's daemon sleeps before its next pass, unless an event wakes it sooner.

The cost of a pass must follow what can change, or a tenant with many broken environments slows
every other tenant (issue 13): an environment whose spec is invalid or over a namespace limit
can only change when its own spec changes or a sibling goes, and both wake it at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from testenv_api import ConditionType, Phase

#: While workers are being provisioned: readiness is also pushed by Deployment events.
PROVISIONING_SECONDS = 1.0
#: A refused spec waits for a wake-up; this is only the safety net.
REFUSED_SECONDS = 300.0


#: Ready-condition reasons of environments waiting on something outside their own objects.
WAITING_OUTSIDE = ("SecretMissing", "ApplyRefused")


def _condition(status: Mapping[str, Any], kind: ConditionType) -> Mapping[str, Any]:
    found = [c for c in status.get("conditions") or [] if c.get("type") == kind]
    return found[-1] if found else {}


def seconds_to_next_pass(status: Mapping[str, Any], resync_seconds: float, to_expiry: float) -> float:
    """The sleep after a pass that left `status`; never past the environment's expiry.

    - spec refused (invalid, over a limit): REFUSED_SECONDS, since events wake it;
    - Ready, or waiting on something outside (a Secret, a namespace held by someone else, a
      refused apply): the resync interval;
    - provisioning: PROVISIONING_SECONDS.
    """
    phase = status.get("phase")
    if phase == Phase.FAILED and _condition(status, ConditionType.SPEC_VALID).get("status") == "False":
        wait = REFUSED_SECONDS
    elif phase in (Phase.READY, Phase.FAILED) or _condition(status, ConditionType.READY).get("reason") in (
        WAITING_OUTSIDE
    ):
        wait = float(resync_seconds)
    else:
        wait = PROVISIONING_SECONDS
    return max(PROVISIONING_SECONDS, min(wait, to_expiry))
