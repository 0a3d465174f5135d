"""A run's folder (`testenv-<run id>-*` in the system's temporary directory: the handoff, the
operator's log, the data plane's records) and the sweep of those a dead run left.

A run removes its folder when it ends. One whose process was killed (`kill -9`, a CI job
cancelled, the machine's OOM killer) cannot, so each folder carries an `owner` record: the pid,
its start time and its PID namespace. Making a new folder first removes every folder whose
recorded process is gone. A folder without the record (made by an older version, or kept on
purpose with --testenv-keep, whose record is dropped at the end) is never touched, nor is one
recorded in another PID namespace (a container sharing /tmp): its pid means nothing here.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from testenv_harness.ground import children

#: The record of the process a folder belongs to: "<pid> <start time> <pid namespace>".
OWNER = "owner"
_FOLDER = re.compile(r"testenv-[0-9a-f]{6}-[A-Za-z0-9_]+")


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


def make(run_id: str) -> Path:
    """A new folder for run `run_id`, owned by this process; dead runs' folders are swept first."""
    sweep()
    folder = Path(tempfile.mkdtemp(prefix=f"testenv-{run_id}-"))
    (folder / OWNER).write_text(owner_record(os.getpid()))
    return folder


def owner_record(pid: int) -> str:
    """What `OWNER` holds for process `pid` (one of this PID namespace)."""
    return f"{pid} {children.start_time(pid) or 0} {_pid_namespace()}\n"


def keep(folder: Path) -> None:
    """Leave `folder` for good (--testenv-keep): no later sweep removes it."""
    (folder / OWNER).unlink(missing_ok=True)


def _dead_owner(folder: Path, namespace: str) -> bool:
    try:
        pid, started, recorded_in = (folder / OWNER).read_text().split()
        return recorded_in == namespace and not children.is_ours(int(pid), int(started))
    except (OSError, ValueError):  # no record, or not one of ours
        return False


def sweep(root: Path | None = None) -> list[Path]:
    """Remove the run folders under `root` (the temporary directory) whose run's process is gone,
    and only this user's; the folders removed."""
    root = root or Path(tempfile.gettempdir())
    namespace = _pid_namespace()
    if not namespace:  # no /proc: a pid cannot be told from another process's
        return []
    uid = os.getuid()
    removed = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return []
    for entry in entries:
        if not _FOLDER.fullmatch(entry.name):
            continue
        try:
            if not entry.is_dir(follow_symlinks=False) or entry.stat(follow_symlinks=False).st_uid != uid:
                continue
        except OSError:
            continue
        folder = Path(entry.path)
        if _dead_owner(folder, namespace):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed
