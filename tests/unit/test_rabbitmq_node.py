"""The local cluster's RabbitMQ node: its node name, rabbitmq.conf / advanced.config, the argv and
environment it is started with, and the files `prepare` writes. No RabbitMQ is started here: the
package's layout is faked in tmp_path; only the epmd wrapper runs, with stand-in programs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from testenv_harness.ground.waiting import wait_for
from testenv_harness.services import rabbitmq
from testenv_harness.services.base import PodSpec, RunnerError

EPMD_PORT, DIST_PORT = 14001, 14002
#: the real one, looked up before the tests stand in for it
SETPRIV = shutil.which("setpriv")


@pytest.fixture
def server(tmp_path: Path) -> Path:
    """Debian's layout: bin/rabbitmq-server links to lib/rabbitmq_server-<v>/sbin/, plugins beside."""
    home = tmp_path / "pkg" / "lib" / "rabbitmq_server-9.9.9"
    (home / "sbin").mkdir(parents=True)
    script = home / "sbin" / "rabbitmq-server"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    for app in ("rabbit-9.9.9", "rabbit_common-9.9.9", "rabbitmq_management-9.9.9"):
        (home / "plugins" / app).mkdir(parents=True)
    (tmp_path / "pkg" / "bin").mkdir()
    link = tmp_path / "pkg" / "bin" / "rabbitmq-server"
    link.symlink_to("../lib/rabbitmq_server-9.9.9/sbin/rabbitmq-server")
    return link


@pytest.fixture(autouse=True)
def tools(monkeypatch: pytest.MonkeyPatch) -> None:
    """epmd and setpriv "installed", and the two free ports known in advance."""
    monkeypatch.setattr(shutil, "which", lambda program: f"/usr/bin/{program}")
    ports = iter((EPMD_PORT, DIST_PORT))
    monkeypatch.setattr(rabbitmq, "free_port", lambda: next(ports))


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


def _launch(server: Path, workdir: Path, env: dict[str, str] | None = None) -> rabbitmq.RabbitLaunch:
    return rabbitmq.rabbitmq_launch("team-a-w0", "rabbitmq-0", env or {}, 23456, workdir, server=server)


def test_node_names_are_short_names_derived_from_the_pod() -> None:
    assert rabbitmq.node_name("team-a-w0", "rabbitmq-0") == "rabbit-team-a-w0-rabbitmq-0"
    odd = rabbitmq.node_name("ns", "a.b@c")
    assert odd.startswith("rabbit-ns-a-b-c-")  # what a node name cannot hold is replaced...
    assert odd != rabbitmq.node_name("ns", "a-b-c")  # ...with a hash, so names stay apart
    long_one = rabbitmq.node_name("n" * 63, "p" * 200)
    assert len(long_one) <= 64
    assert long_one != rabbitmq.node_name("n" * 63, "p" * 199)
    for name in (odd, long_one):
        assert all(ch.isalnum() or ch in "-_" for ch in name)


def test_config_listens_on_loopback_only_and_lets_the_default_user_in_from_anywhere() -> None:
    conf, advanced = rabbitmq.rabbitmq_config(23456, "guest", "guest", "/", "ns/rabbitmq-0")
    lines = conf.splitlines()
    assert "listeners.tcp.default = 127.0.0.1:23456" in lines
    assert "loopback_users = none" in lines
    assert {"default_user = guest", "default_pass = guest", "default_vhost = /"} <= set(lines)
    assert {"log.console = true", "log.file = false", "log.console.use_colors = off"} <= set(lines)
    assert advanced is None


def test_values_rabbitmq_conf_cannot_hold_go_to_advanced_config_as_utf8_bytes() -> None:
    """cuttlefish cuts a value at '#', trims it and reads Latin-1: such values go to
    advanced.config, byte for byte as a client sends them."""
    password = "s3cr#t pässwörd "
    conf, advanced = rabbitmq.rabbitmq_config(1, "app", password, "tests")
    assert "default_user = app" in conf.splitlines()
    assert "default_vhost = tests" in conf.splitlines()
    assert "default_pass" not in conf
    assert advanced is not None
    literal = "<<" + ",".join(str(b) for b in password.encode()) + ">>"
    assert advanced == f"[{{rabbit, [{{default_pass, {literal}}}]}}].\n"
    for value in ("", " lead", "trail ", "a#b", "é", "€"):
        _, advanced = rabbitmq.rabbitmq_config(1, value, "p", "/")
        assert advanced is not None, value
        assert "default_user" in advanced, value


def test_the_wrapper_runs_epmd_then_becomes_the_server(server: Path, workdir: Path) -> None:
    launch = _launch(server, workdir)
    shell, flag, script, name, setpriv, epmd, port, target = launch.argv
    assert (shell, flag, name) == ("/bin/sh", "-c", "rabbitmq-node")
    assert (setpriv, epmd, port, target) == ("/usr/bin/setpriv", "/usr/bin/epmd", str(EPMD_PORT), str(server))
    assert '--pdeathsig KILL -- "$2" -port "$3" -address 127.0.0.1 &' in script
    assert "-daemon" not in script
    assert script.rstrip().endswith('exec "$4"')
    assert (launch.node, launch.epmd_port, launch.dist_port) == (
        "rabbit-team-a-w0-rabbitmq-0@localhost",
        EPMD_PORT,
        DIST_PORT,
    )


def test_environment_keeps_everything_in_workdir(
    server: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for inherited in (
        "RABBITMQ_NODENAME",
        "RABBITMQ_ENABLED_PLUGINS",
        "ERL_FLAGS",
        "ERL_LIBS",
        "NOTIFY_SOCKET",
    ):
        monkeypatch.setenv(inherited, "from-the-host")
    monkeypatch.setenv("KEPT_VARIABLE", "yes")
    env = _launch(server, workdir).env
    assert env["KEPT_VARIABLE"] == "yes"
    assert "RABBITMQ_ENABLED_PLUGINS" not in env
    for dropped in ("ERL_FLAGS", "ERL_LIBS", "NOTIFY_SOCKET"):
        assert dropped not in env
    assert env["RABBITMQ_NODENAME"] == "rabbit-team-a-w0-rabbitmq-0@localhost"
    assert env["HOME"] == str(workdir / "home")
    assert (env["ERL_EPMD_PORT"], env["ERL_EPMD_ADDRESS"]) == (str(EPMD_PORT), "127.0.0.1")
    assert env["RABBITMQ_DIST_PORT"] == str(DIST_PORT)
    assert "-start_epmd false" in env["ERL_AFLAGS"]
    assert "inet_dist_use_interface {127,0,0,1}" in env["ERL_AFLAGS"]
    assert env["RABBITMQ_ALLOW_INPUT"]  # any value: the script execs erl instead of forking it
    assert env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"].split()[0] == "-noinput"
    assert env["RABBITMQ_SCHEDULER_BIND_TYPE"] == "u"
    paths = {
        key: value for key, value in env.items() if key.startswith(("RABBITMQ_", "ERL_")) and "/" in value
    }
    assert set(paths) >= {
        "RABBITMQ_CONF_ENV_FILE",
        "RABBITMQ_CONFIG_FILE",
        "RABBITMQ_CONFIG_FILES",
        "RABBITMQ_ADVANCED_CONFIG_FILE",
        "RABBITMQ_MOTD_FILE",
        "RABBITMQ_ENABLED_PLUGINS_FILE",
        "RABBITMQ_MNESIA_BASE",
        "RABBITMQ_LOG_BASE",
        "RABBITMQ_PLUGINS_DIR",
        "ERL_CRASH_DUMP",
    }
    for key, value in paths.items():
        assert Path(value).is_relative_to(workdir), key


def test_prepare_writes_the_config_and_a_plugins_folder_of_the_broker_alone(
    server: Path, workdir: Path
) -> None:
    env = {"RABBITMQ_DEFAULT_USER": "app", "RABBITMQ_DEFAULT_PASS": "pw", "RABBITMQ_DEFAULT_VHOST": "tests"}
    launch = _launch(server, workdir, env)
    assert not (workdir / "rabbitmq.conf").exists()  # nothing is written before prepare
    launch.prepare()
    conf = (workdir / "rabbitmq.conf").read_text().splitlines()
    assert {"default_user = app", "default_pass = pw", "default_vhost = tests"} <= set(conf)
    assert "listeners.tcp.default = 127.0.0.1:23456" in conf
    assert (workdir / "enabled_plugins").read_text().strip() == "[]."
    assert not (workdir / "advanced.config").exists()
    for folder in ("home", "mnesia", "log"):
        assert (workdir / folder).stat().st_mode & 0o777 == 0o700
    plugins = Path(launch.env["RABBITMQ_PLUGINS_DIR"])
    assert [p.name for p in plugins.iterdir()] == ["rabbit-9.9.9"]
    assert (plugins / "rabbit-9.9.9").resolve() == (
        server.resolve().parent.parent / "plugins" / "rabbit-9.9.9"
    )


def test_a_password_in_advanced_config_is_readable_by_the_owner_only(server: Path, workdir: Path) -> None:
    launch = _launch(server, workdir, {"RABBITMQ_DEFAULT_PASS": "a#b"})
    launch.prepare()
    assert (workdir / "advanced.config").stat().st_mode & 0o777 == 0o600
    assert "default_pass" not in (workdir / "rabbitmq.conf").read_text()


def test_unset_or_empty_variables_mean_the_image_defaults(server: Path, workdir: Path) -> None:
    launch = _launch(server, workdir, {"RABBITMQ_DEFAULT_USER": "", "RABBITMQ_DEFAULT_PASS": ""})
    launch.prepare()
    conf = (workdir / "rabbitmq.conf").read_text().splitlines()
    assert {"default_user = guest", "default_pass = guest", "default_vhost = /"} <= set(conf)


def test_without_the_broker_app_the_package_plugins_folder_is_left_alone(server: Path, workdir: Path) -> None:
    shutil.rmtree(server.resolve().parent.parent / "plugins" / "rabbit-9.9.9")
    launch = _launch(server, workdir)
    launch.prepare()
    assert "RABBITMQ_PLUGINS_DIR" not in launch.env
    assert not (workdir / "plugins").exists()


def test_a_missing_package_says_how_to_install_it(tmp_path: Path, workdir: Path) -> None:
    with pytest.raises(RunnerError) as caught:
        _launch(tmp_path / "no" / "rabbitmq-server", workdir)
    assert str(caught.value) == (
        "rabbitmq-server is not installed: `apt-get install rabbitmq-server` "
        "(or run `make local-deps`, which does)"
    )


def test_a_missing_setpriv_says_which_package_has_it(
    server: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda program: None if program == "setpriv" else "/x")
    monkeypatch.setattr(Path, "exists", lambda self: False)  # nor in /usr/bin or /usr/sbin
    with pytest.raises(RunnerError, match=r"setpriv is not installed: `apt-get install util-linux`"):
        _launch(server, workdir)


def test_the_local_runner_waits_for_the_amqp_port(
    server: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = rabbitmq.rabbitmq_launch
    monkeypatch.setattr(rabbitmq, "rabbitmq_launch", lambda *args: real(*args, server=server))
    pod = PodSpec("team-a-w0", "rabbitmq-0", "rabbitmq", {"RABBITMQ_DEFAULT_USER": "app"}, (), {5672: 23456})
    assert rabbitmq.RABBITMQ.local is not None
    launch = rabbitmq.RABBITMQ.local(pod, workdir)
    assert launch.wait_ports == (23456,)
    assert launch.env["RABBITMQ_NODENAME"] == "rabbit-team-a-w0-rabbitmq-0@localhost"
    assert launch.prepare is not None
    launch.prepare()
    assert "default_user = app" in (workdir / "rabbitmq.conf").read_text().splitlines()


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.skipif(SETPRIV is None, reason="needs util-linux's setpriv")
def test_the_wrapper_waits_for_its_epmd_execs_the_server_and_epmd_dies_with_it(tmp_path: Path) -> None:
    """Stand-ins: an "epmd" that answers -names once it runs, and a "server" that prints its pid.
    The server is the wrapper's own process; when it ends, its epmd is killed with it."""
    epmd = tmp_path / "epmd"
    epmd.write_text(
        "#!/bin/sh\n"
        'case " $* " in *" -names "*) exec test -e "$STATE/up";; esac\n'
        'echo $$ > "$STATE/epmd.pid"; touch "$STATE/up"; exec sleep 60\n'
    )
    fake_server = tmp_path / "server"
    fake_server.write_text('#!/bin/sh\necho "server $$ epmd $(cat "$STATE/epmd.pid")"\nsleep 0.2\n')
    for program in (epmd, fake_server):
        program.chmod(0o755)
    argv = ["/bin/sh", "-c", rabbitmq._WRAPPER, "rabbitmq-node", str(SETPRIV), str(epmd), "14999"]
    wrapper = subprocess.Popen(
        [*argv, str(fake_server)],
        env={**os.environ, "STATE": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = wrapper.communicate(timeout=30)
    assert wrapper.returncode == 0, err
    word, server_pid, _, epmd_pid = out.split()
    assert (word, int(server_pid)) == ("server", wrapper.pid)  # exec'd: the same process
    wait_for(
        lambda: _gone(int(epmd_pid)), timeout=5, what="the node's epmd to end with its parent", interval=0.02
    )
