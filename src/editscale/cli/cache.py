"""``editscale cache list|verify|clean``: what editscale's cache holds, checking it, and removing what is broken."""

from __future__ import annotations

from typing import Annotated

import typer

from editscale.cli.app import app
from editscale.cli.common import print_json

cache = typer.Typer(help="editscale's cache: testbed models, converted models and statistics.",
                    no_args_is_help=True)
app.add_typer(cache, name="cache")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON list instead of a table.")]


def _table(title: str, entries, show_problems: bool = True) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("kind", "name", "state", "size", "where"):
        table.add_column(col, overflow="fold", justify="right" if col == "size" else "left")
    for e in entries:
        state = e.state + (f": {e.problems[0]}" if show_problems and e.problems else "") + (
            f" ({e.note})" if e.note else "")
        table.add_row(e.kind, e.name, state, f"{e.size / 2**20:.1f} MiB", str(e.path))
    Console().print(table)


@cache.command("list")
def list_command(json_out: JsonOpt = False) -> None:
    """Every cache entry with its state (file sizes checked against its manifest) and size."""
    from editscale.cache import cache_root
    from editscale.cache_entries import list_entries

    entries = list_entries()
    if json_out:
        print_json([e.to_dict() for e in entries])
        return
    _table(f"editscale cache ({cache_root()})", entries)


@cache.command("verify")
def verify_command(
    names: Annotated[list[str] | None, typer.Argument(help="Entries to verify: testbed:NAME, NAME, a model "
                                                          "name, stats, or a path (default: all).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Check every file's sha256 against its manifest (exit status 1 when any entry is damaged); a complete
    entry of an older editscale gets its manifest."""
    from editscale.cache_entries import verify

    entries = verify(names)
    bad = [e for e in entries if e.state in ("damaged", "incomplete")]
    if json_out:
        print_json([e.to_dict() for e in entries])
    else:
        _table("verified (sha256 of every file)", entries)
        print(f"{len(entries) - len(bad)} sound, {len(bad)} damaged or incomplete"
              + ("; `editscale cache clean` removes them" if bad else ""))
    if bad:
        raise typer.Exit(1)


@cache.command("clean")
def clean_command(
    everything: Annotated[bool, typer.Option("--all", help="Remove every entry (not only broken ones); builds "
                                                           "in progress are kept.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would be removed.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Remove incomplete and damaged entries (with --all, every entry); a build in progress is never touched."""
    from editscale.cache_entries import clean

    gone = clean(everything=everything, dry_run=dry_run)
    if json_out:
        print_json([e.to_dict() for e in gone])
        return
    verb = "would remove" if dry_run else "removed"
    print(f"{verb} {len(gone)} entr{'y' if len(gone) == 1 else 'ies'}"
          + "".join(f"\n  {e.name} ({e.state}) {e.path}" for e in gone))
