"""The layering ARCHITECTURE.md promises: no import cycle, each layer below the next, bench names
no norm, modules and functions of a readable size, imports at the top."""

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


def registered_norm_names() -> set[str]:
    """Every registered norm's name and the class name of every layer its variants build (the
    identity excepted: `none` and `Identity` are ordinary words of the code)."""
    import norms  # torch: only this test needs the registry

    names = set()
    for name in norms.list_norms():
        spec = norms.get_norm(name)
        names.add(name)
        for variant in ["", *spec.test_variants]:
            norm = norms.resolve_norm(f"{name}[{variant}]" if variant else name)
            layers = [norm.layer(16)] + (
                [norm.fused_conv_layer(16, 16, 3)] if norm.fused_conv else []
            )
            names |= {type(m).__name__ for layer in layers for m in layer.modules()}
    return names - {"none", "Identity", "Sequential"}


def code_words(path: Path) -> list[tuple[int, str]]:
    """The identifiers and string constants of a module's code, without its docstrings and
    comments (prose may name a norm; code may not)."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    words = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            words.append((node.lineno, node.id))
        elif isinstance(node, ast.Attribute):
            words.append((node.lineno, node.attr))
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.alias)):
            words.append((node.lineno, node.name))
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
        ):
            words.append((node.lineno, node.value))
    return words


#: The one place bench/ may name a norm: the schema's default baseline, the norm a suite's report
#: compares against when it names none.
DEFAULT_BASELINE = ("bench/config/sections.py", "group_norm")


def test_the_norm_pattern_covers_every_registered_norm_and_layer_class():
    names = registered_norm_names()
    assert {"group_norm", "layer_norm", "GroupNorm", "LayerNorm", "KNConv2d"} <= names
    assert {"dp_batch_norm", "FrozenStatsNorm", "ChannelAffine", "scale_norm"} <= names


def test_bench_names_no_norm_and_no_norm_class():
    """A norm is one file in norms/ (or another package): nothing in bench/ special-cases one,
    GroupNorm and LayerNorm included (their clipping rules live in bkclip)."""
    pattern = re.compile(
        r"\b(" + "|".join(sorted(map(re.escape, registered_norm_names()))) + r")\b"
    )
    hits = [
        f"{p.relative_to(ROOT)}:{line}: {word!r}"
        for p in sorted((ROOT / "bench").rglob("*.py"))
        for line, word in code_words(p)
        if (match := pattern.search(word))
        and (str(p.relative_to(ROOT)), match.group(1)) != DEFAULT_BASELINE
    ]
    assert hits == []


#: Where bench/ may name a dataset outside its registry entries (bench/data/sources/ and the
#: imagefolder source's own module): the schema's default source and the report names it falls
#: back on (it cannot import the registry), CIFAR-10's root kept out of published run keys, and
#: the class counts of records written before records held ``num_classes``.
DATASET_NAMED_AT = {
    ("bench/config/sections.py", "synthetic"),
    ("bench/config/sections.py", "cifar10"),
    ("bench/config/sections.py", "imagefolder"),
    ("bench/config/identity.py", "cifar10"),
    ("bench/results/leaderboard/survivorship.py", "cifar10"),
    ("bench/results/leaderboard/survivorship.py", "synthetic"),
    # The GPU window's scaling stage times steps on generated data: it needs no data set.
    ("bench/perf/window_scaling.py", "synthetic"),
    # The GPU window's slice is CIFAR-10 by design (issue 30: the quick suite on the real
    # data, from the JPEG copy as an imagefolder), rehearsed on synthetic data off the GPU.
    ("bench/perf/window.py", "synthetic"),
    ("bench/perf/window.py", "cifar10"),
    ("bench/perf/window.py", "imagefolder"),
    ("bench/perf/window_slice.py", "synthetic"),
    ("bench/perf/window_slice.py", "imagefolder"),
}
DATASET_ENTRIES = ("bench/data/sources/", "bench/data/imagefolder.py")


def test_bench_names_no_dataset_outside_its_registry_entries():
    """A dataset is one registered file (or another package's): nothing else in bench/
    special-cases one, so a new dataset changes no code outside its entry."""
    from bench.data import list_datasets  # torch: only this test needs the registry

    names = set(list_datasets())
    assert {"cifar10", "cifar100", "svhn", "mnist", "fashion_mnist", "imagenet32"} <= names
    pattern = re.compile(r"\b(" + "|".join(sorted(map(re.escape, names))) + r")\b")
    hits = [
        f"{rel}:{line}: {word!r}"
        for p in sorted((ROOT / "bench").rglob("*.py"))
        if not (rel := str(p.relative_to(ROOT))).startswith(DATASET_ENTRIES)
        for line, word in code_words(p)
        if (match := pattern.search(word)) and (rel, match.group(1)) not in DATASET_NAMED_AT
    ]
    assert hits == []


def test_the_norm_finder_sees_a_norm_named_in_code(tmp_path):
    module = tmp_path / "m.py"
    module.write_text('"""Mentions GroupNorm in prose."""\nx = nn.GroupNorm(2, 4)  # GroupNorm\n')
    assert [w for _, w in code_words(module)].count("GroupNorm") == 1


# --- house rules (issue 25) ---

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
#: A function longer than MAX_FUNCTION_LINES says why in a comment that starts with this.
LONG_MARK = "# One algorithm:"


def package_files() -> list[Path]:
    return [p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))]


def test_no_module_is_over_the_line_limit():
    long = {
        str(p.relative_to(ROOT)): n
        for p in package_files()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def _functions(tree: ast.AST):
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _docstring_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    first = fn.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        return first.end_lineno - first.lineno + 1
    return 0


def test_a_long_function_says_why_it_is_one_algorithm():
    """Counted without the docstring: documentation is not length."""
    offending = []
    for p in package_files():
        text = p.read_text()
        lines = text.splitlines()
        for fn in _functions(ast.parse(text)):
            length = fn.end_lineno - fn.lineno + 1 - _docstring_lines(fn)
            body = "\n".join(lines[fn.lineno - 1 : fn.end_lineno])
            if length > MAX_FUNCTION_LINES and LONG_MARK not in body:
                offending.append(f"{p.relative_to(ROOT)}:{fn.lineno} {fn.name} ({length} lines)")
    assert offending == []


def _has_reason(lines: list[str], node: ast.stmt) -> bool:
    """A reason on the import's line, or a comment on the line above its block of imports."""
    if "#" in lines[node.end_lineno - 1]:
        return True
    above = node.lineno - 2
    while above >= 0 and lines[above].strip().startswith(("import ", "from ")):
        if "#" in lines[above]:
            return True
        above -= 1
    return above >= 0 and "#" in lines[above]


def test_an_import_inside_a_function_gives_its_reason():
    """Imports belong at the top; the exceptions keep torch (or another heavy or optional
    package) out of a command that does not need it, and say so beside the import."""
    offending = []
    for p in package_files():
        text = p.read_text()
        lines = text.splitlines()
        for fn in _functions(ast.parse(text)):
            offending += [
                f"{p.relative_to(ROOT)}:{node.lineno}"
                for node in ast.walk(fn)
                if isinstance(node, (ast.Import, ast.ImportFrom)) and not _has_reason(lines, node)
            ]
    assert offending == []
