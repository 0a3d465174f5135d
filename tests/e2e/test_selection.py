"""Start only what the selected tests need, and have the variables before collection: a team's
tree with unit and integration tests side by side, and suites that build clients at import."""

from __future__ import annotations

import pytest

from tests.suites import Run

STARTED = "*testenv: environment *"
#: A suite that reads its connection settings when a module is imported, as many real ones do
#: (a module-level client, a settings module): the variables must be there before collection.
IMPORT_TIME_CLIENT = """
import os
import socket

HOST, PORT = os.environ["REDIS_HOST"], int(os.environ["REDIS_PORT"])  # read once, at import
WORKER = os.environ["TESTENV_WORKER"]


def _redis(*command):
    wire = f"*{len(command)}\\r\\n" + "".join(f"${len(c)}\\r\\n{c}\\r\\n" for c in command)
    with socket.create_connection((HOST, PORT), timeout=10) as sock:
        sock.sendall(wire.encode())
        return sock.recv(4096)


def test_my_redis_is_my_workers_own():
    assert _redis("SET", "owner", WORKER) == b"+OK\\r\\n"
    assert _redis("GET", "owner") == f"${len(WORKER)}\\r\\n{WORKER}\\r\\n".encode()


def test_the_plugin_agrees_with_what_import_time_read(testenv):
    assert (HOST, PORT) == testenv.host_port("redis")
    assert os.environ["TESTENV_WORKER"] == WORKER == str(testenv.worker)
"""


@pytest.mark.parametrize("workers", [["-n", "2"], ["-p", "no:xdist"]], ids=["xdist", "no-xdist"])
def test_variables_are_exported_before_collection(
    pytester: pytest.Pytester, run_suite: Run, workers: list[str]
) -> None:
    pytester.makeini("[pytest]\ntestenv = true\ntestenv_services = redis\n")
    pytester.makepyfile(test_settings=IMPORT_TIME_CLIENT)
    result = run_suite(*workers)
    result.assert_outcomes(passed=2)


def _team_tree(pytester: pytest.Pytester, tests: str) -> None:
    """tests/unit (no services), tests/integration (reads REDIS_URL, no fixture, no marker)."""
    pytester.makeini(f"[pytest]\ntestenv = true\ntestenv_services = redis\ntestenv_tests = {tests}\n")
    pytester.mkpydir("tests")
    unit = pytester.mkpydir("tests/unit")
    (unit / "test_parser.py").write_text(
        "def test_parser_splits():\n    assert 'a,b'.split(',') == ['a', 'b']\n"
    )
    integration = pytester.mkpydir("tests/integration")
    (integration / "test_store.py").write_text(
        "import os, socket\n\n"
        "def test_redis_answers():\n"
        "    host, port = os.environ['REDIS_HOST'], int(os.environ['REDIS_PORT'])\n"
        "    with socket.create_connection((host, port), timeout=10) as sock:\n"
        "        sock.sendall(b'*1\\r\\n$4\\r\\nPING\\r\\n')\n"
        "        assert sock.recv(16) == b'+PONG\\r\\n'\n"
    )
    (unit / "test_marked.py").write_text(
        "import pytest\n\n@pytest.mark.testenv\ndef test_needs_it_although_in_unit(testenv):\n"
        "    assert testenv.url('redis').startswith('redis://')\n"
    )


@pytest.mark.parametrize("workers", [["-n", "2"], ["-p", "no:xdist"]], ids=["xdist", "no-xdist"])
def test_a_selection_without_environment_tests_starts_nothing(
    pytester: pytest.Pytester, run_suite: Run, workers: list[str]
) -> None:
    _team_tree(pytester, "tests/integration")
    result = run_suite(*workers, "tests/unit", "-k", "parser")
    result.assert_outcomes(passed=1, deselected=None if "-n" in workers else 1)  # xdist counts none
    result.stdout.no_fnmatch_line(STARTED)


def test_the_tests_that_need_it_start_it(pytester: pytest.Pytester, run_suite: Run) -> None:
    _team_tree(pytester, "tests/integration")
    result = run_suite("-n", "2")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines([STARTED])


def test_marked_alone_selects_the_marked_tests_and_the_fixtures_users(
    pytester: pytest.Pytester, run_suite: Run
) -> None:
    _team_tree(pytester, "marked")
    only_unit = run_suite("-n", "2", "tests/unit", "-k", "parser")
    only_unit.assert_outcomes(passed=1, deselected=None)
    only_unit.stdout.no_fnmatch_line(STARTED)
    marked = run_suite("-n", "2", "tests/unit")
    marked.assert_outcomes(passed=2)
    marked.stdout.fnmatch_lines([STARTED])
