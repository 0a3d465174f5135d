"""The process that holds a CLI run: the plugin's run session, every worker's endpoints, the forwards.

`testenv run` and `testenv up` hold a run with this, in their own process; the pytest plugin's
controller holds one with the same `RunSession`. Once every worker is Ready, their variables are
written to the run's state file (runstate.py), where the other commands read them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from testenv_harness.frontends import exports
from testenv_harness.frontends.fault_sockets import FaultSockets
from testenv_harness.run import runstate
from testenv_harness.run.options import RunOptions
from testenv_harness.run.runstate import RunState
from testenv_harness.run.session import RunSession
from testenv_harness.worker.testenv import TestEnv


class Holder:
    """Sets one named run up (`start`) and tears it down (`stop`, also after a failed start)."""

    def __init__(
        self,
        name: str,
        options: RunOptions,
        *,
        command: str,
        forward: bool,
        report: Callable[[str], None],
        log: Path | None = None,
    ) -> None:
        self.options = options
        self.forward = forward
        self.report = report
        self.session: RunSession | None = None
        self.envs: list[TestEnv] = []
        self.fault_sockets: FaultSockets | None = None
        self.state = RunState(
            name=name,
            pid=os.getpid(),
            command=command,
            workers=options.workers,
            cluster=f"{options.provider} {options.cluster_name}",
            operator=options.operator,
            forwarded=forward,
            log=str(log or ""),
        )

    @property
    def run_dir(self) -> Path | None:
        return self.session.run_dir if self.session is not None else None

    def start(self) -> RunState:
        runstate.claim(self.state)
        self.session = RunSession(self.options, self.report)
        try:
            handoff = self.session.start()
            self.state.handoff = dataclasses.asdict(handoff)
            self.state.uid = self.session.uid
            self.state.operator = "subprocess" if self.session.operator is not None else "cluster"
            runstate.save(self.state)
            self.envs = [TestEnv(handoff, slot) for slot in range(self.options.workers)]
            with ThreadPoolExecutor(max_workers=len(self.envs)) as pool:
                list(pool.map(self._connect, self.envs))
            if self.forward:  # `testenv fault` reaches the forwards through these
                self.fault_sockets = FaultSockets(self.state, self.envs)
        except Exception as exc:
            self.state.phase, self.state.message = runstate.FAILED, str(exc).splitlines()[0]
            runstate.save(self.state)
            raise
        self.state.environments = {str(env.worker): exports.worker_variables(env) for env in self.envs}
        self.state.phase = runstate.READY
        runstate.save(self.state)
        what = "forwarded on this machine" if self.forward else "ready (`testenv forward --worker I`)"
        self.report(f"run {self.state.name!r}: {self.options.workers} worker(s) {what}")
        return self.state

    def _connect(self, env: TestEnv) -> None:
        if self.forward:
            env.wait_and_forward()
        else:
            env.wait_ready()

    def variables(self) -> dict[str, str]:
        """What the run's command gets: every worker's variables (see exports.py)."""
        return exports.run_variables(self.state.name, self.state.environments)

    def stop(self) -> None:
        """Close the forwards, delete the environment, forget the run (a second call does nothing)."""
        if self.fault_sockets is not None:
            self.fault_sockets.close()
            self.fault_sockets = None
        for env in self.envs:
            with contextlib.suppress(Exception):
                env.close()
        self.envs = []
        try:
            if self.session is not None:
                current, self.session = self.session, None
                summary = current.stop()
                if summary and current.name:  # nothing to report when nothing was created
                    self.report(summary)
                current.remove_run_dir()
        finally:
            runstate.remove(self.state.name, self.state.pid)
