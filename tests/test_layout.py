"""The package's layout: stage subpackages in layers, every import going down (or within its own subpackage), no
import circle. docs/layout.md names each subpackage's responsibility; this test keeps the code to it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "medtranslate"
# bottom to top; a module may import from its own subpackage and from the ones listed before it
LAYERS = [
    "core",
    "imaging",
    "io",
    "runtime",
    "evaluation",
    "simulation",
    "preprocessing",
    "data",
    "models",
    "inference",
    "training",
    "top",  # the commands: cli, pipeline, config_reference (and medtranslate.translate, the bundles' old path)
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else "top"


def imports_of(path: Path) -> set[str]:
    """The medtranslate modules a file imports, at its top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medtranslate"):
            assert node.level == 0, f"{path}: a relative import; the package imports by absolute path"
            for alias in node.names:  # `from medtranslate.x import y` may name a module y
                candidate = f"{node.module}.{alias.name}"
                sub = PACKAGE.parent / Path(*candidate.split("."))
                found.add(candidate if sub.with_suffix(".py").is_file() or sub.is_dir() else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("medtranslate")}
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: a relative import; the package imports by absolute path")
    return found - {"medtranslate"}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def upward_edges(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in edges.items():
        for target in targets:
            if LAYERS.index(layer_of(target)) > LAYERS.index(layer_of(module)):
                bad.append(f"{module} -> {target}")
    return sorted(bad)


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return found


def test_every_subpackage_is_a_layer() -> None:
    subpackages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert subpackages == set(LAYERS) - {"top"}


def test_the_layout_page_names_every_subpackage() -> None:
    page = (PACKAGE.parent / "docs" / "layout.md").read_text()
    assert all(f"`{name}/`" in page for name in LAYERS if name != "top")


def test_imports_go_down() -> None:
    assert upward_edges(graph()) == []


def test_no_private_name_is_used_outside_its_module() -> None:
    # a private module (_ssim_kernels) may serve its own subpackage; a private function serves its own module
    crossing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medtranslate"):
                here, there = module_name(path).rsplit(".", 1)[0], node.module
                for alias in node.names:
                    private_module = alias.name.startswith("_") and there == here
                    if alias.name.startswith("_") and alias.name != "__version__" and not private_module:
                        crossing.append(f"{module_name(path)} imports {there}.{alias.name}")
    assert crossing == []


def test_no_import_circle() -> None:
    assert circles(graph()) == []


@pytest.mark.parametrize(
    "edges, upward, circular",
    [
        ({"medtranslate.core.a": {"medtranslate.models.b"}}, ["medtranslate.core.a -> medtranslate.models.b"], False),
        ({"medtranslate.io.a": {"medtranslate.io.b"}, "medtranslate.io.b": {"medtranslate.io.a"}}, [], True),
        ({"medtranslate.cli": {"medtranslate.core.errors"}}, [], False),
    ],
)
def test_the_checks_find_what_they_look_for(edges, upward, circular) -> None:
    assert upward_edges(edges) == upward
    assert bool(circles(edges)) == circular


def test_the_wheel_lists_every_subpackage_and_the_pipelines() -> None:
    import tomllib

    setup = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]
    subpackages = {f"medtranslate.{p.parent.name}" for p in PACKAGE.glob("*/__init__.py")}
    assert set(setup["packages"]) == {"medtranslate", "medtranslate.pipelines"} | subpackages
    assert setup["package-dir"] == {"medtranslate.pipelines": "pipelines"}
