"""Where the built-in methods live, and what they declare, read from their source without importing them.

A method is a class decorated with ``@register`` in a module of ``editscale.methods`` (``base.register``);
``method_modules`` finds those modules, so a new method needs no list to be added to. Importing a method's
module imports torch (a second or more), which the CLI must not do to print its help, so ``declared`` reads the
literal ``name`` and ``description`` of each registered class from the source; a test checks that they are the
imported classes' own.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

PACKAGE = "editscale.methods"
_DIR = Path(__file__).resolve().parent
_MARK = "@register"


@dataclass(frozen=True)
class Declared:
    """A registered method as its source declares it."""

    name: str
    description: str
    module: str


def _module_name(path: Path) -> str:
    parts = path.relative_to(_DIR).with_suffix("").parts
    return ".".join((PACKAGE, *(parts[:-1] if parts[-1] == "__init__" else parts)))


@cache
def method_modules() -> tuple[str, ...]:
    """The modules of ``editscale.methods`` that register methods (a line starting with ``@register``)."""
    found = []
    for path in sorted(_DIR.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if any(line.startswith(_MARK) for line in text.splitlines()):
            found.append(_module_name(path))
    return tuple(found)


def _literal(node: ast.ClassDef, field: str) -> str | None:
    for stmt in node.body:
        target = stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 else getattr(
            stmt, "target", None)
        value = getattr(stmt, "value", None)
        if isinstance(target, ast.Name) and target.id == field and isinstance(value, ast.Constant):
            return value.value if isinstance(value.value, str) else None
    return None


@cache
def declared() -> tuple[Declared, ...]:
    """Every registered built-in method's name and one-line description, by name."""
    out = []
    for module in method_modules():
        rel = Path(*module.removeprefix(PACKAGE + ".").split("."))
        path = _DIR / rel.with_suffix(".py") if (_DIR / rel.with_suffix(".py")).is_file() else _DIR / rel / "__init__.py"
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef) and any(isinstance(d, ast.Name) and d.id == "register"
                                                      for d in node.decorator_list):
                name = _literal(node, "name")
                if name is not None:
                    out.append(Declared(name, _literal(node, "description") or "", module))
    return tuple(sorted(out, key=lambda d: d.name))


def method_help(lead: str) -> str:
    """The CLI's help for a ``--method`` option: ``lead``, then the methods' names."""
    names = [d.name for d in declared()]
    listed = ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else "".join(names)
    return f"{lead} One of {listed} (`editscale methods` says what each does)."
