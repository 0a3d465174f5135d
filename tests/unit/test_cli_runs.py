"""The run commands of the `testenv` CLI without a cluster: variables, formats, and bad input."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from testenv_harness.frontends import cli, exports
from testenv_harness.provision import toolchain
from testenv_harness.run import runstate

COMMANDS = ("run", "up", "env", "forward", "status", "down", "sweep", "restart", "exec", "tools", "cluster")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KUBE_TESTENV_CACHE", str(tmp_path))
    monkeypatch.delenv("TESTENV_RUN", raising=False)
    monkeypatch.delenv("TESTENV_WORKER", raising=False)
    return tmp_path


def _ready_run(name: str = "checkout", workers: int = 2, pid: int | None = None) -> runstate.RunState:
    state = runstate.RunState(
        name=name,
        pid=pid or os.getpid(),
        command="up",
        workers=workers,
        cluster="local testenv",
        operator="subprocess",
        forwarded=False,
        phase=runstate.READY,
        environments={
            str(i): {
                "REDIS_URL": f"redis://localhost:{20000 + i}",
                "TESTENV_WORKER": str(i),
                "AWS_REGION": "x",
            }
            for i in range(workers)
        },
    )
    runstate.save(state)
    return state


def test_every_worker_gets_numbered_variables_and_shared_ones_keep_their_plain_name() -> None:
    workers = {
        "0": {
            "REDIS_URL": "redis://localhost:20000",
            "TESTENV_WORKER": "0",
            "AWS_DEFAULT_REGION": "us-east-1",
        },
        "1": {
            "REDIS_URL": "redis://localhost:20010",
            "TESTENV_WORKER": "1",
            "AWS_DEFAULT_REGION": "us-east-1",
        },
    }
    variables = exports.run_variables("checkout", workers)
    assert variables["REDIS_URL_0"] == "redis://localhost:20000"
    assert variables["REDIS_URL_1"] == "redis://localhost:20010"
    assert "REDIS_URL" not in variables, "with two workers a plain REDIS_URL would be someone else's"
    assert variables["AWS_DEFAULT_REGION"] == "us-east-1"
    assert variables["TESTENV_RUN"] == "checkout"
    assert variables["TESTENV_WORKERS"] == "2"
    assert not [key for key in variables if key.startswith("TESTENV_WORKER_")]


def test_a_single_worker_also_gets_plain_names() -> None:
    variables = exports.run_variables("solo", {"0": {"REDIS_URL": "redis://localhost:20000"}})
    assert variables["REDIS_URL"] == variables["REDIS_URL_0"] == "redis://localhost:20000"


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("shell", "export A='x y'\nexport B=1"),
        ("dotenv", 'A="x y"\nB=1'),
        ("json", '{"A": "x y", "B": "1"}'),
    ],
)
def test_formats(fmt: str, expected: str) -> None:
    assert exports.render({"B": "1", "A": "x y"}, fmt) == expected


def test_env_prints_one_workers_plain_variables(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _ready_run()
    assert cli.main(["env", "--worker", "1", "--format", "json"]) == 0
    variables = json.loads(capsys.readouterr().out)
    assert variables["REDIS_URL"] == "redis://localhost:20001"
    assert variables["TESTENV_WORKER"] == "1", "the plugin's number for the same worker"
    assert variables["TESTENV_RUN"] == "checkout"


def test_env_without_worker_prints_what_run_gives_its_command(
    cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _ready_run()
    assert cli.main(["env", "--format", "dotenv"]) == 0
    out = capsys.readouterr().out
    assert "REDIS_URL_0=redis://localhost:20000" in out
    assert "REDIS_URL_1=redis://localhost:20001" in out


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("testenv: error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["env", "--worker", "5"], "has workers 0-1 (numbered from 0), not 5"),
        (["env", "--worker", "2"], "has workers 0-1 (numbered from 0), not 2"),
        (["env", "--worker", "-1"], "has workers 0-1 (numbered from 0), not -1"),
        (["forward", "--worker", "3"], "has workers 0-1 (numbered from 0), not 3"),
        (["forward"], "say which worker with --worker I"),
        (["env", "--run", "nope"], "no run named 'nope' on this machine (up here: checkout)"),
        (["status", "--run", "nope"], "no run named 'nope'"),
        (["env", "--format", "json", "--run", "Bad_Name"], "no run named 'Bad_Name'"),
    ],
)
def test_bad_input_is_one_actionable_line(
    cache: Path, capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    _ready_run()
    assert cli.main(argv) == 1
    assert says in _one_line_error(capsys)


def test_no_run_at_all_says_how_to_start_one(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["env", "--worker", "1"]) == 1
    assert "testenv up -f env.yaml" in _one_line_error(capsys)


def test_a_killed_run_says_sweep(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _ready_run(pid=dead.pid)
    assert cli.main(["env", "--worker", "1", "--run", "checkout"]) == 1
    assert "testenv sweep" in _one_line_error(capsys)


def test_two_runs_up_need_a_name(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _ready_run("one")
    _ready_run("two")
    assert cli.main(["env", "--worker", "1"]) == 1
    assert "--run NAME" in _one_line_error(capsys)


def test_a_live_run_name_cannot_be_claimed_twice(cache: Path) -> None:
    state = _ready_run()
    with pytest.raises(Exception, match="already up"):
        runstate.claim(dataclasses.replace(state, pid=os.getpid()))


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["run", "--service", "redis"], "say what to run after --"),
        (["run", "--workers", "2", "--", "true"], "say which services each worker gets"),
        (["run", "-f", "missing.yaml", "--", "true"], "missing.yaml: no such file"),
        (["run", "--service", "memcached", "--", "true"], "unknown type 'memcached'"),
        (["run", "--service", "redis", "--workers", "0", "--", "true"], "--workers 0"),
        (["run", "--service", "redis", "--run", "Bad_Name", "--", "true"], "run name 'Bad_Name'"),
        (["up", "-f", "x.yaml", "--service", "redis"], "either -f FILE or --service"),
    ],
)
def test_bad_run_input_fails_before_anything_is_created(
    cache: Path, capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    assert cli.main(argv) == 1
    assert says in _one_line_error(capsys)
    assert not list(runstate.folder().glob("*.json"))


def test_a_missing_cluster_is_one_line(
    cache: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(cache / "absent"))
    assert cli.main(["run", "--service", "redis", "--cluster", "existing", "--", "true"]) == 1
    assert "no kubeconfig at" in _one_line_error(capsys)
    assert not list(runstate.folder().glob("*.json")), "a failed set-up forgets its run"


def test_a_command_after_dashes_is_refused_where_nothing_runs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["status", "--", "ls"])
    assert "runs no command" in capsys.readouterr().err


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "testenv_harness", command, "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "testenv " in result.stdout.partition("\nexample:\n  ")[2], result.stdout


def test_ginkgo_cli_and_the_example_suite_pin_the_same_version() -> None:
    gomod = (Path(__file__).parents[2] / "examples" / "ginkgo" / "go.mod").read_text()
    assert f"github.com/onsi/ginkgo/v2 {toolchain.GINKGO_VERSION}\n" in gomod
    assert toolchain.tool_of("ginkgo").group == "runners"


def test_output_is_spelt_as_status_spells_it(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _ready_run()
    assert cli.main(["env", "--worker", "0", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["REDIS_URL"] == "redis://localhost:20000"
    assert cli.main(["env", "--worker", "0", "--format", "json"]) == 0, "the older name still works"
    assert json.loads(capsys.readouterr().out)["TESTENV_WORKER"] == "0"


def test_a_dotenv_value_never_adds_a_line_of_its_own() -> None:
    """Read back by python-dotenv (tried by hand) as the same three values."""
    values = {"A": "one\nB=injected", "C": 'say "hi" \\ done', "D": "redis://h:1/0?x=y"}
    lines = exports.render(values, "dotenv").splitlines()
    assert lines == ['A="one\\nB=injected"', 'C="say \\"hi\\" \\\\ done"', "D=redis://h:1/0?x=y"]
