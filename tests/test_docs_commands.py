"""Every ``editscale ...`` command line in the README, docs/ (code blocks and inline code) and the example
configs' headers names a command that exists and only options it takes: a renamed option or verb cannot leave
the guide stale."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from editscale.cli import app

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"```[a-z]*\n(.*?)```", re.DOTALL)
INLINE = re.compile(r"`(editscale [^`]+)`")
YAML_COMMENT = re.compile(r"^#\s+(editscale .*)$", re.MULTILINE)  # an example config's header


def command_lines(text: str) -> list[str]:
    """The editscale invocations of a page: fenced blocks (continuation lines joined, comments dropped, each
    piece of a ``&&``/``;``/``|`` chain) and inline code spans."""
    out = []
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            if line.lstrip().startswith("#"):
                continue
            for piece in re.split(r"&&|;|\|", line.split(" #")[0]):
                if piece.strip().startswith("editscale "):
                    out.append(piece.strip())
    out += [m.strip() for m in INLINE.findall(text)]
    out += [m.split(" #")[0].strip() for m in YAML_COMMENT.findall(text)]
    return out


def problems(line: str, root) -> list[str]:
    try:
        words = shlex.split(line)[1:]
    except ValueError:
        return []  # prose with a quote in it, not a command line
    cmd = root
    options = {o for p in root.params for o in p.opts + p.secondary_opts}
    found = []
    for w in words:
        if hasattr(cmd, "commands") and not w.startswith("-"):
            if w not in cmd.commands:
                if w.isupper() or not re.fullmatch(r"[a-z][a-z0-9-]*", w):
                    return found  # a placeholder ("editscale COMMAND"), not a verb
                return [f"no command {w!r}"]
            cmd = cmd.commands[w]
            options = {o for p in cmd.params for o in p.opts + p.secondary_opts} | {"--help"}
        elif w.startswith("-") and w not in ("-", "--") and not re.fullmatch(r"-\d.*", w):
            name = w.split("=", 1)[0]
            if name not in options:
                found.append(f"{cmd.name} has no option {name}")
    return found


PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "examples").glob("*.yaml"))]


def test_the_pages_have_command_lines():
    assert sum(len(command_lines(p.read_text())) for p in PAGES) > 20


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_documented_commands_exist(page):
    root = typer.main.get_command(app)
    bad = [f"{line!r}: {p}" for line in command_lines(page.read_text()) for p in problems(line, root)]
    assert not bad, bad


def test_a_stale_option_is_caught():
    root = typer.main.get_command(app)
    assert problems("editscale eval --model testbed:tiny --methd rome", root) == ["eval has no option --methd"]
    assert problems("editscale evaluate --model x", root) == ["no command 'evaluate'"]
    assert problems("editscale cache list --json", root) == []
    assert problems("editscale --threads 1 eval --model x --method rome --set layers=[1]", root) == []
    assert problems("editscale eval --threads 1", root) == ["eval has no option --threads"]  # a root option
