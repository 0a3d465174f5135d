"""The fault sockets of the workers a process forwards for the `testenv` command (cli_faults.py):
one per worker, in the run's private folder, closed together when the forwards stop."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from testenv_harness.run import runstate
from testenv_harness.run.runstate import RunState
from testenv_harness.worker.fault_control import FaultControl
from testenv_harness.worker.network_faults import NetworkFaults


class FaultSockets:
    """The fault sockets of the workers this process forwards, closed together."""

    def __init__(self, state: RunState, envs: Sequence[NetworkFaults]) -> None:
        self.controls: list[FaultControl] = []
        try:
            for env in envs:
                self.controls.append(FaultControl(env, runstate.fault_socket(state, env.worker)))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for control in self.controls:
            control.close()
        if self.controls:
            with contextlib.suppress(OSError):  # the last process of the run to go removes the folder
                self.controls[0].path.parent.rmdir()
        self.controls = []
