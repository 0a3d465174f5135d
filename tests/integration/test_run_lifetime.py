"""What a run writes into its TestEnvironment's lifetime, as the real API server validates it."""

from __future__ import annotations

from kubernetes import client

from testenv_api import GROUP, PLURAL, VERSION
from testenv_harness.provision.clusters import Cluster
from testenv_harness.run.options import RunOptions
from testenv_harness.run.session import HEARTBEAT_TIMEOUT, RunSession

from . import environments as te


def test_a_short_ttl_bounds_the_runs_default_heartbeat_timeout(
    api: client.ApiClient, crd: None, local_cluster: Cluster, tenant: str
) -> None:
    """The CRD refuses a heartbeat timeout longer than ttlSeconds: a manifest with a TTL under the
    run's default (300 s) and no timeout of its own used to be refused at creation."""
    for ttl, expected in ((120, 120), (7200, HEARTBEAT_TIMEOUT)):
        manifest = te.manifest("short", workers=1, lifetime={"ttlSeconds": ttl})
        options = RunOptions(
            workers=1,
            manifest=manifest,
            provider="local",
            cluster_name=local_cluster.name,
            namespace=tenant,
            operator="cluster",  # nothing serves it here: only what the API server stores matters
        )
        session = RunSession(options, print)
        try:
            session.start()
            body = client.CustomObjectsApi(api).get_namespaced_custom_object(
                GROUP, VERSION, tenant, PLURAL, session.name
            )
            assert body["spec"]["lifetime"] == {"ttlSeconds": ttl, "heartbeatTimeoutSeconds": expected}
        finally:
            session.stop()
            session.remove_run_dir()
