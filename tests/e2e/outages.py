"""Outages of the local cluster's control plane: one component killed and started again.

kwokctl has no command to restart one component, so this does what a crashed-and-restarted
process looks like: SIGKILL, a pause, then the same command line, working folder and environment
again, its output appended to the component's log and its pid file updated (kwokctl stops and
deletes the cluster by those files).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from testenv_harness.ground.waiting import wait_for


def pid_of(cluster_dir: Path, component: str) -> int:
    """The pid of the cluster's running `component`."""
    binary = str(cluster_dir / "bin" / component).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0] == binary:
            return int(entry.name)
    raise LookupError(f"no {component} process of {cluster_dir} is running")


def is_gone(pid: int) -> bool:
    """Whether process `pid` has ended (a zombie counts: killed, not yet reaped by its parent)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"


def restart(cluster_dir: Path, component: str, down_seconds: float = 3.0) -> int:
    """Kill `component` (-9), keep it down for `down_seconds`, start it again; its new pid."""
    pid = pid_of(cluster_dir, component)
    proc = Path(f"/proc/{pid}")
    argv = [part.decode() for part in (proc / "cmdline").read_bytes().split(b"\0") if part]
    cwd = os.readlink(proc / "cwd")
    env = dict(
        line.decode().split("=", 1) for line in (proc / "environ").read_bytes().split(b"\0") if b"=" in line
    )
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: is_gone(pid), timeout=10, what=f"{component} (pid {pid}) to die")
    time.sleep(down_seconds)
    with (cluster_dir / "logs" / f"{component}.log").open("ab") as log:
        started = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    (cluster_dir / "pids" / f"{component}.pid").write_text(str(started.pid))
    return started.pid
