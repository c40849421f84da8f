"""Every command's --help shows what its help text says: Typer renders help as Rich markup, where a bracketed
word such as ``[ray]`` in ``pip install 'editscale[ray]'`` is a style tag and silently vanishes unless escaped."""

from __future__ import annotations

import re

import pytest
import typer

from editscale.cli import app


def _commands() -> list[tuple[list[str], object]]:
    root = typer.main.get_command(app)
    out = []
    for name, cmd in root.commands.items():
        subs = cmd.commands.items() if hasattr(cmd, "commands") else [(None, cmd)]
        out += [([name] + ([sub] if sub else []), c) for sub, c in subs]
    return out


def _bracketed(text: str) -> list[str]:
    """The bracketed words as a reader should see them (an escaping backslash dropped)."""
    return [m.group(0).replace("\\[", "[") for m in re.finditer(r"\\?\[[A-Za-z][^\]\s]*\]", text)]


COMMANDS = _commands()


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_help_keeps_every_bracketed_word(cli, monkeypatch, path, cmd):
    monkeypatch.setenv("COLUMNS", "400")  # one line per option: nothing wrapped mid-word
    code, out, _ = cli(*path, "--help")
    assert code == 0
    assert (cmd.help or "").strip(), f"{' '.join(path)} has no help text"
    flat = " ".join(out.replace("│", " ").split())
    for text in [cmd.help or ""] + [getattr(p, "help", None) or "" for p in cmd.params]:
        for word in _bracketed(text):
            assert word in flat, f"{' '.join(path)} --help lost {word!r}"


def test_the_check_sees_a_lost_word(cli, monkeypatch):
    """The test above can fail: an unescaped extra in a help text is eaten by the markup."""
    info = next(c for c in app.registered_commands if c.name == "sweep")
    monkeypatch.setattr(info.callback, "__doc__", "Needs Ray (pip install 'editscale[ray]').")
    monkeypatch.setenv("COLUMNS", "400")
    _, out, _ = cli("sweep", "--help")
    assert "editscale[ray]" not in out and "editscale'" in out
