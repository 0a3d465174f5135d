"""The plugin behaves like a pytest plugin: nothing is created unless tests run, a crashed xdist
worker is replaced without breaking the run, and infrastructure failures are test errors with
their cause (usage errors are for what the user typed)."""

from __future__ import annotations

import textwrap
import uuid

import pytest

from testenv_harness.provision.clusters import Cluster, LocalProvider
from tests.suites import CACHE, Run


@pytest.mark.parametrize(
    "args",
    [
        ("--collect-only",),
        ("--collect-only", "-n", "2"),
        ("--help",),
        ("--version",),
        ("--markers",),
        ("--fixtures",),
        ("--setup-plan",),
        ("-k", "no_such_test"),
        ("-n", "2", "-k", "no_such_test"),
    ],
    ids=lambda args: " ".join(args),
)
def test_nothing_is_created_unless_tests_run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]
) -> None:
    monkeypatch.setenv("KUBE_TESTENV_CACHE", CACHE)
    name = f"never-{uuid.uuid4().hex[:6]}"  # were it created, this cluster would exist afterwards
    pytester.makeini("[pytest]\ntestenv = true\ntestenv_services = redis\n")
    pytester.makepyfile(test_x="def test_x(testenv):\n    pass\n")
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--testenv-cluster=local", f"--testenv-cluster-name={name}", *args
    )
    created = LocalProvider(name, report=lambda line: None)
    if created.exists():
        created.down()  # a failing run must not leave a cluster behind
        pytest.fail(f"`pytest {' '.join(args)}` created a cluster")
    assert result.ret in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED), result.stderr.str()
    assert not [line for line in result.outlines if line.startswith("testenv:")], result.outlines


def test_a_crashed_worker_is_replaced_and_the_rest_of_the_run_passes(
    run_suite: Run, pytester: pytest.Pytester
) -> None:
    pytester.makeini("[pytest]\ntestenv = true\ntestenv_services = redis\n")
    ran = pytester.path / "ran"
    ran.mkdir()
    tests = "\n".join(
        textwrap.dedent(
            f"""
            def test_uses_its_own_redis_{i}(testenv):
                time.sleep(0.5)  # keeps work queued for the replacement worker
                r = redis.Redis.from_url(testenv.url("redis"))
                assert r.incr("count") >= 1
                (RAN / f"{i}").write_text(f"{{os.environ['PYTEST_XDIST_WORKER']}} {{testenv.worker}}")
            """
        )
        for i in range(16)
    )
    pytester.makepyfile(
        test_crash=f"import os, time, pathlib, redis\nRAN = pathlib.Path({str(ran)!r})\n\n"
        "def test_crash(testenv):\n    os._exit(1)\n" + tests
    )
    result = run_suite("-n", "2")
    result.assert_outcomes(passed=16, failed=1)
    result.stdout.fnmatch_lines(["*replacing crashed worker gw*", "*worker 'gw*' crashed while running*"])
    workers = {tuple(f.read_text().split()) for f in ran.iterdir()}
    assert {slot for _, slot in workers} <= {"0", "1"}, f"only the two slots exist: {workers}"
    assert {gw for gw, _ in workers} - {"gw0", "gw1"}, f"the replacement ran no test: {workers}"


def test_an_infrastructure_failure_errors_the_tests_with_its_cause(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBE_TESTENV_CACHE", CACHE)
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/kubeconfig")
    pytester.makeini("[pytest]\ntestenv = true\ntestenv_services = redis\n")
    pytester.makepyfile(test_x="def test_x(testenv):\n    pass\n\ndef test_y(testenv):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--testenv-cluster=existing")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, "not a usage error: the user typed nothing wrong"
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*could not set the run up: no kubeconfig at /nonexistent/kubeconfig*"])


def test_a_refused_manifest_is_still_a_usage_error(
    pytester: pytest.Pytester, local_cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBE_TESTENV_CACHE", CACHE)
    pytester.makefile(
        ".yaml",
        env=textwrap.dedent(
            """
            apiVersion: testenv.dev/v1alpha1
            kind: TestEnvironment
            metadata: {name: bad}
            spec:
              services: [{name: redis, type: redis, resources: {requests: {cpu: lots}}}]
            """
        ),
    )
    pytester.makeini("[pytest]\ntestenv = true\ntestenv_manifest = env.yaml\n")
    pytester.makepyfile(test_x="def test_x(testenv):\n    pass\n")
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "--testenv-cluster=local",
        f"--testenv-cluster-name={local_cluster.name}",
        f"--testenv-namespace=bad-{uuid.uuid4().hex[:6]}",
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*the API server refused the TestEnvironment*requests.cpu*"])
