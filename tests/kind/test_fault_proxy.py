"""The fault proxy on real pods (issue 25): a team's service in the worker namespace calls its
worker's Redis by the Service's DNS name, so its traffic never passes the harness's tunnel; with
`faultProxy: true` it passes the Toxiproxy sidecar. `testenv.fault` drives that sidecar (its API
on pod port 8474, forwarded by the harness) and the harness's own forward alike, so a test's
client and the team's service see the same fault."""

from __future__ import annotations

import pytest

from testenv_harness.provision import imagebuild
from tests.suites import Run

#: The service under test, as a one-liner on our python image: GET / times a PING to the worker's
#: Redis through its Service name (connect, send, answer) and answers the milliseconds.
PROBER = (
    "import socket,time\n"
    "from http.server import BaseHTTPRequestHandler as B,HTTPServer as S\n"
    "class H(B):\n"
    " def do_GET(s):\n"
    "  t=time.monotonic()\n"
    "  try:\n"
    "   c=socket.create_connection(('redis',6379),timeout=10)\n"
    "   c.sendall(b'PING\\r\\n');r=c.recv(64);c.close()\n"
    "   b=b'%d'%int((time.monotonic()-t)*1000) if r.startswith(b'+PONG') else b'bad answer '+r\n"
    "  except OSError as e:b=str(e).encode()\n"
    "  s.send_response(200);s.end_headers();s.wfile.write(b)\n"
    "S(('',8080),H).serve_forever()\n"
)

SUITE = """
import time, urllib.request
import redis
from testenv_api import FAULT_PROXY_ADMIN_PORT
from testenv_harness.ground.localports import free_port
from testenv_harness.services.toxiproxy import Toxiproxy


def _in_cluster_ping_ms(testenv):
    host, port = testenv.host_port("prober")
    answer = urllib.request.urlopen(f"http://{host}:{port}/", timeout=30).read().decode()
    assert answer.isdigit(), answer
    return int(answer)


def _direct_ping_ms(testenv):
    client = redis.Redis.from_url(testenv.url("redis"), socket_timeout=10)
    started = time.monotonic()
    assert client.ping()
    return (time.monotonic() - started) * 1000


def test_the_fault_api_slows_and_cuts_in_cluster_clients_too(testenv):
    status = testenv.service("redis")
    assert status.fault_proxy_port == FAULT_PROXY_ADMIN_PORT
    assert _in_cluster_ping_ms(testenv) < 300

    # One call: the toxic on the test's own forward and on the proxy in front of the Service.
    with testenv.fault("redis", "latency", latency=300):
        slow = [_in_cluster_ping_ms(testenv) for _ in range(3)]
        assert min(slow) >= 300, slow
        assert min(_direct_ping_ms(testenv) for _ in range(3)) >= 300
    assert max(_in_cluster_ping_ms(testenv) for _ in range(3)) < 300
    assert max(_direct_ping_ms(testenv) for _ in range(3)) < 300

    with testenv.fault("redis", "down"):
        host, port = testenv.host_port("prober")
        refused = urllib.request.urlopen(f"http://{host}:{port}/", timeout=30).read().decode()
        assert not refused.isdigit(), "a proxy that is down refuses in-cluster clients"
    assert _in_cluster_ping_ms(testenv) < 300

    # Toxiproxy's own API stays reachable for what the fault API does not cover.
    local = free_port()
    testenv.forwarder.listen("redis", status.fault_proxy_port, local)
    proxy = Toxiproxy(f"http://127.0.0.1:{local}", timeout=30)
    assert proxy.version() == "2.5.0"
    assert set(proxy.proxies()) == {"redis"}, "one proxy per Service port, named after it"
    assert proxy.toxics("redis") == [], "the block's end removed its toxic"
"""


def test_a_fault_proxy_in_the_worker_namespace_slows_its_own_clients(
    pytester: pytest.Pytester, run_suite: Run
) -> None:
    python = imagebuild.reference("python")
    script = PROBER.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    pytester.makefile(
        ".yaml",
        testenvironment=f"""
        apiVersion: testenv.dev/v1alpha1
        kind: TestEnvironment
        metadata: {{name: faults}}
        spec:
          services:
            - {{name: redis, type: redis, faultProxy: true}}
            - name: prober
              type: custom
              custom:
                image: {python}
                command: [python3, -c, "{script}"]
                ports: [{{name: http, port: 8080}}]
        """,
    )
    pytester.makeini("[pytest]\ntestenv = true\ntestenv_manifest = testenvironment.yaml\n")
    pytester.makepyfile(test_faults=SUITE)
    result = run_suite("-n", "1", timeout=900)
    result.assert_outcomes(passed=1)
