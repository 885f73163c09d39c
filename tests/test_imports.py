"""The module structure: no import cycle, and the scheme registry loads the
built-in enrichers only when one of their schemes is looked up."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import enrichlog

PACKAGE = Path(enrichlog.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}
PACKAGES = {name for name, path in MODULES.items() if path.name == "__init__.py"}


class _Imports(ast.NodeVisitor):
    """The enrichlog modules a module imports, at its top or in a function
    (a lazy import is still a dependency); not those only a type checker
    sees."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.found: set[str] = set()

    def visit_If(self, node: ast.If) -> None:
        if "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found.update(alias.name for alias in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        target = node.module or ""
        if node.level:
            base = self.name.split(".")
            if self.name not in PACKAGES:
                base = base[:-1]
            base = base[: len(base) - (node.level - 1)]
            target = ".".join([*base, *([node.module] if node.module else [])])
        for alias in node.names:
            submodule = f"{target}.{alias.name}"
            self.found.add(submodule if submodule in MODULES else target)


def imports_of(name: str) -> set[str]:
    visitor = _Imports(name)
    visitor.visit(ast.parse(MODULES[name].read_text()))
    return {found for found in visitor.found if found in MODULES and found != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for other in sorted(graph[node]):
            if state.get(other) == "open":
                return [*path[path.index(other) :], other]
            if other not in state and (cycle := visit(other)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_module_imports_one_that_imports_it_back() -> None:
    # Package __init__ files only re-export their modules' names, so they
    # are left out; every import in a module's body counts, lazy or not.
    graph = {name: imports_of(name) - PACKAGES for name in MODULES if name not in PACKAGES}

    assert find_cycle(graph) is None


def test_the_scheme_registry_and_params_import_no_enricher() -> None:
    enricher_modules = {"enrichlog.enricher", "enrichlog.uri.factory"} | {
        name for name in MODULES if name.startswith("enrichlog.enrichers")
    }

    assert set() == imports_of("enrichlog.uri.schemes") & enricher_modules
    assert set() == imports_of("enrichlog.uri.params") & enricher_modules


def test_enricher_module_imports_the_registry_not_the_factory() -> None:
    found = imports_of("enrichlog.enricher")

    assert {"enrichlog.uri.schemes", "enrichlog.uri.params"} <= found
    assert "enrichlog.uri.factory" not in found


def test_builtin_enrichers_are_imported_on_the_first_lookup_of_their_scheme() -> None:
    script = (
        "import sys\n"
        "from enrichlog.uri import EnricherFactory\n"
        "print('hostname' in EnricherFactory.known_schemes(), "
        "'enrichlog.enrichers.builtin' in sys.modules)\n"
        "EnricherFactory.lookup('hostname')\n"
        "print('enrichlog.enrichers.builtin' in sys.modules)\n"
    )

    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )

    assert "True False\nTrue\n" == result.stdout
