"""Test tiers by folder: unit (no cluster), integration (real API server), e2e (plus data plane)."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kube-testenv tests")
    group.addoption(
        "--keep-cluster",
        action="store_true",
        help="leave the integration-test cluster running after the session (it is reused next time)",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = Path(item.fspath).relative_to(HERE).parts[0]
        if tier in ("integration", "e2e"):
            item.add_marker(getattr(pytest.mark, tier))
