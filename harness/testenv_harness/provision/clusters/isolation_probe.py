"""Does this cluster enforce NetworkPolicies? Asked of the cluster itself, not of its CNI's name.

Every worker namespace gets NetworkPolicies, but they are only objects unless the cluster's
network enforces them. The probe: one server pod listening on two ports, a NetworkPolicy that
admits the first port only, and one client pod that must reach the first and be refused (or time
out) on the second. The first port answering proves the probe itself works; the second answering
too means nothing enforces policies. A few seconds on a node that has the images; pods are
real, so it is for kind and existing clusters only, never the local (kwok) one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import uuid
from collections.abc import Callable
from typing import Any

from urllib3.exceptions import HTTPError

from testenv_api import LABEL_MANAGED_BY, MANAGED_BY
from testenv_harness.ground import k8s

PROBE_LABEL = "testenv.dev/isolation-probe"
ALLOWED_PORT, DENIED_PORT = 7001, 7002
#: Where the node cannot have our redis image: the catalog's default one (what a cluster running
#: redis services pulls anyway). It has redis-server, redis-cli, sh and coreutils' timeout.
UPSTREAM_IMAGE = "redis:7.2.7"
#: How long the client keeps seeing the denied port answer before it concludes nothing enforces:
#: an engine needs a moment to program a new pod and policy.
SETTLE_SECONDS = 5

#: The client: wait for the allowed port, then for the denied one to stop answering.
_CLIENT = f"""
ping() {{ [ "$(timeout 2 redis-cli -h "$SERVER" -p "$1" ping 2>/dev/null)" = PONG ]; }}
for i in $(seq 1 120); do ping {ALLOWED_PORT} && break; sleep 0.25; done
ping {ALLOWED_PORT} || {{ echo "result=unreachable"; exit 0; }}
for i in $(seq 1 {SETTLE_SECONDS * 4}); do
  ping {DENIED_PORT} || {{ echo "result=enforced"; exit 0; }}
  sleep 0.25
done
echo "result=open"
"""
_SERVER = (
    f"redis-server --port {ALLOWED_PORT} --protected-mode no --save '' --daemonize yes "
    f"&& exec redis-server --port {DENIED_PORT} --protected-mode no --save ''"
)


@dataclasses.dataclass(frozen=True)
class Verdict:
    #: True: enforced; False: policies are ignored; None: the probe could not tell.
    enforced: bool | None
    detail: str
    seconds: float

    def message(self, what: str) -> str:
        if self.enforced:
            return f"{what} enforces NetworkPolicies (probed in {self.seconds:.1f}s)"
        if self.enforced is False:
            return (
                f"WARNING: {what} does not enforce NetworkPolicies: a worker's pods can reach other "
                "workers' services. Install a policy engine (Calico, Cilium, kube-router's firewall, or "
                "kind's default kindnetd where the kernel has nftables queue support); on our offline kind "
                "node, rebuild the node image (`make kind-images`) and recreate the cluster"
            )
        return f"could not tell whether {what} enforces NetworkPolicies: {self.detail}"


def _pod(name: str, role: str, probe: str, image: str, command: str, env: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {PROBE_LABEL: probe, f"{PROBE_LABEL}-role": role, LABEL_MANAGED_BY: MANAGED_BY},
        },
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "automountServiceAccountToken": False,
            "containers": [
                {
                    "name": role,
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["sh", "-c", command],
                    "env": [{"name": k, "value": v} for k, v in env.items()],
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
                }
            ],
        },
    }


def _policy(name: str, probe: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "labels": {PROBE_LABEL: probe, LABEL_MANAGED_BY: MANAGED_BY}},
        "spec": {
            "podSelector": {"matchLabels": {PROBE_LABEL: probe, f"{PROBE_LABEL}-role": "server"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"ports": [{"protocol": "TCP", "port": ALLOWED_PORT}]}],
        },
    }


def probe(api: k8s.client.ApiClient, namespace: str, image: str, timeout: float = 60) -> Verdict:
    """Run the probe in `namespace` with `image` (it needs redis-server, redis-cli, sh and timeout:
    the redis images, ours or upstream's); everything it creates is deleted before it returns."""
    core, net = k8s.client.CoreV1Api(api), k8s.client.NetworkingV1Api(api)
    probe_id = uuid.uuid4().hex[:6]
    server, client_name, policy = (
        f"testenv-isolation-probe-{probe_id}-{part}" for part in ("server", "client", "policy")
    )
    started = time.monotonic()
    try:
        # A new cluster's controller manager creates each namespace's `default` ServiceAccount
        # shortly after it starts, and pods are refused until then.
        _wait(lambda: _account(core, namespace), started, timeout)
        net.create_namespaced_network_policy(namespace, _policy(policy, probe_id))
        core.create_namespaced_pod(namespace, _pod(server, "server", probe_id, image, _SERVER, {}))
        ip = _wait(lambda: core.read_namespaced_pod(server, namespace).status.pod_ip, started, timeout)
        if ip is None:
            return Verdict(
                None, f"pod {namespace}/{server} got no IP in {timeout:.0f}s", time.monotonic() - started
            )
        core.create_namespaced_pod(
            namespace, _pod(client_name, "client", probe_id, image, _CLIENT, {"SERVER": ip})
        )
        phase = _wait(lambda: _finished(core, client_name, namespace), started, timeout)
        if phase is None:
            return Verdict(
                None,
                f"pod {namespace}/{client_name} did not finish in {timeout:.0f}s",
                time.monotonic() - started,
            )
        log = core.read_namespaced_pod_log(client_name, namespace)
    except k8s.ApiException as exc:
        return Verdict(
            None,
            f"the API refused the probe in {namespace}: {exc.status} {exc.reason}",
            time.monotonic() - started,
        )
    except (HTTPError, OSError) as exc:
        return Verdict(None, f"the API did not answer the probe: {exc}", time.monotonic() - started)
    finally:
        _clean(core, net, namespace, probe_id)
    took = time.monotonic() - started
    result = next((line.split("=", 1)[1] for line in log.splitlines() if line.startswith("result=")), "")
    if result == "enforced":
        return Verdict(True, "the denied port was refused", took)
    if result == "open":
        return Verdict(False, f"port {DENIED_PORT} still answered {SETTLE_SECONDS}s after the policy", took)
    return Verdict(None, f"the client could not reach the allowed port either ({log.strip()[-200:]!r})", took)


def _account(core: k8s.client.CoreV1Api, namespace: str) -> str | None:
    try:
        return str(core.read_namespaced_service_account("default", namespace).metadata.name)
    except k8s.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _finished(core: k8s.client.CoreV1Api, name: str, namespace: str) -> str | None:
    phase: str | None = core.read_namespaced_pod(name, namespace).status.phase
    return phase if phase in ("Succeeded", "Failed") else None


def _wait(read: Callable[[], str | None], started: float, timeout: float) -> str | None:
    while time.monotonic() - started < timeout:
        value = read()
        if value:
            return value
        time.sleep(0.25)
    return None


def _clean(
    core: k8s.client.CoreV1Api, net: k8s.client.NetworkingV1Api, namespace: str, probe_id: str
) -> None:
    """Delete what the probe made; leftovers (an API error here) carry its label for `kubectl delete
    pods,networkpolicies -l testenv.dev/isolation-probe`."""
    selector = f"{PROBE_LABEL}={probe_id}"
    with contextlib.suppress(k8s.ApiException):
        core.delete_collection_namespaced_pod(namespace, label_selector=selector, grace_period_seconds=0)
    with contextlib.suppress(k8s.ApiException):
        net.delete_collection_namespaced_network_policy(namespace, label_selector=selector)
