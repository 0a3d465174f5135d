"""The offline image table: names, keys and build order, with no engine and nothing built."""

from __future__ import annotations

from pathlib import Path

import pytest

from testenv_api import SERVICE_TYPES
from testenv_harness import imagebuild
from testenv_harness.errors import ToolchainError


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
