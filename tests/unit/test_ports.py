from __future__ import annotations

import socket
from typing import Any

import pytest

from testenv_api import DEFAULT_PORT_BASE, PortPlanError, local_ports, plan_ports, ports_needed, primary_port
from testenv_harness.ground.localports import free_port
from testenv_harness.tunnel.portforward import ServiceForward

SERVICES = [
    {"name": "redis", "type": "redis"},
    {
        "name": "api",
        "type": "custom",
        "custom": {
            "image": "a/b:1",
            "ports": [{"name": "http", "port": 8080}, {"name": "admin", "port": 9090}],
        },
    },
]


def _spec(**fields: Any) -> dict[str, Any]:
    return {"services": SERVICES, **fields}


def test_ports_count_up_worker_by_worker_in_spec_order() -> None:
    plan = plan_ports(_spec(workers=2, portBase=20000))
    assert [(p.service, p.name, p.port, p.local_port) for p in plan[0]] == [
        ("redis", "redis", primary_port("redis"), 20000),
        ("api", "http", 8080, 20001),
        ("api", "admin", 9090, 20002),
    ]
    assert [p.local_port for p in plan[1]] == [20003, 20004, 20005]


def test_every_planned_port_is_unique() -> None:
    plan = plan_ports(_spec(workers=64, portBase=30000))
    ports = [p.local_port for worker in plan for p in worker]
    assert len(ports) == len(set(ports)) == 64 * 3


def test_the_last_port_may_be_65535() -> None:
    assert plan_ports(_spec(workers=2, portBase=65535 - 5))[-1][-1].local_port == 65535


def test_running_past_65535_names_the_field_and_the_largest_base() -> None:
    with pytest.raises(PortPlanError, match=r"spec\.portBase.*at most 65530"):
        plan_ports(_spec(workers=2, portBase=65531))


def test_the_harness_range_is_the_plan() -> None:
    spec = _spec(workers=3)
    assert local_ports(spec) == range(DEFAULT_PORT_BASE, DEFAULT_PORT_BASE + 9)
    assert [p.local_port for worker in plan_ports(spec) for p in worker] == list(local_ports(spec))


def test_ports_are_counted_before_the_api_server_validated_the_spec() -> None:
    spec = {"workers": 1, "services": [{"type": "redis"}, {"type": "custom", "custom": {"ports": [{}, {}]}}]}
    assert ports_needed(spec) == 3
    assert ports_needed({"services": [{"type": "memcached"}, {"type": "custom"}]}) == 0


def test_a_forward_listens_on_loopback_only() -> None:
    """A worker's forwards reach its services from this machine only, never from the network."""
    forward = ServiceForward(None, "redis", 6379, free_port())  # type: ignore[arg-type]
    try:
        assert forward.server.getsockname()[0] == "127.0.0.1"
    finally:
        forward.close()


def test_closing_a_forward_wakes_its_listener_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The accept loop ends on close itself, not on its next timeout: here it has none, so a
    close that only closed the socket would leave the thread blocked in accept()."""
    monkeypatch.setattr(socket.socket, "settimeout", lambda self, timeout: None)
    forward = ServiceForward(None, "redis", 6379, free_port())  # type: ignore[arg-type]
    forward.close()
    assert not forward._thread.is_alive()
