"""The offline image table: names, keys and build order, with no engine and nothing built."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from testenv_api import FAULT_PROXY_IMAGE_KEY, SERVICE_TYPES
from testenv_harness.ground.errors import ToolchainError
from testenv_harness.provision import imagebuild


def test_every_builtin_service_type_has_a_stand_in() -> None:
    """And the fault proxy's sidecar, under the key the operator's TESTENV_IMAGE_TOXIPROXY reads."""
    assert set(imagebuild.service_images()) == set(SERVICE_TYPES) - {"custom"} | {FAULT_PROXY_IMAGE_KEY}


def test_the_fault_proxy_image_is_the_pinned_go_build_and_kind_images_builds_it() -> None:
    image = imagebuild.IMAGES["toxiproxy"]
    assert image.binaries == ("toxiproxy-server",)
    assert not image.base, "a static binary on an empty image"
    assert "toxiproxy" in imagebuild.DEFAULT_SET
    assert "toxiproxy" in imagebuild.IMAGES["node"].embeds, "in the node, as the services' images are"


def test_nothing_is_ever_named_like_an_upstream_image() -> None:
    for name, image in imagebuild.IMAGES.items():
        if name == "node":
            continue  # its key hashes kind's files from the Go module cache
        assert imagebuild.reference(name).startswith(f"{imagebuild.REPOSITORY}/")
        if image.alias:
            assert "/" not in image.alias, "aliases live inside our repository"


def test_dependencies_come_first_and_once() -> None:
    order = imagebuild.closure(["kafka", "redis", "node"])
    assert order.index("debian-bookworm") < order.index("kafka")
    assert order.index("pause") < order.index("node")
    assert order.index("kube-proxy") < order.index("node")
    assert len(order) == len(set(order))


def test_unknown_image_names_say_what_exists() -> None:
    with pytest.raises(ToolchainError, match=r"unknown image 'redsi'; known: .*redis"):
        imagebuild.closure(["redsi"])


def test_every_recipe_folder_exists_and_builds_from_its_base() -> None:
    for image in imagebuild.IMAGES.values():
        if image.dockerfile:
            assert (imagebuild.CHECKOUT / image.dockerfile).is_file(), image.dockerfile
            continue
        recipe = imagebuild.RECIPES / (image.recipe or image.name)
        assert recipe.is_dir(), f"{image.name}: no recipe at {recipe}"
        if image.base:
            dockerfile = (recipe / "Dockerfile").read_text()
            assert "FROM ${BASE}" in dockerfile, f"{image.name} must build FROM the BASE it is given"


def test_a_changed_recipe_changes_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipes = tmp_path / "images"
    (recipes / "pause").mkdir(parents=True)
    (recipes / "pause" / "Dockerfile").write_text("FROM scratch\n")
    monkeypatch.setattr(imagebuild, "RECIPES", recipes)
    imagebuild.key.cache_clear()
    before = imagebuild.key("pause")
    (recipes / "pause" / "Dockerfile").write_text("FROM scratch\nUSER 1\n")
    imagebuild.key.cache_clear()
    assert imagebuild.key("pause") != before
    imagebuild.key.cache_clear()


def test_the_apt_mirror_is_read_from_deb822_and_one_line_sources(tmp_path: Path) -> None:
    assert imagebuild.mirror_from("URIs: http://mirror.example/debian\nSuites: bookworm\n") == (
        "http://mirror.example/debian"
    )
    assert imagebuild.mirror_from("deb [arch=amd64] http://m.example/debian bookworm main\n") == (
        "http://m.example/debian"
    )
    assert imagebuild.mirror_from("deb http://security.example/debian-security bookworm main\n") is None


def _fake_checkout(root: Path) -> None:
    for path, text in {
        "pyproject.toml": "[project]\n",
        "README.md": "# readme\n",
        "operator/testenv_operator/handlers.py": "",
        "harness/testenv_harness/frontends/plugin.py": "",
        "harness/testenv_harness/provision/images/redis/Dockerfile": "FROM ${BASE}\n",
        "harness/testenv_harness/__pycache__/plugin.cpython-311.pyc": "",
        "examples/suite/pytest.ini": "[pytest]\ntestenv_manifest = ../testenvironment.yaml\n",
        "examples/suite/test_redis.py": "def test_it(): pass\n",
        "examples/testenvironment.yaml": "spec: {workers: 4}\n",
        "examples/ginkgo/suite_test.go": "package suite\n",
    }.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)


def test_the_runner_key_follows_the_example_suite_and_nothing_it_leaves_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_checkout(tmp_path)
    monkeypatch.setattr(imagebuild, "CHECKOUT", tmp_path)

    def runner_key() -> str:
        imagebuild.key.cache_clear()
        return imagebuild.key("runner")

    before = runner_key()
    recipe = "harness/testenv_harness/provision/images/redis/Dockerfile"
    for ignored in ("examples/ginkgo/suite_test.go", recipe):
        (tmp_path / ignored).write_text("changed\n")
    (tmp_path / "examples/suite/__pycache__").mkdir()
    (tmp_path / "examples/suite/__pycache__/test_redis.cpython-311.pyc").write_text("")
    assert runner_key() == before, "what the image does not copy must not change its key"
    keys = {before}
    for copied in (
        "examples/suite/test_redis.py",
        "examples/testenvironment.yaml",
        "harness/testenv_harness/frontends/plugin.py",
    ):
        (tmp_path / copied).write_text("changed\n")
        keys.add(runner_key())
    (tmp_path / "examples/suite/test_kafka.py").write_text("")
    keys.add(runner_key())
    imagebuild.key.cache_clear()
    assert len(keys) == 5, "every change to what the image copies gives a new key"


def test_the_runner_context_holds_the_recipe_and_the_copied_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkout, staging = tmp_path / "checkout", tmp_path / "staging"
    _fake_checkout(checkout)
    monkeypatch.setattr(imagebuild, "CHECKOUT", checkout)
    imagebuild._context(imagebuild.IMAGES["runner"], staging, lambda _: None)
    files = {str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file()}
    assert files == {
        "Dockerfile",
        "constraints.txt",
        "requirements.in",
        "requirements.txt",
        "pyproject.toml",
        "README.md",
        "operator/testenv_operator/handlers.py",
        "harness/testenv_harness/frontends/plugin.py",
        "examples/suite/pytest.ini",
        "examples/suite/test_redis.py",
        "examples/testenvironment.yaml",
    }


def test_the_runner_lays_the_suite_out_as_its_pytest_ini_expects() -> None:
    recipe = imagebuild.RECIPES / "runner"
    dockerfile = (recipe / "Dockerfile").read_text()
    assert "COPY examples/suite/ /work/suite/" in dockerfile
    assert "COPY examples/testenvironment.yaml /work/testenvironment.yaml" in dockerfile
    ini = (imagebuild.CHECKOUT / "examples" / "suite" / "pytest.ini").read_text()
    assert "testenv_manifest = ../testenvironment.yaml" in ini
    pins = [
        line for line in (recipe / "constraints.txt").read_text().splitlines() if not line.startswith("#")
    ]
    assert pins, "the runner installs from PyPI with every version pinned"
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[A-Za-z0-9_.+-]+", line) for line in pins), pins


# -- what the images install from PyPI ----------------------------------------------------------

#: The Dockerfiles that install from PyPI, by the hashed lists they install.
_LOCKED_DOCKERFILES = {
    imagebuild.RECIPES / "localstack" / "Dockerfile": ("requirements.txt", "requirements-build.txt"),
    imagebuild.RECIPES / "moto" / "Dockerfile": ("requirements.txt",),
    imagebuild.RECIPES / "runner" / "Dockerfile": ("requirements.txt",),
    imagebuild.CHECKOUT / "operator" / "Dockerfile": ("requirements.txt",),
}
_HASHED = re.compile(r"[A-Za-z0-9._-]+==[A-Za-z0-9._+!-]+( --hash=sha256:[0-9a-f]{64})+")


def _logical_lines(text: str) -> list[str]:
    """A requirements file's or Dockerfile's lines with the backslash continuations joined."""
    joined = re.sub(r"\\\n", " ", text)
    return [" ".join(line.split()) for line in joined.splitlines()]


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in _logical_lines(path.read_text()):
        if line and not line.startswith("#"):
            name, version = line.split(" ")[0].split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_every_dockerfile_installs_from_pypi_by_hash_only() -> None:
    """Every `pip install` runs in hash-checking mode, or installs the checkout with --no-deps."""
    recipes = [*imagebuild.RECIPES.glob("*/Dockerfile"), imagebuild.CHECKOUT / "operator" / "Dockerfile"]
    installing = {path for path in recipes if "pip install" in path.read_text()}
    assert installing == set(_LOCKED_DOCKERFILES)
    for dockerfile in installing:
        lines = [line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#")]
        commands = [c.strip() for line in _logical_lines("\n".join(lines)) for c in line.split("&&")]
        for command in (c for c in commands if "pip install" in c):
            assert "--no-deps" in command, (dockerfile, command)
            if "--require-hashes" not in command:
                assert command.endswith(" ."), f"{dockerfile}: {command!r} installs without hashes"


@pytest.mark.parametrize(
    "lock",
    [dockerfile.parent / name for dockerfile, names in _LOCKED_DOCKERFILES.items() for name in names],
    ids=lambda path: str(path.relative_to(imagebuild.CHECKOUT)),
)
def test_every_package_an_image_installs_has_its_hashes(lock: Path) -> None:
    lines = [line for line in _logical_lines(lock.read_text()) if line and not line.startswith("#")]
    assert lines, f"{lock} pins nothing"
    unhashed = [line for line in lines if not _HASHED.fullmatch(line)]
    assert not unhashed, f"{lock}: no exact version with hashes in {unhashed}; run `make image-locks`"


@pytest.mark.parametrize("image", ["localstack", "moto", "runner"])
def test_the_hashed_list_holds_every_verified_pin(image: str) -> None:
    """A pin changed in constraints.txt without `make image-locks` would not reach the image."""
    recipe = imagebuild.RECIPES / image
    locked = _pins(recipe / "requirements.txt")
    constraints = _pins(recipe / "constraints.txt")
    assert {name: locked.get(name) for name in constraints} == constraints


def test_the_operator_image_runs_the_versions_the_tests_run() -> None:
    """Its list is pyproject.toml's dependencies at the dev lock's versions, plus the build tools."""
    locked = _pins(imagebuild.CHECKOUT / "operator" / "requirements.txt")
    tested = _pins(imagebuild.CHECKOUT / "requirements-dev.lock")
    runtime = {name: version for name, version in locked.items() if name not in ("setuptools", "wheel")}
    assert {name: tested.get(name) for name in runtime} == runtime, "run `make image-locks` after `make lock`"


def test_prune_keeps_the_newest_build_stages_on_a_current_base_and_removes_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Untagged leaves, newest first: build stages on today's `python` (they inherit its labels;
    # the two newest are the next build's cache), one on an older `python`, and an old operator.
    python, operator = imagebuild.key("python"), imagebuild.key("operator")
    leaves = {
        "sha256:a": {"dev.kube-testenv.image": "python", "dev.kube-testenv.key": python},
        "sha256:b": {"dev.kube-testenv.image": "python", "dev.kube-testenv.key": python},
        "sha256:c": {"dev.kube-testenv.image": "python", "dev.kube-testenv.key": python},
        "sha256:d": {"dev.kube-testenv.image": "python", "dev.kube-testenv.key": "0ld0ld0ld0ld"},
        "sha256:e": {"dev.kube-testenv.image": "operator", "dev.kube-testenv.key": "0ld0ld0ld0le"},
    }
    removed: list[str] = []

    def docker(*args: str, timeout: float = 60) -> str:
        if args[0] == "images" and "dangling=true" in args:
            return "\n".join(leaves)
        if args[0] == "images":  # the tagged ones: all current here
            return f"{imagebuild.REPOSITORY}/operator:{operator}"
        if args[:2] == ("image", "inspect"):
            return "\n".join(json.dumps(leaves[layer]) for layer in args[4:])
        if args[0] == "rmi":
            removed.append(args[1])
            return ""
        raise AssertionError(f"unexpected docker {args}")

    monkeypatch.setattr(imagebuild, "docker", docker)
    assert imagebuild.prune(report=lambda _: None) == []
    assert removed == ["sha256:c", "sha256:d", "sha256:e"]
