"""The import graph of ``src/medmae`` is a house of floors (``docs/architecture.md``, "Floors").

Every import is read from the source (also those inside functions and under ``TYPE_CHECKING``; ``from . import x``
resolved), so a cycle cannot hide in a function. Checked: no module imports one on a higher floor, no cycles, every
module has a floor, task modules take only the verb from another verb's module, no source file is longer than
:data:`MAX_LINES`, and the config floor stays free of torch.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PACKAGE = SRC / "medmae"
DOC = REPO / "docs" / "architecture.md"
MAX_LINES = 400
# files allowed over MAX_LINES, each with the reason it stays whole
LONG_FILE_EXCEPTIONS: dict[str, str] = {}
# third-party packages the bottom floors (errors, config) may import: reading a config must stay cheap
LIGHT_FLOOR_PACKAGES = {"pydantic", "yaml"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


@cache
def floor_table() -> dict[str, int]:
    """``module prefix -> floor`` from the table under "## Floors" in docs/architecture.md."""
    text = DOC.read_text()
    section = text.split("\n## Floors", 1)[1].split("\n## ", 1)[0]
    table: dict[str, int] = {}
    for line in section.splitlines():
        m = re.match(r"\|\s*(\d+)\s*\|([^|]*)\|", line)
        if m:
            for name in re.findall(r"`(medmae[\w.]*)`", m.group(2)):
                assert name not in table, f"{name} is on two floors in {DOC.name}"
                table[name] = int(m.group(1))
    assert table, f"no floor table under '## Floors' in {DOC}"
    return table


def floor_of(module: str) -> int | None:
    """The floor of the longest table entry that is ``module`` or a package above it (``medmae`` itself: only the
    package's ``__init__``), so a new module falls onto its package's floor."""
    table = floor_table()
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in table and (prefix != "medmae" or module == "medmae"):
            return table[prefix]
    return None


def is_package(module: str) -> bool:
    return modules()[module].name == "__init__.py"


def imports(module: str) -> list[tuple[str, tuple[str, ...], int]]:
    """``(target module, names imported from it, line)`` for every medmae import in ``module``."""
    return imports_in(modules()[module].read_text(), module, is_package(module), set(modules()))


def imports_in(source: str, module: str, package: bool, known: set[str]) -> list[tuple[str, tuple[str, ...], int]]:
    """The medmae imports of ``source`` (the text of ``module``); ``from X import y`` targets ``X.y`` when that is a
    module in ``known``, else ``X``."""
    base = module if package else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(a.name, (), node.lineno) for a in node.names if a.name.split(".")[0] == "medmae"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                up = base.split(".")[: len(base.split(".")) - node.level + 1]
                target = ".".join(up + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "medmae":
                continue
            names = tuple(a.name for a in node.names)
            submodules = [n for n in names if f"{target}.{n}" in known]
            out += [(f"{target}.{n}", (), node.lineno) for n in submodules]
            rest = tuple(n for n in names if n not in submodules)
            if rest:
                out.append((target, rest, node.lineno))
    return out


@cache
def graph() -> dict[str, set[str]]:
    return {m: {t for t, _, _ in imports(m) if t != m} for m in modules()}


def test_every_module_has_a_floor():
    missing = [m for m in modules() if floor_of(m) is None]
    assert not missing, f"modules without a floor (add their package to the table in {DOC.name}): {missing}"


@pytest.mark.parametrize("module", sorted(modules()))
def test_no_import_reaches_a_higher_floor(module):
    here = floor_of(module)
    up = [f"line {line}: {target} (floor {floor_of(target)})" for target, _, line in imports(module)
          if floor_of(target) is not None and here is not None and floor_of(target) > here]
    assert not up, f"{module} (floor {here}) imports from higher floors: " + "; ".join(up)


def strongly_connected(g: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in g.get(v, ()):
            if w not in g:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    cycles = strongly_connected(graph())
    assert not cycles, "modules that import each other (directly or around a loop): " + "; ".join(
        " <-> ".join(c) for c in cycles)


def test_the_floor_checks_see_imports_in_functions_and_relative_ones():
    """The checks above would miss nothing: an import inside a function and ``from . import x`` are edges too."""
    assert "medmae.tasks.pretrain" in graph()["medmae.cli"]  # imported inside the command function
    source = "def f():\n    from . import b\n    from .c import d\n    from .. import errors\n    import medmae.e\n"
    known = {"medmae.pkg.b", "medmae.pkg.c", "medmae.errors"}
    assert [t for t, _, _ in imports_in(source, "medmae.pkg.a", False, known)] == [
        "medmae.pkg.b", "medmae.pkg.c", "medmae.errors", "medmae.e"]
    assert [t for t, _, _ in imports_in("from . import b", "medmae.pkg", True, known)] == ["medmae.pkg.b"]
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert floor_of("medmae.tasks.some_new_verb") == floor_of("medmae.tasks")
    assert floor_of("medmae.some_new_module") is None  # a new top-level module needs a row in the table


def verb_modules() -> set[str]:
    """The modules of the public verbs: the values of ``_VERBS`` in ``medmae/__init__.py``."""
    tree = ast.parse(modules()["medmae"].read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_VERBS" for t in node.targets):
            return set(ast.literal_eval(node.value).values())
    raise AssertionError("no _VERBS table in medmae/__init__.py")


def test_task_modules_take_only_the_verb_from_another_verb():
    """Verbs may call verbs; names and helpers come from ``run_layout``, ``tasks.run_dir`` and helper modules."""
    verbs = verb_modules()
    assert "medmae.tasks.pretrain" in verbs
    bad = [f"{m} line {line}: {names or 'the module'} from {target}"
           for m in sorted(modules()) if m.startswith("medmae.tasks.")
           for target, names, line in imports(m)
           if target in verbs and target != m and names != (target.rpartition(".")[2],)]
    assert not bad, "task modules importing another verb's names: " + "; ".join(bad)


@pytest.mark.parametrize("path", sorted(str(p.relative_to(SRC)) for p in PACKAGE.rglob("*.py")))
def test_no_source_file_is_longer_than_the_limit(path):
    n = len((SRC / path).read_text().splitlines())
    if path in LONG_FILE_EXCEPTIONS:
        return
    assert n <= MAX_LINES, f"{path} has {n} lines (limit {MAX_LINES}): split it by job"


def test_long_file_exceptions_are_still_needed():
    stale = [p for p in LONG_FILE_EXCEPTIONS if len((SRC / p).read_text().splitlines()) <= MAX_LINES]
    assert not stale, f"no longer over {MAX_LINES} lines, remove from LONG_FILE_EXCEPTIONS: {stale}"


def third_party(module: str) -> set[str]:
    tree = ast.parse(modules()[module].read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n != "medmae" and n not in sys.stdlib_module_names and n != "__future__"}


def test_the_config_floor_imports_only_pydantic_and_yaml():
    heavy = {m: sorted(third_party(m) - LIGHT_FLOOR_PACKAGES) for m in modules() if (floor_of(m) or 0) <= 1}
    heavy = {m: p for m, p in heavy.items() if p}
    assert not heavy, f"modules on floors 0-1 importing heavy packages: {heavy}"


def test_importing_the_config_does_not_import_torch():
    code = "import sys, medmae.config; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
