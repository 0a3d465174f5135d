"""postgres: one PostgreSQL server per worker from Debian's packages on the local cluster, made
as the postgres image makes it; restarted to be wiped (a new server, a new data folder)."""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

from testenv_harness.services.base import Launch, Ping, PodSpec, RunnerError, ServiceType, need

#: SSLRequest: a server answers 'N' (no TLS) or 'S' before anything else.
_SSL_REQUEST = struct.pack(">ii", 8, 80877103)


def _postgres_bin() -> Path:
    """The newest PostgreSQL server Debian's packages installed (/usr/lib/postgresql/N/bin)."""
    servers = Path("/usr/lib/postgresql").glob("*/bin/postgres")
    found = [p.parent for p in servers if p.parent.parent.name.isdigit()]
    if not found:
        raise RunnerError(
            "PostgreSQL is not installed: `apt-get install postgresql` (or run `make local-deps`, which does)"
        )
    return max(found, key=lambda b: int(b.parent.name))


def _not_root(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root, and CI jobs run as root. There the server runs in a user
    namespace of its own with no mapping: inside it the process and the files it makes are
    "nobody"'s (so its ownership checks pass), while on disk they stay root's, in the run's own
    0700 folder. Nobody else's user or folder is needed."""
    return [need("unshare", "util-linux"), "--user", *argv] if os.geteuid() == 0 else argv


def _quoted(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _postgres(pod: PodSpec, workdir: Path) -> Launch:
    """One server per worker, made as the postgres image makes it: POSTGRES_USER (a superuser)
    with POSTGRES_PASSWORD, and the database POSTGRES_DB (the user's name when unset)."""
    (port,) = pod.ports.values()
    bin_dir = _postgres_bin()
    user = pod.env.get("POSTGRES_USER") or "postgres"
    password = pod.env.get("POSTGRES_PASSWORD", "")
    database = pod.env.get("POSTGRES_DB") or user
    for name, value in (("POSTGRES_USER", user), ("POSTGRES_DB", database)):
        if any(ord(ch) < 0x20 or ch == "\x7f" for ch in value):  # a line break would end the statement
            raise RunnerError(
                f"{pod.namespace}/{pod.name}: {name} holds a control character; use a plain name"
            )
    data = workdir / "data"

    def run(argv: list[str], what: str, stdin: str = "") -> str:
        done = subprocess.run(
            _not_root(argv), input=stdin, capture_output=True, text=True, timeout=120, check=False
        )
        output = done.stdout + done.stderr
        if done.returncode or " ERROR: " in output or " FATAL: " in output:
            if "unshare failed" in output:
                raise RunnerError(
                    "PostgreSQL refuses to run as root, and this host does not let root make a user "
                    "namespace to run it in: run the tests as a non-root user, or use --testenv-cluster kind"
                )
            raise RunnerError(f"{what} for {pod.namespace}/{pod.name} failed:\n{output.strip()[-2000:]}")
        return output

    def prepare() -> None:
        secret = workdir / "password"
        secret.touch(mode=0o600)
        secret.write_text(password + "\n")
        try:
            initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", user, f"--pwfile={secret}"]
            host_auth = "scram-sha-256" if password else "trust"  # the image's POSTGRES_HOST_AUTH_METHOD
            initdb += [f"--auth-host={host_auth}", "--auth-local=trust", "--encoding=UTF8"]
            run([*initdb, "--locale=C.UTF-8", "--no-sync", "--no-instructions"], "initdb")
        finally:
            secret.unlink()
        if database != "postgres":
            single = [str(bin_dir / "postgres"), "--single", "-D", str(data), "-F", "-c", "listen_addresses="]
            statement = f"CREATE DATABASE {_quoted(database)} OWNER {_quoted(user)};\n"
            run([*single, "postgres"], "creating its database", statement)

    argv = [str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-c", "listen_addresses=127.0.0.1"]
    argv += ["-c", "unix_socket_directories=", "-c", "log_destination=stderr"]
    # a test database keeps nothing across a crash: no waiting on the disk
    argv += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
    return Launch(_not_root(argv), dict(os.environ), (port,), prepare=prepare)


POSTGRES = ServiceType(
    "postgres",
    variables=("DATABASE_URL",),
    ping=Ping(_SSL_REQUEST, lambda answer: answer[:1] in (b"N", b"S")),
    local=_postgres,
    image_suite="trixie",
)
TYPES = (POSTGRES,)
