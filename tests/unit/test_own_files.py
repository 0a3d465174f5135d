"""Our files are ours: private folders, no links followed, no PID signalled that is not ours.

Real files under tmp_path (KUBE_TESTENV_CACHE), real processes: the `sleep`s started here stand
for a process that got a PID some state file names.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from testenv_harness.frontends import cli, reuse
from testenv_harness.ground import children, files, localports
from testenv_harness.ground.errors import TestEnvError
from testenv_harness.run import runstate


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("KUBE_TESTENV_CACHE", str(root))
    monkeypatch.delenv("TESTENV_RUN", raising=False)
    return root


@pytest.fixture
def stranger() -> Iterator[subprocess.Popen[bytes]]:
    """A process that is not ours to signal, whatever PID a file of ours names."""
    process = subprocess.Popen(["sleep", "300"])
    yield process
    process.kill()
    process.wait()


def _start_time(pid: int) -> int:
    """Field 22 of /proc/<pid>/stat, read here rather than by the code under test."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _older_state_file(name: str, pid: int) -> str:
    """A state file as versions before start times were recorded wrote it."""
    fields = {"command": "up", "workers": 1, "cluster": "local testenv", "operator": "subprocess"}
    return json.dumps({"name": name, "pid": pid, **fields, "forwarded": False, "phase": runstate.READY})


def _state(name: str, pid: int, started: int) -> runstate.RunState:
    return runstate.RunState(
        name=name,
        pid=pid,
        command="up",
        workers=1,
        cluster="local testenv",
        operator="subprocess",
        forwarded=False,
        phase=runstate.READY,
        started=started,
    )


# -- folders ------------------------------------------------------------------------------------


def test_new_folders_are_made_for_this_user_alone(cache: Path) -> None:
    assert files.cache_root() == cache
    runs = runstate.folder()
    localports.reserve_block(2, "run-a", start=27000, stop=28000)
    assert [_mode(p) for p in (cache, runs, cache / "port-reservations")] == [0o700] * 3


def test_our_own_folders_that_others_may_only_read_are_tightened(cache: Path) -> None:
    """What earlier versions made with the usual umask (0755): ours, so made 0700, not refused."""
    (cache / "runs").mkdir(parents=True)
    for folder in (cache, cache / "runs"):
        folder.chmod(0o755)
    runstate.folder()
    assert (_mode(cache), _mode(cache / "runs")) == (0o700, 0o700)


@pytest.mark.parametrize("mode", [0o770, 0o777, 0o702])
def test_a_cache_others_may_write_to_is_refused_with_what_to_do(cache: Path, mode: int) -> None:
    cache.mkdir()
    cache.chmod(mode)
    with pytest.raises(TestEnvError, match=rf"chmod 700 {cache}.*KUBE_TESTENV_CACHE") as refused:
        files.cache_root()
    assert "writable by" in str(refused.value)
    assert _mode(cache) == mode, "refused as found: chmod would not take back what others put there"
    with pytest.raises(TestEnvError, match="chmod 700"):
        runstate.folder()


def test_a_runs_folder_others_may_write_to_is_refused(cache: Path) -> None:
    (cache / "runs").mkdir(parents=True)
    (cache / "runs").chmod(0o777)
    with pytest.raises(TestEnvError, match=rf"chmod 700 {cache / 'runs'}"):
        runstate.load("checkout")


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another user needs root")
@pytest.mark.parametrize("which", ["cache", "runs", "port-reservations"])
def test_a_folder_owned_by_another_user_is_refused(cache: Path, which: str) -> None:
    folder = cache if which == "cache" else cache / which
    folder.mkdir(parents=True)
    folder.chmod(0o700)
    os.chown(folder, 65534, 65534)
    use = (
        (lambda: localports.reserve_block(2, "run-a", start=27000, stop=28000))
        if which == "port-reservations"
        else runstate.folder
    )
    with pytest.raises(TestEnvError, match=r"belongs to uid 65534, not to you.*KUBE_TESTENV_CACHE"):
        use()


def test_a_runs_folder_that_is_a_symbolic_link_is_refused(cache: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    cache.mkdir()
    (cache / "runs").symlink_to(elsewhere)
    with pytest.raises(TestEnvError, match="is a symbolic link"):
        runstate.folder()


# -- files --------------------------------------------------------------------------------------


def test_a_symlinked_state_file_is_refused(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    planted = tmp_path / "planted.json"
    planted.write_text(_older_state_file("checkout", os.getpid()))
    runstate.path_of("checkout").symlink_to(planted)
    with pytest.raises(TestEnvError, match="is a symbolic link"):
        runstate.load("checkout")
    assert cli.main(["status"]) == 1
    assert "checkout.json is a symbolic link" in capsys.readouterr().err


def test_a_symlinked_claim_file_is_refused(cache: Path, tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_text("")
    (runstate.folder() / "reuse-x.claim").symlink_to(target)
    with pytest.raises(TestEnvError, match="is a symbolic link"):
        reuse.Claim.take("reuse-x")


def test_a_symlinked_port_reservation_is_refused(cache: Path, tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_text(f"{os.getpid()} 27000 10")
    folder = cache / "port-reservations"
    folder.mkdir(parents=True)
    (folder / "other.block").symlink_to(target)
    with pytest.raises(TestEnvError, match="is a symbolic link"):
        localports.reserve_block(2, "run-a", start=27000, stop=28000)


def test_an_atomic_write_never_writes_through_a_link(cache: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    folder = runstate.folder()
    (folder / f".checkout.json.{os.getpid()}.tmp").symlink_to(victim)  # where the write stages
    files.write_atomic(folder / "checkout.json", _older_state_file("checkout", os.getpid()))
    assert victim.read_text() == "untouched"
    assert runstate.load("checkout") is not None


# -- processes named in files -------------------------------------------------------------------


def test_a_claim_counts_only_while_its_lock_is_held(cache: Path, stranger: subprocess.Popen[bytes]) -> None:
    (runstate.folder() / "reuse-x.claim").write_text(str(stranger.pid))  # a live PID, no lock
    assert not reuse.claimed("reuse-x")
    held = reuse.Claim.take("reuse-x")
    assert held is not None
    assert reuse.claimed("reuse-x")
    held.release()
    assert not reuse.claimed("reuse-x")


def test_a_recycled_pid_is_not_killed_by_down(cache: Path, stranger: subprocess.Popen[bytes]) -> None:
    """The state file names the sleep's PID, with another start time: a run long gone."""
    started = _start_time(stranger.pid)
    runstate.save(_state("checkout", stranger.pid, started + 1))
    state = runstate.load("checkout")
    assert state is not None
    assert not state.alive
    assert cli.main(["down", "--run", "checkout"]) == 0
    assert stranger.poll() is None, "down signalled a process that is not the run's"
    assert runstate.load("checkout") is None, "the gone run is forgotten"


def test_a_recycled_pid_in_an_older_state_file_is_not_killed(
    cache: Path, stranger: subprocess.Popen[bytes]
) -> None:
    """A file of an older version records no start time: the command line must be a holder's."""
    runstate.path_of("checkout").write_text(_older_state_file("checkout", stranger.pid))
    assert cli.main(["down", "--run", "checkout"]) == 0
    assert stranger.poll() is None, "down signalled a `sleep` that merely got the run's old PID"


def test_a_recycled_pid_is_not_killed_by_a_reusing_run(
    cache: Path, stranger: subprocess.Popen[bytes]
) -> None:
    started = _start_time(stranger.pid)
    reuse._stop(_state("reuse-x", stranger.pid, started + 1), timeout=1)
    assert stranger.poll() is None


def test_the_process_that_wrote_the_state_is_stopped(cache: Path) -> None:
    holder = subprocess.Popen(["sleep", "300"])
    try:
        started = _start_time(holder.pid)
        runstate.save(_state("checkout", holder.pid, started))
        assert cli.main(["down", "--run", "checkout"]) == 0
        assert holder.wait(10) == -15
    finally:
        holder.kill()
        holder.wait()


def test_pid_zero_and_below_name_no_process(cache: Path) -> None:
    """os.kill(0, ...) signals our own process group and -1 every process: never from a file."""
    for pid in (0, -1):
        assert not children.alive(pid)
        assert not _state("x", pid, 0).alive
        assert not children.signal_ours(pid, 0, signal.SIGTERM, "")


def test_a_recycled_pid_does_not_keep_a_port_reservation(
    cache: Path, stranger: subprocess.Popen[bytes]
) -> None:
    started = _start_time(stranger.pid)
    folder = cache / "port-reservations"
    folder.mkdir(parents=True)
    (folder / "gone.block").write_text(f"{stranger.pid} 27000 100 {started + 1}")
    assert localports.reserve_block(4, "run-d", start=27000, stop=28000) == 27000
    assert not (folder / "gone.block").exists()


def test_a_state_file_of_another_version_is_read_for_what_this_one_knows(cache: Path) -> None:
    """Versions share the cache: a newer holder's extra field must not break `testenv status`
    (it did: TypeError), and a state lacking what this version needs is no run to act on."""
    runstate.save(runstate.RunState("mine", os.getpid(), "up", 1, "local testenv", "subprocess", True))
    path = runstate.path_of("newer")
    data = json.loads(runstate.path_of("mine").read_text()) | {"name": "newer", "from_the_future": 1}
    files.write_atomic(path, json.dumps(data))
    files.write_atomic(runstate.path_of("older"), json.dumps({"name": "older", "pid": os.getpid()}))
    assert runstate.load("newer") is not None
    assert runstate.load("older") is None
    assert sorted(state.name for state in runstate.every()) == ["mine", "newer"]


def test_a_refused_cache_is_a_usage_error_not_a_crash(
    pytester: pytest.Pytester, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With reuse on, the claim is taken at session start: a cache others may write to must end
    the run with the message saying what to fix, not an INTERNALERROR."""
    cache.mkdir(mode=0o777)
    cache.chmod(0o777)
    pytester.makeini("[pytest]\ntestenv = true\ntestenv_services = redis\n")
    pytester.makepyfile("def test_one():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--testenv-reuse")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*kube-testenv:*chmod 700*"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
