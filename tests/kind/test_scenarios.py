"""The e2e scenarios of tests/e2e, unchanged, on a real kind cluster: real pods from real images."""

from __future__ import annotations

from pathlib import Path

import pytest

from testenv_harness.provision.clusters import Cluster
from tests.e2e import test_harness as shared
from tests.e2e import test_reuse as reuse
from tests.e2e import test_tunnel_bounds as bounds
from tests.e2e.test_reuse import keepers, namespace, reuse_suite
from tests.suites import Run

__all__ = ["keepers", "namespace", "reuse_suite"]  # the reuse test's fixtures, for pytest to find here

test_what_one_worker_writes_the_other_never_sees = shared.test_what_one_worker_writes_the_other_never_sees
test_a_restart_in_one_worker_fails_no_test_in_another = (
    shared.test_a_restart_in_one_worker_fails_no_test_in_another
)
# The kubelet that never reads a refused connection's bytes is containerd's: this is its test.
test_connections_the_pod_refuses_leave_the_forward_serving = (
    bounds.test_connections_the_pod_refuses_leave_the_forward_serving
)
# Reuse on kind: the keeper's environment is real pods; each rerun resets them over the forwards.
test_a_kept_environment_is_reused_and_shows_nothing_of_the_earlier_run = (
    reuse.test_a_kept_environment_is_reused_and_shows_nothing_of_the_earlier_run
)


# One worker waiting for the deletion, and four leaving it to the operator; -n 2 adds nothing on
# kind that the local tier's -n 2 does not cover (and costs half a minute of CI).
@pytest.mark.parametrize(("workers", "teardown"), [("1", "wait"), ("4", "background")])
def test_the_example_suite_passes_on_kind_and_leaves_nothing_behind(
    run_suite: Run, example_suite: Path, e2e_cluster: Cluster, workers: str, teardown: str
) -> None:
    shared.test_the_example_suite_passes_and_leaves_nothing_behind(
        run_suite, example_suite, e2e_cluster, workers, teardown
    )


def test_a_connection_the_server_closes_is_closed_for_the_client(
    run_suite: Run, pytester: pytest.Pytester
) -> None:
    """QUIT makes Redis close the connection: the client must see end-of-stream, not a hang.

    The websocket channel protocol has no signal for it; a SPDY stream's end is that signal,
    and the kubelet (containerd) ends the stream when the pod's side closes. (kwok, the local
    cluster's kubelet, waits for the client's side too, so this runs on kind only.)
    """
    pytester.makeini("[pytest]\ntestenv = true\ntestenv_services = redis\n")
    pytester.makepyfile(
        test_quit="""
            import socket

            def test_quit_closes(testenv):
                for _ in range(20):
                    with socket.create_connection(testenv.host_port("redis"), timeout=10) as sock:
                        sock.sendall(b"*1\\r\\n$4\\r\\nQUIT\\r\\n")
                        assert sock.recv(64) == b"+OK\\r\\n"
                        assert sock.recv(64) == b"", "the server closed; the client must see EOF"
            """
    )
    run_suite("-n", "0").assert_outcomes(passed=1)
