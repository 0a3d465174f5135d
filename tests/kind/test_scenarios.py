"""The e2e scenarios of tests/e2e, unchanged, on a real kind cluster: real pods from real images."""

from __future__ import annotations

from pathlib import Path

import pytest

from testenv_harness.clusters import Cluster
from tests.e2e import test_harness as shared
from tests.suites import Run

test_what_one_worker_writes_the_other_never_sees = shared.test_what_one_worker_writes_the_other_never_sees
test_a_restart_in_one_worker_fails_no_test_in_another = (
    shared.test_a_restart_in_one_worker_fails_no_test_in_another
)


@pytest.mark.parametrize("workers", ["1", "2", "4"])
def test_the_example_suite_passes_on_kind_and_leaves_nothing_behind(
    run_suite: Run, example_suite: Path, e2e_cluster: Cluster, workers: str
) -> None:
    shared.test_the_example_suite_passes_and_leaves_nothing_behind(
        run_suite, example_suite, e2e_cluster, workers
    )
