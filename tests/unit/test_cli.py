from __future__ import annotations

from pathlib import Path

import pytest

from testenv_harness.frontends import cli
from testenv_harness.provision import toolchain


def test_print_bin_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KUBE_TESTENV_CACHE", str(tmp_path))
    assert cli.main(["tools", "--print-bin-dir"]) == 0
    assert capsys.readouterr().out.strip() == str(toolchain.bin_dir())


def test_env_without_a_cluster_says_how_to_make_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KUBE_TESTENV_CACHE", str(tmp_path))
    assert cli.main(["cluster", "env", "--name", "absent"]) == 1
    assert "make cluster-up" in capsys.readouterr().err


def test_errors_are_one_line_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KUBE_TESTENV_CACHE", str(tmp_path))
    assert cli.main(["cluster", "up", "--name", "x"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("testenv: error: ")
    assert "make tools" in err


def test_version_is_the_installed_packages(capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.metadata

    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"testenv {importlib.metadata.version('kube-testenv')}"
