"""``editscale testbed build NAME``: train (or find cached) one of editscale's own small fact models;
``editscale testbed corpus NAME --out FILE``: its statistics corpus with its skills' texts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from editscale.cli.app import app
from editscale.cli.common import print_json

testbed = typer.Typer(help="The small fact models editscale trains itself (no downloads).", no_args_is_help=True)
app.add_typer(testbed, name="testbed")


@testbed.command("build")
def build_command(
    name: Annotated[str, typer.Argument(help="Which testbed: tiny (about a minute) or demo (up to 10 minutes).")],
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if a cached build exists.")] = False,
    threads: Annotated[int | None, typer.Option(help="CPU threads for training (default: editscale --threads, "
                                                     "else the cores other processes leave free).",
                                                min=1)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a summary.")] = False,
) -> None:
    """Build testbed NAME (cached under $EDITSCALE_HOME, default ~/.cache/editscale) and print what it reached."""
    from editscale.model.loading import read_testbed_manifest
    from editscale.testbed.registry import ensure_built_status

    path, state = ensure_built_status(name, force=force, threads=threads)
    m = read_testbed_manifest(path) or {}
    summary = {
        "name": m["name"],
        "dir": str(path),
        "cached": state != "built",
        "state": state,  # cached, built, or waited (another process built it while this one waited)
        "recall_train": m["recall_train"],
        "recall_heldout": m["recall_heldout"],
        "skills": m["skills"],
        "train_seconds": m["train_seconds"],
        "build_seconds": m["build_seconds"],
        "parameters": m["sizes"]["parameters"],
        "subjects": m["sizes"]["subjects"],
        "relations": m["sizes"]["relations"],
        "rome_layer": m["rome_layer"],
        "memit_layers": m["memit_layers"],
    }
    if json_out:
        print_json(summary)
        return
    how = {"cached": "cached", "waited": "built by another process while this one waited",
           "built": f"trained in {m['train_seconds']:.0f} s"}[state]
    skills = ", ".join(f"{k} {v:.2f}" for k, v in m["skills"].items())
    typer.echo(f"testbed:{m['name']} ({how}; {summary['parameters']:,} parameters, {summary['subjects']} subjects x "
               f"{summary['relations']} relations) in {path}")
    typer.echo(f"recall on training templates: {m['recall_train']:.1%}")
    typer.echo(f"recall on held-out paraphrase templates: {m['recall_heldout']:.1%}")
    typer.echo(f"skills F1: {skills}")
    typer.echo(f"edit layers: ROME {m['rome_layer']}, MEMIT {m['memit_layers']}")


@testbed.command("corpus")
def corpus_command(
    name: Annotated[str, typer.Argument(help="A testbed model: tiny, demo, or a testbed model's directory.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The corpus file to write (one text per line).")],
    skill_texts: Annotated[int, typer.Option(help="Skill training texts spread through the generic corpus.",
                                             min=0)] = 600,
) -> None:
    """A statistics corpus holding what must be preserved: the testbed's generic corpus with its skills' training
    texts spread evenly through it (for mom2_corpus: FILE; AlphaEdit's null space then covers the skills)."""
    from editscale.cache import check_writable, refuse_inside_cache
    from editscale.errors import ConfigError
    from editscale.names import resolve_model_path
    from editscale.testbed.corpus import preserved_corpus

    if out.exists():
        raise ConfigError(f"{out} exists; choose another --out")
    refuse_inside_cache(out, "--out")
    check_writable(out.parent, "--out")
    lines, n_generic = preserved_corpus(resolve_model_path(name if "/" in name else f"testbed:{name}"), skill_texts)
    tmp = out.with_name(f".{out.name}.writing")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(out)
    typer.echo(f"{out}: {n_generic} generic texts + {len(lines) - n_generic} skill texts")
