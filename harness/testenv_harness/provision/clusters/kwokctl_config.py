"""The kwokctl configuration that keeps the `local` cluster to this machine, and etcd to its API server.

kwokctl's defaults serve every component on all interfaces (`bindAddress: 0.0.0.0`) and etcd
over plain HTTP, so anyone who reaches the machine can read and write every object, Secrets
included, through etcd's client port. The configuration built here changes three things:

- every component binds to 127.0.0.1 (kwokctl's `bindAddress` option);
- etcd's client and peer ports speak TLS only, and only to clients holding a certificate signed
  by the cluster's CA (`--client-cert-auth`), which on this machine is the API server alone;
- the API server talks to etcd over that TLS with the cluster's certificate.

The certificates are the ones kwokctl generates for every binary-runtime cluster under its
`pki/` folder: a CA, and one certificate (SANs include 127.0.0.1; server and client usages)
that the API server already serves with. Its holder is cluster-admin anyway, so letting it read
etcd gives nobody anything new.

It also turns leader election off for the one kube-controller-manager and kube-scheduler.
With it on (their default), each renews a Lease every 2 s, and exits when it cannot for 10 s:
an API server or etcd that is down or slow that long (a restart on busy cores) left a cluster
that no longer made pods or bound them, with nothing to start them again.

kwokctl only adds flags to a component (`componentsPatches`), or replaces one it set itself
(`override: true`); a URL it wrote must be replaced whole, port included. So the ports are
chosen here, before kwokctl runs, instead of by kwokctl.
"""

from __future__ import annotations

import contextlib
import socket
import tempfile
from collections.abc import Iterator, Mapping, Set
from pathlib import Path
from typing import Any

import yaml

#: The one address every component of the local cluster listens on.
BIND_ADDRESS = "127.0.0.1"

#: kwokctl's options for every port it would otherwise choose itself. All are set, not just
#: etcd's: kwokctl picks free ports downward from 32767, and would pick ours again (they are
#: chosen, not yet bound, while it looks).
PORT_OPTIONS = (
    "etcdPort",
    "etcdPeerPort",
    "kubeApiserverPort",
    "kubeControllerManagerPort",
    "kubeSchedulerPort",
    "kwokControllerPort",
)

#: kwokctl's own search range (it counts down from the top), between the harness's planned
#: local ports: 20000 up for workers, 30000 up for pools.
_HIGHEST_PORT = 32767
_LOWEST_PORT = 10000


def _port_is_free(port: int) -> bool:
    """Free the way kwokctl checks it: bindable on loopback and on the wildcard address."""
    for host in (BIND_ADDRESS, ""):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                return False
    return True


def _saved_configuration(saved: Path) -> dict[str, Any] | None:
    """The KwokctlConfiguration document of a cluster's kwok.yaml (kwokctl saves it at creation)."""
    try:
        documents = list(yaml.safe_load_all(saved.read_text()))
    except (OSError, yaml.YAMLError):
        return None
    for document in documents:
        if isinstance(document, dict) and document.get("kind") == "KwokctlConfiguration":
            return document
    return None


def ports_of_other_clusters(cluster_dir: Path) -> set[int]:
    """The ports every other cluster in kwokctl's folder was given, running or stopped.

    A stopped cluster gets its ports back when it starts again, and one being created has saved
    them before its processes bind them: neither shows up as busy to a bind test.
    """
    taken: set[int] = set()
    for saved in cluster_dir.parent.glob("*/kwok.yaml"):
        if saved.parent != cluster_dir:
            taken |= saved_ports(saved)
    return taken


def saved_ports(saved: Path) -> set[int]:
    """The ports of PORT_OPTIONS a cluster's saved kwok.yaml gives it (none if unreadable)."""
    options = (_saved_configuration(saved) or {}).get("options") or {}
    return {int(options[name]) for name in PORT_OPTIONS if options.get(name)}


def pick_ports(taken: Set[int] = frozenset()) -> dict[str, int]:
    """A free port for each of PORT_OPTIONS, searched as kwokctl searches (down from 32767)."""
    chosen: dict[str, int] = {}
    candidates = (port for port in range(_HIGHEST_PORT - 1, _LOWEST_PORT, -1) if port not in taken)
    for option in PORT_OPTIONS:
        chosen[option] = next(port for port in candidates if _port_is_free(port))
    return chosen


def _arg(key: str, value: str, *, override: bool = False) -> dict[str, object]:
    return {"key": key, "value": value, "override": override}


def _etcd_args(pki: Path, client_port: int, peer_port: int) -> list[dict[str, object]]:
    """etcd's URLs turned to https (kwokctl writes http ones), and its TLS files."""
    client_url = f"https://{BIND_ADDRESS}:{client_port}"
    peer_url = f"https://{BIND_ADDRESS}:{peer_port}"
    return [
        _arg("listen-client-urls", client_url, override=True),
        _arg("advertise-client-urls", client_url, override=True),
        _arg("listen-peer-urls", peer_url, override=True),
        _arg("initial-advertise-peer-urls", peer_url, override=True),
        _arg("initial-cluster", f"node0={peer_url}", override=True),
        _arg("cert-file", str(pki / "admin.crt")),
        _arg("key-file", str(pki / "admin.key")),
        _arg("trusted-ca-file", str(pki / "ca.crt")),
        _arg("client-cert-auth", "true"),
        # The peer port of a one-member cluster has no peer to serve, but it listens all the same.
        _arg("peer-cert-file", str(pki / "admin.crt")),
        _arg("peer-key-file", str(pki / "admin.key")),
        _arg("peer-trusted-ca-file", str(pki / "ca.crt")),
        _arg("peer-client-cert-auth", "true"),
    ]


def _apiserver_args(pki: Path, client_port: int) -> list[dict[str, object]]:
    """The API server reaches etcd over TLS, presenting the cluster's certificate."""
    return [
        _arg("etcd-servers", f"https://{BIND_ADDRESS}:{client_port}", override=True),
        _arg("etcd-cafile", str(pki / "ca.crt")),
        _arg("etcd-certfile", str(pki / "admin.crt")),
        _arg("etcd-keyfile", str(pki / "admin.key")),
    ]


#: Components that run once per cluster, so need no leader election (see the module's docstring).
_SINGLE_CONTROLLERS = ("kube-controller-manager", "kube-scheduler")


def kwokctl_configuration(cluster_dir: Path, ports: Mapping[str, int]) -> dict[str, object]:
    """The KwokctlConfiguration document for `kwokctl create cluster --config`."""
    pki = cluster_dir / "pki"  # where kwokctl's binary runtime writes the cluster's certificates
    return {
        "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
        "kind": "KwokctlConfiguration",
        "options": {"bindAddress": BIND_ADDRESS, **ports},
        "componentsPatches": [
            {"name": "etcd", "extraArgs": _etcd_args(pki, ports["etcdPort"], ports["etcdPeerPort"])},
            {"name": "kube-apiserver", "extraArgs": _apiserver_args(pki, ports["etcdPort"])},
            *({"name": name, "extraArgs": [_arg("leader-elect", "false")]} for name in _SINGLE_CONTROLLERS),
        ],
    }


@contextlib.contextmanager
def config_file(cluster_dir: Path) -> Iterator[Path]:
    """The configuration written to a file for kwokctl to read, removed once the cluster is made.

    It cannot go into the cluster's own folder, which kwokctl expects not to exist yet.
    """
    document = kwokctl_configuration(cluster_dir, pick_ports(ports_of_other_clusters(cluster_dir)))
    with tempfile.TemporaryDirectory(prefix="kube-testenv-kwokctl-") as folder:
        path = Path(folder) / "kwokctl.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        yield path


def is_loopback_with_etcd_tls(saved_config: Path) -> bool:
    """Whether a cluster's saved kwok.yaml is one made this way (older ones listen on `*`).

    kwokctl restarts a cluster with the flags it saved at creation, so only this file tells.
    """
    document = _saved_configuration(saved_config)
    if document is None or (document.get("options") or {}).get("bindAddress") != BIND_ADDRESS:
        return False
    etcd = [c for c in document.get("components") or [] if c.get("name") == "etcd"]
    return bool(etcd) and "--client-cert-auth=true" in (etcd[0].get("args") or [])
