"""`testenv`: the command line for runners other than pytest, and for humans.

testenv tools                 build the pinned local-cluster binaries (no-op when cached)
testenv cluster up|down       start or delete the local cluster (--provider kind: the kind one)
testenv cluster env           print the shell lines that point kubectl at it
testenv images build [NAME]   build the offline kind images (node, services, operator; cached)
testenv images list           print every image's reference and whether it is built
testenv images prune          remove our images that no current recipe names (older keys)
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from testenv_harness import imagebuild, kafka_runtime, toolchain
from testenv_harness.clusters.kind import KindProvider
from testenv_harness.clusters.local import DEFAULT_NAME, LocalProvider
from testenv_harness.errors import TestEnvError


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _export_lines(provider: LocalProvider | KindProvider) -> str:
    return (
        f"export KUBECONFIG={shlex.quote(str(provider.kubeconfig))}\n"
        f"export PATH={shlex.quote(str(toolchain.bin_dir()))}:$PATH"
    )


def _cmd_tools(args: argparse.Namespace) -> int:
    if args.print_bin_dir:
        print(toolchain.bin_dir())
        return 0
    todo = toolchain.missing()
    if todo:
        names = ", ".join(f"{t.name} {t.version}" for t in todo)
        _say(f"building {len(todo)} tool(s) from the Go module proxy: {names}")
    path = toolchain.build_all(report=_say)
    kafka_runtime.fetch(report=_say)
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
                f"`testenv cluster up --provider {args.provider} --name {args.name}` first"
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
    parser = argparse.ArgumentParser(prog="testenv", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    tools = sub.add_parser("tools", help="build the pinned control-plane binaries into the cache")
    tools.add_argument("--print-bin-dir", action="store_true", help="print where the binaries are linked")
    tools.set_defaults(func=_cmd_tools)

    cluster = sub.add_parser("cluster", help="manage the local (kwokctl) or kind cluster")
    cluster.add_argument("action", choices=("up", "down", "env"))
    cluster.add_argument(
        "--provider", choices=("local", "kind"), default="local", help="which cluster (default: %(default)s)"
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
        "is a no-op. Example: testenv images build redis kafka",
    )
    images.add_argument("action", choices=("build", "list", "prune"))
    images.add_argument("names", nargs="*", help="images to build (default: all of them)")
    images.set_defaults(func=_cmd_images)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except (TestEnvError, ValueError) as exc:
        _say(f"testenv: error: {exc}")
        return 1
    except KeyboardInterrupt:
        _say("testenv: interrupted")
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
