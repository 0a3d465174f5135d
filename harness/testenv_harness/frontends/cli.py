"""`testenv`: the command line for runners other than pytest, and for humans.

testenv run -f env.yaml --workers 4 -- CMD   set up, forward every worker, run CMD, tear down
testenv up | down | status | sweep           the run's steps one at a time (see cli_runs.py)
testenv env | forward | restart | exec       one worker's variables, forwards, restarts
testenv logs SERVICE --worker I               one worker's service: its pods' state and log lines
testenv fault SERVICE TOXIC --worker I        a network fault on one worker's forward (Toxiproxy's toxics)
testenv tools                 build the pinned local-cluster binaries (no-op when cached)
testenv cluster up|down       start or delete the local cluster (--cluster kind: the kind one)
testenv cluster env           print the shell lines that point kubectl at it
testenv images build [NAME]   build the offline kind images (node, services, operator; cached)
testenv images list           print every image's reference and whether it is built
testenv images prune          remove our images that no current recipe names (older keys)
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import urllib3
from kubernetes.client.exceptions import ApiException

from testenv_harness.frontends import cli_faults, cli_logs, cli_runs
from testenv_harness.ground import kube
from testenv_harness.ground.errors import TestEnvError
from testenv_harness.provision import imagebuild, toolchain
from testenv_harness.provision.clusters.kind import KindProvider
from testenv_harness.provision.clusters.local import DEFAULT_NAME, LocalProvider
from testenv_harness.services.kafka import cds as kafka_cds
from testenv_harness.services.kafka import runtime as kafka_runtime


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _version() -> str:
    try:
        return importlib.metadata.version("kube-testenv")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed as a package)"


def _export_lines(provider: LocalProvider | KindProvider) -> str:
    """KUBECONFIG, and PATH with the pinned kubectl and friends and this installation's `testenv`
    (a virtual environment's bin folder is not on PATH unless it is activated)."""
    folders = [toolchain.bin_dir()]
    scripts = Path(sys.executable).parent
    if (scripts / "testenv").exists() and shutil.which("testenv") != str(scripts / "testenv"):
        folders.append(scripts)
    path = ":".join(shlex.quote(str(folder)) for folder in folders)
    return f"export KUBECONFIG={shlex.quote(str(provider.kubeconfig))}\nexport PATH={path}:$PATH"


def _cmd_tools(args: argparse.Namespace) -> int:
    if args.print_bin_dir:
        print(toolchain.group_bin_dir(args.group))
        return 0
    todo = toolchain.missing(args.group)
    if todo:
        names = ", ".join(f"{t.name} {t.version}" for t in todo)
        _say(f"building {len(todo)} tool(s) from the Go module proxy: {names}")
    if args.group != "local":
        toolchain.build_group(args.group, report=_say)
        _say(f"tools ready in {toolchain.group_bin_dir(args.group)}")
        return 0
    path = toolchain.build_all(report=_say)
    kafka_runtime.fetch(report=_say)
    java = shutil.which("java")
    if java:  # brokers without Java fail with their own hint; the archive needs a JVM to make
        kafka_cds.ensure(java, report=_say, retry_failed=True)
    _say(f"tools ready in {path}")
    return 0


def _cmd_cluster(args: argparse.Namespace) -> int:
    provider: LocalProvider | KindProvider
    if args.provider == "kind":
        provider = KindProvider(args.name, report=_say)
    else:
        provider = LocalProvider(args.name, nodes=args.nodes, timeout=args.timeout, report=_say)
    if args.action == "up":
        provider.up()
        print(_export_lines(provider))
    elif args.action == "down":
        provider.down()
        _say(f"{args.provider} cluster {args.name!r} is gone")
    elif args.action == "env":
        if not provider.exists():
            make = "make cluster-up" if args.provider == "local" else "make demo-kind"
            _say(
                f"no {args.provider} cluster {args.name!r}: run `{make}` or "
                f"`testenv cluster up --cluster {args.provider} --name {args.name}` first"
            )
            return 1
        print(_export_lines(provider))
    return 0


def _cmd_images(args: argparse.Namespace) -> int:
    names = args.names or list(imagebuild.DEFAULT_SET)
    if args.action == "prune":
        removed = imagebuild.prune(report=_say)
        _say(f"removed {len(removed)} stale image(s)")
        return 0
    if args.action == "list":
        for name in imagebuild.closure(names):
            ref = imagebuild.reference(name)
            print(f"{ref}\t{'built' if imagebuild.present(ref) else 'missing'}")
        return 0
    built = imagebuild.build(names, report=_say)
    for name, ref in built.items():
        print(f"{name}\t{ref}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="testenv",
        description=__doc__.split("\n")[0],
        **cli_runs.example("testenv run --service redis kafka --workers 4 -- ginkgo -p --procs 4"),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    cli_runs.add_parsers(sub)
    cli_logs.add_parser(sub)
    cli_faults.add_parser(sub)

    tools = sub.add_parser(
        "tools",
        help="build the pinned control-plane binaries (or the test runners) into the cache",
        **cli_runs.example("export PATH=$(testenv tools --group runners --print-bin-dir):$PATH"),
    )
    tools.add_argument(
        "--group",
        choices=("local", "runners"),
        default="local",
        help="local: the local cluster's binaries; runners: ginkgo (default: %(default)s)",
    )
    tools.add_argument("--print-bin-dir", action="store_true", help="print where the binaries are")
    tools.set_defaults(func=_cmd_tools)

    cluster = sub.add_parser(
        "cluster",
        help="manage the local (kwokctl) or kind cluster",
        **cli_runs.example('eval "$(testenv cluster up --name testenv)" && kubectl get nodes'),
    )
    cluster.add_argument("action", choices=("up", "down", "env"))
    cluster.add_argument(
        "--cluster",
        "--provider",
        dest="provider",
        choices=("local", "kind"),
        default="local",
        help="which kind of cluster, as `run --cluster` says it (--provider: the older name; default: "
        "%(default)s)",
    )
    cluster.add_argument("--name", default=DEFAULT_NAME, help="cluster name (default: %(default)s)")
    cluster.add_argument(
        "--nodes", type=int, default=2, help="simulated nodes of the local cluster (default: %(default)s)"
    )
    cluster.add_argument(
        "--timeout", type=float, default=180.0, help="seconds to wait (default: %(default)s)"
    )
    cluster.set_defaults(func=_cmd_cluster)

    images = sub.add_parser(
        "images",
        help="build the kind node, service and operator images offline (Docker engine needed)",
        description="Build (or list) the images a kind cluster needs here, keyed by content: a rerun "
        "is a no-op.",
        **cli_runs.example("testenv images build redis kafka"),
    )
    images.add_argument("action", choices=("build", "list", "prune"))
    images.add_argument("names", nargs="*", help="images to build (default: all of them)")
    images.set_defaults(func=_cmd_images)
    return parser


def _split_command(argv: list[str]) -> tuple[list[str], list[str]]:
    """testenv's own arguments, and the command after the first `--` (for run and exec)."""
    if "--" in argv:
        at = argv.index("--")
        return argv[:at], argv[at + 1 :]
    return argv, []


def main(argv: Sequence[str] | None = None) -> int:
    own, command = _split_command(list(sys.argv[1:] if argv is None else argv))
    parser = _parser()
    args = parser.parse_args(own)
    if command and args.command not in ("run", "exec"):
        parser.error(f"`testenv {args.command}` runs no command: drop what follows --")
    args.cmd, args.argv = command, own
    try:
        result: int = args.func(args)
    except (TestEnvError, ValueError) as exc:
        _say(f"testenv: error: {exc}")
        return 1
    except ApiException as exc:
        if exc.status in (401, 403):
            _say(
                f"testenv: error: the cluster refused a call ({exc.status} {exc.reason}: {kube.said(exc)}); "
                "on a shared cluster, docs/shared-ci-cluster.md says which role grants what"
            )
            return 1
        _say(
            f"testenv: error: the cluster did not answer as expected ({exc.status} {exc.reason}: "
            f"{kube.said(exc)}): is it up? `testenv status` shows each run's cluster, `testenv sweep` clears "
            "runs whose cluster is gone"
        )
        return 1
    except urllib3.exceptions.HTTPError as exc:
        reason = str(exc).splitlines()[0]
        _say(
            f"testenv: error: the cluster did not answer ({reason}): is it up? "
            "`testenv status` shows each run's cluster, `testenv sweep` clears runs whose cluster is gone"
        )
        return 1
    except KeyboardInterrupt:
        _say("testenv: interrupted")
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
