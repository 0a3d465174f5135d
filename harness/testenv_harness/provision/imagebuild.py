"""Container images for the offline kind cluster, built from the registries our machines reach.

Every image is a recipe under ``images/<name>/`` (a Dockerfile and its files) built on a
Debian root file system made by debootstrap, plus binaries from the pinned Go builds
(``toolchain``) where it needs them. Each lands in the local Docker engine as
``kube-testenv.local/<name>:<key>``, where the key hashes everything that goes into it, so a
rerun is a no-op and a changed recipe builds alongside the old image. Nothing is ever tagged
under an upstream name (``redis:7.2``, ``kindest/node``): a user's image cache must not end up
holding our builds under Docker Hub's names.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path

from testenv_api import FAULT_PROXY_IMAGE_KEY, KAFKA_EXTERNAL_PORT, kafka_environment
from testenv_harness.ground import files
from testenv_harness.ground.errors import ToolchainError
from testenv_harness.provision import toolchain
from testenv_harness.services import catalog
from testenv_harness.services.base import ServiceType
from testenv_harness.services.kafka import runtime as kafka_runtime

REPOSITORY = "kube-testenv.local"
#: Certificate authorities this machine's admin added (Debian's place for them): our base images
#: trust them too, so builds behind a TLS-inspecting proxy reach PyPI as the host does.
LOCAL_CAS = Path("/usr/local/share/ca-certificates")
RECIPES = Path(__file__).parent / "images"
#: The checkout this module runs from, if it is one (the operator image builds from its sources).
CHECKOUT = Path(__file__).resolve().parents[3]
#: Images of the control plane inside the node, under our repository with the tags kubeadm uses.
KUBE_COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy")
PAUSE_TAG = "3.10.2"
#: What the NetworkPolicy probe's pods run (redis-server, redis-cli, sh, timeout; in the node).
PROBE_IMAGE = "redis"

Report = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Image:
    """One recipe: what it is built from and what it is for."""

    name: str
    #: Another image of this table used as `BASE` (a build argument), or "" for a rootfs.
    base: str = ""
    #: Binaries from the pinned Go builds copied into the build context as bin/<name>.
    binaries: tuple[str, ...] = ()
    #: Other images of this table saved into the context as images/<name>.tar (the node's).
    embeds: tuple[str, ...] = ()
    #: Extra build arguments (part of the key).
    args: tuple[tuple[str, str], ...] = ()
    #: The catalog's service type this image stands in for, if any.
    service: str = ""
    #: Fixed in-cluster name (kubeadm's components): tagged as this too, inside our repository.
    alias: str = ""
    #: The recipe folder under images/, when it is not named like the image.
    recipe: str = ""
    #: The recipe holds a Go main package of its own, built static into bin/<name>.
    go_main: bool = False
    #: Folders from our caches copied into the build context, by name (see `_CONTEXT_SOURCES`).
    extras: tuple[str, ...] = ()
    #: A Dockerfile of the checkout (relative to its root), built with the checkout as context.
    dockerfile: str = ""
    #: Parts of the checkout (relative to its root) copied into the recipe's build context under
    #: the same paths, without what the operator image leaves out (see `checkout_files`).
    checkout: tuple[str, ...] = ()


def _debian(suite: str) -> Image:
    """A debootstrapped base; trixie where a service needs newer packages (Python 3.13, ...)."""
    return Image(f"debian-{suite}", args=(("suite", suite),), recipe="debian")


def _component(name: str, tag: str) -> Image:
    if name == "kube-proxy":
        return Image(name, base="debian-bookworm", binaries=(name,), alias=f"{name}:{tag}")
    return Image(name, binaries=(name,), alias=f"{name}:{tag}", recipe="static")


def _service(kind: ServiceType) -> Image:
    return Image(kind.name, base=f"debian-{kind.image_suite}", service=kind.name, extras=kind.image_extras)


#: One stand-in per service type of the catalog, honouring the upstream image's interface.
SERVICE_IMAGES = tuple(_service(kind) for kind in catalog.TYPES.values())

IMAGES: dict[str, Image] = {
    image.name: image
    for image in (
        _debian("bookworm"),
        _debian("trixie"),
        *(_component(name, toolchain.KUBERNETES_VERSION) for name in KUBE_COMPONENTS),
        _component("etcd", toolchain.ETCD_VERSION.lstrip("v")),
        Image("coredns", binaries=("coredns",), alias=f"coredns:{toolchain.COREDNS_VERSION}"),
        Image("pause", alias=f"pause:{PAUSE_TAG}", go_main=True),
        Image(
            "node",
            base="debian-bookworm",
            binaries=("kubelet", "kubeadm", "kubectl", "crictl"),
            # The service images too: a new cluster runs its first pods without a `kind load`.
            embeds=(
                *KUBE_COMPONENTS,
                "etcd",
                "coredns",
                "pause",
                "kube-router",
                *(image.name for image in SERVICE_IMAGES),
                "toxiproxy",
            ),
            args=(("KUBERNETES_VERSION", toolchain.KUBERNETES_VERSION),),
        ),
        *SERVICE_IMAGES,
        # The fault proxy's sidecar (faultProxy: true): Toxiproxy's server, in the node like the
        # services' images.
        Image("toxiproxy", binaries=("toxiproxy-server",), service=FAULT_PROXY_IMAGE_KEY),
        # The NetworkPolicy firewall the kind provider installs on our node (embedded in it).
        Image("kube-router", base="debian-bookworm", binaries=("kube-router",)),
        # The operator's base, and the Helm path's operator from operator/Dockerfile on it.
        Image("python", base="debian-bookworm"),
        Image("operator", base="python", dockerfile="operator/Dockerfile", args=(("PYTHON_IMAGE", "@base"),)),
        # A pod that runs the example suite in the cluster (a CI job there), on the same base.
        Image(
            "runner",
            base="python",
            checkout=(
                "pyproject.toml",
                "README.md",
                "operator",
                "harness",
                "examples/suite",
                "examples/testenvironment.yaml",
            ),
        ),
    )
}


def _kafka_libs(report: Report) -> Path:
    kafka_runtime.fetch(report)
    return kafka_runtime.libs_dir()


def kafka_training_env() -> str:
    """The environment the Kafka image's training run uses: the operator's, for any worker.

    The image's class-data archive and storage template are made from a broker configured as
    the operator configures every Kafka pod; run.sh copies the template for exactly that config.
    """
    env = kafka_environment("kube-testenv", "kafka", KAFKA_EXTERNAL_PORT)
    return "".join(f"{name}={shlex.quote(value)}\n" for name, value in sorted(env.items()))


def _kafka_training(report: Report) -> Path:
    folder = files.cache_root() / "images" / "kafka-training"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "training.env").write_text(kafka_training_env())
    return folder


#: Name -> (what fills it, the version that keys it) for `Image.extras`.
_CONTEXT_SOURCES: dict[str, tuple[Callable[[Report], Path], Callable[[], str]]] = {
    "kafka-libs": (_kafka_libs, lambda: kafka_runtime.libs_dir().parent.name),
    "kafka-training": (_kafka_training, lambda: hashlib.sha256(kafka_training_env().encode()).hexdigest()),
}

#: What `make kind-images` builds: node, services, the fault proxy, operator, runner (and what they
#: are built from).
DEFAULT_SET = ("node", *(image.name for image in SERVICE_IMAGES), "toxiproxy", "operator", "runner")


# -- keys and names ---------------------------------------------------------------------------


def _recipe_dir(image: Image) -> Path:
    return RECIPES / (image.recipe or image.name)


def _checkout_sources() -> list[Path]:
    """What operator/Dockerfile copies in (its .dockerignore keeps the rest out)."""
    return [
        CHECKOUT / part for part in ("operator", "harness", "pyproject.toml", "README.md", ".dockerignore")
    ]


#: What .dockerignore keeps out of the operator image: the tools for building clusters.
_NOT_IN_OPERATOR_PATHS = tuple(
    Path("harness", "testenv_harness", "provision", name) for name in ("images", "gotools")
)
_NOT_IN_OPERATOR = tuple(CHECKOUT / path for path in _NOT_IN_OPERATOR_PATHS)


def checkout_files(part: str) -> list[Path]:
    """The files of one part of the checkout that an `Image.checkout` copies in, relative to its root.

    The same files the operator image's .dockerignore lets through: no byte code, no egg-info,
    no image recipes or Go modules. The key hashes exactly these, so it follows what is copied.
    """
    root = CHECKOUT / part
    if root.is_file():
        return [Path(part)]
    files = []
    for path in root.rglob("*"):  # nothing when the part is missing: building says so
        relative = path.relative_to(CHECKOUT)
        if not path.is_file() or path.suffix == ".pyc":
            continue
        if any(name == "__pycache__" or name.endswith(".egg-info") for name in relative.parts):
            continue
        if any(relative.is_relative_to(excluded) for excluded in _NOT_IN_OPERATOR_PATHS):
            continue
        files.append(relative)
    return sorted(files)


def _hash_tree(digest: hashlib._Hash, root: Path, exclude: tuple[Path, ...] = ()) -> None:
    if root.is_file():
        digest.update(root.read_bytes())
        return
    skip = ("__pycache__", ".egg-info")
    for path in sorted(
        p for p in root.rglob("*") if p.is_file() and not any(m in part for part in p.parts for m in skip)
    ):
        if any(path.is_relative_to(excluded) for excluded in exclude):
            continue
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())


@cache
def key(name: str) -> str:
    """A hash of everything that goes into the image: recipe, base, binaries, embedded images."""
    image = IMAGES[name]
    digest = hashlib.sha256(repr((image.args, image.alias)).encode())
    if image.dockerfile:
        for source in _checkout_sources():
            _hash_tree(digest, source, exclude=_NOT_IN_OPERATOR)
    else:
        _hash_tree(digest, _recipe_dir(image))
    for part in image.checkout:
        for path in checkout_files(part):
            digest.update(str(path).encode())
            digest.update((CHECKOUT / path).read_bytes())
    if image.recipe == "debian" and LOCAL_CAS.is_dir():
        _hash_tree(digest, LOCAL_CAS)
    for dependency in (image.base, *image.embeds):
        if dependency:
            digest.update(key(dependency).encode())
    for binary in image.binaries:
        digest.update(toolchain.key_of(binary).encode())
    for extra in image.extras:
        digest.update(_CONTEXT_SOURCES[extra][1]().encode())
    if image.name == "node":
        _hash_tree(digest, kind_base_files())
    return digest.hexdigest()[:12]


def reference(name: str) -> str:
    """The image's reference in the local engine, e.g. kube-testenv.local/redis:3f2a..."""
    return f"{REPOSITORY}/{name}:{key(name)}"


def service_images() -> dict[str, str]:
    """Service type -> our image reference, for every service recipe (built or not)."""
    return {image.service: reference(image.name) for image in IMAGES.values() if image.service}


def closure(names: list[str]) -> list[str]:
    """`names` and everything they are built from, dependencies first."""
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        if name not in IMAGES:
            raise ToolchainError(f"unknown image {name!r}; known: {', '.join(IMAGES)}")
        image = IMAGES[name]
        for dependency in (image.base, *image.embeds):
            if dependency:
                visit(dependency)
        order.append(name)

    for name in names:
        visit(name)
    return order


# -- the engine --------------------------------------------------------------------------------


def docker(*args: str, timeout: float = 60) -> str:
    """Run a docker command; a ToolchainError with its output if it fails."""
    docker_bin = shutil.which("docker")
    if docker_bin is None:
        raise ToolchainError("no `docker` command: run `make system-deps` (installs Debian's docker.io)")
    # The classic builder: it works with every engine and client, with no buildx plugin needed.
    env = dict(os.environ, DOCKER_BUILDKIT="0")
    try:
        result = subprocess.run(
            [docker_bin, *args], capture_output=True, timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ToolchainError(f"`docker {' '.join(args[:3])}` did not finish in {timeout:.0f}s") from exc
    if result.returncode != 0:
        raise ToolchainError(
            f"`docker {' '.join(args[:4])}` failed (exit {result.returncode}): "
            f"{result.stderr.decode(errors='replace').strip()[-2000:]}"
        )
    return result.stdout.decode(errors="replace")


def present(ref: str) -> bool:
    try:
        docker("image", "inspect", "--format", "{{.Id}}", ref)
    except ToolchainError:
        return False
    return True


def missing(names: list[str]) -> list[str]:
    return [name for name in closure(names) if not present(reference(name))]


# -- building ----------------------------------------------------------------------------------


def mirror_from(sources: str) -> str | None:
    """The first non-security Debian mirror in an apt sources file (deb822 or one-line)."""
    for match in re.finditer(r"^(?:URIs:\s*|deb\s+(?:\[[^\]]*\]\s+)?)(\S+)", sources, re.MULTILINE):
        if "security" not in match.group(1):
            return match.group(1)
    return None


def _apt_mirror() -> str:
    """The Debian mirror this machine's apt uses: debootstrap reaches it the same way."""
    candidates = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for source in candidates:
        if source.is_file() and source.suffix in ("", ".list", ".sources"):
            mirror = mirror_from(source.read_text(errors="replace"))
            if mirror:
                return mirror
    return "http://deb.debian.org/debian"


@cache
def kind_base_files() -> Path:
    """kind's own node files (entrypoint, systemd units) from the pinned kind module's source."""
    module = toolchain.module_source("kind", "sigs.k8s.io/kind")
    files = module / "images" / "base" / "files"
    if not files.is_dir():
        raise ToolchainError(f"kind's base files are not in the module cache ({files})")
    return files


def _log_path(name: str) -> Path:
    path = files.cache_root() / "images" / "logs" / f"{name}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _run_logged(command: list[str], log: Path, what: str, **kwargs: object) -> None:
    with log.open("ab") as out:
        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise ToolchainError(f"{what} failed (exit {result.returncode}); the end of {log}:\n{tail}")


def _build_rootfs(image: Image, ref: str, log: Path) -> None:
    """debootstrap a minimal Debian and import it as an image (no registry involved)."""
    suite = dict(image.args)["suite"]
    if shutil.which("debootstrap") is None:
        raise ToolchainError("no `debootstrap`: run `make system-deps` (or apt-get install debootstrap)")
    include = (RECIPES / "debian" / "packages.txt").read_text().split()
    with tempfile.TemporaryDirectory(prefix=f"testenv-rootfs-{suite}-") as tmp:
        root = Path(tmp) / "root"
        _run_logged(
            [
                "debootstrap",
                "--variant=minbase",
                *([f"--include={','.join(include)}"] if include else []),
                suite,
                str(root),
                _apt_mirror(),
            ],
            log,
            f"debootstrap {suite}",
        )
        if LOCAL_CAS.is_dir() and any(LOCAL_CAS.iterdir()):
            shutil.copytree(LOCAL_CAS, root / LOCAL_CAS.relative_to("/"), dirs_exist_ok=True)
            _run_logged(["chroot", str(root), "update-ca-certificates"], log, "update-ca-certificates")
        for script in sorted((RECIPES / "debian").glob("*.sh")):
            with script.open("rb") as commands:
                _run_logged(["chroot", str(root), "/bin/sh", "-s"], log, script.name, stdin=commands)
        # tar, not Python's tarfile: device nodes, hard links and ownership come through as they are.
        tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        try:
            _run_logged(
                ["docker", "import", "--change", 'CMD ["/bin/bash"]', "-", ref],
                log,
                "docker import",
                stdin=tar.stdout,
            )
        finally:
            tar.wait()


def _context(image: Image, staging: Path, report: Report) -> None:
    shutil.copytree(_recipe_dir(image), staging, dirs_exist_ok=True)
    for part in image.checkout:
        if not (CHECKOUT / part).exists():
            raise ToolchainError(
                f"the {image.name} image copies {part} of a kube-testenv checkout, and {CHECKOUT} is not one"
            )
        for path in checkout_files(part):
            target = staging / path
            if target.exists():
                raise ToolchainError(f"the {image.name} recipe has a file named like the checkout's {path}")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(CHECKOUT / path, target)
    if image.binaries:
        paths = toolchain.build_binaries(image.binaries, report)
        (staging / "bin").mkdir(exist_ok=True)
        for name, path in paths.items():
            shutil.copy2(path, staging / "bin" / name)
    for extra in image.extras:
        shutil.copytree(_CONTEXT_SOURCES[extra][0](report), staging / extra)
    if image.go_main:
        (staging / "bin").mkdir(exist_ok=True)
        _run_logged(
            ["go", "build", "-trimpath", "-ldflags=-s -w", "-o", str(staging / "bin" / image.name), "."],
            _log_path(image.name),
            f"go build of {image.name}",
            cwd=_recipe_dir(image),
            env=dict(os.environ, CGO_ENABLED="0", GOFLAGS="-mod=readonly -buildvcs=false"),
        )
    if image.embeds:
        (staging / "images").mkdir(exist_ok=True)
        # One archive: the layers the images share (their Debian base) are in it once.
        refs = [_embedded_ref(name) for name in image.embeds]
        with (staging / "images" / "embedded.tar").open("wb") as out:
            subprocess.run(["docker", "save", *refs], stdout=out, check=True)
    if image.name == "node":
        shutil.copytree(kind_base_files(), staging / "kind-base", dirs_exist_ok=True)


def _embedded_ref(name: str) -> str:
    """How an embedded image is named inside the node: kubeadm's tag, or our content-keyed one."""
    alias = IMAGES[name].alias
    return f"{REPOSITORY}/{alias}" if alias else reference(name)


def _build_one(name: str, report: Report) -> float:
    image = IMAGES[name]
    ref = reference(name)
    if present(ref):
        _tag_alias(image, ref)
        return 0.0
    with files.locked(_log_path(name).with_suffix(".lock")):
        if present(ref):  # another process built it while we waited
            _tag_alias(image, ref)
            return 0.0
        return _build_locked(image, ref, report)


def _build_locked(image: Image, ref: str, report: Report) -> float:
    name = image.name
    log = _log_path(name)
    log.write_text("")
    report(f"building image {ref}")
    started = time.monotonic()
    with toolchain.progress(name, report):
        if image.recipe == "debian":
            _build_rootfs(image, ref, log)
        else:
            with tempfile.TemporaryDirectory(prefix=f"testenv-image-{name}-") as tmp:
                staging = Path(tmp)
                if image.dockerfile:
                    if not (CHECKOUT / image.dockerfile).is_file():
                        raise ToolchainError(
                            f"the {name} image builds from {image.dockerfile} of a kube-testenv checkout, "
                            f"and {CHECKOUT} is not one"
                        )
                    context, dockerfile = CHECKOUT, ["-f", str(CHECKOUT / image.dockerfile)]
                else:
                    _context(image, staging, report)
                    context, dockerfile = staging, []
                base = reference(image.base) if image.base else ""
                args = [(k, base if v == "@base" else v) for k, v in image.args]
                if image.base:
                    args.append(("BASE", base))
                build_args = [f"--build-arg={k}={v}" for k, v in args]
                labels = [
                    f"--label=dev.kube-testenv.image={name}",
                    f"--label=dev.kube-testenv.key={key(name)}",
                ]
                _run_logged(
                    [
                        "docker",
                        "build",
                        "--network=host",
                        "--force-rm",  # a failed step leaves no container behind
                        *dockerfile,
                        *build_args,
                        *labels,
                        "-t",
                        ref,
                        str(context),
                    ],
                    log,
                    f"building image {name}",
                    env=dict(os.environ, DOCKER_BUILDKIT="0"),
                )
    _tag_alias(image, ref)
    took = time.monotonic() - started
    size = int(docker("image", "inspect", "--format", "{{.Size}}", ref).strip() or 0) / 2**20
    report(f"built image {name} in {took:.0f}s ({size:.0f} MiB)")
    return took


def _tag_alias(image: Image, ref: str) -> None:
    if image.alias:
        docker("tag", ref, f"{REPOSITORY}/{image.alias}")


def build(names: list[str], report: Report = print) -> dict[str, str]:
    """Build `names` and what they need (each a no-op when present); returns name -> reference."""
    order = closure(names)
    todo = [name for name in order if not present(reference(name))]
    if todo:
        report(f"{len(todo)} image(s) to build: {', '.join(todo)} (logs in {_log_path('x').parent})")
    started = time.monotonic()
    for name in order:
        _build_one(name, report)
    if todo:
        report(f"images ready in {time.monotonic() - started:.0f}s")
    return {name: reference(name) for name in names}


def stale() -> list[str]:
    """Our images that no current recipe names any more (an older key of a changed recipe)."""
    current = {reference(name) for name in IMAGES}
    listing = docker("images", REPOSITORY + "/*", "--format", "{{.Repository}}:{{.Tag}}")
    ours = [ref for ref in listing.split() if not ref.endswith(":<none>")]
    aliases = {f"{REPOSITORY}/{image.alias}" for image in IMAGES.values() if image.alias}
    return sorted(ref for ref in ours if ref not in current and ref not in aliases)


#: Removing images frees gigabytes (a node image is 3 GB): minutes on a slow disk, not seconds.
PRUNE_TIMEOUT = 900.0
#: Untagged build stages kept per current base image: one for each recipe built on it.
BUILD_STAGES_KEPT = 2


def prune(report: Report = print) -> list[str]:
    """Remove stale images of ours and the untagged layers our builds left (nothing else)."""
    gone = []
    for ref in stale():
        try:
            docker("rmi", ref, timeout=PRUNE_TIMEOUT)
        except ToolchainError as exc:
            if "conflict" not in str(exc):
                raise
            report(f"kept {ref}: a container still uses it")
            continue
        gone.append(ref)
        report(f"removed {ref}")
    # Layers our builds left untagged (an image rebuilt under the same alias); ours by label only.
    # The newest few labelled with a current image's key stay: a multi-stage recipe's build stage
    # on one of our images (operator and runner on `python`) inherits that image's labels, and
    # its layers are the cache that lets the next build of a changed checkout skip installing
    # the dependencies again.
    current = {key(name) for name in IMAGES}
    kept: dict[str, int] = {}
    for layer, labels in _untagged_of_ours():
        label = labels.get("dev.kube-testenv.key", "")
        if label in current and kept.get(label, 0) < BUILD_STAGES_KEPT:
            kept[label] = kept.get(label, 0) + 1
            continue
        try:  # removing the leaf removes its untagged parents too
            docker("rmi", layer, timeout=PRUNE_TIMEOUT)
        except ToolchainError as exc:
            if "conflict" not in str(exc).lower():
                raise  # a child or a container still uses it: it goes with them, later
    return gone


def _untagged_of_ours() -> list[tuple[str, dict[str, str]]]:
    """Untagged leaf images carrying our label, newest first, with their labels."""
    layers = docker(
        "images",
        "--quiet",
        "--no-trunc",
        "--filter",
        "dangling=true",
        "--filter",
        "label=dev.kube-testenv.image",
    ).split()
    if not layers:
        return []
    try:
        labels = docker("image", "inspect", "--format", "{{json .Config.Labels}}", *layers).splitlines()
    except ToolchainError:  # one went meanwhile (another build's prune): leave the rest for next time
        return []
    return [(layer, json.loads(found) or {}) for layer, found in zip(layers, labels, strict=True)]
