"""Reuse's pure parts: which runs may share a kept environment, and the exclusive claim."""

from __future__ import annotations

from pathlib import Path

import pytest

from testenv_harness.frontends import reuse
from testenv_harness.run.options import RunOptions, services_manifest


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBE_TESTENV_CACHE", str(tmp_path))


def _options(services: list[str], **where: str | int) -> RunOptions:
    manifest = services_manifest(services)
    manifest["spec"]["portBase"] = where.pop("port_base", 20000)
    return RunOptions(workers=int(where.pop("workers", 2)), manifest=manifest, **where)  # type: ignore[arg-type]


def test_runs_of_the_same_services_and_place_share_a_keeper_whatever_their_workers_and_ports() -> None:
    assert reuse.keeper_name(_options(["redis"], workers=1)) == reuse.keeper_name(
        _options(["redis"], workers=4, port_base=31000)
    )


@pytest.mark.parametrize(
    "other",
    [
        _options(["redis", "kafka"]),
        _options(["redis"], namespace="team-b"),
        _options(["redis"], cluster_name="other"),
        _options(["redis"], provider="kind"),
    ],
    ids=["services", "namespace", "cluster", "provider"],
)
def test_runs_that_differ_in_services_or_place_do_not(other: RunOptions) -> None:
    assert reuse.keeper_name(_options(["redis"])) != reuse.keeper_name(other)


def test_a_claim_is_exclusive_until_released() -> None:
    first = reuse.Claim.take("reuse-x")
    assert first is not None
    assert reuse.claimed("reuse-x")
    assert reuse.Claim.take("reuse-x") is None
    first.release()
    assert not reuse.claimed("reuse-x")
    again = reuse.Claim.take("reuse-x")
    assert again is not None
    again.release()


def test_a_claim_left_by_a_dead_process_does_not_count(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir(exist_ok=True)
    (tmp_path / "runs" / "reuse-y.claim").write_text("999999999")
    assert not reuse.claimed("reuse-y")
