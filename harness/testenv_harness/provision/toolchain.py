"""The pinned binaries behind the `local` cluster, built from the Go module proxy.

Nothing here downloads a release binary: every tool is compiled from a small wrapper Go
module shipped inside this package (``gotools/<tool>``), whose go.mod and go.sum pin it.
Results land in a per-user cache keyed by the wrapper's content and link flags, so a
second build is a no-op and a version bump builds alongside the old one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from testenv_harness.ground.errors import BUILD_HINT, ToolchainError
from testenv_harness.ground.files import cache_root, locked

KUBERNETES_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.16"
KWOK_VERSION = "v0.8.0"
HELM_VERSION = "v3.22.0"
KIND_VERSION = "v0.33.0"
COREDNS_VERSION = "v1.14.2"
CRICTL_VERSION = "v1.36.0"
#: The fault proxy's server (spec.services[].faultProxy), in our offline `toxiproxy` image.
TOXIPROXY_VERSION = "v2.5.0"
#: The NetworkPolicy firewall of the offline kind node (its firewall controller alone).
KUBE_ROUTER_VERSION = "v2.1.0"
#: Also the version examples/ginkgo uses as a library (a unit test holds the two together).
GINKGO_VERSION = "v2.28.1"

_MODULES = Path(__file__).parent / "gotools"
_KUBE_MAJOR, _KUBE_MINOR = KUBERNETES_VERSION.lstrip("v").split(".")[:2]


def _kube_ldflags(version: str) -> tuple[str, ...]:
    major, minor = version.lstrip("v").split(".")[:2]
    flags: list[str] = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate=1970-01-01T00:00:00Z",
        ]
    return tuple(flags)


@dataclasses.dataclass(frozen=True)
class GoTool:
    """One wrapper module and the commands built from it."""

    name: str
    version: str
    binaries: dict[str, str]  # output file name -> Go package path
    ldflags: tuple[str, ...] = ()
    #: The wrapper module under gotools/, when it is not named like the tool.
    module: str = ""
    #: "local": what the local cluster and the chart need (`make tools`); "kind": only what the
    #: offline kind node image needs (`make kind-images`); "runners": test runners the examples
    #: and the e2e tier drive through `testenv run` (`make ginkgo`).
    group: str = "local"

    @property
    def module_dir(self) -> Path:
        return _MODULES / (self.module or self.name)

    def key(self) -> str:
        digest = hashlib.sha256()
        for file in ("go.mod", "go.sum", "tools.go"):
            digest.update((self.module_dir / file).read_bytes())
        digest.update(repr((sorted(self.binaries.items()), self.ldflags)).encode())
        return f"{self.name}-{self.version}-{digest.hexdigest()[:12]}"


TOOLS: tuple[GoTool, ...] = (
    GoTool(
        "kubernetes",
        KUBERNETES_VERSION,
        {
            name: f"k8s.io/kubernetes/cmd/{name}"
            for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
        },
        _kube_ldflags(KUBERNETES_VERSION),
    ),
    GoTool("etcd", ETCD_VERSION, {"etcd": "go.etcd.io/etcd/server/v3"}),
    GoTool(
        "kwok",
        KWOK_VERSION,
        {"kwok": "sigs.k8s.io/kwok/cmd/kwok", "kwokctl": "sigs.k8s.io/kwok/cmd/kwokctl"},
        (
            f"-X sigs.k8s.io/kwok/pkg/consts.Version={KWOK_VERSION.lstrip('v')}",
            f"-X sigs.k8s.io/kwok/pkg/consts.KubeVersion={KUBERNETES_VERSION.lstrip('v')}",
        ),
    ),
    GoTool(
        "helm",
        HELM_VERSION,
        {"helm": "helm.sh/helm/v3/cmd/helm"},
        (
            f"-X helm.sh/helm/v3/internal/version.version={HELM_VERSION}",
            # Without these helm assumes Kubernetes 1.20 for `helm template` and `helm lint`.
            *(
                f"-X helm.sh/helm/v3/pkg/{pkg}.k8sVersion{part}={value}"
                for pkg in ("chartutil", "lint/rules")
                for part, value in (("Major", _KUBE_MAJOR), ("Minor", _KUBE_MINOR))
            ),
        ),
    ),
    GoTool("kind", KIND_VERSION, {"kind": "sigs.k8s.io/kind"}),
    # The kind node's own binaries; same wrapper module (and build cache) as the control plane.
    GoTool(
        "kubernetes-node",
        KUBERNETES_VERSION,
        {name: f"k8s.io/kubernetes/cmd/{name}" for name in ("kubelet", "kubeadm", "kube-proxy")},
        _kube_ldflags(KUBERNETES_VERSION),
        module="kubernetes",
        group="kind",
    ),
    GoTool("coredns", COREDNS_VERSION, {"coredns": "github.com/coredns/coredns"}, group="kind"),
    GoTool("crictl", CRICTL_VERSION, {"crictl": "sigs.k8s.io/cri-tools/cmd/crictl"}, group="kind"),
    GoTool(
        "toxiproxy",
        TOXIPROXY_VERSION,
        {"toxiproxy-server": "github.com/Shopify/toxiproxy/v2/cmd/server"},
        (f"-X github.com/Shopify/toxiproxy/v2.Version={TOXIPROXY_VERSION.lstrip('v')}",),
        group="kind",
    ),
    GoTool(
        "kube-router",
        KUBE_ROUTER_VERSION,
        {"kube-router": "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router"},
        (f"-X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version={KUBE_ROUTER_VERSION}",),
        group="kind",
    ),
    GoTool("ginkgo", GINKGO_VERSION, {"ginkgo": "github.com/onsi/ginkgo/v2/ginkgo"}, group="runners"),
)
GROUPS = ("local", "kind", "runners")

#: Which `make` target or command rebuilds a binary, for error messages.
_HINTS = {
    "local": BUILD_HINT,
    "kind": "run `make kind-images` (or `testenv images build`)",
    "runners": "run `make ginkgo` (or `testenv tools --group runners`) to build it from the Go module proxy",
}


def kube_cache_dir() -> Path:
    """Where kubectl and helm keep their discovery and HTTP caches when we run them: under our
    cache root, so a user's ~/.kube is never written (`--cache-dir` / KUBECACHEDIR)."""
    return cache_root() / "kube-cache"


def tool_dir(tool: GoTool) -> Path:
    return cache_root() / "tools" / tool.key()


def tools_of(group: str) -> tuple[GoTool, ...]:
    return tuple(tool for tool in TOOLS if tool.group == group)


def bin_dir() -> Path:
    """One folder of links to every pinned binary: what `make cluster-up` puts on PATH."""
    combined = hashlib.sha256("".join(t.key() for t in tools_of("local")).encode()).hexdigest()[:12]
    return cache_root() / "bin" / combined


def binary(name: str) -> Path:
    """The path of one built binary, or a ToolchainError naming the command that builds it."""
    tool = tool_of(name)
    path = tool_dir(tool) / name
    if path.exists():
        return path
    raise ToolchainError(f"{name} {tool.version} is not built ({path} is missing): {_HINTS[tool.group]}")


def group_bin_dir(group: str) -> Path:
    """Where a group's binaries are found: the linked folder for "local", else the tool's own."""
    if group == "local":
        return bin_dir()
    tools = tools_of(group)
    if len(tools) != 1:
        raise ToolchainError(f"group {group!r} has {len(tools)} tools, so no single folder holds them")
    return tool_dir(tools[0])


def tool_of(name: str) -> GoTool:
    for tool in TOOLS:
        if name in tool.binaries:
            return tool
    raise ToolchainError(f"unknown tool {name!r}; known: {', '.join(all_binaries())}")


def key_of(name: str) -> str:
    """The cache key of the build that makes binary `name` (it changes when its pins change)."""
    return tool_of(name).key()


def build_binaries(names: Iterable[str], report: Callable[[str], None] = print) -> dict[str, Path]:
    """Build (if missing) the tools that make `names`; returns each binary's path."""
    paths: dict[str, Path] = {}
    for name in names:
        tool = tool_of(name)
        build_one(tool, report)
        paths[name] = tool_dir(tool) / name
    return paths


def module_source(tool_name: str, module_path: str) -> Path:
    """Where the Go module cache holds the source of `module_path` as `tool_name` pins it."""
    tool = next(t for t in TOOLS if t.name == tool_name)
    result = subprocess.run(
        ["go", "mod", "download", "-json", module_path],
        cwd=tool.module_dir,
        env=dict(os.environ, GOFLAGS="-mod=readonly"),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ToolchainError(f"`go mod download {module_path}` failed: {result.stderr.strip()[-2000:]}")
    return Path(json.loads(result.stdout)["Dir"])


def all_binaries() -> list[str]:
    return [name for tool in TOOLS for name in tool.binaries]


def missing(group: str = "local") -> list[GoTool]:
    return [tool for tool in tools_of(group) if not tool_dir(tool).is_dir()]


@contextlib.contextmanager
def progress(label: str, report: Callable[[str], None], every: float = 30) -> Iterator[None]:
    """Report `still building <label> (Ns)` every `every` seconds while the block runs."""
    stop = threading.Event()

    def beat() -> None:
        started = time.monotonic()
        while not stop.wait(every):
            report(f"  still building {label} ({time.monotonic() - started:.0f}s)")

    threading.Thread(target=beat, daemon=True).start()
    try:
        yield
    finally:
        stop.set()


def _go_build(tool: GoTool, out: Path) -> None:
    env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-mod=readonly -buildvcs=false")
    flags = ["-trimpath", "-ldflags", " ".join(("-s", "-w", *tool.ldflags))]
    # Packages whose last element names the binary build in one go, so shared code
    # compiles once; the rest (etcd's module root is `.../v3`) get an explicit -o.
    together = [pkg for name, pkg in tool.binaries.items() if pkg.rsplit("/", 1)[-1] == name]
    commands = [["go", "build", *flags, "-o", f"{out}/", *together]] if together else []
    commands += [
        ["go", "build", *flags, "-o", str(out / name), pkg]
        for name, pkg in tool.binaries.items()
        if pkg.rsplit("/", 1)[-1] != name
    ]
    for command in commands:
        result = subprocess.run(
            command, cwd=tool.module_dir, env=env, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise ToolchainError(
                f"building {tool.name} {tool.version} failed (exit {result.returncode}):\n"
                f"$ {' '.join(command)}\n{result.stderr.strip()[-4000:]}"
            )


def build_one(tool: GoTool, report: Callable[[str], None] = print) -> float:
    """Build one tool into the cache unless it is there; returns seconds spent."""
    final = tool_dir(tool)
    if final.is_dir():
        return 0.0
    if shutil.which("go") is None:
        raise ToolchainError(
            "the `go` command is not on PATH; install Go 1.26+ to build the local cluster tools"
        )
    with locked(final.parent / f"{final.name}.lock"):
        if final.is_dir():  # another process built it while we waited
            return 0.0
        report(f"building {tool.name} {tool.version}: {', '.join(tool.binaries)}")
        started = time.monotonic()
        staging = Path(tempfile.mkdtemp(prefix=f".{tool.name}-", dir=final.parent))
        try:
            with progress(tool.name, report):
                _go_build(tool, staging)
            staging.chmod(0o755)
            staging.rename(final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        took = time.monotonic() - started
        size = sum(f.stat().st_size for f in final.iterdir()) / 2**20
        report(f"built {tool.name} {tool.version} in {took:.0f}s ({size:.0f} MiB)")
        return took


def link_bin_dir() -> Path:
    """(Re)create the folder of links to every built binary.

    Clusters starting at once (two runs, two xdist workers) all call this: a link already right is
    left alone, and one to make or correct is made under a name of this thread's, then renamed
    over the old, so no caller meets a missing link or fails on another's.
    """
    target = bin_dir()
    target.mkdir(parents=True, exist_ok=True)
    for tool in tools_of("local"):
        for name in tool.binaries:
            link, binary = target / name, tool_dir(tool) / name
            with contextlib.suppress(OSError):
                if os.readlink(link) == str(binary):
                    continue
            staged = target / f".{name}.{os.getpid()}.{threading.get_ident()}"
            staged.unlink(missing_ok=True)
            staged.symlink_to(binary)
            os.replace(staged, link)
    return target


def build_all(report: Callable[[str], None] = print) -> Path:
    """Build every missing local-cluster tool (a no-op when all are cached); returns the bin folder."""
    for tool in tools_of("local"):
        build_one(tool, report)
    return link_bin_dir()


def build_group(group: str, report: Callable[[str], None] = print) -> dict[str, Path]:
    """Build every tool of `group` that is missing; returns each binary's path by name."""
    built: dict[str, Path] = {}
    for tool in tools_of(group):
        build_one(tool, report)
        built.update({name: tool_dir(tool) / name for name in tool.binaries})
    return built
