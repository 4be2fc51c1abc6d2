"""Test modules share code only through conftest.py and helper modules, never through each other."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def imported_modules(source: str, module: str) -> list[tuple[int, str]]:
    """Every (line, dotted name) the source of ``module`` imports, relative imports resolved.

    ``from package import name`` yields both ``package`` and ``package.name``, since ``name``
    may be a module.
    """
    package = module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0]
                base = f"{parent}.{base}" if base else parent
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def owning_test_module(name: str) -> str | None:
    """The ``tests.….test_*`` module that the dotted ``name`` is or lies in, if any."""
    parts = name.split(".")
    for i, part in enumerate(parts[1:], start=2):
        if parts[0] == "tests" and part.startswith("test_"):
            return ".".join(parts[:i])
    return None


def imports_of_test_modules(sources: dict[str, str]) -> list[str]:
    """``module:line imports test_module`` for each import of a test module."""
    return sorted(
        {
            f"{module}:{line} imports {test_module}"
            for module, source in sources.items()
            for line, name in imported_modules(source, module)
            if (test_module := owning_test_module(name)) is not None
        }
    )


def test_no_test_module_imports_another_test_module():
    """Shared helpers live in helper modules (tests/dp_oracles.py, tests/tiny_suite.py, ...) and
    shared fixtures in tests/conftest.py, so a test module can be read, run and moved alone."""
    sources = {module_name(p): p.read_text() for p in sorted(TESTS.rglob("*.py"))}
    assert imports_of_test_modules(sources) == []


def test_the_check_sees_every_form_of_importing_a_test_module():
    forms = {
        "tests.perf.test_a": "from tests.test_runner import TINY",
        "tests.test_b": "import tests.test_bk",
        "tests.test_c": "from tests import test_bk",
        "tests.test_d": "from .test_bk import oracle",
        "tests.perf.test_e": "from ..test_bk import oracle",
        "tests.perf.test_f": "from . import test_perf_steps",
        "tests.test_g": "from tests.dp_oracles import norms_of\nimport torch.testing",
    }
    assert [line.split(":")[0] for line in imports_of_test_modules(forms)] == [
        "tests.perf.test_a",
        "tests.perf.test_e",
        "tests.perf.test_f",
        "tests.test_b",
        "tests.test_c",
        "tests.test_d",
    ]
