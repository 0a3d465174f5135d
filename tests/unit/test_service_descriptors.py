"""One descriptor per service type: every built-in type has one on each side, and a type's name
appears in few places (its harness descriptor, the API contract, the operator's catalog)."""

from __future__ import annotations

import ast
import http.server
import threading
from collections import defaultdict
from pathlib import Path
from typing import ClassVar

import pytest

import testenv_api
import testenv_harness
import testenv_operator
from testenv_harness.services import catalog
from testenv_harness.services.base import ResetRefusedError
from testenv_operator import catalog as operator_catalog

BUILT_IN = [t for t in testenv_api.SERVICE_TYPES if t != "custom"]
HARNESS = Path(testenv_harness.__file__).parent
PACKAGES = (HARNESS, Path(testenv_operator.__file__).parent, Path(testenv_api.__file__).parent)
#: Image recipes may name their type: provision/images/<type>/, and imagebuild's build inputs.
RECIPES = (HARNESS / "provision" / "images", HARNESS / "provision" / "imagebuild.py")


def test_every_built_in_type_has_a_descriptor_on_both_sides() -> None:
    assert list(catalog.TYPES) == BUILT_IN
    assert list(operator_catalog.DEFAULT_IMAGES) == BUILT_IN


def _unit(path: Path) -> str:
    """Where a path counts: relative to its package's parent; a harness service descriptor's
    module or package (services/kafka/*) counts once."""
    parts = path.parts
    at = next(i for i, part in enumerate(parts) if part.startswith("testenv_"))
    relative = parts[at:]
    if relative[:2] == ("testenv_harness", "services") and len(relative) > 2:
        return "/".join(relative[:3]).removesuffix(".py")
    return "/".join(relative)


def test_a_type_is_named_in_at_most_three_places() -> None:
    places: dict[str, set[str]] = defaultdict(set)
    for package in PACKAGES:
        for path in package.rglob("*.py"):
            if any(path == r or r in path.parents for r in RECIPES):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and node.value in BUILT_IN:
                    places[node.value].add(_unit(path))
    wide = {name: sorted(where) for name, where in places.items() if len(where) > 3}
    assert not wide, wide


@pytest.mark.parametrize("name", ["localstack", "moto"])
def test_the_aws_types_are_wiped_by_motos_api_or_restarted(name: str) -> None:
    kind = catalog.TYPES[name]
    assert kind.reset is not None
    with pytest.raises((ResetRefusedError, OSError)):
        kind.reset("127.0.0.1", 9)  # nothing listens: not a reset


def test_a_broker_that_cannot_be_wiped_is_restarted_instead() -> None:
    reset = catalog.TYPES["kafka"].reset
    assert reset is not None
    with pytest.raises(ResetRefusedError):
        reset("127.0.0.1", 9)


class _Server(http.server.BaseHTTPRequestHandler):
    """A LocalStack (health answers) or a moto_server (only its reset API answers)."""

    localstack = False
    resets: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        ok = self.localstack and self.path == "/_localstack/health"
        self.send_response(200 if ok else 404)
        self.end_headers()

    def do_POST(self) -> None:
        type(self).resets.append(self.path)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("localstack", [True, False], ids=["real LocalStack", "moto_server"])
def test_localstack_is_wiped_by_motos_api_only_where_moto_serves_it(localstack: bool) -> None:
    handler = type("Handler", (_Server,), {"localstack": localstack, "resets": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    reset = catalog.TYPES["localstack"].reset
    assert reset is not None
    try:
        if localstack:  # its S3 keeps its buckets through moto's reset path: a restart wipes it
            with pytest.raises(ResetRefusedError):
                reset("127.0.0.1", server.server_address[1])
            assert handler.resets == []
        else:
            reset("127.0.0.1", server.server_address[1])
            assert handler.resets == ["/moto-api/reset"]
    finally:
        server.shutdown()
        server.server_close()
