from __future__ import annotations

import pytest

from testenv_operator.ports import PortPlanError, plan_ports

SERVICES = [("redis", [("redis", 6379)]), ("api", [("http", 8080), ("admin", 9090)])]


def test_ports_count_up_worker_by_worker_in_spec_order() -> None:
    plan = plan_ports(20000, 2, SERVICES)
    assert [(p.service, p.name, p.local_port) for p in plan[0]] == [
        ("redis", "redis", 20000),
        ("api", "http", 20001),
        ("api", "admin", 20002),
    ]
    assert [p.local_port for p in plan[1]] == [20003, 20004, 20005]


def test_every_planned_port_is_unique() -> None:
    plan = plan_ports(30000, 64, SERVICES)
    ports = [p.local_port for worker in plan for p in worker]
    assert len(ports) == len(set(ports)) == 64 * 3


def test_the_last_port_may_be_65535() -> None:
    assert plan_ports(65535 - 5, 2, SERVICES)[-1][-1].local_port == 65535


def test_running_past_65535_names_the_field_and_the_largest_base() -> None:
    with pytest.raises(PortPlanError, match=r"spec\.portBase.*at most 65530"):
        plan_ports(65531, 2, SERVICES)
