"""The operator as a local process, `python -m testenv_operator`, as users run it.

The harness runs it this way for clusters it makes; the integration tests and the benchmarks do
too. Its liveness endpoint listens on a free loopback port, and `start` returns only once that
answers; its metrics endpoint listens on another (several operators may run on one machine, so
neither has a fixed port). The kernel sends it SIGTERM when the thread that started it exits, so
a run killed with -9 takes its operator along (kopf still stops cleanly on SIGTERM).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from testenv_harness.ground import children
from testenv_harness.ground.errors import ClusterError
from testenv_harness.ground.localports import free_port
from testenv_harness.ground.waiting import WaitTimeoutError, wait_for

#: What the operator logs when it takes SIGUSR1 (testenv_operator.finishing.TAKEN: the harness
#: and the operator share no code, only this contract).
FINISHING = '"finishing:'


class OperatorProcess:
    """One operator process (restartable) writing its log to `log`, appended to across restarts."""

    def __init__(self, kubeconfig: Path | None, log: Path, *, clean: bool = False, **settings: str) -> None:
        """`settings` are TESTENV_* variables; `clean` drops those of this process's environment
        first, so that only `settings` configure the operator (a benchmark must be reproducible).
        Without a kubeconfig, the operator uses the pod's ServiceAccount token, as this process does."""
        self.port = free_port()
        self.metrics_port = free_port()
        self.log = log
        inherited = {k: v for k, v in os.environ.items() if not (clean and k.startswith("TESTENV_"))}
        where = {"KUBECONFIG": str(kubeconfig)} if kubeconfig is not None else {}
        endpoints = {"TESTENV_LIVENESS": self.healthz, "TESTENV_METRICS": self.metrics}
        self.env = {**inherited, **where, **endpoints, **settings}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def healthz(self) -> str:
        return f"http://127.0.0.1:{self.port}/healthz"

    @property
    def metrics(self) -> str:
        """Where it serves its Prometheus metrics (unless `settings` turned them off or moved them)."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self, timeout: float = 60) -> OperatorProcess:
        """Start it and wait until it is healthy; ClusterError with its log's end otherwise."""
        with self.log.open("ab") as handle:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "testenv_operator"],
                env=self.env,
                stdout=handle,
                stderr=handle,
                stdin=subprocess.DEVNULL,
                # Out of the run's process group: a terminal's Ctrl-C must not stop it before the
                # teardown that needs it to remove its finalizer; `stop` and PDEATHSIG end it.
                start_new_session=True,
                preexec_fn=children.dies_with_parent(signal.SIGTERM),
            )
        try:
            wait_for(
                self._answers,
                timeout=timeout,
                what=f"the operator to answer {self.healthz}",
                retry=(OSError,),
            )
        except (ClusterError, WaitTimeoutError) as exc:
            self.stop()
            raise ClusterError(
                f"the operator did not start: {exc}; the end of its log ({self.log}):\n{self.tail()}"
            ) from exc
        return self

    def _answers(self) -> bool:
        if not self.alive():
            raise ClusterError(f"it exited with code {self.proc.returncode if self.proc else None}")
        with urllib.request.urlopen(self.healthz, timeout=1) as response:
            return bool(response.status == 200)

    def healthy(self) -> bool:
        try:
            return self._answers()
        except (ClusterError, OSError):
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def finish_in_background(self, timeout: float = 5) -> bool:
        """Ask it to finish the deletions under way on its own and exit when done (SIGUSR1).

        True once it said so in its log: from then on it outlives this process, and exits by
        itself (after TESTENV_FINISH_SECONDS at most). False if it did not take the request in
        `timeout` seconds (or already exited): the caller must wait for the deletion and `stop` it.
        """
        if not self.alive():
            return False
        assert self.proc is not None
        start = self.log.stat().st_size if self.log.exists() else 0
        self.proc.send_signal(signal.SIGUSR1)

        def taken() -> bool:
            if not self.alive():
                raise ClusterError("it exited")
            with self.log.open("rb") as handle:
                handle.seek(start)
                return FINISHING.encode() in handle.read()

        try:
            wait_for(taken, timeout=timeout, what="the operator to take the request to finish", interval=0.02)
        except (ClusterError, WaitTimeoutError):
            return False
        return True

    def stop(self) -> None:
        """SIGTERM, and SIGKILL if it is still there 15 seconds later."""
        if self.proc is not None:
            children.stop(self.proc, grace=15)

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, as when a node dies."""
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)

    def tail(self, lines: int = 40) -> str:
        """The last lines of its log."""
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
