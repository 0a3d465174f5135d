"""The local cluster is reachable from this machine only, and its etcd only by the API server.

Every process of the cluster must listen on loopback addresses: a control plane on `*` serves
the whole network (and etcd holds every Secret in plain text). etcd's client port must also
refuse anyone without a client certificate signed by the cluster's CA, so another local user
cannot read /registry/ either.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import ssl
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from testenv_harness.provision.clusters import Cluster, LocalProvider, kwokctl_config

#: /proc/net/tcp's state column for a listening socket.
_TCP_LISTEN = "0A"
_RANGE_ALL_KEYS = json.dumps({"key": "AA==", "range_end": "AA=="})  # base64 of b"\0": every key


def _hex_address(hex_ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Decode /proc/net/tcp{,6}'s address: 32-bit words in the host's (little-endian) byte order."""
    raw = bytes.fromhex(hex_ip)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(words)


def _listening_inodes() -> dict[int, tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]]:
    """Every listening TCP socket of this network namespace, by inode: (address, port)."""
    sockets = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            if state == _TCP_LISTEN:
                hex_ip, hex_port = local.split(":")
                sockets[inode] = (_hex_address(hex_ip), int(hex_port, 16))
    return sockets


def _socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets a process holds open (its fd links read `socket:[inode]`)."""
    inodes = set()
    fds = Path(f"/proc/{pid}/fd")
    for fd in fds.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed while we looked
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def _command(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def _listeners(
    provider: LocalProvider,
) -> list[tuple[str, ipaddress.IPv4Address | ipaddress.IPv6Address, int]]:
    """(program, address, port) of every listening TCP socket of the cluster's processes."""
    listening = _listening_inodes()
    found = []
    for pid in provider.processes():
        program = Path(_command(pid)[0]).name
        for inode in _socket_inodes(pid) & listening.keys():
            address, port = listening[inode]
            found.append((program, address, port))
    return found


def _is_loopback(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _host(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return f"[{address}]" if address.version == 6 else str(address)


@pytest.fixture(scope="module")
def provider(local_cluster: Cluster) -> LocalProvider:
    return LocalProvider(local_cluster.name)


def _flag(pid: int, name: str) -> str | None:
    prefix = f"--{name}="
    return next((arg[len(prefix) :] for arg in _command(pid) if arg.startswith(prefix)), None)


def _etcd_pid(provider: LocalProvider) -> int:
    pids = [pid for pid in provider.processes() if Path(_command(pid)[0]).name == "etcd"]
    assert len(pids) == 1, f"expected one etcd process, found {pids}"
    return pids[0]


def test_every_component_listens_on_loopback_only(provider: LocalProvider) -> None:
    listeners = _listeners(provider)
    programs = {program for program, _, _ in listeners}
    # Not vacuous: the processes that serve anything were found, with their sockets.
    assert {"etcd", "kube-apiserver", "kwok-controller"} <= programs, listeners
    exposed = [
        f"{program} on {_host(address)}:{port}"
        for program, address, port in listeners
        if not _is_loopback(address)
    ]
    assert not exposed, "listening beyond this machine: " + ", ".join(sorted(exposed))


def _etcd_client_address(provider: LocalProvider) -> tuple[str, int]:
    """Where etcd serves clients, from its own command line (the first of --listen-client-urls)."""
    url = urlsplit((_flag(_etcd_pid(provider), "listen-client-urls") or "").split(",")[0])
    assert url.hostname, f"etcd's --listen-client-urls: {url.geturl()!r}"
    assert url.port, f"etcd's --listen-client-urls: {url.geturl()!r}"
    return url.hostname, url.port


def _post_range(conn: http.client.HTTPConnection, body: str) -> tuple[int, bytes]:
    """etcd's JSON gateway: POST /v3/kv/range, the call that reads keys."""
    try:
        conn.request("POST", "/v3/kv/range", body=body)
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def test_etcd_client_port_is_tls_with_client_certificates(provider: LocalProvider) -> None:
    host, port = _etcd_client_address(provider)

    # Plain HTTP must get no key out of it (Go's TLS server answers it with a 400 at most).
    try:
        status, body = _post_range(http.client.HTTPConnection(host, port, timeout=10), _RANGE_ALL_KEYS)
    except (ConnectionError, http.client.HTTPException):
        status, body = 0, b""  # refused outright: as good
    assert status != 200, f"etcd served plain HTTP: {body[:200]!r}"

    pki = provider.cluster_dir / "pki"
    # TLS without a client certificate must fail too (in the handshake, or at the first read).
    anonymous = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _post_range(http.client.HTTPSConnection(host, port, timeout=10, context=anonymous), _RANGE_ALL_KEYS)

    # The control: with the cluster's certificate the same port answers, so the two refusals
    # above are etcd's and not a wrong port's.
    trusted = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    trusted.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    count_only = json.dumps({"key": "AA==", "range_end": "AA==", "count_only": True})
    status, body = _post_range(
        http.client.HTTPSConnection(host, port, timeout=10, context=trusted), count_only
    )
    assert status == 200, body[:200]
    assert b'"count"' in body, body[:200]  # the API server has written its objects there


def test_a_cluster_made_by_an_older_version_is_told_apart(provider: LocalProvider, tmp_path: Path) -> None:
    # `up` deletes and recreates a cluster whose saved kwok.yaml lacks the loopback + TLS setup,
    # since kwokctl would restart it with the flags it was created with.
    saved = provider.cluster_dir / "kwok.yaml"
    assert kwokctl_config.is_loopback_with_etcd_tls(saved)
    older = tmp_path / "kwok.yaml"
    older.write_text(saved.read_text().replace("bindAddress: 127.0.0.1", "bindAddress: 0.0.0.0"))
    assert not kwokctl_config.is_loopback_with_etcd_tls(older)
    older.write_text(saved.read_text().replace("--client-cert-auth=true", "--client-cert-auth=false"))
    assert not kwokctl_config.is_loopback_with_etcd_tls(older)
    assert not kwokctl_config.is_loopback_with_etcd_tls(tmp_path / "missing.yaml")
