"""The operator's Prometheus metrics, scraped from a real operator process (on the free port the
harness gave it) around real creations, claims and deletions on the local cluster: the numbers
move as the objects do."""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from testenv_api import Phase
from testenv_harness.ground.waiting import wait_for
from testenv_harness.provision.operator_process import OperatorProcess

from . import environments as te

pytestmark = pytest.mark.usefixtures("running_operator")
REDIS = [{"name": "redis", "type": "redis"}]
#: A sample's name and its labels, sorted.
Key = tuple[str, tuple[tuple[str, str], ...]]


class Page(dict[Key, float]):
    """One scrape: each sample's value by its name and labels."""

    def __call__(self, name: str, **labels: str) -> float:
        return self.get((name, tuple(sorted(labels.items()))), 0.0)

    def total(self, name: str) -> float:
        return sum(value for (sample, _), value in self.items() if sample == name)


def scrape(process: OperatorProcess) -> Page:
    with urllib.request.urlopen(process.metrics, timeout=5) as response:
        text = response.read().decode()
    page = Page()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            page[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return page


def wait_page(process: OperatorProcess, what: str, reached: Callable[[Page], bool]) -> Page:
    """The first scrape where `reached` holds: the gauges follow the operator's watch events, a
    moment after the API server answered the test."""
    last = Page()

    def check() -> Page | None:
        nonlocal last
        last = scrape(process)
        return last if reached(last) else None

    return wait_for(check, timeout=30, what=what, interval=0.1, seen=lambda: _testenv_lines(last))


def settled(api: client.ApiClient, process: OperatorProcess) -> Page:
    """A scrape once no TestEnvironment is being deleted and the gauge counts as many as exist
    (`te.settled_count`): the counts compared below move only with this test's own objects."""
    return wait_page(
        process,
        "the gauge to count the cluster's environments",
        lambda page: page.total("testenv_environments") == te.settled_count(api),
    )


def _testenv_lines(page: Page) -> str:
    return "; ".join(
        f"{name}{dict(labels)}={value}"
        for (name, labels), value in sorted(page.items())
        if name.startswith("testenv_") and not name.endswith(("_bucket", "_created"))
    )


@pytest.fixture
def watch_phases(api: client.ApiClient, running_operator: OperatorProcess) -> Iterator[set[str]]:
    """Every environment phase with more environments than at the start, over the test's scrapes
    every 50 ms (a phase may last less than a wait_for's look). The start is a settled page, so
    an earlier test's environment leaving its phase meanwhile hides no phase of this test's."""
    seen: set[str] = set()
    start = settled(api, running_operator)
    stop = threading.Event()

    def keep_scraping() -> None:
        while not stop.wait(0.05):
            page = scrape(running_operator)
            seen.update(
                p.value
                for p in Phase
                if page("testenv_environments", phase=p.value) > start("testenv_environments", phase=p.value)
            )

    scraper = threading.Thread(target=keep_scraping, daemon=True)
    scraper.start()
    yield seen
    stop.set()
    scraper.join(5)


def test_an_environment_is_counted_by_phase_timed_to_ready_and_forgotten_once_deleted(
    api: client.ApiClient, tenant: str, running_operator: OperatorProcess, watch_phases: set[str]
) -> None:
    before = settled(api, running_operator)
    assert before("testenv_leader") == 1
    ready = "testenv_environment_ready_seconds_count"
    passed = "testenv_passes_total"

    te.create(api, tenant, te.manifest("counted", workers=2, services=REDIS))
    te.wait_phase(api, tenant, "counted", Phase.READY, readyWorkers=2)
    after = wait_page(
        running_operator,
        "the metrics to show one more Ready environment, timed",
        lambda page: (
            page("testenv_environments", phase="Ready") == before("testenv_environments", phase="Ready") + 1
            and page(ready, pooled="false") == before(ready, pooled="false") + 1
        ),
    )
    assert after.total("testenv_environments") == before.total("testenv_environments") + 1
    assert after(ready, pooled="true") == before(ready, pooled="true")
    seconds = after("testenv_environment_ready_seconds_sum", pooled="false") - before(
        "testenv_environment_ready_seconds_sum", pooled="false"
    )
    assert 0 <= seconds < 90, "from its creation to its Ready, which the test waited for"
    # The first pass applies every worker; the later ones report what the watches show.
    assert after(passed, kind="environment", result="ok") > before(passed, kind="environment", result="ok")
    timed = "testenv_pass_duration_seconds_count"
    apply = {"kind": "environment", "depth": "apply"}
    assert after(timed, **apply) > before(timed, **apply)
    assert "Provisioning" in watch_phases or "Pending" in watch_phases, "it was counted before it was Ready"

    te.delete(api, tenant, "counted")
    gone = wait_page(
        running_operator,
        "the deleted environment to leave the metrics",
        lambda page: page.total("testenv_environments") == before.total("testenv_environments"),
    )
    assert gone("testenv_environments", phase="Ready") == before("testenv_environments", phase="Ready")
    assert "Terminating" in watch_phases, "it was counted as Terminating while its namespaces went"
    # Histograms and counters keep what happened.
    assert gone(ready, pooled="false") == before(ready, pooled="false") + 1


def test_a_pool_shows_its_phase_and_workers_and_a_claim_is_timed_as_pooled(
    api: client.ApiClient, tenant: str, running_operator: OperatorProcess
) -> None:
    before = settled(api, running_operator)
    where = {"namespace": tenant, "pool": "warm"}
    try:
        te.create_pool(api, tenant, te.pool_manifest("warm", 1, REDIS, portBase=43000))
        te.wait_pool(api, tenant, "warm", phase="Ready", free=1, ready=1)
        filled = wait_page(
            running_operator,
            "the metrics to show the pool Ready with one worker ready",
            lambda page: (
                page("testenv_pools", phase="Ready") == before("testenv_pools", phase="Ready") + 1
                and page("testenv_pool_workers_ready", **where) == 1
            ),
        )
        assert filled("testenv_pool_workers_free", **where) == 1
        assert filled("testenv_pool_workers_claimed", **where) == 0
        assert filled("testenv_passes_total", kind="pool", result="ok") > before(
            "testenv_passes_total", kind="pool", result="ok"
        )

        te.create(api, tenant, te.manifest("claimer", workers=1, services=REDIS))
        te.wait_phase(api, tenant, "claimer", Phase.READY, readyWorkers=1)
        te.wait_pool(api, tenant, "warm", phase="Ready", free=1, ready=1, claimed=1)
        ready = "testenv_environment_ready_seconds_count"
        claimed = wait_page(
            running_operator,
            "the claim to show in the pool's workers and the pooled create-to-Ready",
            lambda page: (
                page("testenv_pool_workers_claimed", **where) == 1
                and page("testenv_pool_workers_ready", **where) == 1
                and page(ready, pooled="true") == before(ready, pooled="true") + 1
            ),
        )
        assert claimed(ready, pooled="false") == before(ready, pooled="false")
    finally:
        te.delete_all(api, tenant)  # the claimer first: the pool leaves its worker alone
        te.delete_pool(api, tenant, "warm")
    wait_page(
        running_operator,
        "the deleted pool to leave the metrics",
        lambda page: (
            ("testenv_pool_workers_free", tuple(sorted(where.items()))) not in page
            and page.total("testenv_pools") == before.total("testenv_pools")
        ),
    )
