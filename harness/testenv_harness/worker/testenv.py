"""`TestEnv`: one worker's services (connection), its isolation helpers and its faults
(restarts and resets; network faults on its forwards)."""

from __future__ import annotations

from testenv_harness.worker.faults import Faults
from testenv_harness.worker.handoff import Handoff
from testenv_harness.worker.isolation import Isolation
from testenv_harness.worker.network_faults import NetworkFaults


class TestEnv(Faults, NetworkFaults, Isolation):
    """The services of one worker slot, and the helpers that keep its tests apart from others'."""

    __test__ = False

    def __init__(self, handoff: Handoff, worker: int) -> None:
        Faults.__init__(self, handoff, worker)
        Isolation.__init__(self, handoff, worker)

    def environment(self) -> dict[str, str]:
        """The variables exported for the code under test (documented in docs/harness.md)."""
        return super().environment() | {"TESTENV_TOPIC_PREFIX": self.topic("")}
