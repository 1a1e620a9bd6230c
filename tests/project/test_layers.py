"""The package's layers: each module imports only from its own layer or the layers below it.

types/common -> engine -> methods -> zoo -> evaluate -> render -> app / cli / sweep / batch.
Nothing imports the app or the CLI; the sweep and batch jobs do not import the CLI or the app.
Lazy imports inside functions count too: a cycle hidden in a function is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "cnnviz"

LAYERS = {
    "cnnviz.common": 0,
    "cnnviz.types": 0,
    "cnnviz.engine": 1,
    "cnnviz.methods": 2,
    "cnnviz.zoo": 3,
    "cnnviz": 3,  # the facade re-exports explain, inspect and load_model
    "cnnviz.evaluate": 4,
    "cnnviz.render": 5,
    "cnnviz.sweep": 6,
    "cnnviz.batch": 6,
    "cnnviz.app": 7,
    "cnnviz.cli": 7,
}
TOP = ("cnnviz.app", "cnnviz.cli")  # front ends: nothing below imports them


def layer_of(module: str) -> tuple[str, int]:
    """The layer a dotted module name belongs to (the longest matching prefix)."""
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in LAYERS:
            return prefix, LAYERS[prefix]
    raise KeyError(module)


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, name: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module) for every cnnviz import in the file, at any depth.

    `name`: the file's dotted module name (default: from its place in the package).
    """
    name = name or module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "cnnviz"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "cnnviz":
                continue
            # `from cnnviz import zoo` imports the submodule zoo, not the facade
            subs = [f"{target}.{a.name}" for a in node.names]
            modules = [s for s in subs if _is_module(s)] or [target]
            found += [(node.lineno, m) for m in modules]
    return found


def _is_module(dotted: str) -> bool:
    rel = Path(*dotted.split("."))
    return (PACKAGE.parent / rel).with_suffix(".py").is_file() or (
        PACKAGE.parent / rel / "__init__.py"
    ).is_file()


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__main__.py")


def test_every_module_has_a_layer():
    for path in SOURCES:
        layer_of(module_name(path))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_imports_go_down_the_layers(path):
    me, mine = layer_of(module_name(path))
    wrong = []
    for line, target in imports_of(path):
        other, theirs = layer_of(target)
        if me == "cnnviz":  # the facade itself sits on top of what it re-exports
            continue
        if other != me and (theirs > mine or (other in TOP and me not in ("cnnviz.cli",))):
            wrong.append(f"line {line}: {module_name(path)} ({me}) imports {target} ({other})")
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The check can fail: an engine module that imports the zoo, even lazily, is caught."""
    bad = tmp_path / "probe.py"
    bad.write_text("def f():\n    from ..zoo import load_model\n    return load_model\n", encoding="utf-8")
    _, mine = layer_of("cnnviz.engine.probe")
    targets = [layer_of(t) for _, t in imports_of(bad, "cnnviz.engine.probe")]
    assert targets == [("cnnviz.zoo", 3)] and targets[0][1] > mine


def runtime_imports(path: Path) -> set[str]:
    """The cnnviz modules a file imports when it is itself imported: its top-level imports (also
    inside a top-level ``try``), not those under ``if TYPE_CHECKING:`` nor those inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    lines: set[int] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                lines.add(node.lineno)
            elif isinstance(node, ast.Try):
                visit(node.body)
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                visit(node.body)
                visit(node.orelse)

    visit(tree.body)
    return {target for line, target in imports_of(path) if line in lines}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle of the import graph, each found once from its smallest module."""
    cycles = []

    def walk(start: str, node: str, trail: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                cycles.append([*trail, start])
            elif nxt > start and nxt not in trail:
                walk(start, nxt, [*trail, nxt])

    for start in sorted(graph):
        walk(start, start, [start])
    return cycles


def test_no_module_imports_one_that_imports_it_back():
    """A cycle makes the order of imports matter (a module half-initialized when the other reads
    it) and two modules that can only be understood together; the app's page and its Evaluate tab
    had one, now cut by `cnnviz.app.widgets`. A package's ``__init__`` importing its submodules is
    not a cycle unless a submodule imports the package back."""
    graph = {module_name(p): runtime_imports(p) - {module_name(p)} for p in SOURCES}
    cycles = import_cycles(graph)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles(graph) == [["a", "b", "c", "a"]]
