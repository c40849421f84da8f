"""No module imports a higher layer.

Layers, lowest first (DESIGN.md, "Layering"): the base helpers, model, data, stats, methods, eval, the testbed
(a producer of models and data built with everything below it), the name resolver (``testbed:NAME``,
``smollm2-135m``, ``*.gguf``), experiment, report, and on top the user-facing API, CLI and package root.
Every ``import`` of an ``editscale`` module is checked, at module level and inside functions alike; imports
under ``if TYPE_CHECKING:`` are exempt (they never run). A module that belongs to no layer fails too, so a new
package says where it stands.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# module or package (prefix) -> layer; the longest matching prefix wins
LAYERS: dict[str, int] = {
    "editscale.errors": 0,
    "editscale.progress": 0,
    "editscale.cache": 0,
    "editscale.threads": 0,
    "editscale.json_values": 0,
    "editscale.model": 1,
    "editscale.data": 2,
    "editscale.stats": 3,
    "editscale.methods": 4,
    "editscale.eval": 5,
    "editscale.trace": 5,
    "editscale.testbed": 6,
    "editscale.names": 7,
    "editscale.cache_entries": 7,
    "editscale.experiment": 8,
    "editscale.report": 9,
    "editscale.api": 10,
    "editscale.cli": 10,
    "editscale.demo": 10,
    "editscale.__main__": 10,
}
ROOT = "editscale"  # the package root (its lazy attributes come from the API): top, but not its submodules
LAYER_NAMES = ["base", "model", "data", "stats", "methods", "eval", "testbed", "names", "experiment", "report",
               "top"]


def layer_of(module: str) -> int | None:
    if module == ROOT:
        return len(LAYER_NAMES) - 1
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in LAYERS:
            return LAYERS[prefix]
    return None


def module_name(path: Path, src: Path = SRC) -> str:
    rel = path.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    """ids of the statements inside ``if TYPE_CHECKING:`` blocks."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else ""
            if name == "TYPE_CHECKING":
                for stmt in node.body:
                    skip.update(id(n) for n in ast.walk(stmt))
    return skip


def imported_modules(path: Path, src: Path = SRC) -> list[tuple[int, str]]:
    """(line, module) of every editscale import in the file, outside ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _type_checking_blocks(tree)
    me = module_name(path, src)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "editscale"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "editscale":
                continue
            # ``from editscale.pkg import mod`` imports the submodule when it is one
            for a in node.names:
                sub = f"{mod}.{a.name}"
                where = src / Path(*sub.split("."))
                is_module = where.with_suffix(".py").is_file() or where.is_dir()
                out.append((node.lineno, sub if is_module else mod))
    return sorted(set(out))


def all_modules() -> list[Path]:
    return sorted((SRC / "editscale").rglob("*.py"))


def violations() -> list[str]:
    bad = []
    for path in all_modules():
        me = module_name(path)
        mine = layer_of(me)
        if mine is None:
            bad.append(f"{me} belongs to no layer: add it to LAYERS in tests/test_layering.py")
            continue
        for line, mod in imported_modules(path):
            theirs = layer_of(mod)
            if theirs is None:
                bad.append(f"{path.relative_to(SRC)}:{line}: imports {mod}, which belongs to no layer")
            elif theirs > mine:
                bad.append(f"{path.relative_to(SRC)}:{line}: {me} ({LAYER_NAMES[mine]}) imports {mod} "
                           f"({LAYER_NAMES[theirs]})")
    return bad


def test_no_module_imports_a_higher_layer():
    bad = violations()
    assert not bad, "imports of a higher layer:\n" + "\n".join(bad)


def test_the_walker_sees_function_level_imports_and_skips_type_checking(tmp_path):
    pkg = tmp_path / "editscale" / "model"
    pkg.mkdir(parents=True)
    (tmp_path / "editscale" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "x.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from editscale.errors import ConfigError\n"
        "if TYPE_CHECKING:\n"
        "    from editscale.methods.base import Delta\n"
        "def f():\n"
        "    from editscale.testbed.registry import ensure_built\n"
        "    import editscale.report.html\n"
        "    from .. import api\n"
    )
    found = [m for _, m in imported_modules(pkg / "x.py", src=tmp_path)]
    assert found == ["editscale.errors", "editscale.testbed.registry", "editscale.report.html", "editscale"]
    assert [layer_of(m) for m in found] == [0, 6, 9, 10]
    assert layer_of("editscale.somewhere_new") is None


@pytest.mark.parametrize("module,layer", [("editscale.model.loading", 1), ("editscale.cli.run", 10),
                                          ("editscale", 10), ("editscale.names", 7)])
def test_layer_of(module, layer):
    assert layer_of(module) == layer
