"""A team's own service under test, per worker, on kind (seed 004's gateway): an image that exists
only in the local Docker engine (`docker build -t gateway:dev .`) runs as a `custom` service in
every worker, reaches its own worker's Redis by Service name, and is ready by its httpGet probe."""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from testenv_harness.provision import imagebuild
from tests.suites import Run

#: The service under test: GET / counts a hit in its own worker's Redis (Service `redis`) and
#: answers the count; GET /healthz answers once that Redis does.
GATEWAY = """
import os, socket
from http.server import BaseHTTPRequestHandler, HTTPServer

def redis(*command):
    wire = f"*{len(command)}\\r\\n" + "".join(f"${len(c)}\\r\\n{c}\\r\\n" for c in command)
    with socket.create_connection((os.environ["REDIS_HOST"], 6379), timeout=5) as sock:
        sock.sendall(wire.encode())
        return sock.recv(256).decode()

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        try:
            body = redis("PING") if self.path == "/healthz" else redis("INCR", "hits")[1:].strip()
            status = 200
        except OSError as exc:
            body, status = str(exc), 503
        self.send_response(status)
        self.end_headers()
        self.wfile.write(body.encode())

HTTPServer(("", 8080), Handler).serve_forever()
"""

SUITE = """
import os, socket, urllib.request

def _hits_in_my_redis():
    with socket.create_connection(("127.0.0.1", int(os.environ["REDIS_PORT"])), timeout=10) as sock:
        sock.sendall(b"*2\\r\\n$3\\r\\nGET\\r\\n$4\\r\\nhits\\r\\n")
        return sock.recv(64)

def test_my_gateway_uses_my_redis(testenv):
    host, port = testenv.host_port("gateway")  # a custom type's URL is tcp://: it speaks HTTP here
    answers = [urllib.request.urlopen(f"http://{host}:{port}/", timeout=10).read() for _ in range(3)]
    assert answers == [b"1", b"2", b"3"], "a gateway of its own, on a Redis of its own"
    assert _hits_in_my_redis() == b"$1\\r\\n3\\r\\n"
"""


@pytest.fixture
def gateway_image(tmp_path: Path) -> Iterator[str]:
    """Built into the local engine only, as a team builds its service; removed afterwards."""
    tag = f"kube-testenv-test/gateway:{uuid.uuid4().hex[:8]}"
    (tmp_path / "gateway.py").write_text(textwrap.dedent(GATEWAY))
    (tmp_path / "Dockerfile").write_text(
        f"FROM {imagebuild.reference('python')}\nCOPY gateway.py /gateway.py\n"
        'USER 65532:65532\nCMD ["python3", "/gateway.py"]\n'
    )
    imagebuild.docker("build", "-q", "-t", tag, str(tmp_path), timeout=300)
    yield tag
    imagebuild.docker("image", "rm", "-f", tag)


def test_a_locally_built_custom_service_runs_in_every_worker(
    pytester: pytest.Pytester, run_suite: Run, gateway_image: str
) -> None:
    pytester.makefile(
        ".yaml",
        testenvironment=f"""
        apiVersion: testenv.dev/v1alpha1
        kind: TestEnvironment
        metadata: {{name: gateway}}
        spec:
          services:
            - {{name: redis, type: redis}}
            - name: gateway
              type: custom
              env: [{{name: REDIS_HOST, value: redis}}]
              custom:
                image: {gateway_image}
                ports: [{{name: http, port: 8080}}]
                readiness: {{httpGet: {{port: 8080, path: /healthz}}}}
        """,
    )
    pytester.makeini("[pytest]\ntestenv = true\ntestenv_manifest = testenvironment.yaml\n")
    pytester.makepyfile(test_gateway=SUITE)
    result = run_suite("-n", "2", "--dist", "each", timeout=900)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"*loaded {gateway_image} from the local Docker engine into the kind node*"])
