"""rabbitmq: one RabbitMQ node per worker as a host process on the local cluster (no container
runtime); restarted to be wiped (a new node, a new Mnesia folder).

Each simulated rabbitmq pod gets a node of its own from Debian's rabbitmq-server package, run
from the package's scripts in /usr/lib/rabbitmq/bin (not /usr/sbin's wrappers, which switch to the
`rabbitmq` user). Several nodes share one host, as root or not, so everything a node has is its
own: an Erlang node name derived from the pod, AMQP on 127.0.0.1:<the pod's host port>, the
distribution port and an epmd port picked free, and every file (HOME with the Erlang cookie,
Mnesia, logs, rabbitmq.conf, the empty enabled-plugins file) in the pod's workdir. Nothing is read
from /etc/rabbitmq or written to /var/lib/rabbitmq, /var/log/rabbitmq or the user's home.

Nothing may outlive the data plane, even after a `kill -9` of the run, when only the kernel's
parent-death signal (armed on the process the data plane starts) fires. So:

* epmd: when none answers, Erlang and RabbitMQ start `epmd -daemon`, which leaves the process
  group and lives on. A small `sh` wrapper starts the node's own epmd in the foreground instead,
  on the node's own ERL_EPMD_PORT, with its own parent-death signal (`setpriv --pdeathsig KILL`),
  waits until it answers, and then `exec`s the server, so the wrapper's process (and epmd's
  parent) becomes the Erlang VM. `-start_epmd false` (ERL_AFLAGS, read by every `erl` this node
  starts, such as the one-off VM RabbitMQ runs to "ensure epmd" at boot and every minute) makes
  sure no `epmd -daemon` is ever started, even while the node's epmd is already gone.
* the VM: rabbitmq-server normally runs `erl` as a background child of the script, which a
  SIGKILL of the script would orphan. Any non-empty RABBITMQ_ALLOW_INPUT makes it `exec` erl
  instead (as under systemd), so the VM is the very process that carries the parent-death
  signal; `-noinput` is passed back in by hand, as that variable also drops it. Its helper
  processes (erl_child_setup, port programs) end when the VM's pipes to them close.

Start-up and memory are tuned for a node that lives for one test run on a small CI host (see
`SERVER_ERL_ARGS`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

from testenv_harness.ground.localports import free_port
from testenv_harness.services.base import Launch, Ping, PodSpec, RunnerError, ServiceType

#: The package's own start script (Debian's /usr/sbin/rabbitmq-server would switch users).
RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
NOT_INSTALLED = (
    "rabbitmq-server is not installed: `apt-get install rabbitmq-server` "
    "(or run `make local-deps`, which does)"
)

#: What the rabbitmq image does when the pod sets none of RABBITMQ_DEFAULT_USER/_PASS/_VHOST.
DEFAULT_USER = "guest"
DEFAULT_PASS = "guest"
DEFAULT_VHOST = "/"

#: Emulator flags for the server VM (RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS), after the script's own.
#: `-noinput`: see the module docstring. One scheduler and one dirty CPU scheduler instead of one
#: per core: several nodes share a small CI host and a test node's traffic fits one core; it saves
#: ~5 MiB a node and measured no slower to start (module loading dominates either way).
SERVER_ERL_ARGS = ("-noinput", "+S", "1:1", "+SDcpu", "1:1")
#: Process and port table sizes (RabbitMQ asks for 1Mi and 64Ki): the VM allocates them up front,
#: and the smaller ones save ~12 MiB a node. A test node needs a few thousand processes at most.
MAX_PROCESSES = 65536
MAX_PORTS = 16384
#: Flags for every `erl` started with this environment (the server and its one-off helpers): never
#: start an `epmd -daemon`, and listen for distribution on the loopback interface only.
ERL_AFLAGS = "-start_epmd false -kernel inet_dist_use_interface {127,0,0,1}"

#: The wrapper `sh -c` runs: $1 setpriv, $2 epmd, $3 epmd's port, $4 rabbitmq-server. It starts
#: the node's epmd in the foreground of this process group, dying with its parent (this process,
#: the VM after the `exec`), waits up to ~5 s for it to answer, then becomes the server.
_WRAPPER = """\
"$1" --pdeathsig KILL -- "$2" -port "$3" -address 127.0.0.1 &
tries=0
until "$2" -port "$3" -names >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ "$tries" -gt 250 ]; then
        echo "rabbitmq node: its epmd did not start on 127.0.0.1:$3" >&2
        exit 1
    fi
    sleep 0.02
done
exec "$4"
"""

#: Erlang short node names: letters, digits, '_' and '-' (epmd allows 255 bytes; we keep it short).
_NODE_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]+")
_NODE_NAME_MAX = 64
#: Inherited variables that would point the node at the host's RabbitMQ or Erlang set-up.
_DROPPED_PREFIXES = ("RABBITMQ_", "ERL_")
_DROPPED = frozenset({"NOTIFY_SOCKET", "detached", "SYS_PREFIX", "CONF_ENV_FILE"})


@dataclasses.dataclass(frozen=True)
class RabbitLaunch:
    """How to start one node: run `argv` with `env` after `prepare()` wrote its files."""

    argv: list[str]
    env: dict[str, str]
    prepare: Callable[[], None]
    #: the Erlang node name, `<name>@localhost`
    node: str
    epmd_port: int
    dist_port: int


def node_name(namespace: str, name: str) -> str:
    """The node's Erlang short name (without `@localhost`): `rabbit-<namespace>-<name>`, reduced to
    the characters a node name may hold, and cut (with a hash, to stay unique) when it is long."""
    base = _NODE_NAME_CHARS.sub("-", f"rabbit-{namespace}-{name}").strip("-") or "rabbit"
    if len(base) <= _NODE_NAME_MAX and base == f"rabbit-{namespace}-{name}":
        return base
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:8]
    return f"{base[: _NODE_NAME_MAX - 9].rstrip('-')}-{digest}"


def _conf_safe(value: str) -> bool:
    """Whether rabbitmq.conf can hold `value` as it is: its parser (cuttlefish) ends a value at '#',
    trims it, and reads the file as Latin-1, so only printable ASCII without '#' and without
    surrounding blanks comes through unchanged."""
    return (
        bool(value) and value == value.strip() and "#" not in value and all(" " <= ch <= "~" for ch in value)
    )


def _erlang_binary(value: str) -> str:
    """`value` as an Erlang binary literal of its UTF-8 bytes (exact for any text)."""
    return "<<" + ",".join(str(byte) for byte in value.encode()) + ">>"


def rabbitmq_config(
    amqp_port: int, user: str, password: str, vhost: str, pod: str = ""
) -> tuple[str, str | None]:
    """rabbitmq.conf, and advanced.config (None when not needed) for the node.

    The default user, password and vhost go into rabbitmq.conf; one that file cannot hold exactly
    (see `_conf_safe`) goes into advanced.config instead, as the UTF-8 bytes a client sends."""
    lines = [
        f"# RabbitMQ node of pod {pod}, written by kube-testenv" if pod else "# written by kube-testenv",
        f"listeners.tcp.default = 127.0.0.1:{amqp_port}",
        # the image lets guest (any user) log in from other hosts: port-forwards are not loopback
        "loopback_users = none",
        # logs on the console (the data plane's process.log), as the image sends them to kubectl logs
        "log.console = true",
        "log.console.level = info",
        "log.console.use_colors = off",
        "log.file = false",
    ]
    advanced = []
    for key, value in (("default_user", user), ("default_pass", password), ("default_vhost", vhost)):
        if _conf_safe(value):
            lines.append(f"{key} = {value}")
        else:
            advanced.append(f"{{{key}, {_erlang_binary(value)}}}")
    advanced_config = "[{rabbit, [" + ", ".join(advanced) + "]}].\n" if advanced else None
    return "\n".join(lines) + "\n", advanced_config


def _tool(program: str, package: str) -> str:
    found = shutil.which(program) or next(
        (str(p) for p in (Path("/usr/bin", program), Path("/usr/sbin", program)) if p.exists()), None
    )
    if not found:
        raise RunnerError(
            f"{program} is not installed: `apt-get install {package}` (or run `make local-deps`, which does)"
        )
    return found


def _broker_app(server: Path) -> Path | None:
    """The broker's own application folder (`.../plugins/rabbit-<version>`) next to `server`.

    The node's plugins folder holds only this (as a link): RabbitMQ loads every application in
    its plugins folder to look for config schemas, and then scans each loaded application's
    modules for boot steps and feature flags, which nearly doubled its start-up (~6.5 s to
    ~3.7 s measured). The broker's dependencies still come from the code path (ERL_LIBS, set by
    the script to the package's whole plugins folder), and no plugin is enabled anyway."""
    plugins = server.resolve().parent.parent / "plugins"
    found = sorted(p for p in plugins.glob("rabbit-[0-9]*") if p.is_dir())
    return found[-1] if found else None


def _base_env() -> dict[str, str]:
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(_DROPPED_PREFIXES) and key not in _DROPPED
    }


def rabbitmq_launch(
    namespace: str,
    name: str,
    env: Mapping[str, str],
    amqp_port: int,
    workdir: Path,
    *,
    server: Path = RABBITMQ_SERVER,
) -> RabbitLaunch:
    """How to run the RabbitMQ node of pod `namespace/name` with AMQP on 127.0.0.1:`amqp_port`,
    all its files in `workdir` (which must exist when `prepare` runs).

    `env` is the pod's environment: RABBITMQ_DEFAULT_USER / _PASS / _VHOST as the image reads them
    (guest / guest / "/" when unset or empty). Raises RunnerError when the package is missing.
    """
    if not (server.is_file() and os.access(server, os.X_OK)):
        raise RunnerError(NOT_INSTALLED)
    epmd = _tool("epmd", "erlang-base")
    setpriv = _tool("setpriv", "util-linux")
    workdir = workdir.absolute()
    user = env.get("RABBITMQ_DEFAULT_USER") or DEFAULT_USER
    password = env.get("RABBITMQ_DEFAULT_PASS") or DEFAULT_PASS
    vhost = env.get("RABBITMQ_DEFAULT_VHOST") or DEFAULT_VHOST
    node = f"{node_name(namespace, name)}@localhost"
    epmd_port = free_port()
    dist_port = free_port()

    conf, advanced = rabbitmq_config(amqp_port, user, password, vhost, f"{namespace}/{name}")
    home = workdir / "home"
    config_file = workdir / "rabbitmq.conf"
    advanced_file = workdir / "advanced.config"
    plugins_file = workdir / "enabled_plugins"
    mnesia = workdir / "mnesia"
    logs = workdir / "log"
    plugins_dir = workdir / "plugins"

    node_env = _base_env()
    node_env.update(
        {
            "HOME": str(home),  # where Erlang keeps .erlang.cookie
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "RABBITMQ_NODENAME": node,
            "RABBITMQ_DIST_PORT": str(dist_port),
            "ERL_EPMD_PORT": str(epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_AFLAGS": ERL_AFLAGS,
            "ERL_CRASH_DUMP": str(logs / "erl_crash.dump"),
            "ERL_MAX_PORTS": str(MAX_PORTS),
            "RABBITMQ_MAX_NUMBER_OF_PROCESSES": str(MAX_PROCESSES),
            # several VMs share the cores: none may pin its schedulers to them
            "RABBITMQ_SCHEDULER_BIND_TYPE": "u",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": " ".join(SERVER_ERL_ARGS),
            # Any value makes the script exec erl (see the module docstring); RabbitMQ itself reads
            # only a yes (to colour its banner), so it takes this as what it is: no input.
            "RABBITMQ_ALLOW_INPUT": "no",
            # every file the node reads or writes, in workdir; the ones that do not exist are skipped
            "RABBITMQ_CONF_ENV_FILE": str(workdir / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(config_file),
            "RABBITMQ_CONFIG_FILES": str(workdir / "conf.d" / "*.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(advanced_file),
            "RABBITMQ_MOTD_FILE": str(workdir / "motd"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins_file),
            "RABBITMQ_MNESIA_BASE": str(mnesia),
            "RABBITMQ_LOG_BASE": str(logs),
        }
    )

    broker = _broker_app(server)
    if broker is not None:
        node_env["RABBITMQ_PLUGINS_DIR"] = str(plugins_dir)

    def prepare() -> None:
        for folder in (home, mnesia, logs):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if broker is not None:
            plugins_dir.mkdir(exist_ok=True)
            (plugins_dir / broker.name).symlink_to(broker, target_is_directory=True)
        config_file.write_text(conf)
        if advanced is not None:
            advanced_file.touch(mode=0o600)  # it may hold the password
            advanced_file.write_text(advanced)
        plugins_file.write_text("[].\n")  # no plugins: no management UI, the fastest start

    argv = ["/bin/sh", "-c", _WRAPPER, "rabbitmq-node", setpriv, epmd, str(epmd_port), str(server)]
    return RabbitLaunch(argv, node_env, prepare, node, epmd_port, dist_port)


def _local(pod: PodSpec, workdir: Path) -> Launch:
    (port,) = pod.ports.values()
    node = rabbitmq_launch(pod.namespace, pod.name, pod.env, port, workdir)
    return Launch(node.argv, node.env, (port,), prepare=node.prepare)


RABBITMQ = ServiceType(
    "rabbitmq",
    variables=("AMQP_URL",),
    # the AMQP 0-9-1 protocol header, answered by a Connection.Start frame (frame type 1)
    ping=Ping.answered_by(b"AMQP\x00\x00\x09\x01", b"\x01"),
    local=_local,
    image_suite="trixie",
)
TYPES = (RABBITMQ,)
