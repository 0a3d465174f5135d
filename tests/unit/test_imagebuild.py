"""The offline image table: names, keys and build order, with no engine and nothing built."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from testenv_api import SERVICE_TYPES
from testenv_harness.ground.errors import ToolchainError
from testenv_harness.provision import imagebuild


def test_every_builtin_service_type_has_a_stand_in() -> None:
    assert set(imagebuild.service_images()) == set(SERVICE_TYPES) - {"custom"}


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
