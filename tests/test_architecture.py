"""The layering DESIGN.md promises: no import cycle, norms below bench, bench names no norm."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "bkclip", "norms")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {
        module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))
    }


def imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules ``path`` imports anywhere in the file (inside functions too: a lazy
    import still ties the two modules together)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import sub` imports the submodule when there is one
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                for a in node.names
            ]
        else:
            continue
        found |= {n for n in names if n in modules}
    return found


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports(path, modules) - {name} for name, path in modules.items()}


def is_parent_package(a: str, b: str) -> bool:
    """A package importing its own submodules (``bench.results`` -> ``bench.results.stats``)
    is how packages are built, not a cycle: the submodule never imports the package back."""
    return b.startswith(a + ".")


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_among_the_project_modules():
    edges = {a: {b for b in bs if not is_parent_package(a, b)} for a, bs in graph().items()}
    assert find_cycle(edges) is None, " -> ".join(find_cycle(edges))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def forbidden_imports(package: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    """The modules of ``package`` that import a module of one of the ``forbidden`` packages."""
    found = {
        m: sorted(i for i in imps if i.split(".")[0] in forbidden)
        for m, imps in graph().items()
        if m.split(".")[0] == package
    }
    return {m: i for m, i in found.items() if i}


def test_norms_never_import_bench():
    assert forbidden_imports("norms", ("bench",)) == {}


def test_the_clipper_library_imports_neither_norms_nor_bench():
    assert forbidden_imports("bkclip", ("bench", "norms")) == {}


def test_the_schema_imports_no_loader_data_or_norm_module():
    edges = graph()
    assert edges["bench.config.sections"] <= {"bench.errors"}
    config = {m for m in edges if m == "bench.config" or m.startswith("bench.config.")}
    for module in config:
        assert edges[module] <= config | {"bench.errors"}, module


def test_bench_names_no_norm_and_no_norm_class():
    """A norm is one file in norms/ (or another package): nothing in bench/ special-cases one."""
    names = re.compile(r"dp_batch_norm|kernel_norm|scale_norm|KNConv|ChannelAffine|FrozenStats")
    hits = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in sorted((ROOT / "bench").rglob("*.py"))
        for i, line in enumerate(p.read_text().splitlines(), start=1)
        if names.search(line)
    ]
    assert hits == []
