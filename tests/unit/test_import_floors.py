"""The harness's wings stay on their floors: each wing's docstring says which wings it may
import ("May import: ..."), and every import in its modules (function-level ones included) is
checked against that line. The operator and the harness share only the contract package."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import testenv_api
import testenv_harness
import testenv_operator

HARNESS = Path(testenv_harness.__file__).parent
OPERATOR = Path(testenv_operator.__file__).parent
API = Path(testenv_api.__file__).parent
NOTHING = "(nothing of testenv_harness)"


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """Every absolute module a file imports, with its line."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            # `from testenv_harness import worker` names a wing too
            yield from ((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)


def _wings() -> dict[str, set[str]]:
    wings = {}
    for init in sorted(HARNESS.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        found = re.search(r"^May import: (.+)$", doc, re.M)
        assert found, f"{init}: the wing's docstring must end with a 'May import: ...' line"
        allowed = found.group(1).strip()
        wings[init.parent.name] = set() if allowed == NOTHING else {w.strip() for w in allowed.split(",")}
    return wings


def _wing_of(module: str, wings: dict[str, set[str]]) -> str | None:
    parts = module.split(".")
    if parts[0] != "testenv_harness" or len(parts) < 2 or parts[1] not in wings:
        return None
    return parts[1]


def test_the_harness_has_few_top_level_modules_and_every_wing_says_its_floor() -> None:
    top = sorted(p.name for p in HARNESS.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists())
    assert len(top) <= 10, top
    wings = _wings()
    for wing, allowed in wings.items():
        assert allowed <= set(wings), f"{wing} may import unknown wings {allowed - set(wings)}"


def test_no_import_runs_against_the_floors() -> None:
    wings = _wings()
    wrong = []
    for path in sorted(HARNESS.rglob("*.py")):
        relative = path.relative_to(HARNESS)
        if len(relative.parts) == 1:
            continue  # the package's front door (__init__, __main__) re-exports from any wing
        home = relative.parts[0]
        for line, module in _imports(path):
            target = _wing_of(module, wings)
            if target is not None and target != home and target not in wings[home]:
                wrong.append(f"{relative}:{line} imports {module} ({home} may import: {sorted(wings[home])})")
    assert not wrong, "\n".join(wrong)


def test_the_floors_have_no_cycle() -> None:
    wings = _wings()
    done: set[str] = set()

    def visit(wing: str, path: tuple[str, ...]) -> None:
        assert wing not in path, f"cycle: {' -> '.join((*path, wing))}"
        if wing not in done:
            for lower in wings[wing]:
                visit(lower, (*path, wing))
            done.add(wing)

    for wing in wings:
        visit(wing, ())


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        (OPERATOR, ("testenv_harness",)),
        (HARNESS, ("testenv_operator",)),
        (API, ("testenv_harness", "testenv_operator")),
    ],
    ids=["operator", "harness", "api"],
)
def test_the_operator_and_the_harness_share_only_the_contract(
    package: Path, forbidden: tuple[str, ...]
) -> None:
    wrong = [
        f"{path.relative_to(package.parent)}:{line} imports {module}"
        for path in sorted(package.rglob("*.py"))
        for line, module in _imports(path)
        if module.split(".")[0] in forbidden
    ]
    assert not wrong, "\n".join(wrong)


def _module_of(path: Path) -> str:
    parts = path.relative_to(HARNESS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_module_of_the_harness_imports_itself_back_round() -> None:
    """No loop of imports, inside a wing too (function-level imports count: they only put the
    loop off until the call)."""
    modules = {_module_of(path): path for path in HARNESS.rglob("*.py")}
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for _, target in _imports(path):
            while target and target not in modules:  # `from pkg.mod import name` names pkg.mod
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                edges[name].add(target)
    loops = []
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(edges[name]):
            if state.get(target) == 1:
                loops.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(modules):
        if name not in state:
            visit(name, [name])
    assert not loops, "\n".join(loops)


#: What an xdist worker does not need before its first test, and the plugin therefore does not
#: import: the Kubernetes client (about 0.2 s of CPU), the set-up's machinery (clusters, image
#: builds, the operator process, the data plane), the reuse keeper's, the forwarding tunnel and
#: YAML (the controller reads the manifest). Each of these processes starts on the clock: four
#: workers and the controller on two cores.
NOT_IN_A_WORKER = (
    "kubernetes",
    "urllib3",
    "yaml",
    "testenv_harness.provision",
    "testenv_harness.dataplane",
    "testenv_harness.run.session",
    "testenv_harness.frontends.reuse",
    "testenv_harness.tunnel.portforward",
)


@pytest.mark.parametrize("module", NOT_IN_A_WORKER)
def test_the_pytest_plugin_loads_without_what_a_worker_does_not_need(module: str) -> None:
    import subprocess
    import sys

    code = (
        "import sys, testenv_harness.frontends.plugin, testenv_harness.worker.testenv\n"
        f"print(sorted(m for m in sys.modules if m == {module!r} or m.startswith({module + '.'!r})))"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "[]", f"imported with the plugin: {found.stdout.strip()}"


def test_the_lazy_names_of_the_package_are_there() -> None:
    """`from testenv_harness import LocalProvider` (the package's front door) loads it on use."""
    from testenv_harness import Cluster, LocalProvider
    from testenv_harness.provision import clusters
    from testenv_harness.run.options import CLUSTER_CHOICES

    assert LocalProvider is clusters.LocalProvider
    assert Cluster is clusters.Cluster
    assert clusters.CHOICES == CLUSTER_CHOICES, "the plugin's choices are the providers"
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        _ = testenv_harness.Nothing  # type: ignore[attr-defined]
