"""``editscale data list|fetch``: the public datasets a user can name, and downloading them into the data home."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from editscale.cli.app import app
from editscale.cli.common import print_json

data = typer.Typer(
    help="Public datasets a user can name (--data counterfact-val, mom2_corpus: wikitext-2-valid): list them and "
         "download them into the data home, $EDITSCALE_HOME/data. EDITSCALE_DATA_MIRROR=URL downloads from a "
         "mirror with the data home's layout (http(s), file:// or a folder) instead of each dataset's own URL.",
    no_args_is_help=True)
app.add_typer(data, name="data")


def _size(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


@data.command("list")
def list_command(
    verify: Annotated[bool, typer.Option("--verify", help="Also check each fetched file's sha256 against the "
                                                          "manifest (reads every file).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON list instead of a table.")] = False,
) -> None:
    """Every named dataset: fetched or not, its size, where it lives and what it is."""
    from rich.console import Console
    from rich.table import Table

    from editscale.data.fetch import status
    from editscale.data.sources import MIRROR_ENV, data_home

    rows = status(verify=verify)
    if json_out:
        print_json(rows)
        return
    table = Table(title=f"named datasets ({data_home()})")
    for col in ("name", "state", "size", "about"):
        table.add_column(col, overflow="fold", justify="right" if col == "size" else "left")
    for r in rows:
        if r["fetched"]:
            state = {True: "fetched, verified", False: "fetched, changed since"}.get(r["verified"], "fetched")
        else:
            state = f"partial ({_size(r['partial'])}, fetch resumes)" if r["partial"] else "not fetched"
        table.add_row(r["name"], state, _size(r["size"]), r["about"])
    Console().print(table)
    mirror = os.environ.get(MIRROR_ENV)
    print("`editscale data fetch NAME` downloads one"
          + (f" (from the mirror {mirror})" if mirror else f" (or set {MIRROR_ENV} to a mirror)"))


@data.command("fetch")
def fetch_command(
    names: Annotated[list[str], typer.Argument(help="Datasets to download (`editscale data list` names them).")],
    force: Annotated[bool, typer.Option("--force", help="Download again even when fetched (the old file "
                                                        "stays until the new one is whole).")] = False,
) -> None:
    """Download named datasets into the data home and print each file's path.

    A download that stops (network, storage) keeps its partial file and the next fetch resumes it; a fetched
    file is recorded with its size and sha256 in the data home's manifest.json. Archives from the original
    sources are unpacked (SST-2's zip, WikiText's parquet files, which need pyarrow); a mirror holds the
    plain files.
    """
    from editscale.data.fetch import fetch, source
    from editscale.data.sources import data_home

    for name in names:  # every name known before any download
        source(name)
    done = []
    try:
        for name in dict.fromkeys(names):
            if not force and (data_home() / source(name).path).is_file():
                print(f"{name}: fetched already (--force downloads it again)", file=sys.stderr)
            done.append(fetch(name, force=force))
    finally:
        for path in done:
            print(path)
