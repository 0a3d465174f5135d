"""The NetworkPolicy engine the kind provider installs on our node, and the isolation probe: what
they render, checked without an engine (the kind tier runs them for real)."""

from __future__ import annotations

from testenv_harness.provision import imagebuild, toolchain
from testenv_harness.provision.clusters import isolation_probe, policy_engine


def test_kube_router_runs_its_firewall_alone_from_the_embedded_image() -> None:
    (container,) = policy_engine.daemonset("kube-testenv.local/kube-router:abc")["spec"]["template"]["spec"][
        "containers"
    ]
    assert container["image"] == "kube-testenv.local/kube-router:abc"
    assert container["imagePullPolicy"] == "IfNotPresent"
    # The advisories against v2.1.0 concern the BGP router and the IPVS proxy: both stay off.
    assert {"--run-firewall=true", "--run-router=false", "--run-service-proxy=false"} <= set(
        container["args"]
    )
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert mounts == {"/lib/modules", "/run/xtables.lock"}


def test_kube_router_may_only_read_the_cluster() -> None:
    role = next(obj for obj in policy_engine.manifests("x") if obj["kind"] == "ClusterRole")
    assert {verb for rule in role["rules"] for verb in rule["verbs"]} == {"get", "list", "watch"}
    resources = {resource for rule in role["rules"] for resource in rule["resources"]}
    assert {"pods", "namespaces", "networkpolicies", "nodes"} <= resources


def test_the_node_image_embeds_the_engine_built_from_the_pinned_module() -> None:
    assert "kube-router" in imagebuild.IMAGES["node"].embeds
    assert toolchain.tool_of("kube-router").version == toolchain.KUBE_ROUTER_VERSION == "v2.1.0"


def test_the_probe_policy_admits_one_port_of_the_server_only() -> None:
    policy = isolation_probe._policy("p", "abc")["spec"]
    assert policy["podSelector"]["matchLabels"][f"{isolation_probe.PROBE_LABEL}-role"] == "server"
    assert policy["ingress"] == [{"ports": [{"protocol": "TCP", "port": isolation_probe.ALLOWED_PORT}]}]


def test_a_verdict_names_what_to_install_when_policies_are_ignored() -> None:
    open_ = isolation_probe.Verdict(False, "port answered", 6.0).message("kind cluster 'x'")
    assert open_.startswith("WARNING")
    assert "kube-router" in open_
    assert "Calico" in open_
    assert "enforces" in isolation_probe.Verdict(True, "", 2.0).message("kind cluster 'x'")
