"""The sweep of run folders a dead run left (testenv_harness.run.run_dirs), on real processes:
only a folder whose recorded process is gone goes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from testenv_harness.run import run_dirs


def _folder(root: Path, name: str, record: str | None) -> Path:
    folder = root / name
    (folder / "dataplane").mkdir(parents=True)
    (folder / "handoff.json").write_text("{}")
    if record is not None:
        (folder / run_dirs.OWNER).write_text(record)
    return folder


def test_only_the_folders_of_runs_whose_process_is_gone_are_swept(tmp_path: Path) -> None:
    ended = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    record_of_ended = run_dirs.owner_record(ended.pid)  # taken while it runs, as a run writes it
    ended.kill()
    ended.wait()
    mine = run_dirs.owner_record(os.getpid())
    pid, started, namespace = mine.split()
    dead = _folder(tmp_path, "testenv-0a1b2c-dead", record_of_ended)
    alive = _folder(tmp_path, "testenv-0a1b2c-alive", mine)
    reused_pid = _folder(tmp_path, "testenv-0a1b2c-reused", f"{pid} {int(started) - 1} {namespace}\n")
    elsewhere = _folder(tmp_path, "testenv-0a1b2c-other", f"{ended.pid} 1 {int(namespace) + 1}\n")
    kept = _folder(tmp_path, "testenv-0a1b2c-kept", None)
    not_a_run = _folder(tmp_path, "testenv-reuse-x1", record_of_ended)
    garbled = _folder(tmp_path, "testenv-0a1b2c-garbled", "not a record")

    assert sorted(run_dirs.sweep(tmp_path)) == sorted([dead, reused_pid])
    assert not dead.exists()
    assert not reused_pid.exists()
    assert all(f.exists() for f in (alive, elsewhere, kept, not_a_run, garbled))


def test_a_kept_folder_is_no_longer_swept(tmp_path: Path) -> None:
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    folder = _folder(tmp_path, "testenv-0a1b2c-k", run_dirs.owner_record(ended.pid))
    ended.wait()
    run_dirs.keep(folder)
    assert run_dirs.sweep(tmp_path) == []
    assert folder.exists()
