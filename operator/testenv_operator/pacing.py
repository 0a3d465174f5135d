"""How long an environment's daemon sleeps before its next pass, unless an event wakes it sooner.

The cost of a pass must follow what can change, or a tenant with many broken environments slows
every other tenant (issue 13): an environment whose spec is invalid or over a namespace limit
can only change when its own spec changes or a sibling goes, and both wake it at once.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

from testenv_api import ConditionType, Phase

#: While workers are being provisioned, with nothing but this poll to see them turn ready (an
#: operator serving some namespaces does not watch its workers' namespaces).
PROVISIONING_SECONDS = 1.0
#: While provisioning where Deployment and Namespace events wake the environment at once (an
#: operator serving the whole cluster): the poll is only a safety net. At 1 s, a fleet of 400
#: environments made at once kept every pass place busy with polls, and first applies waited.
PUSHED_PROVISIONING_SECONDS = 5.0
#: A refused spec waits for a wake-up; this is only the safety net.
REFUSED_SECONDS = 300.0


#: Ready-condition reasons of environments waiting on something outside their own objects.
WAITING_OUTSIDE = ("SecretMissing", "ApplyRefused")


def ready_interval(
    resync_seconds: float,
    held: int,
    resyncs_per_second: float,
    spread: Callable[[float, float], float] = random.uniform,
) -> float:
    """How often a Ready environment of a clusterwide operator passes when nothing wakes it: its
    resync interval, or, when the operator holds more environments than its resync budget covers
    in that interval, about when the budget can grant it a full resync (500 environments at 5 a
    second: every 100 s, give or take a tenth, so they do not all come back together). Between
    full resyncs such a pass only reads the watches, and any change they see wakes the
    environment at once: passing more often finds nothing new."""
    fleet = held / resyncs_per_second
    return resync_seconds if fleet <= resync_seconds else fleet * spread(0.9, 1.1)


def _condition(status: Mapping[str, Any], kind: ConditionType) -> Mapping[str, Any]:
    found = [c for c in status.get("conditions") or [] if c.get("type") == kind]
    return found[-1] if found else {}


def seconds_to_next_pass(
    status: Mapping[str, Any], resync_seconds: float, to_expiry: float, pushed: bool = False
) -> float:
    """The sleep after a pass that left `status`; never past the environment's expiry.

    - spec refused (invalid, over a limit): REFUSED_SECONDS, since events wake it;
    - Ready, or waiting on something outside (a Secret, a namespace held by someone else, a
      refused apply): the resync interval;
    - provisioning: PROVISIONING_SECONDS, or PUSHED_PROVISIONING_SECONDS when `pushed` (the
      watches wake it as its workers turn ready).
    """
    phase = status.get("phase")
    if phase == Phase.FAILED and _condition(status, ConditionType.SPEC_VALID).get("status") == "False":
        wait = REFUSED_SECONDS
    elif phase in (Phase.READY, Phase.FAILED) or _condition(status, ConditionType.READY).get("reason") in (
        WAITING_OUTSIDE
    ):
        wait = float(resync_seconds)
    else:
        wait = PUSHED_PROVISIONING_SECONDS if pushed else PROVISIONING_SECONDS
    return max(PROVISIONING_SECONDS, min(wait, to_expiry))
