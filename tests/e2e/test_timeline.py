"""What each worker did: a failed test's report shows its worker's services (state and the lines
they wrote while it ran), and `--testenv-timeline` writes the run as one page that a real
browser (headless Chromium) draws: a row per worker, the failed test's bar in the failure colour."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.suites import Run

FAILING = textwrap.dedent(
    """
    import time

    import redis


    def test_fails_after_its_redis_wrote_a_line(testenv):
        client = redis.Redis.from_url(testenv.url("redis"))
        client.config_set("loglevel", "verbose")  # from now on it logs every connection
        redis.Redis.from_url(testenv.url("redis")).ping()
        time.sleep(0.5)
        assert False, "fails on purpose"
    """
)
#: Where the e2e test leaves the page's screenshot (docs/images/timeline.png is one).
SCREENSHOT = "timeline.png"


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("no chromium on PATH: hack/install-system-deps.sh installs Debian's `chromium`")
    return found


def _browse(page: Path, *what: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on the page, with no network and a profile of its own."""
    return subprocess.run(
        [
            _chromium(),
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--hide-scrollbars",
            f"--user-data-dir={page.parent / 'chromium-profile'}",
            "--window-size=1500,1000",
            *what,
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_a_failed_test_shows_its_services_and_the_run_draws_as_a_timeline(
    run_suite: Run, example_suite: Path
) -> None:
    (example_suite / "test_fails.py").write_text(FAILING)
    page, report = example_suite / "out" / "timeline.html", example_suite / "junit.xml"
    result = run_suite(
        "-n",
        "2",
        "--testenv-log-lines=20",
        f"--testenv-timeline={page}",
        f"--junitxml={report}",
        "-o",
        "junit_logging=log",
    )
    result.assert_outcomes(passed=11, failed=1)
    out = result.stdout.str()

    # -- the failed test's report: its worker's services, and what its Redis wrote meanwhile --
    result.stdout.fnmatch_lines(
        [
            "*Captured log (testenv: worker ? services) call*",
            "worker ?, namespace *-w?: the test ran from *s until its failure",
            "redis  pod redis-*: ready, 0 restarts, host process * running",
            "*Captured log (testenv: worker ? redis) call*",
            "redis: * written while the test ran (pod redis-*, host process log */process.log):",
            "*Accepted 127.0.0.1:*",
        ]
    )
    redis_section = re.search(
        r"Captured log \(testenv: worker \d redis\) call -+\n(.*?)(?:\n[-=_]{5,}|\Z)", out, re.S
    )
    assert redis_section is not None
    assert "Accepted 127.0.0.1:" in redis_section.group(1)
    assert "Ready to accept connections" not in redis_section.group(1), "a line from before the test"
    assert out.count("Captured log (testenv: worker") == 1 + 3, "one state section, one per service"
    assert f"testenv: timeline: {page}" in out

    # -- JUnit carries them as captured log ---------------------------------------------------
    case = next(
        c for c in ET.parse(report).getroot().iter("testcase") if c.get("name", "").startswith("test_fails")
    )
    captured = "".join(e.text or "" for e in case.iter("system-out"))
    assert "until its failure" in captured
    assert "Accepted 127.0.0.1:" in captured

    # -- the events beside the page --------------------------------------------------------------
    data = json.loads(page.with_suffix(".json").read_text())
    events = data["events"]
    run_steps = {e["name"] for e in events if e["row"] is None}
    assert {"cluster", "operator", "environment", "data plane", "teardown: environment"} <= run_steps
    tests = [e for e in events if e["kind"] == "test"]
    assert len(tests) == 12
    assert {e["row"] for e in tests} == {0, 1}, "both workers ran tests"
    (failed,) = [e for e in tests if e["outcome"] == "failed"]
    assert failed["name"].endswith("test_fails_after_its_redis_wrote_a_line")
    assert "fails on purpose" in failed["detail"]
    for row in (0, 1):
        mine = [e for e in events if e["row"] == row]
        assert any(e["kind"] == "pod" and e["lane"] == "kafka" for e in mine), f"worker {row}'s pods"
        assert any(e["kind"] == "host" and e["lane"] == "redis" for e in mine), f"worker {row}'s processes"
        assert any(e["name"] == "forwards ready" for e in mine)
        assert all(e["start"] <= e["end"] for e in mine)

    # -- what a browser shows once the page's script ran --------------------------------------
    dom = _browse(page, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-drawn="true"' in dom.stdout, "the page's script did not run"
    assert len(re.findall(r'<g class="row" data-worker="\d"', dom.stdout)) == 2, "a row per worker"
    failed_bars = re.findall(r'<rect class="bar kind-test test failed"[^>]*>\s*<title>([^<]*)', dom.stdout)
    assert len(failed_bars) == 1, "the failed test's bar, in the failure colour"
    assert "test_fails_after_its_redis_wrote_a_line" in failed_bars[0]
    assert dom.stdout.count('class="bar kind-test test passed"') == 11
    assert "fails on purpose" in dom.stdout, "the failures table"

    shot = page.parent / SCREENSHOT
    taken = _browse(page, f"--screenshot={shot}")
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000, "a page with something drawn on it"
